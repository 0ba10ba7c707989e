//! `atelier sync push|pull` against the moto S3 server: incremental by
//! SHA-256, resumable after a kill, verified, with a conflict policy.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::binary::{Deployment, Server, eventually};
use crate::storage::{bucket_keys, fresh_bucket};

/// A started server with project `book`, S3 credentials among its secrets
/// and its storage naming `bucket` (a fresh one when `None`) on the test S3
/// server, not as its primary storage: (server, token, endpoint, bucket,
/// the project's id).
async fn project_using_a_bucket(
    deploy: &mut Deployment,
    bucket: Option<String>,
) -> (Server, String, String, String, String) {
    let server = deploy.start().await;
    let client = deploy.client.clone();
    let token = server.bootstrap(&client).await;
    let call = |m: Method, path: &str, body: serde_json::Value| {
        let (server, client, token) = (&server, &client, &token);
        let path = path.to_string();
        async move { server.call(client, m, &path, Some(token), Some(body)).await }
    };
    let (s, p) = call(
        Method::POST,
        "/api/projects",
        json!({"name": "Book", "slug": "book"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let project_id = p["project"]["id"].as_str().unwrap().to_string();
    for (name, value) in [
        ("access_key_id", "testing"),
        ("secret_access_key", "testing"),
    ] {
        let (s, b) = call(
            Method::POST,
            "/api/projects/book/secrets",
            json!({"provider_code": "s3", "secret_name": name, "secret_value": value}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (endpoint, fresh) = fresh_bucket().await;
    let bucket = bucket.unwrap_or(fresh);
    let (s, b) = call(
        Method::PUT,
        "/api/projects/book/storage/s3",
        json!({"enabled": false, "bucket": bucket, "prefix": "studio", "endpoint_url": endpoint}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    (server, token, endpoint, bucket, project_id)
}

/// A project with finished work in its local root and a bucket configured
/// (not as its primary storage): (server, token, bucket endpoint, bucket,
/// the project's prefix in the bucket).
async fn project_with_a_bucket(
    deploy: &mut Deployment,
) -> (Server, String, String, String, String) {
    let (server, token, endpoint, bucket, project_id) = project_using_a_bucket(deploy, None).await;
    finished_run(
        deploy,
        &server,
        &token,
        &["sample:1", "sample:2", "sample:3"],
        "time",
        3,
    )
    .await;
    let prefix = format!("studio/{project_id}/");
    (server, token, endpoint, bucket, prefix)
}

/// Runs `scenes` of project `book` through `stage` and waits until the
/// run is done and its log registered.
async fn finished_run(
    deploy: &Deployment,
    server: &Server,
    token: &str,
    scenes: &[&str],
    stage: &str,
    candidates: u32,
) {
    let (s, b) = server
        .call(
            &deploy.client,
            Method::POST,
            "/api/projects/book/runs/trigger",
            Some(token),
            Some(json!({"mode": "run", "scene_refs": scenes, "stage": stage,
                        "candidates": candidates, "wait": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    deploy.wait_for_run_log(&b).await;
}

/// The bucket, as another client of it sees it (requests signed).
fn bucket_store(endpoint: &str, bucket: &str) -> storage::ObjectStore {
    storage::ObjectStore::s3(
        &storage::S3Config {
            endpoint: Some(endpoint.to_string()),
            bucket: bucket.to_string(),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            root: "/".into(),
        },
        None,
    )
    .unwrap()
}

fn key(k: &str) -> storage::ObjectKey {
    storage::ObjectKey::parse(k).unwrap()
}

fn sync(deploy: &Deployment, args: &[&str]) -> (bool, String) {
    let mut all = vec!["sync"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--project", "book"]);
    let (ok, out, err) = deploy.cli(&all);
    (ok, format!("{out}{err}"))
}

fn moved(out: &str) -> usize {
    out.split_whitespace()
        .skip_while(|w| *w != "moved")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {out}"))
}

#[actix_web::test]
async fn push_is_incremental_resumable_verified_and_refuses_conflicts() {
    let mut deploy = Deployment::new(&[]).await;
    let (_server, _token, endpoint, bucket, prefix) = project_with_a_bucket(&mut deploy).await;
    let root = deploy.dir.path().join("projects/book");
    let remote = bucket_store(&endpoint, &bucket);

    // A dry run moves nothing.
    let (ok, out) = sync(&deploy, &["push", "--dry-run"]);
    assert!(ok && out.contains("would move"), "{out}");
    assert!(bucket_keys(&endpoint, &bucket, &prefix).await.is_empty());

    // Killed mid-way (or, on a fast machine, finished): the next push
    // completes, and moves only what is not there yet.
    let mut child = deploy.cli_child(&["sync", "push", "--project", "book", "--concurrency", "1"]);
    eventually(
        "a first object in the bucket",
        Duration::from_secs(30),
        || async { (!bucket_keys(&endpoint, &bucket, &prefix).await.is_empty()).then_some(()) },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let before = bucket_keys(&endpoint, &bucket, &prefix).await.len();
    let (ok, out) = sync(&deploy, &["push"]);
    assert!(ok, "{out}");
    let all = bucket_keys(&endpoint, &bucket, &prefix).await;
    assert!(all.len() > before || moved(&out) == 0, "{out}");
    assert_eq!(
        moved(&out),
        all.len() - before,
        "only what was missing moved: {out}"
    );
    // Every local file is in the bucket with its bytes.
    let local: Vec<String> = walk(&root);
    for rel in &local {
        let key = format!("{prefix}{rel}");
        assert!(all.contains(&key), "{key} not pushed");
        let stored = remote.get(&self::key(&key)).await.unwrap();
        assert!(
            stored == std::fs::read(root.join(rel)).unwrap(),
            "{key}: other bytes"
        );
    }

    // Again: nothing moves, and the bucket is not even listed (the record
    // of the last push vouches for every file).
    let (ok, out) = sync(&deploy, &["push"]);
    assert!(ok && moved(&out) == 0, "{out}");
    assert!(out.contains("trusted the last sync's record"), "{out}");

    // The sync state lost and half the objects gone (a crash at its worst):
    // the objects still there are checked by their SHA-256 and kept.
    std::fs::remove_file(root.join(".sync/state.json")).unwrap();
    let gone: Vec<&String> = all.iter().step_by(2).collect();
    for k in &gone {
        remote.delete(&key(k)).await.unwrap();
    }
    let (ok, out) = sync(&deploy, &["push"]);
    assert!(ok, "{out}");
    assert_eq!(moved(&out), gone.len(), "{out}");

    // Someone else deletes one object and changes another. A push that
    // trusts its record notices neither and overwrites nothing; one that
    // lists the bucket (`--full`, or the first after an hour) pushes the
    // deleted one again and refuses the changed one, replaced on request.
    let (victim, deleted) = (&all[0], &all[1]);
    remote
        .put(&key(victim), b"not ours".to_vec())
        .await
        .unwrap();
    remote.delete(&key(deleted)).await.unwrap();
    let (ok, out) = sync(&deploy, &["push"]);
    assert!(ok && moved(&out) == 0, "{out}");
    assert_eq!(remote.get(&key(victim)).await.unwrap(), b"not ours");
    let (ok, out) = sync(&deploy, &["push", "--full"]);
    assert!(!ok && out.contains("CONFLICT"), "{out}");
    assert_eq!(moved(&out), 1, "the deleted object, again: {out}");
    assert!(remote.exists(&key(deleted)).await.unwrap());
    assert_eq!(
        remote.get(&key(victim)).await.unwrap(),
        b"not ours",
        "a conflict is left alone"
    );
    let (ok, out) = sync(&deploy, &["push", "--full", "--overwrite"]);
    assert!(ok && moved(&out) == 1, "{out}");

    // Pull: a file lost locally comes back with its bytes; a file changed
    // locally is a conflict.
    let rel = victim.strip_prefix(&prefix).unwrap().to_string();
    let original = std::fs::read(root.join(&rel)).unwrap();
    std::fs::remove_file(root.join(&rel)).unwrap();
    let (ok, out) = sync(&deploy, &["pull"]);
    assert!(ok && moved(&out) == 1, "{out}");
    assert_eq!(std::fs::read(root.join(&rel)).unwrap(), original);
    std::fs::write(root.join(&rel), b"edited here").unwrap();
    let (ok, out) = sync(&deploy, &["pull"]);
    assert!(!ok && out.contains("CONFLICT"), "{out}");
    assert_eq!(std::fs::read(root.join(&rel)).unwrap(), b"edited here");
}

/// The files under `root` (relative, `/`-separated), work folders excluded.
fn walk(root: &std::path::Path) -> Vec<String> {
    crate::helpers::files_under(root)
        .iter()
        .map(|p| {
            p.strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .filter(|rel| !rel.starts_with('.'))
        .collect()
}

/// A project whose primary storage is its bucket exports into the bucket:
/// the package is streamed there in parts and served back whole.
#[actix_web::test]
async fn an_export_of_a_project_on_s3_is_stored_in_its_bucket() {
    let mut deploy = Deployment::new(&[]).await;
    let (server, token, endpoint, bucket, prefix) = project_with_a_bucket(&mut deploy).await;
    let client = deploy.client.clone();
    let (s, b) = server
        .call(&client, Method::PUT, "/api/projects/book/storage/s3", Some(&token),
            Some(json!({"enabled": true, "bucket": bucket, "prefix": "studio", "endpoint_url": endpoint})))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Files of a run made now live in the bucket.
    let (s, b) = server
        .call(&client, Method::POST, "/api/projects/book/runs/trigger", Some(&token),
            Some(json!({"mode": "run", "scene_refs": ["sample:4"], "stage": "style", "candidates": 2, "wait": true})))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    deploy.wait_for_run_log(&b).await;
    let (s, started) = server
        .call(
            &client,
            Method::POST,
            "/api/projects/book/exports",
            Some(&token),
            Some(json!({"format": "zip"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let id = started["export"]["id"].as_str().unwrap().to_string();
    let done = eventually("the export completes", Duration::from_secs(30), || async {
        let (_, b) = server
            .call(
                &client,
                Method::GET,
                &format!("/api/projects/book/exports/{id}"),
                Some(&token),
                None,
            )
            .await;
        (b["export"]["status"] != "running").then_some(b)
    })
    .await;
    let export = &done["export"];
    assert_eq!(export["status"], "completed", "{done}");
    let rel = export["rel_path"].as_str().unwrap();
    let in_bucket = bucket_store(&endpoint, &bucket)
        .get(&key(&format!("{prefix}{rel}")))
        .await
        .unwrap();
    use sha2::Digest;
    assert_eq!(
        json!(hex::encode(sha2::Sha256::digest(&in_bucket))),
        export["checksum_sha256"]
    );
    assert!(
        !deploy.dir.path().join("projects/book").join(rel).exists(),
        "the package went to the bucket, not the local root"
    );
    let asset = export["export_asset_id"].as_str().unwrap();
    let served = client
        .get(format!(
            "{}/api/projects/book/assets/{asset}/content",
            server.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(served.as_ref() == in_bucket.as_slice());
    // Every file is in it, those in the bucket and those in the local root.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(in_bucket)).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_reader(zip.by_name("manifest.json").unwrap()).unwrap();
    assert_eq!(
        manifest["missing_files"],
        json!([]),
        "{}",
        manifest["missing_files"]
    );
    let db = deploy.connect().await;
    let rows = <entities::assets::Entity as sea_orm::EntityTrait>::find()
        .all(&db)
        .await
        .unwrap();
    let kept: Vec<_> = rows.iter().filter(|a| a.kind != "export").collect();
    let backends: Vec<&str> = kept.iter().map(|a| a.storage_backend.as_str()).collect();
    assert!(
        backends.contains(&"s3") && backends.contains(&"local"),
        "{backends:?}"
    );
    let keys: std::collections::BTreeSet<&str> =
        kept.iter().map(|a| a.storage_key.as_str()).collect();
    assert_eq!(manifest["files"].as_array().unwrap().len(), keys.len());
}

/// The API runs a sync in the background, one per project at a time, and
/// reports its end on the project's live feed.
#[actix_web::test]
async fn the_api_syncs_in_the_background_and_reports_on_the_feed() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut deploy = Deployment::new(&[]).await;
    let (server, token, endpoint, bucket, prefix) = project_with_a_bucket(&mut deploy).await;
    let client = deploy.client.clone();
    let mut request = format!(
        "{}/api/projects/book/events/ws",
        server.base.replace("http://", "ws://")
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    let (s, e) = server
        .call(
            &client,
            Method::POST,
            "/api/projects/book/sync",
            Some(&token),
            Some(json!({"direction": "sideways"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error_detail"]["code"], "invalid_direction");
    let (s, started) = server
        .call(
            &client,
            Method::POST,
            "/api/projects/book/sync",
            Some(&token),
            Some(json!({"direction": "push"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let sync_id = started["sync_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut end = serde_json::Value::Null;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["run_id"] == json!(sync_id) && v["event_type"] == "sync.finished" {
                end = v;
                break;
            }
        }
    }
    assert_eq!(end["payload"]["status"], "completed", "{end}");
    let moved = end["payload"]["transferred"].as_u64().unwrap();
    assert!(moved > 0);
    assert_eq!(
        bucket_keys(&endpoint, &bucket, &prefix).await.len() as u64,
        moved
    );
    let (s, state) = server
        .call(
            &client,
            Method::GET,
            "/api/projects/book/sync",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (s, state["running"].clone()),
        (StatusCode::OK, json!(false)),
        "{state}"
    );
    // Without a bucket there is nothing to sync with: refused at once.
    let (s, b) = server
        .call(
            &client,
            Method::POST,
            "/api/projects",
            Some(&token),
            Some(json!({"name": "Other", "slug": "other"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, e) = server
        .call(
            &client,
            Method::POST,
            "/api/projects/other/sync",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error_detail"]["code"], "storage_unavailable");
}

/// Files of the project kept in its local root (what a push moves).
async fn local_files(db: &sea_orm::DatabaseConnection) -> usize {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    entities::assets::Entity::find()
        .filter(entities::assets::Column::StorageBackend.eq("local"))
        .count(db)
        .await
        .unwrap() as usize
}

#[actix_web::test]
async fn scheduled_pushes_keep_the_bucket_current_across_a_restart_of_their_actor() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let mut deploy = Deployment::new(&[("ATELIER_STORAGE__SYNC_PUSH_EVERY_SECONDS", "1")]).await;
    let (server, token, endpoint, bucket, prefix) = project_with_a_bucket(&mut deploy).await;
    let client = deploy.client.clone();
    let db = deploy.connect().await;

    // Every local file reaches the bucket without anyone asking.
    let expected = local_files(&db).await;
    assert!(expected > 3, "{expected}");
    eventually("the scheduled push", Duration::from_secs(30), || async {
        (bucket_keys(&endpoint, &bucket, &prefix).await.len() == expected).then_some(())
    })
    .await;
    // Audited as the service's own work (no user, no token); the pushes
    // that follow find nothing to move and leave no trace.
    let audits = || async {
        entities::audit_events::Entity::find()
            .filter(entities::audit_events::Column::EventCode.eq("sync.finished"))
            .all(&db)
            .await
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = audits().await;
    assert!(!before.is_empty());
    assert!(before.iter().all(|a| a.actor_token_id.is_none()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        audits().await.len(),
        before.len(),
        "idle pushes are not audited"
    );

    // The actor is restarted through its supervisor; the schedule goes on
    // and moves only what is new.
    let (s, r) = server
        .call(
            &client,
            Method::POST,
            "/admin/actors/background/restart",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["restarts"], 1, "{r}");
    finished_run(&deploy, &server, &token, &["sample:4"], "time", 2).await;
    let more = local_files(&db).await;
    assert!(more > expected);
    eventually(
        "the push after the restart",
        Duration::from_secs(30),
        || async { (bucket_keys(&endpoint, &bucket, &prefix).await.len() == more).then_some(()) },
    )
    .await;
    let (_, snap) = server
        .call(
            &client,
            Method::GET,
            "/admin/supervision",
            Some(&token),
            None,
        )
        .await;
    let actor = snap["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "background")
        .cloned()
        .unwrap();
    assert_eq!(actor["status"], "running", "{actor}");
    assert_eq!(actor["restarts"], 1, "{actor}");
}

#[actix_web::test]
async fn a_scheduled_push_that_keeps_failing_is_recorded_once_until_it_succeeds() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let mut deploy = Deployment::new(&[("ATELIER_STORAGE__SYNC_PUSH_EVERY_SECONDS", "1")]).await;
    // A bucket that does not exist (yet): every push fails.
    let missing = format!("atelier-later-{}", uuid::Uuid::new_v4().simple());
    let (server, token, endpoint, bucket, _) =
        project_using_a_bucket(&mut deploy, Some(missing)).await;
    let db = deploy.connect().await;
    let audited = |code: &'static str| {
        let db = db.clone();
        async move {
            entities::audit_events::Entity::find()
                .filter(entities::audit_events::Column::EventCode.eq(code))
                .all(&db)
                .await
                .unwrap()
                .len()
        }
    };
    eventually(
        "a failed scheduled push",
        Duration::from_secs(20),
        || async { (audited("sync.failed").await > 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(audited("sync.failed").await, 1, "the same failure, once");

    // The bucket appears and there is work to push: the next push says so.
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    finished_run(&deploy, &server, &token, &["sample:1"], "style", 1).await;
    eventually(
        "a successful scheduled push",
        Duration::from_secs(20),
        || async { (audited("sync.finished").await > 0).then_some(()) },
    )
    .await;
    assert_eq!(audited("sync.failed").await, 1);
}
