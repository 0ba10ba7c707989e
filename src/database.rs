//! Database selection, connection pooling and guarded migrations.
//!
//! SQLite (the embedded default) runs in WAL mode with a busy timeout and a small
//! pool; PostgreSQL is chosen by `DATABASE_URL`. Before pending migrations touch an
//! existing SQLite file it is copied aside, and a database whose schema is newer
//! than this build is refused rather than half-understood.

use std::path::PathBuf;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};

use crate::settings::{Settings, redact_url};

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot open the database at {target}: {source}")]
    Connect { target: String, source: DbErr },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the database schema is newer than this build of Atelier (unknown migrations: {unknown}); \
         upgrade Atelier or restore the backup taken before the newer version migrated it"
    )]
    SchemaTooNew { unknown: String },
    #[error("migration failed: {0}")]
    Migrate(DbErr),
}

pub struct Db {
    pub conn: DatabaseConnection,
    /// Where the data lives, safe to print (no password).
    pub target: String,
}

pub fn backend_name(conn: &DatabaseConnection) -> &'static str {
    match conn.get_database_backend() {
        DbBackend::Postgres => "postgres",
        DbBackend::Sqlite => "sqlite",
        _ => "other",
    }
}

pub async fn connect(settings: &Settings) -> Result<Db, DatabaseError> {
    match &settings.database_url {
        Some(url) => {
            let mut opts = ConnectOptions::new(url.clone());
            opts.max_connections(settings.pool_size())
                .min_connections(1)
                .connect_timeout(Duration::from_secs(10))
                .sqlx_logging(false)
                .test_before_acquire(false);
            let target = redact_url(url);
            let conn = Database::connect(opts)
                .await
                .map_err(|source| DatabaseError::Connect {
                    target: target.clone(),
                    source: redact_err(source, url),
                })?;
            Ok(Db { conn, target })
        }
        None => {
            let path = settings.sqlite_path();
            private_files(&path).map_err(|(path, source)| DatabaseError::Io { path, source })?;
            let conn = connect_sqlite(&path, settings).await?;
            Ok(Db {
                conn,
                target: path.display().to_string(),
            })
        }
    }
}

/// The database holds tokens' hashes and encrypted secrets: its folder is
/// the owner's alone (0700) and the file is created 0600 before SQLite opens
/// it (its WAL and shared-memory files take the same mode).
fn private_files(path: &std::path::Path) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    if let Some(dir) = path.parent() {
        let existed = dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
        #[cfg(unix)]
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| (dir.to_path_buf(), e))?;
        }
    }
    #[cfg(unix)]
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            // Another process starting at the same moment made it first
            // (with the same mode).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => {
                other.map_err(|e| (path.to_path_buf(), e))?;
            }
        }
    }
    Ok(())
}

/// A pool of one connection for the engine's row writer (SQLite only): the
/// writer holds the write lock for whole batches and must not queue for a
/// connection behind the readers. PostgreSQL: `None` (the main pool serves).
pub async fn writer_connection(
    settings: &Settings,
) -> Result<Option<DatabaseConnection>, DatabaseError> {
    if settings.database_url.is_some() {
        return Ok(None);
    }
    connect_sqlite_pool(&settings.sqlite_path(), settings, 1)
        .await
        .map(Some)
}

async fn connect_sqlite(
    path: &std::path::Path,
    settings: &Settings,
) -> Result<DatabaseConnection, DatabaseError> {
    connect_sqlite_pool(path, settings, settings.pool_size()).await
}

async fn connect_sqlite_pool(
    path: &std::path::Path,
    settings: &Settings,
    size: u32,
) -> Result<DatabaseConnection, DatabaseError> {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let busy = Duration::from_millis(settings.database.busy_timeout_ms);
    let mut opts = ConnectOptions::new(url);
    opts.max_connections(size)
        .min_connections(1)
        // An idle connection holds a thread, its page cache and its
        // statements; a burst's extra connections close after a minute
        // without work (reopening one takes about a millisecond).
        .idle_timeout(Duration::from_secs(60))
        .sqlx_logging(false)
        // A ping before every checkout doubles the round trips of the hot path;
        // a broken SQLite connection surfaces on the query itself anyway.
        .test_before_acquire(false)
        .map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(busy)
                .foreign_keys(true)
        });
    Database::connect(opts)
        .await
        .map_err(|source| DatabaseError::Connect {
            target: path.display().to_string(),
            source,
        })
}

/// sqlx may echo the URL in its error text; never let the password through.
fn redact_err(err: DbErr, url: &str) -> DbErr {
    let text = err.to_string();
    if text.contains(url) {
        DbErr::Custom(text.replace(url, &redact_url(url)))
    } else {
        err
    }
}

/// Applied vs known migrations.
#[derive(Debug, serde::Serialize)]
pub struct SchemaStatus {
    pub applied: Vec<String>,
    pub pending: Vec<String>,
    /// Applied by a newer build; this build does not know them.
    pub unknown: Vec<String>,
}

impl SchemaStatus {
    pub fn current_version(&self) -> Option<&str> {
        self.applied.last().map(String::as_str)
    }
}

pub async fn schema_status(conn: &DatabaseConnection) -> Result<SchemaStatus, DbErr> {
    let known = migration::known_migration_names();
    let applied = applied_migrations(conn).await?;
    let unknown = applied
        .iter()
        .filter(|a| !known.contains(a))
        .cloned()
        .collect();
    let pending = known
        .iter()
        .filter(|k| !applied.contains(k))
        .cloned()
        .collect();
    Ok(SchemaStatus {
        applied,
        pending,
        unknown,
    })
}

