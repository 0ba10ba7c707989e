//! Checking a voice request and recording it: nothing is written until the
//! audio and the spend checks pass.

use entities::{assets, projects, provider_calls, voice_requests};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use super::audio::{self, AudioFormat};
use super::{
    Common, SPEECH, SpeechInput, Submitted, TRANSCRIPTION, TranscriptionInput, audio_error,
    not_configured, project_budget, status,
};
use crate::audit::{self, AuditEntry};
use crate::runs::deps::EngineDeps;
use crate::status::CallStatus;
use crate::{Principal, ServiceError, time};

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
        return Err(ServiceError::validation(
            "text_too_long",
            format!(
                "Field 'text' is longer than {} characters",
                setup.limits.max_text_chars
            ),
        ));
    }
    let speed = input.speed.unwrap_or(1.0);
    if !(0.25..=4.0).contains(&speed) {
        return Err(ServiceError::validation(
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
                ServiceError::validation(
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
                return Err(ServiceError::validation(
                    "invalid_voice",
                    format!(
                        "Field 'voice' must be one of: {}",
                        providers::voice::VOICES.join(", ")
                    ),
                ));
            }
            let format = input.format.unwrap_or_else(|| "mp3".into());
            if !providers::voice::SPEECH_FORMATS.contains(&format.as_str()) {
                return Err(ServiceError::validation(
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
                return Err(ServiceError::validation(
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
                return Err(ServiceError::validation(
                    "invalid_voice",
                    "Field 'voice' must be an espeak-ng voice name (letters, digits, - _ +)",
                ));
            }
            let format = input.format.unwrap_or_else(|| "wav".into());
            if format != "wav" {
                return Err(ServiceError::validation(
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
            return Err(ServiceError::validation(
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
            return Err(ServiceError::validation(
                "invalid_body",
                "Send the audio as the body or name an asset_id, not both",
            ));
        }
        (None, None) => {
            return Err(ServiceError::validation(
                "empty_audio",
                "the audio file is empty",
            ));
        }
    };
    if bytes.len() > setup.limits.max_audio_bytes {
        return Err(audio_too_large(setup.limits.max_audio_bytes));
    }
    let info = audio::inspect(&bytes).map_err(audio_error)?;
    if let Some(secs) = info.duration_secs
        && secs > setup.limits.max_audio_secs
    {
        return Err(ServiceError::validation(
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
        ServiceError::validation(
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
            return Err(ServiceError::validation(
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
    ServiceError::validation(
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
            return Err(ServiceError::validation(
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
            return Err(ServiceError::validation(
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
            let key = format!("voice/{sha}.{}", format.name());
            let stored = super::put_audio(
                &deps.db,
                &files,
                (project.id, "voice_input", &key),
                bytes,
                format,
                json!({ "voice_request_id": id }),
                Some(sha),
            )
            .await?;
            (Some(stored.row), stored.fresh)
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
