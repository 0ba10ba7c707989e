//! `atelier demo`: the main job on the embedded default. Creates (or reuses)
//! the `demo` project, runs sample scenes through the whole stage chain on the
//! built-in local provider with a progress bar, and prints a summary.

use std::time::Duration;

use domain::Principal;
use domain::projects::{self, UpsertProject};
use domain::runs::{plan, store, trigger};
use indicatif::{ProgressBar, ProgressStyle};
use storage::paths::StorageRoots;

use crate::cli::CliError;
use crate::database;
use crate::settings::Settings;
use crate::startup::{StartupError, embedded_engine, engine_config, install_runtime_defaults};
use domain::status::RunStatus;
use domain::status::{CandidateStatus, JobStatus};

pub struct DemoOptions {
    pub scenes: u32,
    pub candidates: u32,
    pub time: String,
    pub weather: String,
}

fn service(e: domain::ServiceError) -> CliError {
    CliError::Service(e.to_string())
}

pub async fn run(settings: Settings, options: DemoOptions) -> Result<(), CliError> {
    install_runtime_defaults();
    let db = database::open(&settings)
        .await
        .map_err(StartupError::from)?;
    let (engine, roots) = embedded_engine(&settings, &db.conn, engine_config(&settings)).await?;
    let principal = Principal::DevBypass;
    let project = projects::upsert(
        &db.conn,
        &roots,
        &principal,
        UpsertProject {
            name: Some("Demo Book".into()),
            slug: Some("demo".into()),
            description: Some("Sample scenes taken through style, time of day and weather".into()),
            ..UpsertProject::default()
        },
    )
    .await
    .map_err(service)?;

    let valid = plan::validate(&plan::TriggerInput {
        mode: Some("run".into()),
        scene_refs: Some(
            (1..=options.scenes.max(1))
                .map(|i| format!("sample:{i}"))
                .collect(),
        ),
        stage: Some("weather".into()),
        time: Some(options.time.clone()),
        weather: Some(options.weather.clone()),
        candidates: Some(i64::from(options.candidates)),
        ..plan::TriggerInput::default()
    })
    .map_err(service)?;
    let mut events = engine.hub().subscribe();
    let triggered = trigger::trigger(engine.run_engine(), &principal, &project.project, valid)
        .await
        .map_err(service)?;
    let run_id = triggered.created.run.id;
    let total = u64::from(triggered.plan.provider_calls);

    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} candidates  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("queued");
    loop {
        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            Ok(Ok(ev)) if ev.run_id == run_id => match ev.event_type.as_str() {
                "candidate.ready" | "candidate.failed" => bar.inc(1),
                "stage.completed" => bar.set_message(format!(
                    "{} done",
                    ev.payload
                        .get("job_key")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                )),
                "run.finished" | "run.canceled" => break,
                _ => {}
            },
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                let run = engine
                    .wait_finished(run_id, Duration::ZERO)
                    .await
                    .map_err(service)?;
                if domain::status::RunStatus::is_terminal(&run.status) {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    bar.finish_and_clear();
    let run = engine
        .wait_finished(run_id, Duration::from_secs(10))
        .await
        .map_err(service)?;
    print_summary(&db.conn, &roots, &project.project, &run)
        .await
        .map_err(service)?;
    if run.status == RunStatus::Done {
        Ok(())
    } else {
        Err(CliError::Service(format!("run finished as {}", run.status)))
    }
}

async fn print_summary(
    db: &sea_orm::DatabaseConnection,
    roots: &StorageRoots,
    project: &entities::projects::Model,
    run: &entities::runs::Model,
) -> Result<(), domain::ServiceError> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let jobs = store::jobs_of(db, run.id).await?;
    let candidates = store::candidates_of_run(db, run.id).await?;
    let archived = entities::assets::Entity::find()
        .filter(entities::assets::Column::RunId.eq(run.id))
        .filter(entities::assets::Column::Kind.eq("archived"))
        .all(db)
        .await?
        .len();
    let cost: f64 = entities::cost_events::Entity::find()
        .filter(entities::cost_events::Column::RunId.eq(run.id))
        .all(db)
        .await?
        .iter()
        .map(|c| c.total_cost_usd)
        .sum();
    let row = projects::storage_row(db, project.id).await?;
    let root = projects::storage_view(roots, project, &row)?.project_root;
    // The run log is written right after the run finishes.
    let mut log = None;
    for _ in 0..50 {
        if let Some(r) = entities::runs::Entity::find_by_id(run.id).one(db).await?
            && let Some(k) = r.run_log_key
        {
            log = Some(k);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let winners = jobs.iter().filter(|j| j.final_asset_id.is_some()).count();
    println!("Run {} finished: {}", run.id, run.status);
    println!(
        "  jobs        {} ({} done)",
        jobs.len(),
        jobs.iter().filter(|j| j.status == JobStatus::Done).count()
    );
    println!(
        "  candidates  {} ({} passed the output guard)",
        candidates.len(),
        candidates
            .iter()
            .filter(|c| c.status == CandidateStatus::Done)
            .count()
    );
    println!("  winners     {winners}");
    println!("  archived    {archived}");
    println!("  cost        {:.4} USD", cost + 0.0);
    println!("  outputs     {root}/runs/{}/", run.id);
    if let Some(k) = log {
        println!("  run log     {root}/{k}");
    }
    for j in jobs.iter().filter(|j| j.stage == "weather") {
        if let Some(asset) = j.final_asset_id
            && let Some(a) = entities::assets::Entity::find_by_id(asset).one(db).await?
        {
            println!("  final       {root}/{}", a.storage_key);
        }
    }
    Ok(())
}
