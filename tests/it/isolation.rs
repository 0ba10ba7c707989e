//! Project isolation, table-driven over every documented project route:
//! another project's token is refused (403, the envelope's `forbidden`), and
//! another project's ids under one's own project are "not found" (404) —
//! whatever the route, the answer carries none of the other project's data,
//! and the other project is left exactly as it was.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

/// Ids of everything project `beta` holds, by path parameter name.
async fn populate(app: &TestApp, admin: &str, slug: &str) -> BTreeMap<&'static str, String> {
    let p = format!("/api/projects/{slug}");
    let ok = |(s, b): (StatusCode, Value)| {
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    };
    let mut ids = BTreeMap::new();
    let run = ok(app
        .post(
            &format!("{p}/runs/trigger"),
            admin,
            json!({"mode": "run", "scene_refs": ["sample:1@64x48"], "stage": "style", "candidates": 2, "wait": true}),
        )
        .await);
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let jobs = ok(app.get(&format!("{p}/runs/{run_id}/jobs"), admin).await);
    ids.insert("jobId", jobs["jobs"][0]["id"].as_str().unwrap().to_string());
    ids.insert("runId", run_id);
    let assets = ok(app.get(&format!("{p}/assets?kind=generated"), admin).await);
    let a0 = assets["assets"][0]["id"].as_str().unwrap().to_string();
    let a1 = assets["assets"][1]["id"].as_str().unwrap().to_string();
    let link = ok(app
        .post(
            &format!("{p}/asset-links"),
            admin,
            json!({"parent_asset_id": a0, "child_asset_id": a1, "link_type": "reference_of"}),
        )
        .await);
    ids.insert(
        "linkId",
        link["asset_link"]["id"].as_str().unwrap().to_string(),
    );
    ids.insert("assetId", a0);
    ids.insert("otherAssetId", a1);
    for (route, key, name) in [
        ("style-guides", "styleGuideId", "style_guide"),
        ("characters", "characterId", "character"),
        ("reference-sets", "referenceSetId", "reference_set"),
    ] {
        let b = ok(app
            .post(
                &format!("{p}/{route}"),
                admin,
                json!({"name": format!("Beta {key}"), "instructions": "beta"}),
            )
            .await);
        ids.insert(key, b[name]["id"].as_str().unwrap().to_string());
    }
    let t = ok(app
        .post(
            &format!("{p}/prompt-templates"),
            admin,
            json!({"name": "Beta panel", "template_text": "beta {{scene}}"}),
        )
        .await);
    ids.insert(
        "templateId",
        t["prompt_template"]["id"].as_str().unwrap().to_string(),
    );
    let item = ok(app
        .post(
            &format!("{p}/reference-sets/{}/items", ids["referenceSetId"]),
            admin,
            json!({"label": "Beta pier", "content_text": "x"}),
        )
        .await);
    ids.insert("itemId", item["item"]["id"].as_str().unwrap().to_string());
    let session = ok(app
        .post(&format!("{p}/chat/sessions"), admin, json!({}))
        .await);
    ids.insert(
        "sessionId",
        session["session"]["id"].as_str().unwrap().to_string(),
    );
    let instruction = ok(app
        .post(
            &format!("{p}/agent/instructions"),
            admin,
            json!({"instruction_text": "beta only"}),
        )
        .await);
    ids.insert(
        "instructionId",
        instruction["instruction"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let hook = ok(app
        .post(
            &format!("{p}/webhooks"),
            admin,
            json!({"url": "http://127.0.0.1:9/beta-hook"}),
        )
        .await);
    ids.insert(
        "webhookId",
        hook["webhook"]["id"].as_str().unwrap().to_string(),
    );
    ok(app
        .post(
            &format!("{p}/provider-accounts"),
            admin,
            json!({"provider_code": "openai"}),
        )
        .await);
    ids.insert("providerCode", "openai".into());
    ok(app
        .post(
            &format!("{p}/secrets"),
            admin,
            json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-beta-secret-value"}),
        )
        .await);
    ids.insert("secretName", "api_key".into());
    ids.insert("exportId", uuid::Uuid::now_v7().to_string());
    let (s, voice) = app
        .post(
            &format!("{p}/voice/speech"),
            admin,
            json!({"text": "beta's line", "provider": "espeak"}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{voice}");
    let request = voice["voice_request"]["id"].as_str().unwrap().to_string();
    // Finished before the snapshot, so it does not change under the checks.
    for _ in 0..600 {
        let (_, r) = app
            .get(&format!("{p}/voice/requests/{request}"), admin)
            .await;
        if r["voice_request"]["status"] != "queued" && r["voice_request"]["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ids.insert("requestId", request);
    ids
}

/// A body that passes each route's own validation, so what answers is the
/// access check (several routes validate their body before the lookup).
fn body_for(method: &str, template: &str, ids: &BTreeMap<&str, String>) -> Option<Value> {
    let tail = template.trim_start_matches("/api/projects/{slug}");
    let body = match (method, tail) {
        ("GET" | "DELETE", _) => return None,
        ("PUT", "/storage/local") => json!({"base_dir": "projects"}),
        ("POST", "/runs/trigger") => json!({"mode": "dry", "scene_refs": ["sample:1"]}),
        ("POST", "/runs/validate-config") => json!({"manifest": {}}),
        ("POST", "/secrets") => {
            json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-intruder"})
        }
        ("POST", "/asset-links") => json!({"parent_asset_id": ids["assetId"],
            "child_asset_id": ids["otherAssetId"], "link_type": "variant_of"}),
        ("PUT", "/asset-links/{linkId}") => json!({"link_type": "variant_of"}),
        ("POST", "/chat/sessions/{sessionId}/messages") => json!({"role": "user", "content": "hi"}),
        ("POST", "/agent/instructions") => json!({"instruction_text": "intrude"}),
        ("POST", "/provider-accounts") => json!({"provider_code": "openai"}),
        ("PUT", "/provider-accounts/{providerCode}") => json!({"display_name": "Intruder"}),
        ("POST", "/webhooks") => json!({"url": "http://127.0.0.1:9/intruder"}),
        ("POST", "/bootstrap-import") => json!({"settings": {"characters": []}}),
        ("POST" | "PUT", t) if t.starts_with("/prompt-templates") => {
            json!({"name": "Intruder", "template_text": "x"})
        }
        ("POST" | "PUT", t) if t.contains("/items") => {
            json!({"label": "Intruder", "content_text": "x"})
        }
        ("POST" | "PUT", t)
            if ["/style-guides", "/characters", "/reference-sets"]
                .iter()
                .any(|k| t.starts_with(k)) =>
        {
            json!({"name": "Intruder", "instructions": "x"})
        }
        _ => json!({}),
    };
    Some(body)
}

fn concrete(template: &str, slug: &str, ids: &BTreeMap<&str, String>) -> String {
    let mut path = template.replace("{slug}", slug);
    for (name, id) in ids {
        path = path.replace(&format!("{{{name}}}"), id);
    }
    assert!(!path.contains('{'), "no id for {template}");
    path
}

/// Everything a client can read of a project, as its owner sees it.
async fn snapshot(
    app: &TestApp,
    admin: &str,
    slug: &str,
    ids: &BTreeMap<&str, String>,
) -> Vec<Value> {
    let p = format!("/api/projects/{slug}");
    let mut out = Vec::new();
    for path in [
        p.clone(),
        format!("{p}/storage"),
        format!("{p}/runs"),
        format!("{p}/runs/{}/jobs", ids["runId"]),
        format!("{p}/assets?limit=1000"),
        format!("{p}/asset-links"),
        format!("{p}/style-guides"),
        format!("{p}/characters"),
        format!("{p}/reference-sets"),
        format!("{p}/reference-sets/{}/items", ids["referenceSetId"]),
        format!("{p}/prompt-templates"),
        format!("{p}/chat/sessions"),
        format!("{p}/chat/sessions/{}/messages", ids["sessionId"]),
        format!("{p}/agent/instructions"),
        format!("{p}/provider-accounts"),
        format!("{p}/secrets"),
        format!("{p}/webhooks"),
        format!("{p}/cost-events"),
        format!("{p}/queue"),
    ] {
        let (s, b) = app.get(&path, admin).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        out.push(b);
    }
    out
}

#[actix_web::test]
async fn every_project_route_refuses_other_projects_tokens_and_ids() {
    let app = TestApp::spawn().await;
    let admin = app.bootstrap_token().await;
    app.create_project(&admin, "Alpha", "alpha").await;
    app.create_project(&admin, "Beta", "beta").await;
    let beta_ids = populate(&app, &admin, "beta").await;
    let alpha = app.scoped_token(&admin, "alpha").await;
    let (_, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/api/projects/{slug}") {
            for method in item.as_object().unwrap().keys() {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(routes.len() > 80, "{}", routes.len());
    let before = snapshot(&app, &admin, "beta", &beta_ids).await;
    // Nothing of beta's may show in an answer to alpha's token.
    let beta_marks: Vec<&String> = beta_ids
        .iter()
        .filter(|(k, _)| !["providerCode", "secretName", "exportId"].contains(k))
        .map(|(_, v)| v)
        .collect();
    let check_clean = |route: &str, body: &Value| {
        let text = body.to_string();
        for mark in &beta_marks {
            assert!(
                !text.contains(mark.as_str()),
                "{route} leaked {mark}: {text}"
            );
        }
        assert!(!text.contains("sk-beta"), "{route} leaked a secret: {text}");
    };

    for (method, template) in &routes {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let body = body_for(method, template, &beta_ids);
        // Alpha's token on beta's routes, with beta's real ids.
        let path = concrete(template, "beta", &beta_ids);
        let (s, b) = app.call(m.clone(), &path, Some(&alpha), body.clone()).await;
        assert_eq!(
            (s.as_u16(), b["error_code"].as_str()),
            (403, Some("forbidden")),
            "{method} {template} with another project's token: {b}"
        );
        check_clean(template, &b);
        // Alpha's token on alpha's routes, with beta's ids: not found.
        // (Provider codes and secret names are names, not beta's ids.)
        let foreign_ids = template.matches('{').count() > 1
            && !template.contains("{providerCode}")
            && !template.contains("{exportId}");
        if foreign_ids {
            let path = concrete(template, "alpha", &beta_ids);
            let (s, b) = app.call(m, &path, Some(&alpha), body).await;
            assert!(
                s == StatusCode::NOT_FOUND && b["ok"] == json!(false) && b["error"].is_string(),
                "{method} {template} with another project's ids answered {s}: {b}"
            );
            check_clean(template, &b);
        }
    }
    // An upload (an image body rather than JSON) is refused the same way.
    let png = imaging::encode_png(&imaging::scene::sample_scene(2, 32, 24)).unwrap();
    let res = app
        .client
        .post(format!("{}/api/projects/beta/assets", app.base))
        .bearer_auth(&alpha)
        .body(png)
        .send()
        .await
        .unwrap();
    let s = res.status();
    assert_error(s, &res.json().await.unwrap(), 403, "forbidden");
    // Beta is exactly as it was.
    assert_eq!(snapshot(&app, &admin, "beta", &beta_ids).await, before);
}
