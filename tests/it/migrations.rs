//! Schema migrations on the test database (SQLite file or PostgreSQL): up, down,
//! up again; entity/table agreement; backup before migrating; refusal of a
//! schema newer than this build.

use atelier::database;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, EntityTrait};

use crate::helpers::{TestDb, base_settings};

async fn fresh() -> (
    tempfile::TempDir,
    TestDb,
    atelier::settings::Settings,
    database::Db,
) {
    let dir = tempfile::tempdir().unwrap();
    let guard = TestDb::create().await;
    let settings = base_settings(dir.path(), guard.url.clone());
    let db = database::connect(&settings).await.unwrap();
    (dir, guard, settings, db)
}

/// Every table's rows, decoded through its entity: (table, row count).
macro_rules! count_every_table {
    ($db:expr, $($entity:ident),+ $(,)?) => {
        vec![$( (stringify!($entity), entities::$entity::Entity::find().all($db).await
            .unwrap_or_else(|e| panic!("{} does not decode: {e}", stringify!($entity))).len()) ),+]
    };
}

macro_rules! all_tables {
    ($mac:ident, $db:expr) => {
        $mac!(
            $db,
            app_users,
            projects,
            project_storage,
            api_tokens,
            audit_events,
            provider_accounts,
            project_secrets,
            style_guides,
            characters,
            reference_sets,
            prompt_templates,
            prompt_template_versions,
            assets,
            asset_links,
            reference_set_items,
            runs,
            run_jobs,
            run_candidates,
            run_events,
            provider_calls,
            quality_reports,
            cost_events,
            project_exports,
            chat_sessions,
            chat_messages,
            agent_instructions,
            agent_instruction_events,
            voice_requests,
            webhooks,
            webhook_deliveries,
            nodes,
            run_owners,
            cluster_settings,
        )
    };
}

macro_rules! read_every_table {
    ($db:expr, $($entity:ident),+ $(,)?) => {
        $( entities::$entity::Entity::find().all($db).await
            .unwrap_or_else(|e| panic!("entity {} does not match its table: {e}", stringify!($entity))); )+
    };
}

#[actix_web::test]
async fn up_down_up_and_every_entity_reads_its_table() {
    let (_dir, _guard, settings, db) = fresh().await;
    let status = database::migrate_up(&db, &settings).await.unwrap();
    assert_eq!(status.applied, migration::known_migration_names());
    assert!(status.pending.is_empty());

    read_every_table!(
        &db.conn,
        app_users,
        projects,
        project_storage,
        api_tokens,
        audit_events,
        provider_accounts,
        project_secrets,
        style_guides,
        characters,
        reference_sets,
        prompt_templates,
        prompt_template_versions,
        assets,
        asset_links,
        reference_set_items,
        runs,
        run_jobs,
        run_candidates,
        run_events,
        provider_calls,
        quality_reports,
        cost_events,
        project_exports,
        chat_sessions,
        chat_messages,
        agent_instructions,
        agent_instruction_events,
        voice_requests,
        webhooks,
        webhook_deliveries,
        nodes,
        run_owners,
        cluster_settings,
    );

    let down = database::migrate_down(&db, &settings, None).await.unwrap();
    assert!(down.applied.is_empty());
    assert!(
        entities::projects::Entity::find()
            .all(&db.conn)
            .await
            .is_err(),
        "tables survived down"
    );
    let again = database::migrate_up(&db, &settings).await.unwrap();
    assert_eq!(
        again.applied.len(),
        migration::known_migration_names().len()
    );
}

