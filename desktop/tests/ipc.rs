//! Contract smoke tests through the shell's command boundary: Tauri's mock
//! runtime sends real `InvokeRequest`s through the webview's message path
//! (argument handling, the capability check from `capabilities/`, the
//! command, the response), to the service embedded on SQLite — the same
//! J00–J08 journey the HTTP test walks, and the feed on the event channel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{INVOKE_KEY, MockRuntime, get_ipc_response, mock_builder};
use tauri::webview::InvokeRequest;
use tauri::{Listener, Manager, WebviewWindow, WebviewWindowBuilder};

struct Shell {
    app: tauri::App<MockRuntime>,
    window: WebviewWindow<MockRuntime>,
    _dir: tempfile::TempDir,
}

/// The app as `desktop::run` builds it (the real configuration and
/// capability), its service on a fresh app-data directory.
fn shell() -> Shell {
    let dir = tempfile::tempdir().unwrap();
    let app = desktop::builder(mock_builder())
        .build(tauri::generate_context!())
        .unwrap();
    let service =
        desktop::EmbeddedService::start(desktop::service::data_dir_in(dir.path())).unwrap();
    app.manage(desktop::Shell::new(service));
    let window = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    Shell {
        app,
        window,
        _dir: dir,
    }
}

impl Shell {
    fn invoke(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        get_ipc_response(
            &self.window,
            InvokeRequest {
                cmd: cmd.into(),
                callback: CallbackFn(0),
                error: CallbackFn(1),
                url: "tauri://localhost".parse().unwrap(),
                body: InvokeBody::Json(args),
                headers: Default::default(),
                invoke_key: INVOKE_KEY.to_string(),
            },
        )
        .map(|b| b.deserialize::<Value>().unwrap())
    }

    /// `api`, expecting success with `ok: true`.
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut args = json!({"method": method, "path": path});
        if let Some(body) = body {
            args["body"] = body;
        }
        let answer = self.invoke("api", args);
        let Ok(answer) = answer else {
            panic!("{method} {path}: {answer:?}");
        };
        assert_eq!(answer["ok"], true, "{method} {path}: {answer}");
        answer
    }

    fn typed(&self, cmd: &str, args: Value) -> Value {
        let answer = self.invoke(cmd, args.clone());
        let Ok(answer) = answer else {
            panic!("{cmd} {args}: {answer:?}");
        };
        assert_eq!(answer["ok"], true, "{cmd}: {answer}");
        answer
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.app.state::<desktop::Shell>().stop();
    }
}

/// The frozen error envelope, and the status the same call gets over HTTP.
fn assert_envelope(err: &Value, status: u64, code: &str) {
    assert_eq!(err["ok"], false, "{err}");
    assert!(err["error"].is_string(), "{err}");
    assert!(err["error_kind"].is_string(), "{err}");
    assert_eq!(err["http_status"], status, "{err}");
    assert!(
        err["error_code"] == code || err["error_detail"]["code"] == code,
        "{err}"
    );
}

