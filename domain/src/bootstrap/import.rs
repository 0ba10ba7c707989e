//! Applying a normalised answer: each section merged into or replacing the
//! project's rows, with counts per section; a dry run rolls it all back.

use std::collections::BTreeMap;

use entities::{project_secrets, projects as project_rows, provider_accounts, reference_set_items};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::catalog::{self, CatalogKind, Character, PromptTemplate, ReferenceSet, StyleGuide};
use crate::{ServiceError, provider_accounts as accounts, time};

use super::answer::*;
use super::{SCHEMA, project_view, snapshot};

#[derive(Default, serde::Serialize)]
struct Counts {
    provided: bool,
    replaced: bool,
    before_count: u64,
    after_count: u64,
    created: u64,
    updated: u64,
    deleted: u64,
    unchanged: u64,
}

/// A row's view without what every write changes (times, version).
fn content(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for k in ["created_at", "updated_at", "version", "id"] {
            o.remove(k);
        }
    }
    v
}

async fn count_rows<K: CatalogKind, C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<u64, ServiceError> {
    // Catalogue sections are small (tens of rows): a plain read.
    Ok(K::Entity::find()
        .filter(K::project_col().eq(project_id))
        .all(db)
        .await?
        .len() as u64)
}

/// Upserts a catalogue section by exact name; in replace mode the section is
/// emptied first.
async fn apply_named<K: CatalogKind, C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    rows: Option<Vec<(String, catalog::Values)>>,
    mode: Mode,
) -> Result<(Counts, Vec<Uuid>), ServiceError> {
    let mut c = Counts {
        before_count: count_rows::<K, _>(db, project_id).await?,
        ..Counts::default()
    };
    let mut ids = Vec::new();
    if let Some(rows) = rows {
        c.provided = true;
        if mode == Mode::Replace {
            c.replaced = true;
            c.deleted = K::Entity::delete_many()
                .filter(K::project_col().eq(project_id))
                .exec(db)
                .await?
                .rows_affected;
        }
        for (name, values) in rows {
            let existing = K::Entity::find()
                .filter(K::project_col().eq(project_id))
                .filter(K::name_col().eq(name.as_str()))
                .one(db)
                .await?;
            let row = match existing {
                None => {
                    let row = K::build(Uuid::now_v7(), project_id, name, &values);
                    row.clone()
                        .into_active_model()
                        .reset_all()
                        .insert(db)
                        .await?;
                    K::after_write(db, &row).await?;
                    c.created += 1;
                    row
                }
                Some(current) => {
                    let mut next = current.clone();
                    K::apply(&mut next, None, &values);
                    if content(K::view(&next)) == content(K::view(&current)) {
                        c.unchanged += 1;
                        current
                    } else {
                        next.clone()
                            .into_active_model()
                            .reset_all()
                            .update(db)
                            .await?;
                        K::after_write(db, &next).await?;
                        c.updated += 1;
                        next
                    }
                }
            };
            ids.push(K::id(&row));
        }
    }
    c.after_count = count_rows::<K, _>(db, project_id).await?;
    Ok((c, ids))
}

async fn apply_accounts<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    rows: Option<Vec<(String, accounts::ValidFields)>>,
    mode: Mode,
) -> Result<Counts, ServiceError> {
    let count = || async {
        provider_accounts::Entity::find()
            .filter(provider_accounts::Column::ProjectId.eq(project_id))
            .count(db)
            .await
    };
    let mut c = Counts {
        before_count: count().await?,
        ..Counts::default()
    };
    if let Some(rows) = rows {
        c.provided = true;
        if mode == Mode::Replace {
            c.replaced = true;
            c.deleted = provider_accounts::Entity::delete_many()
                .filter(provider_accounts::Column::ProjectId.eq(project_id))
                .exec(db)
                .await?
                .rows_affected;
        }
        for (code, fields) in rows {
            let existing = provider_accounts::Entity::find()
                .filter(provider_accounts::Column::ProjectId.eq(project_id))
                .filter(provider_accounts::Column::ProviderCode.eq(code.as_str()))
                .one(db)
                .await?;
            match existing {
                None => {
                    let mut row = accounts::new_row(project_id, &code);
                    accounts::apply(&mut row, fields);
                    provider_accounts::ActiveModel::from(row).insert(db).await?;
                    c.created += 1;
                }
                Some(current) => {
                    let mut next = current.clone();
                    accounts::apply(&mut next, fields);
                    if content(accounts::view(&next)) == content(accounts::view(&current)) {
                        c.unchanged += 1;
                    } else {
                        next.updated_at = time::now();
                        provider_accounts::ActiveModel::from(next)
                            .reset_all()
                            .update(db)
                            .await?;
                        c.updated += 1;
                    }
                }
            }
        }
    }
    c.after_count = count().await?;
    Ok(c)
}

