//! Voice requests against a loopback server speaking OpenAI's audio wire
//! format (checked against the API document's facts) and the real
//! `espeak-ng`: spend safety like image calls (confirmation, budgets,
//! idempotency, one bill per answer, a lost answer kept as possibly billed
//! and never sent again), bad audio refused before anything is recorded,
//! results stored and fed to the live feed.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use stubs::audio::{AudioStub, Reply};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{TestApp, assert_error};
use domain::voice::audio::silent_wav;

/// The stub accepts a key that is always in the test's environment, so no
/// test changes the process environment.
const KEY_ENV: &str = "CARGO_MANIFEST_DIR";

async fn with_stub(
    tweak: impl FnOnce(&mut atelier::settings::Settings),
) -> (TestApp, AudioStub, String) {
    let stub = AudioStub::start_with_key(env!("CARGO_MANIFEST_DIR")).await;
    let base = stub.base_url.clone();
    let app = TestApp::spawn_with(|s| {
        s.providers.openai_voice.enabled = true;
        s.providers.openai_voice.base_url = base;
        s.providers.openai_voice.api_key_env = KEY_ENV.into();
        s.engine.retry_base_ms = 5;
        s.engine.retry_max_ms = 20;
        tweak(s);
    })
    .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    (app, stub, token)
}