#[actix_web::test]
async fn foreign_keys_are_enforced() {
    let (_dir, _guard, settings, db) = fresh().await;
    database::migrate_up(&db, &settings).await.unwrap();
    let orphan = entities::project_storage::Model {
        id: uuid::Uuid::now_v7(),
        project_id: uuid::Uuid::now_v7(),
        local_base_dir: "projects".into(),
        local_project_root: None,
        s3_enabled: false,
        s3_bucket: None,
        s3_prefix: None,
        s3_region: None,
        s3_profile: None,
        s3_endpoint_url: None,
        total_bytes: 0,
        used_bytes: 0,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    let res = entities::project_storage::Entity::insert(
        entities::project_storage::ActiveModel::from(orphan),
    )
    .exec_without_returning(&db.conn)
    .await;
    let err = res
        .expect_err("a row pointing at no project was accepted")
        .to_string();
    assert!(
        err.to_lowercase().contains("foreign key"),
        "refused, but not by the foreign key: {err}"
    );
}

#[actix_web::test]
async fn refuses_a_schema_newer_than_itself() {
    let (_dir, _guard, settings, db) = fresh().await;
    database::migrate_up(&db, &settings).await.unwrap();
    db.conn
        .execute_unprepared("INSERT INTO seaql_migrations (version, applied_at) VALUES ('m29990101_000001_from_the_future', 0)")
        .await
        .unwrap();
    let err = database::migrate_up(&db, &settings).await.unwrap_err();
    assert!(
        matches!(err, database::DatabaseError::SchemaTooNew { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer than this build"));
    let build = atelier::startup::Application::build(settings.clone()).await;
    assert!(build.is_err(), "the service started on a newer schema");
}

#[actix_web::test]
async fn backs_up_an_existing_sqlite_database_before_migrating() {
    let (dir, _guard, settings, db) = fresh().await;
    if crate::helpers::on_postgres() {
        // PostgreSQL backups are the operator's (pg_dump; docs/operations.md):
        // nothing is written next to the data.
        Migrator::up(&db.conn, Some(2)).await.unwrap();
        database::migrate_up(&db, &settings).await.unwrap();
        assert!(!dir.path().join("backend/backups").exists());
        return;
    }
    Migrator::up(&db.conn, Some(2)).await.unwrap();
    let status = database::schema_status(&db.conn).await.unwrap();
    assert_eq!(status.applied.len(), 2);
    assert!(!status.pending.is_empty());
    database::migrate_up(&db, &settings).await.unwrap();
    let backups: Vec<_> = std::fs::read_dir(dir.path().join("backend/backups"))
        .unwrap()
        .collect();
    assert_eq!(backups.len(), 1, "expected exactly one backup");
    let backup = backups.into_iter().next().unwrap().unwrap().path();
    // The backup is a usable database at the old schema version.
    let mut old = settings.clone();
    old.data_dir = tempfile::tempdir().unwrap().keep();
    std::fs::create_dir_all(old.backend_dir()).unwrap();
    std::fs::copy(&backup, old.sqlite_path()).unwrap();
    let old_db = database::connect(&old).await.unwrap();
    assert_eq!(
        database::schema_status(&old_db.conn)
            .await
            .unwrap()
            .applied
            .len(),
        2
    );
}

/// A database filled by real use — the whole journey, a webhook and its
/// delivery, a scoped token minted by another — decodes row by row through
/// every entity (types checked on data, not empty tables); `migrate down
/// --steps 1` (SQLite copied aside first) undoes exactly the last
/// migration and keeps every row; `migrate up` restores the schema.
#[actix_web::test]
async fn real_data_decodes_and_survives_down_steps_and_up() {
    use crate::binary::Deployment;
    // A paid provider too, so the cost ledger has rows.
    let stub = crate::openai_stub::OpenAiStub::start().await;
    let mut deploy = Deployment::new(&[
        ("ATELIER_PROVIDERS__OPENAI__ENABLED", "true"),
        (
            "ATELIER_PROVIDERS__OPENAI__BASE_URL",
            stub.base_url.as_str(),
        ),
        ("OPENAI_API_KEY", crate::openai_stub::KEY),
    ])
    .await;
    let mut server = deploy.start().await;
    let token = crate::journey::walk(&server, &deploy.client).await;
    let call = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        let (server, client, token) = (&server, &deploy.client, &token);
        let path = path.to_string();
        async move {
            let (s, b) = server
                .call(client, method, &path, Some(token), Some(body))
                .await;
            assert_eq!(s, reqwest::StatusCode::OK, "{path}: {b}");
            b
        }
    };
    let p = "/api/projects/harbour_tales";
    call(
        reqwest::Method::POST,
        &format!("{p}/webhooks"),
        serde_json::json!({"url": "http://127.0.0.1:9/hook"}),
    )
    .await;
    call(reqwest::Method::POST, &format!("{p}/secrets"), serde_json::json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": crate::openai_stub::KEY})).await;
    call(
        reqwest::Method::POST,
        "/auth/token",
        serde_json::json!({"project_slug": "harbour_tales", "label": "child"}),
    )
    .await;
    let run = call(reqwest::Method::POST, &format!("{p}/runs/trigger"), serde_json::json!({"mode": "run", "provider": "openai", "confirm_spend": true, "scene_refs": ["sample:2@64x48"], "stage": "style", "candidates": 1, "wait": true})).await;
    assert_eq!(run["run"]["status"], "done");
    let db = deploy.connect().await;
    crate::binary::eventually(
        "a webhook delivery recorded",
        std::time::Duration::from_secs(20),
        || async {
            let n = entities::webhook_deliveries::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .len();
            (n > 0).then_some(())
        },
    )
    .await;
    let (clean, _) = server.terminate(std::time::Duration::from_secs(20));
    assert!(clean);
    // Exports and voice are not produced by any route yet: one row each.
    let project_id = entities::projects::Entity::find()
        .one(&db)
        .await
        .unwrap()
        .unwrap()
        .id;
    let now = chrono::Utc::now();
    let export = entities::project_exports::Model {
        id: uuid::Uuid::now_v7(),
        project_id,
        run_id: None,
        status: "completed".into(),
        export_format: "zip".into(),
        storage_uri: Some("exports/a.zip".into()),
        rel_path: Some("exports/a.zip".into()),
        file_size_bytes: Some(1 << 33),
        checksum_sha256: Some("ab".repeat(32)),
        export_asset_id: None,
        manifest_json: serde_json::json!({"files": [1, 2.5, "x", null, {"k": true}]}),
        created_at: now,
        completed_at: Some(now),
    };
    entities::project_exports::Entity::insert(entities::project_exports::ActiveModel::from(
        export.clone(),
    ))
    .exec_without_returning(&db)
    .await
    .unwrap();
    let voice = entities::voice_requests::Model {
        id: uuid::Uuid::now_v7(),
        project_id,
        session_id: None,
        request_type: "tts".into(),
        status: "pending".into(),
        provider_code: None,
        input_text: Some("ünïcode ✓ and a long text ".repeat(500)),
        output_asset_id: None,
        meta_json: serde_json::json!({}),
        created_at: now,
        updated_at: now,
    };
    entities::voice_requests::Entity::insert(entities::voice_requests::ActiveModel::from(
        voice.clone(),
    ))
    .exec_without_returning(&db)
    .await
    .unwrap();
    let back = entities::project_exports::Entity::find_by_id(export.id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (back.file_size_bytes, &back.manifest_json),
        (export.file_size_bytes, &export.manifest_json)
    );
    let back = entities::voice_requests::Entity::find_by_id(voice.id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.input_text, voice.input_text);

    // An operator's pause of all processing (resumed), for its table's types.
    entities::cluster_settings::Entity::insert(entities::cluster_settings::ActiveModel::from(
        entities::cluster_settings::Model {
            name: "paused_all".into(),
            value_json: serde_json::json!(false),
            updated_at: now,
        },
    ))
    .exec_without_returning(&db)
    .await
    .unwrap();

    let before = all_tables!(count_every_table, &db);
    let first = entities::run_candidates::Entity::find()
        .all(&db)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|c| c.candidate_index).min(),
        Some(1),
        "numbered from 1"
    );
    let empty: Vec<_> = before.iter().filter(|(_, n)| *n == 0).collect();
    assert!(
        empty.is_empty(),
        "tables left empty, so their types go unchecked: {empty:?}"
    );
    drop(db);

    // Back past the migration that numbers candidates from 1 (and the
    // cluster tables after it).
    let known = migration::known_migration_names();
    let steps = known.len()
        - known
            .iter()
            .position(|m| m == "m20261201_000009_candidates_from_one")
            .unwrap();
    let (ok, out, err) = deploy.cli(&["migrate", "down", "--steps", &steps.to_string()]);
    assert!(ok, "{err}");
    for undone in &known[known.len() - steps..] {
        assert!(out.contains(&format!("pending  {undone}")), "{out}");
    }
    assert_eq!(
        out.matches("applied  ").count(),
        known.len() - steps,
        "{out}"
    );
    let db = deploy.connect().await;
    // The last migration numbers candidates from 1; rolled back, from 0.
    let lowest = |db: sea_orm::DatabaseConnection| async move {
        entities::run_candidates::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .iter()
            .map(|c| c.candidate_index)
            .min()
    };
    assert_eq!(
        lowest(db.clone()).await,
        Some(0),
        "the candidate numbering migration was not undone"
    );
    if !crate::helpers::on_postgres() {
        let backups: Vec<_> = std::fs::read_dir(deploy.dir.path().join("backend/backups"))
            .expect("a backup before rolling back")
            .collect();
        assert_eq!(backups.len(), 1);
    }
    drop(db);
    let (ok, out, err) = deploy.cli(&["migrate", "up"]);
    assert!(ok, "{err}");
    assert!(!out.contains("pending"), "{out}");
    let db = deploy.connect().await;
    assert_eq!(lowest(db.clone()).await, Some(1));
    // Membership and ownership are not data: a node records itself again
    // when it starts, and takes the runs nobody owns. The cluster's settings
    // (a resumed pause here) go with their table when a rollback goes past
    // the migration that made it.
    let data = |counts: Vec<(&'static str, usize)>| {
        counts
            .into_iter()
            .filter(|(table, _)| !["nodes", "run_owners", "cluster_settings"].contains(table))
            .collect::<Vec<_>>()
    };
    let after = all_tables!(count_every_table, &db);
    assert_eq!(
        data(after),
        data(before),
        "rows were lost across down and up"
    );
}

/// Nodes that start together on one fresh database take turns to migrate
/// it: every one comes up and the migrations are applied once (without the
/// turn, concurrent `CREATE TABLE`s made all but one fail on PostgreSQL).
#[actix_web::test]
async fn processes_starting_together_migrate_a_fresh_database_once() {
    let deploy = crate::binary::Deployment::new(&[]).await;
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_atelier"));
            cmd.arg("--data-dir")
                .arg(deploy.dir.path())
                .args(["migrate", "up"])
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            match &deploy.db.url {
                Some(url) => cmd.env("DATABASE_URL", url),
                None => cmd.env_remove("DATABASE_URL"),
            };
            cmd.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ok, out, err) = deploy.cli(&["migrate", "status"]);
    assert!(ok, "{err}");
    assert!(!out.contains("pending"), "{out}");
    assert_eq!(
        out.matches("applied  ").count(),
        migration::known_migration_names().len(),
        "{out}"
    );
}

/// The engine's lookups of jobs by run and status and by parent are served
/// by their indexes, not by a walk of every job (of the run, or of the
/// database).
#[actix_web::test]
async fn job_lookups_use_their_indexes() {
    let (_dir, _guard, settings, db) = fresh().await;
    database::migrate_up(&db, &settings).await.unwrap();
    let backend = db.conn.get_database_backend();
    let listing = match backend {
        sea_orm::DatabaseBackend::Sqlite => {
            "SELECT name AS n FROM sqlite_master WHERE type = 'index' AND tbl_name = 'run_jobs'"
        }
        _ => {
            "SELECT indexname AS n FROM pg_indexes WHERE tablename = 'run_jobs' AND schemaname = current_schema()"
        }
    };
    let names: Vec<String> = db
        .conn
        .query_all_raw(sea_orm::Statement::from_string(backend, listing))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String>("", "n").unwrap())
        .collect();
    for want in ["idx_run_jobs_run_status", "idx_run_jobs_parent"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    // On SQLite (no statistics to sway it) the plans use them. They are
    // asked of a pool opened after the migration: `EXPLAIN QUERY PLAN` never
    // checks the schema cookie, so a connection that read the schema before
    // the indexes existed would plan without them (a real statement would
    // notice the change and prepare again).
    if backend == sea_orm::DatabaseBackend::Sqlite {
        let db = database::connect(&settings).await.unwrap();
        for (sql, search) in [
            (
                "SELECT id FROM run_jobs WHERE run_id = 'r' AND status = 'pending' ORDER BY created_at, id LIMIT 8",
                "USING INDEX idx_run_jobs_run_status (run_id=? AND status=?)",
            ),
            (
                "UPDATE run_jobs SET status = 'pending' WHERE parent_job_id = 'p' AND status = 'blocked'",
                "USING INDEX idx_run_jobs_parent (parent_job_id=?)",
            ),
        ] {
            let plan: Vec<String> = db
                .conn
                .query_all_raw(sea_orm::Statement::from_string(
                    backend,
                    format!("EXPLAIN QUERY PLAN {sql}"),
                ))
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get::<String>("", "detail").unwrap())
                .collect();
            assert!(plan.iter().any(|d| d.contains(search)), "{sql}: {plan:?}");
        }
    }
}
