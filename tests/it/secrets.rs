//! Project secrets over HTTP: encrypted at rest in the v1 format, metadata
//! only in responses and audits, rotation, validation order and isolation.

use reqwest::{Method, StatusCode};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;

use crate::helpers::{TestApp, assert_error};

const VALUE: &str = "sk-live-very-secret-0123456789";

async fn app() -> TestApp {
    // A variable nobody sets: the key file under the data dir is used.
    TestApp::spawn_with(|s| s.secrets.master_key_env = "ATELIER_TEST_UNSET_MASTER_KEY".into()).await
}

fn keys(app: &TestApp) -> domain::secrets::cipher::KeySource {
    let mut settings = atelier::settings::Settings {
        data_dir: app.data_path(),
        ..Default::default()
    };
    settings.secrets.master_key_env = "ATELIER_TEST_UNSET_MASTER_KEY".into();
    atelier::startup::secret_keys(&settings)
}

async fn rows(app: &TestApp) -> Vec<entities::project_secrets::Model> {
    entities::project_secrets::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
}

#[actix_web::test]
async fn secrets_are_encrypted_listed_as_metadata_rotated_and_deleted() {
    let app = app().await;
    let token = app.bootstrap_token().await;
    let project = app.create_project(&token, "Book", "book").await;
    let project_id: uuid::Uuid = project["project"]["id"].as_str().unwrap().parse().unwrap();

    // 400 before 404, and the contract's messages.
    let (s, e) = app
        .post(
            "/api/projects/nope/secrets",
            &token,
            json!({"secret_name": "api_key", "secret_value": "x"}),
        )
        .await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(e["error"], "Field 'provider_code' is required");
    let (s, e) = app
        .post(
            "/api/projects/book/secrets",
            &token,
            json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "   "}),
        )
        .await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(e["error"], "Field 'secret_value' is required");
    let (s, e) = app
        .post(
            "/api/projects/nope/secrets",
            &token,
            json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "x"}),
        )
        .await;
    assert_error(s, &e, 404, "not_found");

    let (s, b) = app
        .post("/api/projects/book/secrets", &token, json!({"provider_code": " OpenAI ", "secret_name": "api_key", "secret_value": format!("  {VALUE} ")}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["secret"]["provider_code"], "openai");
    assert_eq!(b["secret"]["has_value"], true);
    assert!(b["audit_id"].is_string());
    assert!(!b.to_string().contains(VALUE));

    // At rest: the v1 format, not the value; the key file is private.
    let stored = rows(&app).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].secret_value.starts_with("enc:v1:"));
    assert!(!stored[0].secret_value.contains(VALUE));
    assert_eq!(stored[0].key_ref, "local-master");
    let key_file = app.data_path().join("backend/master.key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let reveal = |code: &'static str, name: &'static str| {
        let keys = keys(&app);
        let db = app.db.clone();
        async move {
            domain::secrets::reveal(&db, &keys, project_id, code, name)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        reveal("openai", "api_key").await.as_deref(),
        Some(VALUE),
        "trimmed"
    );

    // An upsert replaces the value in place.
    let (s, _) = app
        .post(
            "/api/projects/book/secrets",
            &token,
            json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-new"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = app.get("/api/projects/book/secrets", &token).await;
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["secrets"][0]["secret_name"], "api_key");
    assert!(list["secrets"][0].get("secret_value").is_none());
    assert_eq!(reveal("openai", "api_key").await.as_deref(), Some("sk-new"));

    // A legacy plaintext row (as an older database has them).
    let now = chrono::Utc::now();
    entities::project_secrets::ActiveModel::from(entities::project_secrets::Model {
        id: uuid::Uuid::now_v7(),
        project_id,
        provider_code: "removebg".into(),
        secret_name: "api_key".into(),
        secret_value: "legacy-plain".into(),
        key_ref: "legacy-key".into(),
        created_at: now,
        updated_at: now,
    })
    .insert(&app.db)
    .await
    .unwrap();
    let (_, st) = app
        .get("/api/projects/book/secrets/rotation-status", &token)
        .await;
    assert_eq!(
        st["status"],
        json!({"total": 2, "encrypted": 1, "plaintext": 1, "empty": 0,
               "key_refs": [{"key_ref": "legacy-key", "count": 1}, {"key_ref": "local-master", "count": 1}]})
    );
    let (s, r) = app
        .post("/api/projects/book/secrets/rotate", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["rotation"],
        json!({"scanned": 2, "rotated": 1, "skipped_empty": 0, "skipped_current_key_ref": 1, "plaintext_reencrypted": 1})
    );
    let (_, r) = app
        .post(
            "/api/projects/book/secrets/rotate",
            &token,
            json!({"force": true}),
        )
        .await;
    assert_eq!(r["rotation"]["rotated"], 2);
    let (_, st) = app
        .get("/api/projects/book/secrets/rotation-status", &token)
        .await;
    assert_eq!(st["status"]["encrypted"], 2);
    assert_eq!(
        reveal("removebg", "api_key").await.as_deref(),
        Some("legacy-plain")
    );

    // A value no key opens aborts the rotation and changes nothing.
    let before = rows(&app).await;
    let mut broken = before[0].clone();
    broken.secret_value = "enc:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    entities::project_secrets::ActiveModel::from(broken.clone())
        .reset_all()
        .update(&app.db)
        .await
        .unwrap();
    let (s, e) = app
        .post(
            "/api/projects/book/secrets/rotate",
            &token,
            json!({"force": true}),
        )
        .await;
    // A value no configured key opens: a typed refusal, nothing changed.
    assert_error(s, &e, 409, "secret_undecryptable");
    assert!(!e.to_string().contains("enc:v1:"), "{e}");
    let after = rows(&app).await;
    let untouched = after.iter().find(|r| r.id != broken.id).unwrap();
    assert_eq!(
        untouched.secret_value,
        before
            .iter()
            .find(|r| r.id == untouched.id)
            .unwrap()
            .secret_value
    );

    // Nothing secret in the audit log.
    let audits = serde_json::to_string(
        &entities::audit_events::Entity::find()
            .all(&app.db)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!audits.contains(VALUE) && !audits.contains("sk-new") && !audits.contains("enc:v1:"));

    // Isolation: another project's token sees nothing of it.
    app.create_project(&token, "Other", "other").await;
    let scoped = app.scoped_token(&token, "other").await;
    let (s, _) = app.get("/api/projects/book/secrets", &scoped).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, other) = app.get("/api/projects/other/secrets", &token).await;
    assert_eq!(other["count"], 0);

    // Delete: no identifiers echoed; then "Secret not found", even for a missing project.
    let del = |path: &'static str| app.call(Method::DELETE, path, Some(&token), None);
    let (s, d) = del("/api/projects/book/secrets/openai/api_key").await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["deleted"], true);
    assert!(d.get("provider_code").is_none());
    let (s, e) = del("/api/projects/book/secrets/openai/api_key").await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Secret not found");
    let (s, e) = del("/api/projects/nope/secrets/openai/api_key").await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Secret not found");
    let (s, e) = del("/api/projects/book/secrets/%21%21%21/api_key").await;
    assert_error(s, &e, 400, "invalid_provider_code");
    let left = entities::project_secrets::Entity::find()
        .filter(entities::project_secrets::Column::ProviderCode.eq("openai"))
        .all(&app.db)
        .await
        .unwrap();
    assert!(left.is_empty());
}

