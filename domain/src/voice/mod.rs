//! Voice: speech to text (an audio asset → a transcript, optionally a chat
//! message) and text to speech (text → an audio asset), as background
//! requests with records.
//!
//! Spend safety is the image calls': every check (audio format, size and
//! duration; model, voice, format; the estimate, its confirmation and the
//! budgets) happens before anything is recorded; the request, its call
//! record (with an idempotency key) and the audit entry commit together; the
//! engine reserves the call's bound through the CostActor before it is
//! sent; a result is made durable the moment it arrives, with its actual
//! cost and cost event; an answer lost in transit is kept as possibly
//! billed and never sent again; a crash leaves nothing half-done (see
//! [`recover`]).

pub mod audio;

use std::sync::Arc;

use entities::{assets, chat_messages, chat_sessions, projects, provider_calls, voice_requests};
use providers::voice::{Espeak, OpenAiVoice, SpeakRequest, TranscribeRequest};
use providers::{CallOutcome, ProviderError};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::{self, AuditEntry};
use crate::runs::calls;
use crate::runs::deps::EngineDeps;
use crate::runs::events::{EventHub, RunEvent};
use crate::status::CallStatus;
use crate::{Principal, ServiceError, time};
use audio::{AudioError, AudioFormat};

/// The voice providers this node has, and its limits.
#[derive(Clone, Default)]
pub struct VoiceSetup {
    pub openai: Option<Arc<OpenAiVoice>>,
    pub espeak: Option<Arc<Espeak>>,
    pub limits: VoiceLimits,
}

#[derive(Clone, Copy, Debug)]
pub struct VoiceLimits {
    /// Audio to transcribe: at most this many bytes (OpenAI takes 25 MB).
    pub max_audio_bytes: usize,
    /// ... and this long, when its container says.
    pub max_audio_secs: f64,
    /// Text to speak (OpenAI takes 4,096 characters).
    pub max_text_chars: usize,
}

impl Default for VoiceLimits {
    fn default() -> Self {
        Self {
            max_audio_bytes: 25 * 1024 * 1024,
            max_audio_secs: 600.0,
            max_text_chars: 4096,
        }
    }
}

pub const TRANSCRIPTION: &str = "transcription";
pub const SPEECH: &str = "speech";

/// A voice request's states.
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
}

/// What a client asks to be spoken.
#[derive(Debug, Default)]
pub struct SpeechInput {
    pub text: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub voice: Option<String>,
    pub format: Option<String>,
    pub speed: Option<f64>,
    pub common: Common,
}

/// What a client asks to be transcribed: uploaded bytes, or an audio asset
/// of the project.
#[derive(Debug, Default)]
pub struct TranscriptionInput {
    pub audio: Option<Vec<u8>>,
    pub asset_id: Option<String>,
    pub model: Option<String>,
    pub language: Option<String>,
    pub prompt: Option<String>,
    pub session_id: Option<String>,
    pub common: Common,
}

/// Spend and idempotency, as for a run.
#[derive(Debug, Default)]
pub struct Common {
    pub confirm_spend: bool,
    pub budget_usd: Option<f64>,
    pub idempotency_key: Option<String>,
}

/// A submitted request: new, or the one an earlier submission with the same
/// idempotency key made.
pub struct Submitted {
    pub request: voice_requests::Model,
    pub created: bool,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::validation(code, message)
}

fn audio_error(e: AudioError) -> ServiceError {
    match e {
        AudioError::Empty => invalid("empty_audio", e.to_string()),
        AudioError::Unsupported => invalid("unsupported_audio_format", e.to_string()),
        AudioError::Corrupt(..) => invalid("invalid_audio", e.to_string()),
    }
}

