//! Reading an assistant's answer: the JSON found in its text, the import
//! request's mode and flags, and the sections normalised into rows to apply.

use serde_json::{Map, Value, json};

use crate::catalog::{
    self, CatalogKind, Character, Input, PromptTemplate, ReferenceSet, StyleGuide,
};
use crate::error::{optional_text, required_text};
use crate::{ServiceError, provider_accounts as accounts};

use super::invalid;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Merge,
    Replace,
}

impl Mode {
    pub(super) fn parse(raw: &str) -> Result<Self, ServiceError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "merge" => Ok(Mode::Merge),
            "replace" => Ok(Mode::Replace),
            _ => Err(ServiceError::validation(
                "invalid_mode",
                "Field 'mode' must be one of: merge, replace",
            )),
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Mode::Merge => "merge",
            Mode::Replace => "replace",
        }
    }
}

/// The JSON object in an assistant's answer: the whole text, a fenced
/// block, or the span from the first `{` to the last `}`.
pub(super) fn parse_answer(text: &str) -> Result<Value, ServiceError> {
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
    pub(super) settings: Normalized,
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
pub(super) struct Normalized {
    pub(super) project: Option<(Option<String>, Option<String>)>,
    pub(super) accounts: Option<Vec<(String, accounts::ValidFields)>>,
    pub(super) style_guides: Option<Vec<(String, catalog::Values)>>,
    pub(super) characters: Option<Vec<(String, catalog::Values)>>,
    pub(super) reference_sets: Option<Vec<(String, catalog::Values, Vec<Item>)>>,
    pub(super) secrets: Option<Vec<(String, String)>>,
    pub(super) templates: Option<Vec<(String, catalog::Values)>>,
}

pub(super) struct Item {
    pub(super) label: String,
    pub(super) content_uri: Option<String>,
    pub(super) content_text: Option<String>,
    pub(super) sort_order: i32,
    pub(super) metadata_json: Value,
}

pub(super) fn text_of<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ServiceError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("Field '{field}' must be a string"))),
    }
}

pub(super) fn section<'a>(
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
pub(super) fn named<K: CatalogKind>(
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

pub(super) fn normalize(settings: &Value) -> Result<Normalized, ServiceError> {
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
