//! Export packages through the real binary: reproducible bytes, stored as
//! an asset and recorded with their checksum, verified entry by entry, and
//! tampered or escaping packages refused.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::binary::{Deployment, Server, eventually};

/// A project with one finished run of two scenes through three stages.
async fn project_with_a_run(deploy: &mut Deployment) -> (Server, String) {
    let server = deploy.start().await;
    let client = deploy.client.clone();
    let token = server.bootstrap(&client).await;
    let (s, b) = server
        .call(
            &client,
            Method::POST,
            "/api/projects",
            Some(&token),
            Some(json!({"name": "Book", "slug": "book"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = server
        .call(
            &client,
            Method::POST,
            "/api/projects/book/runs/trigger",
            Some(&token),
            Some(
                json!({"mode": "run", "scene_refs": ["sample:2", "sample:1"], "stage": "weather",
                "time": "night", "weather": "rain", "candidates": 2, "wait": true}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["run"]["status"], "done", "{b}");
    deploy.wait_for_run_log(&b).await;
    (server, token)
}

/// Runs `atelier export …`; returns the package's path and sha256.
fn export(deploy: &Deployment, format: &str) -> (PathBuf, String) {
    let (ok, out, err) = deploy.cli(&["export", "--project", "book", "--format", format]);
    assert!(ok, "{out}\n{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    (PathBuf::from(field("package")), field("sha256"))
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn verify(deploy: &Deployment, path: &Path) -> (bool, String) {
    let (ok, out, err) = deploy.cli(&["export", "verify", path.to_str().unwrap()]);
    (ok, format!("{out}{err}"))
}

/// The entries of a zip, in order, with their bytes.
fn zip_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut e = zip.by_index(i).unwrap();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (e.name().unwrap().to_string(), bytes)
        })
        .collect()
}

fn write_zip(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in entries {
        z.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

#[actix_web::test]
async fn packages_are_reproducible_verified_and_stored_as_assets() {
    let mut deploy = Deployment::new(&[]).await;
    let (server, token) = project_with_a_run(&mut deploy).await;
    let client = deploy.client.clone();

    for format in ["zip", "tar.gz", "cbz"] {
        let (first, sha) = export(&deploy, format);
        let (second, sha_again) = export(&deploy, format);
        assert_ne!(first, second, "two exports, two packages");
        assert_eq!(
            sha, sha_again,
            "{format}: the same content gives the same bytes"
        );
        assert_eq!(
            sha256_of(&first),
            sha,
            "the recorded checksum is the file's"
        );
        let (ok, out) = verify(&deploy, &first);
        assert!(ok, "{format}: {out}");
        if format == "tar.gz" {
            // Other tools read it as well: GNU tar lists the manifest first,
            // then the files.
            let out = std::process::Command::new("tar")
                .arg("-tzf")
                .arg(&first)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let listed = String::from_utf8(out.stdout).unwrap();
            assert_eq!(listed.lines().next(), Some("manifest.json"), "{listed}");
            assert!(listed.lines().count() > 2, "{listed}");
        }
    }

    // The zip: the manifest first, then every file, each as the manifest says.
    let (zip_path, _) = export(&deploy, "zip");
    let entries = zip_entries(&zip_path);
    assert_eq!(entries[0].0, "manifest.json");
    let manifest: Value = serde_json::from_slice(&entries[0].1).unwrap();
    assert_eq!(manifest["format"], "atelier-export");
    assert_eq!(manifest["contract_version"], "v1");
    assert_eq!(manifest["project"]["slug"], "book");
    assert_eq!(manifest["runs"].as_array().unwrap().len(), 1);
    assert_eq!(
        manifest["jobs"].as_array().unwrap().len(),
        6,
        "2 scenes x 3 stages"
    );
    assert_eq!(
        manifest["winners"].as_array().unwrap().len(),
        2,
        "one page per scene"
    );
    assert!(!manifest["lineage"].as_array().unwrap().is_empty());
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files.len(), entries.len() - 1);
    let names: Vec<&str> = entries[1..].iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries in a fixed order");

    // The CBZ: ComicInfo.xml and the two winners, the last stage's, as pages.
    let (cbz, _) = export(&deploy, "cbz");
    let pages = zip_entries(&cbz);
    let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["manifest.json", "ComicInfo.xml", "0001.png", "0002.png"]
    );
    let info = String::from_utf8(pages[1].1.clone()).unwrap();
    assert!(info.contains("<PageCount>2</PageCount>"), "{info}");

    // Recorded: listed with its checksum, and downloadable as an asset.
    let (s, list) = server
        .call(
            &client,
            Method::GET,
            "/api/projects/book/exports",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let exports = list["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 8);
    let newest = &exports[0];
    assert_eq!(newest["status"], "completed", "{newest}");
    assert_eq!(newest["export_format"], "cbz");
    let db = deploy.connect().await;
    let id: uuid::Uuid = newest["id"].as_str().unwrap().parse().unwrap();
    let row = <entities::project_exports::Entity as sea_orm::EntityTrait>::find_by_id(id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    let asset = row.export_asset_id.expect("linked through export_asset_id");
    let res = client
        .get(format!(
            "{}/api/projects/book/assets/{asset}/content",
            server.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.bytes().await.unwrap();
    use sha2::Digest;
    assert_eq!(
        Some(hex::encode(sha2::Sha256::digest(&bytes))),
        row.checksum_sha256
    );

    // Tampered: one file's bytes changed; an entry outside the manifest; an
    // entry that would escape; a tar.gz with a symbolic link.
    let dir = tempfile::tempdir().unwrap();
    let mut changed = entries.clone();
    changed[1].1[40] ^= 0xff;
    let bad = dir.path().join("changed.zip");
    write_zip(&bad, &changed);
    let (ok, out) = verify(&deploy, &bad);
    assert!(!ok && out.contains("checksum or size differs"), "{out}");
    let mut escaping = entries.clone();
    escaping.push(("../evil.png".into(), b"x".to_vec()));
    escaping.push(("extra.txt".into(), b"x".to_vec()));
    let bad = dir.path().join("escaping.zip");
    write_zip(&bad, &escaping);
    let (ok, out) = verify(&deploy, &bad);
    assert!(
        !ok && out.contains("../evil.png: a name that leaves")
            && out.contains("extra.txt: not in the manifest"),
        "{out}"
    );
    let bad = dir.path().join("link.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&bad).unwrap(),
            flate2::Compression::default(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(entries[0].1.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "manifest.json", entries[0].1.as_slice())
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        tar.append_link(&mut link, "files/x.png", "/etc/passwd")
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let (ok, out) = verify(&deploy, &bad);
    assert!(
        !ok && out.contains("files/x.png: not a regular file"),
        "{out}"
    );
    let not_a_package = dir.path().join("notes.txt");
    std::fs::write(&not_a_package, "hello there").unwrap();
    let (ok, out) = verify(&deploy, &not_a_package);
    assert!(!ok && out.contains("Not a package"), "{out}");
}

#[actix_web::test]
async fn the_api_builds_an_export_in_the_background() {
    use crate::helpers::{TestApp, assert_error};
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (s, b) = app
        .post("/api/projects/book/runs/trigger", &token,
            json!({"mode": "run", "scene_refs": ["sample:1"], "stage": "time", "candidates": 2, "wait": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id = b["run_id"].as_str().unwrap().to_string();

    // The body is checked before the project is looked up.
    let (s, e) = app
        .post(
            "/api/projects/nope/exports",
            &token,
            json!({"format": "rar"}),
        )
        .await;
    assert_error(s, &e, 400, "invalid_export_format");
    let (s, e) = app
        .post(
            "/api/projects/book/exports",
            &token,
            json!({"run_ids": ["x"]}),
        )
        .await;
    assert_error(s, &e, 400, "invalid_run_id");
    let (s, e) = app
        .post(
            "/api/projects/book/exports",
            &token,
            json!({"run_ids": [uuid::Uuid::now_v7()]}),
        )
        .await;
    assert_error(s, &e, 404, "not_found");
    let (s, e) = app
        .post("/api/projects/nope/exports", &token, json!({}))
        .await;
    assert_error(s, &e, 404, "not_found");

    let (s, started) = app
        .post(
            "/api/projects/book/exports",
            &token,
            json!({"format": "tar.gz", "run_ids": [run_id]}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["export"]["status"], "running");
    let id = started["export"]["id"].as_str().unwrap().to_string();
    let done = crate::binary::eventually(
        "the export completes",
        std::time::Duration::from_secs(30),
        || async {
            let (_, b) = app
                .get(&format!("/api/projects/book/exports/{id}"), &token)
                .await;
            (b["export"]["status"] != "running").then_some(b)
        },
    )
    .await;
    let export = &done["export"];
    assert_eq!(export["status"], "completed", "{done}");
    assert_eq!(export["run_id"], json!(run_id));
    let asset = export["export_asset_id"].as_str().unwrap();
    let bytes = app
        .client
        .get(format!(
            "{}/api/projects/book/assets/{asset}/content",
            app.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    use sha2::Digest;
    assert_eq!(
        json!(hex::encode(sha2::Sha256::digest(&bytes))),
        export["checksum_sha256"]
    );
    assert_eq!(json!(bytes.len()), export["file_size_bytes"]);
    // A finished export cannot be canceled.
    let (s, e) = app
        .post(
            &format!("/api/projects/book/exports/{id}/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_error(s, &e, 409, "export_not_running");
}

/// An export a node was building when it was killed ends `failed` when that
/// node starts again (its work file went with the process).
#[actix_web::test]
async fn an_export_interrupted_by_a_kill_is_built_again_at_the_next_start() {
    use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};
    let mut deploy = Deployment::new(&[]).await;
    let (mut server, _) = project_with_a_run(&mut deploy).await;
    let node = std::fs::read_to_string(deploy.dir.path().join("backend/node-id")).unwrap();
    let db = deploy.connect().await;
    let project = entities::projects::Entity::find()
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    let request = domain::exports::ExportRequest {
        format: domain::exports::PackageFormat::Zip,
        run_ids: vec![],
    };
    let start = |node: String| {
        let (db, project) = (db.clone(), project.clone());
        let request = domain::exports::ExportRequest {
            format: request.format,
            run_ids: vec![],
        };
        async move {
            domain::exports::start(
                &db,
                &domain::Principal::DevBypass,
                &project,
                &request,
                &node,
            )
            .await
            .unwrap()
        }
    };
    // Being built here when the process died; another node's; and one
    // that has already stopped this node as often as it may.
    let mine = start(node.trim().to_string()).await;
    let theirs = start("another-node".into()).await;
    let stubborn = start(node.trim().to_string()).await;
    let mut manifest = stubborn.manifest_json.clone();
    manifest["resumes"] = json!(domain::exports::RESUMES);
    let mut row = stubborn.clone().into_active_model();
    row.manifest_json = Set(manifest);
    row.update(&db).await.unwrap();
    server.kill9();
    let _server = deploy.start().await;
    let status = |id: uuid::Uuid| {
        let db = db.clone();
        async move {
            entities::project_exports::Entity::find_by_id(id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let rebuilt = eventually(
        "the export built again",
        Duration::from_secs(30),
        || async {
            let row = status(mine.id).await;
            (row.status != "running").then_some(row)
        },
    )
    .await;
    assert_eq!(rebuilt.status, "completed", "{:?}", rebuilt.manifest_json);
    // The package it would have been: the same bytes as a fresh export.
    let (_, sha) = export(&deploy, "zip");
    assert_eq!(rebuilt.checksum_sha256.as_deref(), Some(sha.as_str()));
    let given_up = status(stubborn.id).await;
    assert_eq!(given_up.status, "failed");
    assert!(
        given_up.manifest_json["error"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    assert_eq!(
        status(theirs.id).await.status,
        "running",
        "another node's export is its own"
    );
}

/// Export -> restore into another installation -> export: the same bytes.
#[actix_web::test]
async fn a_package_restores_into_another_installation_and_exports_the_same() {
    let mut here = Deployment::new(&[]).await;
    let (server, _) = project_with_a_run(&mut here).await;
    drop(server);
    for format in ["zip", "tar.gz"] {
        let (package, sha) = export(&here, format);
        let there = Deployment::new(&[]).await;
        let (ok, out, err) = there.cli(&["import", "package", package.to_str().unwrap()]);
        assert!(ok, "{out}\n{err}");
        assert!(out.contains("restored project book"), "{out}");
        let (_, again) = export(&there, format);
        assert_eq!(
            again, sha,
            "{format}: the restored project exports byte for byte the same"
        );
        // Not twice, and never a CBZ (it holds only the winners).
        let (ok, _, err) = there.cli(&["import", "package", package.to_str().unwrap()]);
        assert!(!ok && err.contains("already here"), "{err}");
    }
    let (cbz, _) = export(&here, "cbz");
    let empty = Deployment::new(&[]).await;
    let (ok, _, err) = empty.cli(&["import", "package", cbz.to_str().unwrap()]);
    assert!(!ok && err.contains("CBZ"), "{err}");
    // A package that is not whole is refused, and nothing of it is written.
    let dir = tempfile::tempdir().unwrap();
    let (zip_path, _) = export(&here, "zip");
    let mut entries = zip_entries(&zip_path);
    let last = entries.len() - 1;
    entries[last].1[10] ^= 1;
    let broken = dir.path().join("broken.zip");
    write_zip(&broken, &entries);
    let (ok, _, err) = empty.cli(&["import", "package", broken.to_str().unwrap()]);
    assert!(!ok && err.contains("not whole"), "{err}");
    let db = empty.connect().await;
    assert!(
        <entities::projects::Entity as sea_orm::EntityTrait>::find()
            .all(&db)
            .await
            .unwrap()
            .is_empty()
    );
}

#[actix_web::test]
async fn a_file_changed_behind_the_services_back_stops_the_export() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    let mut deploy = Deployment::new(&[]).await;
    let (_server, _token) = project_with_a_run(&mut deploy).await;
    let root = deploy.dir.path().join("projects/book");
    // The last image in package order: the files before it are already
    // queued for (or written by) the package writer when it is read.
    let victim = crate::helpers::files_under(&root)
        .into_iter()
        .rfind(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();

    for format in ["zip", "tar.gz"] {
        let (ok, out, err) = deploy.cli(&["export", "--project", "book", "--format", format]);
        assert!(!ok, "{format}: {out}");
        assert!(err.contains("does not match its recorded hash"), "{err}");
    }
    let db = deploy.connect().await;
    let exports = entities::project_exports::Entity::find()
        .order_by_asc(entities::project_exports::Column::CreatedAt)
        .all(&db)
        .await
        .unwrap();
    assert_eq!(exports.len(), 2);
    assert!(
        exports
            .iter()
            .all(|e| e.status == "failed" && e.export_asset_id.is_none()),
        "{exports:?}"
    );
    let packages = entities::assets::Entity::find()
        .filter(entities::assets::Column::Kind.eq("export"))
        .all(&db)
        .await
        .unwrap();
    assert!(packages.is_empty(), "nothing stored: {packages:?}");
    // No work file left behind.
    let left = crate::helpers::files_under(&root.join(".exports"));
    assert!(left.is_empty(), "{left:?}");
}
