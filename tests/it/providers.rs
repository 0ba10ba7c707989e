//! Provider adapters against loopback servers that check every request
//! against facts taken from the providers' published API documents (the
//! `stubs` crate): current models, costs from reported usage, every failure
//! classified by what the provider may have done, rate-limit signals,
//! credentials, and settings refused up front.

use std::sync::Arc;
use std::time::Duration;

use imaging::DecodeLimits;
use providers::credentials::{Credentials, Secret};
use providers::openai::{OpenAiProvider, OpenAiSettings};
use providers::{CallOutcome, GenerateRequest, ImageOptions, ImageProvider, ProviderError, Stage};

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
        options: ImageOptions::default(),
    }
}

fn model(name: &str) -> ImageOptions {
    ImageOptions {
        model: Some(name.into()),
        ..ImageOptions::default()
    }
}

#[actix_web::test]
async fn the_default_configuration_calls_a_current_model_and_prices_the_reported_usage() {
    let stub = OpenAiStub::start().await;
    let p = provider(&stub, Some(KEY), |_| {});
    assert!(p.preflight().is_ok());
    let req = request("run1:job1:c0");
    let bound = p.max_cost_usd(&req.options, req.shape());
    let g = p.generate(req).await.unwrap();
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    // The file as delivered, not re-encoded.
    assert_eq!(g.mime, "image/png");
    let img = imaging::decode(&g.bytes, DecodeLimits::default()).unwrap();
    assert_eq!(img.dimensions(), (64, 48));
    assert_eq!(g.model, "gpt-image-1.5");
    assert_eq!(g.provider_request_id.as_deref(), Some("req_run1:job1:c0"));
    // Cost from the usage the stub reported (text, two images at high
    // fidelity, 6240 output tokens at 1024x1536 high), at gpt-image-1.5's rates.
    assert_eq!(g.cost.detail["basis"], "reported_usage");
    let tokens = &g.cost.detail["tokens"];
    assert_eq!(tokens["image_output"], 6240);
    let expected = tokens["text_input"].as_f64().unwrap() * 5.0 / 1e6
        + tokens["image_input"].as_f64().unwrap() * 8.0 / 1e6
        + 6240.0 * 32.0 / 1e6;
    assert!(
        (g.cost.usd - expected).abs() < 1e-12,
        "{} vs {expected}",
        g.cost.usd
    );
    assert!(
        g.cost.usd <= bound,
        "the reservation bounds the actual: {} > {bound}",
        g.cost.usd
    );
    assert_eq!(stub.calls().get("run1:job1:c0"), Some(&1));
    assert_eq!(
        stub.images_per_call(),
        vec![2],
        "the input and one style reference"
    );
    let sent = &stub.requests()[0];
    assert_eq!(sent["model"], "gpt-image-1.5");
    assert_eq!(
        sent["input_fidelity"], "high",
        "the model takes it: its best"
    );
}

