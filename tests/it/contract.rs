//! The envelope, headers, OpenAPI parity and framework-level failures.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

/// The (method, path) pairs this build serves. Adding a route means adding it
/// here, to the OpenAPI document (automatic) and to docs/api.md.
const EXPECTED_ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("POST", "/auth/token"),
    ("GET", "/auth/tokens"),
    ("DELETE", "/auth/tokens/{tokenId}"),
    ("GET", "/api/projects"),
    ("POST", "/api/projects"),
    ("GET", "/api/projects/{slug}"),
    ("GET", "/api/projects/{slug}/storage"),
    ("PUT", "/api/projects/{slug}/storage/local"),
    ("PUT", "/api/projects/{slug}/storage/s3"),
    ("POST", "/api/projects/{slug}/runs/trigger"),
    ("POST", "/api/projects/{slug}/runs/validate-config"),
    ("GET", "/api/projects/{slug}/runs"),
    ("GET", "/api/projects/{slug}/runs/{runId}"),
    ("GET", "/api/projects/{slug}/runs/{runId}/jobs"),
    ("GET", "/api/projects/{slug}/runs/{runId}/events"),
    ("POST", "/api/projects/{slug}/runs/{runId}/cancel"),
    ("POST", "/api/projects/{slug}/runs/{runId}/retry"),
    (
        "POST",
        "/api/projects/{slug}/runs/{runId}/jobs/{jobId}/cancel",
    ),
    (
        "GET",
        "/api/projects/{slug}/runs/{runId}/jobs/{jobId}/candidates",
    ),
    ("GET", "/api/projects/{slug}/assets"),
    ("POST", "/api/projects/{slug}/assets"),
    ("GET", "/api/projects/{slug}/assets/{assetId}"),
    ("GET", "/api/projects/{slug}/assets/{assetId}/content"),
    ("GET", "/api/projects/{slug}/style-guides"),
    ("POST", "/api/projects/{slug}/style-guides"),
    ("GET", "/api/projects/{slug}/style-guides/{styleGuideId}"),
    ("PUT", "/api/projects/{slug}/style-guides/{styleGuideId}"),
    ("DELETE", "/api/projects/{slug}/style-guides/{styleGuideId}"),
    ("GET", "/api/projects/{slug}/characters"),
    ("POST", "/api/projects/{slug}/characters"),
    ("GET", "/api/projects/{slug}/characters/{characterId}"),
    ("PUT", "/api/projects/{slug}/characters/{characterId}"),
    ("DELETE", "/api/projects/{slug}/characters/{characterId}"),
    ("GET", "/api/projects/{slug}/reference-sets"),
    ("POST", "/api/projects/{slug}/reference-sets"),
    (
        "GET",
        "/api/projects/{slug}/reference-sets/{referenceSetId}",
    ),
    (
        "PUT",
        "/api/projects/{slug}/reference-sets/{referenceSetId}",
    ),
    (
        "DELETE",
        "/api/projects/{slug}/reference-sets/{referenceSetId}",
    ),
    ("GET", "/api/projects/{slug}/prompt-templates"),
    ("POST", "/api/projects/{slug}/prompt-templates"),
    ("GET", "/api/projects/{slug}/prompt-templates/{templateId}"),
    ("PUT", "/api/projects/{slug}/prompt-templates/{templateId}"),
    (
        "DELETE",
        "/api/projects/{slug}/prompt-templates/{templateId}",
    ),
    (
        "GET",
        "/api/projects/{slug}/prompt-templates/{templateId}/versions",
    ),
    (
        "GET",
        "/api/projects/{slug}/reference-sets/{referenceSetId}/items",
    ),
    (
        "POST",
        "/api/projects/{slug}/reference-sets/{referenceSetId}/items",
    ),
    (
        "GET",
        "/api/projects/{slug}/reference-sets/{referenceSetId}/items/{itemId}",
    ),
    (
        "PUT",
        "/api/projects/{slug}/reference-sets/{referenceSetId}/items/{itemId}",
    ),
    (
        "DELETE",
        "/api/projects/{slug}/reference-sets/{referenceSetId}/items/{itemId}",
    ),
    ("GET", "/api/projects/{slug}/chat/sessions"),
    ("POST", "/api/projects/{slug}/chat/sessions"),
    ("GET", "/api/projects/{slug}/chat/sessions/{sessionId}"),
    (
        "GET",
        "/api/projects/{slug}/chat/sessions/{sessionId}/messages",
    ),
    (
        "POST",
        "/api/projects/{slug}/chat/sessions/{sessionId}/messages",
    ),
    ("GET", "/api/projects/{slug}/agent/instructions"),
    ("POST", "/api/projects/{slug}/agent/instructions"),
    (
        "GET",
        "/api/projects/{slug}/agent/instructions/{instructionId}",
    ),
    (
        "GET",
        "/api/projects/{slug}/agent/instructions/{instructionId}/events",
    ),
    (
        "POST",
        "/api/projects/{slug}/agent/instructions/{instructionId}/confirm",
    ),
    (
        "POST",
        "/api/projects/{slug}/agent/instructions/{instructionId}/cancel",
    ),
    ("GET", "/api/projects/{slug}/bootstrap-prompt"),
    ("POST", "/api/projects/{slug}/bootstrap-import"),
    ("GET", "/api/projects/{slug}/asset-links"),
    ("POST", "/api/projects/{slug}/asset-links"),
    ("GET", "/api/projects/{slug}/asset-links/{linkId}"),
    ("PUT", "/api/projects/{slug}/asset-links/{linkId}"),
    ("DELETE", "/api/projects/{slug}/asset-links/{linkId}"),
    ("GET", "/api/projects/{slug}/quality-reports"),
    ("GET", "/api/projects/{slug}/cost-events"),
    ("GET", "/api/projects/{slug}/cost-summary"),
    ("GET", "/api/projects/{slug}/runs/{runId}/quality-summary"),
    ("GET", "/api/projects/{slug}/exports"),
    ("GET", "/api/projects/{slug}/exports/{exportId}"),
    ("POST", "/api/projects/{slug}/exports"),
    ("POST", "/api/projects/{slug}/exports/{exportId}/cancel"),
    ("POST", "/api/projects/{slug}/sync"),
    ("GET", "/api/projects/{slug}/sync"),
    ("GET", "/api/projects/{slug}/provider-accounts"),
    ("POST", "/api/projects/{slug}/provider-accounts"),
    (
        "GET",
        "/api/projects/{slug}/provider-accounts/{providerCode}",
    ),
    (
        "PUT",
        "/api/projects/{slug}/provider-accounts/{providerCode}",
    ),
    (
        "DELETE",
        "/api/projects/{slug}/provider-accounts/{providerCode}",
    ),
    (
        "POST",
        "/api/projects/{slug}/provider-accounts/{providerCode}/check",
    ),
    ("GET", "/api/projects/{slug}/secrets"),
    ("GET", "/api/projects/{slug}/secrets/rotation-status"),
    ("POST", "/api/projects/{slug}/secrets"),
    ("POST", "/api/projects/{slug}/secrets/rotate"),
    (
        "DELETE",
        "/api/projects/{slug}/secrets/{providerCode}/{secretName}",
    ),
    ("POST", "/api/projects/{slug}/webhooks"),
    ("GET", "/api/projects/{slug}/webhooks"),
    ("DELETE", "/api/projects/{slug}/webhooks/{webhookId}"),
    (
        "GET",
        "/api/projects/{slug}/webhooks/{webhookId}/deliveries",
    ),
    ("GET", "/api/projects/{slug}/queue"),
    ("POST", "/api/projects/{slug}/queue/pause"),
    ("POST", "/api/projects/{slug}/queue/resume"),
    ("GET", "/api/projects/{slug}/events/ws"),
    ("GET", "/admin/supervision"),
    ("GET", "/admin/nodes"),
    ("POST", "/admin/actors/{name}/restart"),
    ("GET", "/metrics"),
    ("POST", "/admin/pause"),
    ("POST", "/admin/resume"),
    ("POST", "/api/projects/{slug}/voice/speech"),
    ("POST", "/api/projects/{slug}/voice/transcriptions"),
    ("GET", "/api/projects/{slug}/voice/requests"),
    ("GET", "/api/projects/{slug}/voice/requests/{requestId}"),
];

