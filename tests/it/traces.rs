//! A request's trace continues through the engine: the span of the request
//! that triggered a run is the parent of the run's span, which is the parent
//! of each job's span, through the actor messages and the spawned job bodies.
//! Checked on the real binary's JSON log.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::binary::{Deployment, eventually};

#[actix_web::test]
async fn a_run_triggered_by_a_request_logs_its_job_bodies_inside_that_requests_trace() {
    let mut deploy = Deployment::new(&[("ATELIER_LOG_FORMAT", "json")]).await;
    let client = deploy.client.clone();
    let server = deploy.start().await;
    let token = server.bootstrap(&client).await;
    let (s, b) = server
        .call(
            &client,
            Method::POST,
            "/api/projects",
            Some(&token),
            Some(json!({"name": "Traced", "slug": "traced"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let res = client
        .post(format!("{}/api/projects/traced/runs/trigger", server.base))
        .bearer_auth(&token)
        .json(&json!({"mode": "run", "scene_refs": ["sample:1@64x48", "sample:2@64x48"], "stage": "time", "candidates": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    let run_id = body["run_id"].as_str().unwrap().to_string();
    eventually("the run to finish", Duration::from_secs(30), || {
        let (client, token, server, run_id) = (&client, &token, &server, &run_id);
        async move {
            let (_, b) = server
                .call(
                    client,
                    Method::GET,
                    &format!("/api/projects/traced/runs/{run_id}"),
                    Some(token),
                    None,
                )
                .await;
            (b["run"]["status"] == "done").then_some(())
        }
    })
    .await;
    drop(server);

    let lines: Vec<Value> = deploy
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let job_ends: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "job body ended")
        .collect();
    // Two scenes, two stages each (style lock, then time of day): the second
    // stage's jobs start long after the request has ended.
    assert_eq!(job_ends.len(), 4, "one line per job");
    for line in job_ends {
        let spans = line["spans"]
            .as_array()
            .expect("the line carries its spans");
        let named = |name: &str| spans.iter().find(|s| s["name"] == name);
        let request = named("HTTP request").unwrap_or_else(|| panic!("no request span: {line}"));
        assert_eq!(request["request_id"], request_id.as_str(), "{line}");
        assert_eq!(request["http.route"], "/api/projects/{slug}/runs/trigger");
        let run = named("run").unwrap_or_else(|| panic!("no run span: {line}"));
        assert_eq!(run["run_id"], run_id.as_str());
        let job = named("job").unwrap_or_else(|| panic!("no job span: {line}"));
        assert!(job["job_key"].as_str().is_some_and(|k| !k.is_empty()));
        // Outermost first: request, then run, then job.
        let at = |name: &str| spans.iter().position(|s| s["name"] == name).unwrap();
        assert!(at("HTTP request") < at("run") && at("run") < at("job"));
    }
    // The run's own lifecycle (its finish, after the request has long
    // ended) is in the same trace.
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "run finished")
        .expect("the run's finish is logged");
    assert_eq!(finished["fields"]["status"], "done");
    let spans = finished["spans"].as_array().unwrap();
    assert!(
        spans.iter().any(|s| s["name"] == "finish")
            && spans.iter().any(|s| s["request_id"] == request_id.as_str()),
        "{finished}"
    );
}
