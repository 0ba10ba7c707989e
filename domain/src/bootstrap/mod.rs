//! Bootstrap: a project's settings exported with a prompt an AI assistant
//! can answer (`kroma.bootstrap.v1`), and the answer imported back — merged
//! or replacing the sections it supplies, optionally as a dry run that
//! reports the changes and writes nothing. Secret values never travel
//! either way: secrets are metadata only, and merge-only.

use entities::{projects as project_rows, reference_set_items};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::catalog::{self, CatalogKind, Character, PromptTemplate, ReferenceSet, StyleGuide};
use crate::{ServiceError, provider_accounts as accounts, secrets, time};

mod answer;
mod import;

pub use answer::{ImportRequest, Mode, parse_request};
pub use import::import;

pub const SCHEMA: &str = "kroma.bootstrap.v1";

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::validation("invalid_bootstrap", message)
}

// ---- export --------------------------------------------------------------

/// The project's settings in the bootstrap shape (no secret values).
pub async fn snapshot<C: ConnectionTrait>(db: &C, project_id: Uuid) -> Result<Value, ServiceError> {
    let accounts: Vec<Value> = accounts::list(db, project_id)
        .await?
        .iter()
        .map(accounts::view)
        .collect();
    let mut sets = Vec::new();
    for set in catalog::list::<ReferenceSet, _>(db, project_id).await? {
        let items: Vec<Value> = reference_set_items::Entity::find()
            .filter(reference_set_items::Column::ReferenceSetId.eq(set.id))
            .order_by_asc(reference_set_items::Column::SortOrder)
            .order_by_desc(reference_set_items::Column::UpdatedAt)
            .all(db)
            .await?
            .iter()
            .map(|i| {
                json!({
                    "label": i.label, "content_uri": i.content_uri.clone().unwrap_or_default(),
                    "content_text": i.content_text.clone().unwrap_or_default(),
                    "sort_order": i.sort_order, "metadata_json": i.metadata_json,
                })
            })
            .collect();
        sets.push(json!({
            "name": set.name, "description": set.description.clone().unwrap_or_default(), "items": items,
        }));
    }
    let secrets: Vec<Value> = secrets::list(db, project_id)
        .await?
        .iter()
        .map(|s| {
            json!({ "provider_code": s.provider_code, "secret_name": s.secret_name, "has_value": secrets::has_value(s) })
        })
        .collect();
    Ok(json!({
        "provider_accounts": accounts,
        "style_guides": catalog::list::<StyleGuide, _>(db, project_id).await?.iter().map(StyleGuide::view).collect::<Vec<_>>(),
        "characters": catalog::list::<Character, _>(db, project_id).await?.iter().map(Character::view).collect::<Vec<_>>(),
        "reference_sets": sets,
        "secrets": secrets,
        "prompt_templates": catalog::list::<PromptTemplate, _>(db, project_id).await?.iter().map(PromptTemplate::view).collect::<Vec<_>>(),
    }))
}

fn project_view(p: &project_rows::Model) -> Value {
    json!({ "id": p.id, "slug": p.slug, "name": p.name, "description": p.description })
}

/// The answer an assistant should give: the shape, with placeholders.
fn expected_response() -> Value {
    json!({
        "mode": "merge",
        "settings": {
            "project": { "name": "<project name>", "description": "<one paragraph>" },
            "provider_accounts": [{ "provider_code": "openai", "display_name": "OpenAI", "account_ref": "", "base_url": "", "enabled": true, "config_json": {} }],
            "style_guides": [{ "name": "<name>", "instructions": "<how panels look>", "notes": "" }],
            "characters": [{ "name": "<name>", "description": "<who they are>", "prompt_text": "<visual cues>" }],
            "reference_sets": [{ "name": "<name>", "description": "", "items": [
                { "label": "<label>", "content_uri": "", "content_text": "<what to match>", "sort_order": 0, "metadata_json": {} }
            ] }],
            "secrets": [{ "provider_code": "openai", "secret_name": "api_key" }],
            "prompt_templates": [{ "name": "<name>", "template_text": "<template>" }],
        }
    })
}

pub async fn export<C: ConnectionTrait>(
    db: &C,
    project: &project_rows::Model,
) -> Result<Value, ServiceError> {
    let settings = snapshot(db, project.id).await?;
    let current = serde_json::to_string_pretty(&settings).unwrap_or_default();
    let prompt = format!(
        "You are helping set up a comic project in Atelier. Reply with ONE JSON object and \
         nothing else, shaped like `expected_response`:\n\
         - `mode` is \"merge\" (add and update) or \"replace\" (each section you include \
           replaces that section entirely; sections you leave out are untouched);\n\
         - include only the sections that should change;\n\
         - `provider_code` values are lowercase;\n\
         - never include secret values: list secrets by provider_code and secret_name only \
           (secrets are only ever added, never removed or overwritten);\n\
         - every reference set carries its full `items` array, which becomes that set's items.\n\n\
         The project's current settings:\n{current}"
    );
    Ok(json!({
        "schema_version": SCHEMA,
        "generated_at": time::format(&time::now()),
        "project": project_view(project),
        "settings": settings,
        "expected_response": expected_response(),
        "prompt": prompt,
    }))
}
