//! Isolation and hostile input (each case failed before its fix): racing
//! triggers against the queue's capacity, overlapping project roots,
//! decompression bombs, outbound requests to internal addresses, token
//! lifetimes and scope, symbolic links in project trees, and the smaller
//! leaks (echoed secrets, invisible characters, silent renames, file modes).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_error};

async fn admin_and_project(app: &TestApp) -> String {
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    token
}

#[actix_web::test]
async fn concurrent_triggers_never_exceed_the_queue_capacity() {
    let app = TestApp::spawn_with(|s| s.engine.max_queued_runs = 5).await;
    let token = admin_and_project(&app).await;
    // Nothing starts, so every accepted run stays open.
    let (s, b) = app.post("/admin/pause", &token, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let body =
        json!({"mode": "run", "scene_refs": ["sample:1@64x48"], "stage": "style", "candidates": 1});
    let triggers =
        (0..12).map(|_| app.post("/api/projects/book/runs/trigger", &token, body.clone()));
    let answers = futures_util::future::join_all(triggers).await;
    let accepted = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    for (s, b) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_error(*s, b, 429, "queue_full");
    }
    assert_eq!(accepted, 5, "{answers:?}");
    let (_, runs) = app.get("/api/projects/book/runs", &token).await;
    assert_eq!(runs["count"], 5, "{runs}");
}

