//! Moving in from the earlier system: `atelier import legacy` on databases
//! built here from the description of its schema
//! (../shared/reference/legacy-schema.md), with both generations of
//! columns, files that exist and files that do not, a secret under the
//! earlier system's key, and a run graph of two stages.

use std::path::{Path, PathBuf};

use entities::*;
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, ConnectionTrait, Database, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::binary::Deployment;

const T: &str = "2026-03-01T10:00:00Z";
pub const LEGACY_KEY: [u8; 32] = [7u8; 32];
/// A token of the earlier system (its format: `kroma_` + 64 hex).
pub const LEGACY_TOKEN: &str =
    "kroma_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const PROJECT: &str = "0190a0a0-0000-7000-8000-000000000001";
const OWNER: &str = "0190a0a0-0000-7000-8000-0000000000aa";
const R2: &str = "0190a0a0-0000-7000-8000-0000000000b2";

/// The earlier system's install: `root/var/backend/app.db` and the files of
/// project `demo` under `root/var/projects/demo`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub key_file: PathBuf,
}

impl Fixture {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    fn project_file(&self, rel: &str, seed: u32) -> Vec<u8> {
        let path = self.root().join("var/projects/demo").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let png = imaging::encode_png(&imaging::scene::sample_scene(
            u64::from(seed),
            40 + seed,
            30,
        ))
        .unwrap();
        std::fs::write(&path, &png).unwrap();
        png
    }

    pub async fn build(secret_key: [u8; 32]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var/backend")).unwrap();
        let db = dir.path().join("var/backend/app.db");
        let key_file = dir.path().join("legacy.key");
        use base64::Engine as _;
        std::fs::write(
            &key_file,
            base64::engine::general_purpose::URL_SAFE.encode(secret_key),
        )
        .unwrap();
        let f = Self { dir, db, key_file };
        f.fill().await;
        f
    }

    fn encrypt(&self, plain: &str) -> String {
        domain::secrets::cipher::KeySource {
            key_env: "ATELIER_TEST_UNSET_KEY".into(),
            key_file: self.key_file.clone(),
            key_ref: "legacy".into(),
            previous_env: "ATELIER_TEST_UNSET_PREVIOUS".into(),
        }
        .load(false)
        .unwrap()
        .encrypt(plain)
        .unwrap()
    }

