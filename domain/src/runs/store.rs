//! Persistence of runs, jobs and candidates: the plan is written in full
//! (run, every job of every stage chain, input assets, first event) before any
//! provider is called.

use entities::{projects, run_candidates, run_jobs, runs};
use futures_util::{StreamExt, TryStreamExt};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde_json::{Value, json};
use storage::ProjectFiles;
use uuid::Uuid;

use super::events::{self, EventHub};
use super::plan::{Mode, Plan, job_key};
use super::scenes::{ResolvedScene, SceneContent, SceneImage};
use crate::assets::{self, NewAsset};
use crate::audit::{self, AuditEntry};
use crate::status::{JobStatus, RunStatus};
use crate::{Principal, ServiceError, time};

pub struct CreatedRun {
    /// As written (read it back for what the database made of it, e.g.
    /// JSON key order).
    pub run: runs::Model,
    /// As written; the first ones as leased when `started`.
    pub jobs: Vec<run_jobs::Model>,
    pub audit_id: Uuid,
    /// Started with its insert (see `create_run`'s `start_here`): the jobs
    /// leased to this node, whose workers can start at once.
    pub started: Option<Vec<run_jobs::Model>>,
}

/// Scene inputs stored (and looked up) at once by a trigger.
const INPUTS_AT_ONCE: usize = 8;
/// Asset rows per multi-row insert (bind parameters far below the limits).
const ASSET_ROWS_PER_INSERT: usize = 200;

