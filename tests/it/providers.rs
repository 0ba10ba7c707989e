//! Provider adapters against loopback servers that speak the providers' real
//! wire formats: success, every error class, slow, truncated and oversized
//! responses, missing or wrong credentials, settings refused up front.

use std::sync::Arc;
use std::time::Duration;

use imaging::DecodeLimits;
use providers::credentials::{Credentials, Secret};
use providers::openai::{OpenAiProvider, OpenAiSettings};
use providers::{GenerateRequest, ImageProvider, ProviderError, Stage};

use crate::openai_stub::{KEY, OpenAiStub, Reply};

struct Fixed(Option<&'static str>);

impl Credentials for Fixed {
    fn secret(&self, _: &str) -> Option<Secret> {
        self.0.map(Secret::new)
    }
}

fn provider(
    stub: &OpenAiStub,
    key: Option<&'static str>,
    tweak: impl FnOnce(&mut OpenAiSettings),
) -> OpenAiProvider {
    atelier::startup::install_runtime_defaults();
    let mut settings = OpenAiSettings {
        enabled: true,
        base_url: stub.base_url.clone(),
        ..OpenAiSettings::default()
    };
    tweak(&mut settings);
    OpenAiProvider::new(settings, Arc::new(Fixed(key)), DecodeLimits::default()).unwrap()
}

fn request(key: &str) -> GenerateRequest {
    GenerateRequest {
        idempotency_key: key.into(),
        stage: Stage::Style,
        prompt: "ink the street".into(),
        input: Some(imaging::scene::sample_scene(1, 64, 48)),
        references: Arc::new(vec![imaging::scene::sample_scene(9, 32, 24)]),
        candidate_index: 0,
        attempt: 1,
        api_key: None,
    }
}

#[actix_web::test]
async fn openai_adapter_returns_the_image_cost_and_request_id() {
    let stub = OpenAiStub::start().await;
    let p = provider(&stub, Some(KEY), |_| {});
    assert!(p.preflight().is_ok());
    let g = p.generate(request("run1:job1:c0")).await.unwrap();
    assert_eq!(g.image.dimensions(), (64, 48));
    assert_eq!(g.cost_usd, 0.25, "gpt-image-1, high, 1024x1536");
    assert_eq!(g.model, "gpt-image-1");
    assert_eq!(g.provider_request_id.as_deref(), Some("req_run1:job1:c0"));
    assert_eq!(
        stub.calls().get("run1:job1:c0"),
        Some(&1),
        "idempotency key sent"
    );
    assert_eq!(
        stub.images_per_call(),
        vec![2],
        "the input and one style reference"
    );
}

#[actix_web::test]
async fn openai_adapter_generates_from_a_prompt_alone() {
    let stub = OpenAiStub::start().await;
    let p = provider(&stub, Some(KEY), |s| {
        s.background = Some("transparent".into())
    });
    let g = p
        .generate(GenerateRequest {
            input: None,
            references: Arc::new(Vec::new()),
            ..request("run1:job2:c0")
        })
        .await
        .unwrap();
    assert_eq!(g.image.dimensions(), (64, 48));
    assert_eq!(g.cost_usd, 0.25);
    assert_eq!(
        stub.images_per_call(),
        vec![0],
        "the generations endpoint, no image sent"
    );
    assert_eq!(stub.calls().get("run1:job2:c0"), Some(&1));
    // Its errors are the same taxonomy.
    stub.script([Reply::Error {
        status: 429,
        code: "rate_limit_exceeded",
        retry_after: Some(3),
    }]);
    let e = p
        .generate(GenerateRequest {
            input: None,
            references: Arc::new(Vec::new()),
            ..request("k")
        })
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)), "{e:?}");
}

