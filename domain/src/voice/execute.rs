//! Running a recorded voice request, and settling what a stopped process
//! left.

use entities::{assets, chat_messages, chat_sessions, projects, provider_calls, voice_requests};
use providers::voice::{SpeakRequest, TranscribeRequest};
use providers::{CallOutcome, ProviderError};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::json;
use uuid::Uuid;

use super::audio::{self, AudioFormat};
use super::{SPEECH, audio_error, not_configured, project_budget, publish, status};
use crate::audit::{self, AuditEntry};
use crate::runs::calls;
use crate::runs::deps::EngineDeps;
use crate::status::CallStatus;
use crate::{Principal, ServiceError, time};

/// Runs a queued request to its end: claims it, reserves the call's bound,
/// calls the provider, and records the outcome. A request another worker
/// claimed, or that is not queued, is left alone.
#[tracing::instrument(skip(deps))]
pub async fn execute(deps: &EngineDeps, id: Uuid) -> Result<(), ServiceError> {
    // Shutting down: left queued, run at the next start.
    if deps.drain.is_draining() {
        return Ok(());
    }
    let claimed = voice_requests::Entity::update_many()
        .col_expr(voice_requests::Column::Status, Expr::value(status::RUNNING))
        .col_expr(voice_requests::Column::UpdatedAt, Expr::value(time::now()))
        .filter(voice_requests::Column::Id.eq(id))
        .filter(voice_requests::Column::Status.eq(status::QUEUED))
        .exec(&deps.db)
        .await?
        .rows_affected;
    if claimed == 0 {
        return Ok(());
    }
    let mut request = voice_requests::Entity::find_by_id(id)
        .one(&deps.db)
        .await?
        .ok_or_else(|| ServiceError::missing("voice request", id))?;
    // Which node runs it: only that node's next start settles it if it
    // stops mid-call (another node's running requests are not its to touch).
    request.meta_json["node_id"] = json!(deps.node_id);
    voice_requests::Entity::update_many()
        .col_expr(
            voice_requests::Column::MetaJson,
            Expr::value(request.meta_json.clone()),
        )
        .filter(voice_requests::Column::Id.eq(id))
        .exec(&deps.db)
        .await?;
    let call_id = call_of(&request)
        .ok_or_else(|| ServiceError::Internal("a voice request without its call".into()))?;
    let call = provider_calls::Entity::find_by_id(call_id)
        .one(&deps.db)
        .await?
        .ok_or_else(|| ServiceError::missing("provider call", call_id))?;
    publish(
        &deps.hub,
        &request,
        1,
        "voice.started",
        json!({
            "voice_request_id": id, "request_type": request.request_type,
        }),
    );
    let outcome = run(deps, &request, &call).await;
    let (state, error) = match &outcome {
        Ok(()) => (status::DONE, None),
        Err(e) => (status::FAILED, Some((e.code(), e.public_message()))),
    };
    if let Some((code, message)) = &error {
        // An error of ours mid-call leaves no call pending (a reservation
        // held forever would count against the budget forever).
        settle_if_pending(&deps.db, call_id).await?;
        finish_failed(&deps.db, id, code, message).await?;
    }
    let cost = provider_calls::Entity::find_by_id(call_id)
        .one(&deps.db)
        .await?
        .map(|c| c.actual_cost_usd.unwrap_or(0.0) + c.possibly_billed_usd);
    publish(
        &deps.hub,
        &request,
        2,
        "voice.finished",
        json!({
            "voice_request_id": id, "request_type": request.request_type, "status": state,
            "error_code": error.as_ref().map(|e| e.0), "cost_usd": cost,
        }),
    );
    Ok(())
}

async fn finish_failed(
    db: &DatabaseConnection,
    id: Uuid,
    code: &str,
    message: &str,
) -> Result<(), ServiceError> {
    let Some(mut row) = voice_requests::Entity::find_by_id(id).one(db).await? else {
        return Ok(());
    };
    row.meta_json["error_code"] = json!(code);
    row.meta_json["error_message"] = json!(message);
    voice_requests::Entity::update_many()
        .col_expr(voice_requests::Column::Status, Expr::value(status::FAILED))
        .col_expr(voice_requests::Column::MetaJson, Expr::value(row.meta_json))
        .col_expr(voice_requests::Column::UpdatedAt, Expr::value(time::now()))
        .filter(voice_requests::Column::Id.eq(id))
        .filter(voice_requests::Column::Status.ne(status::DONE))
        .exec(db)
        .await?;
    Ok(())
}

