//! Provider accounts, secrets (never stored plain) and the catalogue.

use std::collections::HashSet;

use entities::*;

use super::project::*;
use super::*;

/// Provider accounts and secrets (a secret no key decrypts refuses the
/// project unless the user chose to leave such secrets out).
pub(super) fn map_settings(
    m: &mut Mapper<'_>,
    target: &ImportTarget<'_>,
    options: &ImportOptions,
) -> Result<(), ServiceError> {
    let project = m.project;
    for r in m.legacy.of(project, "provider_accounts") {
        m.count("provider_accounts").read += 1;
        let Some(code) = r.text(&["provider_code"]) else {
            m.orphan("provider_accounts");
            continue;
        };
        m.batch.accounts.push(provider_accounts::ActiveModel::from(
            provider_accounts::Model {
                id: stable_id(project, "provider_accounts", &code),
                project_id: project,
                display_name: r.text(&["display_name"]).unwrap_or_else(|| code.clone()),
                provider_code: code,
                account_ref: r.text(&["account_ref"]),
                base_url: r.text(&["base_url"]),
                enabled: r.flag("enabled").unwrap_or(true),
                config_json: r.object(&["config_json"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            },
        ));
    }
    for r in m.legacy.of(project, "project_secrets") {
        m.count("project_secrets").read += 1;
        let (Some(code), Some(name), Some(stored)) = (
            r.text(&["provider_code"]),
            r.text(&["secret_name"]),
            r.text(&["secret_value"]),
        ) else {
            m.orphan("project_secrets");
            continue;
        };
        let label = format!("{code}/{name}");
        let value = match secret_for_here(target, &stored) {
            Some((value, how)) => {
                match how {
                    SecretWas::Kept => m.report.secrets.kept += 1,
                    SecretWas::Reencrypted => m.report.secrets.reencrypted += 1,
                    SecretWas::Plaintext => m.report.secrets.encrypted += 1,
                }
                value
            }
            None => {
                m.report.secrets.undecryptable.push(label.clone());
                if options.skip_undecryptable_secrets {
                    m.orphan("project_secrets");
                    continue;
                }
                return Err(unrecognised(format!(
                    "secret {label} cannot be decrypted with this installation's key or the legacy key given; \
                     name the earlier system's key (--master-key-file) or leave such secrets out (--skip-undecryptable-secrets)"
                )));
            }
        };
        m.batch
            .secrets
            .push(project_secrets::ActiveModel::from(project_secrets::Model {
                id: stable_id(project, "project_secrets", &label),
                project_id: project,
                provider_code: code,
                secret_name: name,
                secret_value: value,
                key_ref: target.keys.key_ref.clone(),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    Ok(())
}

pub(super) enum SecretWas {
    Kept,
    Reencrypted,
    Plaintext,
}

/// The value to store here, or `None` when no key opens it. The plaintext
/// never leaves this function.
pub(super) fn secret_for_here(
    target: &ImportTarget<'_>,
    stored: &str,
) -> Option<(String, SecretWas)> {
    use crate::secrets::cipher::PREFIX;
    if !stored.starts_with(PREFIX) {
        return Some((target.keys.encrypt(stored).ok()?, SecretWas::Plaintext));
    }
    if target.keys.decrypt(stored).is_ok() {
        return Some((stored.to_string(), SecretWas::Kept));
    }
    let plain = target.legacy_keys?.decrypt(stored).ok()?;
    Some((target.keys.encrypt(&plain).ok()?, SecretWas::Reencrypted))
}

pub(super) fn map_catalogue(m: &mut Mapper<'_>) {
    let project = m.project;
    let legacy = m.legacy;
    for r in legacy.of(project, "style_guides") {
        m.count("style_guides").read += 1;
        let (Some(id), Some(name)) = (r.text(&["id"]), r.text(&["name"])) else {
            m.orphan("style_guides");
            continue;
        };
        m.batch
            .styles
            .push(style_guides::ActiveModel::from(style_guides::Model {
                id: legacy.id("style_guides", &id),
                project_id: project,
                name,
                instructions: r.text_or_empty("instructions"),
                notes: r.text(&["notes"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "characters") {
        m.count("characters").read += 1;
        let (Some(id), Some(name)) = (r.text(&["id"]), r.text(&["name"])) else {
            m.orphan("characters");
            continue;
        };
        m.batch
            .characters
            .push(characters::ActiveModel::from(characters::Model {
                id: legacy.id("characters", &id),
                project_id: project,
                name,
                description: r.text(&["description"]),
                prompt_text: r.text(&["prompt_text"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "prompt_templates") {
        m.count("prompt_templates").read += 1;
        let (Some(id), Some(name)) = (r.text(&["id"]), r.text(&["name"])) else {
            m.orphan("prompt_templates");
            continue;
        };
        m.batch.templates.push(prompt_templates::ActiveModel::from(
            prompt_templates::Model {
                id: legacy.id("prompt_templates", &id),
                project_id: project,
                name,
                template_text: r.text_or_empty("template_text"),
                version: 1,
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            },
        ));
    }
    let mut sets = HashSet::new();
    for r in legacy.of(project, "reference_sets") {
        m.count("reference_sets").read += 1;
        let (Some(id), Some(name)) = (r.text(&["id"]), r.text(&["name"])) else {
            m.orphan("reference_sets");
            continue;
        };
        let id = legacy.id("reference_sets", &id);
        sets.insert(id);
        m.batch
            .sets
            .push(reference_sets::ActiveModel::from(reference_sets::Model {
                id,
                project_id: project,
                name,
                description: r.text(&["description"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "reference_set_items") {
        m.count("reference_set_items").read += 1;
        let set = legacy.reference("reference_sets", r.text(&["reference_set_id"]));
        let (Some(id), Some(set)) = (r.text(&["id"]), set.filter(|s| sets.contains(s))) else {
            m.orphan("reference_set_items");
            continue;
        };
        m.batch.items.push(reference_set_items::ActiveModel::from(
            reference_set_items::Model {
                id: legacy.id("reference_set_items", &id),
                project_id: project,
                reference_set_id: set,
                label: r.text_or_empty("label"),
                content_uri: r.text(&["content_uri"]),
                content_text: r.text(&["content_text"]),
                asset_id: None,
                sort_order: r.int(&["sort_order"]).unwrap_or(0) as i32,
                weight: None,
                notes: None,
                metadata_json: r.object(&["metadata_json"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            },
        ));
    }
}
