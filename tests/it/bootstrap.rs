//! Bootstrap export and import (journey J03): the export carries settings
//! and secret metadata only; imports merge or replace the supplied sections,
//! parse assistants' answers, dry-run without writing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

fn names(settings: &Value, section: &str) -> Vec<String> {
    let mut v: Vec<String> = settings[section]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[actix_web::test]
async fn bootstrap_exports_and_imports_settings() {
    let app =
        TestApp::spawn_with(|s| s.secrets.master_key_env = "ATELIER_TEST_UNSET_MASTER_KEY".into())
            .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let secret = "sk-bootstrap-secret-value";
    app.post(
        "/api/projects/book/secrets",
        &token,
        json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": secret}),
    )
    .await;
    app.post(
        "/api/projects/book/style-guides",
        &token,
        json!({"name": "Ink", "instructions": "flat"}),
    )
    .await;
    app.post(
        "/api/projects/book/characters",
        &token,
        json!({"name": "Mara", "description": "courier"}),
    )
    .await;

    let (s, ex) = app.get("/api/projects/book/bootstrap-prompt", &token).await;
    assert_eq!(s, StatusCode::OK, "{ex}");
    let b = &ex["bootstrap"];
    assert_eq!(b["schema_version"], "kroma.bootstrap.v1");
    assert_eq!(b["project"]["slug"], "book");
    assert_eq!(
        b["settings"]["secrets"],
        json!([{"provider_code": "openai", "secret_name": "api_key", "has_value": true}])
    );
    assert!(b["prompt"].as_str().unwrap().contains("ONE JSON object"));
    assert!(b["expected_response"]["settings"]["reference_sets"][0]["items"].is_array());
    assert!(!ex.to_string().contains(secret) && !ex.to_string().contains("enc:v1:"));

    // Validation before the project lookup, with v1's messages.
    for (body, message) in [
        (json!({}), "Provide either 'settings' or 'ai_response_text'"),
        (
            json!({"ai_response_text": "  "}),
            "Field 'ai_response_text' must not be empty",
        ),
        (
            json!({"ai_response_text": "no json here"}),
            "Could not parse JSON from 'ai_response_text'",
        ),
        (
            json!({"settings": {}}),
            "Import payload does not include any settings",
        ),
    ] {
        let (s, e) = app
            .post("/api/projects/nope/bootstrap-import", &token, body)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["error"], message);
    }
    let (s, e) = app
        .post(
            "/api/projects/book/bootstrap-import",
            &token,
            json!({"mode": "overwrite", "settings": {"characters": []}}),
        )
        .await;
    assert_error(s, &e, 400, "invalid_mode");
    let (s, e) = app
        .post(
            "/api/projects/book/bootstrap-import",
            &token,
            json!({"settings": {"reference_sets": [{"name": "Harbour"}]}}),
        )
        .await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(e["error"], "Field 'items' is required");

    // A dry run reports and writes nothing.
    let answer = json!({
        "mode": "merge",
        "settings": {
            "project": {"name": "Book Two", "description": "  A sequel  "},
            "style_guides": [{"name": "Ink", "instructions": "heavier"}, {"name": "Wash", "instructions": "soft"}],
            "reference_sets": [{"name": "Harbour", "items": [{"label": "Pier", "content_text": "wooden"}]}],
            "secrets": [{"provider_code": "OpenAI", "secret_name": "api_key"}, {"provider_code": "removebg", "secret_name": "api_key"}],
            "provider_accounts": [{"provider_code": "OpenAI", "display_name": "OpenAI"}],
        }
    });
    let text = format!("Here you go:\n```json\n{}\n```\nEnjoy!", answer);
    let (s, dry) = app
        .post(
            "/api/projects/book/bootstrap-import",
            &token,
            json!({"ai_response_text": text, "dry_run": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    let d = &dry["bootstrap_import"];
    assert_eq!(
        (d["mode"].as_str(), d["dry_run"].as_bool()),
        (Some("merge"), Some(true))
    );
    assert_eq!(d["changes"]["style_guides"]["created"], 1);
    assert_eq!(d["changes"]["style_guides"]["updated"], 1);
    assert_eq!(d["changes"]["secrets"]["created"], 1);
    assert_eq!(d["changes"]["secrets"]["unchanged"], 1);
    assert_eq!(d["project"]["name"], "Book Two");
    assert_eq!(names(&d["settings"], "style_guides"), ["Ink", "Wash"]);
    let (_, guides) = app.get("/api/projects/book/style-guides", &token).await;
    assert_eq!(guides["count"], 1, "the dry run wrote nothing");
    let (_, p) = app.get("/api/projects/book", &token).await;
    assert_eq!(p["project"]["name"], "Book");

    // The same, for real.
    let (s, real) = app
        .post(
            "/api/projects/book/bootstrap-import",
            &token,
            json!({"ai_response_text": text}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{real}");
    let r = &real["bootstrap_import"];
    assert_eq!(r["project_updated"], true);
    assert_eq!(r["applied"]["style_guides"], 2);
    let (_, p) = app.get("/api/projects/book", &token).await;
    assert_eq!(
        (
            p["project"]["name"].as_str(),
            p["project"]["description"].as_str()
        ),
        (Some("Book Two"), Some("A sequel"))
    );
    let (_, sets) = app.get("/api/projects/book/reference-sets", &token).await;
    let set_id = sets["reference_sets"][0]["id"].as_str().unwrap();
    let (_, items) = app
        .get(
            &format!("/api/projects/book/reference-sets/{set_id}/items"),
            &token,
        )
        .await;
    assert_eq!(items["items"][0]["label"], "Pier");
    // Secrets: the existing value is untouched; the new one is a placeholder.
    let (_, secrets) = app.get("/api/projects/book/secrets", &token).await;
    let has: Vec<(String, bool)> = secrets["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["provider_code"].as_str().unwrap().to_string(),
                s["has_value"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        has,
        [
            ("openai".to_string(), true),
            ("removebg".to_string(), false)
        ]
    );
    // Importing the same again changes nothing.
    let (_, again) = app
        .post(
            "/api/projects/book/bootstrap-import",
            &token,
            json!({"ai_response_text": text}),
        )
        .await;
    assert_eq!(
        again["bootstrap_import"]["changes"]["style_guides"]["unchanged"], 2,
        "{again}"
    );
    assert_eq!(again["bootstrap_import"]["project_updated"], false);

    // Replace touches only the sections supplied; secrets are never deleted.
    let (s, rep) = app
        .post(
            "/api/projects/book/bootstrap-import",
            &token,
            json!({"mode": "REPLACE", "settings": {
                "style_guides": [{"name": "Pencil", "instructions": "sketchy"}],
                "secrets": [],
            }}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{rep}");
    let c = &rep["bootstrap_import"]["changes"];
    assert_eq!(
        (
            c["style_guides"]["replaced"].as_bool(),
            c["style_guides"]["deleted"].as_u64()
        ),
        (Some(true), Some(2))
    );
    assert_eq!(c["secrets"]["replaced"], false);
    let settings = &rep["bootstrap_import"]["settings"];
    assert_eq!(names(settings, "style_guides"), ["Pencil"]);
    assert_eq!(
        names(settings, "characters"),
        ["Mara"],
        "absent sections are left alone"
    );
    assert_eq!(settings["secrets"].as_array().unwrap().len(), 2);
    assert!(!rep.to_string().contains(secret));

    // Another project's token can neither read nor import.
    app.create_project(&token, "Other", "other").await;
    let scoped = app.scoped_token(&token, "other").await;
    let (s, _) = app
        .get("/api/projects/book/bootstrap-prompt", &scoped)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .post(
            "/api/projects/book/bootstrap-import",
            &scoped,
            json!({"settings": {"characters": []}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}
