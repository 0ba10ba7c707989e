//! Group commit for the job pipeline's rows.
//!
//! Every candidate produces a handful of rows (asset, provider call, cost
//! event, lineage link, candidate, quality report, event). Written one
//! transaction per candidate, SQLite's single writer becomes the bottleneck
//! long before the CPU does. Instead candidates hand their rows to one writer
//! task and wait for the commit: the writer takes everything queued at that
//! moment and commits it in one transaction with multi-row inserts. Under
//! light load a batch is a single request (no added latency); under heavy
//! load batches grow and the cost per row falls. The files the rows point at
//! are made durable in a stage of their own just before (all of a batch's
//! together), so one batch's files sync while the batch before it commits.
//!
//! A batch that is one worker's call records and nothing else (what a job
//! writes before its first calls, at idle) is one statement on PostgreSQL,
//! its fence inside it ([`fenced_calls`]).
//!
//! A batch that fails is retried request by request, so an error reaches only
//! the request that caused it. Events get their per-run sequence numbers
//! inside the batch's transaction and are published after it commits.

use std::collections::HashMap;

use entities::{
    asset_links, assets, cost_events, provider_calls, quality_reports, run_candidates, run_events,
    run_jobs,
};
use futures_util::FutureExt;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::events::{EventHub, RunEvent};
use super::lease::{self, Fence};
use crate::status::JobStatus;
use crate::{ServiceError, time};

/// An event to be numbered and persisted with the rows it describes.
#[derive(Clone, Debug)]
pub struct PendingEvent {
    pub run_id: Uuid,
    pub project_id: Uuid,
    pub event_type: &'static str,
    pub job_id: Option<Uuid>,
    pub payload: Value,
}

/// A job's verdict. Applied only while the job is still running, so a cancel
/// that came first is never overwritten; a winner becomes the input of the
/// job's next stage in the same transaction.
#[derive(Debug)]
pub struct JobCompletion {
    pub job_id: Uuid,
    /// `Done` or `Failed`.
    pub status: JobStatus,
    pub last_error: Option<String>,
    /// Selected candidate index and its asset.
    pub winner: Option<(i32, Uuid)>,
    /// The winner's candidate row already records that asset as its final
    /// one (decided in this attempt): not updated again.
    pub winner_recorded: bool,
    /// No job of the chain waits on this one (its last stage): there is no
    /// child to unblock.
    pub chain_ends: bool,
    /// Recorded only if the verdict is applied.
    pub events: Vec<PendingEvent>,
}

/// Rows that must commit together. Provider calls are upserted by id (a call
/// is recorded before it is made and completed afterwards); job completions
/// are guarded updates; everything else is inserted.
#[derive(Default, Debug)]
pub struct Rows {
    pub assets: Vec<assets::Model>,
    pub provider_calls: Vec<provider_calls::Model>,
    pub cost_events: Vec<cost_events::Model>,
    pub links: Vec<asset_links::Model>,
    pub candidates: Vec<run_candidates::Model>,
    pub quality_reports: Vec<quality_reports::Model>,
    pub events: Vec<PendingEvent>,
    pub completions: Vec<JobCompletion>,
    /// Files the rows point at that are not durable yet: synced together,
    /// once per batch, before the batch's transaction begins.
    pub files: Vec<storage::Unsynced>,
}

/// Per completion of a request, in order: whether it was applied.
pub type Applied = Vec<bool>;

struct Request {
    rows: Rows,
    /// The lease of the job worker writing them: if another claim took the
    /// job since, none of these rows is written.
    fence: Option<Fence>,
    done: oneshot::Sender<Result<Applied, ServiceError>>,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct RowWriter {
    tx: mpsc::Sender<Request>,
}

/// Requests merged into one transaction at most.
const MAX_BATCH: usize = 256;
/// Rows per multi-row INSERT (keeps bind parameters far below SQLite's and
/// PostgreSQL's limits for the widest table).
const ROWS_PER_STATEMENT: usize = 200;

impl RowWriter {
    /// Spawns the writer's two stages on the current runtime: the files of
    /// a batch are made durable while the rows of the batch before it
    /// commit (a row still never commits before its own files are durable).
    pub fn start(db: DatabaseConnection, hub: EventHub) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let (synced_tx, synced_rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(sync_loop(rx, synced_tx));
        tokio::spawn(commit_loop(db, hub, synced_rx));
        Self { tx }
    }

