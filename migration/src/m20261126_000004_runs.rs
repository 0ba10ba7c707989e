//! The execution engine's durable state: runs, jobs (with leases, attempts and
//! heartbeats), candidates, the per-run event log, provider-call records keyed by
//! idempotency key, quality reports, the cost ledger and project exports.

use crate::columns::*;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: &[&str] = &[
    "runs",
    "run_jobs",
    "run_candidates",
    "run_events",
    "provider_calls",
    "quality_reports",
    "cost_events",
    "project_exports",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut runs = table("runs");
        project_owned(&mut runs, "runs");
        runs.col(string("run_mode"))
            .col(string("status"))
            .col(string_null("stage"))
            .col(string_null("time_of_day"))
            .col(string_null("weather"))
            .col(string_null("model_name"))
            .col(string_null("provider_code"))
            .col(string_null("image_size"))
            .col(string_null("image_quality"))
            .col(json_obj("settings_snapshot_json"))
            .col(json_obj("plan_json"))
            .col(double_null("budget_usd"))
            .col(double("estimated_cost_usd").default(0.0))
            .col(big_integer("last_event_seq").default(0))
            .col(string_null("run_log_key"))
            .col(text_null("last_error"))
            .col(timestamp_with_time_zone_null("started_at"))
            .col(timestamp_with_time_zone_null("finished_at"))
            .col(created_at())
            .col(updated_at());

        let mut jobs = table("run_jobs");
        project_owned(&mut jobs, "run_jobs");
        jobs.col(uuid("run_id"))
            .col(string("job_key"))
            .col(string_null("scene_ref"))
            .col(string("stage"))
            .col(integer("stage_index").default(0))
            .col(uuid_null("parent_job_id"))
            .col(uuid_null("retry_of_job_id"))
            .col(string("status"))
            .col(text_null("prompt_text"))
            .col(uuid_null("input_asset_id"))
            .col(integer_null("selected_candidate_index"))
            .col(uuid_null("final_asset_id"))
            .col(integer("attempt").default(0))
            .col(integer("max_attempts").default(3))
            .col(string_null("lease_owner"))
            .col(timestamp_with_time_zone_null("lease_expires_at"))
            .col(timestamp_with_time_zone_null("heartbeat_at"))
            .col(timestamp_with_time_zone_null("next_attempt_at"))
            .col(text_null("last_error"))
            .col(json_obj("meta_json"))
            .col(timestamp_with_time_zone_null("started_at"))
            .col(timestamp_with_time_zone_null("finished_at"))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut jobs,
            "run_jobs",
            "run_id",
            "runs",
            ForeignKeyAction::Cascade,
        );
        fk(
            &mut jobs,
            "run_jobs",
            "parent_job_id",
            "run_jobs",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut jobs,
            "run_jobs",
            "retry_of_job_id",
            "run_jobs",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut jobs,
            "run_jobs",
            "input_asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut jobs,
            "run_jobs",
            "final_asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );

        let mut candidates = table("run_candidates");
        project_owned(&mut candidates, "run_candidates");
        candidates
            .col(uuid("run_id"))
            .col(uuid("job_id"))
            .col(integer("candidate_index"))
            .col(string("status"))
            .col(uuid_null("output_asset_id"))
            .col(uuid_null("final_asset_id"))
            .col(integer("rank_hard_failures").default(0))
            .col(integer("rank_soft_warnings").default(0))
            .col(double("rank_avg_chroma_exceed").default(0.0))
            .col(json_obj("meta_json"))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut candidates,
            "run_candidates",
            "run_id",
            "runs",
            ForeignKeyAction::Cascade,
        );
        fk(
            &mut candidates,
            "run_candidates",
            "job_id",
            "run_jobs",
            ForeignKeyAction::Cascade,
        );
        fk(
            &mut candidates,
            "run_candidates",
            "output_asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut candidates,
            "run_candidates",
            "final_asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );

        let mut events = table("run_events");
        project_owned(&mut events, "run_events");
        events
            .col(uuid("run_id"))
            .col(big_integer("seq"))
            .col(string("event_type"))
            .col(uuid_null("job_id"))
            .col(json_obj("payload_json"))
            .col(created_at());
        fk(
            &mut events,
            "run_events",
            "run_id",
            "runs",
            ForeignKeyAction::Cascade,
        );

        let mut calls = table("provider_calls");
        project_owned(&mut calls, "provider_calls");
        calls
            .col(string_uniq("idempotency_key"))
            .col(uuid_null("run_id"))
            .col(uuid_null("job_id"))
            .col(uuid_null("candidate_id"))
            .col(string("provider_code"))
            .col(string("operation"))
            .col(string_null("model_name"))
            .col(string("status"))
            .col(integer("attempt").default(0))
            .col(double("reserved_cost_usd").default(0.0))
            .col(double_null("actual_cost_usd"))
            .col(json_obj("request_json"))
            .col(json_obj("response_json"))
            .col(uuid_null("result_asset_id"))
            .col(string_null("provider_request_id"))
            .col(string_null("error_code"))
            .col(text_null("error_message"))
            .col(timestamp_with_time_zone_null("started_at"))
            .col(timestamp_with_time_zone_null("finished_at"))
            .col(created_at())
            .col(updated_at());
        fk(
            &mut calls,
            "provider_calls",
            "run_id",
            "runs",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut calls,
            "provider_calls",
            "job_id",
            "run_jobs",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut calls,
            "provider_calls",
            "result_asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );

        let mut quality = table("quality_reports");
        project_owned(&mut quality, "quality_reports");
        quality
            .col(uuid_null("run_id"))
            .col(uuid_null("job_id"))
            .col(uuid_null("candidate_id"))
            .col(uuid_null("asset_id"))
            .col(string("report_type"))
            .col(string_null("grade"))
            .col(integer("hard_failures").default(0))
            .col(integer("soft_warnings").default(0))
            .col(double("avg_chroma_exceed").default(0.0))
            .col(json_obj("summary_json"))
            .col(created_at());
        fk(
            &mut quality,
            "quality_reports",
            "run_id",
            "runs",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut quality,
            "quality_reports",
            "asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );

        let mut costs = table("cost_events");
        project_owned(&mut costs, "cost_events");
        costs
            .col(uuid_null("run_id"))
            .col(uuid_null("job_id"))
            .col(uuid_null("provider_call_id"))
            .col(string("provider_code"))
            .col(string_null("model_name"))
            .col(string("event_type"))
            .col(double("units").default(0.0))
            .col(double("unit_cost_usd").default(0.0))
            .col(double("total_cost_usd").default(0.0))
            .col(string("currency").default("USD"))
            .col(json_obj("meta_json"))
            .col(created_at());
        fk(
            &mut costs,
            "cost_events",
            "run_id",
            "runs",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut costs,
            "cost_events",
            "provider_call_id",
            "provider_calls",
            ForeignKeyAction::SetNull,
        );

        let mut exports = table("project_exports");
        project_owned(&mut exports, "project_exports");
        exports
            .col(uuid_null("run_id"))
            .col(string("status"))
            .col(string("export_format"))
            .col(string_null("storage_uri"))
            .col(string_null("rel_path"))
            .col(big_integer_null("file_size_bytes"))
            .col(string_null("checksum_sha256"))
            .col(uuid_null("export_asset_id"))
            .col(json_obj("manifest_json"))
            .col(created_at())
            .col(timestamp_with_time_zone_null("completed_at"));
        fk(
            &mut exports,
            "project_exports",
            "run_id",
            "runs",
            ForeignKeyAction::SetNull,
        );
        fk(
            &mut exports,
            "project_exports",
            "export_asset_id",
            "assets",
            ForeignKeyAction::SetNull,
        );

        create_all(
            manager,
            vec![
                runs, jobs, candidates, events, calls, quality, costs, exports,
            ],
            vec![
                index("runs", "project_created", &["project_id", "created_at"]),
                index("runs", "status", &["status"]),
                index("run_jobs", "run_created", &["run_id", "created_at"]),
                index("run_jobs", "status_lease", &["status", "lease_expires_at"]),
                unique(
                    "run_candidates",
                    "job_index",
                    &["job_id", "candidate_index"],
                ),
                index("run_candidates", "run", &["run_id"]),
                unique("run_events", "run_seq", &["run_id", "seq"]),
                index(
                    "run_events",
                    "project_created",
                    &["project_id", "created_at"],
                ),
                index("provider_calls", "run", &["run_id"]),
                index(
                    "quality_reports",
                    "project_created",
                    &["project_id", "created_at"],
                ),
                index("quality_reports", "run", &["run_id"]),
                index(
                    "cost_events",
                    "project_created",
                    &["project_id", "created_at"],
                ),
                index("cost_events", "run", &["run_id"]),
                index(
                    "project_exports",
                    "project_created",
                    &["project_id", "created_at"],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}