/// Routes added to the v1 contract (new endpoints only; see docs/api.md).
const ADDITIONS: &[&str] = &[
    "/openapi.json",
    "/api/projects/{slug}/runs/{runId}/events",
    "/api/projects/{slug}/runs/{runId}/cancel",
    "/api/projects/{slug}/runs/{runId}/retry",
    "/api/projects/{slug}/runs/{runId}/jobs/{jobId}/cancel",
    "/api/projects/{slug}/runs/{runId}/jobs/{jobId}/candidates",
    "/api/projects/{slug}/queue",
    "/api/projects/{slug}/queue/pause",
    "/api/projects/{slug}/queue/resume",
    "/api/projects/{slug}/events/ws",
    "/admin/supervision",
    "/admin/nodes",
    "/admin/actors/{name}/restart",
    "/metrics",
    "/admin/pause",
    "/admin/resume",
    "/api/projects/{slug}/assets/{assetId}/content",
    "/api/projects/{slug}/cost-summary",
    "/api/projects/{slug}/runs/{runId}/quality-summary",
    "/api/projects/{slug}/provider-accounts/{providerCode}/check",
    "/api/projects/{slug}/prompt-templates/{templateId}/versions",
    "/api/projects/{slug}/webhooks",
    "/api/projects/{slug}/webhooks/{webhookId}",
    "/api/projects/{slug}/webhooks/{webhookId}/deliveries",
    "/api/projects/{slug}/exports/{exportId}/cancel",
    "/api/projects/{slug}/sync",
    "/api/projects/{slug}/voice/speech",
    "/api/projects/{slug}/voice/transcriptions",
    "/api/projects/{slug}/voice/requests",
    "/api/projects/{slug}/voice/requests/{requestId}",
];