#[actix_web::test]
async fn each_current_model_gets_only_the_parameters_it_takes() {
    let stub = OpenAiStub::start().await;
    let p = provider(&stub, Some(KEY), |_| {});
    for (i, name) in [
        "gpt-image-2",
        "gpt-image-2-2026-04-21",
        "chatgpt-image-latest",
        "gpt-image-1.5",
    ]
    .into_iter()
    .enumerate()
    {
        let g = p
            .generate(GenerateRequest {
                options: model(name),
                ..request(&format!("m{i}"))
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(g.model, name);
    }
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    let sent = stub.requests();
    assert_eq!(
        sent[0]["input_fidelity"],
        serde_json::Value::Null,
        "gpt-image-2 takes none"
    );
    assert_eq!(sent[2]["input_fidelity"], "high");
    // A prompt alone goes to the generations endpoint, which
    // chatgpt-image-latest does not serve: refused before any call.
    let before = stub.calls().len();
    let e = p
        .generate(GenerateRequest {
            input: None,
            references: Arc::new(Vec::new()),
            options: model("chatgpt-image-latest"),
            ..request("gen")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Unsupported(u) if u.param == "model"),
        "{e}"
    );
    assert_eq!(e.outcome(), CallOutcome::NotSent);
    assert_eq!(stub.calls().len(), before);
    // gpt-image-2 generates from a prompt alone.
    let g = p
        .generate(GenerateRequest {
            input: None,
            references: Arc::new(Vec::new()),
            options: model("gpt-image-2"),
            ..request("gen2")
        })
        .await
        .unwrap();
    assert_eq!(g.model, "gpt-image-2");
    assert_eq!(
        stub.images_per_call(),
        vec![2, 2, 2, 2, 0],
        "generations carry no image parts"
    );
}

#[actix_web::test]
async fn retired_unknown_and_unsupported_requests_are_refused_before_any_call() {
    let stub = OpenAiStub::start().await;
    let p = provider(&stub, Some(KEY), |_| {});
    let cases = [
        (model("gpt-image-1"), "model"),
        (model("gpt-image-7"), "model"),
        (
            ImageOptions {
                model: Some("gpt-image-2".into()),
                input_fidelity: Some("high".into()),
                ..ImageOptions::default()
            },
            "input_fidelity",
        ),
        (
            ImageOptions {
                size: Some("640x480".into()),
                ..ImageOptions::default()
            },
            "size",
        ),
        (
            ImageOptions {
                background: Some("transparent".into()),
                output_format: Some("jpeg".into()),
                ..ImageOptions::default()
            },
            "background",
        ),
    ];
    for (options, param) in cases {
        let shape = request("x").shape();
        assert!(
            matches!(p.check(&options, shape), Err(ProviderError::Unsupported(u)) if u.param == param)
        );
        let e = p
            .generate(GenerateRequest {
                options,
                ..request("refused")
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), "provider_unsupported_parameter", "{e}");
    }
    assert!(stub.calls().is_empty(), "nothing reached the provider");
}

#[actix_web::test]
async fn the_stub_refuses_what_the_api_refuses_so_a_wrong_catalogue_is_caught() {
    let stub = OpenAiStub::start().await;
    // A catalogue entry that wrongly says gpt-image-2 takes input_fidelity
    // (the adapter's own facts are wrong): the stub answers as OpenAI does.
    let mut wrong = providers::catalog::openai()
        .model("gpt-image-2")
        .unwrap()
        .clone();
    wrong.input_fidelity = vec!["high".into()];
    let p = provider(&stub, Some(KEY), |s| {
        s.model = "gpt-image-2".into();
        s.models = vec![wrong];
    });
    let e = p.generate(request("wrong")).await.unwrap_err();
    assert_eq!(e.code(), "provider_invalid_request", "{e}");
    assert!(e.to_string().contains("Invalid value"), "{e}");
    assert_eq!(stub.violations().len(), 1, "{:?}", stub.violations());
    // A retired model that the catalogue still lists: OpenAI's 404.
    let mut revived = providers::catalog::openai()
        .model("gpt-image-1")
        .unwrap()
        .clone();
    revived.retires_on = None;
    let p = provider(&stub, Some(KEY), |s| {
        s.model = "gpt-image-1".into();
        s.models = vec![revived];
    });
    let e = p.generate(request("retired")).await.unwrap_err();
    assert_eq!(e.code(), "provider_model_not_found", "{e}");
    assert_eq!(e.outcome(), CallOutcome::Refused);
}

#[actix_web::test]
async fn failures_are_classified_by_what_the_provider_may_have_billed() {
    let stub = OpenAiStub::start().await;
    let p = provider(&stub, Some(KEY), |_| {});
    let err = |status, code| Reply::Error {
        status,
        code,
        retry_after: None,
    };
    use CallOutcome::*;
    let cases = [
        (err(401, "invalid_api_key"), "provider_auth", Refused, false),
        (
            err(429, "insufficient_quota"),
            "provider_invalid_request",
            Refused,
            false,
        ),
        (
            err(500, "server_error"),
            "provider_server_error",
            Refused,
            false,
        ),
        (
            err(503, "overloaded"),
            "provider_server_error",
            Refused,
            false,
        ),
        (
            err(504, "gateway_timeout"),
            "provider_server_error",
            Unknown,
            false,
        ),
        (
            err(400, "moderation_blocked"),
            "provider_content_policy",
            Refused,
            false,
        ),
        (
            err(400, "invalid_value"),
            "provider_invalid_request",
            Refused,
            false,
        ),
        (
            err(404, "model_not_found"),
            "provider_model_not_found",
            Refused,
            false,
        ),
        // A 200 cut off in transit: the image was made and billed.
        (
            Reply::Truncated,
            "provider_malformed_response",
            Unknown,
            true,
        ),
        (
            Reply::NotJson,
            "provider_malformed_response",
            Unknown,
            false,
        ),
        // Parsed, with usage, but unusable: billed, and we know how much.
        (Reply::NoImage, "provider_malformed_response", Unknown, true),
        (
            Reply::BadBase64,
            "provider_malformed_response",
            Unknown,
            true,
        ),
    ];
    for (i, (reply, code, outcome, served)) in cases.into_iter().enumerate() {
        let before = stub.served_total();
        stub.script([reply.clone()]);
        let e = p.generate(request(&format!("k{i}"))).await.unwrap_err();
        assert_eq!(e.code(), code, "{reply:?}: {e}");
        assert_eq!(e.outcome(), outcome, "{reply:?}");
        assert!(!format!("{e} {e:?}").contains(KEY), "key leaked: {e:?}");
        assert_eq!(stub.served_total() - before, u32::from(served), "{reply:?}");
        if matches!(reply, Reply::NoImage | Reply::BadBase64) {
            let cost = e.reported_cost().expect("usage reported");
            assert!(cost.usd > 0.0 && cost.detail["basis"] == "reported_usage");
        }
    }
    // 403: a valid key that may not use image models is not a bad key.
    stub.set_unverified(true);
    let e = p.generate(request("unverified")).await.unwrap_err();
    assert_eq!(e.code(), "provider_forbidden", "{e}");
    assert!(
        e.to_string().contains("verified"),
        "the provider's message: {e}"
    );
    stub.set_unverified(false);
    // After all that, a normal call still works.
    assert!(p.generate(request("after")).await.is_ok());
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}

#[actix_web::test]
async fn rate_limit_headers_reach_the_caller() {
    let stub = OpenAiStub::start().await;
    stub.set_rate_limit(2, Duration::from_secs(5));
    let p = provider(&stub, Some(KEY), |_| {});
    let first = p.generate(request("r1")).await.unwrap();
    assert_eq!((first.rate.limit, first.rate.remaining), (Some(2), Some(1)));
    assert!(first.rate.reset_after.is_some());
    p.generate(request("r2")).await.unwrap();
    let e = p.generate(request("r3")).await.unwrap_err();
    assert_eq!(e.code(), "provider_rate_limited");
    let wait = e.retry_after().expect("retry-after-ms");
    assert!(
        wait > Duration::from_secs(3) && wait <= Duration::from_secs(5),
        "{wait:?}"
    );
    assert_eq!(e.outcome(), CallOutcome::Refused);
    assert_eq!(stub.throttled(), 1);
}

#[actix_web::test]
async fn without_usage_the_cost_is_the_reserved_bound() {
    let stub = OpenAiStub::start().await;
    stub.set_usage(false);
    let p = provider(&stub, Some(KEY), |_| {});
    let req = request("nousage");
    let bound = p.max_cost_usd(&req.options, req.shape());
    let g = p.generate(req).await.unwrap();
    assert_eq!(g.cost.detail["basis"], "estimate");
    assert!((g.cost.usd - bound).abs() < 1e-12);
}

#[actix_web::test]
async fn credentials_timeouts_and_limits() {
    let stub = OpenAiStub::start().await;
    // No key: refused before anything is sent.
    let none = provider(&stub, None, |_| {});
    assert!(matches!(
        none.preflight(),
        Err(ProviderError::NotConfigured(_))
    ));
    let e = none.generate(request("nokey")).await.unwrap_err();
    assert_eq!(e.code(), "provider_not_configured");
    assert_eq!(e.outcome(), CallOutcome::NotSent);
    assert!(stub.calls().is_empty(), "nothing reached the provider");
    // A wrong key: the provider's 401.
    let wrong = provider(&stub, Some("sk-wrong-0123456789"), |_| {});
    assert_eq!(
        wrong.generate(request("wrong")).await.unwrap_err().code(),
        "provider_auth"
    );
    assert_eq!(
        wrong.check_credentials(None).await.unwrap_err().code(),
        "provider_auth"
    );
    // The free check: the key works and the configured model is listed.
    let ok = provider(&stub, Some(KEY), |_| {});
    ok.check_credentials(None).await.unwrap();
    let mut unlisted = providers::catalog::openai()
        .model("gpt-image-2")
        .unwrap()
        .clone();
    unlisted.model = "gpt-image-3-preview".into();
    let future = provider(&stub, Some(KEY), |s| {
        s.model = "gpt-image-3-preview".into();
        s.models = vec![unlisted];
    });
    assert_eq!(
        future.check_credentials(None).await.unwrap_err().code(),
        "provider_model_not_found"
    );
    // Slower than the timeout: sent, answer lost.
    let quick = provider(&stub, Some(KEY), |s| s.timeout_secs = 1);
    stub.script([Reply::Slow(Duration::from_millis(2500))]);
    let e = quick.generate(request("slow")).await.unwrap_err();
    assert_eq!(e.code(), "provider_timeout", "{e}");
    assert_eq!(e.outcome(), CallOutcome::Unknown);
    // Larger than allowed: refused, not read into memory; billed all the same.
    let small = provider(&stub, Some(KEY), |s| s.max_response_bytes = 512);
    let e = small.generate(request("big")).await.unwrap_err();
    assert_eq!(e.code(), "provider_malformed_response", "{e}");
    assert_eq!(e.outcome(), CallOutcome::Unknown);
    // Nothing listens: not sent.
    let gone = provider(&stub, Some(KEY), |s| {
        s.base_url = "http://127.0.0.1:9/v1".into()
    });
    let e = gone.generate(request("gone")).await.unwrap_err();
    assert_eq!(e.code(), "provider_unreachable", "{e}");
    assert_eq!(e.outcome(), CallOutcome::NotSent);
}

#[test]
fn settings_are_checked_before_any_call() {
    atelier::startup::install_runtime_defaults();
    let refuse = |tweak: &dyn Fn(&mut OpenAiSettings)| {
        let mut s = OpenAiSettings::default();
        tweak(&mut s);
        OpenAiProvider::new(s, Arc::new(Fixed(Some(KEY))), DecodeLimits::default())
            .err()
            .map(|e| e.to_string())
    };
    assert!(refuse(&|_| {}).is_none(), "the default is usable");
    assert!(
        refuse(&|s| s.model = "gpt-image-1".into())
            .unwrap()
            .contains("retired")
    );
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
    // A new model is a configuration change.
    assert!(
        refuse(&|s| {
            let mut m = providers::catalog::openai()
                .model("gpt-image-2")
                .unwrap()
                .clone();
            m.model = "gpt-image-2-mini".into();
            s.model = m.model.clone();
            s.models = vec![m];
        })
        .is_none()
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
    use crate::bg_stub::{self, RemovalStub, Reply};
    use providers::bg_remote::{RemoteRemover, RemoteRemoverSettings, Service};

    fn remover(
        stub: &RemovalStub,
        service: Service,
        key: Option<&'static str>,
        tweak: impl FnOnce(&mut RemoteRemoverSettings),
    ) -> RemoteRemover {
        atelier::startup::install_runtime_defaults();
        let (base_url, account) = match service {
            Service::RemoveBg => (stub.removebg_url.clone(), stub.removebg_url.clone()),
            Service::PhotoRoom => (
                stub.photoroom_url.clone(),
                stub.photoroom_account_url.clone(),
            ),
        };
        let mut settings = RemoteRemoverSettings {
            enabled: true,
            base_url: Some(base_url),
            account_base_url: Some(account),
            timeout_secs: Some(1),
            ..RemoteRemoverSettings::default()
        };
        tweak(&mut settings);
        RemoteRemover::new(
            service,
            settings,
            Arc::new(Fixed(key)),
            DecodeLimits::default(),
        )
        .unwrap()
    }

    #[actix_web::test]
    async fn both_services_speak_their_documented_wire_formats() {
        let stub = RemovalStub::start().await;
        let input = imaging::scene::sample_scene(2, 64, 48);
        for (service, price) in [(Service::RemoveBg, 0.20), (Service::PhotoRoom, 0.02)] {
            let r = remover(&stub, service, Some(bg_stub::KEY), |_| {});
            r.check_credentials(None).await.unwrap();
            let out = r.remove(input.clone(), None).await.unwrap();
            let img = imaging::decode(&out.bytes, DecodeLimits::default()).unwrap();
            assert_eq!(img.dimensions(), (64, 48));
            assert_eq!(img.get_pixel(0, 0).0[3], 0, "cut-out is transparent");
            assert!(
                (out.cost.usd - price).abs() < 1e-12,
                "{service:?}: {:?}",
                out.cost
            );
            let err = |status, code| Reply::Error { status, code };
            use CallOutcome::*;
            let cases = [
                (
                    err(402, "insufficient_credits"),
                    "provider_invalid_request",
                    Refused,
                ),
                (err(429, "rate_limit"), "provider_rate_limited", Refused),
                (err(503, "unavailable"), "provider_server_error", Refused),
                (
                    err(400, "unknown_foreground"),
                    "provider_invalid_request",
                    Refused,
                ),
                (Reply::NotAnImage, "provider_malformed_response", Unknown),
                (Reply::Truncated, "provider_malformed_response", Unknown),
                (
                    Reply::Slow(Duration::from_millis(2500)),
                    "provider_timeout",
                    Unknown,
                ),
            ];
            let service_stub = match service {
                Service::RemoveBg => &stub.removebg,
                Service::PhotoRoom => &stub.photoroom,
            };
            for (reply, code, outcome) in cases {
                service_stub.script([reply.clone()]);
                let e = r.remove(input.clone(), None).await.unwrap_err();
                assert_eq!(e.code(), code, "{service:?} {reply:?}: {e}");
                assert_eq!(e.outcome(), outcome, "{service:?} {reply:?}");
                assert!(!format!("{e:?}").contains(bg_stub::KEY));
            }
            let wrong = remover(&stub, service, Some("wrong-key"), |_| {});
            let e = wrong.remove(input.clone(), None).await.unwrap_err();
            let expected = match service {
                // remove.bg answers a bad key with 403 "Authentication failed".
                Service::RemoveBg => "provider_auth",
                Service::PhotoRoom => "provider_forbidden",
            };
            assert_eq!(e.code(), expected, "{service:?}: {e}");
            let before = stub.calls();
            let none = remover(&stub, service, None, |_| {});
            assert!(none.preflight().is_err());
            assert_eq!(
                none.remove(input.clone(), None).await.unwrap_err().code(),
                "provider_not_configured"
            );
            assert_eq!(stub.calls(), before, "nothing sent without a key");
        }
        assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    }

    #[actix_web::test]
    async fn remove_bg_charges_what_it_says_and_auto_returns_less_when_credits_are_low() {
        let stub = RemovalStub::start().await;
        let r = remover(&stub, Service::RemoveBg, Some(bg_stub::KEY), |_| {});
        let input = imaging::scene::sample_scene(3, 1024, 768);
        let full = r.remove(input.clone(), None).await.unwrap();
        assert_eq!(full.cost.detail["basis"], "credits_charged");
        assert_eq!(full.cost.detail["credits"], 1.0);
        assert_eq!(full.cost.detail["reduced"], false);
        stub.removebg.set_credits(0.5);
        let low = r.remove(input.clone(), None).await.unwrap();
        assert_eq!(low.cost.detail["credits"], 0.25);
        assert!((low.cost.usd - 0.05).abs() < 1e-12, "{:?}", low.cost);
        assert_eq!(low.cost.detail["reduced"], true, "{}", low.cost.detail);
        let img = imaging::decode(&low.bytes, DecodeLimits::default()).unwrap();
        assert!(u64::from(img.width()) * u64::from(img.height()) <= 250_000);
        stub.removebg.set_credits(0.1);
        let e = r.remove(input, None).await.unwrap_err();
        assert!(e.to_string().contains("insufficient credits"), "{e}");
        // The reservation bound covers the dearest answer.
        assert!((r.max_cost_usd() - 0.20).abs() < 1e-12);
        assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    }

    #[actix_web::test]
    async fn photoroom_account_lives_on_the_image_api_host() {
        let stub = RemovalStub::start().await;
        let right = remover(&stub, Service::PhotoRoom, Some(bg_stub::KEY), |_| {});
        right.check_credentials(None).await.unwrap();
        // The segmentation host has no account endpoint (the old mistake).
        let wrong_host = remover(&stub, Service::PhotoRoom, Some(bg_stub::KEY), |s| {
            s.account_base_url = Some(stub.photoroom_url.clone());
        });
        let e = wrong_host.check_credentials(None).await.unwrap_err();
        assert_eq!(e.code(), "provider_invalid_request", "{e}");
        let bad = remover(&stub, Service::PhotoRoom, Some("nope"), |_| {});
        let e = bad.check_credentials(None).await.unwrap_err();
        assert!(e.to_string().contains("Invalid API key"), "{e}");
    }

    #[actix_web::test]
    async fn remove_bg_rate_limits_come_with_their_headers() {
        let stub = RemovalStub::start().await;
        stub.removebg.set_rate_limit(1, Duration::from_secs(30));
        let r = remover(&stub, Service::RemoveBg, Some(bg_stub::KEY), |_| {});
        let input = imaging::scene::sample_scene(2, 64, 48);
        let ok = r.remove(input.clone(), None).await.unwrap();
        assert_eq!((ok.rate.limit, ok.rate.remaining), (Some(1), Some(0)));
        let e = r.remove(input, None).await.unwrap_err();
        assert_eq!(e.code(), "provider_rate_limited");
        let wait = e.retry_after().unwrap();
        assert!(wait >= Duration::from_secs(25), "{wait:?}");
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
    let a = p.generate(from("a quiet harbour")).await.unwrap();
    let again = p.generate(from("a quiet harbour")).await.unwrap();
    let other = p.generate(from("a busy market")).await.unwrap();
    assert_eq!(a.decoded.as_ref().unwrap().dimensions(), (512, 384));
    assert_eq!(a.bytes, again.bytes, "same prompt, same file");
    assert_ne!(a.bytes, other.bytes, "the prompt shapes the scene");
    assert!(p.honours_idempotency_key());
}
