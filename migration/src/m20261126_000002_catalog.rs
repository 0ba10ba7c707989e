//! Per-project catalogue: provider accounts, secrets, style guides, characters,
//! reference sets and prompt templates (with their version history).

use crate::columns::*;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: &[&str] = &[
    "provider_accounts",
    "project_secrets",
    "style_guides",
    "characters",
    "reference_sets",
    "prompt_templates",
    "prompt_template_versions",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut accounts = table("provider_accounts");
        project_owned(&mut accounts, "provider_accounts");
        accounts
            .col(string("provider_code"))
            .col(string("display_name"))
            .col(string_null("account_ref"))
            .col(string_null("base_url"))
            .col(boolean("enabled").default(true))
            .col(json_obj("config_json"))
            .col(created_at())
            .col(updated_at());

        let mut secrets = table("project_secrets");
        project_owned(&mut secrets, "project_secrets");
        secrets
            .col(string("provider_code"))
            .col(string("secret_name"))
            .col(text("secret_value"))
            .col(string("key_ref").default("local-master"))
            .col(created_at())
            .col(updated_at());

        let mut guides = table("style_guides");
        project_owned(&mut guides, "style_guides");
        guides
            .col(string("name"))
            .col(text("instructions"))
            .col(text_null("notes"))
            .col(created_at())
            .col(updated_at());

        let mut characters = table("characters");
        project_owned(&mut characters, "characters");
        characters
            .col(string("name"))
            .col(text_null("description"))
            .col(text_null("prompt_text"))
            .col(created_at())
            .col(updated_at());

        let mut sets = table("reference_sets");
        project_owned(&mut sets, "reference_sets");
        sets.col(string("name"))
            .col(text_null("description"))
            .col(created_at())
            .col(updated_at());

        let mut templates = table("prompt_templates");
        project_owned(&mut templates, "prompt_templates");
        templates
            .col(string("name"))
            .col(text("template_text"))
            .col(integer("version").default(1))
            .col(created_at())
            .col(updated_at());

        let mut versions = table("prompt_template_versions");
        project_owned(&mut versions, "prompt_template_versions");
        versions
            .col(uuid("template_id"))
            .col(integer("version"))
            .col(string("name"))
            .col(text("template_text"))
            .col(created_at());
        fk(
            &mut versions,
            "prompt_template_versions",
            "template_id",
            "prompt_templates",
            ForeignKeyAction::Cascade,
        );

        create_all(
            manager,
            vec![
                accounts, secrets, guides, characters, sets, templates, versions,
            ],
            vec![
                unique(
                    "provider_accounts",
                    "project_code",
                    &["project_id", "provider_code"],
                ),
                unique(
                    "project_secrets",
                    "project_code_name",
                    &["project_id", "provider_code", "secret_name"],
                ),
                unique("style_guides", "project_name", &["project_id", "name"]),
                unique("characters", "project_name", &["project_id", "name"]),
                unique("reference_sets", "project_name", &["project_id", "name"]),
                unique("prompt_templates", "project_name", &["project_id", "name"]),
                unique(
                    "prompt_template_versions",
                    "template_version",
                    &["template_id", "version"],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}
