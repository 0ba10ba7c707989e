//! The asset registry over HTTP: thumbnails per candidate, deduplication by
//! content within a project, listing, detail and file content with auth.

use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

async fn run(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, b) = app
        .post("/api/projects/book/runs/trigger", token, body)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    b
}

#[actix_web::test]
async fn candidates_get_thumbnails_served_with_auth_and_caching() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    app.create_project(&token, "Other", "other").await;
    let b = run(&app, &token, json!({"mode": "run", "scene_refs": ["sample:3@320x240"], "stage": "style", "candidates": 2, "wait": true})).await;
    let run_id = b["run_id"].as_str().unwrap();

    // Every candidate.ready event names its thumbnail.
    let (_, events) = app
        .get(&format!("/api/projects/book/runs/{run_id}/events"), &token)
        .await;
    let ready: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "candidate.ready")
        .collect();
    assert_eq!(ready.len(), 2, "{events}");
    for e in &ready {
        let p = &e["payload"];
        let thumb = p["thumbnail_asset_id"].as_str().unwrap();
        assert_eq!(
            p["thumbnail_url"],
            json!(format!("/api/projects/book/assets/{thumb}/content"))
        );
        assert_ne!(p["thumbnail_asset_id"], p["final_asset_id"]);
        let (s, a) = app
            .get(&format!("/api/projects/book/assets/{thumb}"), &token)
            .await;
        assert_eq!(s, StatusCode::OK, "{a}");
        let a = &a["asset"];
        assert_eq!(a["kind"], "thumbnail");
        assert_eq!(a["mime_type"], "image/webp");
        assert_eq!(
            (a["width"].as_i64(), a["height"].as_i64()),
            (Some(256), Some(192))
        );
        // A variant of the candidate's final file.
        let link = entities::asset_links::Entity::find()
            .filter(
                entities::asset_links::Column::ChildAssetId
                    .eq(thumb.parse::<uuid::Uuid>().unwrap()),
            )
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(link.link_type, "variant_of");
        assert_eq!(
            link.parent_asset_id.to_string(),
            p["final_asset_id"].as_str().unwrap()
        );

        // The file, with the token in the query as an <img> would send it.
        let url = format!("{}{}", app.base, p["thumbnail_url"].as_str().unwrap());
        let res = app
            .client
            .get(format!("{url}?token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "image/webp");
        let etag = res.headers()["etag"].to_str().unwrap().to_string();
        let bytes = res.bytes().await.unwrap();
        assert_eq!(&bytes[8..12], b"WEBP");
        assert_eq!(
            a["sha256"].as_str().unwrap(),
            domain::assets::sha256_hex(&bytes)
        );
        assert_eq!(etag, format!("\"{}\"", a["sha256"].as_str().unwrap()));
        let again = app
            .client
            .get(&url)
            .bearer_auth(&token)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        // No token, a wrong token, another project's scope: refused in the envelope.
        let (s, e) = app
            .call(
                reqwest::Method::GET,
                &format!("/api/projects/book/assets/{thumb}/content"),
                None,
                None,
            )
            .await;
        assert_error(s, &e, 401, "unauthorized");
        let (s, e) = app
            .call(
                reqwest::Method::GET,
                &format!("/api/projects/book/assets/{thumb}/content?token=nope"),
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
        let (s, e) = app
            .get(
                &format!("/api/projects/other/assets/{thumb}/content"),
                &token,
            )
            .await;
        assert_error(s, &e, 404, "not_found");
    }
    let scoped = app.scoped_token(&token, "other").await;
    let thumb = ready[0]["payload"]["thumbnail_asset_id"].as_str().unwrap();
    let (s, _) = app
        .get(&format!("/api/projects/book/assets/{thumb}"), &scoped)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, e) = app
        .get("/api/projects/book/assets/not-a-uuid", &token)
        .await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Asset not found");

    // Listing: newest first, filtered by kind and run, limit clamped.
    let (_, list) = app
        .get(
            &format!("/api/projects/book/assets?kind=thumbnail&run_id={run_id}"),
            &token,
        )
        .await;
    assert_eq!(list["count"], 2, "{list}");
    let (_, all) = app.get("/api/projects/book/assets?limit=0", &token).await;
    assert_eq!(all["count"], 1, "limit is clamped to at least 1");
    let (_, all) = app.get("/api/projects/book/assets", &token).await;
    let kinds: Vec<&str> = all["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    for kind in ["input", "generated", "thumbnail"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let times: Vec<&str> = all["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["created_at"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    // Images no larger than a thumbnail are their own thumbnail.
    let small = run(&app, &token, json!({"mode": "run", "scene_refs": ["sample:4@64x48"], "stage": "style", "candidates": 1, "wait": true})).await;
    let c = &small["jobs"][0]["candidates"][0];
    assert_eq!(c["meta_json"]["thumbnail_asset_id"], c["final_asset_id"]);
}

#[actix_web::test]
async fn identical_outputs_are_one_asset_within_a_project() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    // The style stage is deterministic for the local provider: a second run
    // of the same scene produces the same bytes.
    let body = json!({"mode": "run", "scene_refs": ["sample:6@300x200"], "stage": "style", "candidates": 1, "postprocess": {"upscale": true}, "wait": true});
    let first = run(&app, &token, body.clone()).await;
    // Run logs are written after the run is reported finished: not counted.
    let count = || async {
        entities::assets::Entity::find()
            .filter(entities::assets::Column::Kind.ne("run_log"))
            .all(&app.db)
            .await
            .unwrap()
            .len()
    };
    let before = count().await;
    let second = run(&app, &token, body).await;
    let c1 = &first["jobs"][0]["candidates"][0];
    let c2 = &second["jobs"][0]["candidates"][0];
    assert_ne!(first["run_id"], second["run_id"]);
    assert_eq!(
        c1["output_asset_id"], c2["output_asset_id"],
        "same content, same asset"
    );
    assert_eq!(c1["final_asset_id"], c2["final_asset_id"]);
    assert_eq!(
        c1["meta_json"]["thumbnail_asset_id"],
        c2["meta_json"]["thumbnail_asset_id"]
    );
    assert_eq!(
        count().await,
        before,
        "the second run stored no second copy of any file"
    );
    // Nor left one on disk: its output, written before the lookup found
    // the first run's, was removed again (only its run log is its own).
    let second_id = second["run_id"].as_str().unwrap().to_string();
    let mut left = Vec::new();
    let mut dirs = vec![app.data_dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().contains(&second_id) && !path.ends_with("run-log.json")
            {
                left.push(path);
            }
        }
    }
    assert!(left.is_empty(), "duplicate files left behind: {left:?}");
    // The lineage edges exist once each.
    let links = entities::asset_links::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    let mut edges: Vec<_> = links
        .iter()
        .map(|l| (l.parent_asset_id, l.child_asset_id, l.link_type.clone()))
        .collect();
    let n = edges.len();
    edges.sort();
    edges.dedup();
    assert_eq!(edges.len(), n);
    // Another project keeps its own copy.
    app.create_project(&token, "Other", "other").await;
    let (_, other) = app
        .post("/api/projects/other/runs/trigger", &token, json!({"mode": "run", "scene_refs": ["sample:6@300x200"], "stage": "style", "candidates": 1, "wait": true}))
        .await;
    assert_ne!(
        other["jobs"][0]["candidates"][0]["output_asset_id"],
        c1["output_asset_id"]
    );
}

#[actix_web::test]
async fn events_carry_progress_and_cost_so_far() {
    let app = TestApp::spawn_with(|s| s.providers.local.price_usd = 0.01).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let b = run(&app, &token, json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:1@64x48", "sample:2@64x48"], "stage": "time", "candidates": 2, "wait": true})).await;
    let run_id = b["run_id"].as_str().unwrap();
    let (_, events) = app
        .get(&format!("/api/projects/book/runs/{run_id}/events"), &token)
        .await;
    let events = events["events"].as_array().unwrap();
    let mut last = (0, 0.0);
    for e in events {
        let p = &e["payload"];
        match e["event_type"].as_str().unwrap() {
            "candidate.ready" | "job.winner_selected" | "stage.completed" => {
                assert_eq!(p["progress"]["jobs_total"], 4, "{e}");
                let finished = p["progress"]["jobs_finished"].as_i64().unwrap();
                let cost = p["cost_so_far_usd"].as_f64().unwrap();
                assert!(finished >= last.0 && cost >= last.1 - 1e-9, "monotone: {e}");
                last = (finished, cost);
            }
            _ => assert!(p.get("progress").is_none(), "{e}"),
        }
    }
    assert_eq!(last.0, 4, "the last completion saw every job finished");
    assert!(
        (last.1 - 0.08).abs() < 1e-9,
        "8 paid candidates: {}",
        last.1
    );
}

#[actix_web::test]
async fn asset_links_are_edited_within_one_project() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    app.create_project(&token, "Other", "other").await;
    // Assets to link: a run's input and candidates; another project's output.
    let b = run(&app, &token, json!({"mode": "run", "scene_refs": ["sample:1@64x48"], "stage": "style", "candidates": 2, "wait": true})).await;
    let c = &b["jobs"][0]["candidates"];
    let (a1, a2) = (
        c[0]["output_asset_id"].as_str().unwrap(),
        c[1]["output_asset_id"].as_str().unwrap(),
    );
    let (_, o) = app
        .post("/api/projects/other/runs/trigger", &token, json!({"mode": "run", "scene_refs": ["sample:9@64x48"], "stage": "style", "candidates": 1, "wait": true}))
        .await;
    let foreign = o["jobs"][0]["candidates"][0]["output_asset_id"]
        .as_str()
        .unwrap();
    let base = "/api/projects/book/asset-links";

    let cases = [
        (
            json!({"child_asset_id": a2}),
            "field_required",
            "Field 'parent_asset_id' is required",
        ),
        (
            json!({"parent_asset_id": a1, "child_asset_id": a1}),
            "invalid_link",
            "parent_asset_id and child_asset_id must differ",
        ),
        (
            json!({"parent_asset_id": a1, "child_asset_id": a2, "link_type": "cousin_of"}),
            "invalid_link_type",
            "Field 'link_type' must be one of: derived_from, variant_of, mask_for, reference_of",
        ),
        (
            json!({"parent_asset_id": a1, "child_asset_id": foreign}),
            "asset_not_found",
            "",
        ),
    ];
    for (body, code, message) in cases {
        let (s, e) = app.post(base, &token, body).await;
        assert_error(s, &e, 400, code);
        if !message.is_empty() {
            assert_eq!(e["error"], message);
        }
    }
    // 400 before 404: a bad body on a missing project is a 400.
    let (s, e) = app
        .post("/api/projects/nope/asset-links", &token, json!({}))
        .await;
    assert_error(s, &e, 400, "field_required");

    let (s, l) = app
        .post(
            base,
            &token,
            json!({"parent_asset_id": a1, "child_asset_id": a2, "link_type": "VARIANT_OF"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{l}");
    assert_eq!(l["asset_link"]["link_type"], "variant_of");
    let id = l["asset_link"]["id"].as_str().unwrap().to_string();
    let (s, e) = app
        .post(
            base,
            &token,
            json!({"parent_asset_id": a1, "child_asset_id": a2, "link_type": "variant_of"}),
        )
        .await;
    assert_error(s, &e, 400, "duplicate_link");
    assert_eq!(e["error"], "Asset link already exists");

    // Listing by either end and by type.
    let (_, by_child) = app
        .get(
            &format!("{base}?asset_id={a2}&link_type=variant_of"),
            &token,
        )
        .await;
    assert_eq!(by_child["count"], 1);
    let (s, e) = app.get(&format!("{base}?link_type=nope"), &token).await;
    assert_error(s, &e, 400, "invalid_link_type");

    // Partial update: at least one field; the create rules still hold.
    let (s, e) = app.put(&format!("{base}/{id}"), &token, json!({})).await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(
        e["error"],
        "Provide at least one of: parent_asset_id, child_asset_id, link_type"
    );
    let (s, e) = app
        .put(
            &format!("{base}/{id}"),
            &token,
            json!({"child_asset_id": foreign}),
        )
        .await;
    assert_error(s, &e, 400, "asset_not_found");
    let (s, u) = app
        .put(
            &format!("{base}/{id}"),
            &token,
            json!({"link_type": "mask_for"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["asset_link"]["link_type"], "mask_for");
    assert_eq!(u["asset_link"]["parent_asset_id"], json!(a1), "untouched");

    // Another project cannot read or delete it.
    let (s, e) = app
        .get(&format!("/api/projects/other/asset-links/{id}"), &token)
        .await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Asset link not found");
    let (s, d) = app
        .call(
            reqwest::Method::DELETE,
            &format!("{base}/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(
        (d["deleted"].as_bool(), d["id"].as_str()),
        (Some(true), Some(id.as_str()))
    );
    let (s, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("{base}/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn uploads_are_checked_deduplicated_and_usable_as_scenes() {
    let app = TestApp::spawn_with(|s| s.http.upload_limit_bytes = 256 * 1024).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let upload = |query: &str, body: Vec<u8>| {
        app.client
            .post(format!("{}/api/projects/book/assets{query}", app.base))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let png = imaging::encode_png(&imaging::scene::sample_scene(3, 120, 80)).unwrap();
    let res = upload("?name=street.png", png.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let b: Value = res.json().await.unwrap();
    assert_eq!(b["created"], true);
    let a = &b["asset"];
    assert_eq!(
        (a["kind"].as_str(), a["mime_type"].as_str()),
        (Some("input"), Some("image/png"))
    );
    assert_eq!(
        (a["width"].as_i64(), a["height"].as_i64()),
        (Some(120), Some(80))
    );
    assert_eq!(a["sha256"], json!(domain::assets::sha256_hex(&png)));
    assert_eq!(a["metadata_json"]["uploaded_name"], "street.png");
    // Stored unchanged.
    let stored = std::fs::read(
        app.data_path()
            .join("projects/book")
            .join(a["storage_uri"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(stored, png);
    // The same bytes again: the same asset, nothing stored twice.
    let again: Value = upload("", png.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(
        (again["created"].as_bool(), &again["asset"]["id"]),
        (Some(false), &a["id"])
    );
    // Usable as a scene by id.
    let id = a["id"].as_str().unwrap();
    let b = run(
        &app,
        &token,
        json!({"mode": "run", "scene_refs": [id], "stage": "style", "candidates": 1, "wait": true}),
    )
    .await;
    assert_eq!(b["jobs"][0]["scene_ref"], json!(id));

    // Bad input: typed errors, nothing stored.
    // (Counted by kind: the run's log is registered after the run reports done.)
    let uploads = || async {
        entities::assets::Entity::find()
            .filter(entities::assets::Column::Kind.eq("input"))
            .all(&app.db)
            .await
            .unwrap()
            .len()
    };
    let before = uploads().await;
    let check = |res: reqwest::Response, status: u16, code: &'static str| async move {
        let s = res.status();
        let body: Value = res.json().await.unwrap();
        assert_error(s, &body, status, code);
    };
    check(
        upload("", b"GIF89a not really".to_vec()).await.unwrap(),
        400,
        "unsupported_image_format",
    )
    .await;
    check(
        upload("", png[..png.len() / 2].to_vec()).await.unwrap(),
        400,
        "invalid_image",
    )
    .await;
    check(
        upload("?kind=generated", png.clone()).await.unwrap(),
        400,
        "invalid_kind",
    )
    .await;
    check(
        upload("", vec![0u8; 300 * 1024]).await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    // A decompression bomb: a valid header claiming 100k x 100k pixels.
    let mut bomb = png.clone();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    check(upload("", bomb).await.unwrap(), 400, "image_too_large").await;
    assert_eq!(uploads().await, before, "nothing stored");
    // Another project's token cannot upload here.
    app.create_project(&token, "Other", "other").await;
    let scoped = app.scoped_token(&token, "other").await;
    let res = app
        .client
        .post(format!("{}/api/projects/book/assets", app.base))
        .bearer_auth(&scoped)
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

/// CRC-32 as PNG chunks use it (IEEE, reflected).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The engine's content lookups answer many candidates at once with one
/// statement per project, role and backend: each still gets its own answer
/// (found or not, the oldest copy when there are several), never another
/// project's or another role's.
#[actix_web::test]
async fn coalesced_content_lookups_answer_each_candidate_for_its_own_scope() {
    use entities::assets;
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let mut projects = Vec::new();
    for slug in ["mine", "theirs"] {
        let b = app.create_project(&token, slug, slug).await;
        projects.push(
            b["project"]["id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        );
    }
    let row = |project_id, kind: &str, content: &str, age_s: i64| {
        let key = format!("k/{}", uuid::Uuid::now_v7());
        assets::Model {
            id: uuid::Uuid::now_v7(),
            project_id,
            kind: kind.into(),
            storage_backend: "local".into(),
            storage_key: key.clone(),
            storage_uri: key,
            mime_type: Some("image/png".into()),
            width: Some(1),
            height: Some(1),
            byte_size: Some(1),
            sha256: Some(domain::assets::sha256_hex(content.as_bytes())),
            run_id: None,
            job_id: None,
            candidate_id: None,
            metadata_json: json!({}),
            created_at: chrono::Utc::now() - chrono::Duration::seconds(age_s),
        }
    };
    let (mine, theirs) = (projects[0], projects[1]);
    let oldest = row(mine, "generated", "a", 60);
    let rows = vec![
        row(mine, "generated", "a", 1),
        oldest.clone(),
        row(mine, "archived", "b", 1),
        row(theirs, "generated", "c", 1),
    ];
    assets::Entity::insert_many(rows.into_iter().map(assets::ActiveModel::from))
        .exec_without_returning(&app.db)
        .await
        .unwrap();

    let lookups = domain::assets::ContentLookups::start(app.db.clone());
    let sha = |c: &str| domain::assets::sha256_hex(c.as_bytes());
    // Asked together (one batch, most likely), each in its own scope.
    let asks = [
        (mine, "generated", "a", Some(oldest.id)),
        (mine, "generated", "b", None), // held, but in another role
        (mine, "archived", "b", Some(uuid::Uuid::nil())),
        (mine, "generated", "c", None), // held by another project
        (theirs, "generated", "c", Some(uuid::Uuid::nil())),
        (mine, "generated", "never", None),
    ];
    let answers = futures_util::future::join_all(asks.iter().map(|(p, kind, content, _)| {
        let (lookups, sha) = (lookups.clone(), sha(content));
        async move { lookups.existing(*p, kind, &sha, "local").await.unwrap() }
    }))
    .await;
    for ((project, kind, content, expected), found) in asks.iter().zip(answers) {
        match (expected, found) {
            (None, None) => {}
            (Some(id), Some(row)) => {
                assert_eq!(row.project_id, *project, "{kind} {content}");
                assert_eq!(row.kind, *kind);
                assert_eq!(row.sha256.as_deref(), Some(sha(content).as_str()));
                if !id.is_nil() {
                    assert_eq!(row.id, *id, "the oldest copy is the one kept");
                }
            }
            (expected, found) => panic!("{kind} {content}: expected {expected:?}, got {found:?}"),
        }
    }
    // Another backend holds nothing.
    assert!(
        lookups
            .existing(mine, "generated", &sha("a"), "s3")
            .await
            .unwrap()
            .is_none()
    );
}