#[actix_web::test]
async fn project_roots_never_overlap_and_only_unscoped_tokens_move_them() {
    let outside = tempfile::tempdir().unwrap();
    let extra = outside.path().to_path_buf();
    let app = TestApp::spawn_with(move |s| s.storage.allowed_roots = vec![extra]).await;
    let token = admin_and_project(&app).await;
    app.create_project(&token, "Other", "other").await;
    let projects = app.data_path().join("projects");
    let put = |body: serde_json::Value| {
        let (app, token) = (&app, token.clone());
        async move {
            app.put("/api/projects/book/storage/local", &token, body)
                .await
        }
    };
    for root in [
        projects.join("other"),                // the other project's root
        projects.clone(),                      // the parent of every root
        projects.join("other").join("inside"), // inside the other's root
    ] {
        let (s, e) = put(json!({"project_root": root.display().to_string()})).await;
        assert_error(s, &e, 409, "storage_root_overlap");
    }
    // Through a symbolic link to the other root: still the same folder.
    std::fs::create_dir_all(projects.join("other")).unwrap();
    let alias = outside.path().join("alias");
    std::os::unix::fs::symlink(projects.join("other"), &alias).unwrap();
    let (s, e) = put(json!({"project_root": alias.display().to_string()})).await;
    assert!(s.is_client_error(), "{s} {e}");
    // A folder of its own is fine ...
    let own = outside.path().join("book-files");
    let (s, b) = put(json!({"project_root": own.display().to_string()})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // ... and a new project cannot be created whose default root lies inside it.
    let (s, b) = app
        .put(
            "/api/projects/other/storage/local",
            &token,
            json!({"project_root": projects.join("third").display().to_string()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, e) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Third", "slug": "third"}),
        )
        .await;
    assert_error(s, &e, 409, "storage_root_overlap");
    // A project-scoped token reads its storage but cannot move it.
    let scoped = app.scoped_token(&token, "book").await;
    let (s, _) = app.get("/api/projects/book/storage", &scoped).await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = app
        .put(
            "/api/projects/book/storage/local",
            &scoped,
            json!({"project_root": outside.path().join("x").display().to_string()}),
        )
        .await;
    assert_error(s, &e, 403, "forbidden");
    let (s, e) = app
        .put(
            "/api/projects/book/storage/s3",
            &scoped,
            json!({"enabled": false}),
        )
        .await;
    assert_error(s, &e, 403, "forbidden");
}

#[actix_web::test]
async fn outbound_requests_go_only_where_the_policy_allows() {
    // No allow-list: the production default.
    let app = TestApp::spawn_with(|s| s.network.outbound_allow = Vec::new()).await;
    let token = admin_and_project(&app).await;
    for url in [
        "http://127.0.0.1:8788/admin/pause",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/hook",
        "http://[::1]:8080/hook",
        "http://0.0.0.0/",
    ] {
        let (s, e) = app
            .post("/api/projects/book/webhooks", &token, json!({"url": url}))
            .await;
        assert_error(s, &e, 400, "url_not_allowed");
        assert!(!e["error"].as_str().unwrap().contains("127.0.0.1"), "{e}");
    }
    let (s, e) = app
        .put(
            "/api/projects/book/storage/s3",
            &token,
            json!({"enabled": true, "bucket": "books", "endpoint_url": "http://192.168.1.20:9000"}),
        )
        .await;
    assert_error(s, &e, 400, "url_not_allowed");
    let (_, hooks) = app.get("/api/projects/book/webhooks", &token).await;
    assert_eq!(hooks["count"], 0);
    // With the operator's allow-list (what the other tests use), loopback is fine.
    let allowed = TestApp::spawn().await;
    let token = admin_and_project(&allowed).await;
    let (s, b) = allowed
        .post(
            "/api/projects/book/webhooks",
            &token,
            json!({"url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[actix_web::test]
async fn a_child_token_never_outlives_or_outranks_its_parent() {
    let app = TestApp::spawn().await;
    let admin = admin_and_project(&app).await;
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (s, b) = app
        .post(
            "/auth/token",
            &admin,
            json!({"project_slug": "book", "expires_at": in_an_hour, "label": "parent"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let parent = b["auth_token"]["token"].as_str().unwrap().to_string();
    let parent_expiry = b["auth_token"]["expires_at"].as_str().unwrap().to_string();
    // No expiry asked: the parent's.
    let (s, b) = app
        .post("/auth/token", &parent, json!({"label": "child"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["auth_token"]["expires_at"], parent_expiry, "{b}");
    assert!(b["auth_token"]["project_id"].is_string(), "same scope");
    let child = b["auth_token"]["token"].as_str().unwrap().to_string();
    let child_id = b["auth_token"]["id"].as_str().unwrap().to_string();
    // Later than the parent: refused.
    let next_year = (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339();
    let (s, e) = app
        .post("/auth/token", &parent, json!({"expires_at": next_year}))
        .await;
    assert_error(s, &e, 400, "invalid_expires_at");
    // A sibling minted by the admin cannot be revoked by the scoped token.
    let sibling = app.scoped_token(&admin, "book").await;
    let (_, list) = app.get("/auth/tokens", &admin).await;
    let sibling_id = list["auth_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            sibling.starts_with(t["token_prefix"].as_str().unwrap()) && t["id"] != json!(child_id)
        })
        .map(|t| t["id"].as_str().unwrap().to_string())
        .unwrap();
    let (s, e) = app
        .call(
            Method::DELETE,
            &format!("/auth/tokens/{sibling_id}"),
            Some(&parent),
            None,
        )
        .await;
    assert_error(s, &e, 403, "forbidden");
    // Revoking the parent takes its child with it.
    let (_, list) = app.get("/auth/tokens", &admin).await;
    let parent_id = list["auth_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "parent")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{list}"));
    let (s, b) = app
        .call(
            Method::DELETE,
            &format!("/auth/tokens/{parent_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = app.get("/api/projects/book", &child).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the child went with its parent"
    );
    let (s, _) = app.get("/api/projects/book", &sibling).await;
    assert_eq!(s, StatusCode::OK, "the sibling did not");
}

#[actix_web::test]
async fn the_bootstrap_does_not_reopen_when_every_token_is_revoked() {
    let app = TestApp::spawn().await;
    let admin = app.bootstrap_token().await;
    let (_, list) = app.get("/auth/tokens", &admin).await;
    let id = list["auth_tokens"][0]["id"].as_str().unwrap().to_string();
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/auth/tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = app
        .call(
            Method::POST,
            "/auth/token",
            None,
            Some(json!({"label": "again"})),
        )
        .await;
    assert_error(s, &e, 401, "unauthorized");
}

#[actix_web::test]
async fn symbolic_links_in_a_project_tree_are_not_followed() {
    let app = TestApp::spawn().await;
    let token = admin_and_project(&app).await;
    let outside = tempfile::tempdir().unwrap();
    let secret = imaging::encode_png(&imaging::scene::sample_scene(4, 32, 24)).unwrap();
    std::fs::write(outside.path().join("secret.png"), &secret).unwrap();
    let root = app.data_path().join("projects").join("book");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("inputs")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.png"), root.join("leak.png")).unwrap();
    let trigger = |scene: &str| {
        let (app, token) = (&app, token.clone());
        let body = json!({"mode": "dry", "scene_refs": [scene]});
        async move {
            app.post("/api/projects/book/runs/trigger", &token, body)
                .await
        }
    };
    // The same answer as for a file that does not exist: nothing is read,
    // nothing is revealed.
    let (s_missing, missing) = trigger("inputs/nothing-here.png").await;
    for scene in ["inputs/secret.png", "leak.png", "dir:inputs"] {
        let (s, e) = trigger(scene).await;
        assert_eq!(s, s_missing, "{scene}: {e}");
        assert_eq!(e["error_code"], missing["error_code"], "{scene}: {e}");
    }
}

#[actix_web::test]
async fn small_leaks_are_closed() {
    let app =
        TestApp::spawn_with(|s| s.secrets.master_key_env = "ATELIER_TEST_UNSET_MASTER_KEY".into())
            .await;
    let token = admin_and_project(&app).await;
    // A mistyped secret value is never echoed.
    let (s, e) = app
        .post("/api/projects/book/secrets", &token, json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": 7_345_912_881_u64}))
        .await;
    assert_error(s, &e, 422, "invalid_field_type");
    assert!(!e.to_string().contains("7345912881"), "{e}");
    // Invisible characters in names and settings.
    for name in ["Book\u{0}", "Evil\u{202e}kooB", "a\u{2066}b"] {
        let (s, e) = app
            .post(
                "/api/projects",
                &token,
                json!({"name": name, "slug": "evil"}),
            )
            .await;
        assert_error(s, &e, 400, "invalid_characters");
    }
    let (s, e) = app
        .put(
            "/api/projects/book/storage/s3",
            &token,
            json!({"region": "eu\u{202e}west"}),
        )
        .await;
    assert_error(s, &e, 400, "invalid_characters");
    // Distinct names never rename one another's project.
    let (s, first) = app
        .post("/api/projects", &token, json!({"name": "Книга"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let (s, second) = app
        .post("/api/projects", &token, json!({"name": "Книга вторая"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{second}");
    assert_ne!(first["project"]["slug"], second["project"]["slug"]);
    let (s, e) = app
        .post("/api/projects", &token, json!({"name": "book!"}))
        .await;
    assert_error(s, &e, 409, "slug_conflict");
    let (_, book) = app.get("/api/projects/book", &token).await;
    assert_eq!(book["project"]["name"], "Book", "not renamed");
    // The same name again updates its own project, as before.
    let (s, again) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Книга", "description": "d"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["project"]["slug"], first["project"]["slug"]);
    // Compressed bodies are refused before anything inflates them.
    let gz = [
        0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let res = app
        .client
        .post(format!("{}/api/projects", app.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.to_vec())
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_error(status, &body, 415, "unsupported_content_encoding");
    // The database and its folder are the owner's alone (SQLite).
    if !crate::helpers::on_postgres() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&app.data_path().join("backend")), 0o700);
        assert_eq!(mode(&app.data_path().join("backend/app.db")), 0o600);
    }
}

/// The server's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

/// A PNG of about `inflated / 1000` bytes whose colour profile inflates to
/// `inflated` bytes.
fn colour_profile_bomb(inflated: usize) -> Vec<u8> {
    use std::io::Write;
    let png = imaging::encode_png(&imaging::scene::sample_scene(1, 64, 48)).unwrap();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    for _ in 0..inflated / block.len() {
        z.write_all(&block).unwrap();
    }
    let mut data = b"bomb\0\0".to_vec();
    data.extend(z.finish().unwrap());
    let mut typed = b"iCCP".to_vec();
    typed.extend(&data);
    let mut out = png[..33].to_vec();
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(&typed);
    out.extend(crc32fast::hash(&typed).to_be_bytes());
    out.extend(&png[33..]);
    out
}

#[actix_web::test]
async fn decompression_bombs_do_not_take_the_servers_memory() {
    // Built first: it takes seconds, and the client's pooled connections
    // would sit idle meanwhile.
    let bomb = colour_profile_bomb(512 << 20);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let mut deploy = crate::binary::Deployment::new(&[]).await;
    let client = deploy.client.clone();
    let server = deploy.start().await;
    let token = server.bootstrap(&client).await;
    let (s, _) = server
        .call(
            &client,
            Method::POST,
            "/api/projects",
            Some(&token),
            Some(json!({"name": "Bombs", "slug": "bombs"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let before = peak_rss_mib(server.child.id());
    // Three at once as uploads, and one as a scene and a style reference of
    // a dry run.
    let uploads = (0..3).map(|_| {
        client
            .post(format!("{}/api/projects/bombs/assets", server.base))
            .bearer_auth(&token)
            .header("content-type", "image/png")
            .body(bomb.clone())
            .send()
    });
    let mut asset_id = None;
    for r in futures_util::future::join_all(uploads).await {
        let r = r.unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{status}: {body}"
        );
        if status == StatusCode::OK {
            asset_id = body["asset"]["id"].as_str().map(str::to_string);
        }
    }
    if let Some(id) = asset_id {
        let (s, b) = server
            .call(
                &client,
                Method::POST,
                "/api/projects/bombs/runs/trigger",
                Some(&token),
                Some(json!({"mode": "dry", "scene_refs": [id.clone()], "style_refs": [id]})),
            )
            .await;
        assert!(s == StatusCode::OK || s.is_client_error(), "{s}: {b}");
    }
    // A gzip body that inflates to a gigabyte: refused unread.
    let res = client
        .post(format!("{}/api/projects", server.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = peak_rss_mib(server.child.id());
    assert!(
        after < before + 200,
        "peak RSS grew from {before} MiB to {after} MiB on ~{} MB of uploads",
        3 * bomb.len() / 1_000_000
    );
}

#[actix_web::test]
async fn a_nul_character_postgresql_cannot_store_is_the_clients_error_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Nul", "nul").await;
    // A NUL in a key of free-form JSON: PostgreSQL's jsonb cannot hold it.
    let res = app
        .client
        .post(format!("{}/api/projects/nul/provider-accounts", app.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"provider_code": "openai", "config_json": {"a\u0000b": 1}}"#)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let b: serde_json::Value = res.json().await.unwrap();
    let (_, accounts) = app.get("/api/projects/nul/provider-accounts", &token).await;
    if crate::helpers::on_postgres() {
        assert_error(status, &b, 400, "invalid_text");
        assert_eq!(accounts["count"], 0, "{accounts}");
    } else {
        // SQLite stores it, and gives it back as sent.
        assert_eq!(status, StatusCode::OK, "{b}");
        assert_eq!(accounts["count"], 1, "{accounts}");
    }
    // Named text fields refuse control characters on both stores.
    let (s, b) = app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Nul\u{0}Name", "slug": "nul"}),
        )
        .await;
    assert_error(s, &b, 400, "invalid_characters");
    let (_, project) = app.get("/api/projects/nul", &token).await;
    assert_eq!(project["project"]["name"], "Nul");
}

/// A client that reuses a pooled connection after a few idle seconds must
/// find it open: actix's default (5 s) closed it under such a client, and
/// a POST sent at that instant was lost (no response, not retried).
#[actix_web::test]
async fn an_idle_keep_alive_connection_outlives_the_clients_pause() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    for pause in [Duration::ZERO, Duration::from_secs(7)] {
        tokio::time::sleep(pause).await;
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "after {pause:?} idle: {head:?}"
        );
    }
}
