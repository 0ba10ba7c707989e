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
//!
//! `submit` checks and records a request; `execute` runs it.

pub mod audio;
mod execute;
mod submit;

use std::sync::Arc;

use entities::{projects, voice_requests};
use providers::voice::{Espeak, OpenAiVoice};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;
use uuid::Uuid;

use crate::runs::events::{EventHub, RunEvent};
use crate::{ServiceError, time};
use audio::AudioError;

pub use execute::{abandon, execute, recover};
pub use submit::{submit_speech, submit_transcription};

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

fn audio_error(e: AudioError) -> ServiceError {
    match e {
        AudioError::Empty => ServiceError::validation("empty_audio", e.to_string()),
        AudioError::Unsupported => {
            ServiceError::validation("unsupported_audio_format", e.to_string())
        }
        AudioError::Corrupt(..) => ServiceError::validation("invalid_audio", e.to_string()),
    }
}

fn not_configured(code: &str) -> ServiceError {
    ServiceError::validation(
        "provider_not_configured",
        format!("The voice provider '{code}' is not configured on this node"),
    )
}

/// The project's budget from its settings (`manifest.policy.project_budget_usd`).
fn project_budget(project: &projects::Model) -> Option<f64> {
    project
        .settings_json
        .pointer("/manifest/policy/project_budget_usd")
        .and_then(Value::as_f64)
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

/// Writes an audio file (durable when this returns) unless the project holds
/// the same bytes in this role already; the row, without a pixel size, is
/// for the caller to insert with the request's rows when `fresh`. `sha256`:
/// the content hash, when the caller has it already.
async fn put_audio(
    db: &sea_orm::DatabaseConnection,
    files: &storage::ProjectFiles,
    (project_id, kind, key): (Uuid, &'static str, &str),
    bytes: Vec<u8>,
    format: audio::AudioFormat,
    metadata: Value,
    sha256: Option<String>,
) -> Result<crate::assets::Stored, ServiceError> {
    let mut stored = crate::assets::put(
        db,
        files,
        crate::assets::NewAsset {
            project_id,
            kind,
            key,
            bytes,
            mime: format.mime(),
            width: 0,
            height: 0,
            run_id: None,
            job_id: None,
            candidate_id: None,
            metadata,
        },
        sha256,
    )
    .await?;
    stored.row.width = None;
    stored.row.height = None;
    Ok(stored)
}
