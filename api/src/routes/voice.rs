//! **New**: voice requests — speech to text (an audio file, or an audio
//! asset, to a transcript, optionally a chat message) and text to speech
//! (text to an audio asset), run in the background with their records,
//! spend checks and feed events (`voice.started`, `voice.finished`).

use actix_web::{HttpResponse, get, post, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, ProjectAccess, ProjectSlug, too_large};
use domain::voice::{Common, SpeechInput, Submitted, TranscriptionInput};

/// A voice request as clients see it.
#[derive(Serialize, ToSchema)]
pub struct VoiceRequest {
    pub id: Uuid,
    pub project_id: Uuid,
    /// `transcription` or `speech`.
    pub request_type: String,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    pub provider_code: Option<String>,
    pub model: Option<String>,
    /// Speech: the text spoken.
    pub input_text: Option<String>,
    /// Transcription: the audio asset transcribed.
    pub input_asset_id: Option<Uuid>,
    /// Speech: the audio asset made.
    pub output_asset_id: Option<Uuid>,
    /// Transcription: the text heard.
    pub transcript: Option<String>,
    /// Transcription: the chat session the transcript went to, and its message.
    pub session_id: Option<Uuid>,
    pub chat_message_id: Option<Uuid>,
    /// Seconds of audio (measured from the file), when known.
    pub duration_secs: Option<f64>,
    /// The bound reserved before the call.
    pub estimated_cost_usd: Option<f64>,
    /// What the call cost, once done.
    pub cost_usd: Option<f64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&entities::voice_requests::Model> for VoiceRequest {
    fn from(r: &entities::voice_requests::Model) -> Self {
        let m = &r.meta_json;
        let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        let id = |k: &str| {
            m.get(k)
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        };
        let duration = m
            .get("duration_secs")
            .and_then(Value::as_f64)
            .or_else(|| m.pointer("/request/duration_secs").and_then(Value::as_f64));
        Self {
            id: r.id,
            project_id: r.project_id,
            request_type: r.request_type.clone(),
            status: r.status.clone(),
            provider_code: r.provider_code.clone(),
            model: text("model"),
            input_text: r.input_text.clone(),
            input_asset_id: id("input_asset_id"),
            output_asset_id: r.output_asset_id,
            transcript: text("transcript"),
            session_id: r.session_id,
            chat_message_id: id("chat_message_id"),
            duration_secs: duration,
            estimated_cost_usd: m.get("estimated_cost_usd").and_then(Value::as_f64),
            cost_usd: m.get("cost_usd").and_then(Value::as_f64),
            error_code: text("error_code"),
            error_message: text("error_message"),
            created_at: domain::time::format(&r.created_at),
            updated_at: domain::time::format(&r.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct VoiceAccepted {
    ok: bool,
    voice_request: VoiceRequest,
    /// `false`: an earlier request with the same `idempotency_key` (nothing
    /// new was recorded or spent).
    created: bool,
}

/// Hands a new request to the engine and answers: `202` for a new request,
/// `200` for an earlier one with the same idempotency key.
async fn start(state: &AppState, submitted: Submitted) -> ApiResult<HttpResponse> {
    if submitted.created {
        state.engine.run_voice(submitted.request.id).await?;
    }
    Ok(accepted(submitted))
}

fn accepted(submitted: Submitted) -> HttpResponse {
    let body = VoiceAccepted {
        ok: true,
        voice_request: VoiceRequest::from(&submitted.request),
        created: submitted.created,
    };
    if submitted.created {
        HttpResponse::Accepted().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechBody {
    /// The text to speak (at most `voice.max_text_chars`, 4,096 by default).
    text: Option<String>,
    /// `openai` (default when configured) or `espeak` (offline, free).
    provider: Option<String>,
    /// OpenAI: `tts-1` (default), `tts-1-hd`, `gpt-4o-mini-tts`.
    model: Option<String>,
    /// OpenAI: `alloy` (default), `ash`, `ballad`, `coral`, …; espeak: a voice name such as `en`.
    voice: Option<String>,
    /// OpenAI: `mp3` (default), `wav`, `opus`, `flac`; espeak: `wav`.
    format: Option<String>,
    /// 0.25 to 4.0 (default 1.0).
    speed: Option<f64>,
    /// Required when the estimate is above zero.
    confirm_spend: Option<bool>,
    /// Refuse if the estimate exceeds this.
    budget_usd: Option<f64>,
    /// The same key again answers the first request (nothing is spent twice).
    idempotency_key: Option<String>,
}

/// **New.** Text to speech, in the background: `202` with the request
/// (`queued`); the audio becomes an asset (`output_asset_id`) when `done`.
#[utoipa::path(tag = "voice", params(("slug" = String, Path)),
    request_body(content = SpeechBody, content_type = "application/json"),
    responses((status = 202, body = VoiceAccepted), (status = 200, body = VoiceAccepted, description = "an earlier request with this idempotency_key"),
        (status = 400, body = ErrorBody, description = "missing_field, text_too_long, invalid_speed, invalid_model, invalid_voice, invalid_format, unknown_voice_provider, provider_not_configured, invalid_idempotency_key, invalid_budget; policy: spend_confirmation_required, budget_exceeded, project_budget_exceeded"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "voice_engine_unavailable: espeak-ng is not installed")))]
#[post("/api/projects/{slug}/voice/speech")]
pub async fn create_speech(
    state: web::Data<AppState>,
    access: ProjectSlug,
    JsonBody(body): JsonBody<SpeechBody>,
) -> ApiResult<HttpResponse> {
    let ProjectAccess { project, principal } = access.authorize(&state).await?;
    let engine = state.engine.run_engine();
    let submitted = domain::voice::submit_speech(
        engine.deps,
        &project,
        &principal,
        SpeechInput {
            text: body.text,
            provider: body.provider,
            model: body.model,
            voice: body.voice,
            format: body.format,
            speed: body.speed,
            common: Common {
                confirm_spend: body.confirm_spend.unwrap_or(false),
                budget_usd: body.budget_usd,
                idempotency_key: body.idempotency_key,
            },
        },
    )
    .await?;
    start(&state, submitted).await
}

#[derive(Deserialize, IntoParams, Default)]
#[serde(default)]
pub struct TranscriptionQuery {
    /// Transcribe this audio asset of the project instead of the body.
    asset_id: Option<String>,
    /// `whisper-1` (default), `gpt-4o-transcribe`, `gpt-4o-mini-transcribe`, …
    model: Option<String>,
    /// The audio's language, ISO-639-1 (e.g. `en`).
    language: Option<String>,
    /// Text to guide the transcription.
    prompt: Option<String>,
    /// Add the transcript to this chat session as a `user` message.
    session_id: Option<String>,
    /// Required when the estimate is above zero.
    confirm_spend: Option<bool>,
    budget_usd: Option<f64>,
    idempotency_key: Option<String>,
}

/// **New.** Speech to text, in the background. The body is the audio file
/// (wav, mp3, ogg, webm, m4a or flac, sniffed from the bytes; at most
/// `voice.max_audio_bytes` and `voice.max_audio_secs`), or empty with
/// `asset_id`. The file is checked and stored before anything is spent:
/// `202` with the request (`queued`); `transcript` when `done`.
#[utoipa::path(tag = "voice", params(("slug" = String, Path), TranscriptionQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the audio file"),
    responses((status = 202, body = VoiceAccepted), (status = 200, body = VoiceAccepted, description = "an earlier request with this idempotency_key"),
        (status = 400, body = ErrorBody, description = "empty_audio, unsupported_audio_format, invalid_audio, audio_too_long, audio_too_large, invalid_model, invalid_language, provider_not_configured, invalid_idempotency_key; policy: spend_confirmation_required, budget_exceeded, project_budget_exceeded"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "the project, the asset or the chat session"),
        (status = 413, body = ErrorBody, description = "payload_too_large (voice.max_audio_bytes)")))]
#[post("/api/projects/{slug}/voice/transcriptions")]
pub async fn create_transcription(
    state: web::Data<AppState>,
    ProjectAccess { project, principal }: ProjectAccess,
    query: web::Query<TranscriptionQuery>,
    mut body: web::Payload,
) -> ApiResult<HttpResponse> {
    let engine = state.engine.run_engine();
    // Read up to the limit, never more.
    let limit = engine.deps.voice.limits.max_audio_bytes;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|_| ApiError::validation("invalid_body", "Could not read the request body"))?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let q = query.into_inner();
    let audio = if bytes.is_empty() && q.asset_id.is_some() {
        None
    } else {
        Some(bytes)
    };
    let submitted = domain::voice::submit_transcription(
        engine.deps,
        &project,
        &principal,
        TranscriptionInput {
            audio,
            asset_id: q.asset_id,
            model: q.model,
            language: q.language,
            prompt: q.prompt,
            session_id: q.session_id,
            common: Common {
                confirm_spend: q.confirm_spend.unwrap_or(false),
                budget_usd: q.budget_usd,
                idempotency_key: q.idempotency_key,
            },
        },
    )
    .await?;
    start(&state, submitted).await
}

#[derive(Deserialize, IntoParams, Default)]
#[serde(default)]
pub struct ListQuery {
    /// 1 to 200 (default 50).
    limit: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VoiceList {
    ok: bool,
    voice_requests: Vec<VoiceRequest>,
}

/// **New.** The project's voice requests, newest first.
#[utoipa::path(tag = "voice", params(("slug" = String, Path), ListQuery),
    responses((status = 200, body = VoiceList), (status = 400, body = ErrorBody, description = "invalid_limit"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/api/projects/{slug}/voice/requests")]
pub async fn list_voice(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    query: web::Query<ListQuery>,
) -> ApiResult<web::Json<VoiceList>> {
    let limit = match query.limit.as_deref().map(str::trim) {
        None => 50,
        Some(raw) => match raw.parse::<u64>() {
            Ok(n @ 1..=200) => n,
            _ => {
                return Err(ApiError::validation(
                    "invalid_limit",
                    "Query 'limit' must be an integer from 1 to 200",
                ));
            }
        },
    };
    let rows = domain::voice::list(&state.db, project.id, limit).await?;
    Ok(web::Json(VoiceList {
        ok: true,
        voice_requests: rows.iter().map(VoiceRequest::from).collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct VoiceDetail {
    ok: bool,
    voice_request: VoiceRequest,
}

/// **New.** One voice request.
#[utoipa::path(tag = "voice", params(("slug" = String, Path), ("requestId" = String, Path)),
    responses((status = 200, body = VoiceDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "the project or the request")))]
#[get("/api/projects/{slug}/voice/requests/{requestId}")]
pub async fn get_voice(
    state: web::Data<AppState>,
    ProjectAccess { project, .. }: ProjectAccess,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<VoiceDetail>> {
    let row = domain::voice::get(&state.db, project.id, &path.1).await?;
    Ok(web::Json(VoiceDetail {
        ok: true,
        voice_request: VoiceRequest::from(&row),
    }))
}
