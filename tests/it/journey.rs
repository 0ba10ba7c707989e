//! The J00–J08 journey over HTTP against the real binary (`atelier serve`),
//! on the test run's database (SQLite, or a fresh PostgreSQL database): what
//! a frontend written for the v1 contract does, start to finish.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::binary::{Deployment, Server};

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, value)
    }

    /// Expects 200 and `ok: true`.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, b) = self.call(method.clone(), path, body).await;
        assert_eq!(s, StatusCode::OK, "{method} {path}: {b}");
        assert_eq!(b["ok"], true, "{method} {path}: {b}");
        b
    }
}

#[actix_web::test]
async fn the_whole_journey_against_the_real_binary() {
    let mut deploy = Deployment::new(&[(
        "ATELIER_SECRETS__MASTER_KEY_ENV",
        "ATELIER_TEST_UNSET_MASTER_KEY",
    )])
    .await;
    let server = deploy.start().await;
    walk(&server, &deploy.client).await;
}

/// J00–J08 on a running server; returns the token it used. Leaves the
/// project `harbour_tales` with a run, its files and records, a catalogue,
/// a chat session and a confirmed instruction.
pub async fn walk(server: &Server, http: &reqwest::Client) -> String {
    let backend = if crate::helpers::on_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    let health: Value = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["database_backend"], backend);

    // J00: the first token, a project, its provider account and secret.
    let minted: Value = http
        .post(format!("{}/auth/token", server.base))
        .json(&json!({"label": "journey"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c = Client {
        http: http.clone(),
        base: server.base.clone(),
        token: minted["auth_token"]["token"].as_str().unwrap().to_string(),
    };
    use Method as M;
    c.ok(
        M::POST,
        "/api/projects",
        Some(json!({"name": "Harbour Tales"})),
    )
    .await;
    let p = "/api/projects/harbour_tales";
    c.ok(
        M::POST,
        &format!("{p}/provider-accounts"),
        Some(json!({"provider_code": "OpenAI"})),
    )
    .await;
    c.ok(M::POST, &format!("{p}/secrets"), Some(json!({"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-journey"}))).await;
    let secrets = c.ok(M::GET, &format!("{p}/secrets"), None).await;
    assert_eq!(secrets["count"], 1);
    assert!(!secrets.to_string().contains("sk-journey"));

    // J02: the creative catalogue and an uploaded scene.
    c.ok(
        M::POST,
        &format!("{p}/style-guides"),
        Some(json!({"name": "Ink", "instructions": "flat tones"})),
    )
    .await;
    c.ok(
        M::POST,
        &format!("{p}/characters"),
        Some(json!({"name": "Mara", "description": "courier"})),
    )
    .await;
    let set = c
        .ok(
            M::POST,
            &format!("{p}/reference-sets"),
            Some(json!({"name": "Docks"})),
        )
        .await;
    let set_id = set["reference_set"]["id"].as_str().unwrap().to_string();
    c.ok(
        M::POST,
        &format!("{p}/reference-sets/{set_id}/items"),
        Some(json!({"label": "Crane", "content_text": "rusty"})),
    )
    .await;
    c.ok(
        M::POST,
        &format!("{p}/prompt-templates"),
        Some(json!({"name": "Panel", "template_text": "{{scene}}"})),
    )
    .await;
    let png = imaging::encode_png(&imaging::scene::sample_scene(4, 96, 64)).unwrap();
    let upload: Value = http
        .post(format!("{}{p}/assets?name=dock.png", server.base))
        .bearer_auth(&c.token)
        .body(png)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scene = upload["asset"]["id"].as_str().unwrap().to_string();

    // J03: bootstrap export and a dry-run import.
    let export = c.ok(M::GET, &format!("{p}/bootstrap-prompt"), None).await;
    assert_eq!(
        export["bootstrap"]["settings"]["characters"][0]["name"],
        "Mara"
    );
    let dry = c
        .ok(
            M::POST,
            &format!("{p}/bootstrap-import"),
            Some(json!({"dry_run": true, "settings": {"characters": [{"name": "Ivo"}]}})),
        )
        .await;
    assert_eq!(
        dry["bootstrap_import"]["changes"]["characters"]["created"],
        1
    );

    // J04–J06: a staged run from the uploaded scene, its files and records.
    let run = c
        .ok(M::POST, &format!("{p}/runs/trigger"), Some(json!({"mode": "run", "scene_refs": [scene], "stage": "time", "time": "dusk", "candidates": 2, "wait": true})))
        .await;
    assert_eq!(run["run"]["status"], "done", "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let jobs = c.ok(M::GET, &format!("{p}/runs/{run_id}/jobs"), None).await;
    assert_eq!(jobs["count"], 2);
    let final_id = jobs["jobs"][1]["final_asset_id"]
        .as_str()
        .unwrap()
        .to_string();
    let asset = c.ok(M::GET, &format!("{p}/assets/{final_id}"), None).await;
    assert!(asset["asset"]["sha256"].is_string());
    let links = c
        .ok(
            M::GET,
            &format!("{p}/asset-links?asset_id={final_id}"),
            None,
        )
        .await;
    assert!(links["count"].as_u64().unwrap() >= 1);
    c.ok(M::POST, &format!("{p}/asset-links"), Some(json!({"parent_asset_id": scene, "child_asset_id": final_id, "link_type": "reference_of"}))).await;
    let reports = c.ok(M::GET, &format!("{p}/quality-reports"), None).await;
    assert_eq!(reports["count"], 4);
    c.ok(M::GET, &format!("{p}/cost-events"), None).await;
    let events = c
        .ok(M::GET, &format!("{p}/runs/{run_id}/events"), None)
        .await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "run.finished")
    );

    // J07: copilot records.
    let session = c
        .ok(M::POST, &format!("{p}/chat/sessions"), Some(json!({})))
        .await;
    let sid = session["session"]["id"].as_str().unwrap().to_string();
    c.ok(
        M::POST,
        &format!("{p}/chat/sessions/{sid}/messages"),
        Some(json!({"role": "user", "content": "darker please"})),
    )
    .await;
    let ins = c
        .ok(
            M::POST,
            &format!("{p}/agent/instructions"),
            Some(json!({"instruction_text": "re-run at night"})),
        )
        .await;
    let iid = ins["instruction"]["id"].as_str().unwrap().to_string();
    let confirmed = c
        .ok(
            M::POST,
            &format!("{p}/agent/instructions/{iid}/confirm"),
            Some(json!({})),
        )
        .await;
    assert_eq!(confirmed["instruction"]["status"], "confirmed");

    // J08: exports (none yet) and the project's summary; then clean-up.
    let exports = c.ok(M::GET, &format!("{p}/exports"), None).await;
    assert_eq!(exports["count"], 0);
    let detail = c.ok(M::GET, p, None).await;
    assert!(detail["counts"]["assets"].as_u64().unwrap() >= 5);
    c.ok(M::DELETE, &format!("{p}/secrets/openai/api_key"), None)
        .await;
    let (s, _) = c
        .call(M::GET, "/api/projects/nope/style-guides", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    c.token
}