#[actix_web::test]
async fn openai_errors_map_to_the_taxonomy_without_leaking_the_key() {
    let stub = OpenAiStub::start().await;
    let p = provider(&stub, Some(KEY), |_| {});
    let err = |status, code| Reply::Error {
        status,
        code,
        retry_after: None,
    };
    let cases = [
        (err(401, "invalid_api_key"), "provider_auth", false),
        (err(403, "forbidden"), "provider_auth", false),
        (
            Reply::Error {
                status: 429,
                code: "rate_limit_exceeded",
                retry_after: Some(3),
            },
            "provider_rate_limited",
            true,
        ),
        (
            err(429, "insufficient_quota"),
            "provider_invalid_request",
            false,
        ),
        (err(500, "server_error"), "provider_server_error", true),
        (err(503, "overloaded"), "provider_server_error", true),
        (
            err(400, "moderation_blocked"),
            "provider_content_policy",
            false,
        ),
        (err(400, "invalid_value"), "provider_invalid_request", false),
        (Reply::Truncated, "provider_malformed_response", true),
        (Reply::NotJson, "provider_malformed_response", true),
        (Reply::NoImage, "provider_malformed_response", true),
        (Reply::BadBase64, "provider_malformed_response", true),
    ];
    for (i, (reply, code, retryable)) in cases.into_iter().enumerate() {
        stub.script([reply.clone()]);
        let e = p.generate(request(&format!("k{i}"))).await.unwrap_err();
        assert_eq!(e.code(), code, "{reply:?}: {e}");
        assert_eq!(e.is_retryable(), retryable, "{reply:?}");
        assert!(!format!("{e} {e:?}").contains(KEY), "key leaked: {e:?}");
        if code == "provider_rate_limited" {
            assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        }
    }
    // After all that, a normal call still works.
    assert!(p.generate(request("after")).await.is_ok());
}

#[actix_web::test]
async fn openai_credentials_timeouts_and_limits() {
    let stub = OpenAiStub::start().await;
    // No key: refused before anything is sent.
    let none = provider(&stub, None, |_| {});
    assert!(matches!(
        none.preflight(),
        Err(ProviderError::NotConfigured(_))
    ));
    let e = none.generate(request("nokey")).await.unwrap_err();
    assert_eq!(e.code(), "provider_not_configured");
    assert!(stub.calls().is_empty(), "nothing reached the provider");
    // A wrong key: the provider's 401.
    let wrong = provider(&stub, Some("sk-wrong"), |_| {});
    assert_eq!(
        wrong.generate(request("wrong")).await.unwrap_err().code(),
        "provider_auth"
    );
    // Slower than the timeout.
    let quick = provider(&stub, Some(KEY), |s| s.timeout_secs = 1);
    stub.script([Reply::Slow(Duration::from_millis(2500))]);
    let e = quick.generate(request("slow")).await.unwrap_err();
    assert_eq!(e.code(), "provider_timeout", "{e}");
    assert!(e.is_retryable());
    // Larger than allowed: refused, not read into memory.
    let small = provider(&stub, Some(KEY), |s| s.max_response_bytes = 512);
    let e = small.generate(request("big")).await.unwrap_err();
    assert_eq!(e.code(), "provider_malformed_response", "{e}");
}

#[test]
fn openai_settings_are_checked_before_any_call() {
    atelier::startup::install_runtime_defaults();
    let refuse = |tweak: &dyn Fn(&mut OpenAiSettings)| {
        let mut s = OpenAiSettings::default();
        tweak(&mut s);
        OpenAiProvider::new(s, Arc::new(Fixed(Some(KEY))), DecodeLimits::default())
            .err()
            .map(|e| e.to_string())
    };
    assert!(refuse(&|_| {}).is_none());
    assert!(
        refuse(&|s| s.size = "512x512".into())
            .unwrap()
            .contains("size")
    );
    assert!(
        refuse(&|s| s.model = "dall-e-9".into())
            .unwrap()
            .contains("model")
    );
    assert!(refuse(&|s| s.quality = "ultra".into()).is_some());
    assert!(
        refuse(&|s| {
            s.output_format = "jpeg".into();
            s.background = Some("transparent".into());
        })
        .unwrap()
        .contains("transparent")
    );
    assert!(
        refuse(&|s| s.prices.images.clear())
            .unwrap()
            .contains("price")
    );
}

