//! Quality, costs, exports, audit, conversations, instructions and tokens;
//! and the tokens and audit events of no project.

use std::collections::{BTreeMap, HashMap, HashSet};

use entities::*;
use serde_json::{Value, json};
use uuid::Uuid;

use super::source::LegacyRow;
use super::*;
use super::{project::*, read::*, users::*};
use crate::time;

/// A run id stored in a row: `Ok(None)` when empty, `Err(())` when it
/// names a run that does not exist (the row is an orphan).
pub(super) fn run_ref(m: &Mapper<'_>, r: &LegacyRow) -> Result<Option<Uuid>, ()> {
    match m.legacy.reference("runs", r.text(&["run_id"])) {
        None => Ok(None),
        Some(id) if m.runs.contains(&id) => Ok(Some(id)),
        Some(_) => Err(()),
    }
}

pub(super) fn instruction_status(raw: Option<String>) -> &'static str {
    match raw
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("draft" | "pending") => "pending",
        Some("confirmed") => "confirmed",
        Some("done") => "done",
        Some("canceled" | "cancelled") => "canceled",
        // `running`: a worker of the earlier system held it; it is not
        // running here.
        _ => "failed",
    }
}

/// Quality, costs, exports, audit, conversations, instructions, tokens.
pub(super) async fn map_records(
    m: &mut Mapper<'_>,
    users: &HashMap<String, Uuid>,
) -> Result<(), ServiceError> {
    let project = m.project;
    let legacy = m.legacy;
    for r in legacy.of(project, "quality_reports") {
        m.count("quality_reports").read += 1;
        let (Some(raw), Ok(run)) = (r.text(&["id"]), run_ref(m, r)) else {
            m.orphan("quality_reports");
            continue;
        };
        m.batch
            .quality
            .push(quality_reports::ActiveModel::from(quality_reports::Model {
                id: legacy.id("quality_reports", &raw),
                project_id: project,
                run_id: run,
                job_id: None,
                candidate_id: None,
                asset_id: m.known_asset(r.text(&["asset_id"])),
                report_type: r
                    .text(&["report_type"])
                    .unwrap_or_else(|| "output_guard".into()),
                grade: r.text(&["grade"]),
                hard_failures: r.int(&["hard_failures"]).unwrap_or(0) as i32,
                soft_warnings: r.int(&["soft_warnings"]).unwrap_or(0) as i32,
                avg_chroma_exceed: r.real(&["avg_chroma_exceed"]).unwrap_or(0.0),
                summary_json: r.object(&["summary_json", "meta_json"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "cost_events") {
        m.count("cost_events").read += 1;
        let (Some(raw), Ok(run)) = (r.text(&["id"]), run_ref(m, r)) else {
            m.orphan("cost_events");
            continue;
        };
        // The earlier ingest stored the job's key here, not its id.
        let job_text = r.text(&["job_id"]);
        let job = job_text.as_ref().and_then(|j| {
            let by_id = legacy.id("run_jobs", j);
            run.and_then(|run| m.job_keys.get(&(run, j.clone())).copied())
                .or_else(|| m.job_keys.values().find(|v| **v == by_id).copied())
        });
        let mut meta = r.object(&["meta_json"]);
        if let (Some(o), Some(j)) = (meta.as_object_mut(), job_text) {
            o.entry("legacy_job").or_insert(json!(j));
        }
        let units = r.real(&["units"]).unwrap_or(0.0);
        let total = r.real(&["total_cost_usd"]).unwrap_or(0.0);
        m.batch
            .costs
            .push(cost_events::ActiveModel::from(cost_events::Model {
                id: legacy.id("cost_events", &raw),
                project_id: project,
                run_id: run,
                job_id: job,
                provider_call_id: None,
                provider_code: r
                    .text(&["provider_code"])
                    .unwrap_or_else(|| "unknown".into()),
                model_name: r.text(&["model_name"]),
                event_type: r
                    .text(&["event_type"])
                    .unwrap_or_else(|| "legacy_event".into()),
                units,
                unit_cost_usd: r.real(&["unit_cost_usd"]).unwrap_or(if units > 0.0 {
                    total / units
                } else {
                    0.0
                }),
                total_cost_usd: total,
                currency: r.text(&["currency"]).unwrap_or_else(|| "USD".into()),
                meta_json: meta,
                billing: "billed".into(),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "project_exports") {
        m.count("project_exports").read += 1;
        let (Some(raw), Ok(run)) = (r.text(&["id"]), run_ref(m, r)) else {
            m.orphan("project_exports");
            continue;
        };
        let path = r.text(&["rel_path", "storage_uri"]);
        let asset = m
            .path_asset(path.clone(), "export", (run, None, None))
            .await?;
        m.report.normalised.export += asset.is_some() as u64;
        m.batch
            .exports
            .push(project_exports::ActiveModel::from(project_exports::Model {
                id: legacy.id("project_exports", &raw),
                project_id: project,
                run_id: run,
                status: r.text(&["status"]).unwrap_or_else(|| "completed".into()),
                export_format: r
                    .text(&["export_format"])
                    .unwrap_or_else(|| "unknown".into()),
                storage_uri: r.text(&["storage_uri"]),
                rel_path: r.text(&["rel_path"]),
                file_size_bytes: r.int(&["file_size_bytes"]),
                checksum_sha256: r.text(&["checksum_sha256"]),
                export_asset_id: asset,
                manifest_json: r.object(&["manifest_json"]),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                completed_at: r.time(&["completed_at"]),
            }));
    }
    for r in legacy.of(project, "audit_events") {
        m.count("audit_events").read += 1;
        if let Some(row) = audit_row(legacy, users, r, Some(project), m.now) {
            m.batch.audit.push(row);
        } else {
            m.orphan("audit_events");
        }
    }
    let mut sessions = HashSet::new();
    for r in legacy.of(project, "chat_sessions") {
        m.count("chat_sessions").read += 1;
        let Some(raw) = r.text(&["id"]) else {
            m.orphan("chat_sessions");
            continue;
        };
        let id = legacy.id("chat_sessions", &raw);
        sessions.insert(id);
        m.batch
            .sessions
            .push(chat_sessions::ActiveModel::from(chat_sessions::Model {
                id,
                project_id: project,
                title: r.text_or_empty("title"),
                status: r.text(&["status"]).unwrap_or_else(|| "active".into()),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
                updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
            }));
    }
    for r in legacy.of(project, "chat_messages") {
        m.count("chat_messages").read += 1;
        let session = legacy.reference("chat_sessions", r.text(&["session_id"]));
        let (Some(raw), Some(session)) =
            (r.text(&["id"]), session.filter(|s| sessions.contains(s)))
        else {
            m.orphan("chat_messages");
            continue;
        };
        m.batch
            .messages
            .push(chat_messages::ActiveModel::from(chat_messages::Model {
                id: legacy.id("chat_messages", &raw),
                project_id: project,
                session_id: session,
                role: r.text(&["role"]).unwrap_or_else(|| "user".into()),
                content: r.text_or_empty("content"),
                created_at: r.time(&["created_at"]).unwrap_or(m.now),
            }));
    }
    let mut instructions = HashSet::new();
    for r in legacy.of(project, "agent_instructions") {
        m.count("agent_instructions").read += 1;
        let Some(raw) = r.text(&["id"]) else {
            m.orphan("agent_instructions");
            continue;
        };
        let id = legacy.id("agent_instructions", &raw);
        instructions.insert(id);
        let status = instruction_status(r.text(&["status"]));
        let interrupted = status == "failed" && r.text(&["status"]).as_deref() == Some("running");
        m.batch
            .instructions
            .push(agent_instructions::ActiveModel::from(
                agent_instructions::Model {
                    id,
                    project_id: project,
                    instruction_text: r.text_or_empty("instruction_text"),
                    status: status.into(),
                    attempts: r.int(&["attempts"]).unwrap_or(0) as i32,
                    max_attempts: r.int(&["max_attempts"]).unwrap_or(3) as i32,
                    next_attempt_at: None,
                    last_error: if interrupted {
                        Some("running in the earlier system when it was imported".into())
                    } else {
                        r.text(&["last_error"])
                    },
                    locked_by: None,
                    locked_at: None,
                    agent_response_json: match r.json(&["agent_response_json"]) {
                        Value::Null => None,
                        v => Some(v),
                    },
                    created_at: r.time(&["created_at"]).unwrap_or(m.now),
                    updated_at: r.time(&["updated_at", "created_at"]).unwrap_or(m.now),
                    confirmed_at: r.time(&["confirmed_at"]),
                    canceled_at: r.time(&["canceled_at"]),
                },
            ));
    }
    for r in legacy.of(project, "agent_instruction_events") {
        m.count("agent_instruction_events").read += 1;
        let instruction = legacy.reference("agent_instructions", r.text(&["instruction_id"]));
        let (Some(raw), Some(instruction)) = (
            r.text(&["id"]),
            instruction.filter(|i| instructions.contains(i)),
        ) else {
            m.orphan("agent_instruction_events");
            continue;
        };
        m.batch
            .instruction_events
            .push(agent_instruction_events::ActiveModel::from(
                agent_instruction_events::Model {
                    id: legacy.id("agent_instruction_events", &raw),
                    project_id: project,
                    instruction_id: instruction,
                    event_type: r.text(&["event_type"]).unwrap_or_else(|| "note".into()),
                    message: r.text(&["message"]),
                    created_at: r.time(&["created_at"]).unwrap_or(m.now),
                },
            ));
    }
    for r in legacy.of(project, "api_tokens") {
        m.count("api_tokens").read += 1;
        match token_row(legacy, users, r, Some(project)) {
            Some(t) => m.batch.tokens.push(t),
            None => m.orphan("api_tokens"),
        }
    }
    Ok(())
}

/// A token, its hash carried over so the clients holding it keep working.
pub(super) fn token_row(
    legacy: &Legacy,
    users: &HashMap<String, Uuid>,
    r: &LegacyRow,
    project: Option<Uuid>,
) -> Option<api_tokens::ActiveModel> {
    let raw = r.text(&["id"])?;
    let hash = r.text(&["token_hash"])?;
    let user = owner(users, r, &["user_id"])?;
    let created = r.time(&["created_at"]).unwrap_or_else(time::now);
    Some(api_tokens::ActiveModel::from(api_tokens::Model {
        id: legacy.id("api_tokens", &raw),
        user_id: user,
        project_id: project,
        token_prefix: r
            .text(&["token_prefix"])
            .unwrap_or_else(|| hash.chars().take(8).collect()),
        token_hash: hash.to_ascii_lowercase(),
        label: r.text(&["label"]).unwrap_or_else(|| "imported".into()),
        expires_at: r.time(&["expires_at"]),
        revoked_at: r.time(&["revoked_at"]),
        last_used_at: r.time(&["last_used_at"]),
        created_at: created,
        created_by_token_id: None,
    }))
}

pub(super) fn audit_row(
    legacy: &Legacy,
    users: &HashMap<String, Uuid>,
    r: &LegacyRow,
    project: Option<Uuid>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<audit_events::ActiveModel> {
    let raw = r.text(&["id"])?;
    let code = r.text(&["event_code"])?;
    Some(audit_events::ActiveModel::from(audit_events::Model {
        id: legacy.id("audit_events", &raw),
        project_id: project,
        actor_user_id: owner(users, r, &["actor_user_id"]),
        actor_token_id: None,
        event_code: code,
        payload_json: match r.json(&["payload_json"]) {
            Value::Null => json!({}),
            v => v,
        },
        request_id: None,
        created_at: r.time(&["created_at"]).unwrap_or(now),
    }))
}

/// Tokens and audit events that belong to no project.
pub async fn import_global(
    target: &ImportTarget<'_>,
    legacy: &Legacy,
    all_users: &Users,
    dry_run: bool,
) -> Result<BTreeMap<&'static str, TableCounts>, ServiceError> {
    let users = &all_users.map;
    let mut counts: BTreeMap<&'static str, TableCounts> = BTreeMap::new();
    let now = time::now();
    let tokens: Vec<_> = legacy
        .global_tokens
        .iter()
        .filter_map(|r| token_row(legacy, users, r, None))
        .collect();
    let audit: Vec<_> = legacy
        .global_audit
        .iter()
        .filter_map(|r| audit_row(legacy, users, r, None, now))
        .collect();
    let txn = crate::db::begin_write(target.db).await?;
    all_users.visible_in(&txn).await?;
    for (table, read, kept, inserted) in [
        (
            "api_tokens",
            legacy.global_tokens.len() as u64,
            tokens.len() as u64,
            crate::db::insert_new(&txn, tokens).await?,
        ),
        (
            "audit_events",
            legacy.global_audit.len() as u64,
            audit.len() as u64,
            crate::db::insert_new(&txn, audit).await?,
        ),
    ] {
        counts.insert(
            table,
            TableCounts {
                read,
                imported: inserted,
                unchanged: kept - inserted,
                orphaned: read - kept,
            },
        );
    }
    finish(txn, dry_run).await?;
    Ok(counts)
}