    /// Commits `rows` (batched with whatever else is waiting) and returns
    /// once they are durable — if `fence` (a job worker's lease) still holds
    /// its job; otherwise nothing is written and the error is `lease_lost`.
    pub async fn write(&self, fence: Option<Fence>, rows: Rows) -> Result<Applied, ServiceError> {
        let (done, committed) = oneshot::channel();
        self.tx
            .send(Request { rows, fence, done })
            .await
            .map_err(|_| writer_unavailable())?;
        committed.await.map_err(|_| writer_unavailable())?
    }
}

/// First stage: every file of the waiting requests made durable together,
/// then the requests passed on to be committed.
async fn sync_loop(mut rx: mpsc::Receiver<Request>, to_commit: mpsc::Sender<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // As below: a panic fails its batch's requests, not the writer.
        let synced = std::panic::AssertUnwindSafe(sync_batch(std::mem::take(&mut batch)))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!("row writer: syncing a batch panicked; its requests failed");
                Vec::new()
            });
        for request in synced {
            if let Err(mpsc::error::SendError(r)) = to_commit.send(request).await {
                let _ = r.done.send(Err(writer_unavailable()));
            }
        }
    }
}

/// Second stage: everything synced and waiting, committed in one transaction.
async fn commit_loop(db: DatabaseConnection, hub: EventHub, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let requests = std::mem::take(&mut batch);
        // A panic in a batch must not end the writer: its requests see their
        // reply channel dropped (an error) and the next batch goes on.
        let handled = std::panic::AssertUnwindSafe(commit_batch(&db, &hub, requests))
            .catch_unwind()
            .await;
        if handled.is_err() {
            tracing::error!("row writer: a batch panicked; its requests failed");
        }
    }
}

/// The requests whose files are durable now; the others are told why not.
async fn sync_batch(mut requests: Vec<Request>) -> Vec<Request> {
    // A file is durable before any row that points at it commits: the
    // batch's files are synced together first.
    let files: Vec<Vec<storage::Unsynced>> = requests
        .iter_mut()
        .map(|r| std::mem::take(&mut r.rows.files))
        .collect();
    if storage::sync_files(files.concat()).await.is_ok() {
        return requests;
    }
    // Only the requests whose own files cannot be made durable fail; the
    // others go on (an error reaches only the request it belongs to).
    let mut kept = Vec::with_capacity(requests.len());
    for (r, files) in requests.into_iter().zip(files) {
        match storage::sync_files(files).await {
            Ok(()) => kept.push(r),
            Err(e) => {
                tracing::error!(error = %e, "row writer: a file cannot be made durable; its rows are not written");
                let _ = r.done.send(Err(ServiceError::from(e)));
            }
        }
    }
    kept
}

async fn commit_batch(db: &DatabaseConnection, hub: &EventHub, requests: Vec<Request>) {
    if requests.is_empty() {
        return;
    }
    let all: Vec<(&Rows, Option<Fence>)> = requests.iter().map(|r| (&r.rows, r.fence)).collect();
    match write_retrying(db, &all).await {
        Ok((events, applied)) => {
            for e in events {
                hub.publish(e);
            }
            for (r, applied) in requests.into_iter().zip(applied) {
                let _ = r.done.send(applied);
            }
        }
        Err(e) if requests.len() == 1 => {
            if let Some(r) = requests.into_iter().next() {
                let _ = r.done.send(Err(e));
            }
        }
        Err(_) => {
            for r in requests {
                let result = write_retrying(db, &[(&r.rows, r.fence)]).await.and_then(
                    |(events, mut applied)| {
                        for e in events {
                            hub.publish(e);
                        }
                        applied.pop().unwrap_or_else(|| Ok(Vec::new()))
                    },
                );
                let _ = r.done.send(result);
            }
        }
    }
}