/// New methods on frozen v1 paths (see docs/api.md).
const ADDED_METHODS: &[(&str, &str)] = &[
    ("POST", "/api/projects/{slug}/assets"),
    ("POST", "/api/projects/{slug}/exports"),
];

const FROZEN_ROUTES: &str = include_str!("frozen_routes.txt");

#[actix_web::test]
async fn health_reports_identity_backend_and_schema() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-atelier-contract"], "v1");
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["ok"], json!(true));
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "atelier");
    assert_eq!(body["contract_version"], "v1");
    assert_eq!(body["route_count"], json!(EXPECTED_ROUTES.len()));
    assert!(body["started_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let backend = if crate::helpers::on_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(body["database_backend"], backend);
    assert_eq!(
        body["schema_version"],
        json!(migration::known_migration_names().last().unwrap())
    );
}

fn documented_pairs(doc: &Value) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                pairs.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    pairs
}

#[actix_web::test]
async fn openapi_matches_mounted_routes() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let documented = documented_pairs(&doc);
    let expected: BTreeSet<(String, String)> = EXPECTED_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, expected,
        "OpenAPI document and the route list differ"
    );

    // Every documented route is really mounted: probing it never yields the
    // router's own 404/405 (handlers may still answer 4xx for the dummy ids).
    for (method, path) in &documented {
        if path == "/metrics" {
            // Prometheus text, not JSON (tests/it/admin.rs covers it).
            continue;
        }
        let concrete = path
            .replace("{slug}", "probe")
            .replace("{tokenId}", "probe");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (_, body) = app
            .call(method.clone(), &concrete, Some(&token), Some(json!({})))
            .await;
        let code = body["error_code"].as_str().unwrap_or("");
        assert!(
            code != "route_not_found" && code != "method_not_allowed",
            "{method} {concrete} is documented but not mounted: {body}"
        );
    }

    // Every contract route we serve is one of the frozen v1 routes (no drift in
    // paths or methods), apart from the documented additions.
    let frozen: BTreeSet<(String, String)> = FROZEN_ROUTES
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    for pair in documented.iter().filter(|(m, p)| {
        !ADDITIONS.contains(&p.as_str()) && !ADDED_METHODS.contains(&(m.as_str(), p.as_str()))
    }) {
        assert!(frozen.contains(pair), "{pair:?} is not a frozen v1 route");
    }
    // Every error response in the document uses the envelope schema.
    let text = doc.to_string();
    assert!(text.contains("\"ErrorBody\""));
}