#[test]
fn the_whole_journey_through_ipc() {
    let s = shell();
    let health = s.typed("health", json!({}));
    assert_eq!(health["database_backend"], "sqlite");

    // J00: the shell holds a token from its start, so the unauthenticated
    // bootstrap over HTTP is closed; tokens are minted through the shell.
    let service = s.app.state::<desktop::Shell>().service().base_url();
    let bootstrap: Value = tauri::async_runtime::block_on(async {
        reqwest::Client::new()
            .post(format!("{service}/auth/token"))
            .json(&json!({"label": "stranger"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(bootstrap["error_code"], "unauthorized", "{bootstrap}");
    let minted = s.ok(
        "POST",
        "/auth/token",
        Some(json!({"label": "collaborator"})),
    );
    assert!(minted["auth_token"]["token"].is_string());
    s.typed(
        "project_upsert",
        json!({"project": {"name": "Harbour Tales"}}),
    );
    let listed = s.typed("projects_list", json!({}));
    assert!(listed.to_string().contains("harbour_tales"), "{listed}");
    let p = "/api/projects/harbour_tales";
    s.ok(
        "POST",
        &format!("{p}/provider-accounts"),
        Some(json!({"provider_code": "OpenAI"})),
    );
    s.ok("POST", &format!("{p}/secrets"), Some(json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-journey"})));
    let secrets = s.ok("GET", &format!("{p}/secrets"), None);
    assert_eq!(secrets["count"], 1);
    assert!(!secrets.to_string().contains("sk-journey"));

    // J02: the creative catalogue and an uploaded scene (raw bytes).
    s.ok(
        "POST",
        &format!("{p}/style-guides"),
        Some(json!({"name": "Ink", "instructions": "flat tones"})),
    );
    s.ok(
        "POST",
        &format!("{p}/characters"),
        Some(json!({"name": "Mara", "description": "courier"})),
    );
    let set = s.ok(
        "POST",
        &format!("{p}/reference-sets"),
        Some(json!({"name": "Docks"})),
    );
    let set_id = set["reference_set"]["id"].as_str().unwrap().to_string();
    s.ok(
        "POST",
        &format!("{p}/reference-sets/{set_id}/items"),
        Some(json!({"label": "Crane", "content_text": "rusty"})),
    );
    s.ok(
        "POST",
        &format!("{p}/prompt-templates"),
        Some(json!({"name": "Panel", "template_text": "{{scene}}"})),
    );
    let png = imaging::encode_png(&imaging::scene::sample_scene(4, 96, 64)).unwrap();
    let upload = s
        .invoke(
            "api",
            json!({
                "method": "POST", "path": format!("{p}/assets"), "query": {"name": "dock.png"},
                "body_base64": base64::engine::general_purpose::STANDARD.encode(&png),
                "content_type": "image/png",
            }),
        )
        .unwrap();
    let scene = upload["asset"]["id"].as_str().unwrap().to_string();

    // J03: bootstrap export and a dry-run import.
    let export = s.ok("GET", &format!("{p}/bootstrap-prompt"), None);
    assert_eq!(
        export["bootstrap"]["settings"]["characters"][0]["name"],
        "Mara"
    );
    let dry = s.ok(
        "POST",
        &format!("{p}/bootstrap-import"),
        Some(json!({"dry_run": true, "settings": {"characters": [{"name": "Ivo"}]}})),
    );
    assert_eq!(
        dry["bootstrap_import"]["changes"]["characters"]["created"],
        1
    );

    // J04–J06: a staged run from the uploaded scene, its files and records.
    let run = s.typed(
        "run_trigger",
        json!({"slug": "harbour_tales", "request": {"mode": "run", "scene_refs": [scene], "stage": "time", "time": "dusk", "candidates": 2, "wait": true}}),
    );
    assert_eq!(run["run"]["status"], "done", "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let detail = s.typed(
        "run_detail",
        json!({"slug": "harbour_tales", "run_id": run_id}),
    );
    assert_eq!(detail["run"]["status"], "done");
    let jobs = s.ok("GET", &format!("{p}/runs/{run_id}/jobs"), None);
    assert_eq!(jobs["count"], 2);
    let final_id = jobs["jobs"][1]["final_asset_id"]
        .as_str()
        .unwrap()
        .to_string();
    let asset = s.ok("GET", &format!("{p}/assets/{final_id}"), None);
    assert!(asset["asset"]["sha256"].is_string());
    let file = s
        .invoke(
            "api",
            json!({"method": "GET", "path": format!("{p}/assets/{final_id}/content")}),
        )
        .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(file["body_base64"].as_str().unwrap())
        .unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "{}", file["content_type"]);
    let links = s.invoke(
        "api",
        json!({"method": "GET", "path": format!("{p}/asset-links"), "query": {"asset_id": final_id}}),
    );
    assert!(links.unwrap()["count"].as_u64().unwrap() >= 1);
    s.ok("POST", &format!("{p}/asset-links"), Some(json!({"parent_asset_id": scene, "child_asset_id": final_id, "link_type": "reference_of"})));
    let reports = s.ok("GET", &format!("{p}/quality-reports"), None);
    assert_eq!(reports["count"], 4);
    s.ok("GET", &format!("{p}/cost-events"), None);
    let events = s.typed(
        "events_since",
        json!({"slug": "harbour_tales", "run_id": run_id, "since": 0}),
    );
    let all = events["events"].as_array().unwrap();
    assert!(all.iter().any(|e| e["event_type"] == "run.finished"));
    let later = s.typed(
        "events_since",
        json!({"slug": "harbour_tales", "run_id": run_id, "since": 2}),
    );
    assert_eq!(later["events"].as_array().unwrap().len(), all.len() - 2);

    // J07: copilot records.
    let session = s.ok("POST", &format!("{p}/chat/sessions"), Some(json!({})));
    let sid = session["session"]["id"].as_str().unwrap().to_string();
    s.ok(
        "POST",
        &format!("{p}/chat/sessions/{sid}/messages"),
        Some(json!({"role": "user", "content": "darker please"})),
    );
    let ins = s.ok(
        "POST",
        &format!("{p}/agent/instructions"),
        Some(json!({"instruction_text": "re-run at night"})),
    );
    let iid = ins["instruction"]["id"].as_str().unwrap().to_string();
    let confirmed = s.ok(
        "POST",
        &format!("{p}/agent/instructions/{iid}/confirm"),
        Some(json!({})),
    );
    assert_eq!(confirmed["instruction"]["status"], "confirmed");

    // J08: exports (none yet) and the project's summary; then clean-up.
    let exports = s.ok("GET", &format!("{p}/exports"), None);
    assert_eq!(exports["count"], 0);
    let detail = s.ok("GET", p, None);
    assert!(detail["counts"]["assets"].as_u64().unwrap() >= 5);
    s.ok("DELETE", &format!("{p}/secrets/openai/api_key"), None);
    let missing = s
        .invoke(
            "api",
            json!({"method": "GET", "path": "/api/projects/nope/style-guides"}),
        )
        .unwrap_err();
    assert_envelope(&missing, 404, "not_found");
}

#[test]
fn feed_events_arrive_on_the_event_channel_in_order() {
    let s = shell();
    let (tx, rx) = mpsc::channel::<Value>();
    s.app.listen(desktop::feed::FEED_EVENT, move |event| {
        let _ = tx.send(serde_json::from_str(event.payload()).unwrap());
    });
    s.typed("project_upsert", json!({"project": {"name": "Feed"}}));
    let live = s.typed("feed_subscribe", json!({"slug": "feed"}))["subscription"]
        .as_u64()
        .unwrap();
    let run = s.typed(
        "run_trigger",
        json!({"slug": "feed", "request": {"mode": "run", "scene_refs": ["sample:1", "sample:2"], "stage": "time", "candidates": 2}}),
    );
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let seqs_of = |sub: u64, rx: &mpsc::Receiver<Value>| {
        let mut seen: Vec<(i64, String)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Ok(m) = rx.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            if m["subscription"] != sub || m["message"]["run_id"] != run_id.as_str() {
                continue;
            }
            let msg = &m["message"];
            assert_eq!(msg["type"], "event", "{m}");
            seen.push((
                msg["seq"].as_i64().unwrap(),
                msg["event_type"].as_str().unwrap().into(),
            ));
            if msg["event_type"] == "run.finished" {
                return seen;
            }
        }
        panic!("no run.finished on subscription {sub}: {seen:?}");
    };
    let live_seen = seqs_of(live, &rx);
    // The same events, in the order the service numbered them.
    let stored = s.typed("events_since", json!({"slug": "feed", "run_id": run_id}));
    let stored: Vec<(i64, String)> = stored["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["event_type"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(live_seen, stored);
    assert!(stored.len() > 8, "{stored:?}");

    // A run's replay after `since`, through the same channel.
    let replay = s.typed(
        "feed_subscribe",
        json!({"slug": "feed", "run_id": run_id, "since": 3}),
    )["subscription"]
        .as_u64()
        .unwrap();
    assert_ne!(replay, live);
    assert_eq!(seqs_of(replay, &rx), stored[3..].to_vec());
    let stopped = s.typed("feed_unsubscribe", json!({"subscription": replay}));
    assert_eq!(stopped["stopped"], true);
    let again = s.typed("feed_unsubscribe", json!({"subscription": replay}));
    assert_eq!(again["stopped"], false);

    // A refused handshake is the service's envelope.
    let refused = s
        .invoke("feed_subscribe", json!({"slug": "feed", "since": 3}))
        .unwrap_err();
    assert_envelope(&refused, 400, "invalid_request");
}

#[test]
fn the_boundary_refuses_in_the_envelope_and_allows_only_the_shells_commands() {
    let s = shell();
    // Arguments checked by the shell: missing, mistyped, malformed.
    let missing = s.invoke("run_detail", json!({"slug": "x"})).unwrap_err();
    assert_envelope(&missing, 400, "missing_field");
    let mistyped = s
        .invoke("run_detail", json!({"slug": 7, "run_id": "y"}))
        .unwrap_err();
    assert_envelope(&mistyped, 400, "invalid_field_type");
    let method = s
        .invoke("api", json!({"method": "TRACE", "path": "/health"}))
        .unwrap_err();
    assert_envelope(&method, 400, "invalid_ipc_method");
    for path in [
        "health",
        "http://example.com/health",
        "/api/projects?x=1",
        "/a b",
    ] {
        let refused = s
            .invoke("api", json!({"method": "GET", "path": path}))
            .unwrap_err();
        assert_envelope(&refused, 400, "invalid_ipc_path");
    }
    let body = s
        .invoke(
            "api",
            json!({"method": "POST", "path": "/api/projects", "body_base64": "%%%"}),
        )
        .unwrap_err();
    assert_envelope(&body, 400, "invalid_ipc_body");
    // A slug cannot climb out of its segment.
    let climbed = s
        .invoke("run_detail", json!({"slug": "../../health", "run_id": "x"}))
        .unwrap_err();
    assert_envelope(&climbed, 404, "not_found");
    // The service's own validation arrives as it sends it.
    let invalid = s
        .invoke("project_upsert", json!({"project": {"name": ""}}))
        .unwrap_err();
    assert_eq!(invalid["error_kind"], "validation", "{invalid}");
    assert_eq!(invalid["http_status"], 400);

    // Only the shell's commands pass the capability.
    let core = s.invoke("plugin:app|version", json!({})).unwrap_err();
    assert!(core.to_string().contains("not allowed"), "{core}");
    let unknown = s.invoke("shell_exec", json!({})).unwrap_err();
    assert!(unknown.to_string().contains("not"), "{unknown}");
}

#[test]
fn the_service_stops_gracefully_and_a_restart_finds_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = desktop::service::data_dir_in(dir.path());
    let first = desktop::EmbeddedService::start(data.clone()).unwrap();
    assert!(data.join("backend").join("app.db").is_file());
    let base = first.base_url();
    first.stop();
    // Stopped: the port no longer answers.
    let refused = std::net::TcpStream::connect_timeout(&first.addr(), Duration::from_millis(500));
    assert!(refused.is_err(), "{base} still answers after stop");
    // The next start finds the same database; the earlier shell's token
    // was revoked at its stop (one live shell token at a time).
    let second = desktop::Shell::new(desktop::EmbeddedService::start(data).unwrap());
    let tokens = tauri::async_runtime::block_on(second.call(
        "GET",
        "/auth/tokens",
        None,
        desktop::commands::Body::None,
    ))
    .unwrap();
    let shells: Vec<&Value> = tokens["auth_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["label"] == desktop::service::SHELL_TOKEN_LABEL)
        .collect();
    assert_eq!(shells.len(), 2, "{tokens}");
    assert_eq!(
        shells.iter().filter(|t| t["active"] == true).count(),
        1,
        "{tokens}"
    );
    second.stop();
}