/// [`write_rows`], tried again while what failed is transient
/// (`db::retrying`): a paid result that arrived is not given up for a
/// restart of the database or a dropped session. Each try is a new
/// transaction and checks the fences again: a lease lost meanwhile is
/// refused.
async fn write_retrying(
    db: &DatabaseConnection,
    requests: &[(&Rows, Option<Fence>)],
) -> Result<(Vec<RunEvent>, Vec<Result<Applied, ServiceError>>), ServiceError> {
    crate::db::retrying("row writer batch", || write_rows(db, requests)).await
}

/// Writes every request's rows in one transaction, foreign-key order; the
/// rows of a request whose worker lost its lease are left out (that request
/// gets `lease_lost`).
async fn write_rows(
    db: &DatabaseConnection,
    requests: &[(&Rows, Option<Fence>)],
) -> Result<(Vec<RunEvent>, Vec<Result<Applied, ServiceError>>), ServiceError> {
    if db.get_database_backend() == sea_orm::DbBackend::Postgres
        && let Some((rows, fence)) = only_fenced_calls(requests)
    {
        return fenced_calls(db, rows, fence).await;
    }
    let txn = crate::db::begin_write(db).await?;
    let fences: Vec<Fence> = requests.iter().filter_map(|r| r.1).collect();
    let held = lease::holding(&txn, &fences).await?;
    let lost = |fence: Option<Fence>| fence.filter(|f| !held.contains(f));
    let all: Vec<&Rows> = requests
        .iter()
        .filter(|(_, fence)| lost(*fence).is_none())
        .map(|(rows, _)| *rows)
        .collect();
    insert_chunked(&txn, all.iter().flat_map(|r| &r.assets), |m| {
        assets::Entity::insert_many(m.into_iter().map(assets::ActiveModel::from))
    })
    .await?;
    for chunk in chunks(all.iter().flat_map(|r| &r.provider_calls)) {
        provider_calls::Entity::insert_many(
            chunk.into_iter().map(provider_calls::ActiveModel::from),
        )
        .on_conflict(call_upsert())
        .exec_without_returning(&txn)
        .await?;
    }
    insert_chunked(&txn, all.iter().flat_map(|r| &r.cost_events), |m| {
        cost_events::Entity::insert_many(m.into_iter().map(cost_events::ActiveModel::from))
    })
    .await?;
    // A deduplicated file may already have its edge (same parent, same role).
    for chunk in chunks(all.iter().flat_map(|r| &r.links)) {
        asset_links::Entity::insert_many(chunk.into_iter().map(asset_links::ActiveModel::from))
            .on_conflict(
                OnConflict::columns([
                    asset_links::Column::ProjectId,
                    asset_links::Column::ParentAssetId,
                    asset_links::Column::ChildAssetId,
                    asset_links::Column::LinkType,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
    }
    insert_chunked(&txn, all.iter().flat_map(|r| &r.candidates), |m| {
        run_candidates::Entity::insert_many(m.into_iter().map(run_candidates::ActiveModel::from))
    })
    .await?;
    insert_chunked(&txn, all.iter().flat_map(|r| &r.quality_reports), |m| {
        quality_reports::Entity::insert_many(m.into_iter().map(quality_reports::ActiveModel::from))
    })
    .await?;
    let mut applied = Vec::with_capacity(requests.len());
    let mut pending: Vec<&PendingEvent> = all.iter().flat_map(|r| &r.events).collect();
    for (rows, fence) in requests {
        if let Some(fence) = lost(*fence) {
            applied.push(Err(lease::lost(&fence)));
            continue;
        }
        let mut mine = Vec::with_capacity(rows.completions.len());
        for c in &rows.completions {
            let ok = complete_job(&txn, c).await?;
            if ok {
                pending.extend(&c.events);
            }
            mine.push(ok);
        }
        applied.push(Ok(mine));
    }
    let progress = progress_of_runs(&txn, &pending).await?;
    let events = number_events(&txn, pending.into_iter(), &progress).await?;
    insert_chunked(&txn, events.iter(), |m| {
        run_events::Entity::insert_many(m.into_iter().map(run_events::ActiveModel::from))
    })
    .await?;
    crate::db::commit(txn).await?;
    Ok((events.into_iter().map(RunEvent::from).collect(), applied))
}

/// Provider calls are upserted by id: a call is recorded before it is made
/// and completed afterwards.
fn call_upsert() -> OnConflict {
    OnConflict::column(provider_calls::Column::Id)
        // A completion: what the call delivered; an earlier attempt's
        // error no longer describes it.
        .update_columns([
            provider_calls::Column::Status,
            provider_calls::Column::ModelName,
            provider_calls::Column::Attempt,
            provider_calls::Column::ActualCostUsd,
            provider_calls::Column::ResultAssetId,
            provider_calls::Column::ProviderRequestId,
            provider_calls::Column::ResponseJson,
            provider_calls::Column::ErrorCode,
            provider_calls::Column::ErrorMessage,
            provider_calls::Column::SentAt,
            provider_calls::Column::FinishedAt,
            provider_calls::Column::UpdatedAt,
        ])
        .to_owned()
}

/// Whether a batch is one worker's call records and nothing else (what a
/// job writes before its first calls), written on PostgreSQL by
/// [`fenced_calls`] in one statement.
fn only_fenced_calls<'a>(requests: &[(&'a Rows, Option<Fence>)]) -> Option<(&'a Rows, Fence)> {
    let [(rows, Some(fence))] = requests else {
        return None;
    };
    let Rows {
        assets,
        provider_calls,
        cost_events,
        links,
        candidates,
        quality_reports,
        events,
        completions,
        files,
    } = rows;
    (!provider_calls.is_empty()
        && assets.is_empty()
        && cost_events.is_empty()
        && links.is_empty()
        && candidates.is_empty()
        && quality_reports.is_empty()
        && events.is_empty()
        && completions.is_empty()
        && files.is_empty())
    .then_some((*rows, *fence))
}

