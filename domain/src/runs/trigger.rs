//! `POST …/runs/trigger`: plan, check policy, persist, hand to the engine.

use entities::projects;

use super::plan::{self, Mode, Plan, ValidTrigger};
use super::scenes;
use super::store::{self, CreatedRun};
use crate::ports::RunEngine;
use crate::{Principal, ServiceError};

pub struct Triggered {
    pub plan: Plan,
    /// As written: an answer reads the run back (e.g. for the database's
    /// key order in its JSON, and for how far it got meanwhile).
    pub created: CreatedRun,
}

/// Images per provider call stay well within what providers accept.
const MAX_STYLE_REFS: usize = 8;

/// Everything up to the first paid call happens here, in this order:
/// provider, scenes, plan and limits, spend policy, queue capacity, persist.
#[tracing::instrument(skip_all, fields(project = %project.slug))]
pub async fn trigger(
    engine: RunEngine<'_>,
    principal: &Principal,
    project: &projects::Model,
    valid: ValidTrigger,
) -> Result<Triggered, ServiceError> {
    let deps = &engine.deps;
    let db = &deps.db;
    let provider = deps.provider(&valid.provider).ok_or_else(|| {
        ServiceError::validation(
            "unknown_provider",
            format!("Provider '{}' is not configured", valid.provider),
        )
    })?;
    let keys = deps.secret_keys.as_ref();
    // A paid run's independent reads, asked together (each is a round trip
    // to the database); their answers are checked below in the usual order.
    let files = crate::projects::project_files(db, deps.file_access(), project);
    let (store_, paid_reads) = if valid.mode == Mode::Run {
        let (files, key, open) = tokio::join!(
            files,
            crate::secrets::provider_key(db, keys, project.id, &valid.provider),
            store::open_runs(db),
        );
        let store_ = files?;
        // Paid results need somewhere to go: refuse before anything is spent.
        store_.check_writable()?;
        (store_, Some((key, open)))
    } else {
        (files.await?, None)
    };
    let resolved = scenes::resolve(
        db,
        project.id,
        &store_,
        &valid.scene_refs,
        deps.config.limits,
        scenes::Prompts::Allowed,
    )
    .await?;
    let references = resolved.iter().map(|s| s.reference.clone()).collect();
    let pass_price = |pass: plan::PaidPass<'_>| match pass {
        plan::PaidPass::Remover("local") => Some(0.0),
        plan::PaidPass::Remover(other) => deps.removers.get(other).map(|r| r.max_cost_usd()),
        plan::PaidPass::Refiner(code) => deps.provider(code).map(|p| {
            let shape = providers::CallShape {
                input_images: 1,
                prompt_chars: 256,
            };
            p.max_cost_usd(&providers::ImageOptions::default(), shape)
        }),
    };
    // Every call the plan makes must be one the provider's model can serve:
    // refused here, before anything is stored or paid.
    let call_bound = |options: &providers::ImageOptions, shape: providers::CallShape| {
        provider.check(options, shape).map_err(|e| match e {
            providers::ProviderError::Unsupported(u) => ServiceError::validation(
                "unsupported_parameter",
                format!("Provider '{}' cannot serve this run: {u}", valid.provider),
            ),
            other => ServiceError::validation(
                "provider_not_configured",
                format!("Provider '{}' cannot be called: {other}", valid.provider),
            ),
        })?;
        Ok(provider.max_cost_usd(options, shape))
    };
    let plan = plan::build(
        &valid,
        project.settings_json.get("manifest"),
        references,
        &call_bound,
        &pass_price,
    )?;

    // A paid run (the plan keeps the request's mode).
    if let Some((provider_key, open_runs)) = paid_reads {
        // Credentials (the project's own key, else the adapter's) and
        // settings, before anything is persisted or paid.
        let own_key = |code: String| async move {
            crate::secrets::provider_key(db, keys, project.id, &code).await
        };
        if provider_key?.is_none() {
            provider.preflight().map_err(|e| {
                ServiceError::validation(
                    "provider_not_configured",
                    format!("Provider '{}' cannot be called: {e}", valid.provider),
                )
            })?;
        }
        let pp = &plan.manifest.postprocess;
        if let Some(code) = pp.bg_remove_refine.as_deref().filter(|_| pp.bg_remove)
            && let Some(refiner) = deps.provider(code)
            && own_key(code.to_string()).await?.is_none()
        {
            refiner.preflight().map_err(|e| {
                ServiceError::validation(
                    "provider_not_configured",
                    format!("Refine provider '{code}' cannot be called: {e}"),
                )
            })?;
        }
        for backend in pp.bg_remove_backends.iter().filter(|_| pp.bg_remove) {
            if let Some(remover) = deps.removers.get(backend.as_str())
                && own_key(backend.clone()).await?.is_none()
            {
                remover.preflight().map_err(|e| {
                    ServiceError::validation(
                        "provider_not_configured",
                        format!("Background-removal backend '{backend}' cannot be called: {e}"),
                    )
                })?;
            }
        }
        let paid = plan.estimated_cost_usd > 0.0;
        if paid && !valid.confirm_spend {
            return Err(ServiceError::Policy {
                code: "spend_confirmation_required",
                message: format!(
                    "Run mode requires explicit spend confirmation (estimated {:.4} USD); send confirm_spend: true",
                    plan.estimated_cost_usd
                ),
            });
        }
        if let Some(budget) = plan.budget_usd
            && plan.estimated_cost_usd > budget
        {
            return Err(ServiceError::Policy {
                code: "budget_exceeded",
                message: format!(
                    "Estimated cost {:.4} USD exceeds the run budget of {budget:.4} USD",
                    plan.estimated_cost_usd
                ),
            });
        }
        if let Some(cap) = plan.manifest.policy.project_budget_usd {
            let spent = crate::ledger::project_spend(db, project.id).await?;
            if spent + plan.estimated_cost_usd > cap {
                return Err(ServiceError::Policy {
                    code: "project_budget_exceeded",
                    message: format!(
                        "Project has spent {spent:.4} USD; this run's estimate of {:.4} USD would exceed its budget of {cap:.4} USD",
                        plan.estimated_cost_usd
                    ),
                });
            }
        }
        // A cheap early refusal; the authoritative check is atomic with the
        // insert (`store::create_run`).
        store::refuse_if_full(open_runs?, deps.config.max_queued_runs)?;
    }
    // Style references: the request's, else the manifest's; checked like scenes.
    let style_refs = if plan.style_refs.is_empty() {
        &plan.manifest.style_refs
    } else {
        &plan.style_refs
    };
    if style_refs.len() > MAX_STYLE_REFS {
        return Err(ServiceError::validation(
            "invalid_request",
            format!("At most {MAX_STYLE_REFS} style references per run"),
        ));
    }
    let style = scenes::resolve(
        db,
        project.id,
        &store_,
        style_refs,
        deps.config.limits,
        scenes::Prompts::Refused,
    )
    .await?;
    // Started with its insert when this node's queue would start it at once
    // (nothing of the project waiting here, the project not paused, room on
    // this node) and this node may lease: the database still checks the
    // project's room across the cluster.
    let start_here = plan.mode == Mode::Run
        && super::lifecycle::may_lease(deps)
        && engine.queue.would_admit(project.id).await;
    let mut created = store::create_run(
        db,
        &deps.hub,
        &store_,
        principal,
        project,
        &plan,
        resolved,
        style,
        deps.config.job_max_attempts,
        Some(deps.config.max_queued_runs),
        Some(&deps.node_id),
        start_here.then_some(deps),
    )
    .await?;
    if plan.mode == Mode::Run {
        // Owned by this node since its commit: straight to the queue (with
        // the workers of its first jobs when it started with its insert).
        let here = super::lifecycle::Created {
            store: store_.clone(),
            project_slug: project.slug.as_str().into(),
        };
        let first = match created.started.take() {
            Some(jobs) => Some(Box::new(
                super::lifecycle::leased(
                    deps,
                    None,
                    Some(&here),
                    std::sync::Arc::new(created.run.clone()),
                    jobs,
                )
                .await?,
            )),
            None => None,
        };
        engine
            .submit_created(created.run.id, project.id, here, first)
            .await?;
    }
    Ok(Triggered { plan, created })
}
