//! `GET /metrics`: Prometheus text format. Counts come from the database (so
//! every node reports the same totals); latencies, restarts, workers and
//! feed clients are this process's own.

use std::fmt::Write as _;

use actix_web::{HttpResponse, get, web};
use entities::{cost_events, provider_calls, run_candidates, run_jobs, runs};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{EntityTrait, QuerySelect};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Auth;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &domain::metrics::Histogram) {
    for (bound, n) in domain::metrics::LATENCY_BUCKETS.iter().zip(h.counts) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Service metrics in Prometheus text format (any valid token).
#[utoipa::path(
    tag = "system",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
        (status = 401, body = ErrorBody),
    )
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>, _auth: Auth) -> ApiResult<HttpResponse> {
    let db = &state.db;
    let err = domain::ServiceError::from;
    let mut out = String::new();
    macro_rules! by_status {
        ($entity:ty, $col:expr, $name:literal, $help:literal) => {{
            let rows: Vec<(String, i64)> = <$entity>::find()
                .select_only()
                .column($col)
                .column_as(Expr::col($col).count(), "n")
                .group_by($col)
                .into_tuple()
                .all(db)
                .await
                .map_err(err)?;
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", $name, $help, $name);
            for (status, n) in rows {
                let _ = writeln!(out, "{}{{status=\"{}\"}} {n}", $name, escape(&status));
            }
        }};
    }
    by_status!(
        runs::Entity,
        runs::Column::Status,
        "atelier_runs",
        "Runs by status."
    );
    by_status!(
        run_jobs::Entity,
        run_jobs::Column::Status,
        "atelier_jobs",
        "Jobs by status."
    );
    by_status!(
        run_candidates::Entity,
        run_candidates::Column::Status,
        "atelier_candidates",
        "Candidates by status."
    );
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
        .await
        .map_err(err)?;
    out.push_str("# HELP atelier_provider_calls Provider call records by provider and status.\n# TYPE atelier_provider_calls gauge\n");
    for (p, s, n, _) in &calls {
        let _ = writeln!(
            out,
            "atelier_provider_calls{{provider=\"{}\",status=\"{}\"}} {n}",
            escape(p),
            escape(s)
        );
    }
    out.push_str("# HELP atelier_provider_retries Attempts beyond the first, by provider.\n# TYPE atelier_provider_retries gauge\n");
    let mut retries: std::collections::BTreeMap<&str, i64> = Default::default();
    for (p, _, n, attempts) in &calls {
        *retries.entry(p.as_str()).or_default() += Ord::max(attempts.unwrap_or(0) - n, 0);
    }
    for (p, r) in retries {
        let _ = writeln!(
            out,
            "atelier_provider_retries{{provider=\"{}\"}} {r}",
            escape(p)
        );
    }
    let costs: Vec<(String, Option<f64>)> = cost_events::Entity::find()
        .select_only()
        .column(cost_events::Column::ProviderCode)
        .column_as(Expr::col(cost_events::Column::TotalCostUsd).sum(), "usd")
        .group_by(cost_events::Column::ProviderCode)
        .into_tuple()
        .all(db)
        .await
        .map_err(err)?;
    out.push_str("# HELP atelier_cost_usd_total Recorded spend by provider (USD).\n# TYPE atelier_cost_usd_total counter\n");
    for (p, usd) in costs {
        let _ = writeln!(
            out,
            "atelier_cost_usd_total{{provider=\"{}\"}} {}",
            escape(&p),
            usd.unwrap_or(0.0)
        );
    }
    out.push_str("# HELP atelier_provider_call_seconds Provider call latency in this process.\n# TYPE atelier_provider_call_seconds histogram\n");
    for ((provider, outcome), h) in domain::metrics::call_latencies() {
        let labels = format!(
            "provider=\"{}\",outcome=\"{}\"",
            escape(&provider),
            escape(&outcome)
        );
        histogram(&mut out, "atelier_provider_call_seconds", &labels, &h);
    }
    out.push_str("# HELP atelier_delivery_durable_seconds From a paid result's arrival to the commit that made it durable.\n# TYPE atelier_delivery_durable_seconds histogram\n");
    for (provider, h) in domain::metrics::durable_windows() {
        let labels = format!("provider=\"{}\"", escape(&provider));
        histogram(&mut out, "atelier_delivery_durable_seconds", &labels, &h);
    }
    let registry = state.engine.registry();
    out.push_str("# HELP atelier_actor_restarts Supervisor restarts per actor in this process.\n# TYPE atelier_actor_restarts counter\n");
    for a in registry.snapshot() {
        let _ = writeln!(
            out,
            "atelier_actor_restarts{{actor=\"{}\"}} {}",
            escape(&a.name),
            a.restarts
        );
    }
    let _ = writeln!(
        out,
        "# HELP atelier_live_workers WorkerActors alive in this process.\n# TYPE atelier_live_workers gauge\natelier_live_workers {}",
        registry.live_workers()
    );
    let _ = writeln!(
        out,
        "# HELP atelier_feed_clients WebSocket feed clients connected to this process.\n# TYPE atelier_feed_clients gauge\natelier_feed_clients {}",
        domain::metrics::feed_clients()
    );
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(out))
}