/// One worker's call records upserted with its fence in the same statement
/// (`INSERT … SELECT … WHERE EXISTS (the job at this epoch FOR SHARE)`):
/// written only while the lease holds, and a reclaim waits for the
/// statement, as it waits for a batch's transaction — one round trip where
/// a transaction takes four (begin, fence, insert, commit).
async fn fenced_calls(
    db: &DatabaseConnection,
    rows: &Rows,
    fence: Fence,
) -> Result<(Vec<RunEvent>, Vec<Result<Applied, ServiceError>>), ServiceError> {
    use sea_orm::sea_query::{Query, SelectStatement, UnionType};
    use sea_orm::{ActiveModelTrait, IdenStatic, Iterable};
    let held = Query::select()
        .expr(Expr::val(1))
        .from(run_jobs::Entity)
        .and_where(run_jobs::Column::Id.eq(fence.job_id))
        .and_where(run_jobs::Column::LeaseEpoch.eq(fence.epoch))
        .lock_shared()
        .to_owned();
    let columns: Vec<provider_calls::Column> = provider_calls::Column::iter().collect();
    let mut select: Option<SelectStatement> = None;
    for call in &rows.provider_calls {
        let call = provider_calls::ActiveModel::from(call.clone());
        let mut row = Query::select();
        for c in &columns {
            let value = call.get(*c).into_value().ok_or_else(|| {
                ServiceError::Internal(format!("call record without {}", c.as_str()))
            })?;
            row.expr(Expr::val(value));
        }
        row.and_where(Expr::exists(held.clone()));
        match select.as_mut() {
            Some(first) => {
                first.union(UnionType::All, row);
            }
            None => select = Some(row),
        }
    }
    let select = select.ok_or_else(|| ServiceError::Internal("no call record".into()))?;
    let insert = Query::insert()
        .into_table(provider_calls::Entity)
        .columns(columns)
        .select_from(select)
        .map_err(|e| ServiceError::Internal(format!("call records: {e}")))?
        .on_conflict(call_upsert())
        .to_owned();
    let written = db.execute(&insert).await?.rows_affected();
    if written == 0 {
        tracing::warn!(job_id = %fence.job_id, epoch = fence.epoch, "lease lost: a late write was refused");
        return Ok((Vec::new(), vec![Err(lease::lost(&fence))]));
    }
    Ok((Vec::new(), vec![Ok(Vec::new())]))
}

