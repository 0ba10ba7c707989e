//! Project storage policy over HTTP, and object storage against real backends.

use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
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
    let (endpoint, bucket) = fresh_bucket().await;

    let dir = tempfile::tempdir().unwrap();
    let s3 = ObjectStore::s3(
        &S3Config {
            endpoint: Some(endpoint.clone()),
            bucket: bucket.clone(),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            root: "/projects/book".into(),
        },
        None,
    )
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
        if store.backend() == "s3" {
            // Under the store's root in the bucket, as the bucket itself says.
            assert_eq!(
                bucket_keys(&endpoint, &bucket, "").await,
                vec!["projects/book/runs/r1/job-1/candidate-0.png".to_string()]
            );
        } else {
            assert_eq!(
                std::fs::read(dir.path().join("runs/r1/job-1/candidate-0.png")).unwrap(),
                bytes
            );
        }
        store.delete(&key).await.unwrap();
        assert!(
            store.get(&key).await.unwrap_err().is_not_found(),
            "{}",
            store.backend()
        );
    }
    assert!(bucket_keys(&endpoint, &bucket, "").await.is_empty());
}

/// The keys in `bucket` under `prefix`, as the S3 server lists them.
pub async fn bucket_keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let listing = reqwest::Client::new()
        // Prefixes here are plain key characters: no escaping needed.
        .get(format!(
            "{endpoint}/{bucket}?list-type=2&max-keys=1000&prefix={prefix}"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("ListBucketResult"), "{listing}");
    let mut keys: Vec<String> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|part| part.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect();
    keys.sort();
    keys
}

/// A fresh bucket on the test S3 server; returns its endpoint and name.
pub async fn fresh_bucket() -> (String, String) {
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
    (endpoint, bucket)
}

