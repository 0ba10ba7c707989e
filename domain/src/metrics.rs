//! In-process measurements the database cannot give: provider call
//! latencies (cumulative histogram buckets, Prometheus style) and live feed
//! clients. Counts of runs, jobs, calls and costs come from the database.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Cumulative: `counts[i]` calls took at most `LATENCY_BUCKETS[i]`.
    pub counts: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

static LATENCIES: Mutex<BTreeMap<(String, String), Histogram>> = Mutex::new(BTreeMap::new());
static FEED_CLIENTS: AtomicI64 = AtomicI64::new(0);
static DURABLE: Mutex<BTreeMap<String, Histogram>> = Mutex::new(BTreeMap::new());

fn observe(h: &mut Histogram, took: Duration) {
    let secs = took.as_secs_f64();
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        if secs <= *bound {
            h.counts[i] += 1;
        }
    }
    h.count += 1;
    h.sum_seconds += secs;
}

/// Records how long a paid result was exposed: from its arrival to the
/// commit that made it durable (file and rows).
pub fn observe_durable_window(provider: &str, took: Duration) {
    if let Ok(mut map) = DURABLE.lock() {
        observe(map.entry(provider.to_string()).or_default(), took);
    }
}

/// Durable-window histograms by provider.
pub fn durable_windows() -> Vec<(String, Histogram)> {
    DURABLE
        .lock()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Records one provider call (`outcome`: `ok` or the error code).
pub fn observe_call(provider: &str, outcome: &str, took: Duration) {
    if let Ok(mut map) = LATENCIES.lock() {
        observe(
            map.entry((provider.to_string(), outcome.to_string()))
                .or_default(),
            took,
        );
    }
}

/// Latency histograms by (provider, outcome).
pub fn call_latencies() -> Vec<((String, String), Histogram)> {
    LATENCIES
        .lock()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Counts a feed client for as long as the guard lives.
pub struct FeedClient(());

impl FeedClient {
    pub fn connect() -> Self {
        FEED_CLIENTS.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for FeedClient {
    fn drop(&mut self) {
        FEED_CLIENTS.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn feed_clients() -> i64 {
    FEED_CLIENTS.load(Ordering::Relaxed)
}

/// Counts the database holds for `/metrics`: the same totals on every node.
#[derive(Debug, Default)]
pub struct StoreCounts {
    pub runs_by_status: Vec<(String, i64)>,
    pub jobs_by_status: Vec<(String, i64)>,
    pub candidates_by_status: Vec<(String, i64)>,
    /// (provider, status, call rows, attempts summed over them).
    pub calls: Vec<(String, String, i64, i64)>,
    /// (provider, recorded spend in USD).
    pub cost_usd: Vec<(String, f64)>,
}

/// Reads every count `/metrics` reports, one grouped query per table.
pub async fn store_counts(
    db: &sea_orm::DatabaseConnection,
) -> Result<StoreCounts, crate::ServiceError> {
    use entities::{cost_events, provider_calls, run_candidates, run_jobs, runs};
    use sea_orm::sea_query::{Expr, ExprTrait};
    use sea_orm::{EntityTrait, QuerySelect};

    async fn by_status<E: EntityTrait>(
        db: &sea_orm::DatabaseConnection,
        col: E::Column,
    ) -> Result<Vec<(String, i64)>, sea_orm::DbErr> {
        E::find()
            .select_only()
            .column(col)
            .column_as(Expr::col(col).count(), "n")
            .group_by(col)
            .into_tuple()
            .all(db)
            .await
    }
    let calls: Vec<(String, String, i64, Option<i64>)> = provider_calls::Entity::find()
        .select_only()
        .column(provider_calls::Column::ProviderCode)
        .column(provider_calls::Column::Status)
        .column_as(Expr::col(provider_calls::Column::Id).count(), "n")
        .column_as(Expr::col(provider_calls::Column::Attempt).sum(), "attempts")
        .group_by(provider_calls::Column::ProviderCode)
        .group_by(provider_calls::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    let cost_usd: Vec<(String, Option<f64>)> = cost_events::Entity::find()
        .select_only()
        .column(cost_events::Column::ProviderCode)
        .column_as(Expr::col(cost_events::Column::TotalCostUsd).sum(), "usd")
        .group_by(cost_events::Column::ProviderCode)
        .into_tuple()
        .all(db)
        .await?;
    Ok(StoreCounts {
        runs_by_status: by_status::<runs::Entity>(db, runs::Column::Status).await?,
        jobs_by_status: by_status::<run_jobs::Entity>(db, run_jobs::Column::Status).await?,
        candidates_by_status: by_status::<run_candidates::Entity>(
            db,
            run_candidates::Column::Status,
        )
        .await?,
        calls: calls
            .into_iter()
            .map(|(p, s, n, a)| (p, s, n, a.unwrap_or(0)))
            .collect(),
        cost_usd: cost_usd
            .into_iter()
            .map(|(p, usd)| (p, usd.unwrap_or(0.0)))
            .collect(),
    })
}