async fn complete_job<C: ConnectionTrait>(db: &C, c: &JobCompletion) -> Result<bool, ServiceError> {
    let now = time::now();
    let changed = run_jobs::Entity::update_many()
        .col_expr(run_jobs::Column::Status, Expr::value(c.status))
        // On success the error of an earlier attempt stays, for the record.
        .col_expr(
            run_jobs::Column::LastError,
            match &c.last_error {
                Some(e) => Expr::value(e.clone()),
                None => Expr::col(run_jobs::Column::LastError),
            },
        )
        .col_expr(
            run_jobs::Column::FinalAssetId,
            Expr::value(c.winner.map(|w| w.1)),
        )
        .col_expr(
            run_jobs::Column::SelectedCandidateIndex,
            Expr::value(c.winner.map(|w| w.0)),
        )
        .col_expr(
            run_jobs::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            run_jobs::Column::LeaseExpiresAt,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .col_expr(run_jobs::Column::FinishedAt, Expr::value(now))
        .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
        .filter(run_jobs::Column::Id.eq(c.job_id))
        .filter(run_jobs::Column::Status.eq(JobStatus::Running))
        .exec(db)
        .await?
        .rows_affected;
    if changed == 0 {
        return Ok(false);
    }
    let Some((index, asset_id)) = c.winner else {
        return Ok(true);
    };
    if !c.winner_recorded {
        run_candidates::Entity::update_many()
            .col_expr(run_candidates::Column::FinalAssetId, Expr::value(asset_id))
            .filter(run_candidates::Column::JobId.eq(c.job_id))
            .filter(run_candidates::Column::CandidateIndex.eq(index))
            .exec(db)
            .await?;
    }
    if !c.chain_ends {
        // The winner is the input of the job's next stage.
        run_jobs::Entity::update_many()
            .col_expr(run_jobs::Column::Status, Expr::value(JobStatus::Pending))
            .col_expr(run_jobs::Column::InputAssetId, Expr::value(asset_id))
            .col_expr(run_jobs::Column::UpdatedAt, Expr::value(now))
            .filter(run_jobs::Column::ParentJobId.eq(c.job_id))
            .filter(run_jobs::Column::Status.eq(JobStatus::Blocked))
            .exec(db)
            .await?;
    }
    Ok(true)
}

/// `rows` in statement-sized chunks: full ones of [`ROWS_PER_STATEMENT`],
/// then the rest in powers of two. Each distinct row count is a statement
/// of its own for SQLite to compile, so a few shapes keep every insert in
/// the connection's statement cache.
fn chunks<'a, M: Clone + 'a>(rows: impl Iterator<Item = &'a M>) -> Vec<Vec<M>> {
    let rows: Vec<&M> = rows.collect();
    let mut out = Vec::new();
    let mut rest = rows.as_slice();
    while !rest.is_empty() {
        let n = if rest.len() >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(n);
        out.push(chunk.iter().map(|&r| r.clone()).collect());
        rest = tail;
    }
    out
}

async fn insert_chunked<'a, M, A, E>(
    txn: &crate::db::WriteTxn,
    rows: impl Iterator<Item = &'a M>,
    statement: impl Fn(Vec<M>) -> sea_orm::InsertMany<A>,
) -> Result<(), ServiceError>
where
    M: Clone + 'a,
    A: sea_orm::ActiveModelTrait<Entity = E>,
    E: EntityTrait,
{
    for chunk in chunks(rows) {
        statement(chunk).exec_without_returning(txn).await?;
    }
    Ok(())
}

/// Reserves consecutive sequence numbers per run (one counter update per run
/// in the batch) and builds the event rows in request order.
/// Event types whose payload carries the run's `progress` (jobs finished of
/// all jobs, by status) and `cost_so_far_usd`, as of the commit they are in.
const WITH_PROGRESS: &[&str] = &[
    "candidate.ready",
    "candidate.failed",
    "job.winner_selected",
    "stage.completed",
    "job.failed",
];