/// Waits for the request to end and gives it.
async fn finished(app: &TestApp, token: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b) = app
            .get(&format!("/api/projects/book/voice/requests/{id}"), token)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let r = b["voice_request"].clone();
        if r["status"] == "done" || r["status"] == "failed" {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_audio(app: &TestApp, token: &str, query: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let res = app
        .client
        .post(format!(
            "{}/api/projects/book/voice/transcriptions?{query}",
            app.base
        ))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn counts(app: &TestApp) -> (u64, u64, u64) {
    let voice = entities::voice_requests::Entity::find()
        .count(&app.db)
        .await
        .unwrap();
    let calls = entities::provider_calls::Entity::find()
        .count(&app.db)
        .await
        .unwrap();
    let inputs = entities::assets::Entity::find()
        .filter(entities::assets::Column::Kind.eq("voice_input"))
        .count(&app.db)
        .await
        .unwrap();
    (voice, calls, inputs)
}

async fn cost_events(app: &TestApp) -> Vec<entities::cost_events::Model> {
    entities::cost_events::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
}

#[actix_web::test]
async fn espeak_speaks_offline_for_free_into_a_wav_asset() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    // No confirmation needed: nothing is spent.
    let (s, b) = app
        .post(
            "/api/projects/book/voice/speech",
            &token,
            json!({"text": "Chapter one. The tower.", "provider": "espeak", "speed": 1.2}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["voice_request"]["status"], "queued");
    let id = b["voice_request"]["id"].as_str().unwrap().to_string();
    let r = finished(&app, &token, &id).await;
    assert_eq!(r["status"], "done", "{r}");
    assert_eq!(r["provider_code"], "espeak");
    assert_eq!(r["cost_usd"], json!(0.0));
    assert!(r["duration_secs"].as_f64().unwrap() > 0.3, "{r}");
    let asset = r["output_asset_id"].as_str().unwrap();
    let res = app
        .client
        .get(format!(
            "{}/api/projects/book/assets/{asset}/content",
            app.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "audio/wav");
    let wav = res.bytes().await.unwrap();
    // espeak-ng streams a header with unknown sizes; the stored file's are true.
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(
        u32::from_le_bytes(wav[4..8].try_into().unwrap()) as usize,
        wav.len() - 8
    );
    assert!(cost_events(&app).await.is_empty());
    let codes = app.audit_codes().await;
    assert!(codes.contains(&"voice.requested".to_string()), "{codes:?}");
    assert!(codes.contains(&"voice.completed".to_string()), "{codes:?}");
    // A voice name is a program's argument: never an option.
    let (s, b) = app
        .post(
            "/api/projects/book/voice/speech",
            &token,
            json!({"text": "hi", "provider": "espeak", "voice": "--help"}),
        )
        .await;
    assert_error(s, &b, 400, "invalid_voice");
}

#[actix_web::test]
async fn a_missing_espeak_is_a_clear_error_and_nothing_is_recorded() {
    let app =
        TestApp::spawn_with(|s| s.providers.espeak.program = "/nonexistent/espeak-ng".into()).await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (s, b) = app
        .post(
            "/api/projects/book/voice/speech",
            &token,
            json!({"text": "hello"}),
        )
        .await;
    assert_error(s, &b, 503, "voice_engine_unavailable");
    assert!(b["error"].as_str().unwrap().contains("espeak-ng"), "{b}");
    assert_eq!(counts(&app).await, (0, 0, 0));
    // Transcription needs a provider that transcribes.
    let (s, b) = post_audio(&app, &token, "confirm_spend=true", silent_wav(1.0, 8000)).await;
    assert_error(s, &b, 400, "provider_not_configured");
}

#[actix_web::test]
async fn paid_speech_is_confirmed_budgeted_billed_once_and_fed() {
    let (app, stub, token) = with_stub(|_| {}).await;
    let text = "The hero climbs the stairs of the tower, one step at a time.";
    // Nothing is recorded without confirmation, or over the budget.
    let (s, b) = app
        .post(
            "/api/projects/book/voice/speech",
            &token,
            json!({"text": text}),
        )
        .await;
    assert_error(s, &b, 400, "spend_confirmation_required");
    let (s, b) = app
        .post(
            "/api/projects/book/voice/speech",
            &token,
            json!({"text": text, "confirm_spend": true, "budget_usd": 0.0001}),
        )
        .await;
    assert_error(s, &b, 400, "budget_exceeded");
    for (field, value, code) in [
        ("voice", json!("robot"), "invalid_voice"),
        ("model", json!("tts-9"), "invalid_model"),
        ("format", json!("aac"), "invalid_format"),
        ("speed", json!(9.0), "invalid_speed"),
        ("provider", json!("elevenlabs"), "unknown_voice_provider"),
    ] {
        let mut body = json!({"text": text, "confirm_spend": true});
        body[field] = value;
        let (s, b) = app
            .post("/api/projects/book/voice/speech", &token, body)
            .await;
        assert_error(s, &b, 400, code);
    }
    let (s, b) = app
        .post(
            "/api/projects/book/voice/speech",
            &token,
            json!({"text": "x".repeat(4097), "confirm_spend": true}),
        )
        .await;
    assert_error(s, &b, 400, "text_too_long");
    assert_eq!(counts(&app).await, (0, 0, 0));
    assert_eq!(stub.served("speech"), 0);

    let url = format!(
        "{}/api/projects/book/events/ws",
        app.base.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    let body = json!({"text": text, "confirm_spend": true, "idempotency_key": "chapter-1-line-1"});
    let (s, b) = app
        .post("/api/projects/book/voice/speech", &token, body.clone())
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["voice_request"]["id"].as_str().unwrap().to_string();
    let expected = 0.015 * text.chars().count() as f64 / 1000.0;
    assert!((b["voice_request"]["estimated_cost_usd"].as_f64().unwrap() - expected).abs() < 1e-9);
    let r = finished(&app, &token, &id).await;
    assert_eq!(r["status"], "done", "{r}");
    assert!(
        (r["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-9,
        "{r}"
    );
    assert!(r["output_asset_id"].is_string());
    // The same key again: the same request, nothing sent or billed again.
    let (s, again) = app
        .post("/api/projects/book/voice/speech", &token, body)
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["created"], json!(false));
    assert_eq!(again["voice_request"]["id"], id.as_str());
    assert_eq!(stub.served("speech"), 1);
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    let sent = &stub.requests()[0];
    assert_eq!(sent["model"], "tts-1");
    assert_eq!(sent["voice"], "alloy");
    assert_eq!(sent["response_format"], "mp3");
    let events = cost_events(&app).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event_type, "speech");
    assert_eq!(events[0].billing, "billed");
    assert!((events[0].total_cost_usd - expected).abs() < 1e-9);
    assert_eq!(events[0].run_id, None);
    // The feed told the start and the end.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await else {
            panic!("feed ended early: {seen:?}");
        };
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["run_id"] == id.as_str() {
            seen.push(v);
        }
    }
    assert_eq!(seen[0]["event_type"], "voice.started");
    assert_eq!(seen[1]["event_type"], "voice.finished");
    assert_eq!(seen[1]["payload"]["status"], "done");
    // Listed, newest first.
    let (s, list) = app.get("/api/projects/book/voice/requests", &token).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["voice_requests"][0]["id"], id.as_str());
    let (s, b) = app
        .get("/api/projects/book/voice/requests/nope", &token)
        .await;
    assert_error(s, &b, 404, "not_found");
}

#[actix_web::test]
async fn a_transcript_is_billed_by_duration_and_lands_in_the_chat_session() {
    let (app, stub, token) = with_stub(|_| {}).await;
    let (s, b) = app
        .post(
            "/api/projects/book/chat/sessions",
            &token,
            json!({"title": "Dictation"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let session = b["session"]["id"].as_str().unwrap().to_string();
    let wav = silent_wav(3.0, 16_000);
    let (s, b) = post_audio(
        &app,
        &token,
        &format!("confirm_spend=true&language=en&session_id={session}"),
        wav.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let r = &b["voice_request"];
    assert!(
        (r["duration_secs"].as_f64().unwrap() - 3.0).abs() < 0.01,
        "{r}"
    );
    let id = r["id"].as_str().unwrap().to_string();
    let r = finished(&app, &token, &id).await;
    assert_eq!(r["status"], "done", "{r}");
    assert_eq!(r["transcript"], "The hero enters the tower at dusk.");
    let expected = 0.006 * 3.0 / 60.0;
    assert!(
        (r["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-9,
        "{r}"
    );
    let (s, m) = app
        .get(
            &format!("/api/projects/book/chat/sessions/{session}/messages"),
            &token,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let messages = m["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{m}");
    assert_eq!(messages[0]["content"], "The hero enters the tower at dusk.");
    assert_eq!(messages[0]["id"], r["chat_message_id"]);
    let sent = &stub.requests()[0];
    assert_eq!(sent["model"], "whisper-1");
    assert_eq!(sent["language"], "en");
    assert_eq!(sent["file_name"], "audio.wav");
    assert_eq!(sent["file_bytes"], json!(wav.len()));
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    // The stored audio asset can be transcribed again by id.
    let asset = r["input_asset_id"].as_str().unwrap();
    let (s, b) = post_audio(
        &app,
        &token,
        &format!("confirm_spend=true&asset_id={asset}"),
        Vec::new(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["voice_request"]["input_asset_id"], asset);
    let again = finished(&app, &token, b["voice_request"]["id"].as_str().unwrap()).await;
    assert_eq!(again["status"], "done", "{again}");
    assert_eq!(stub.served("transcription"), 2);
    let (s, b) = post_audio(
        &app,
        &token,
        "confirm_spend=true&session_id=0190a1b2-0000-7000-8000-000000000000",
        wav,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
}

#[actix_web::test]
async fn bad_audio_is_refused_before_anything_is_recorded_or_sent() {
    let (app, stub, token) = with_stub(|s| {
        s.voice.max_audio_secs = 2.0;
        s.voice.max_audio_bytes = 200_000;
    })
    .await;
    let q = "confirm_spend=true";
    let (s, b) = post_audio(&app, &token, q, Vec::new()).await;
    assert_error(s, &b, 400, "empty_audio");
    let (s, b) = post_audio(&app, &token, q, b"<html>not audio</html>".to_vec()).await;
    assert_error(s, &b, 400, "unsupported_audio_format");
    let (s, b) = post_audio(&app, &token, q, b"\x89PNG\r\n\x1a\n0000000000".to_vec()).await;
    assert_error(s, &b, 400, "unsupported_audio_format");
    let (s, b) = post_audio(&app, &token, q, b"RIFF\x00\x00\x00\x00WAVEjunk".to_vec()).await;
    assert_error(s, &b, 400, "invalid_audio");
    let (s, b) = post_audio(&app, &token, q, silent_wav(3.0, 16_000)).await;
    assert_error(s, &b, 400, "audio_too_long");
    // 8 s at 8 kHz: short enough by size... and too long by its header.
    let (s, b) = post_audio(&app, &token, q, vec![0u8; 300_000]).await;
    assert_error(s, &b, 413, "payload_too_large");
    let (s, b) = post_audio(&app, &token, "", silent_wav(1.0, 8000)).await;
    assert_error(s, &b, 400, "spend_confirmation_required");
    let (s, b) = post_audio(
        &app,
        &token,
        "confirm_spend=true&language=english!",
        silent_wav(1.0, 8000),
    )
    .await;
    assert_error(s, &b, 400, "invalid_language");
    let (s, b) = post_audio(
        &app,
        &token,
        "confirm_spend=true&model=whisper-9",
        silent_wav(1.0, 8000),
    )
    .await;
    assert_error(s, &b, 400, "invalid_model");
    assert_eq!(counts(&app).await, (0, 0, 0));
    assert_eq!(stub.served("transcription"), 0);
    assert!(stub.requests().is_empty());
}

#[actix_web::test]
async fn provider_failures_retry_only_what_was_not_billed() {
    let (app, stub, token) = with_stub(|_| {}).await;
    let speak = |key: &'static str| json!({"text": "A line of dialogue.", "confirm_spend": true, "idempotency_key": key});
    // A 500 is a refusal: retried, billed once.
    stub.script([Reply::Error {
        status: 500,
        name: "server_error",
        retry_after: None,
    }]);
    let (s, b) = app
        .post("/api/projects/book/voice/speech", &token, speak("a"))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let r = finished(&app, &token, b["voice_request"]["id"].as_str().unwrap()).await;
    assert_eq!(r["status"], "done", "{r}");
    assert_eq!(stub.served("speech"), 1);
    // An answer cut off in transit was made and billed: kept as spent,
    // never sent again.
    stub.script([Reply::Truncated]);
    let (_, b) = app
        .post("/api/projects/book/voice/speech", &token, speak("b"))
        .await;
    let r = finished(&app, &token, b["voice_request"]["id"].as_str().unwrap()).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(stub.served("speech"), 2, "not sent again");
    let call = entities::provider_calls::Entity::find()
        .filter(entities::provider_calls::Column::IdempotencyKey.contains(":b"))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(call.status, "unknown", "{call:?}");
    assert!(call.possibly_billed_usd > 0.0, "{call:?}");
    // A gateway page instead of audio: not audio, failed, not retried.
    stub.script([Reply::NotAudio]);
    let (_, b) = app
        .post("/api/projects/book/voice/speech", &token, speak("c"))
        .await;
    let r = finished(&app, &token, b["voice_request"]["id"].as_str().unwrap()).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error_code"], "provider_malformed_response", "{r}");
    // Wrong credentials: refused, not retried, nothing billed.
    stub.script([Reply::Error {
        status: 401,
        name: "invalid_api_key",
        retry_after: None,
    }]);
    let (_, b) = app
        .post("/api/projects/book/voice/speech", &token, speak("d"))
        .await;
    let r = finished(&app, &token, b["voice_request"]["id"].as_str().unwrap()).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error_code"], "provider_auth", "{r}");
    let billed: f64 = cost_events(&app)
        .await
        .iter()
        .map(|e| e.total_cost_usd)
        .sum();
    let calls = entities::provider_calls::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    let accounted: f64 = calls
        .iter()
        .map(|c| c.actual_cost_usd.unwrap_or(0.0) + c.possibly_billed_usd)
        .sum();
    assert!(
        (billed - accounted).abs() < 1e-9,
        "ledger {billed} vs calls {accounted}"
    );
    let dump = format!("{calls:?}");
    assert!(
        !dump.contains(env!("CARGO_MANIFEST_DIR")),
        "the key is in a record"
    );
}