#[allow(clippy::too_many_arguments)]
pub async fn create_run(
    db: &DatabaseConnection,
    hub: &EventHub,
    object_store: &ProjectFiles,
    principal: &Principal,
    project: &projects::Model,
    plan: &Plan,
    scenes: Vec<ResolvedScene>,
    style_refs: Vec<ResolvedScene>,
    max_attempts: i32,
    max_open_runs: Option<usize>,
    owner: Option<&str>,
    start_here: Option<&super::deps::EngineDeps>,
) -> Result<CreatedRun, ServiceError> {
    let now = time::now();
    let run_id = Uuid::now_v7();
    let dry = plan.mode == Mode::Dry;
    let last = plan.stages.last().map(|s| s.stage.as_str());
    let time_of_day = plan.stages.iter().find_map(|s| {
        (s.stage.as_str() == "time")
            .then(|| s.variant.clone())
            .flatten()
    });
    let weather = plan.stages.iter().find_map(|s| {
        (s.stage.as_str() == "weather")
            .then(|| s.variant.clone())
            .flatten()
    });
    let max_open_runs = max_open_runs.filter(|_| !dry);
    // The files of the style references (project assets, content-addressed,
    // shared by runs, handed to providers with every job's input) and of the
    // scenes' inputs are stored, and the project's existing assets with the
    // same content looked up, before the transaction and side by side: the
    // transaction only inserts rows. (A file whose row then fails to commit
    // is harmless: content-addressed, written whole again by a retry.)
    let kept = |content: SceneContent| match content {
        SceneContent::Image(img) => Ok(img),
        SceneContent::Prompt(description) => Err(description),
    };
    let image = |img: SceneImage, kind: &'static str, run_id: Option<Uuid>, metadata: Value| async move {
        let sha = assets::sha256_hex(&img.png);
        // `references/…` or `inputs/…`, named by content.
        let key = format!("{kind}s/{sha}.png");
        let asset = NewAsset {
            project_id: project.id,
            kind,
            key: &key,
            mime: "image/png",
            width: img.width,
            height: img.height,
            bytes: img.png,
            run_id,
            job_id: None,
            candidate_id: None,
            metadata,
        };
        assets::put(db, object_store, asset, Some(sha)).await
    };
    let references = futures_util::future::try_join_all(
        style_refs
            .into_iter()
            // Resolved with prompts refused: always an image.
            .filter_map(|r| kept(r.content).ok().map(|img| (r.reference, img)))
            .map(|(reference, img)| {
                image(img, "reference", None, json!({ "style_ref": reference }))
            }),
    );
    // A few at a time, in order: a long run's scenes do not take every
    // connection of the pool.
    let inputs = futures_util::stream::iter(scenes.into_iter().map(|scene| async move {
        let input = match kept(scene.content) {
            Ok(img) => {
                let metadata = json!({ "scene_ref": scene.reference });
                Ok(image(img, "input", Some(run_id), metadata).await?)
            }
            Err(description) => Err(description),
        };
        Ok::<_, ServiceError>((scene.reference, input))
    }))
    .buffered(INPUTS_AT_ONCE)
    .try_collect::<Vec<_>>();
    let (references, inputs) = tokio::join!(references, inputs);
    let (references, inputs) = (references?, inputs?);
    // Rows to insert: one per new content (two scenes with the same image
    // share one asset, as they would one after another).
    let mut fresh: Vec<entities::assets::Model> = Vec::new();
    let mut one_per_content = |stored: assets::Stored| -> Uuid {
        if !stored.fresh {
            return stored.row.id;
        }
        let same = |r: &&entities::assets::Model| {
            r.sha256 == stored.row.sha256 && r.kind == stored.row.kind
        };
        if let Some(row) = fresh.iter().find(same) {
            return row.id;
        }
        let id = stored.row.id;
        fresh.push(stored.row);
        id
    };
    let reference_ids: Vec<Uuid> = references.into_iter().map(&mut one_per_content).collect();
    let scenes: Vec<(String, Result<Uuid, String>)> = inputs
        .into_iter()
        .map(|(reference, input)| (reference, input.map(&mut one_per_content)))
        .collect();
    let txn = crate::db::begin_write(db).await?;
    let mut plan_json = serde_json::to_value(plan).unwrap_or_default();
    if let Some(o) = plan_json.as_object_mut() {
        o.insert("style_ref_assets".into(), json!(reference_ids));
    }
    let run = runs::Model {
        id: run_id,
        project_id: project.id,
        run_mode: if dry { "dry" } else { "run" }.into(),
        status: if dry {
            RunStatus::Planned
        } else {
            RunStatus::Queued
        }
        .into(),
        stage: last.map(str::to_string),
        time_of_day,
        weather,
        model_name: None,
        provider_code: Some(plan.provider.clone()),
        image_size: None,
        image_quality: None,
        settings_snapshot_json: serde_json::to_value(&plan.manifest).unwrap_or_default(),
        plan_json,
        budget_usd: plan.budget_usd,
        estimated_cost_usd: plan.estimated_cost_usd,
        // Its first event (below) is numbered with the insert, not by a
        // second statement.
        last_event_seq: 1,
        run_log_key: None,
        last_error: None,
        started_at: None,
        finished_at: if dry { Some(now) } else { None },
        created_at: now,
        updated_at: now,
    };
    runs::Entity::insert(runs::ActiveModel::from(run.clone()))
        .exec_without_returning(&txn)
        .await?;
    if let Some(node) = owner.filter(|_| !dry) {
        crate::cluster::record_owner(&txn, run_id, node).await?;
    }
    // The run's own inputs point at it: inserted after it.
    for rows in fresh.chunks(ASSET_ROWS_PER_INSERT) {
        entities::assets::Entity::insert_many(
            rows.iter()
                .cloned()
                .map(entities::assets::ActiveModel::from),
        )
        .exec_without_returning(&txn)
        .await?;
    }
    let mut jobs = Vec::new();
    for (i, (reference, input)) in scenes.into_iter().enumerate() {
        let (input, description) = match input {
            Ok(id) => (Some(id), None),
            Err(description) => (None, Some(description)),
        };
        let mut parent: Option<Uuid> = None;
        for (stage_index, stage) in plan.stages.iter().enumerate() {
            let job = run_jobs::Model {
                id: Uuid::now_v7(),
                project_id: project.id,
                run_id,
                job_key: job_key(stage.stage, i, &reference),
                scene_ref: Some(reference.clone()),
                stage: stage.stage.as_str().into(),
                stage_index: stage_index as i32,
                parent_job_id: parent,
                retry_of_job_id: None,
                status: if dry {
                    JobStatus::Planned
                } else if stage_index == 0 {
                    JobStatus::Pending
                } else {
                    JobStatus::Blocked
                }
                .into(),
                // Every stage of a prompt scene knows what the scene is.
                prompt_text: Some(match &description {
                    Some(d) => format!("Scene: {d}. {}", stage.prompt),
                    None => stage.prompt.clone(),
                }),
                input_asset_id: if stage_index == 0 { input } else { None },
                selected_candidate_index: None,
                final_asset_id: None,
                attempt: 0,
                max_attempts,
                lease_owner: None,
                lease_expires_at: None,
                heartbeat_at: None,
                lease_epoch: 0,
                next_attempt_at: None,
                last_error: None,
                meta_json: json!({
                    "variant": stage.variant,
                    "candidates": plan.candidates,
                    // Post-process passes run on the chain's last stage only.
                    "last_stage": stage_index + 1 == plan.stages.len(),
                    // Generated from the prompt alone (no input image).
                    "prompt_only": stage_index == 0 && input.is_none(),
                }),
                started_at: None,
                finished_at: None,
                created_at: now,
                updated_at: now,
            };
            parent = Some(job.id);
            jobs.push(job);
        }
    }
    if !jobs.is_empty() {
        run_jobs::Entity::insert_many(jobs.iter().cloned().map(run_jobs::ActiveModel::from))
            .exec_without_returning(&txn)
            .await?;
    }
    let audit_id = audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project.id),
            event_code: "run.triggered",
            payload: json!({
                "run_id": run_id, "mode": run.run_mode, "jobs": plan.jobs,
                "provider_calls": plan.provider_calls, "estimated_cost_usd": plan.estimated_cost_usd,
            }),
        },
    )
    .await?;
    // Admission against the queue's capacity, atomic with the insert: two
    // triggers at once cannot both take the last place. Taken last, so the
    // lock every trigger of every node waits for is held only for the
    // count, a start and the commit. A run started here (below) also needs
    // its project's admission lock: taken with this one, in the one order
    // every taker of both uses.
    let start_here = start_here.filter(|_| !dry && owner.is_some());
    if let Some(max) = max_open_runs {
        let project_lock = format!("admission:{}", project.id);
        let mut locks = vec!["run_admission"];
        locks.extend(start_here.map(|_| project_lock.as_str()));
        crate::db::serialize_all(&txn, &locks).await?;
        refuse_when_full(&txn, max, 1).await?;
    } else if start_here.is_some() {
        crate::db::serialize(&txn, &format!("admission:{}", project.id)).await?;
    }
    // Started in this same transaction when the trigger's node would admit
    // it at once and its project has room: its first ready jobs (stage one
    // of the first scenes, in the order a scheduling pass leases them) are
    // leased to this node, its owner.
    let mut run = run;
    let mut numbered = vec![(
        if dry { "run.planned" } else { "run.queued" },
        None,
        json!({ "jobs": plan.jobs, "candidates": plan.candidates, "estimated_cost_usd": plan.estimated_cost_usd }),
    )];
    let mut started = None;
    if let Some(deps) = start_here {
        let mut pending: Vec<Uuid> = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Pending.as_str())
            .map(|j| j.id)
            .collect();
        pending.sort();
        pending.truncate(deps.config.max_jobs_per_run);
        if let Some(first) =
            super::lifecycle::start_with_trigger(&txn, deps, run_id, project.id, &pending).await?
        {
            run = first.run;
            numbered.extend(first.events);
            for leased in &first.jobs {
                if let Some(j) = jobs.iter_mut().find(|j| j.id == leased.id) {
                    *j = leased.clone();
                }
            }
            started = Some(first.jobs);
        }
    }
    let events = events::append_numbered(&txn, run_id, project.id, 1, numbered).await?;
    crate::db::commit(txn).await?;
    for e in events {
        hub.publish(e);
    }
    Ok(CreatedRun {
        run,
        jobs,
        audit_id,
        started,
    })
}

