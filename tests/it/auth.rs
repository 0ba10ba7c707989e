//! Tokens: bootstrap, verification, revocation, expiry and scope confinement.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_error};

#[actix_web::test]
async fn first_token_bootstrap_then_bearer_required() {
    let app = TestApp::spawn().await;
    let (s, b) = app.call(Method::GET, "/api/projects", None, None).await;
    assert_error(s, &b, 401, "unauthorized");

    let token = app.bootstrap_token().await;
    assert!(token.starts_with("kroma_") && token.len() == 70);

    // Bootstrap is closed once an active token exists.
    let (s, b) = app
        .call(Method::POST, "/auth/token", None, Some(json!({})))
        .await;
    assert_error(s, &b, 401, "unauthorized");

    let (s, b) = app.get("/api/projects", &token).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Scheme is case-insensitive and surrounding space is ignored.
    let res = app
        .client
        .get(format!("{}/auth/tokens", app.base))
        .header("authorization", format!("bearer    {token}  "))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["count"], json!(1));
    let listed = body["auth_tokens"][0].as_object().unwrap();
    assert!(!listed.contains_key("token") && !listed.contains_key("token_hash"));
    assert_eq!(body["auth_tokens"][0]["active"], json!(true));
    assert!(
        !body.to_string().contains(&token[12..]),
        "token leaked in listing"
    );

    for bad in ["kroma_nope", "Basic abc", ""] {
        let res = app
            .client
            .get(format!("{}/auth/tokens", app.base))
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        let s = res.status();
        assert_error(s, &res.json().await.unwrap(), 401, "unauthorized");
    }
    let wrong = format!("kroma_{}", "0".repeat(64));
    let (s, b) = app.get("/auth/tokens", &wrong).await;
    assert_error(s, &b, 401, "unauthorized");

    // The token is stored hashed, never in plaintext.
    use sea_orm::EntityTrait;
    let rows = entities::api_tokens::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].token_hash, token);
    assert_eq!(rows[0].token_hash.len(), 64);
    let codes = app.audit_codes().await;
    assert_eq!(codes, vec!["auth.token_created"]);
}

#[actix_web::test]
async fn concurrent_bootstrap_mints_exactly_one_token() {
    let app = TestApp::spawn().await;
    let calls = (0..8).map(|_| app.call(Method::POST, "/auth/token", None, Some(json!({}))));
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(ok, 1, "{results:?}");
    for (s, b) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert!(matches!(s.as_u16(), 400 | 401), "{s} {b}");
        assert_eq!(b["ok"], json!(false));
    }
}

#[actix_web::test]
async fn bootstrap_can_be_switched_off() {
    let app = TestApp::spawn_with(|s| s.auth.bootstrap_first_token = false).await;
    let (s, b) = app
        .call(Method::POST, "/auth/token", None, Some(json!({})))
        .await;
    assert_error(s, &b, 401, "unauthorized");
}