#[actix_web::test]
async fn unknown_routes_and_methods_use_the_envelope() {
    let app = TestApp::spawn().await;
    let (s, b) = app.call(Method::GET, "/nope", None, None).await;
    assert_error(s, &b, 404, "route_not_found");
    let (s, b) = app
        .call(Method::GET, "/api/projects/a/b/c/d", None, None)
        .await;
    assert_error(s, &b, 404, "route_not_found");
    let (s, b) = app.call(Method::POST, "/health", None, None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    let (s, b) = app
        .call(Method::DELETE, "/api/projects/demo", None, None)
        .await;
    assert_error(s, &b, 405, "method_not_allowed");
}

#[actix_web::test]
async fn malformed_bodies_get_typed_errors_and_change_nothing() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let url = format!("{}/api/projects", app.base);
    let send = |body: Vec<u8>, ct: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let check = |res: reqwest::Response, status: u16, code: &'static str| async move {
        let s = res.status();
        let text = res.text().await.unwrap();
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_error(s, &body, status, code);
    };
    check(
        send(b"{\"name\":".to_vec(), "application/json")
            .await
            .unwrap(),
        400,
        "malformed_json",
    )
    .await;
    check(
        send(b"{\"name\": 5}".to_vec(), "application/json")
            .await
            .unwrap(),
        422,
        "invalid_field_type",
    )
    .await;
    check(
        send(b"{\"name\":\"x\"}".to_vec(), "text/plain")
            .await
            .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    check(
        send(vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'], "application/json")
            .await
            .unwrap(),
        400,
        "invalid_utf8",
    )
    .await;
    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(3 * 1024 * 1024));
    check(
        send(huge.into_bytes(), "application/json").await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    check(
        send(b"{}".to_vec(), "application/json").await.unwrap(),
        400,
        "field_required",
    )
    .await;
    let (s, b) = app.get("/api/projects?username=a&username=b", &token).await;
    assert_error(s, &b, 400, "invalid_query");

    let (_, list) = app.get("/api/projects", &token).await;
    assert_eq!(
        list["count"],
        json!(0),
        "a rejected request created something: {list}"
    );
}

#[actix_web::test]
async fn every_error_and_success_carries_the_contract_header() {
    let app = TestApp::spawn().await;
    for path in ["/health", "/nope", "/api/projects"] {
        let res = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["x-atelier-contract"], "v1", "{path}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
    }
}

/// Structural validation of the served OpenAPI document: every `$ref`
/// resolves, every path template parameter is declared as a path parameter
/// (and no undeclared one is), operation ids are unique, every operation has
/// responses, and the document deserialises as OpenAPI.
#[actix_web::test]
async fn openapi_document_is_internally_valid() {
    let app = TestApp::spawn().await;
    let (_, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    let parsed: Result<utoipa::openapi::OpenApi, _> = serde_json::from_value(doc.clone());
    assert!(
        parsed.is_ok(),
        "not an OpenAPI document: {:?}",
        parsed.err()
    );

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }

    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let templated: BTreeSet<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, templated, "{method} {path}: path parameters");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            if let Some(id) = op["operationId"].as_str() {
                assert!(
                    operation_ids.insert(id.to_string()),
                    "duplicate operationId {id}"
                );
            }
        }
    }
}

/// Pages served next to the API, not part of it (not in the OpenAPI document).
const PAGES: &[(&str, &str)] = &[
    ("GET", "/docs"),
    ("GET", "/console"),
    ("GET", "/console/console.js"),
    ("GET", "/console/console.css"),
];

/// The other direction of `openapi_matches_mounted_routes`: every route the
/// `api` crate's source mounts — `#[get("…")]`-style attributes (also inside
/// `macro_rules!`, resolved through each invocation) and `.route("…")` calls
/// — is in the OpenAPI document (or is one of the console's pages). Read
/// from the source, so it is independent of the document.
#[actix_web::test]
async fn every_mounted_route_is_documented() {
    let app = TestApp::spawn().await;
    let (_, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    let documented = documented_pairs(&doc);
    let mounted =
        mounted_in_source(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("api/src"));
    assert!(mounted.len() > 80, "the scan found too little: {mounted:?}");
    let pages: BTreeSet<(String, String)> = PAGES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let undocumented: Vec<_> = mounted
        .difference(&documented)
        .filter(|p| !pages.contains(p))
        .collect();
    assert!(
        undocumented.is_empty(),
        "mounted but not documented: {undocumented:?}"
    );
    let unmounted: Vec<_> = documented.difference(&mounted).collect();
    assert!(
        unmounted.is_empty(),
        "documented but not in the source: {unmounted:?}"
    );
    for (method, path) in PAGES {
        assert!(
            mounted.contains(&(method.to_string(), path.to_string())),
            "{path}"
        );
    }
    // `/health` counts exactly the documented routes.
    let (_, health) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health["route_count"], json!(documented.len()));
}