#[actix_web::test]
async fn a_run_on_a_provider_without_credentials_is_refused_before_anything_is_stored() {
    let stub = OpenAiStub::start().await;
    let app = crate::helpers::TestApp::spawn_with(|s| {
        s.providers.openai.enabled = true;
        s.providers.openai.base_url = stub.base_url.clone();
        s.providers.openai.api_key_env = "ATELIER_TEST_UNSET_OPENAI_KEY".into();
    })
    .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Keys", "keys").await;
    let body = serde_json::json!({"mode": "run", "provider": "openai", "confirm_spend": true, "scene_refs": ["sample:1"]});
    let (s, b) = app
        .post("/api/projects/keys/runs/trigger", &token, body)
        .await;
    crate::helpers::assert_error(s, &b, 400, "provider_not_configured");
    assert!(!b.to_string().contains("sk-"), "{b}");
    let (_, runs) = app.get("/api/projects/keys/runs", &token).await;
    assert_eq!(runs["count"], 0, "{runs}");
    assert!(stub.calls().is_empty());
    // A dry run needs no credentials: it plans and prices.
    let (s, b) = app
        .post(
            "/api/projects/keys/runs/trigger",
            &token,
            serde_json::json!({"mode": "dry", "provider": "openai", "scene_refs": ["sample:1"]}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{b}");
}

mod background_removal {
    use super::*;
    use crate::bg_stub::{self, BgStub, Reply};
    use providers::bg_remote::{RemoteRemover, RemoteRemoverSettings, Service};

    fn remover(stub: &BgStub, service: Service, key: Option<&'static str>) -> RemoteRemover {
        atelier::startup::install_runtime_defaults();
        let base_url = match service {
            Service::RemoveBg => stub.removebg_url.clone(),
            Service::PhotoRoom => stub.photoroom_url.clone(),
        };
        let settings = RemoteRemoverSettings {
            enabled: true,
            base_url: Some(base_url),
            timeout_secs: Some(1),
            ..RemoteRemoverSettings::default()
        };
        RemoteRemover::new(
            service,
            settings,
            Arc::new(Fixed(key)),
            DecodeLimits::default(),
        )
        .unwrap()
    }

    #[actix_web::test]
    async fn removebg_and_photoroom_speak_their_wire_formats() {
        let stub = BgStub::start().await;
        let input = imaging::scene::sample_scene(2, 64, 48);
        for (service, price) in [(Service::RemoveBg, 0.20), (Service::PhotoRoom, 0.02)] {
            let r = remover(&stub, service, Some(bg_stub::KEY));
            let out = r.remove(input.clone(), None).await.unwrap();
            assert_eq!(out.image.dimensions(), (64, 48));
            assert_eq!(out.image.get_pixel(0, 0).0[3], 0, "cut-out is transparent");
            assert_eq!(out.cost_usd, price);
            let err = |status, code| Reply::Error { status, code };
            let cases = [
                (
                    err(402, "insufficient_credits"),
                    "provider_invalid_request",
                    false,
                ),
                (err(429, "rate_limit"), "provider_rate_limited", true),
                (err(503, "unavailable"), "provider_server_error", true),
                (
                    err(400, "unknown_foreground"),
                    "provider_invalid_request",
                    false,
                ),
                (Reply::NotAnImage, "provider_malformed_response", true),
                (
                    Reply::Slow(Duration::from_millis(2500)),
                    "provider_timeout",
                    true,
                ),
            ];
            for (reply, code, retryable) in cases {
                stub.script([reply.clone()]);
                let e = r.remove(input.clone(), None).await.unwrap_err();
                assert_eq!(e.code(), code, "{service:?} {reply:?}: {e}");
                assert_eq!(e.is_retryable(), retryable);
                assert!(!format!("{e:?}").contains(bg_stub::KEY));
            }
            let wrong = remover(&stub, service, Some("wrong-key"));
            assert_eq!(
                wrong.remove(input.clone(), None).await.unwrap_err().code(),
                "provider_auth"
            );
            let before = stub.calls();
            let none = remover(&stub, service, None);
            assert!(none.preflight().is_err());
            assert_eq!(
                none.remove(input.clone(), None).await.unwrap_err().code(),
                "provider_not_configured"
            );
            assert_eq!(stub.calls(), before, "nothing sent without a key");
        }
    }
}

#[actix_web::test]
async fn local_provider_generates_from_a_prompt_alone_deterministically() {
    atelier::startup::install_runtime_defaults();
    let p = providers::local::LocalProvider::new(Default::default());
    let from = |prompt: &str| GenerateRequest {
        input: None,
        prompt: prompt.into(),
        ..request("run:job:c0")
    };
    let a = p.generate(from("a quiet harbour")).await.unwrap().image;
    let again = p.generate(from("a quiet harbour")).await.unwrap().image;
    let other = p.generate(from("a busy market")).await.unwrap().image;
    assert_eq!(a.dimensions(), (512, 384));
    assert_eq!(a, again, "same prompt, same image");
    assert_ne!(a, other, "the prompt shapes the scene");
}
