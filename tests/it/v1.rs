//! What a client written against v1 sees: v1's error codes and messages,
//! its validation order (§2.5 of the contract), its keys and numbering.
//! Atelier's more specific codes are additive (`error_detail`).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// Body `{}` and id `x` on an empty database, as v1's own surface test
/// sends them: which status (and v1 code and message) comes first.
#[actix_web::test]
async fn validation_order_and_codes_match_v1() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    let p = "/api/projects/nope";
    // (method, path, status, v1 error_code, message fragment)
    let cases: Vec<(Method, String, u16, &str, &str)> = vec![
        (
            Method::POST,
            "/api/projects".into(),
            400,
            "validation_error",
            "Field 'name' is required",
        ),
        (
            Method::POST,
            format!("{p}/bootstrap-import"),
            400,
            "validation_error",
            "Provide either 'settings' or 'ai_response_text'",
        ),
        (
            Method::PUT,
            format!("{p}/storage/local"),
            400,
            "validation_error",
            "Provide at least one of: base_dir, project_root",
        ),
        (
            Method::PUT,
            format!("{p}/storage/s3"),
            404,
            "not_found",
            "Project not found",
        ),
        (
            Method::POST,
            format!("{p}/runs/validate-config"),
            404,
            "not_found",
            "Project not found",
        ),
        (
            Method::POST,
            format!("{p}/asset-links"),
            400,
            "validation_error",
            "Field 'parent_asset_id' is required",
        ),
        (
            Method::PUT,
            format!("{p}/asset-links/x"),
            400,
            "validation_error",
            "Provide at least one of: parent_asset_id, child_asset_id, link_type",
        ),
        (
            Method::POST,
            format!("{p}/prompt-templates"),
            400,
            "validation_error",
            "Field 'name' is required",
        ),
        (
            Method::POST,
            format!("{p}/provider-accounts"),
            400,
            "validation_error",
            "Field 'provider_code' is required",
        ),
        (
            Method::POST,
            format!("{p}/style-guides"),
            400,
            "validation_error",
            "Field 'name' is required",
        ),
        (
            Method::POST,
            format!("{p}/characters"),
            400,
            "validation_error",
            "Field 'name' is required",
        ),
        (
            Method::POST,
            format!("{p}/reference-sets"),
            400,
            "validation_error",
            "Field 'name' is required",
        ),
        (
            Method::POST,
            format!("{p}/reference-sets/x/items"),
            400,
            "validation_error",
            "Field 'label' is required",
        ),
        (
            Method::POST,
            format!("{p}/chat/sessions/x/messages"),
            400,
            "validation_error",
            "Field 'role' is required",
        ),
        (
            Method::POST,
            format!("{p}/agent/instructions"),
            400,
            "validation_error",
            "Field 'instruction_text' is required",
        ),
        (
            Method::POST,
            format!("{p}/secrets"),
            400,
            "validation_error",
            "Field 'provider_code' is required",
        ),
        (
            Method::POST,
            format!("{p}/chat/sessions"),
            404,
            "not_found",
            "Project not found",
        ),
        (
            Method::POST,
            format!("{p}/agent/instructions/x/confirm"),
            404,
            "not_found",
            "",
        ),
        (
            Method::POST,
            format!("{p}/agent/instructions/x/cancel"),
            404,
            "not_found",
            "",
        ),
        (
            Method::POST,
            format!("{p}/secrets/rotate"),
            404,
            "not_found",
            "Project not found",
        ),
        (
            Method::DELETE,
            format!("{p}/style-guides/x"),
            404,
            "not_found",
            "",
        ),
        (
            Method::DELETE,
            format!("{p}/characters/x"),
            404,
            "not_found",
            "",
        ),
        (
            Method::DELETE,
            format!("{p}/reference-sets/x"),
            404,
            "not_found",
            "",
        ),
        (
            Method::DELETE,
            format!("{p}/prompt-templates/x"),
            404,
            "not_found",
            "",
        ),
        (
            Method::DELETE,
            format!("{p}/asset-links/x"),
            404,
            "not_found",
            "",
        ),
        (
            Method::DELETE,
            format!("{p}/provider-accounts/openai"),
            404,
            "not_found",
            "",
        ),
        (
            Method::DELETE,
            format!("{p}/secrets/openai/api_key"),
            404,
            "not_found",
            "",
        ),
        (
            Method::DELETE,
            "/auth/tokens/x".into(),
            404,
            "not_found",
            "Auth token not found",
        ),
    ];
    for (method, path, status, code, message) in cases {
        let body = (method != Method::DELETE).then(|| json!({}));
        let (s, b) = app.call(method.clone(), &path, Some(&token), body).await;
        assert_eq!(
            (s.as_u16(), b["error_code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {b}"
        );
        assert_eq!(b["ok"], false);
        assert_eq!(b["error_kind"], "validation", "{method} {path}: {b}");
        assert!(
            b["error"].as_str().unwrap().contains(message),
            "{method} {path}: {b}"
        );
        // Atelier's specific code, additively.
        assert!(
            b["error_detail"]["code"].is_string(),
            "{method} {path}: {b}"
        );
    }
    // The specific code and the field are in the detail.
    let (_, b) = app.post("/api/projects", &token, json!({})).await;
    assert_eq!(
        b["error_detail"],
        json!({"code": "field_required", "field": "name"})
    );
    let (s, b) = app.post("/auth/token", &token, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // 405 names what is allowed.
    let res = app
        .client
        .post(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET");
}

/// v1's run shapes: jobs carry `final_output`, candidates `output_path`
/// and `final_output_path` (`""` when there is no file), candidates are
/// numbered from 1 and `selected_candidate_index` uses that numbering.
#[actix_web::test]
async fn jobs_and_candidates_have_v1_keys_and_numbering() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:1@64x48"], "stage": "style", "candidates": 3, "wait": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id = b["run_id"].as_str().unwrap();
    for path in [
        format!("/api/projects/book/runs/{run_id}"),
        format!("/api/projects/book/runs/{run_id}/jobs"),
    ] {
        let (s, b) = app.get(&path, &token).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let job = &b["jobs"][0];
        let selected = job["selected_candidate_index"].as_i64().unwrap();
        assert!((1..=3).contains(&selected), "{job}");
        let indexes: Vec<i64> = job["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["candidate_index"].as_i64().unwrap())
            .collect();
        assert_eq!(indexes, vec![1, 2, 3]);
        let winner = &job["candidates"][(selected - 1) as usize];
        assert_eq!(winner["final_asset_id"], job["final_asset_id"]);
        let final_output = job["final_output"].as_str().unwrap();
        assert!(
            final_output.starts_with(&format!("runs/{run_id}/")),
            "{job}"
        );
        assert_eq!(winner["final_output_path"], json!(final_output));
        for c in job["candidates"].as_array().unwrap() {
            assert!(
                c["output_path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(".png")),
                "{c}"
            );
            assert!(c["final_output_path"].is_string(), "{c}");
        }
    }
    // A planned job (dry run) has no files yet: the keys are there, empty.
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "dry", "scene_refs": ["sample:2"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let dry = b["run_id"].as_str().unwrap();
    let (_, b) = app
        .get(&format!("/api/projects/book/runs/{dry}/jobs"), &token)
        .await;
    for job in b["jobs"].as_array().unwrap() {
        assert_eq!(job["final_output"], "", "{job}");
    }
}

/// Asset links: v1's order (required fields, then different ends, then
/// the type, then whether the assets exist) and message for an unknown id,
/// malformed or not.
#[actix_web::test]
async fn asset_links_validate_in_v1_order() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let cases = [
        (
            json!({"child_asset_id": "x"}),
            "Field 'parent_asset_id' is required",
        ),
        (
            json!({"parent_asset_id": "not-a-uuid"}),
            "Field 'child_asset_id' is required",
        ),
        (
            json!({"parent_asset_id": "a", "child_asset_id": "a"}),
            "parent_asset_id and child_asset_id must differ",
        ),
        (
            json!({"parent_asset_id": "a", "child_asset_id": "b", "link_type": "cousin"}),
            "Field 'link_type' must be one of",
        ),
        (
            json!({"parent_asset_id": "not-a-uuid", "child_asset_id": "b"}),
            "Asset 'not-a-uuid' was not found in this project",
        ),
        (
            json!({"parent_asset_id": uuid::Uuid::now_v7().to_string(), "child_asset_id": "b"}),
            "was not found in this project",
        ),
    ];
    for (body, message) in cases {
        let (s, b) = app
            .post("/api/projects/book/asset-links", &token, body.clone())
            .await;
        assert_eq!(
            (s.as_u16(), b["error_code"].as_str()),
            (400, Some("validation_error")),
            "{body}: {b}"
        );
        assert!(
            b["error"].as_str().unwrap().contains(message),
            "{body}: {b}"
        );
    }
}

/// v1's published OpenAPI describes instructions as `{instruction_type,
/// payload_json}`; such a body is accepted.
#[actix_web::test]
async fn v1_openapi_request_shapes_are_accepted() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let base = "/api/projects/book/agent/instructions";
    for (body, text) in [
        (
            json!({"instruction_type": "rerun", "payload_json": {"stage": "time"}}),
            "rerun: {\"stage\":\"time\"}",
        ),
        (
            json!({"instruction_type": "rerun", "payload_json": {}}),
            "rerun",
        ),
        (json!({"payload_json": {"text": "darker"}}), "darker"),
    ] {
        let (s, b) = app.post(base, &token, body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{body}: {b}");
        assert_eq!(b["instruction"]["instruction_text"], text, "{b}");
    }
    let (_, b) = app.get("/api/projects/book/bootstrap-prompt", &token).await;
    let account: &Value = &b["bootstrap"]["expected_response"]["settings"]["provider_accounts"][0];
    for key in [
        "provider_code",
        "display_name",
        "account_ref",
        "base_url",
        "enabled",
        "config_json",
    ] {
        assert!(account.get(key).is_some(), "{key} missing: {account}");
    }
}

/// Every entity carries every key v1's shapes have (contract §1.3); extra
/// keys are allowed.
#[actix_web::test]
async fn every_entity_has_v1_keys() {
    let app = TestApp::spawn_with(|s| s.providers.local.price_usd = 0.01).await;
    let token = app.bootstrap_token().await;
    let ok = |(s, b): (StatusCode, Value)| {
        assert_eq!(s, StatusCode::OK, "{b}");
        b
    };
    let p = "/api/projects/book";
    let created = ok(app
        .post(
            "/api/projects",
            &token,
            json!({"name": "Book", "slug": "book"}),
        )
        .await);
    let run = ok(app
        .post(
            &format!("{p}/runs/trigger"),
            &token,
            json!({"mode": "run", "confirm_spend": true, "scene_refs": ["sample:1@64x48"], "candidates": 2, "wait": true}),
        )
        .await);
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let assets = ok(app.get(&format!("{p}/assets?kind=generated"), &token).await);
    let (a0, a1) = (
        assets["assets"][0]["id"].as_str().unwrap().to_string(),
        assets["assets"][1]["id"].as_str().unwrap().to_string(),
    );
    let link = ok(app
        .post(
            &format!("{p}/asset-links"),
            &token,
            json!({"parent_asset_id": a0, "child_asset_id": a1, "link_type": "variant_of"}),
        )
        .await);
    let template = ok(app
        .post(
            &format!("{p}/prompt-templates"),
            &token,
            json!({"name": "P", "template_text": "t"}),
        )
        .await);
    let account = ok(app
        .post(
            &format!("{p}/provider-accounts"),
            &token,
            json!({"provider_code": "openai"}),
        )
        .await);
    let style = ok(app
        .post(
            &format!("{p}/style-guides"),
            &token,
            json!({"name": "Ink", "instructions": "flat"}),
        )
        .await);
    let character = ok(app
        .post(&format!("{p}/characters"), &token, json!({"name": "Mara"}))
        .await);
    let set = ok(app
        .post(
            &format!("{p}/reference-sets"),
            &token,
            json!({"name": "Docks"}),
        )
        .await);
    let set_id = set["reference_set"]["id"].as_str().unwrap().to_string();
    let item = ok(app
        .post(
            &format!("{p}/reference-sets/{set_id}/items"),
            &token,
            json!({"label": "Crane", "content_text": "rusty"}),
        )
        .await);
    let session = ok(app
        .post(&format!("{p}/chat/sessions"), &token, json!({}))
        .await);
    let sid = session["session"]["id"].as_str().unwrap().to_string();
    let message = ok(app
        .post(
            &format!("{p}/chat/sessions/{sid}/messages"),
            &token,
            json!({"role": "user", "content": "hi"}),
        )
        .await);
    let instruction = ok(app
        .post(
            &format!("{p}/agent/instructions"),
            &token,
            json!({"instruction_text": "go"}),
        )
        .await);
    let iid = instruction["instruction"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let events = ok(app
        .get(&format!("{p}/agent/instructions/{iid}/events"), &token)
        .await);
    let secret = ok(app
        .post(
            &format!("{p}/secrets"),
            &token,
            json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-v1"}),
        )
        .await);
    let projects = ok(app.get("/api/projects", &token).await);
    let detail = ok(app.get(p, &token).await);
    let tokens = ok(app.get("/auth/tokens", &token).await);
    let run_detail = ok(app.get(&format!("{p}/runs/{run_id}"), &token).await);
    let reports = ok(app.get(&format!("{p}/quality-reports"), &token).await);
    let costs = ok(app.get(&format!("{p}/cost-events"), &token).await);
    let shapes: Vec<(&str, &Value, &[&str])> = vec![
        (
            "ProjectSummary",
            &projects["projects"][0],
            &[
                "id",
                "slug",
                "name",
                "description",
                "status",
                "username",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "ProjectInfo",
            &detail["project"],
            &[
                "id",
                "slug",
                "name",
                "description",
                "status",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "Storage.local",
            &created["storage"]["local"],
            &["base_dir", "project_root"],
        ),
        (
            "Storage.s3",
            &created["storage"]["s3"],
            &[
                "enabled",
                "bucket",
                "prefix",
                "region",
                "profile",
                "endpoint_url",
            ],
        ),
        (
            "TokenSummary",
            &tokens["auth_tokens"][0],
            &[
                "id",
                "user_id",
                "project_id",
                "token_prefix",
                "label",
                "expires_at",
                "revoked_at",
                "last_used_at",
                "created_at",
                "active",
            ],
        ),
        (
            "Run",
            &run_detail["run"],
            &[
                "id",
                "project_id",
                "run_mode",
                "status",
                "stage",
                "time_of_day",
                "weather",
                "model_name",
                "provider_code",
                "settings_snapshot_json",
                "started_at",
                "finished_at",
                "created_at",
                "run_log_path",
                "image_size",
                "image_quality",
            ],
        ),
        (
            "Job",
            &run_detail["jobs"][0],
            &[
                "id",
                "run_id",
                "job_key",
                "status",
                "prompt_text",
                "selected_candidate_index",
                "final_asset_id",
                "final_output",
                "meta_json",
                "created_at",
                "candidates",
            ],
        ),
        (
            "Candidate",
            &run_detail["jobs"][0]["candidates"][0],
            &[
                "id",
                "job_id",
                "candidate_index",
                "status",
                "output_asset_id",
                "final_asset_id",
                "output_path",
                "final_output_path",
                "rank_hard_failures",
                "rank_soft_warnings",
                "rank_avg_chroma_exceed",
                "meta_json",
                "created_at",
            ],
        ),
        (
            "Asset",
            &assets["assets"][0],
            &[
                "id",
                "project_id",
                "kind",
                "asset_kind",
                "storage_uri",
                "rel_path",
                "storage_backend",
                "mime_type",
                "width",
                "height",
                "sha256",
                "run_id",
                "job_id",
                "candidate_id",
                "metadata_json",
                "created_at",
            ],
        ),
        (
            "AssetLink",
            &link["asset_link"],
            &[
                "id",
                "project_id",
                "parent_asset_id",
                "child_asset_id",
                "link_type",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "QualityReport",
            &reports["quality_reports"][0],
            &[
                "id",
                "project_id",
                "run_id",
                "asset_id",
                "report_type",
                "grade",
                "hard_failures",
                "soft_warnings",
                "avg_chroma_exceed",
                "summary_json",
                "created_at",
            ],
        ),
        (
            "CostEvent",
            &costs["cost_events"][0],
            &[
                "id",
                "project_id",
                "run_id",
                "job_id",
                "provider_code",
                "model_name",
                "event_type",
                "units",
                "unit_cost_usd",
                "total_cost_usd",
                "currency",
                "meta_json",
                "created_at",
            ],
        ),
        (
            "PromptTemplate",
            &template["prompt_template"],
            &[
                "id",
                "project_id",
                "name",
                "template_text",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "ProviderAccount",
            &account["provider_account"],
            &[
                "project_id",
                "provider_code",
                "display_name",
                "account_ref",
                "base_url",
                "enabled",
                "config_json",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "StyleGuide",
            &style["style_guide"],
            &[
                "id",
                "project_id",
                "name",
                "instructions",
                "notes",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "Character",
            &character["character"],
            &[
                "id",
                "project_id",
                "name",
                "description",
                "prompt_text",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "ReferenceSet",
            &set["reference_set"],
            &[
                "id",
                "project_id",
                "name",
                "description",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "ReferenceItem",
            &item["item"],
            &[
                "id",
                "project_id",
                "reference_set_id",
                "label",
                "content_uri",
                "content_text",
                "sort_order",
                "metadata_json",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "ChatSession",
            &session["session"],
            &[
                "id",
                "project_id",
                "title",
                "status",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "ChatMessage",
            &message["message"],
            &[
                "id",
                "project_id",
                "session_id",
                "role",
                "content",
                "created_at",
            ],
        ),
        (
            "Instruction",
            &instruction["instruction"],
            &[
                "id",
                "project_id",
                "instruction_text",
                "status",
                "created_at",
                "updated_at",
                "confirmed_at",
                "canceled_at",
            ],
        ),
        (
            "InstructionEvent",
            &events["events"][0],
            &[
                "id",
                "project_id",
                "instruction_id",
                "event_type",
                "message",
                "created_at",
            ],
        ),
        (
            "SecretSummary",
            &secret["secret"],
            &[
                "project_id",
                "provider_code",
                "secret_name",
                "has_value",
                "updated_at",
            ],
        ),
    ];
    let mut missing = Vec::new();
    for (shape, value, keys) in &shapes {
        assert!(value.is_object(), "{shape}: {value}");
        for key in keys.iter() {
            if value.get(*key).is_none() {
                missing.push(format!("{shape}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys v1 has and Atelier lacks: {missing:?}"
    );
    assert!(!secret.to_string().contains("sk-v1"));
}