/// A provider failure as the request records it.
fn provider_failed(e: &ProviderError) -> ServiceError {
    ServiceError::Conflict {
        code: e.code(),
        message: e.to_string(),
    }
}

/// The attempts of one request's call; `Err`: why it failed (the call's
/// record already says so).
async fn run(
    deps: &EngineDeps,
    request: &voice_requests::Model,
    call: &provider_calls::Model,
) -> Result<(), ServiceError> {
    let bound = request.meta_json["estimated_cost_usd"]
        .as_f64()
        .unwrap_or(0.0);
    let project = projects::Entity::find_by_id(request.project_id)
        .one(&deps.db)
        .await?
        .ok_or_else(|| ServiceError::missing("project", request.project_id))?;
    let code = request.provider_code.clone().unwrap_or_default();
    let api_key = if code == "openai" {
        crate::secrets::provider_key(&deps.db, deps.secret_keys.as_ref(), project.id, "openai")
            .await?
    } else {
        None
    };
    let max_attempts = Ord::max(deps.config.retry.max_attempts, 1);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if bound > 0.0 {
            let spend = deps.spend.as_ref().ok_or_else(|| {
                ServiceError::Internal("the engine's spend gate is not running".into())
            })?;
            if let Err(refused) = spend
                .reserve(crate::ports::SpendRequest {
                    fence: None,
                    call_id: call.id,
                    project_id: project.id,
                    run_id: None,
                    attempt: attempt as i32,
                    amount: bound,
                    run_budget: None,
                    project_budget: project_budget(&project),
                })
                .await
            {
                calls::fail(
                    &deps.db,
                    None,
                    call.id,
                    refused.code(),
                    &refused.to_string(),
                    false,
                )
                .await?;
                return Err(refused);
            }
            calls::mark_sent(&deps.db, None, call.id).await?;
        } else {
            start_free(&deps.db, call.id, attempt).await?;
        }
        // A graceful shutdown waits for this call's answer.
        let _calling = deps.drain.call_started();
        let result = match request.request_type.as_str() {
            SPEECH => speak(deps, request, api_key.clone()).await,
            _ => transcribe(deps, request, api_key.clone()).await,
        };
        let err = match result {
            Ok(done) => return complete(deps, request, call, attempt, done).await,
            Err(Failure::Ours(e)) => {
                calls::fail(
                    &deps.db,
                    None,
                    call.id,
                    e.code(),
                    &e.public_message(),
                    bound <= 0.0,
                )
                .await?;
                return Err(e);
            }
            Err(Failure::Provider(e)) => e,
        };
        if err.outcome() == CallOutcome::Unknown {
            // Possibly billed: kept as spent, never sent again.
            calls::settle_unknown(&deps.db, None, call, attempt, bound, &err).await?;
            return Err(provider_failed(&err));
        }
        calls::fail(
            &deps.db,
            None,
            call.id,
            err.code(),
            &providers::scrub_remote_message(&err.to_string(), ""),
            bound <= 0.0,
        )
        .await?;
        if !err.is_retryable() || attempt >= max_attempts || deps.drain.is_draining() {
            return Err(provider_failed(&err));
        }
        let seed = u64::from(attempt) ^ call.id.as_u128() as u64;
        let wait = deps
            .config
            .retry
            .delay(attempt, seed)
            .max(err.retry_after().unwrap_or_default());
        tokio::time::sleep(wait).await;
    }
}

/// A free call's attempt starts (no reservation, sent at once).
async fn start_free(
    db: &DatabaseConnection,
    call_id: Uuid,
    attempt: u32,
) -> Result<(), ServiceError> {
    provider_calls::Entity::update_many()
        .col_expr(
            provider_calls::Column::Status,
            Expr::value(CallStatus::Pending),
        )
        .col_expr(provider_calls::Column::Attempt, Expr::value(attempt as i32))
        .col_expr(provider_calls::Column::StartedAt, Expr::value(time::now()))
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(time::now()))
        .filter(provider_calls::Column::Id.eq(call_id))
        .exec(db)
        .await?;
    Ok(())
}