/// `429 queue_full` when `max` runs are queued or running, not counting
/// the `own` this transaction inserted.
pub(crate) async fn refuse_when_full<C: ConnectionTrait>(
    db: &C,
    max: usize,
    own: u64,
) -> Result<(), ServiceError> {
    refuse_if_full(open_runs(db).await?.saturating_sub(own), max)
}

/// How many runs are queued or running.
pub(crate) async fn open_runs<C: ConnectionTrait>(db: &C) -> Result<u64, ServiceError> {
    Ok(runs::Entity::find()
        .filter(runs::Column::Status.is_in([RunStatus::Queued, RunStatus::Running]))
        .count(db)
        .await?)
}

/// `429 queue_full` when `open` runs reach `max`.
pub(crate) fn refuse_if_full(open: u64, max: usize) -> Result<(), ServiceError> {
    if open as usize >= max {
        return Err(ServiceError::Busy {
            code: "queue_full",
            message: format!("The run queue is full ({open} runs); try again later"),
        });
    }
    Ok(())
}

pub async fn list_runs<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    limit: u64,
    after: Option<crate::cursor::Cursor>,
) -> Result<Vec<runs::Model>, ServiceError> {
    let mut q = runs::Entity::find().filter(runs::Column::ProjectId.eq(project_id));
    if let Some(c) = after {
        q = q.filter(c.condition(runs::Column::CreatedAt, runs::Column::Id));
    }
    Ok(q.order_by_desc(runs::Column::CreatedAt)
        .order_by_desc(runs::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The run if it belongs to the project (404 "Run not found" otherwise).
/// A run by id, whatever its project (for the engine's own bookkeeping).
pub async fn run_by_id<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
) -> Result<runs::Model, ServiceError> {
    runs::Entity::find_by_id(run_id)
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::not_found("Run not found"))
}

pub async fn get_run<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_run_id: &str,
) -> Result<runs::Model, ServiceError> {
    let not_found = || ServiceError::not_found("Run not found");
    let id = Uuid::parse_str(raw_run_id.trim()).map_err(|_| not_found())?;
    runs::Entity::find_by_id(id)
        .filter(runs::Column::ProjectId.eq(project_id))
        .one(db)
        .await?
        .ok_or_else(not_found)
}