/// Progress and spend of every run with a progress-carrying event in the
/// batch: two aggregate reads per run, inside the batch's transaction.
async fn progress_of_runs<C: ConnectionTrait>(
    db: &C,
    pending: &[&PendingEvent],
) -> Result<HashMap<Uuid, Value>, ServiceError> {
    let mut out = HashMap::new();
    for e in pending {
        if !WITH_PROGRESS.contains(&e.event_type) || out.contains_key(&e.run_id) {
            continue;
        }
        let by_status: Vec<(String, i64)> = run_jobs::Entity::find()
            .select_only()
            .column(run_jobs::Column::Status)
            .column_as(Expr::col(run_jobs::Column::Id).count(), "n")
            .filter(run_jobs::Column::RunId.eq(e.run_id))
            .group_by(run_jobs::Column::Status)
            .into_tuple()
            .all(db)
            .await?;
        let cost: Option<Option<f64>> = cost_events::Entity::find()
            .select_only()
            .column_as(Expr::col(cost_events::Column::TotalCostUsd).sum(), "total")
            .filter(cost_events::Column::RunId.eq(e.run_id))
            .into_tuple()
            .one(db)
            .await?;
        let total: i64 = by_status.iter().map(|(_, n)| n).sum();
        let finished: i64 = by_status
            .iter()
            .filter(|(s, _)| crate::status::JobStatus::is_terminal(s))
            .map(|(_, n)| n)
            .sum();
        let by_status: serde_json::Map<String, Value> = by_status
            .into_iter()
            .map(|(s, n)| (s, Value::from(n)))
            .collect();
        out.insert(
            e.run_id,
            serde_json::json!({
                "progress": { "jobs_finished": finished, "jobs_total": total, "by_status": by_status },
                "cost_so_far_usd": cost.flatten().unwrap_or(0.0),
            }),
        );
    }
    Ok(out)
}

async fn number_events<'a, C: ConnectionTrait>(
    db: &C,
    pending: impl Iterator<Item = &'a PendingEvent>,
    progress: &HashMap<Uuid, Value>,
) -> Result<Vec<run_events::Model>, ServiceError> {
    let pending: Vec<&PendingEvent> = pending.collect();
    let mut per_run: Vec<(Uuid, i64)> = Vec::new();
    for e in &pending {
        match per_run.iter_mut().find(|(id, _)| *id == e.run_id) {
            Some((_, n)) => *n += 1,
            None => per_run.push((e.run_id, 1)),
        }
    }
    let mut next: HashMap<Uuid, i64> = HashMap::new();
    for (run_id, n) in per_run {
        next.insert(run_id, super::events::reserve_seqs(db, run_id, n).await?);
    }
    let now = time::now();
    Ok(pending
        .into_iter()
        .map(|e| {
            let seq = next.entry(e.run_id).or_default();
            let mut payload = e.payload.clone();
            if let (Some(extra), Some(p)) = (
                progress
                    .get(&e.run_id)
                    .filter(|_| WITH_PROGRESS.contains(&e.event_type))
                    .and_then(Value::as_object),
                payload.as_object_mut(),
            ) {
                p.extend(extra.clone());
            }
            let row = run_events::Model {
                id: Uuid::now_v7(),
                project_id: e.project_id,
                run_id: e.run_id,
                seq: *seq,
                event_type: e.event_type.to_string(),
                job_id: e.job_id,
                payload_json: payload,
                created_at: now,
            };
            *seq += 1;
            row
        })
        .collect())
}

/// The row writer is gone (the engine is stopping): the rows were not
/// written; the caller's work is retried from what is on record.
fn writer_unavailable() -> ServiceError {
    ServiceError::Unavailable {
        code: "writer_unavailable",
        message: "The row writer is not running; try again".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(n: usize) -> Vec<usize> {
        let rows: Vec<usize> = (0..n).collect();
        let chunks = chunks(rows.iter());
        // Every row once, in order.
        assert_eq!(chunks.concat(), rows);
        chunks.iter().map(Vec::len).collect()
    }

    #[test]
    fn chunks_take_few_shapes() {
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(7), [4, 2, 1]);
        assert_eq!(sizes(200), [200]);
        assert_eq!(sizes(457), [200, 200, 32, 16, 8, 1]);
    }
}
