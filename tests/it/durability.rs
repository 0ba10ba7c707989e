//! The row writer's durability order: the files a batch points at are made
//! durable before its transaction begins, and when one cannot be, nothing of
//! the batch commits. And its fencing: a worker's rows are written only
//! while its lease holds.

use entities::assets;
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::TestApp;

fn asset_row(project_id: Uuid, key: &str) -> assets::Model {
    let now = chrono::Utc::now();
    assets::Model {
        id: Uuid::now_v7(),
        project_id,
        kind: "generated".into(),
        storage_backend: "local".into(),
        storage_key: key.into(),
        storage_uri: key.into(),
        mime_type: Some("image/png".into()),
        width: Some(1),
        height: Some(1),
        byte_size: Some(5),
        sha256: Some(domain::assets::sha256_hex(key.as_bytes())),
        run_id: None,
        job_id: None,
        candidate_id: None,
        metadata_json: json!({}),
        created_at: now,
    }
}

#[actix_web::test]
async fn a_batch_commits_only_after_its_files_are_durable_and_not_at_all_if_one_cannot_be() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let body = app.create_project(&token, "Durable", "durable").await;
    let project_id: Uuid = body["project"]["id"].as_str().unwrap().parse().unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = storage::ObjectStore::local(root.path()).unwrap();
    let writer = domain::runs::writer::RowWriter::start(app.db.clone(), app.hub.clone());

    // A file that is there: synced, then its row commits.
    let key = storage::ObjectKey::parse("runs/r/job/c1.png").unwrap();
    let kept = store
        .put_unsynced(&key, b"image".to_vec())
        .await
        .unwrap()
        .unwrap();
    let row = asset_row(project_id, key.as_str());
    writer
        .write(
            None,
            domain::runs::writer::Rows {
                assets: vec![row.clone()],
                files: vec![kept],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        assets::Entity::find_by_id(row.id)
            .one(&app.db)
            .await
            .unwrap()
            .is_some()
    );

    // A file gone before the sync (as if the disk lost it): the batch fails
    // and its row never commits.
    let key = storage::ObjectKey::parse("runs/r/job/c2.png").unwrap();
    let lost = store
        .put_unsynced(&key, b"image".to_vec())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_file(lost.path()).unwrap();
    let row = asset_row(project_id, key.as_str());
    let refused = writer
        .write(
            None,
            domain::runs::writer::Rows {
                assets: vec![row.clone()],
                files: vec![lost],
                ..Default::default()
            },
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        assets::Entity::find_by_id(row.id)
            .one(&app.db)
            .await
            .unwrap()
            .is_none(),
        "a row committed although its file was not durable"
    );
    // Sent together (most likely one batch): only the request whose file is
    // lost fails; the other commits.
    let good_key = storage::ObjectKey::parse("runs/r/job/c3.png").unwrap();
    let good_file = store
        .put_unsynced(&good_key, b"image".to_vec())
        .await
        .unwrap()
        .unwrap();
    let bad_key = storage::ObjectKey::parse("runs/r/job/c4.png").unwrap();
    let bad_file = store
        .put_unsynced(&bad_key, b"image".to_vec())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_file(bad_file.path()).unwrap();
    let (good_row, bad_row) = (
        asset_row(project_id, good_key.as_str()),
        asset_row(project_id, bad_key.as_str()),
    );
    let (good, bad) = futures_util::join!(
        writer.write(
            None,
            domain::runs::writer::Rows {
                assets: vec![good_row.clone()],
                files: vec![good_file],
                ..Default::default()
            }
        ),
        writer.write(
            None,
            domain::runs::writer::Rows {
                assets: vec![bad_row.clone()],
                files: vec![bad_file],
                ..Default::default()
            }
        ),
    );
    assert!(good.is_ok(), "{good:?}");
    assert!(bad.is_err());
    let stored = |id| {
        let db = app.db.clone();
        async move {
            assets::Entity::find_by_id(id)
                .one(&db)
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(stored(good_row.id).await);
    assert!(!stored(bad_row.id).await);
    // The service keeps answering.
    let (s, _) = app.get("/api/projects/durable", &token).await;
    assert_eq!(s, StatusCode::OK);
}

/// A worker's call records (what a job writes before its first calls; on
/// PostgreSQL one statement with its fence) are written only while its lease
/// holds: a stale epoch writes nothing and gets `lease_lost`; a completion
/// of a recorded call updates it.
#[actix_web::test]
async fn call_records_are_written_only_under_their_lease() {
    use domain::runs::lease::{Fence, is_lost};
    use domain::runs::writer::Rows;
    use entities::{provider_calls, run_jobs};
    use sea_orm::{ColumnTrait, QueryFilter};

    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Fenced", "fenced").await;
    let (s, b) = app
        .post(
            "/api/projects/fenced/runs/trigger",
            &token,
            json!({"mode": "dry", "scene_refs": ["sample:1"], "stage": "style"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id: Uuid = b["run_id"].as_str().unwrap().parse().unwrap();
    let job = run_jobs::Entity::find()
        .filter(run_jobs::Column::RunId.eq(run_id))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let writer = domain::runs::writer::RowWriter::start(app.db.clone(), app.hub.clone());
    let call = |n: u32| provider_calls::Model {
        run_id: Some(run_id),
        job_id: Some(job.id),
        request_json: json!({"candidate_index": n}),
        ..crate::helpers::pending_call(
            job.project_id,
            format!("{run_id}:{}:c{n}", job.job_key),
            "local",
            "generate",
        )
    };
    let held = Fence::of(&job);
    let stale = Fence {
        epoch: job.lease_epoch + 1,
        ..held
    };
    let stored = |id: Uuid| {
        let db = app.db.clone();
        async move {
            provider_calls::Entity::find_by_id(id)
                .one(&db)
                .await
                .unwrap()
        }
    };
    let calls = |rows: Vec<provider_calls::Model>| Rows {
        provider_calls: rows,
        ..Default::default()
    };

    let (first, second) = (call(1), call(2));
    writer
        .write(Some(held), calls(vec![first.clone(), second.clone()]))
        .await
        .unwrap();
    assert!(stored(first.id).await.is_some() && stored(second.id).await.is_some());

    let late = call(3);
    let refused = writer.write(Some(stale), calls(vec![late.clone()])).await;
    assert!(refused.as_ref().is_err_and(is_lost), "{refused:?}");
    assert!(stored(late.id).await.is_none(), "a late write was stored");

    let done = provider_calls::Model {
        status: "succeeded".into(),
        attempt: 1,
        finished_at: Some(chrono::Utc::now()),
        ..first.clone()
    };
    let refused = writer.write(Some(stale), calls(vec![done.clone()])).await;
    assert!(refused.as_ref().is_err_and(is_lost), "{refused:?}");
    assert_eq!(stored(first.id).await.unwrap().status, "pending");
    writer.write(Some(held), calls(vec![done])).await.unwrap();
    let completed = stored(first.id).await.unwrap();
    assert_eq!(
        (completed.status.as_str(), completed.attempt),
        ("succeeded", 1)
    );
}
