//! Chat sessions and messages; agent instructions and their guarded state
//! machine (journey J07 records).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, assert_error};

#[actix_web::test]
async fn chat_sessions_keep_messages_in_order() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    app.create_project(&token, "Other", "other").await;
    let (s, b) = app
        .post("/api/projects/book/chat/sessions", &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (
            b["session"]["title"].as_str(),
            b["session"]["status"].as_str()
        ),
        (Some("New Session"), Some("active"))
    );
    let id = b["session"]["id"].as_str().unwrap().to_string();
    let msgs = format!("/api/projects/book/chat/sessions/{id}/messages");

    // Role and content before the session lookup.
    for (body, code, message) in [
        (
            json!({"content": "hi"}),
            "field_required",
            "Field 'role' is required",
        ),
        (
            json!({"role": "robot", "content": "hi"}),
            "invalid_role",
            "Field 'role' must be one of: user, assistant, system, tool",
        ),
        (
            json!({"role": "user"}),
            "field_required",
            "Field 'content' is required",
        ),
    ] {
        let (s, e) = app
            .post(
                "/api/projects/book/chat/sessions/nope/messages",
                &token,
                body,
            )
            .await;
        assert_error(s, &e, 400, code);
        assert_eq!(e["error"], message);
    }
    let (s, e) = app
        .post(
            "/api/projects/book/chat/sessions/nope/messages",
            &token,
            json!({"role": "user", "content": "hi"}),
        )
        .await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Chat session not found");

    for (role, content) in [
        ("User", "Draw the harbour at dusk"),
        ("assistant", "  Planned 3 panels.\n"),
        ("tool", "run 42 queued"),
    ] {
        let (s, m) = app
            .post(&msgs, &token, json!({"role": role, "content": content}))
            .await;
        assert_eq!(s, StatusCode::OK, "{m}");
    }
    // The v1 OpenAPI's field name is accepted too.
    let (s, _) = app
        .post(
            &msgs,
            &token,
            json!({"role": "user", "content_text": "and rain"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = app.get(&msgs, &token).await;
    assert_eq!(list["session_id"], json!(id));
    let got: Vec<(&str, &str)> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("user", "Draw the harbour at dusk"),
            ("assistant", "  Planned 3 panels.\n"),
            ("tool", "run 42 queued"),
            ("user", "and rain")
        ]
    );
    let (_, sessions) = app.get("/api/projects/book/chat/sessions", &token).await;
    assert_eq!(sessions["count"], 1);
    let (s, e) = app
        .get(&format!("/api/projects/other/chat/sessions/{id}"), &token)
        .await;
    assert_error(s, &e, 404, "not_found");
}

#[actix_web::test]
async fn instructions_follow_a_guarded_state_machine() {
    let app = TestApp::spawn().await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book", "book").await;
    let base = "/api/projects/book/agent/instructions";
    let (s, e) = app
        .post("/api/projects/nope/agent/instructions", &token, json!({}))
        .await;
    assert_error(s, &e, 400, "field_required");
    assert_eq!(e["error"], "Field 'instruction_text' is required");

    // The v1 OpenAPI's field names are accepted too.
    let (s, v1) = app
        .post(base, &token, json!({"instruction_type": "agent_instruction", "payload_json": {"instruction_text": "from v1 clients"}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v1}");
    assert_eq!(v1["instruction"]["instruction_text"], "from v1 clients");
    let v1_id = v1["instruction"]["id"].as_str().unwrap().to_string();
    let (s, _) = app
        .post(&format!("{base}/{v1_id}/cancel"), &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let create = |text: &'static str| app.post(base, &token, json!({"instruction_text": text}));
    let (s, a) = create("Re-run chapter 2 at night").await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["instruction"]["status"], "pending");
    assert_eq!(a["instruction"]["confirmed_at"], "");
    assert!(a["audit_id"].is_string());
    let a_id = a["instruction"]["id"].as_str().unwrap().to_string();
    let (_, b) = create("Upscale the covers").await;
    let b_id = b["instruction"]["id"].as_str().unwrap().to_string();

    // Confirm twice: the second is a no-op. Then cancel is refused.
    let (s, c) = app
        .post(
            &format!("{base}/{a_id}/confirm"),
            &token,
            json!({"message": "go"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["instruction"]["status"], "confirmed");
    assert_ne!(c["instruction"]["confirmed_at"], "");
    let (s, _) = app
        .post(&format!("{base}/{a_id}/confirm"), &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = app
        .post(&format!("{base}/{a_id}/cancel"), &token, json!({}))
        .await;
    assert_error(s, &e, 400, "invalid_transition");
    assert_eq!(e["error"], "Instruction is already confirmed");

    // Cancel the other; confirming it is refused.
    let (s, _) = app
        .post(&format!("{base}/{b_id}/cancel"), &token, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = app
        .post(&format!("{base}/{b_id}/confirm"), &token, json!({}))
        .await;
    assert_error(s, &e, 400, "invalid_transition");
    assert_eq!(e["error"], "Instruction is already canceled");

    // An agent's late report never overwrites a cancel; a confirmed one runs to done.
    let b_uuid: uuid::Uuid = b_id.parse().unwrap();
    let a_uuid: uuid::Uuid = a_id.parse().unwrap();
    assert!(
        !domain::copilot::report(&app.db, b_uuid, "confirmed", "running", None)
            .await
            .unwrap()
    );
    assert!(
        domain::copilot::report(&app.db, a_uuid, "confirmed", "running", None)
            .await
            .unwrap()
    );
    assert!(
        domain::copilot::report(&app.db, a_uuid, "running", "done", Some("3 runs".into()))
            .await
            .unwrap()
    );
    assert!(
        !domain::copilot::report(&app.db, a_uuid, "running", "failed", None)
            .await
            .unwrap(),
        "a second verdict is not applied"
    );
    let (s, e) = app
        .post(&format!("{base}/{a_id}/confirm"), &token, json!({}))
        .await;
    assert_error(s, &e, 400, "invalid_transition");
    assert_eq!(
        e["error"], "Instruction is already done",
        "a finished instruction is never requeued"
    );

    let (_, ev) = app.get(&format!("{base}/{a_id}/events"), &token).await;
    assert_eq!(ev["instruction_id"], json!(a_id));
    let types: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["created", "confirmed", "running", "done"]);
    assert_eq!(ev["events"][1]["message"], "go");
    let (_, b_events) = app.get(&format!("{base}/{b_id}/events"), &token).await;
    assert_eq!(b_events["count"], 2, "created, canceled: {b_events}");
    let (_, d) = app.get(&format!("{base}/{b_id}"), &token).await;
    assert_eq!(d["instruction"]["status"], "canceled");
    let (_, list) = app.get(base, &token).await;
    assert_eq!(list["count"], 3);
    let (s, e) = app
        .get(&format!("{base}/{}", uuid::Uuid::now_v7()), &token)
        .await;
    assert_error(s, &e, 404, "not_found");
    assert_eq!(e["error"], "Agent instruction not found");
    // Another project sees none of it.
    app.create_project(&token, "Other", "other").await;
    let (s, e) = app
        .get(
            &format!("/api/projects/other/agent/instructions/{a_id}"),
            &token,
        )
        .await;
    assert_error(s, &e, 404, "not_found");
    let scoped = app.scoped_token(&token, "other").await;
    let (s, _) = app
        .post(&format!("{base}/{a_id}/confirm"), &scoped, json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let audits = app.audit_codes().await;
    for code in [
        "instruction.created",
        "instruction.confirmed",
        "instruction.canceled",
    ] {
        assert!(audits.iter().any(|a| a == code), "{audits:?}");
    }
}