#[actix_web::test]
async fn revoked_and_expired_tokens_stop_working() {
    let app = TestApp::spawn().await;
    let admin = app.bootstrap_token().await;
    let (s, second) = app
        .post(
            "/auth/token",
            &admin,
            json!({"label": "ci", "expires_at": "2999-01-01"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{second}");
    assert_eq!(
        second["auth_token"]["expires_at"],
        "2999-01-01T23:59:59+00:00"
    );
    let t2 = second["auth_token"]["token"].as_str().unwrap().to_string();
    let id2 = second["auth_token"]["id"].as_str().unwrap().to_string();
    assert_eq!(app.get("/auth/tokens", &t2).await.0, StatusCode::OK);

    let (s, b) = app
        .call(
            Method::DELETE,
            &format!("/auth/tokens/{id2}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["deleted"], json!(true));
    assert_eq!(b["token_id"], json!(id2));
    // Revocation is immediate even though the token was just cached.
    let (s, b) = app.get("/auth/tokens", &t2).await;
    assert_error(s, &b, 401, "unauthorized");
    // Revoking again succeeds and keeps the first revoked_at.
    let (_, list1) = app.get("/auth/tokens", &admin).await;
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/auth/tokens/{id2}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, list2) = app.get("/auth/tokens", &admin).await;
    let revoked = |l: &serde_json::Value| {
        l["auth_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == json!(id2))
            .unwrap()["revoked_at"]
            .clone()
    };
    assert_eq!(revoked(&list1), revoked(&list2));
    assert!(revoked(&list1).is_string());

    for bad in ["2000-01-01", "yesterday", "2020-01-01T00:00:00Z"] {
        let (s, b) = app
            .post("/auth/token", &admin, json!({"expires_at": bad}))
            .await;
        assert_error(s, &b, 400, "invalid_expires_at");
    }
    let (s, b) = app
        .call(
            Method::DELETE,
            "/auth/tokens/not-a-uuid",
            Some(&admin),
            None,
        )
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app
        .post("/auth/token", &admin, json!({"label": "x".repeat(201)}))
        .await;
    assert_error(s, &b, 400, "field_too_long");
    let (s, b) = app
        .post("/auth/token", &admin, json!({"project_slug": "missing"}))
        .await;
    assert_error(s, &b, 404, "not_found");
}

#[actix_web::test]
async fn token_expiring_in_the_database_is_rejected_when_the_cache_lapses() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    // Zero TTL: every request re-reads the token row (as after the TTL lapses).
    let app2 = TestApp::spawn_with(|s| s.auth.token_cache_seconds = 0).await;
    let admin2 = app2.bootstrap_token().await;
    let (_, c2) = app2.post("/auth/token", &admin2, json!({})).await;
    let t2 = c2["auth_token"]["token"].as_str().unwrap().to_string();
    let id2: uuid::Uuid = c2["auth_token"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app2.get("/auth/tokens", &t2).await.0, StatusCode::OK);
    entities::api_tokens::Entity::update_many()
        .col_expr(
            entities::api_tokens::Column::ExpiresAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::seconds(5)),
        )
        .filter(entities::api_tokens::Column::Id.eq(id2))
        .exec(&app2.db)
        .await
        .unwrap();
    let (s, b) = app2.get("/auth/tokens", &t2).await;
    assert_error(s, &b, 401, "unauthorized");
}

#[actix_web::test]
async fn scoped_tokens_are_confined_to_their_project() {
    let app = TestApp::spawn().await;
    let admin = app.bootstrap_token().await;
    app.create_project(&admin, "Alpha", "alpha").await;
    app.create_project(&admin, "Beta", "beta").await;
    let alpha = app.scoped_token(&admin, "alpha").await;
    let beta = app.scoped_token(&admin, "beta").await;

    // Cannot mint an unscoped token or one for another project.
    let (s, minted) = app.post("/auth/token", &alpha, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{minted}");
    let (_, detail) = app.get("/api/projects/alpha", &admin).await;
    assert_eq!(
        minted["auth_token"]["project_id"], detail["project"]["id"],
        "scoped token minted an unscoped one"
    );
    let (s, b) = app
        .post("/auth/token", &alpha, json!({"project_slug": "beta"}))
        .await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app
        .post("/auth/token", &alpha, json!({"project_slug": "ghost"}))
        .await;
    assert_error(s, &b, 403, "forbidden");

    // Lists only its project's tokens; cannot revoke others.
    let (_, list) = app.get("/auth/tokens", &alpha).await;
    assert!(
        list["auth_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["project_id"] == detail["project"]["id"]),
        "{list}"
    );
    assert_eq!(list["count"], json!(2));
    let (_, all) = app.get("/auth/tokens", &admin).await;
    for t in all["auth_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["project_id"] != detail["project"]["id"])
    {
        let id = t["id"].as_str().unwrap();
        let (s, b) = app
            .call(
                Method::DELETE,
                &format!("/auth/tokens/{id}"),
                Some(&alpha),
                None,
            )
            .await;
        assert_error(s, &b, 404, "not_found");
    }
    assert_eq!(
        app.get("/auth/tokens", &beta).await.0,
        StatusCode::OK,
        "beta token was revoked by alpha"
    );
    assert_eq!(app.get("/auth/tokens", &admin).await.0, StatusCode::OK);

    // Sees only its project; cannot read, create, rename or take over others.
    let (_, projects) = app.get("/api/projects", &alpha).await;
    assert_eq!(projects["count"], json!(1));
    assert_eq!(projects["projects"][0]["slug"], "alpha");
    for path in [
        "/api/projects/beta",
        "/api/projects/beta/storage",
        "/api/projects/ghost",
    ] {
        let (s, b) = app.get(path, &alpha).await;
        assert_error(s, &b, 403, "forbidden");
    }
    let (s, b) = app
        .post(
            "/api/projects",
            &alpha,
            json!({"name": "Hijack", "slug": "beta"}),
        )
        .await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app
        .post("/api/projects", &alpha, json!({"name": "New"}))
        .await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app
        .put(
            "/api/projects/beta/storage/s3",
            &alpha,
            json!({"enabled": false}),
        )
        .await;
    assert_error(s, &b, 403, "forbidden");
    let (_, beta_detail) = app.get("/api/projects/beta", &admin).await;
    assert_eq!(beta_detail["project"]["name"], "Beta");

    // Its own project works, including an upsert by its own slug.
    let (s, b) = app
        .post(
            "/api/projects",
            &alpha,
            json!({"name": "Alpha Renamed", "slug": "alpha"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        app.get("/api/projects/alpha", &alpha).await.0,
        StatusCode::OK
    );
}

#[actix_web::test]
async fn dev_bypass_refuses_a_public_bind() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::base_settings(dir.path(), None);
    settings.bind = "0.0.0.0:0".into();
    settings.auth.dev_bypass = true;
    let err = atelier::startup::Application::build(settings)
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("dev_bypass"), "{err}");
}

#[actix_web::test]
async fn dev_bypass_on_loopback_needs_no_token() {
    let app = TestApp::spawn_with(|s| s.auth.dev_bypass = true).await;
    let (s, b) = app.call(Method::GET, "/api/projects", None, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}