pub async fn jobs_of<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
) -> Result<Vec<run_jobs::Model>, ServiceError> {
    Ok(run_jobs::Entity::find()
        .filter(run_jobs::Column::RunId.eq(run_id))
        .order_by_asc(run_jobs::Column::CreatedAt)
        .order_by_asc(run_jobs::Column::Id)
        .all(db)
        .await?)
}

pub async fn candidates_of_run<C: ConnectionTrait>(
    db: &C,
    run_id: Uuid,
) -> Result<Vec<run_candidates::Model>, ServiceError> {
    Ok(run_candidates::Entity::find()
        .filter(run_candidates::Column::RunId.eq(run_id))
        .order_by_asc(run_candidates::Column::JobId)
        .order_by_asc(run_candidates::Column::CandidateIndex)
        .all(db)
        .await?)
}

/// How many of the project's runs are in `status`.
pub async fn count_runs<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    status: RunStatus,
) -> Result<u64, ServiceError> {
    use sea_orm::PaginatorTrait;
    Ok(runs::Entity::find()
        .filter(runs::Column::ProjectId.eq(project_id))
        .filter(runs::Column::Status.eq(status))
        .count(db)
        .await?)
}

/// Runs the engine must still drive: those queued or running when the
/// service stopped, and canceled ones with a job still open (the cancel came
/// while a worker that is now gone held it; driving such a run only settles
/// what it left, nothing is leased).
pub async fn unfinished_runs<C: ConnectionTrait>(db: &C) -> Result<Vec<runs::Model>, ServiceError> {
    use sea_orm::sea_query::Query;
    let with_open_jobs = Query::select()
        .column(run_jobs::Column::RunId)
        .from(run_jobs::Entity)
        .and_where(run_jobs::Column::Status.is_in(OPEN_JOB))
        .to_owned();
    Ok(runs::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(runs::Column::Status.is_in([RunStatus::Queued, RunStatus::Running]))
                .add(
                    sea_orm::Condition::all()
                        .add(runs::Column::Status.eq(RunStatus::Canceled))
                        .add(runs::Column::Id.in_subquery(with_open_jobs)),
                ),
        )
        .order_by_asc(runs::Column::CreatedAt)
        .all(db)
        .await?)
}

/// Job states something may still happen in.
const OPEN_JOB: [JobStatus; 3] = [JobStatus::Pending, JobStatus::Blocked, JobStatus::Running];

/// Whether a job of the run is still open.
pub async fn has_open_jobs<C: ConnectionTrait>(db: &C, run_id: Uuid) -> Result<bool, ServiceError> {
    Ok(run_jobs::Entity::find()
        .select_only()
        .column(run_jobs::Column::Id)
        .filter(run_jobs::Column::RunId.eq(run_id))
        .filter(run_jobs::Column::Status.is_in(OPEN_JOB))
        .into_tuple::<Uuid>()
        .one(db)
        .await?
        .is_some())
}

/// Work in progress across every project, as an operator sees it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct QueueStats {
    pub queued_runs: u64,
    pub running_runs: u64,
    pub running_jobs: u64,
    /// Running jobs leased by `node_id`.
    pub leases_held: u64,
}

pub async fn queue_stats<C: ConnectionTrait>(
    db: &C,
    node_id: &str,
) -> Result<QueueStats, ServiceError> {
    use sea_orm::PaginatorTrait;
    let runs_in = |status: RunStatus| {
        runs::Entity::find()
            .filter(runs::Column::Status.eq(status))
            .count(db)
    };
    let running_jobs =
        || run_jobs::Entity::find().filter(run_jobs::Column::Status.eq(JobStatus::Running));
    Ok(QueueStats {
        queued_runs: runs_in(RunStatus::Queued).await?,
        running_runs: runs_in(RunStatus::Running).await?,
        running_jobs: running_jobs().count(db).await?,
        leases_held: running_jobs()
            .filter(run_jobs::Column::LeaseOwner.eq(node_id))
            .count(db)
            .await?,
    })
}
