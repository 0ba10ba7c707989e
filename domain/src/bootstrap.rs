//! Bootstrap: a project's settings exported with a prompt an AI assistant
//! can answer (`kroma.bootstrap.v1`), and the answer imported back — merged
//! or replacing the sections it supplies, optionally as a dry run that
//! reports the changes and writes nothing. Secret values never travel
//! either way: secrets are metadata only, and merge-only.

use std::collections::BTreeMap;

use entities::{project_secrets, projects as project_rows, provider_accounts, reference_set_items};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::catalog::{
    self, CatalogKind, Character, Input, PromptTemplate, ReferenceSet, StyleGuide,
};
use crate::error::{optional_text, required_text};
use crate::{ServiceError, provider_accounts as accounts, secrets, time};

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

// ---- import: parsing ------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Merge,
    Replace,
}

impl Mode {
    fn parse(raw: &str) -> Result<Self, ServiceError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "merge" => Ok(Mode::Merge),
            "replace" => Ok(Mode::Replace),
            _ => Err(ServiceError::validation(
                "invalid_mode",
                "Field 'mode' must be one of: merge, replace",
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Merge => "merge",
            Mode::Replace => "replace",
        }
    }
}

/// The JSON object in an assistant's answer: the whole text, a fenced
/// block, or the span from the first `{` to the last `}`.
fn parse_answer(text: &str) -> Result<Value, ServiceError> {
    let trimmed = text.trim();
    let fenced = trimmed
        .strip_prefix("```")
        .map(|rest| rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric()))
        .and_then(|rest| rest.trim_end().strip_suffix("```"));
    let span = match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(a), Some(b)) if a < b => Some(&trimmed[a..=b]),
        _ => None,
    };
    [Some(trimmed), fenced, span]
        .into_iter()
        .flatten()
        .find_map(|t| serde_json::from_str::<Value>(t).ok())
        .ok_or_else(|| invalid("Could not parse JSON from 'ai_response_text'"))
}

pub struct ImportRequest {
    pub mode: Mode,
    pub dry_run: bool,
    settings: Normalized,
}

/// Checks the request before the project is looked up (400 before 404).
pub fn parse_request(
    mode: Option<&str>,
    dry_run: Option<bool>,
    settings: Option<Value>,
    ai_response_text: Option<&str>,
) -> Result<ImportRequest, ServiceError> {
    let (settings, inner_mode) = match (settings, ai_response_text) {
        (Some(s), _) => (s, None),
        (None, Some(text)) if text.trim().is_empty() => {
            return Err(invalid("Field 'ai_response_text' must not be empty"));
        }
        (None, Some(text)) => {
            let parsed = parse_answer(text)?;
            let Value::Object(obj) = parsed else {
                return Err(invalid(
                    "Could not parse bootstrap JSON from 'ai_response_text'",
                ));
            };
            match obj.get("settings") {
                Some(s) => (
                    s.clone(),
                    obj.get("mode").and_then(Value::as_str).map(str::to_string),
                ),
                None => (Value::Object(obj), None),
            }
        }
        (None, None) => return Err(invalid("Provide either 'settings' or 'ai_response_text'")),
    };
    let mode = match mode.or(inner_mode.as_deref()) {
        Some(m) => Mode::parse(m)?,
        None => Mode::Merge,
    };
    Ok(ImportRequest {
        mode,
        dry_run: dry_run.unwrap_or(false),
        settings: normalize(&settings)?,
    })
}

/// Checked sections; `None`: the section was not supplied.
struct Normalized {
    project: Option<(Option<String>, Option<String>)>,
    accounts: Option<Vec<(String, accounts::ValidFields)>>,
    style_guides: Option<Vec<(String, catalog::Values)>>,
    characters: Option<Vec<(String, catalog::Values)>>,
    reference_sets: Option<Vec<(String, catalog::Values, Vec<Item>)>>,
    secrets: Option<Vec<(String, String)>>,
    templates: Option<Vec<(String, catalog::Values)>>,
}

struct Item {
    label: String,
    content_uri: Option<String>,
    content_text: Option<String>,
    sort_order: i32,
    metadata_json: Value,
}

fn text_of<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ServiceError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("Field '{field}' must be a string"))),
    }
}

