//! A project's records of what happened: quality reports, cost events and
//! exports (read here; written by the pipeline and, later, the exporter),
//! and cost totals.

use std::collections::BTreeMap;

use entities::{cost_events, project_exports, quality_reports};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use crate::ServiceError;
use crate::cursor::Cursor;

/// Newest first (`created_at` desc, `id` desc), at most `limit`, optionally one run's.
macro_rules! newest {
    ($entity:ident, $db:expr, $project_id:expr, $run_id:expr, $limit:expr, $after:expr) => {{
        let mut q = $entity::Entity::find().filter($entity::Column::ProjectId.eq($project_id));
        if let Some(run_id) = $run_id {
            q = q.filter($entity::Column::RunId.eq(run_id));
        }
        if let Some(c) = $after {
            q = q.filter(c.condition($entity::Column::CreatedAt, $entity::Column::Id));
        }
        Ok(q.order_by_desc($entity::Column::CreatedAt)
            .order_by_desc($entity::Column::Id)
            .limit($limit)
            .all($db)
            .await?)
    }};
}

pub async fn quality_reports<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    run_id: Option<Uuid>,
    limit: u64,
    after: Option<Cursor>,
) -> Result<Vec<quality_reports::Model>, ServiceError> {
    newest!(quality_reports, db, project_id, run_id, limit, after)
}

pub async fn cost_events<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    run_id: Option<Uuid>,
    limit: u64,
    after: Option<Cursor>,
) -> Result<Vec<cost_events::Model>, ServiceError> {
    newest!(cost_events, db, project_id, run_id, limit, after)
}

pub async fn exports<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    limit: u64,
    after: Option<Cursor>,
) -> Result<Vec<project_exports::Model>, ServiceError> {
    newest!(project_exports, db, project_id, None::<Uuid>, limit, after)
}

pub async fn export<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_id: &str,
) -> Result<project_exports::Model, ServiceError> {
    crate::lookup::owned::<project_exports::Entity, _>(
        db,
        (
            project_exports::Column::Id,
            project_exports::Column::ProjectId,
        ),
        project_id,
        raw_id,
        "Project export not found",
    )
    .await
}

/// Spend totals of a project: overall and by provider, model, run and UTC day.
#[derive(Debug, Default, PartialEq, serde::Serialize)]
pub struct CostSummary {
    pub total_usd: f64,
    pub events: u64,
    pub by_provider: BTreeMap<String, f64>,
    pub by_model: BTreeMap<String, f64>,
    pub by_run: BTreeMap<String, f64>,
    pub by_day: BTreeMap<String, f64>,
    /// Of `total_usd`: spend of calls whose answer was lost (sent, maybe
    /// billed, no result) — counted as spent, shown apart.
    pub possibly_billed_usd: f64,
}

/// Totals over every cost event of the project (one pass over the ledger's
/// four grouping columns; the ledger is one row per paid call).
pub async fn cost_summary<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<CostSummary, ServiceError> {
    type Row = (
        String,
        Option<String>,
        Option<Uuid>,
        chrono::DateTime<chrono::Utc>,
        f64,
        String,
    );
    let rows: Vec<Row> = cost_events::Entity::find()
        .select_only()
        .column(cost_events::Column::ProviderCode)
        .column(cost_events::Column::ModelName)
        .column(cost_events::Column::RunId)
        .column(cost_events::Column::CreatedAt)
        .column(cost_events::Column::TotalCostUsd)
        .column(cost_events::Column::Billing)
        .filter(cost_events::Column::ProjectId.eq(project_id))
        .into_tuple()
        .all(db)
        .await?;
    let mut s = CostSummary::default();
    for (provider, model, run, at, usd, billing) in rows {
        s.total_usd += usd;
        if billing == "possibly_billed" {
            s.possibly_billed_usd += usd;
        }
        s.events += 1;
        *s.by_provider.entry(provider).or_default() += usd;
        *s.by_model
            .entry(model.unwrap_or_else(|| "unknown".into()))
            .or_default() += usd;
        if let Some(run) = run {
            *s.by_run.entry(run.to_string()).or_default() += usd;
        }
        *s.by_day
            .entry(at.format("%Y-%m-%d").to_string())
            .or_default() += usd;
    }
    Ok(s)
}

/// Output-guard results of one run, summed up.
#[derive(Debug, Default, PartialEq, serde::Serialize)]
pub struct QualitySummary {
    pub reports: u64,
    /// Reports per grade (`pass`, `warn`, `fail`).
    pub by_grade: BTreeMap<String, u64>,
    pub hard_failures: u64,
    pub soft_warnings: u64,
    /// Mean chroma excess over the reports (0 when none).
    pub mean_chroma_exceed: f64,
    /// Share of reports that passed without warnings.
    pub pass_rate: f64,
}

pub async fn quality_summary<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    run_id: Uuid,
) -> Result<QualitySummary, ServiceError> {
    let rows: Vec<(Option<String>, i32, i32, f64)> = quality_reports::Entity::find()
        .select_only()
        .column(quality_reports::Column::Grade)
        .column(quality_reports::Column::HardFailures)
        .column(quality_reports::Column::SoftWarnings)
        .column(quality_reports::Column::AvgChromaExceed)
        .filter(quality_reports::Column::ProjectId.eq(project_id))
        .filter(quality_reports::Column::RunId.eq(run_id))
        .into_tuple()
        .all(db)
        .await?;
    let mut s = QualitySummary::default();
    let mut exceed = 0.0;
    for (grade, hard, soft, ex) in rows {
        s.reports += 1;
        *s.by_grade.entry(grade.unwrap_or_default()).or_default() += 1;
        s.hard_failures += hard.max(0) as u64;
        s.soft_warnings += soft.max(0) as u64;
        exceed += ex;
    }
    if s.reports > 0 {
        s.mean_chroma_exceed = exceed / s.reports as f64;
        s.pass_rate = s.by_grade.get("pass").copied().unwrap_or(0) as f64 / s.reports as f64;
    }
    Ok(s)
}

/// What the project's ledger says it spent (billed and possibly billed).
pub async fn project_spend<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
) -> Result<f64, ServiceError> {
    use sea_orm::sea_query::Expr;
    use sea_orm::sea_query::ExprTrait;
    let spent: Option<f64> = cost_events::Entity::find()
        .select_only()
        .column_as(Expr::col(cost_events::Column::TotalCostUsd).sum(), "spent")
        .filter(cost_events::Column::ProjectId.eq(project_id))
        .into_tuple()
        .one(db)
        .await?
        .flatten();
    Ok(spent.unwrap_or(0.0))
}