#[actix_web::test]
async fn reading_never_creates_a_key() {
    let app = app().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    // No key and nothing to rotate: done, having rotated nothing.
    let (s, r) = app
        .post("/api/projects/book/secrets/rotate", &token, json!({}))
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{r}");
    assert_eq!(r["rotation"]["rotated"], 0);
    assert_eq!(r["rotation"]["scanned"], 0);
    assert!(!app.data_path().join("backend/master.key").exists());
}

#[actix_web::test]
async fn a_projects_own_provider_key_is_used_for_its_runs_only() {
    let project_key = "sk-project-own-key-42";
    let stub = crate::openai_stub::OpenAiStub::start_with_key(project_key).await;
    let app = TestApp::spawn_with(|s| {
        s.secrets.master_key_env = "ATELIER_TEST_UNSET_MASTER_KEY".into();
        s.providers.openai.enabled = true;
        s.providers.openai.base_url = stub.base_url.clone();
        s.providers.openai.api_key_env = "ATELIER_TEST_UNSET_OPENAI_KEY".into();
    })
    .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    app.create_project(&token, "Other", "other").await;
    let body = json!({"mode": "run", "provider": "openai", "confirm_spend": true, "scene_refs": ["sample:1@64x48"], "candidates": 1, "wait": true});
    // No key anywhere: refused before anything is stored.
    let (s, e) = app
        .post("/api/projects/book/runs/trigger", &token, body.clone())
        .await;
    assert_error(s, &e, 400, "provider_not_configured");

    let (s, _) = app
        .post("/api/projects/book/secrets", &token, json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": project_key}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app
        .post("/api/projects/book/runs/trigger", &token, body.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    assert_eq!(
        stub.calls().values().sum::<u32>(),
        1,
        "the stub accepts only the project's key"
    );
    // Another project does not get this project's key.
    let (s, e) = app
        .post("/api/projects/other/runs/trigger", &token, body)
        .await;
    assert_error(s, &e, 400, "provider_not_configured");
    // The key appears nowhere in what the run recorded.
    let calls = serde_json::to_string(
        &entities::provider_calls::Entity::find()
            .all(&app.db)
            .await
            .unwrap(),
    )
    .unwrap();
    let events = serde_json::to_string(
        &entities::run_events::Entity::find()
            .all(&app.db)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(!calls.contains(project_key) && !events.contains(project_key));
}
