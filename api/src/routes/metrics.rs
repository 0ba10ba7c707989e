//! `GET /metrics`: Prometheus text format. Counts come from the database (so
//! every node reports the same totals); latencies, restarts, workers and
//! feed clients are this process's own.

use std::fmt::Write as _;

use actix_web::{HttpResponse, get, web};

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
    let counts = domain::metrics::store_counts(&state.db).await?;
    let mut out = String::new();
    let by_status = |out: &mut String, name: &str, help: &str, rows: &[(String, i64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (status, n) in rows {
            let _ = writeln!(out, "{name}{{status=\"{}\"}} {n}", escape(status));
        }
    };
    by_status(
        &mut out,
        "atelier_runs",
        "Runs by status.",
        &counts.runs_by_status,
    );
    by_status(
        &mut out,
        "atelier_jobs",
        "Jobs by status.",
        &counts.jobs_by_status,
    );
    by_status(
        &mut out,
        "atelier_candidates",
        "Candidates by status.",
        &counts.candidates_by_status,
    );
    out.push_str("# HELP atelier_provider_calls Provider call records by provider and status.\n# TYPE atelier_provider_calls gauge\n");
    for (p, s, n, _) in &counts.calls {
        let _ = writeln!(
            out,
            "atelier_provider_calls{{provider=\"{}\",status=\"{}\"}} {n}",
            escape(p),
            escape(s)
        );
    }
    out.push_str("# HELP atelier_provider_retries Attempts beyond the first, by provider.\n# TYPE atelier_provider_retries gauge\n");
    let mut retries: std::collections::BTreeMap<&str, i64> = Default::default();
    for (p, _, n, attempts) in &counts.calls {
        *retries.entry(p.as_str()).or_default() += Ord::max(attempts - n, 0);
    }
    for (p, r) in retries {
        let _ = writeln!(
            out,
            "atelier_provider_retries{{provider=\"{}\"}} {r}",
            escape(p)
        );
    }
    out.push_str("# HELP atelier_cost_usd_total Recorded spend by provider (USD).\n# TYPE atelier_cost_usd_total counter\n");
    for (p, usd) in &counts.cost_usd {
        let _ = writeln!(
            out,
            "atelier_cost_usd_total{{provider=\"{}\"}} {usd}",
            escape(p)
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
