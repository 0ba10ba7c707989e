//! Transaction helpers shared by the services.
//!
//! SQLite has one writer at a time, and a writer that finds the database
//! locked waits in SQLite's busy handler, which sleeps in steps of up to
//! 100 ms. So on SQLite every write goes through [`begin_write`], which first
//! takes an in-process async gate (FIFO, no sleeping) and then `BEGIN
//! IMMEDIATE` (the write lock up front: a deferred transaction that reads
//! first and writes later fails with `SQLITE_BUSY_SNAPSHOT` when another
//! connection committed in between, and no timeout helps it). PostgreSQL
//! needs neither: there the gate is skipped and the mode ignored.

use std::sync::{Arc, OnceLock};

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, ExecResult, QueryResult, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

fn sqlite_gate() -> Arc<Mutex<()>> {
    static GATE: OnceLock<Arc<Mutex<()>>> = OnceLock::new();
    GATE.get_or_init(|| Arc::new(Mutex::new(()))).clone()
}

/// A write transaction (and, on SQLite, this process's turn to write).
pub struct WriteTxn {
    txn: DatabaseTransaction,
    _turn: Option<OwnedMutexGuard<()>>,
}

pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTxn, DbErr> {
    let turn = match db.get_database_backend() {
        DbBackend::Sqlite => Some(sqlite_gate().lock_owned().await),
        _ => None,
    };
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await?;
    Ok(WriteTxn { txn, _turn: turn })
}

/// Whether PostgreSQL aborted the statement's transaction to break a
/// deadlock (SQLSTATE 40P01): the whole transaction may be tried again.
pub fn is_deadlock(e: &DbErr) -> bool {
    let (DbErr::Exec(sea_orm::RuntimeErr::SqlxError(err))
    | DbErr::Query(sea_orm::RuntimeErr::SqlxError(err))) = e
    else {
        return false;
    };
    err.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40P01")
}

/// Serialises, across every process on the database, the transactions that
/// call this with the same `name` until they end: a check-then-insert
/// inside is atomic (e.g. admission against a limit). PostgreSQL takes a
/// transaction-scoped advisory lock; SQLite's write transactions are
/// serialised already (`BEGIN IMMEDIATE`).
pub async fn serialize<C: ConnectionTrait>(txn: &C, name: &str) -> Result<(), DbErr> {
    serialize_all(txn, &[name]).await
}

/// [`serialize`] on each of `names`, with one statement (one round trip).
/// Callers that take the same two name them in the same order.
pub async fn serialize_all<C: ConnectionTrait>(txn: &C, names: &[&str]) -> Result<(), DbErr> {
    if txn.get_database_backend() == DbBackend::Postgres && !names.is_empty() {
        let locks: Vec<String> = (1..=names.len())
            .map(|i| format!("pg_advisory_xact_lock(hashtext(${i}))"))
            .collect();
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("SELECT {}", locks.join(", ")),
            names.iter().map(|n| format!("atelier:{n}").into()),
        ))
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl ConnectionTrait for WriteTxn {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.txn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.txn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.txn.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.txn.support_returning()
    }
}

/// Writes this process committed.
static WRITE_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Writes other nodes announced (`cluster::feed`).
static WRITES_ELSEWHERE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Commits a write transaction and records that this process changed data,
/// so in-process read caches know to revalidate (see `api::cache`).
pub async fn commit(txn: WriteTxn) -> Result<(), DbErr> {
    txn.txn.commit().await?;
    WRITE_GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    Ok(())
}

/// Commits a write that no read cache shows (a node's heartbeat), without
/// making this process's read caches revalidate.
pub async fn commit_unseen(txn: WriteTxn) -> Result<(), DbErr> {
    txn.txn.commit().await
}

/// Abandons a write transaction: nothing it did is kept (dry runs).
pub async fn rollback(txn: WriteTxn) -> Result<(), DbErr> {
    txn.txn.rollback().await
}

/// Increases whenever this process commits a write, or another node on the
/// database announces that it did: a read cache that saw the same value
/// twice saw no write in between that it could have been told of.
pub fn write_generation() -> u64 {
    WRITE_GENERATION.load(std::sync::atomic::Ordering::Acquire)
        + WRITES_ELSEWHERE.load(std::sync::atomic::Ordering::Acquire)
}

/// Writes this process committed (what it announces to the other nodes).
pub fn local_write_generation() -> u64 {
    WRITE_GENERATION.load(std::sync::atomic::Ordering::Acquire)
}

/// Another node on the database committed writes.
pub fn note_writes_elsewhere() {
    WRITES_ELSEWHERE.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// Inserts what is not there yet (conflicts on the id or a natural key are
/// left alone); returns how many rows were written.
pub async fn insert_new<A, C>(db: &C, rows: Vec<A>) -> Result<u64, sea_orm::DbErr>
where
    A: ActiveModelTrait + Send,
    C: ConnectionTrait,
{
    // Under both stores' bind-parameter limits for the widest table.
    const CHUNK: usize = 400;
    let mut written = 0;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<A> = rows.by_ref().take(CHUNK).collect();
        written += <A::Entity as EntityTrait>::insert_many(chunk)
            .on_conflict(OnConflict::new().do_nothing().to_owned())
            .exec_without_returning(db)
            .await?;
    }
    Ok(written)
}

/// How long work that must not be given up — a paid result on its way to
/// being durable — is tried again while the database is away: a restart of
/// the database or a dropped session does not lose what was paid for.
pub const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs `attempt` again, with backoff, for up to [`RECONNECT_FOR`] while it
/// fails for a transient reason ([`transient`]). Each attempt must stand on
/// its own (a new transaction, its guards checked again).
pub async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, crate::ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::ServiceError>>,
{
    let began = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        match attempt().await {
            Err(crate::ServiceError::Db(e)) if transient(&e) && began.elapsed() < RECONNECT_FOR => {
                tracing::warn!(error = %e, what, "failed for a transient reason; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Whether `err` says the transaction failed for a reason that trying it
/// again may cure, rather than that the statement was wrong: the connection
/// was lost or could not be had (a restart, a dropped session, a full pool),
/// or the database aborted it as a deadlock or serialization victim.
pub fn transient(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    use sea_orm::sqlx::Error as Sqlx;
    let sqlx = match err {
        DbErr::ConnectionAcquire(_) => return true,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match sqlx.as_ref() {
        Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
        // SQLSTATE class 08 (connection exception), 57P (operator
        // intervention: shutdown, terminated session), a database that does
        // not accept connections (55000 on PostgreSQL), a deadlock or
        // serialization victim (40P01, 40001: rolled back whole).
        Sqlx::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || ["55000", "40P01", "40001"].contains(&&*c)
        }),
        _ => false,
    }
}