fn string_literal(s: &str) -> Option<String> {
    let s = s.trim_start();
    let rest = s.strip_prefix('"')?;
    rest.split_once('"').map(|(lit, _)| lit.to_string())
}

/// Top-level comma-separated arguments of the parenthesised list `s` starts in.
fn macro_args(s: &str) -> Vec<String> {
    let mut depth = 0i32;
    let mut args = vec![String::new()];
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                args.push(String::new());
                continue;
            }
            _ => {}
        }
        if depth >= 1 {
            args.last_mut().unwrap().push(c);
        }
    }
    args.into_iter().map(|a| a.trim().to_string()).collect()
}

/// A `macro_rules!` that mounts routes: its name, its parameter names in
/// order, and the (method, path placeholder) attributes in its body.
type MacroRoutes = (String, Vec<String>, Vec<(String, String)>);

fn mounted_in_source(dir: &std::path::Path) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut files = vec![dir.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        // Macros: placeholder name -> argument position, and the
        // (method, placeholder) attributes in their bodies.
        let mut macros: Vec<MacroRoutes> = Vec::new();
        for (at, _) in src.match_indices("macro_rules!") {
            let rest = &src[at + "macro_rules!".len()..];
            let name = rest
                .trim_start()
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap()
                .to_string();
            let params: Vec<String> = macro_args(&rest[rest.find('(').unwrap()..])
                .iter()
                .map(|p| {
                    p.trim_start_matches('$')
                        .split(':')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect();
            let mut attrs = Vec::new();
            for method in ["get", "post", "put", "delete", "patch"] {
                for (a, _) in rest.match_indices(&format!("#[{method}($")) {
                    let ph = &rest[a + method.len() + 4..];
                    let ph = ph.split(')').next().unwrap().to_string();
                    attrs.push((method.to_uppercase(), ph));
                }
            }
            macros.push((name, params, attrs));
        }
        for (name, params, attrs) in &macros {
            for (at, _) in src.match_indices(&format!("{name}!(")) {
                let args = macro_args(&src[at + name.len() + 1..]);
                for (method, ph) in attrs {
                    let idx = params.iter().position(|p| p == ph).unwrap();
                    let path = string_literal(&args[idx]).unwrap();
                    out.insert((method.clone(), path));
                }
            }
        }
        for method in ["get", "post", "put", "delete", "patch"] {
            for (at, _) in src.match_indices(&format!("#[{method}(")) {
                if let Some(path) = string_literal(&src[at + method.len() + 3..]) {
                    out.insert((method.to_uppercase(), path));
                }
            }
        }
        // `.route("/path", web::get()…)`
        for (at, _) in src.match_indices(".route(") {
            let args = macro_args(&src[at + ".route".len()..]);
            if let (Some(path), Some(how)) =
                (args.first().and_then(|a| string_literal(a)), args.get(1))
            {
                let method = how
                    .trim_start_matches("web::")
                    .split('(')
                    .next()
                    .unwrap()
                    .to_uppercase();
                out.insert((method, path));
            }
        }
    }
    out
}

/// The API explorer is served offline at /docs/ (its assets compiled in)
/// and, in a real browser, renders the served document's operations.
#[actix_web::test]
async fn the_api_explorer_renders_the_served_document_offline() {
    let app = TestApp::spawn().await;
    let (_, health) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health["api_explorer"], "/docs/");
    let res = app
        .client
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "redirected to /docs/");
    let page = res.text().await.unwrap();
    assert!(page.contains("swagger-ui-bundle.js"), "{page}");
    // Every asset the page loads comes from this server, not a CDN.
    assert!(!page.contains("https://"), "{page}");
    let init = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"/openapi.json\""), "{init}");
    let mut browser = crate::browser::Browser::open(&format!("{}/docs/", app.base)).await;
    let shown = browser
        .wait_for(
            "(() => { const n = document.querySelectorAll('.opblock').length; return n > 80 && n; })()",
            std::time::Duration::from_secs(30),
            "document.body.innerText.slice(0, 500)",
        )
        .await;
    assert!(shown.as_u64().unwrap_or(0) > 80, "{shown}");
}