async fn apply_secrets<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    rows: Option<Vec<(String, String)>>,
    key_ref: &str,
) -> Result<Counts, ServiceError> {
    let count = || async {
        project_secrets::Entity::find()
            .filter(project_secrets::Column::ProjectId.eq(project_id))
            .count(db)
            .await
    };
    let mut c = Counts {
        before_count: count().await?,
        ..Counts::default()
    };
    if let Some(rows) = rows {
        c.provided = true;
        let now = time::now();
        for (code, name) in rows {
            // Merge-only: an existing secret keeps its value; a new one is
            // a placeholder without a value.
            let bumped = project_secrets::Entity::update_many()
                .col_expr(project_secrets::Column::UpdatedAt, Expr::value(now))
                .filter(project_secrets::Column::ProjectId.eq(project_id))
                .filter(project_secrets::Column::ProviderCode.eq(code.as_str()))
                .filter(project_secrets::Column::SecretName.eq(name.as_str()))
                .exec(db)
                .await?
                .rows_affected;
            if bumped > 0 {
                c.unchanged += 1;
                continue;
            }
            project_secrets::ActiveModel::from(project_secrets::Model {
                id: Uuid::now_v7(),
                project_id,
                provider_code: code,
                secret_name: name,
                secret_value: String::new(),
                key_ref: key_ref.to_string(),
                created_at: now,
                updated_at: now,
            })
            .insert(db)
            .await?;
            c.created += 1;
        }
    }
    c.after_count = count().await?;
    Ok(c)
}

/// Applies an import in one transaction; a dry run rolls it back after
/// reading the result, so the report is exactly what a real import does.
#[tracing::instrument(skip_all, fields(project = %project.slug))]
pub async fn import(
    db: &DatabaseConnection,
    project: &project_rows::Model,
    request: ImportRequest,
    secret_key_ref: &str,
) -> Result<Value, ServiceError> {
    let ImportRequest {
        mode,
        dry_run,
        settings: n,
    } = request;
    let txn = crate::db::begin_write(db).await?;
    let pid = project.id;

    let mut applied = BTreeMap::new();
    let mut sizes = |name: &'static str, len: Option<usize>| {
        applied.insert(name, len.unwrap_or(0));
    };
    sizes("provider_accounts", n.accounts.as_ref().map(Vec::len));
    sizes("style_guides", n.style_guides.as_ref().map(Vec::len));
    sizes("characters", n.characters.as_ref().map(Vec::len));
    sizes("reference_sets", n.reference_sets.as_ref().map(Vec::len));
    sizes("secrets", n.secrets.as_ref().map(Vec::len));
    sizes("prompt_templates", n.templates.as_ref().map(Vec::len));

    // The project's own fields.
    let (mut name_changed, mut description_changed) = (false, false);
    let mut project_row = project.clone();
    if let Some((name, description)) = &n.project {
        if let Some(name) = name
            && *name != project_row.name
        {
            project_row.name = name.clone();
            name_changed = true;
        }
        if let Some(d) = description
            && *d != project_row.description
        {
            project_row.description = d.clone();
            description_changed = true;
        }
    }
    project_row.updated_at = time::now();
    project_rows::ActiveModel::from(project_row.clone())
        .reset_all()
        .update(&txn)
        .await?;
    let project_updated = name_changed || description_changed;

    let accounts = apply_accounts(&txn, pid, n.accounts, mode).await?;
    let (guides, _) = apply_named::<StyleGuide, _>(&txn, pid, n.style_guides, mode).await?;
    let (characters, _) = apply_named::<Character, _>(&txn, pid, n.characters, mode).await?;
    let (templates, _) = apply_named::<PromptTemplate, _>(&txn, pid, n.templates, mode).await?;
    // Sets, then each supplied set's items replaced by the supplied list.
    let (sets_rows, set_items): (Option<Vec<_>>, Vec<Vec<Item>>) = match n.reference_sets {
        Some(rows) => {
            let (named, items): (Vec<_>, Vec<_>) = rows
                .into_iter()
                .map(|(name, v, items)| ((name, v), items))
                .unzip();
            (Some(named), items)
        }
        None => (None, Vec::new()),
    };
    let (sets, set_ids) = apply_named::<ReferenceSet, _>(&txn, pid, sets_rows, mode).await?;
    for (set_id, items) in set_ids.into_iter().zip(set_items) {
        reference_set_items::Entity::delete_many()
            .filter(reference_set_items::Column::ReferenceSetId.eq(set_id))
            .exec(&txn)
            .await?;
        let now = time::now();
        for it in items {
            reference_set_items::ActiveModel::from(reference_set_items::Model {
                id: Uuid::now_v7(),
                project_id: pid,
                reference_set_id: set_id,
                label: it.label,
                content_uri: it.content_uri,
                content_text: it.content_text,
                asset_id: None,
                sort_order: it.sort_order,
                weight: None,
                notes: None,
                metadata_json: it.metadata_json,
                created_at: now,
                updated_at: now,
            })
            .insert(&txn)
            .await?;
        }
    }
    let secrets_counts = apply_secrets(&txn, pid, n.secrets, secret_key_ref).await?;

    let snapshot = snapshot(&txn, pid).await?;
    let changes = json!({
        "project": {
            "provided": n.project.is_some(), "updated": project_updated,
            "name_changed": name_changed, "description_changed": description_changed,
        },
        "provider_accounts": accounts, "style_guides": guides, "characters": characters,
        "reference_sets": sets, "secrets": secrets_counts, "prompt_templates": templates,
    });
    if dry_run {
        crate::db::rollback(txn).await?;
    } else {
        crate::db::commit(txn).await?;
    }
    Ok(json!({
        "schema_version": SCHEMA,
        "mode": mode.as_str(),
        "dry_run": dry_run,
        "project_updated": project_updated,
        "applied": applied,
        "changes": changes,
        "project": project_view(&project_row),
        "settings": snapshot,
    }))
}