enum Failure {
    /// Nothing reached a provider (a missing file, an engine gone).
    Ours(ServiceError),
    Provider(ProviderError),
}

/// What a delivered attempt produced.
enum Done {
    Speech {
        audio: Vec<u8>,
        format: AudioFormat,
        duration_secs: Option<f64>,
        cost: providers::Cost,
        request_id: Option<String>,
    },
    Transcript(providers::voice::Transcript),
}

async fn speak(
    deps: &EngineDeps,
    request: &voice_requests::Model,
    api_key: Option<providers::credentials::Secret>,
) -> Result<Done, Failure> {
    let r = &request.meta_json["request"];
    let text = request.input_text.clone().unwrap_or_default();
    let voice = r["voice"].as_str().unwrap_or_default().to_string();
    let speed = r["speed"].as_f64().unwrap_or(1.0);
    let (mut audio, cost, request_id) = match request.provider_code.as_deref() {
        Some("espeak") => {
            let espeak = deps
                .voice
                .espeak
                .as_ref()
                .ok_or_else(|| Failure::Ours(not_configured("espeak")))?;
            let audio = espeak.speak(&text, &voice, speed).await.map_err(|e| {
                Failure::Ours(ServiceError::Unavailable {
                    code: "voice_engine_failed",
                    message: e.to_string(),
                })
            })?;
            (audio, providers::Cost::fixed(0.0), None)
        }
        _ => {
            let openai = deps
                .voice
                .openai
                .as_ref()
                .ok_or_else(|| Failure::Ours(not_configured("openai")))?;
            let speech = openai
                .speak(SpeakRequest {
                    text,
                    model: r["model"].as_str().unwrap_or_default().to_string(),
                    voice,
                    format: r["format"].as_str().unwrap_or("mp3").to_string(),
                    speed,
                    api_key,
                })
                .await
                .map_err(Failure::Provider)?;
            (speech.audio, speech.cost, speech.request_id)
        }
    };
    // Opus comes in an Ogg container; what arrived must be the audio asked for.
    let want = match r["format"].as_str().unwrap_or("mp3") {
        "opus" => AudioFormat::Ogg,
        "wav" => AudioFormat::Wav,
        "flac" => AudioFormat::Flac,
        _ => AudioFormat::Mp3,
    };
    let info = match audio::inspect(&audio) {
        Ok(info) if info.format == want => info,
        Ok(_) | Err(_) => {
            return Err(Failure::Provider(ProviderError::Malformed {
                message: format!("the speech is not {} audio", want.name()),
                cost: (cost.usd > 0.0).then_some(cost),
            }));
        }
    };
    if info.format == AudioFormat::Wav {
        audio::fix_wav_sizes(&mut audio);
    }
    Ok(Done::Speech {
        audio,
        format: info.format,
        duration_secs: info.duration_secs,
        cost,
        request_id,
    })
}

