//! The ops console in a real headless browser against the real server: the
//! page loads, follows a run to done with thumbnails, shows the actor tree
//! and a restart triggered from its own button.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::browser::Browser;
use crate::helpers::TestApp;

const PAGE_STATE: &str = "document.querySelector('main').innerText";

#[actix_web::test]
async fn console_follows_a_run_to_done_and_shows_a_restart() {
    let app = TestApp::spawn_with(|s| {
        s.providers.local.latency_ms = 250;
        s.engine.max_jobs_per_run = 1;
    })
    .await;
    let token = app.bootstrap_token().await;
    app.create_project(&token, "Book <script>alert(1)</script>", "book")
        .await;

    // Served by the service itself, locked down.
    let page = app
        .client
        .get(format!("{}/console", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(page.text().await.unwrap().contains("/console/console.js"));

    let mut browser = Browser::open(&format!("{}/console#token={token}", app.base)).await;
    browser
        .wait_for(
            "document.querySelector('#status').dataset.state === 'live'",
            Duration::from_secs(15),
            "document.body.innerText",
        )
        .await;
    assert_eq!(
        browser.eval("location.hash").await,
        json!(""),
        "the token leaves the address bar"
    );
    let actors = browser
        .eval("[...document.querySelectorAll('#actors tr[data-actor]')].map(r => r.dataset.actor)")
        .await;
    for name in [
        "project",
        "cost",
        "audit",
        "webhooks",
        "background",
        "agent",
    ] {
        assert!(
            actors.as_array().unwrap().contains(&json!(name)),
            "{actors}"
        );
    }

    // A run of 4 jobs, one at a time: the page sees it running, then done.
    let (s, b) = app
        .post(
            "/api/projects/book/runs/trigger",
            &token,
            json!({"mode": "run", "scene_refs": ["sample:1@320x240", "sample:2@320x240"], "stage": "time", "candidates": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let run_id = b["run_id"].as_str().unwrap();
    let row = format!("document.querySelector('tr[data-run-id=\"{run_id}\"]')");
    let running = browser
        .wait_for(
            &format!("{row} && {row}.dataset.status === 'running' && Number({row}.dataset.finished) < 4 && {row}.dataset.finished"),
            Duration::from_secs(15),
            PAGE_STATE,
        )
        .await;
    assert!(running.as_str().unwrap().parse::<u32>().unwrap() < 4);
    browser
        .wait_for(
            &format!("{row} && {row}.dataset.status === 'done' && {row}.dataset.finished === '4' && {row}.dataset.total === '4'"),
            Duration::from_secs(30),
            PAGE_STATE,
        )
        .await;
    assert_eq!(
        browser
            .eval(&format!("{row}.querySelector('progress').value"))
            .await,
        json!(4)
    );
    // Thumbnails load through the asset content route.
    browser
        .wait_for(
            &format!("[...{row}.querySelectorAll('img[data-thumb]')].filter(i => i.complete && i.naturalWidth > 0).length >= 2"),
            Duration::from_secs(10),
            PAGE_STATE,
        )
        .await;
    // The token never travels in a URL the server sees: thumbnails are
    // object URLs fetched with the header, the feed authenticates by
    // subprotocol.
    assert_eq!(
        browser
            .eval(&format!("[...{row}.querySelectorAll('img[data-thumb]')].every(i => i.src.startsWith('blob:'))"))
            .await,
        json!(true)
    );
    assert_eq!(
        browser
            .eval("performance.getEntriesByType('resource').filter(e => e.name.includes('token=')).length")
            .await,
        json!(0)
    );
    // Project names are text, never markup.
    assert_eq!(
        browser
            .eval("document.querySelectorAll('main script').length")
            .await,
        json!(0)
    );

    // A restart from the page's own button shows in the actor tree.
    browser
        .eval("document.querySelector('[data-restart=\"cost\"]').click(), true")
        .await;
    browser
        .wait_for(
            "document.querySelector('tr[data-actor=\"cost\"]').dataset.restarts === '1'",
            Duration::from_secs(10),
            "document.querySelector('#actors').innerText",
        )
        .await;
    let (_, sup) = app.get("/admin/supervision", &token).await;
    let cost = sup["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "cost")
        .unwrap();
    assert_eq!(cost["restarts"], 1, "{sup}");
    assert_eq!(browser.eval("window.__consoleErrors").await, json!([]));
}