    async fn fill(&self) {
        // Two stages: the style run's winner is the time run's input.
        self.project_file("inputs/scene_01.png", 1);
        self.project_file("outputs/style_1_scene_01__c1.png", 2);
        self.project_file("outputs/style_1_scene_01__c2.png", 3);
        self.project_file("outputs/time_1_style_1_scene_01__c1.png", 4);
        self.project_file("exports/book.zip", 5);
        std::fs::create_dir_all(self.root().join("var/projects/demo/runs")).unwrap();
        std::fs::write(
            self.root().join("var/projects/demo/runs/run_1.json"),
            br#"{"mode":"run"}"#,
        )
        .unwrap();
        let conn = Database::connect(format!("sqlite://{}?mode=rwc", self.db.display()))
            .await
            .unwrap();
        for sql in domain::legacy::fixture::schema(false) {
            conn.execute_unprepared(&sql).await.unwrap();
        }
        let secret = self.encrypt("sk-legacy-openai-123");
        let token_hash = domain::auth::hash_token(LEGACY_TOKEN);
        let statements = [
            // An older user in `users`, the owner in `app_users`.
            format!(
                "INSERT INTO users VALUES ('u-old', 'olduser', 'Old User', NULL, 1, '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO app_users VALUES ('{OWNER}', 'artist', 'The Artist', 'a@example.com', 1, '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO projects VALUES ('{PROJECT}', 'u-old', 'demo', 'Demo Book', 'A book', 'active', '{{\"storage\":{{\"local\":{{\"base_dir\":\"var/projects\"}}}},\"theme\":\"noir\"}}', '{T}', '{T}', '{OWNER}')"
            ),
            format!(
                "INSERT INTO project_storage VALUES ('ps1', '{PROJECT}', 0, 0, '{T}', '{T}', 'var/projects', NULL, 1, 'books', 'iat-projects', 'eu-west-1', NULL, NULL)"
            ),
            format!(
                "INSERT INTO provider_accounts VALUES ('{PROJECT}', 'openai', 'OpenAI', NULL, NULL, 1, '{{}}', '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO project_secrets VALUES ('{PROJECT}', 'openai', 'api_key', '{secret}', 'legacy', '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO project_secrets VALUES ('{PROJECT}', 'photoroom', 'api_key', 'plain-photoroom-456', 'legacy', '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO style_guides VALUES ('sg1', '{PROJECT}', 'Noir', 'High contrast ink', NULL, '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO characters VALUES ('ch1', '{PROJECT}', 'Mara', 'Detective', 'a tall detective', '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO prompt_templates VALUES ('pt1', '{PROJECT}', 'Panel', 'Draw {{scene}}', '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO reference_sets VALUES ('rs1', '{PROJECT}', 'Faces', NULL, '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO reference_set_items VALUES ('ri1', '{PROJECT}', 'rs1', 'Mara front', 'inputs/scene_01.png', NULL, 1, '{{}}', '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO reference_set_items VALUES ('ri-orphan', '{PROJECT}', 'rs-gone', 'lost', NULL, NULL, 1, '{{}}', '{T}', '{T}')"
            ),
            // Run 1 (older code: `mode`, `model`, `meta_json`; candidates
            // only in the older table; paths only).
            format!(
                "INSERT INTO runs (id, project_id, status, stage, created_at, run_log_path, mode, model, meta_json) VALUES ('r1', '{PROJECT}', 'ok', 'style', '{T}', 'runs/run_1.json', 'run', 'gpt-image-1', '{{\"generation\":{{}}}}')"
            ),
            format!(
                "INSERT INTO run_jobs (id, run_id, job_key, status, created_at, prompt_text, selected_candidate, final_output, meta_json) VALUES ('j1', 'r1', 'style_1_scene_01', 'done', '{T}', 'ink it', 2, 'outputs/style_1_scene_01__c2.png', '{{\"id\":\"style_1_scene_01\",\"input_images\":[\"inputs/scene_01.png\"]}}')"
            ),
            format!(
                "INSERT INTO run_job_candidates VALUES ('c1', 'j1', 1, 'failed_output_guard', 'outputs/style_1_scene_01__c1.png', NULL, '{T}', 2, 0, 1.5, '{{}}')"
            ),
            format!(
                "INSERT INTO run_job_candidates VALUES ('c2', 'j1', 2, 'done', 'outputs/style_1_scene_01__c2.png', 'outputs/style_1_scene_01__c2.png', '{T}', 0, 1, 0.2, '{{}}')"
            ),
            format!(
                "INSERT INTO run_job_candidates VALUES ('c3', 'j1', 3, 'done', 'outputs/never_written.png', NULL, '{T}', 0, 0, 0, '{{}}')"
            ),
            // Run 2 (newer code: both column generations; candidates in
            // both tables; an asset row of its own ingest), on run 1's winner.
            format!(
                "INSERT INTO runs VALUES ('{R2}', '{PROJECT}', 'failed', 'time', '{T}', NULL, 'run', 'night', NULL, 'gpt-image-1', '{{}}', 'run', 'gpt-image-1', 'openai', '{{\"generation\":{{\"size\":\"1024x1024\"}}}}', '{T}', '{T}', '1024x1024', 'high')"
            ),
        ];
        for sql in statements {
            conn.execute_unprepared(&sql).await.unwrap();
        }
        let r2 = R2;
        let more = [
            format!(
                "INSERT INTO assets VALUES ('0190a0a0-0000-7000-8000-0000000000f1', '{PROJECT}', 'candidate_output', 'outputs/time_1_style_1_scene_01__c1.png', '{T}', 'candidate_output', 'outputs/time_1_style_1_scene_01__c1.png', NULL, NULL, NULL, NULL, NULL, '{r2}', 'j2', 'c4', '{{\"path_exists\":true}}', NULL)"
            ),
            format!(
                "INSERT INTO run_jobs VALUES ('j2', '{r2}', 'time_1_style_1_scene_01', 'failed_output_guard', '{T}', 'night it', NULL, NULL, '{{\"input_images\":[\"var/projects/demo/outputs/style_1_scene_01__c2.png\"]}}', NULL, NULL)"
            ),
            format!(
                "INSERT INTO run_job_candidates VALUES ('c4', 'j2', 1, 'failed_output_guard', 'outputs/time_1_style_1_scene_01__c1.png', NULL, '{T}', 1, 0, 3.0, '{{}}')"
            ),
            format!(
                "INSERT INTO run_candidates VALUES ('c4', 'j2', 1, 'failed_output_guard', '0190a0a0-0000-7000-8000-0000000000f1', NULL, 'outputs/time_1_style_1_scene_01__c1.png', NULL, 1, 0, 3.0, '{{\"qa\":1}}', '{T}')"
            ),
            format!(
                "INSERT INTO run_candidates VALUES ('c5', 'j2', 2, 'failed', NULL, NULL, '/etc/hostname', NULL, 0, 0, 0, '{{}}', '{T}')"
            ),
            // A job whose run is gone.
            "INSERT INTO run_jobs (id, run_id, job_key, status) VALUES ('j-orphan', 'r-gone', 'x', 'done')".to_string(),
            format!(
                "INSERT INTO quality_reports VALUES ('q1', '{PROJECT}', 'r1', NULL, 'output_guard', '', 0, 1, 0.2, '{{\"status\":\"done\"}}', '{T}', NULL)"
            ),
            format!(
                "INSERT INTO cost_events VALUES ('ce1', '{PROJECT}', 'r1', 'style_1_scene_01', 'openai', 'gpt-image-1', 'image_generation', 2, 0.04, 0.08, 'USD', '{{}}', '{T}')"
            ),
            format!(
                "INSERT INTO project_exports VALUES ('e1', '{PROJECT}', 'r1', 'completed', 'zip', NULL, 'exports/book.zip', 100, NULL, '{{}}', '{T}', '{T}', NULL)"
            ),
            format!(
                "INSERT INTO audit_events VALUES ('a1', '{PROJECT}', '{OWNER}', 'project.created', '{{}}', '{T}')"
            ),
            format!(
                "INSERT INTO audit_events VALUES ('a2', NULL, NULL, 'auth.token_created', '{{}}', '{T}')"
            ),
            format!(
                "INSERT INTO chat_sessions VALUES ('s1', '{PROJECT}', 'Ideas', 'active', '{T}', '{T}')"
            ),
            format!(
                "INSERT INTO chat_messages VALUES ('m1', '{PROJECT}', 's1', 'user', 'more rain', '{T}')"
            ),
            format!(
                "INSERT INTO agent_instructions VALUES ('i1', '{PROJECT}', 'make it rain', 'running', '{T}', '{T}', '{T}', NULL, 1, 3, NULL, NULL, 'worker-1', '{T}', NULL)"
            ),
            format!(
                "INSERT INTO agent_instruction_events VALUES ('ie1', '{PROJECT}', 'i1', 'locked', 'taken', '{T}')"
            ),
            format!(
                "INSERT INTO api_tokens VALUES ('t1', '{OWNER}', NULL, '{token_hash}', 'kroma_0123', 'laptop', NULL, NULL, NULL, '{T}')"
            ),
        ];
        for sql in more {
            conn.execute_unprepared(&sql).await.unwrap();
        }
        conn.close().await.unwrap();
    }
}