async fn transcribe(
    deps: &EngineDeps,
    request: &voice_requests::Model,
    api_key: Option<providers::credentials::Secret>,
) -> Result<Done, Failure> {
    let openai = deps
        .voice
        .openai
        .as_ref()
        .ok_or_else(|| Failure::Ours(not_configured("openai")))?;
    let r = &request.meta_json["request"];
    let asset_id = request.meta_json["input_asset_id"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
        .ok_or_else(|| Failure::Ours(ServiceError::Internal("no input audio".into())))?;
    let (_, audio) = load_asset(deps, request.project_id, asset_id)
        .await
        .map_err(Failure::Ours)?;
    let format = audio::sniff(&audio).map_err(|e| Failure::Ours(audio_error(e)))?;
    let transcript = openai
        .transcribe(TranscribeRequest {
            audio,
            file_name: format!("audio.{}", format.name()),
            mime: format.mime(),
            model: r["model"].as_str().unwrap_or_default().to_string(),
            language: r["language"].as_str().map(str::to_string),
            prompt: r["prompt"].as_str().map(str::to_string),
            // Unknown duration: priced at the reservation's bound.
            measured_seconds: r["duration_secs"]
                .as_f64()
                .or(Some(deps.voice.limits.max_audio_secs)),
            api_key,
        })
        .await
        .map_err(Failure::Provider)?;
    Ok(Done::Transcript(transcript))
}

async fn load_asset(
    deps: &EngineDeps,
    project_id: Uuid,
    asset_id: Uuid,
) -> Result<(assets::Model, Vec<u8>), ServiceError> {
    let project = projects::Entity::find_by_id(project_id)
        .one(&deps.db)
        .await?
        .ok_or_else(|| ServiceError::missing("project", project_id))?;
    let files = crate::projects::project_files(&deps.db, deps.file_access(), &project).await?;
    crate::assets::load_bytes(&deps.db, &files, asset_id).await
}

/// A delivered attempt, made durable at once: a speech file is written and
/// synced first; then the call's success with its actual cost, the cost
/// event, the request's result, a chat message and the audit entry commit
/// together.
async fn complete(
    deps: &EngineDeps,
    request: &voice_requests::Model,
    call: &provider_calls::Model,
    attempt: u32,
    done: Done,
) -> Result<(), ServiceError> {
    let now = time::now();
    let mut meta = request.meta_json.clone();
    let (cost, provider_request_id, output) = match done {
        Done::Speech {
            audio,
            format,
            duration_secs,
            cost,
            request_id,
        } => {
            let project = projects::Entity::find_by_id(request.project_id)
                .one(&deps.db)
                .await?
                .ok_or_else(|| ServiceError::missing("project", request.project_id))?;
            let files =
                crate::projects::project_files(&deps.db, deps.file_access(), &project).await?;
            let key = format!("voice/{}.{}", request.id, format.name());
            let stored = super::put_audio(
                &deps.db,
                &files,
                (request.project_id, "voice_output", &key),
                audio,
                format,
                json!({ "voice_request_id": request.id, "duration_secs": duration_secs }),
                None,
            )
            .await?;
            let row = stored.row;
            meta["duration_secs"] = json!(duration_secs);
            (cost, request_id, Some((row, stored.fresh)))
        }
        Done::Transcript(t) => {
            meta["transcript"] = json!(t.text);
            meta["billed_seconds"] = json!(t.billed_seconds);
            (t.cost, t.request_id, None)
        }
    };
    meta["cost_usd"] = json!(cost.usd);
    meta["cost"] = cost.detail.clone();
    let txn = crate::db::begin_write(&deps.db).await?;
    let output_asset_id = match &output {
        Some((row, fresh)) => {
            if *fresh {
                assets::Entity::insert(assets::ActiveModel::from(row.clone()))
                    .exec_without_returning(&txn)
                    .await?;
            }
            Some(row.id)
        }
        None => None,
    };
    provider_calls::Entity::update_many()
        .col_expr(
            provider_calls::Column::Status,
            Expr::value(CallStatus::Succeeded),
        )
        .col_expr(provider_calls::Column::Attempt, Expr::value(attempt as i32))
        .col_expr(provider_calls::Column::ActualCostUsd, Expr::value(cost.usd))
        .col_expr(
            provider_calls::Column::ResultAssetId,
            Expr::value(output_asset_id),
        )
        .col_expr(
            provider_calls::Column::ProviderRequestId,
            Expr::value(provider_request_id),
        )
        .col_expr(
            provider_calls::Column::ResponseJson,
            Expr::value(json!({ "cost": cost.detail })),
        )
        .col_expr(
            provider_calls::Column::ErrorCode,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            provider_calls::Column::ErrorMessage,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            provider_calls::Column::SentAt,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .col_expr(provider_calls::Column::FinishedAt, Expr::value(now))
        .col_expr(provider_calls::Column::UpdatedAt, Expr::value(now))
        .filter(provider_calls::Column::Id.eq(call.id))
        .exec(&txn)
        .await?;
    if cost.usd > 0.0 {
        let event = calls::cost_event(
            call,
            cost.usd,
            None,
            "billed",
            json!({ "attempt": attempt, "cost": cost.detail, "voice_request_id": request.id }),
        );
        entities::cost_events::Entity::insert(entities::cost_events::ActiveModel::from(event))
            .exec_without_returning(&txn)
            .await?;
    }
    if let (Some(session_id), Some(text)) = (request.session_id, meta["transcript"].as_str()) {
        let message = chat_messages::Model {
            id: Uuid::now_v7(),
            project_id: request.project_id,
            session_id,
            role: "user".into(),
            content: text.to_string(),
            created_at: now,
        };
        meta["chat_message_id"] = json!(message.id);
        chat_messages::Entity::insert(chat_messages::ActiveModel::from(message))
            .exec_without_returning(&txn)
            .await?;
        chat_sessions::Entity::update_many()
            .col_expr(chat_sessions::Column::UpdatedAt, Expr::value(now))
            .filter(chat_sessions::Column::Id.eq(session_id))
            .exec(&txn)
            .await?;
    }
    voice_requests::Entity::update_many()
        .col_expr(voice_requests::Column::Status, Expr::value(status::DONE))
        .col_expr(
            voice_requests::Column::OutputAssetId,
            Expr::value(output_asset_id),
        )
        .col_expr(voice_requests::Column::MetaJson, Expr::value(meta))
        .col_expr(voice_requests::Column::UpdatedAt, Expr::value(now))
        .filter(voice_requests::Column::Id.eq(request.id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        AuditEntry {
            principal: &Principal::Scheduler,
            project_id: Some(request.project_id),
            event_code: "voice.completed",
            payload: json!({ "voice_request_id": request.id, "request_type": request.request_type,
                "provider": request.provider_code, "cost_usd": cost.usd, "output_asset_id": output_asset_id }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(())
}

/// At start: what this node's stopped process left (requests it claimed
/// before `started`). A request whose call was sent had an unknown outcome —
/// kept as possibly billed, the request failed, nothing sent again; one that
/// was claimed but not sent is queued again. Returns the queued requests, to
/// run.
pub async fn recover(
    db: &DatabaseConnection,
    node_id: &str,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Uuid>, ServiceError> {
    let running = voice_requests::Entity::find()
        .filter(voice_requests::Column::Status.eq(status::RUNNING))
        .filter(voice_requests::Column::UpdatedAt.lt(started))
        .all(db)
        .await?;
    let mine =
        |r: &voice_requests::Model| r.meta_json["node_id"].as_str().is_none_or(|n| n == node_id);
    for r in running.into_iter().filter(mine) {
        let call_id = call_of(&r);
        let call = match call_id {
            Some(id) => provider_calls::Entity::find_by_id(id).one(db).await?,
            None => None,
        };
        let sent = call
            .as_ref()
            .is_some_and(|c| c.status == CallStatus::Pending && c.sent_at.is_some());
        if let Some(call) = call.filter(|c| c.status == CallStatus::Pending) {
            calls::settle_abandoned_call(db, &call).await?;
        }
        if sent {
            finish_failed(
                db,
                r.id,
                "provider_outcome_unknown",
                "the call was in flight when the service stopped; it may have been billed and is not sent again",
            )
            .await?;
        } else {
            voice_requests::Entity::update_many()
                .col_expr(voice_requests::Column::Status, Expr::value(status::QUEUED))
                .col_expr(voice_requests::Column::UpdatedAt, Expr::value(time::now()))
                .filter(voice_requests::Column::Id.eq(r.id))
                .filter(voice_requests::Column::Status.eq(status::RUNNING))
                .exec(db)
                .await?;
        }
    }
    Ok(voice_requests::Entity::find()
        .select_only()
        .column(voice_requests::Column::Id)
        .filter(voice_requests::Column::Status.eq(status::QUEUED))
        .order_by_asc(voice_requests::Column::CreatedAt)
        .into_tuple()
        .all(db)
        .await?)
}

/// A request whose task failed (an error of ours, a panic): its call is
/// settled as a stopped worker's, the request ends failed.
pub async fn abandon(db: &DatabaseConnection, id: Uuid) -> Result<(), ServiceError> {
    let Some(request) = voice_requests::Entity::find_by_id(id).one(db).await? else {
        return Ok(());
    };
    if let Some(call_id) = call_of(&request) {
        settle_if_pending(db, call_id).await?;
    }
    finish_failed(
        db,
        id,
        "internal_error",
        "the request stopped on an internal error",
    )
    .await
}

fn call_of(request: &voice_requests::Model) -> Option<Uuid> {
    request.meta_json["call_id"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
}

/// A call still pending whose sender is gone: sent, it is possibly billed;
/// not sent, it is released.
async fn settle_if_pending(db: &DatabaseConnection, call_id: Uuid) -> Result<(), ServiceError> {
    if let Some(call) = provider_calls::Entity::find_by_id(call_id).one(db).await?
        && call.status == CallStatus::Pending
    {
        calls::settle_abandoned_call(db, &call).await?;
    }
    Ok(())
}
