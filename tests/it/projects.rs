//! Project create/upsert, listing, detail, validation and audit.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, assert_error};

#[actix_web::test]
async fn create_upsert_list_and_detail() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;

    let (s, created) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Demo Book!", "description": "A test book"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{created}");
    assert_eq!(created["project"]["slug"], "demo_book");
    assert_eq!(created["created"], json!(true));
    assert!(created["audit_id"].is_string());
    let root = app.data_path().join("projects").join("demo_book");
    assert_eq!(
        created["storage"]["local"]["project_root"],
        json!(std::path::absolute(&root).unwrap().display().to_string())
    );
    assert_eq!(created["storage"]["local"]["base_dir"], "projects");
    assert_eq!(created["storage"]["s3"]["enabled"], json!(false));

    // Upsert by slug keeps the description when it is omitted.
    let (s, updated) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Demo Book 2", "slug": "DEMO_BOOK"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(updated["created"], json!(false));
    assert_eq!(updated["project"]["id"], created["project"]["id"]);
    let (s, detail) = app.get("/api/projects/Demo_Book", &token).await;
    assert_eq!(s, StatusCode::OK, "{detail}");
    assert_eq!(detail["project"]["name"], "Demo Book 2");
    assert_eq!(detail["project"]["description"], "A test book");
    assert_eq!(detail["project"]["status"], "active");
    assert_eq!(detail["counts"], json!({"runs": 0, "jobs": 0, "assets": 0}));
    assert!(
        detail["project"]["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    app.create_project(&token, "Second", "second").await;
    let (_, list) = app.get("/api/projects", &token).await;
    assert_eq!(list["count"], json!(2));
    assert_eq!(
        list["projects"][0]["slug"], "second",
        "most recently updated first: {list}"
    );
    assert_eq!(list["projects"][1]["username"], "local");

    // The list reflects every change at once (its rendered body is reused only
    // while nothing changed).
    let (_, again) = app.get("/api/projects", &token).await;
    assert_eq!(again, list);
    app.post(
        "/api/projects",
        &token,
        json!({"name": "Renamed", "slug": "demo_book"}),
    )
    .await;
    let (_, renamed) = app.get("/api/projects", &token).await;
    assert_eq!(renamed["projects"][0]["name"], "Renamed", "{renamed}");
    let alpha = app.scoped_token(&token, "second").await;
    let (_, scoped) = app.get("/api/projects", &alpha).await;
    assert_eq!(
        scoped["count"],
        json!(1),
        "a cached list leaked across scopes: {scoped}"
    );

    let (_, none) = app.get("/api/projects?username=nobody", &token).await;
    assert_eq!(none["count"], json!(0));
    let (_, mine) = app.get("/api/projects?username=LOCAL", &token).await;
    assert_eq!(mine["count"], json!(2));

    let codes = app.audit_codes().await;
    assert_eq!(
        codes,
        vec![
            "auth.token_created",
            "project.created",
            "project.updated",
            "project.created",
            "project.updated",
            "auth.token_created"
        ]
    );
}

#[actix_web::test]
async fn bad_project_input_is_rejected_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Original", "taken").await;

    let cases = [
        (json!({}), 400, "field_required"),
        (json!({"name": "   "}), 400, "field_required"),
        (json!({"name": "x".repeat(201)}), 400, "field_too_long"),
        (
            json!({"name": "ok", "slug": "!!!"}),
            400,
            "invalid_project_slug",
        ),
        (
            json!({"name": "ok", "slug": "s".repeat(65)}),
            400,
            "invalid_project_slug",
        ),
        (
            json!({"name": "ok", "description": "d".repeat(10_001)}),
            400,
            "field_too_long",
        ),
        (
            json!({"name": "ok", "username": "???"}),
            400,
            "invalid_username",
        ),
        (
            json!({"name": "Thief", "slug": "taken", "username": "bob"}),
            400,
            "slug_taken",
        ),
        (json!({"name": ["array"]}), 422, "invalid_field_type"),
    ];
    for (body, status, code) in cases {
        let (s, b) = app.post("/api/projects", &token, body.clone()).await;
        assert_error(s, &b, status, code);
    }
    let (_, list) = app.get("/api/projects", &token).await;
    assert_eq!(list["count"], json!(1), "{list}");
    assert_eq!(list["projects"][0]["name"], "Original");
    assert_eq!(list["projects"][0]["username"], "local");

    let (s, b) = app.get("/api/projects/ghost", &token).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get("/api/projects/%20%21", &token).await;
    assert_error(s, &b, 400, "invalid_project_slug");
}

#[actix_web::test]
async fn another_users_project_keeps_its_slug() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let (s, b) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Bob's", "slug": "bobs", "username": "Bob Smith"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, list) = app.get("/api/projects?username=bob_smith", &token).await;
    assert_eq!(list["count"], json!(1));
    assert_eq!(list["projects"][0]["username"], "bob_smith");
    let (s, b) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Mine now", "slug": "bobs"}),
        )
        .await;
    assert_error(s, &b, 400, "slug_taken");
}

#[actix_web::test]
async fn writes_from_another_node_show_within_the_revalidation_window() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    let app = TestApp::spawn_with(|s| s.http.read_cache_ms = 150).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Before", "shared").await;
    let (_, first) = app.get("/api/projects", &token).await;
    assert_eq!(first["projects"][0]["name"], "Before");
    // Another node writes straight to the shared database.
    entities::projects::Entity::update_many()
        .col_expr(entities::projects::Column::Name, Expr::value("After"))
        .col_expr(
            entities::projects::Column::UpdatedAt,
            Expr::value(chrono::Utc::now()),
        )
        .filter(entities::projects::Column::Slug.eq("shared"))
        .exec(&app.db)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, later) = app.get("/api/projects", &token).await;
    assert_eq!(later["projects"][0]["name"], "After", "{later}");
}
