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
    );

    let down = database::migrate_down(&db, None).await.unwrap();
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
    assert!(res.is_err(), "a row pointing at no project was accepted");
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
    if crate::helpers::on_postgres() {
        // PostgreSQL backups are the operator's (pg_dump); see docs/operations.md.
        return;
    }
    let (dir, _guard, settings, db) = fresh().await;
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