fn section<'a>(
    settings: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<Vec<&'a Map<String, Value>>>, ServiceError> {
    match settings.get(name) {
        None => Ok(None),
        Some(Value::Array(rows)) => rows
            .iter()
            .map(|r| {
                r.as_object()
                    .ok_or_else(|| invalid(format!("Entries of '{name}' must be objects")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid(format!("Field '{name}' must be an array"))),
    }
}

/// A catalogue section, deduplicated by lower-cased name (last wins).
fn named<K: CatalogKind>(
    settings: &Map<String, Value>,
    name: &str,
) -> Result<Option<Vec<(String, catalog::Values)>>, ServiceError> {
    let Some(rows) = section(settings, name)? else {
        return Ok(None);
    };
    let mut out: Vec<(String, catalog::Values)> = Vec::new();
    for obj in rows {
        let fields = K::FIELDS
            .iter()
            .map(|f| text_of(obj, f.name).map(|v| (f.name, v)))
            .collect::<Result<Vec<_>, _>>()?;
        let (n, values) = catalog::validate_create::<K>(&Input {
            name: text_of(obj, "name")?,
            fields,
        })?;
        out.retain(|(existing, _)| existing.to_lowercase() != n.to_lowercase());
        out.push((n, values));
    }
    Ok(Some(out))
}

fn normalize(settings: &Value) -> Result<Normalized, ServiceError> {
    let Some(s) = settings.as_object() else {
        return Err(invalid("Field 'settings' must be an object"));
    };
    let project = match s.get("project") {
        None => None,
        Some(Value::Object(p)) => {
            let name = match text_of(p, "name")? {
                Some(n) => Some(required_text("name", Some(n), 200)?),
                None => None,
            };
            let description = text_of(p, "description")?.map(|d| d.trim().to_string());
            Some((name, description))
        }
        Some(_) => return Err(invalid("Field 'project' must be an object")),
    };
    let accounts = match section(s, "provider_accounts")? {
        None => None,
        Some(rows) => {
            let mut out: Vec<(String, accounts::ValidFields)> = Vec::new();
            for obj in rows {
                let code = accounts::normalize_code(text_of(obj, "provider_code")?)?;
                let fields = accounts::validate(accounts::AccountFields {
                    display_name: text_of(obj, "display_name")?,
                    account_ref: text_of(obj, "account_ref")?,
                    base_url: text_of(obj, "base_url")?,
                    enabled: obj.get("enabled").and_then(Value::as_bool),
                    config_json: obj.get("config_json").cloned(),
                })?;
                out.retain(|(c, _)| *c != code);
                out.push((code, fields));
            }
            Some(out)
        }
    };
    let reference_sets = match section(s, "reference_sets")? {
        None => None,
        Some(rows) => {
            let mut out: Vec<(String, catalog::Values, Vec<Item>)> = Vec::new();
            for obj in rows {
                let (name, values) = catalog::validate_create::<ReferenceSet>(&Input {
                    name: text_of(obj, "name")?,
                    fields: vec![("description", text_of(obj, "description")?)],
                })?;
                let Some(Value::Array(raw_items)) = obj.get("items") else {
                    return Err(ServiceError::required("items"));
                };
                let mut items = Vec::new();
                for it in raw_items {
                    let it = it
                        .as_object()
                        .ok_or_else(|| invalid("Entries of 'items' must be objects"))?;
                    let label = required_text("label", text_of(it, "label")?, 200)?;
                    let content_uri =
                        optional_text("content_uri", text_of(it, "content_uri")?, 2048)?;
                    let content_text =
                        optional_text("content_text", text_of(it, "content_text")?, 64 * 1024)?;
                    if content_uri.is_none() && content_text.is_none() {
                        return Err(ServiceError::validation(
                            "field_required",
                            "Provide at least one of: content_uri, content_text",
                        ));
                    }
                    items.push(Item {
                        label,
                        content_uri,
                        content_text,
                        sort_order: it.get("sort_order").and_then(Value::as_i64).unwrap_or(0)
                            as i32,
                        metadata_json: it
                            .get("metadata_json")
                            .cloned()
                            .unwrap_or_else(|| json!({})),
                    });
                }
                out.retain(|(n, _, _)| n.to_lowercase() != name.to_lowercase());
                out.push((name, values, items));
            }
            Some(out)
        }
    };
    let secrets = match section(s, "secrets")? {
        None => None,
        Some(rows) => {
            let mut out: Vec<(String, String)> = Vec::new();
            for obj in rows {
                let code = accounts::normalize_code(text_of(obj, "provider_code")?)?;
                let name = required_text("secret_name", text_of(obj, "secret_name")?, 128)?;
                if !out.contains(&(code.clone(), name.clone())) {
                    out.push((code, name));
                }
            }
            Some(out)
        }
    };
    let n = Normalized {
        project,
        accounts,
        style_guides: named::<StyleGuide>(s, "style_guides")?,
        characters: named::<Character>(s, "characters")?,
        reference_sets,
        secrets,
        templates: named::<PromptTemplate>(s, "prompt_templates")?,
    };
    if n.project.is_none()
        && n.accounts.is_none()
        && n.style_guides.is_none()
        && n.characters.is_none()
        && n.reference_sets.is_none()
        && n.secrets.is_none()
        && n.templates.is_none()
    {
        return Err(invalid("Import payload does not include any settings"));
    }
    Ok(n)
}

// ---- import: applying -----------------------------------------------------

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
