//! Transaction helpers shared by the services.

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

/// Begins a transaction that will write. On SQLite it takes the write lock up
/// front (`BEGIN IMMEDIATE`): a deferred transaction that reads first and then
/// writes fails with `SQLITE_BUSY_SNAPSHOT` when another connection committed in
/// between, and the busy timeout cannot help it. PostgreSQL ignores the mode.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
}

static WRITE_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Commits a write transaction and records that this process changed data,
/// so in-process read caches know to revalidate (see `api::cache`).
pub async fn commit(txn: DatabaseTransaction) -> Result<(), DbErr> {
    txn.commit().await?;
    WRITE_GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    Ok(())
}

/// Increases whenever this process commits a write.
pub fn write_generation() -> u64 {
    WRITE_GENERATION.load(std::sync::atomic::Ordering::Acquire)
}
