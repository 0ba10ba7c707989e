//! SeaORM entities for every table of the Atelier schema. Entities only: no
//! behaviour lives here. The schema itself is defined by the `migration` crate;
//! `tests/it/migrations.rs` checks that every entity can read and write its table on
//! SQLite and PostgreSQL.

pub mod agent_instruction_events;
pub mod agent_instructions;
pub mod api_tokens;
pub mod app_users;
pub mod asset_links;
pub mod assets;
pub mod audit_events;
pub mod characters;
pub mod chat_messages;
pub mod chat_sessions;
pub mod cluster_settings;
pub mod cost_events;
pub mod nodes;
pub mod project_exports;
pub mod project_secrets;
pub mod project_storage;
pub mod projects;
pub mod prompt_template_versions;
pub mod prompt_templates;
pub mod provider_accounts;
pub mod provider_calls;
pub mod quality_reports;
pub mod reference_set_items;
pub mod reference_sets;
pub mod run_candidates;
pub mod run_events;
pub mod run_jobs;
pub mod run_owners;
pub mod runs;
pub mod style_guides;
pub mod voice_requests;
pub mod webhook_deliveries;
pub mod webhooks;

/// `use entities::prelude::*` for the entity types under readable names.
pub mod prelude {
    pub use super::agent_instruction_events::Entity as AgentInstructionEvent;
    pub use super::agent_instructions::Entity as AgentInstruction;
    pub use super::api_tokens::Entity as ApiToken;
    pub use super::app_users::Entity as AppUser;
    pub use super::asset_links::Entity as AssetLink;
    pub use super::assets::Entity as Asset;
    pub use super::audit_events::Entity as AuditEvent;
    pub use super::characters::Entity as Character;
    pub use super::chat_messages::Entity as ChatMessage;
    pub use super::chat_sessions::Entity as ChatSession;
    pub use super::cluster_settings::Entity as ClusterSetting;
    pub use super::cost_events::Entity as CostEvent;
    pub use super::nodes::Entity as Node;
    pub use super::project_exports::Entity as ProjectExport;
    pub use super::project_secrets::Entity as ProjectSecret;
    pub use super::project_storage::Entity as ProjectStorage;
    pub use super::projects::Entity as Project;
    pub use super::prompt_template_versions::Entity as PromptTemplateVersion;
    pub use super::prompt_templates::Entity as PromptTemplate;
    pub use super::provider_accounts::Entity as ProviderAccount;
    pub use super::provider_calls::Entity as ProviderCall;
    pub use super::quality_reports::Entity as QualityReport;
    pub use super::reference_set_items::Entity as ReferenceSetItem;
    pub use super::reference_sets::Entity as ReferenceSet;
    pub use super::run_candidates::Entity as RunCandidate;
    pub use super::run_events::Entity as RunEvent;
    pub use super::run_jobs::Entity as RunJob;
    pub use super::run_owners::Entity as RunOwner;
    pub use super::runs::Entity as Run;
    pub use super::style_guides::Entity as StyleGuide;
    pub use super::voice_requests::Entity as VoiceRequest;
    pub use super::webhook_deliveries::Entity as WebhookDelivery;
    pub use super::webhooks::Entity as Webhook;
}