fn import(deploy: &Deployment, f: &Fixture, extra: &[&str]) -> (bool, String, String, Value) {
    let report = f
        .root()
        .join(format!("report-{}.json", uuid::Uuid::new_v4()));
    let mut args = vec![
        "import",
        "legacy",
        "--db",
        f.db.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = deploy.cli(&args);
    let report = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (ok, out, err, report)
}

fn project_of<'a>(report: &'a Value, slug: &str) -> &'a Value {
    report["projects"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["slug"] == slug))
        .unwrap_or_else(|| panic!("no project {slug} in {report}"))
}

#[actix_web::test]
async fn a_legacy_database_moves_in_whole_and_a_second_import_changes_nothing() {
    let f = Fixture::build(LEGACY_KEY).await;
    let mut deploy = Deployment::new(&[]).await;
    let key_file = f.key_file.to_str().unwrap().to_string();

    // A dry run does everything and keeps nothing.
    let (ok, out, err, report) =
        import(&deploy, &f, &["--master-key-file", &key_file, "--dry-run"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        project_of(&report, "demo")["outcome"],
        "imported",
        "{report}"
    );
    let db = deploy.connect().await;
    assert_eq!(projects::Entity::find().all(&db).await.unwrap().len(), 0);

    let (ok, out, err, report) = import(&deploy, &f, &["--master-key-file", &key_file]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(report["changed"], true);
    let demo = project_of(&report, "demo");
    assert_eq!(demo["outcome"], "imported", "{demo}");
    // Paths became asset ids; files that exist were registered once per
    // content; the missing one and the one outside the root are reported.
    assert_eq!(
        demo["files"]["missing"],
        json!(["outputs/never_written.png"]),
        "{demo}"
    );
    assert_eq!(
        demo["files"]["outside_root"],
        json!(["/etc/hostname"]),
        "{demo}"
    );
    assert_eq!(demo["normalised"]["candidate_output"], 2, "{demo}");
    assert_eq!(demo["normalised"]["job_final"], 1, "{demo}");
    assert_eq!(demo["normalised"]["export"], 1, "{demo}");
    assert_eq!(
        demo["tables"]["reference_set_items"]["orphaned"], 1,
        "{demo}"
    );
    assert_eq!(report["global"]["run_jobs"]["orphaned"], 1, "{report}");
    assert_eq!(demo["secrets"]["reencrypted"], 1, "{demo}");
    assert_eq!(demo["secrets"]["encrypted"], 1, "{demo}");
    assert!(report["id_map"]["runs:r1"].is_string(), "{report}");
    // Nothing secret in what the import printed or reported.
    for text in [&out, &err, &report.to_string()] {
        assert!(!text.contains("sk-legacy-openai-123") && !text.contains("plain-photoroom-456"));
    }

    let project_id: uuid::Uuid = PROJECT.parse().unwrap();
    let project = projects::Entity::find_by_id(project_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(project.slug, "demo");
    assert_eq!(project.settings_json, json!({"theme": "noir"}));
    let owner = app_users::Entity::find_by_id(project.owner_user_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.username, "artist", "owner_user_id wins over user_id");
    let storage = project_storage::Entity::find()
        .filter(project_storage::Column::ProjectId.eq(project_id))
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert!(!storage.s3_enabled, "an S3 policy comes along disabled");
    assert_eq!(storage.s3_bucket.as_deref(), Some("books"));

    // Secrets: stored under this installation's key, none in plaintext.
    let keys = domain::secrets::cipher::KeySource {
        key_env: "ATELIER_TEST_UNSET_KEY".into(),
        key_file: deploy.dir.path().join("backend/master.key"),
        key_ref: "x".into(),
        previous_env: "ATELIER_TEST_UNSET_PREVIOUS".into(),
    }
    .load(false)
    .unwrap();
    let secrets = project_secrets::Entity::find().all(&db).await.unwrap();
    assert_eq!(secrets.len(), 2);
    for s in &secrets {
        assert!(s.secret_value.starts_with("enc:v1:"), "{}", s.provider_code);
        let plain = keys.decrypt(&s.secret_value).unwrap();
        let expected = if s.provider_code == "openai" {
            "sk-legacy-openai-123"
        } else {
            "plain-photoroom-456"
        };
        assert_eq!(plain, expected);
    }

    // The run graph: statuses made terminal, paths made foreign keys.
    let runs = runs::Entity::find().all(&db).await.unwrap();
    assert_eq!(runs.len(), 2);
    let r1 = runs
        .iter()
        .find(|r| r.stage.as_deref() == Some("style"))
        .unwrap();
    assert_eq!((r1.status.as_str(), r1.run_mode.as_str()), ("done", "run"));
    assert_eq!(
        r1.model_name.as_deref(),
        Some("gpt-image-1"),
        "older `model` column"
    );
    assert_eq!(r1.run_log_key.as_deref(), Some("runs/run_1.json"));
    let jobs = run_jobs::Entity::find().all(&db).await.unwrap();
    assert_eq!(jobs.len(), 2, "the orphan job is left out");
    let j1 = jobs
        .iter()
        .find(|j| j.job_key == "style_1_scene_01")
        .unwrap();
    let j2 = jobs
        .iter()
        .find(|j| j.job_key != "style_1_scene_01")
        .unwrap();
    assert_eq!(
        j1.selected_candidate_index,
        Some(2),
        "older `selected_candidate`"
    );
    let winner = j1
        .final_asset_id
        .expect("job final_output became final_asset_id");
    assert_eq!(
        j2.input_asset_id,
        Some(winner),
        "the winner is the next stage's input"
    );
    let candidates = run_candidates::Entity::find().all(&db).await.unwrap();
    assert_eq!(candidates.len(), 5);
    let c2 = candidates
        .iter()
        .find(|c| c.job_id == j1.id && c.candidate_index == 2)
        .unwrap();
    assert_eq!(
        (c2.output_asset_id, c2.final_asset_id),
        (Some(winner), Some(winner))
    );
    let c4 = candidates
        .iter()
        .find(|c| c.job_id == j2.id && c.candidate_index == 1)
        .unwrap();
    assert_eq!(
        c4.output_asset_id,
        Some("0190a0a0-0000-7000-8000-0000000000f1".parse().unwrap()),
        "the newer row's asset id is kept"
    );
    assert_eq!(c4.meta_json, json!({"qa": 1}), "the newer row wins");
    let c3 = candidates.iter().find(|c| c.candidate_index == 3).unwrap();
    assert_eq!(c3.output_asset_id, None, "a missing file is not invented");
    // Lineage: input -> candidates of stage 1; winner -> stage 2 output.
    let links = asset_links::Entity::find().all(&db).await.unwrap();
    let edge = |p: uuid::Uuid, c: uuid::Uuid| {
        links
            .iter()
            .any(|l| l.parent_asset_id == p && l.child_asset_id == c)
    };
    let input = j1.input_asset_id.unwrap();
    assert!(edge(input, winner), "input -> candidate");
    assert!(
        edge(winner, c4.output_asset_id.unwrap()),
        "winner -> next stage's candidate"
    );
    // The cost event's job key became the job's id.
    let cost = cost_events::Entity::find().one(&db).await.unwrap().unwrap();
    assert_eq!(cost.job_id, Some(j1.id));
    let export = project_exports::Entity::find()
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert!(export.export_asset_id.is_some());
    let instruction = agent_instructions::Entity::find()
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        instruction.status, "failed",
        "a legacy `running` instruction is not running here"
    );
    assert!(instruction.locked_by.is_none());

    // Served as any project: the earlier system's token still works, the
    // files are there with their bytes.
    let server = deploy.start().await;
    let client = deploy.client.clone();
    let (s, body) = server
        .call(
            &client,
            Method::GET,
            "/api/projects/demo/runs",
            Some(LEGACY_TOKEN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["runs"].as_array().map(Vec::len), Some(2), "{body}");
    let res = client
        .get(format!(
            "{}/api/projects/demo/assets/{winner}/content",
            server.base
        ))
        .bearer_auth(LEGACY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.bytes().await.unwrap();
    let original = std::fs::read(
        f.root()
            .join("var/projects/demo/outputs/style_1_scene_01__c2.png"),
    )
    .unwrap();
    assert_eq!(bytes.as_ref(), original.as_slice());
    drop(server);

    // Again: nothing changes, and the report says so.
    let counts_before = row_counts(&db).await;
    let (ok, out, err, again) = import(&deploy, &f, &["--master-key-file", &key_file]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(project_of(&again, "demo")["outcome"], "unchanged");
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(row_counts(&db).await, counts_before);
}

async fn row_counts(db: &sea_orm::DatabaseConnection) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in [
        "app_users",
        "projects",
        "assets",
        "runs",
        "run_jobs",
        "run_candidates",
        "asset_links",
        "project_secrets",
        "api_tokens",
        "audit_events",
        "cost_events",
        "quality_reports",
    ] {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        out.push((table.to_string(), row.try_get::<i64>("", "n").unwrap()));
    }
    out
}

#[actix_web::test]
async fn what_cannot_be_imported_is_refused_clearly_and_writes_nothing() {
    let deploy = Deployment::new(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // Not a database at all; a truncated one; one of another program.
    let text = dir.path().join("notes.db");
    std::fs::write(&text, "hello").unwrap();
    let (ok, _, err) = deploy.cli(&["import", "legacy", "--db", text.to_str().unwrap()]);
    assert!(!ok && err.contains("not an SQLite database"), "{err}");
    let other = dir.path().join("other.db");
    let conn = Database::connect(format!("sqlite://{}?mode=rwc", other.display()))
        .await
        .unwrap();
    conn.execute_unprepared("CREATE TABLE projects (id TEXT)")
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (ok, _, err) = deploy.cli(&["import", "legacy", "--db", other.to_str().unwrap()]);
    assert!(!ok, "{err}");
    assert!(
        err.contains(
            "missing table 'runs', table 'run_jobs', table 'assets', table 'app_users' or 'users'"
        ),
        "{err}"
    );
    let f = Fixture::build(LEGACY_KEY).await;
    let truncated = dir.path().join("truncated.db");
    let bytes = std::fs::read(&f.db).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let (ok, _, err) = deploy.cli(&["import", "legacy", "--db", truncated.to_str().unwrap()]);
    assert!(!ok && err.contains("legacy database"), "{err}");

    // A secret under a key nobody gave: the project is refused whole…
    let (ok, out, _, report) = import(&deploy, &f, &[]);
    assert!(!ok);
    let demo = project_of(&report, "demo");
    assert_eq!(demo["outcome"], "refused", "{demo}");
    assert!(
        demo["error"].as_str().unwrap().contains("openai/api_key"),
        "{demo}"
    );
    assert!(out.contains("refused"), "{out}");
    let db = deploy.connect().await;
    assert_eq!(projects::Entity::find().all(&db).await.unwrap().len(), 0);
    assert_eq!(runs::Entity::find().all(&db).await.unwrap().len(), 0);
    // …unless the user chooses to leave such secrets out.
    let (ok, out, err, report) = import(&deploy, &f, &["--skip-undecryptable-secrets"]);
    assert!(ok, "{out}\n{err}");
    let demo = project_of(&report, "demo");
    assert_eq!(demo["secrets"]["undecryptable"], json!(["openai/api_key"]));
    let secrets = project_secrets::Entity::find().all(&db).await.unwrap();
    assert_eq!(secrets.len(), 1, "only the readable secret");
    assert_eq!(runs::Entity::find().all(&db).await.unwrap().len(), 2);
}

/// A file of the earlier system's older versions: no newer columns at all
/// (no `owner_user_id`, `run_mode`, `selected_candidate_index`, …), the
/// owner only in `users`.
#[actix_web::test]
async fn an_older_file_without_the_newer_columns_imports_from_the_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("app.db");
    let conn = Database::connect(format!("sqlite://{}?mode=rwc", db_path.display()))
        .await
        .unwrap();
    for sql in domain::legacy::fixture::schema(true) {
        conn.execute_unprepared(&sql).await.unwrap();
    }
    for sql in [
        format!("INSERT INTO users VALUES ('u1', 'veteran', 'Veteran', NULL, 1, '{T}', '{T}')"),
        format!(
            "INSERT INTO projects VALUES ('p1', 'u1', 'old-book', 'Old Book', '', 'active', '{{}}', '{T}', '{T}')"
        ),
        format!(
            "INSERT INTO runs VALUES ('r1', 'p1', 'partial', 'weather', '{T}', NULL, 'dry', 'day', 'rain', 'model-x', '{{\"k\":1}}')"
        ),
        format!(
            "INSERT INTO run_jobs VALUES ('j1', 'r1', NULL, 'planned', '{T}', 'p', 2, NULL, NULL)"
        ),
        format!(
            "INSERT INTO run_job_candidates VALUES ('c1', 'j1', NULL, 'planned', NULL, NULL, '{T}', NULL, NULL, NULL, NULL)"
        ),
    ] {
        conn.execute_unprepared(&sql).await.unwrap();
    }
    conn.close().await.unwrap();
    let deploy = Deployment::new(&[]).await;
    let (ok, out, err) = deploy.cli(&["import", "legacy", "--db", db_path.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    let db = deploy.connect().await;
    let project = projects::Entity::find().one(&db).await.unwrap().unwrap();
    let owner = app_users::Entity::find_by_id(project.owner_user_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.username, "veteran");
    let run = runs::Entity::find().one(&db).await.unwrap().unwrap();
    assert_eq!(
        (
            run.run_mode.as_str(),
            run.status.as_str(),
            run.model_name.as_deref()
        ),
        ("dry", "partial", Some("model-x"))
    );
    assert_eq!(run.settings_snapshot_json, json!({"k": 1}));
    let job = run_jobs::Entity::find().one(&db).await.unwrap().unwrap();
    assert_eq!(job.job_key, "j1", "no job_key: the id stands in");
    assert_eq!(
        (job.status.as_str(), job.selected_candidate_index),
        ("planned", Some(2))
    );
    let candidate = run_candidates::Entity::find()
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (candidate.candidate_index, candidate.status.as_str()),
        (1, "done")
    );
}
