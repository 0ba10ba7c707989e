//! Project storage policy over HTTP, and object storage against real backends.

use reqwest::StatusCode;
use serde_json::json;
use storage::{ObjectKey, ObjectStore, S3Config};

use crate::helpers::{TestApp, assert_error};

#[actix_web::test]
async fn local_storage_stays_inside_the_allowed_roots() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let data = std::path::absolute(app.data_path()).unwrap();

    let (s, b) = app
        .put(
            "/api/projects/book/storage/local",
            &token,
            json!({"base_dir": "projects/studio"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["updated"], "local");
    assert_eq!(
        b["storage"]["local"]["project_root"],
        json!(data.join("projects/studio/book").display().to_string())
    );

    let explicit = data.join("projects/custom-root");
    let (s, b) = app
        .put(
            "/api/projects/book/storage/local",
            &token,
            json!({"project_root": explicit.display().to_string()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["storage"]["local"]["project_root"],
        json!(explicit.display().to_string())
    );

    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.join("projects")).unwrap();
    std::os::unix::fs::symlink(outside.path(), data.join("projects/link")).unwrap();
    let cases = [
        (json!({}), 400, "field_required"),
        (json!({"base_dir": "  "}), 400, "field_required"),
        (
            json!({"project_root": "/etc"}),
            400,
            "path_outside_allowed_roots",
        ),
        (
            json!({"base_dir": "backend"}),
            400,
            "path_outside_allowed_roots",
        ),
        (
            json!({"base_dir": "projects/../../.."}),
            400,
            "path_traversal",
        ),
        (
            json!({"project_root": "projects/link/inner"}),
            400,
            "path_symlink_escape",
        ),
        (json!({"base_dir": "projects/x\u{0}y"}), 400, "path_invalid"),
    ];
    for (body, status, code) in cases {
        let (s, b) = app
            .put("/api/projects/book/storage/local", &token, body.clone())
            .await;
        assert_error(s, &b, status, code);
    }
    // A project's default root (base_dir/slug) may not be a symlink out either:
    // the project is not created.
    let (s, b) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Link", "slug": "link"}),
        )
        .await;
    assert_error(s, &b, 400, "path_symlink_escape");
    let (s, b) = app.get("/api/projects/link", &token).await;
    assert_error(s, &b, 404, "not_found");

    let (_, after) = app.get("/api/projects/book/storage", &token).await;
    assert_eq!(
        after["storage"]["local"]["project_root"],
        json!(explicit.display().to_string()),
        "a rejected update changed storage"
    );
    // Blank project_root clears the explicit root.
    let (s, b) = app
        .put(
            "/api/projects/book/storage/local",
            &token,
            json!({"project_root": ""}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["storage"]["local"]["project_root"],
        json!(data.join("projects/studio/book").display().to_string())
    );

    // Body validation comes before the project lookup; then 404.
    let (s, b) = app
        .put("/api/projects/ghost/storage/local", &token, json!({}))
        .await;
    assert_error(s, &b, 400, "field_required");
    let (s, b) = app
        .put(
            "/api/projects/ghost/storage/local",
            &token,
            json!({"base_dir": "projects"}),
        )
        .await;
    assert_error(s, &b, 404, "not_found");

    let codes = app.audit_codes().await;
    assert_eq!(
        codes
            .iter()
            .filter(|c| *c == "project.storage_local_updated")
            .count(),
        3
    );
}

#[actix_web::test]
async fn extra_allowed_roots_are_honoured() {
    let extra = tempfile::tempdir().unwrap();
    let extra_path = extra.path().to_path_buf();
    let app = TestApp::spawn_with(|s| s.storage.allowed_roots = vec![extra_path.clone()]).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (s, b) = app
        .put(
            "/api/projects/book/storage/local",
            &token,
            json!({"base_dir": extra_path.display().to_string()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        b["storage"]["local"]["project_root"]
            .as_str()
            .unwrap()
            .ends_with("/book")
    );
}

#[actix_web::test]
async fn s3_settings_update_validate_and_clear() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;

    let (s, b) = app
        .put(
            "/api/projects/ghost/storage/s3",
            &token,
            json!({"bucket": "Bad_Bucket"}),
        )
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app
        .put("/api/projects/book/storage/s3", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["storage"]["s3"]["prefix"], "atelier-projects");

    let (s, b) = app
        .put(
            "/api/projects/book/storage/s3",
            &token,
            json!({"enabled": true, "bucket": "comic-assets", "prefix": "/studio/books/", "region": "us-east-1", "endpoint_url": "http://127.0.0.1:9000"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["updated"], "s3");
    assert_eq!(
        b["storage"]["s3"],
        json!({"enabled": true, "bucket": "comic-assets", "prefix": "studio/books", "region": "us-east-1", "profile": "", "endpoint_url": "http://127.0.0.1:9000"})
    );

    let cases = [
        (json!({"bucket": "Bad_Bucket"}), "invalid_s3_bucket"),
        (json!({"prefix": "a/../b"}), "invalid_s3_prefix"),
        (
            json!({"endpoint_url": "file:///etc/passwd"}),
            "invalid_endpoint_url",
        ),
        (
            json!({"endpoint_url": "http://user:secret@host"}),
            "invalid_endpoint_url",
        ),
    ];
    for (body, code) in cases {
        let (s, b) = app.put("/api/projects/book/storage/s3", &token, body).await;
        assert_error(s, &b, 400, code);
    }
    let (s, b) = app
        .put(
            "/api/projects/book/storage/s3",
            &token,
            json!({"endpoint_url": "", "enabled": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["storage"]["s3"]["endpoint_url"], "");
    assert_eq!(b["storage"]["s3"]["bucket"], "comic-assets");
    assert_eq!(b["storage"]["s3"]["enabled"], json!(false));
}

/// Object storage against a real S3-compatible server (moto, started by
/// scripts/test.sh) and the local filesystem, through the same API.
#[actix_web::test]
async fn object_store_round_trips_on_s3_and_fs() {
    atelier::startup::install_runtime_defaults();
    let endpoint = std::env::var("ATELIER_TEST_S3_ENDPOINT")
        .expect("ATELIER_TEST_S3_ENDPOINT must point at an S3-compatible server (scripts/test.sh starts one)");
    let bucket = format!("atelier-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );

    let dir = tempfile::tempdir().unwrap();
    let s3 = ObjectStore::s3(&S3Config {
        endpoint: Some(endpoint.clone()),
        bucket: bucket.clone(),
        region: "us-east-1".into(),
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        root: "/projects/book".into(),
    })
    .unwrap();
    for store in [s3, ObjectStore::local(dir.path()).unwrap()] {
        let key = ObjectKey::parse("runs/r1/job-1/candidate-0.png").unwrap();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        store.put(&key, bytes.clone()).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), bytes, "{}", store.backend());
        assert!(store.exists(&key).await.unwrap());
        assert_eq!(
            store.list("runs/r1/job-1/").await.unwrap(),
            vec!["runs/r1/job-1/candidate-0.png".to_string()]
        );
        store.delete(&key).await.unwrap();
        assert!(
            store.get(&key).await.unwrap_err().is_not_found(),
            "{}",
            store.backend()
        );
    }
    // The S3 object lived under the project's prefix in the bucket.
    let listing = reqwest::get(format!("{endpoint}/{bucket}?list-type=2"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("ListBucketResult"), "{listing}");
}