/// Checks a speech request, and records it (with its call and audit entry)
/// for the engine to run.
pub async fn submit_speech(
    deps: &EngineDeps,
    project: &projects::Model,
    principal: &Principal,
    input: SpeechInput,
) -> Result<Submitted, ServiceError> {
    let setup = &deps.voice;
    let text = input
        .text
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ServiceError::required("text"))?;
    if text.chars().count() > setup.limits.max_text_chars {
        return Err(invalid(
            "text_too_long",
            format!(
                "Field 'text' is longer than {} characters",
                setup.limits.max_text_chars
            ),
        ));
    }
    let speed = input.speed.unwrap_or(1.0);
    if !(0.25..=4.0).contains(&speed) {
        return Err(invalid(
            "invalid_speed",
            "Field 'speed' must be between 0.25 and 4.0",
        ));
    }
    let provider = match input.provider.as_deref().map(str::trim) {
        Some(p) => p.to_ascii_lowercase(),
        None if setup.openai.is_some() => "openai".into(),
        None => "espeak".into(),
    };
    let chars = text.chars().count();
    let (model, voice, format, estimate) = match provider.as_str() {
        "openai" => {
            let openai = setup
                .openai
                .as_ref()
                .ok_or_else(|| not_configured("openai"))?;
            let s = openai.settings();
            let model = input.model.unwrap_or_else(|| s.speech_model.clone());
            let estimate = openai.speech_cost(&model, chars).ok_or_else(|| {
                invalid(
                    "invalid_model",
                    format!(
                        "Field 'model' must be one of: {}",
                        s.speech_usd_per_1k_chars
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            let voice = input.voice.unwrap_or_else(|| s.voice.clone());
            if !providers::voice::VOICES.contains(&voice.as_str()) {
                return Err(invalid(
                    "invalid_voice",
                    format!(
                        "Field 'voice' must be one of: {}",
                        providers::voice::VOICES.join(", ")
                    ),
                ));
            }
            let format = input.format.unwrap_or_else(|| "mp3".into());
            if !providers::voice::SPEECH_FORMATS.contains(&format.as_str()) {
                return Err(invalid(
                    "invalid_format",
                    format!(
                        "Field 'format' must be one of: {}",
                        providers::voice::SPEECH_FORMATS.join(", ")
                    ),
                ));
            }
            (model, voice, format, estimate)
        }
        "espeak" => {
            let espeak = setup
                .espeak
                .as_ref()
                .ok_or_else(|| not_configured("espeak"))?;
            if input.model.is_some() {
                return Err(invalid(
                    "invalid_model",
                    "The espeak provider takes no 'model'",
                ));
            }
            let voice = input
                .voice
                .unwrap_or_else(|| espeak.settings().voice.clone());
            // A voice is an argument of a program: a name, never an option.
            let fine = |c: char| c.is_ascii_alphanumeric() || "-_+".contains(c);
            if voice.is_empty()
                || voice.len() > 40
                || voice.starts_with('-')
                || !voice.chars().all(fine)
            {
                return Err(invalid(
                    "invalid_voice",
                    "Field 'voice' must be an espeak-ng voice name (letters, digits, - _ +)",
                ));
            }
            let format = input.format.unwrap_or_else(|| "wav".into());
            if format != "wav" {
                return Err(invalid(
                    "invalid_format",
                    "The espeak provider speaks 'wav' only",
                ));
            }
            espeak
                .available()
                .await
                .map_err(|e| ServiceError::Unavailable {
                    code: "voice_engine_unavailable",
                    message: e.to_string(),
                })?;
            ("espeak-ng".to_string(), voice, format, 0.0)
        }
        other => {
            return Err(invalid(
                "unknown_voice_provider",
                format!("Field 'provider' must be one of: openai, espeak (not '{other}')"),
            ));
        }
    };
    let request = json!({
        "model": model, "voice": voice, "format": format, "speed": speed, "characters": chars,
    });
    record(
        deps,
        project,
        principal,
        Prepared {
            request_type: SPEECH,
            provider,
            model,
            estimate,
            input_text: Some(text),
            session_id: None,
            request,
            input_asset: None,
            common: input.common,
        },
    )
    .await
}

fn not_configured(code: &str) -> ServiceError {
    invalid(
        "provider_not_configured",
        format!("The voice provider '{code}' is not configured on this node"),
    )
}

/// Checks a transcription request (the audio first: format, size and
/// duration from its own bytes) and records it.
pub async fn submit_transcription(
    deps: &EngineDeps,
    project: &projects::Model,
    principal: &Principal,
    input: TranscriptionInput,
) -> Result<Submitted, ServiceError> {
    let setup = &deps.voice;
    let files = crate::projects::project_files(&deps.db, deps.file_access(), project).await?;
    let (bytes, existing) = match (input.audio, input.asset_id.as_deref()) {
        (Some(bytes), None) => (bytes, None),
        (None, Some(raw)) => {
            let asset = crate::assets::get(&deps.db, project.id, raw).await?;
            if asset.byte_size.unwrap_or(0) as usize > setup.limits.max_audio_bytes {
                return Err(audio_too_large(setup.limits.max_audio_bytes));
            }
            let bytes = crate::assets::read(&files, &asset).await?;
            (bytes, Some(asset))
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "invalid_body",
                "Send the audio as the body or name an asset_id, not both",
            ));
        }
        (None, None) => return Err(invalid("empty_audio", "the audio file is empty")),
    };
    if bytes.len() > setup.limits.max_audio_bytes {
        return Err(audio_too_large(setup.limits.max_audio_bytes));
    }
    let info = audio::inspect(&bytes).map_err(audio_error)?;
    if let Some(secs) = info.duration_secs
        && secs > setup.limits.max_audio_secs
    {
        return Err(invalid(
            "audio_too_long",
            format!(
                "The audio lasts {secs:.1} s; at most {:.0} s are transcribed",
                setup.limits.max_audio_secs
            ),
        ));
    }
    let openai = setup
        .openai
        .as_ref()
        .ok_or_else(|| not_configured("openai"))?;
    let model = input
        .model
        .unwrap_or_else(|| openai.settings().transcription_model.clone());
    let price = openai.transcription_price(&model).ok_or_else(|| {
        invalid(
            "invalid_model",
            format!(
                "Field 'model' must be one of: {}",
                openai
                    .settings()
                    .transcription_usd_per_minute
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let language = match input.language {
        Some(l)
            if l.len() >= 2
                && l.len() <= 8
                && l.chars().all(|c| c.is_ascii_alphabetic() || c == '-') =>
        {
            Some(l.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(invalid(
                "invalid_language",
                "Field 'language' must be an ISO-639-1 code such as 'en'",
            ));
        }
        None => None,
    };
    let prompt = crate::error::optional_text("prompt", input.prompt.as_deref(), 2000)?;
    let session_id = match input.session_id.as_deref() {
        Some(raw) => Some(crate::copilot::session(&deps.db, project.id, raw).await?.id),
        None => None,
    };
    // Unknown duration (a live WebM): the bound is the longest audio taken.
    let bound_secs = info.duration_secs.unwrap_or(setup.limits.max_audio_secs);
    let estimate = price * bound_secs / 60.0;
    let request = json!({
        "model": model, "language": language, "prompt": prompt, "format": info.format.name(),
        "duration_secs": info.duration_secs, "bytes": bytes.len(),
    });
    let input_asset = match existing {
        Some(asset) => InputAsset::Existing(Box::new(asset)),
        None => InputAsset::New(bytes, info.format),
    };
    record(
        deps,
        project,
        principal,
        Prepared {
            request_type: TRANSCRIPTION,
            provider: "openai".into(),
            model,
            estimate,
            input_text: None,
            session_id,
            request,
            input_asset: Some((input_asset, files)),
            common: input.common,
        },
    )
    .await
}

fn audio_too_large(max: usize) -> ServiceError {
    invalid(
        "audio_too_large",
        format!("The audio is larger than {max} bytes"),
    )
}

enum InputAsset {
    Existing(Box<assets::Model>),
    New(Vec<u8>, AudioFormat),
}

struct Prepared {
    request_type: &'static str,
    provider: String,
    model: String,
    estimate: f64,
    input_text: Option<String>,
    session_id: Option<Uuid>,
    request: Value,
    input_asset: Option<(InputAsset, storage::ProjectFiles)>,
    common: Common,
}

/// The spend checks, then the request, its call record and the audit entry
/// in one transaction (an uploaded audio file is stored first).
async fn record(
    deps: &EngineDeps,
    project: &projects::Model,
    principal: &Principal,
    p: Prepared,
) -> Result<Submitted, ServiceError> {
    let key = match p.common.idempotency_key.as_deref().map(str::trim) {
        Some(k) if !k.is_empty() && k.len() <= 128 => Some(format!("voice:{}:{k}", project.id)),
        Some(_) => {
            return Err(invalid(
                "invalid_idempotency_key",
                "Field 'idempotency_key' must be 1 to 128 characters",
            ));
        }
        None => None,
    };
    if let Some(key) = &key
        && let Some(existing) = by_idempotency_key(&deps.db, project.id, key).await?
    {
        return Ok(Submitted {
            request: existing,
            created: false,
        });
    }
    let paid = p.estimate > 0.0;
    if paid && !p.common.confirm_spend {
        return Err(ServiceError::Policy {
            code: "spend_confirmation_required",
            message: format!(
                "This request may cost up to {:.4} USD; send confirm_spend: true",
                p.estimate
            ),
        });
    }
    if let Some(budget) = p.common.budget_usd {
        if !(budget.is_finite() && budget >= 0.0) {
            return Err(invalid(
                "invalid_budget",
                "Field 'budget_usd' must be a number of at least 0",
            ));
        }
        if p.estimate > budget {
            return Err(ServiceError::Policy {
                code: "budget_exceeded",
                message: format!(
                    "The estimate of {:.4} USD exceeds the budget of {budget:.4} USD",
                    p.estimate
                ),
            });
        }
    }
    let project_budget = project_budget(project);
    if paid && let Some(cap) = project_budget {
        let spent = crate::ledger::project_spend(&deps.db, project.id).await?;
        if spent + p.estimate > cap {
            return Err(ServiceError::Policy {
                code: "project_budget_exceeded",
                message: format!(
                    "Project has spent {spent:.4} USD; this request's estimate of {:.4} USD would exceed its budget of {cap:.4} USD",
                    p.estimate
                ),
            });
        }
    }
    let id = Uuid::now_v7();
    let now = time::now();
    // An uploaded file is durable before the rows that point at it commit.
    let (input_asset_row, fresh_asset) = match p.input_asset {
        Some((InputAsset::Existing(a), _)) => (Some(*a), false),
        Some((InputAsset::New(bytes, format), files)) => {
            let sha = crate::assets::sha256_hex(&bytes);
            let stored = crate::assets::put(
                &deps.db,
                &files,
                crate::assets::NewAsset {
                    project_id: project.id,
                    kind: "voice_input",
                    key: &format!("voice/{sha}.{}", format.name()),
                    bytes,
                    mime: format.mime(),
                    width: 0,
                    height: 0,
                    run_id: None,
                    job_id: None,
                    candidate_id: None,
                    metadata: json!({ "voice_request_id": id }),
                },
                Some(sha),
            )
            .await?;
            let mut row = stored.row;
            row.width = None;
            row.height = None;
            (Some(row), stored.fresh)
        }
        None => (None, false),
    };
    let mut meta = json!({
        "model": p.model, "estimated_cost_usd": p.estimate, "request": p.request,
        "budget_usd": p.common.budget_usd, "project_budget_usd": project_budget,
        "input_asset_id": input_asset_row.as_ref().map(|a| a.id),
        "idempotency_key": p.common.idempotency_key,
    });
    let call = provider_calls::Model {
        id: Uuid::now_v7(),
        project_id: project.id,
        idempotency_key: key.unwrap_or_else(|| format!("voice:{id}")),
        run_id: None,
        job_id: None,
        candidate_id: None,
        provider_code: p.provider.clone(),
        operation: p.request_type.into(),
        model_name: Some(p.model.clone()),
        status: CallStatus::Pending.into(),
        attempt: 0,
        reserved_cost_usd: 0.0,
        actual_cost_usd: None,
        request_json: json!({ "voice_request_id": id, "request": p.request }),
        response_json: json!({}),
        result_asset_id: None,
        provider_request_id: None,
        error_code: None,
        error_message: None,
        started_at: None,
        sent_at: None,
        sent_attempts: 0,
        possibly_billed_usd: 0.0,
        finished_at: None,
        created_at: now,
        updated_at: now,
    };
    meta["call_id"] = json!(call.id);
    let row = voice_requests::Model {
        id,
        project_id: project.id,
        session_id: p.session_id,
        request_type: p.request_type.into(),
        status: status::QUEUED.into(),
        provider_code: Some(p.provider),
        input_text: p.input_text,
        output_asset_id: None,
        meta_json: meta,
        created_at: now,
        updated_at: now,
    };
    let txn = crate::db::begin_write(&deps.db).await?;
    if fresh_asset && let Some(a) = &input_asset_row {
        assets::Entity::insert(assets::ActiveModel::from(a.clone()))
            .exec_without_returning(&txn)
            .await?;
    }
    voice_requests::Entity::insert(voice_requests::ActiveModel::from(row.clone()))
        .exec_without_returning(&txn)
        .await?;
    let inserted = provider_calls::Entity::insert(provider_calls::ActiveModel::from(call.clone()))
        .exec_without_returning(&txn)
        .await;
    if let Err(e) = inserted {
        // The same idempotency key, submitted at the same moment: the other
        // submission's request is the answer.
        crate::db::rollback(txn).await?;
        if let Some(existing) =
            by_idempotency_key(&deps.db, project.id, &call.idempotency_key).await?
        {
            return Ok(Submitted {
                request: existing,
                created: false,
            });
        }
        return Err(e.into());
    }
    audit::record(
        &txn,
        AuditEntry {
            principal,
            project_id: Some(project.id),
            event_code: "voice.requested",
            payload: json!({ "voice_request_id": id, "request_type": p.request_type,
                "provider": row.provider_code, "model": p.model, "estimated_cost_usd": p.estimate }),
        },
    )
    .await?;
    crate::db::commit(txn).await?;
    Ok(Submitted {
        request: row,
        created: true,
    })
}

/// The project's budget from its settings (`manifest.policy.project_budget_usd`).
fn project_budget(project: &projects::Model) -> Option<f64> {
    project
        .settings_json
        .pointer("/manifest/policy/project_budget_usd")
        .and_then(Value::as_f64)
}

async fn by_idempotency_key<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    key: &str,
) -> Result<Option<voice_requests::Model>, ServiceError> {
    let call = provider_calls::Entity::find()
        .filter(provider_calls::Column::IdempotencyKey.eq(key))
        .filter(provider_calls::Column::ProjectId.eq(project_id))
        .one(db)
        .await?;
    let Some(id) = call.and_then(|c| {
        c.request_json
            .get("voice_request_id")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Uuid>().ok())
    }) else {
        return Ok(None);
    };
    Ok(voice_requests::Entity::find_by_id(id).one(db).await?)
}

/// The project's voice requests, newest first.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    limit: u64,
) -> Result<Vec<voice_requests::Model>, ServiceError> {
    Ok(voice_requests::Entity::find()
        .filter(voice_requests::Column::ProjectId.eq(project_id))
        .order_by_desc(voice_requests::Column::CreatedAt)
        .order_by_desc(voice_requests::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

pub async fn get<C: ConnectionTrait>(
    db: &C,
    project_id: Uuid,
    raw_id: &str,
) -> Result<voice_requests::Model, ServiceError> {
    let not_found = || ServiceError::NotFound("Voice request not found".into());
    let id: Uuid = raw_id.trim().parse().map_err(|_| not_found())?;
    voice_requests::Entity::find_by_id(id)
        .filter(voice_requests::Column::ProjectId.eq(project_id))
        .one(db)
        .await?
        .ok_or_else(not_found)
}

/// The live feed's voice events (`voice.started`, `voice.finished`): live
/// only, like a sync's; the event's `run_id` is the request's id.
fn publish(hub: &EventHub, request: &voice_requests::Model, seq: i64, kind: &str, payload: Value) {
    hub.publish(RunEvent {
        run_id: request.id,
        project_id: request.project_id,
        seq,
        event_type: kind.into(),
        job_id: None,
        payload,
        created_at: time::now(),
    });
}

/// Runs a queued request to its end: claims it, reserves the call's bound,
/// calls the provider, and records the outcome. A request another worker
/// claimed, or that is not queued, is left alone.
#[tracing::instrument(skip(deps))]
pub async fn execute(deps: &EngineDeps, id: Uuid) -> Result<(), ServiceError> {
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
    let request = voice_requests::Entity::find_by_id(id)
        .one(&deps.db)
        .await?
        .ok_or_else(|| ServiceError::missing("voice request", id))?;
    let call_id = request.meta_json["call_id"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
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
                    call.id,
                    refused.code(),
                    &refused.to_string(),
                    false,
                )
                .await?;
                return Err(refused);
            }
            calls::mark_sent(&deps.db, call.id).await?;
        } else {
            start_free(&deps.db, call.id, attempt).await?;
        }
        let result = match request.request_type.as_str() {
            SPEECH => speak(deps, request, api_key.clone()).await,
            _ => transcribe(deps, request, api_key.clone()).await,
        };
        let err = match result {
            Ok(done) => return complete(deps, request, call, attempt, done).await,
            Err(Failure::Ours(e)) => {
                calls::fail(
                    &deps.db,
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
            calls::settle_unknown(&deps.db, call, attempt, bound, &err).await?;
            return Err(provider_failed(&err));
        }
        calls::fail(
            &deps.db,
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
            let stored = crate::assets::put(
                &deps.db,
                &files,
                crate::assets::NewAsset {
                    project_id: request.project_id,
                    kind: "voice_output",
                    key: &format!("voice/{}.{}", request.id, format.name()),
                    bytes: audio,
                    mime: format.mime(),
                    width: 0,
                    height: 0,
                    run_id: None,
                    job_id: None,
                    candidate_id: None,
                    metadata: json!({ "voice_request_id": request.id, "duration_secs": duration_secs }),
                },
                None,
            )
            .await?;
            let mut row = stored.row;
            row.width = None;
            row.height = None;
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

/// At start: what a stopped process left. A request whose call was sent had
/// an unknown outcome — kept as possibly billed, the request failed, nothing
/// sent again; one that was claimed but not sent is queued again. Returns
/// the queued requests, to run.
pub async fn recover(db: &DatabaseConnection) -> Result<Vec<Uuid>, ServiceError> {
    let running = voice_requests::Entity::find()
        .filter(voice_requests::Column::Status.eq(status::RUNNING))
        .all(db)
        .await?;
    for r in running {
        let call_id = r.meta_json["call_id"]
            .as_str()
            .and_then(|s| s.parse::<Uuid>().ok());
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
    if let Some(call_id) = request.meta_json["call_id"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
        && let Some(call) = provider_calls::Entity::find_by_id(call_id).one(db).await?
        && call.status == CallStatus::Pending
    {
        calls::settle_abandoned_call(db, &call).await?;
    }
    finish_failed(
        db,
        id,
        "internal_error",
        "the request stopped on an internal error",
    )
    .await
}