async fn applied_migrations(conn: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let backend = conn.get_database_backend();
    let exists_sql = match backend {
        DbBackend::Postgres => {
            "SELECT 1 AS present FROM information_schema.tables WHERE table_name = 'seaql_migrations' AND table_schema = current_schema()"
        }
        _ => {
            "SELECT 1 AS present FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'"
        }
    };
    let exists = conn
        .query_one_raw(sea_orm::Statement::from_string(backend, exists_sql))
        .await?
        .is_some();
    if !exists {
        return Ok(Vec::new());
    }
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT version FROM seaql_migrations ORDER BY version",
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String>("", "version"))
        .collect()
}

/// Brings the schema up to date: refuses a newer schema, backs up an existing
/// SQLite file when something is pending, then applies the pending migrations.
pub async fn migrate_up(db: &Db, settings: &Settings) -> Result<SchemaStatus, DatabaseError> {
    let _turn = MigrationTurn::take(settings).await?;
    let status = known_schema(db).await?;
    if !status.pending.is_empty() {
        if settings.database_url.is_none()
            && settings.database.backup_before_migrate
            && !status.applied.is_empty()
        {
            let backup = backup_sqlite(&db.conn, settings).await?;
            tracing::info!(backup = %backup.display(), "backed up the database before migrating");
        }
        tracing::info!(pending = ?status.pending, "applying migrations");
        Migrator::up(&db.conn, None)
            .await
            .map_err(DatabaseError::Migrate)?;
    }
    schema_status(&db.conn)
        .await
        .map_err(DatabaseError::Migrate)
}

/// One process at a time changes a database's schema: nodes that start
/// together on one PostgreSQL database (or processes on one SQLite file) take
/// turns, and each reads what is pending only once it holds the turn — the
/// first applies the migrations, the others find none left. PostgreSQL: a
/// transaction-scoped advisory lock on a connection of its own (the
/// migrations run on the pool); SQLite: a lock on `backend/migrate.lock`.
/// Released when dropped.
struct MigrationTurn {
    _lock: TurnLock,
}

/// What holds the turn, kept only to be dropped.
enum TurnLock {
    Postgres {
        _txn: sea_orm::DatabaseTransaction,
        _conn: DatabaseConnection,
    },
    File {
        _file: std::fs::File,
    },
}

impl MigrationTurn {
    async fn take(settings: &Settings) -> Result<Self, DatabaseError> {
        match &settings.database_url {
            Some(url) => {
                use sea_orm::TransactionTrait;
                let target = redact_url(url);
                let mut opts = ConnectOptions::new(url.clone());
                opts.max_connections(1)
                    .connect_timeout(Duration::from_secs(10))
                    .sqlx_logging(false);
                let conn =
                    Database::connect(opts)
                        .await
                        .map_err(|source| DatabaseError::Connect {
                            target,
                            source: redact_err(source, url),
                        })?;
                let txn = conn.begin().await.map_err(DatabaseError::Migrate)?;
                txn.execute_raw(sea_orm::Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    ["atelier:migrations".into()],
                ))
                .await
                .map_err(DatabaseError::Migrate)?;
                Ok(Self {
                    _lock: TurnLock::Postgres {
                        _txn: txn,
                        _conn: conn,
                    },
                })
            }
            None => {
                let path = settings.backend_dir().join("migrate.lock");
                let io = |source| DatabaseError::Io {
                    path: path.clone(),
                    source,
                };
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(io)?;
                let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                    .await
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?
                    .map_err(io)?;
                Ok(Self {
                    _lock: TurnLock::File { _file: file },
                })
            }
        }
    }
}

/// Connects and brings the schema up to date (what every command that works
/// on data does first).
pub async fn open(settings: &Settings) -> Result<Db, DatabaseError> {
    let db = connect(settings).await?;
    migrate_up(&db, settings).await?;
    Ok(db)
}

/// The current status, unless the database was migrated by a newer build.
async fn known_schema(db: &Db) -> Result<SchemaStatus, DatabaseError> {
    let status = schema_status(&db.conn)
        .await
        .map_err(DatabaseError::Migrate)?;
    if !status.unknown.is_empty() {
        return Err(DatabaseError::SchemaTooNew {
            unknown: status.unknown.join(", "),
        });
    }
    Ok(status)
}

/// Rolls back `steps` migrations (all of them when `None`). Rolling back
/// drops tables and columns, so an SQLite file is copied aside first (as
/// before migrating up); PostgreSQL is the operator's to back up.
pub async fn migrate_down(
    db: &Db,
    settings: &Settings,
    steps: Option<u32>,
) -> Result<SchemaStatus, DatabaseError> {
    let _turn = MigrationTurn::take(settings).await?;
    let status = known_schema(db).await?;
    if settings.database_url.is_none()
        && settings.database.backup_before_migrate
        && !status.applied.is_empty()
        && steps != Some(0)
    {
        let backup = backup_sqlite(&db.conn, settings).await?;
        tracing::info!(backup = %backup.display(), "backed up the database before rolling back");
    }
    Migrator::down(&db.conn, steps)
        .await
        .map_err(DatabaseError::Migrate)?;
    schema_status(&db.conn)
        .await
        .map_err(DatabaseError::Migrate)
}

/// A consistent copy through `VACUUM INTO` (safe while the WAL is active).
async fn backup_sqlite(
    conn: &DatabaseConnection,
    settings: &Settings,
) -> Result<PathBuf, DatabaseError> {
    let dir = settings.backend_dir().join("backups");
    std::fs::create_dir_all(&dir).map_err(|source| DatabaseError::Io {
        path: dir.clone(),
        source,
    })?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let path = dir.join(format!("app-{stamp}.db"));
    let escaped = path.display().to_string().replace('\'', "''");
    conn.execute_unprepared(&format!("VACUUM INTO '{escaped}'"))
        .await
        .map_err(DatabaseError::Migrate)?;
    Ok(path)
}
