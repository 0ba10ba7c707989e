//! What every operation can answer besides its own responses: the failures
//! the service's shared layers produce (authentication, extractors, body
//! limits, the database). Added to the generated document by rule, so the
//! served `/openapi.json` lists every status a route can return.

use serde_json::{Value, json};

/// Routes served without a token.
const PUBLIC: &[&str] = &["/health", "/openapi.json", "/metrics"];

/// Body fields a route requires (the contract's `*` fields). Several
/// routes share one body type between create and update, so the
/// requirement is stated per operation here, around the shared schema.
const REQUIRED: &[(&str, &str, &[&str])] = &[
    ("post", "/api/projects", &["name"]),
    (
        "post",
        "/api/projects/{slug}/asset-links",
        &["parent_asset_id", "child_asset_id"],
    ),
    (
        "post",
        "/api/projects/{slug}/prompt-templates",
        &["name", "template_text"],
    ),
    (
        "post",
        "/api/projects/{slug}/provider-accounts",
        &["provider_code"],
    ),
    (
        "post",
        "/api/projects/{slug}/style-guides",
        &["name", "instructions"],
    ),
    ("post", "/api/projects/{slug}/characters", &["name"]),
    ("post", "/api/projects/{slug}/reference-sets", &["name"]),
    (
        "post",
        "/api/projects/{slug}/reference-sets/{referenceSetId}/items",
        &["label"],
    ),
    (
        "post",
        "/api/projects/{slug}/chat/sessions/{sessionId}/messages",
        &["role", "content"],
    ),
    (
        "post",
        "/api/projects/{slug}/agent/instructions",
        &["instruction_text"],
    ),
    (
        "post",
        "/api/projects/{slug}/secrets",
        &["provider_code", "secret_name", "secret_value"],
    ),
    ("post", "/api/projects/{slug}/webhooks", &["url"]),
];

/// States the required fields of `op`'s JSON body around its schema, and
/// that a JSON body may be left out (it reads as `{}`, as in v1's
/// extractor-less routes; v1 itself needed at least `{}`).
fn body_requirements(method: &str, path: &str, op: &mut Value) {
    let Some(body) = op.get_mut("requestBody").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(json) = body
        .get_mut("content")
        .and_then(|c| c.get_mut("application/json"))
    else {
        return;
    };
    let required = REQUIRED
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, fields)| *fields);
    if let (Some(fields), Some(schema)) = (required, json.get("schema").cloned()) {
        json["schema"] = json!({ "allOf": [schema], "required": fields });
    }
    body.insert("required".into(), json!(required.is_some()));
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Adds the shared failures to every operation that does not list them.
pub fn complete(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let has_path_params = path.contains('{');
            let has_query = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            let has_body = op.get("requestBody").is_some();
            body_requirements(method, path, op);
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(description));
            };
            if !PUBLIC.contains(&path.as_str()) {
                add(
                    "401",
                    "unauthorized: no token, or an unknown, revoked or expired one",
                );
                add(
                    "403",
                    "forbidden: the token may not act here (another project, or a project-scoped token on an operator route)",
                );
            }
            if has_path_params || has_query || has_body {
                add(
                    "400",
                    "validation_error; error_detail.code: invalid_path, invalid_query, \
                     malformed_json, invalid_utf8, invalid_body, or the route's own checks",
                );
            }
            if has_path_params {
                add("404", "not_found");
            }
            if has_body {
                add(
                    "413",
                    "payload_too_large: the body exceeds the configured limit",
                );
                add(
                    "415",
                    "unsupported_media_type / unsupported_content_encoding: not an uncompressed JSON body",
                );
                add(
                    "422",
                    "invalid_field_type: a field has the wrong JSON type (unknown fields are ignored, as in v1)",
                );
            }
            add(
                "500",
                "internal_error: the message is always \"Internal server error\"",
            );
            add(
                "503",
                "a dependency is down for now (the engine, the row writer, object storage): retry later",
            );
        }
    }
}