async fn content(app: &TestApp, token: &str, asset_id: &str) -> (StatusCode, Vec<u8>) {
    let res = app
        .client
        .get(format!(
            "{}/api/projects/book/assets/{asset_id}/content",
            app.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (res.status(), res.bytes().await.unwrap().to_vec())
}

async fn upload(app: &TestApp, token: &str, png: Vec<u8>) -> (StatusCode, serde_json::Value) {
    let res = app
        .client
        .post(format!("{}/api/projects/book/assets", app.base))
        .bearer_auth(token)
        .body(png)
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

async fn s3_secrets(app: &TestApp, token: &str) {
    for (name, value) in [
        ("access_key_id", "testing"),
        ("secret_access_key", "testing"),
    ] {
        let (s, b) = app
            .post(
                "/api/projects/book/secrets",
                token,
                json!({"provider_code": "s3", "secret_name": name, "secret_value": value}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
}

/// A project whose policy says S3 keeps its inputs, candidates, pass
/// outputs, thumbnails and run log in its bucket prefix, reads them back
/// for passes and downloads, and writes nothing into its local root.
#[actix_web::test]
async fn a_project_on_s3_keeps_every_file_in_its_bucket_and_reads_them_back() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let project = app.create_project(&token, "Book", "book").await;
    let project_id = project["project"]["id"].as_str().unwrap().to_string();
    let (endpoint, bucket) = fresh_bucket().await;
    s3_secrets(&app, &token).await;
    let (s, b) = app
        .put(
            "/api/projects/book/storage/s3",
            &token,
            json!({"enabled": true, "bucket": bucket, "prefix": "studio", "endpoint_url": endpoint}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let png = imaging::encode_png(&imaging::scene::sample_scene(5, 160, 120)).unwrap();
    let (s, up) = upload(&app, &token, png.clone()).await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(up["asset"]["storage_backend"], "s3", "{up}");
    let input_id = up["asset"]["id"].as_str().unwrap().to_string();
    // The upscale pass reads the candidate back from the bucket.
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": [input_id], "stage": "style", "candidates": 2,
                   "postprocess": {"upscale": true}, "wait": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let run_id = b["run_id"].as_str().unwrap().to_string();
    // The run log is written once the run is done.
    let assets = crate::binary::eventually(
        "the run log registered",
        std::time::Duration::from_secs(20),
        || async {
            let rows = entities::assets::Entity::find().all(&app.db).await.unwrap();
            rows.iter().any(|a| a.kind == "run_log").then_some(rows)
        },
    )
    .await;
    let kinds: std::collections::BTreeSet<&str> = assets.iter().map(|a| a.kind.as_str()).collect();
    for kind in ["input", "generated", "thumbnail", "run_log"] {
        assert!(kinds.contains(kind), "{kind} missing: {kinds:?}");
    }
    assert!(
        assets.len() >= 7,
        "input, 2 candidates, passes, thumbnails, log: {assets:#?}"
    );
    // Every file is in the bucket under <prefix>/<project id>/, byte for
    // byte, and downloads come from there.
    let prefix = format!("studio/{project_id}/");
    let keys = bucket_keys(&endpoint, &bucket, &prefix).await;
    for asset in &assets {
        assert_eq!(asset.storage_backend, "s3", "{asset:#?}");
        let key = format!("{prefix}{}", asset.storage_key);
        assert!(keys.contains(&key), "{key} not in {keys:#?}");
        let (s, bytes) = content(&app, &token, &asset.id.to_string()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            asset.sha256.as_deref(),
            Some(domain::assets::sha256_hex(&bytes).as_str()),
            "{}",
            asset.storage_key
        );
    }
    assert!(keys.contains(&format!("{prefix}runs/{run_id}/run-log.json")));
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{prefix}uploads/")))
    );
    // Nothing of this project's went to its local root.
    let local_root = app.data_path().join("projects/book");
    let local_files = walk(&local_root);
    assert!(local_files.is_empty(), "{local_files:?}");

    // A file removed from the bucket is missing, not a server error.
    let victim = assets.iter().find(|a| a.kind == "input").unwrap();
    let direct = ObjectStore::s3(
        &S3Config {
            endpoint: Some(endpoint.clone()),
            bucket: bucket.clone(),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            root: format!("/{prefix}"),
        },
        None,
    )
    .unwrap();
    direct
        .delete(&ObjectKey::parse(&victim.storage_key).unwrap())
        .await
        .unwrap();
    assert!(
        !bucket_keys(&endpoint, &bucket, &prefix)
            .await
            .contains(&format!("{prefix}{}", victim.storage_key))
    );
    let (s, _) = content(&app, &token, &victim.id.to_string()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Files written before the switch stay readable where they are; without
/// credentials nothing new is accepted (before anything is spent); with the
/// bucket unreachable mid-run, paid results are kept locally, not lost.
#[actix_web::test]
async fn switching_to_s3_strands_nothing_and_a_bucket_outage_loses_nothing() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let png = imaging::encode_png(&imaging::scene::sample_scene(6, 64, 48)).unwrap();
    let (s, before) = upload(&app, &token, png.clone()).await;
    assert_eq!(s, StatusCode::OK, "{before}");
    assert_eq!(before["asset"]["storage_backend"], "local");
    let before_id = before["asset"]["id"].as_str().unwrap().to_string();

    let (endpoint, bucket) = fresh_bucket().await;
    let (s, b) = app
        .put(
            "/api/projects/book/storage/s3",
            &token,
            json!({"enabled": true, "bucket": bucket, "endpoint_url": endpoint}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // No credentials anywhere: refused with a reason, nothing stored, and
    // the local file is still served.
    let other = imaging::encode_png(&imaging::scene::sample_scene(7, 64, 48)).unwrap();
    let (s, b) = upload(&app, &token, other.clone()).await;
    assert_error(s, &b, 409, "storage_unavailable");
    assert!(
        b["error"].as_str().unwrap().contains("s3/access_key_id"),
        "{b}"
    );
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": [before_id], "stage": "style", "candidates": 1, "wait": true}),
        )
        .await;
    assert_error(s, &b, 409, "storage_unavailable");
    let (_, runs) = app.get("/api/projects/book/runs", &token).await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs}");
    let (s, bytes) = content(&app, &token, &before_id).await;
    assert_eq!((s, bytes == png), (StatusCode::OK, true));

    // With credentials: new files go to the bucket, the old one is still
    // read from the local root (and usable as a scene).
    s3_secrets(&app, &token).await;
    let (s, b) = upload(&app, &token, other).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["asset"]["storage_backend"], "s3");
    let on_s3 = b["asset"]["id"].as_str().unwrap().to_string();
    let (s, bytes) = content(&app, &token, &before_id).await;
    assert_eq!((s, bytes == png), (StatusCode::OK, true));

    // The bucket goes away (nothing listens there any more): a run still
    // completes and its files are kept, and recorded, locally.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (s, b) = app
        .put(
            "/api/projects/book/storage/s3",
            &token,
            json!({"endpoint_url": dead}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": [before_id], "stage": "style", "candidates": 1, "wait": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    let run_id = uuid::Uuid::parse_str(b["run_id"].as_str().unwrap()).unwrap();
    let generated = entities::assets::Entity::find()
        .filter(entities::assets::Column::RunId.eq(run_id))
        .filter(entities::assets::Column::Kind.eq("generated"))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(generated.len(), 1);
    assert_eq!(generated[0].storage_backend, "local");
    let (s, _) = content(&app, &token, &generated[0].id.to_string()).await;
    assert_eq!(s, StatusCode::OK);
    // A file in the unreachable bucket: a typed "try again", not a 500.
    let res = app
        .client
        .get(format!(
            "{}/api/projects/book/assets/{on_s3}/content",
            app.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let s = res.status();
    let b: serde_json::Value = res.json().await.unwrap();
    assert_error(s, &b, 503, "storage_unreachable");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
