//! Provider accounts (journey J00): upsert by normalised code, partial
//! updates, validation before lookup, audit, isolation.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_error};

#[actix_web::test]
async fn provider_accounts_are_upserted_by_code_updated_and_deleted() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let base = "/api/projects/book/provider-accounts";

    // Validation first (400 before 404), with the contract's messages.
    let (s, e) = app
        .post("/api/projects/nope/provider-accounts", &token, json!({}))
        .await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(e["error"], "Field 'provider_code' is required");
    let (s, e) = app
        .post(
            base,
            &token,
            json!({"provider_code": "openai", "base_url": "file:///etc/passwd"}),
        )
        .await;
    assert_error(s, &e, 400, "invalid_url");
    let (s, e) = app
        .post(
            "/api/projects/nope/provider-accounts",
            &token,
            json!({"provider_code": "openai"}),
        )
        .await;
    assert_error(s, &e, 404, "not_found");

    let (s, b) = app
        .post(base, &token, json!({"provider_code": " OpenAI "}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let a = &b["provider_account"];
    assert_eq!(
        (
            a["provider_code"].as_str(),
            a["display_name"].as_str(),
            a["enabled"].as_bool()
        ),
        (Some("openai"), Some("openai"), Some(true)),
        "defaults: name = code, enabled"
    );
    assert_eq!(
        (a["account_ref"].as_str(), a["base_url"].as_str()),
        (Some(""), Some(""))
    );
    assert_eq!(a["config_json"], json!({}));
    assert!(b["audit_id"].is_string());
    // Upsert by code: the same account, supplied fields changed only.
    let (_, b) = app
        .post(base, &token, json!({"provider_code": "OPENAI", "display_name": "OpenAI (studio)", "base_url": "https://gateway.example/v1", "config_json": {"tier": 3}}))
        .await;
    assert_eq!(b["provider_account"]["display_name"], "OpenAI (studio)");
    assert_eq!(b["provider_account"]["config_json"], json!({"tier": 3}));
    app.post(
        base,
        &token,
        json!({"provider_code": "photoroom", "enabled": false}),
    )
    .await;
    let (_, list) = app.get(base, &token).await;
    assert_eq!(list["count"], 2);
    let codes: Vec<&str> = list["provider_accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["provider_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["openai", "photoroom"], "ordered by code");

    // Partial update: at least one field, checked before the lookup.
    let (s, e) = app.put(&format!("{base}/nothing"), &token, json!({})).await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(
        e["error"],
        "Provide at least one of: display_name, account_ref, base_url, enabled, config_json"
    );
    let (s, e) = app
        .put(
            &format!("{base}/openai"),
            &token,
            json!({"display_name": "  "}),
        )
        .await;
    assert_error(s, &e, 400, "field_required");
    let (s, b) = app
        .put(
            &format!("{base}/OpenAI"),
            &token,
            json!({"enabled": false, "base_url": ""}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["provider_account"]["enabled"], false);
    assert_eq!(b["provider_account"]["base_url"], "", "blank clears");
    assert_eq!(
        b["provider_account"]["display_name"], "OpenAI (studio)",
        "untouched"
    );
    let (s, e) = app
        .put(
            &format!("{base}/removebg"),
            &token,
            json!({"enabled": true}),
        )
        .await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Provider account not found");

    // Detail by normalised code; invalid codes are 400.
    let (s, d) = app.get(&format!("{base}/OPENAI"), &token).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["provider_account"]["provider_code"], "openai");
    let (s, e) = app.get(&format!("{base}/%21%21"), &token).await;
    assert_error(s, &e, 400, "invalid_provider_code");

    // Another project's token sees nothing; deletes echo the code.
    app.create_project(&token, "Other", "other").await;
    let scoped = app.scoped_token(&token, "other").await;
    let (s, _) = app.get(base, &scoped).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, d) = app
        .call(
            Method::DELETE,
            &format!("{base}/openai"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(
        (d["deleted"].as_bool(), d["provider_code"].as_str()),
        (Some(true), Some("openai"))
    );
    let (s, e) = app
        .call(
            Method::DELETE,
            &format!("{base}/openai"),
            Some(&token),
            None,
        )
        .await;
    assert_error(s, &e, 404, "not_found");
    let audits = app.audit_codes().await;
    for code in [
        "provider_account.upserted",
        "provider_account.updated",
        "provider_account.deleted",
    ] {
        assert!(audits.iter().any(|a| a == code), "{audits:?}");
    }
}

#[actix_web::test]
async fn credentials_are_checked_against_the_provider_itself() {
    let openai = crate::openai_stub::OpenAiStub::start().await;
    let bg = crate::bg_stub::RemovalStub::start_with_key(env!("CARGO_MANIFEST_DIR")).await;
    let app = TestApp::spawn_with(|s| {
        s.secrets.master_key_env = "ATELIER_TEST_UNSET_MASTER_KEY".into();
        s.providers.openai.enabled = true;
        s.providers.openai.base_url = openai.base_url.clone();
        s.providers.openai.api_key_env = "ATELIER_TEST_UNSET_OPENAI_KEY".into();
        s.providers.photoroom.enabled = true;
        s.providers.photoroom.base_url = Some(bg.photoroom_url.clone());
        s.providers.photoroom.account_base_url = Some(bg.photoroom_account_url.clone());
        s.providers.photoroom.api_key_env = Some("CARGO_MANIFEST_DIR".into());
    })
    .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let check = |code: &'static str| {
        let path = format!("/api/projects/book/provider-accounts/{code}/check");
        let (app, token) = (&app, token.clone());
        async move { app.post(&path, &token, json!({})).await }
    };
    // No key anywhere: nothing is sent.
    let (s, c) = check("openai").await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(
        (
            c["check"]["status"].as_str(),
            c["check"]["error_code"].as_str()
        ),
        (Some("failed"), Some("provider_not_configured"))
    );
    // A wrong project key is refused by the provider; the right one works.
    app.post(
        "/api/projects/book/secrets",
        &token,
        json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-wrong"}),
    )
    .await;
    let (_, c) = check("OpenAI").await;
    assert_eq!(
        (
            c["check"]["status"].as_str(),
            c["check"]["error_code"].as_str()
        ),
        (Some("failed"), Some("provider_auth"))
    );
    assert_eq!(c["check"]["key_source"], "project");
    assert!(!c.to_string().contains("sk-wrong"), "{c}");
    app.post("/api/projects/book/secrets", &token, json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": crate::openai_stub::KEY})).await;
    let (_, c) = check("openai").await;
    assert_eq!(c["check"]["status"], "ok", "{c}");
    // The service's own key (environment) for PhotoRoom; local has nothing to check.
    let (_, c) = check("photoroom").await;
    assert_eq!(
        (
            c["check"]["status"].as_str(),
            c["check"]["key_source"].as_str()
        ),
        (Some("ok"), Some("service"))
    );
    let (_, c) = check("local").await;
    assert_eq!(c["check"]["status"], "ok");
    let (s, e) = check("midjourney").await;
    assert_error(s, &e, 400, "unknown_provider");
    assert_eq!(bg.calls(), 0, "a check never pays for a removal");
}
