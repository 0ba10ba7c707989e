//! Several nodes on one PostgreSQL database, for what only PostgreSQL
//! provides (`LISTEN`/`NOTIFY`). scripts/test.sh leaves this module out of
//! the SQLite run instead of letting it pass there without testing anything.

mod chaos;
mod private_pg;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

use crate::binary::Server;
use crate::openai_stub::OpenAiStub;
use crate::recovery::deployment;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn feed(server: &Server, path_and_query: &str, token: &str) -> Ws {
    let url = format!(
        "{}{path_and_query}",
        server.base.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The run's events as the feed delivered them, until `run.finished`.
async fn until_finished(ws: &mut Ws, run_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = msg.unwrap() {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["run_id"] != run_id {
                continue;
            }
            let done = v["event_type"] == "run.finished";
            out.push(v);
            if done {
                return out;
            }
        }
    }
    panic!("no run.finished on the feed within 60 s; got {out:#?}");
}

/// A WebSocket client attached to node A follows, live and gap-free, a run
/// that node B drives: B announces what it commits (NOTIFY), A reads it
/// back from `run_events` and sends it on. A run-scoped client that joins
/// mid-run gets the replay and then the rest live.
#[actix_web::test]
async fn a_feed_client_on_one_node_follows_a_run_another_node_drives() {
    assert!(
        crate::helpers::on_postgres(),
        "PostgreSQL only: scripts/test.sh runs this module on PostgreSQL"
    );
    let stub = OpenAiStub::start().await;
    stub.set_latency(Duration::from_millis(150));
    let mut deploy = deployment(&stub, &[("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "2")]).await;
    let a = deploy.start_node("node-a").await;
    let b = deploy.start_node("node-b").await;
    let client = deploy.client.clone();
    let token = a.bootstrap(&client).await;
    a.create_project(&client, &token, "Relay", "relay").await;
    let mut project_feed = feed(&a, "/api/projects/relay/events/ws", &token).await;
    // Submitted to node B: node B drives it.
    let (s, body) = b
        .call(
            &client,
            Method::POST,
            "/api/projects/relay/runs/trigger",
            Some(&token),
            Some(json!({
                "mode": "run", "provider": "openai", "confirm_spend": true,
                "scene_refs": ["sample:1", "sample:2", "sample:3"], "stage": "style",
                "candidates": 2,
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_string();
    let submitted = Instant::now();
    // A run-scoped client joins on node A once the run is under way.
    let mut first = project_feed.next().await.unwrap().unwrap();
    while !matches!(&first, Message::Text(_)) {
        first = project_feed.next().await.unwrap().unwrap();
    }
    let mut run_feed = feed(
        &a,
        &format!("/api/projects/relay/events/ws?run_id={run_id}&since=0"),
        &token,
    )
    .await;
    let mut live = vec![serde_json::from_str::<Value>(first.to_text().unwrap()).unwrap()];
    live.retain(|v| v["run_id"] == run_id.as_str());
    live.extend(until_finished(&mut project_feed, &run_id).await);
    let replayed = until_finished(&mut run_feed, &run_id).await;
    let took = submitted.elapsed();

    let db = deploy.connect().await;
    let run = entities::runs::Entity::find_by_id(run_id.parse::<Uuid>().unwrap())
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    let owner = entities::run_owners::Entity::find_by_id(run.id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.node_id, "node-b", "node B drove the run");
    assert!(run.last_event_seq > 5, "{run:?}");
    let want: Vec<i64> = (1..=run.last_event_seq).collect();
    for (name, got) in [("project feed", &live), ("run feed", &replayed)] {
        let seqs: Vec<i64> = got.iter().map(|v| v["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, want, "{name} on node A: every event once, in order");
    }
    assert!(took < Duration::from_secs(60));
}

/// Makes the deployment's database refuse every connection and ends its
/// sessions (`refuse`), or lets connections in again: to the nodes, the
/// database is gone as in a restart.
async fn refuse_connections(deploy: &crate::binary::Deployment, refuse: bool) {
    use sea_orm::ConnectionTrait;
    let url = deploy.db.url.clone().unwrap();
    let name = url.rsplit('/').next().unwrap();
    let admin = sea_orm::Database::connect(
        std::env::var("ATELIER_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    )
    .await
    .unwrap();
    admin
        .execute_unprepared(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {}",
            !refuse
        ))
        .await
        .unwrap();
    if refuse {
        admin
            .execute_unprepared(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ))
            .await
            .unwrap();
    }
    admin.close().await.unwrap();
}

/// A node cut off from its database says so: `/health` answers 503
/// `database_unreachable` in the error envelope (instead of serving stale
/// data) while its heartbeat cannot reach the database, and 200 again once
/// it can. The database refuses every connection meanwhile (`ALLOW_CONNECTIONS
/// false`, its sessions terminated).
#[actix_web::test]
async fn a_node_cut_off_from_its_database_answers_503_on_health_until_it_is_back() {
    assert!(
        crate::helpers::on_postgres(),
        "PostgreSQL only: scripts/test.sh runs this module on PostgreSQL"
    );
    let mut deploy =
        crate::binary::Deployment::new(&[("ATELIER_ENGINE__HEARTBEAT_MS", "200")]).await;
    let node = deploy.start().await;
    let client = deploy.client.clone();
    let health = || async {
        let (s, body) = node.call(&client, Method::GET, "/health", None, None).await;
        (s, body)
    };
    let (s, body) = health().await;
    assert_eq!(s, StatusCode::OK, "{body}");
    refuse_connections(&deploy, true).await;
    let body = crate::binary::eventually("health 503", Duration::from_secs(20), || async {
        let (s, body) = health().await;
        (s == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    crate::helpers::assert_error(
        StatusCode::SERVICE_UNAVAILABLE,
        &body,
        503,
        "database_unreachable",
    );
    refuse_connections(&deploy, false).await;
    crate::binary::eventually("health 200 again", Duration::from_secs(30), || async {
        (health().await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert!(
        deploy.logs().contains("the database is reachable again"),
        "the outage and the recovery are logged"
    );
}

/// Other nodes' writes and revocations reach this node's caches at once
/// (announced with NOTIFY), not after the caches' windows: a project renamed
/// and a token revoked on node B show on node A within a second or two,
/// though A's read caches revalidate only every ten minutes by themselves
/// and its token cache keeps a token ten minutes.
#[actix_web::test]
async fn caches_follow_other_nodes_writes_and_revocations_at_once() {
    assert!(
        crate::helpers::on_postgres(),
        "PostgreSQL only: scripts/test.sh runs this module on PostgreSQL"
    );
    let mut deploy = crate::binary::Deployment::new(&[
        // Nothing else on node A revalidates its caches meanwhile.
        ("ATELIER_ENGINE__HEARTBEAT_MS", "30000"),
        ("ATELIER_HTTP__READ_CACHE_MS", "600000"),
        ("ATELIER_AUTH__TOKEN_CACHE_SECONDS", "600"),
    ])
    .await;
    let a = deploy.start_node("node-a").await;
    let b = deploy.start_node("node-b").await;
    let client = deploy.client.clone();
    let token = a.bootstrap(&client).await;
    async fn upsert(server: &Server, client: &reqwest::Client, token: &str, name: &str) {
        let body = json!({"name": name, "slug": "shared"});
        let (s, body) = server
            .call(
                client,
                Method::POST,
                "/api/projects",
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let seen_on_a = || async {
        let (_, detail) = a
            .call(
                &client,
                Method::GET,
                "/api/projects/shared",
                Some(&token),
                None,
            )
            .await;
        let (_, list) = a
            .call(&client, Method::GET, "/api/projects", Some(&token), None)
            .await;
        (
            detail["project"]["name"].as_str().unwrap_or("").to_string(),
            list["projects"][0]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    };
    upsert(&a, &client, &token, "Shared").await;
    assert_eq!(seen_on_a().await, ("Shared".into(), "Shared".into()));
    upsert(&b, &client, &token, "Shared Elsewhere").await;
    let renamed = Instant::now();
    crate::binary::eventually(
        "node B's rename on node A",
        Duration::from_secs(5),
        || async {
            (seen_on_a().await == ("Shared Elsewhere".into(), "Shared Elsewhere".into()))
                .then_some(())
        },
    )
    .await;
    assert!(renamed.elapsed() < Duration::from_secs(5));

    // A second token, used (and so cached) on node A, revoked on node B.
    let (s, minted) = a
        .call(
            &client,
            Method::POST,
            "/auth/token",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{minted}");
    let second = minted["auth_token"]["token"].as_str().unwrap().to_string();
    let second_id = minted["auth_token"]["id"].as_str().unwrap().to_string();
    let on_a = |t: String| {
        let (a, client) = (&a, &client);
        async move {
            a.call(client, Method::GET, "/api/projects", Some(&t), None)
                .await
                .0
        }
    };
    assert_eq!(on_a(second.clone()).await, StatusCode::OK);
    let (s, body) = b
        .call(
            &client,
            Method::DELETE,
            &format!("/auth/tokens/{second_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    crate::binary::eventually(
        "the revocation on node A",
        Duration::from_secs(5),
        || async { (on_a(second.clone()).await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    assert_eq!(
        on_a(token.clone()).await,
        StatusCode::OK,
        "the other token stays valid"
    );
}

/// A node whose project files are not the cluster's (its own data
/// directory, not a shared one) is refused at start, with a message saying
/// what to do; a node sharing the files starts, and so does one told that
/// every project is on S3.
#[actix_web::test]
async fn a_node_with_project_files_of_its_own_is_refused_at_start() {
    assert!(
        crate::helpers::on_postgres(),
        "PostgreSQL only: scripts/test.sh runs this module on PostgreSQL"
    );
    let mut deploy = crate::binary::Deployment::new(&[]).await;
    let _a = deploy.start_node("node-a").await;
    let elsewhere = tempfile::tempdir().unwrap();
    let url = deploy.db.url.clone().unwrap();
    let start_elsewhere = |allow: bool| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atelier"))
            .arg("--data-dir")
            .arg(elsewhere.path())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("DATABASE_URL", &url)
            .env("ATELIER_ENGINE__NODE_ID", "node-b")
            .env("ATELIER_STORAGE__ALLOW_UNSHARED_FILES", allow.to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(10) {
            if child.try_wait().unwrap().is_some() {
                return Some(child.wait_with_output().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    };
    let refused = start_elsewhere(false).expect("the node was not refused");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("node node-a")
            && stderr.contains("with other project files")
            && stderr.contains("S3"),
        "{stderr}"
    );
    // A node on the same files starts.
    let c = deploy.start_node("node-c").await;
    let (s, _) = c
        .call(&deploy.client, Method::GET, "/health", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Told that every project is on S3, the other one starts (and keeps
    // serving until it is stopped).
    assert!(start_elsewhere(true).is_none(), "it exited");
}

/// Whether `/admin/nodes` on `on` shows `node` alive.
async fn seen_alive(on: &Server, client: &reqwest::Client, token: &str, node: &str) -> bool {
    let (s, body) = on
        .call(client, Method::GET, "/admin/nodes", Some(token), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node)
        .unwrap_or_else(|| panic!("{node} in {body}"))["alive"]
        .as_bool()
        .unwrap()
}

/// A killed node is seen dead the moment its database session ends (its
/// liveness lock goes with it), not once its heartbeat is older than the
/// node timeout: with a timeout of a minute, another node adopts its run
/// within seconds. A frozen node keeps its session, so it is not declared
/// dead early (the timeout covers it).
#[actix_web::test]
async fn a_killed_node_is_seen_dead_at_once_a_frozen_one_is_not() {
    assert!(
        crate::helpers::on_postgres(),
        "PostgreSQL only: scripts/test.sh runs this module on PostgreSQL"
    );
    let mut deploy = crate::binary::Deployment::new(&[
        ("ATELIER_ENGINE__HEARTBEAT_MS", "500"),
        ("ATELIER_ENGINE__NODE_TIMEOUT_MS", "60000"),
        ("ATELIER_ENGINE__LEASE_SECONDS", "120"),
        ("ATELIER_ENGINE__MAX_JOBS_PER_RUN", "2"),
        ("ATELIER_PROVIDERS__LOCAL__LATENCY_MS", "1500"),
    ])
    .await;
    let mut a = deploy.start_node("node-a").await;
    let b = deploy.start_node("node-b").await;
    let c = deploy.start_node("node-c").await;
    let client = deploy.client.clone();
    let token = b.bootstrap(&client).await;
    b.create_project(&client, &token, "Live", "live").await;
    // Observers trust an absent lock once their own has been held a while.
    tokio::time::sleep(Duration::from_secs(3)).await;

    c.signal("STOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        seen_alive(&b, &client, &token, "node-c").await,
        "a frozen node keeps its session and is not declared dead before the timeout"
    );
    c.signal("CONT");

    let (s, body) = a
        .call(
            &client,
            Method::POST,
            "/api/projects/live/runs/trigger",
            Some(&token),
            Some(json!({"mode": "run", "scene_refs": ["sample:1", "sample:2", "sample:3"], "stage": "style", "candidates": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let run_id: Uuid = body["run_id"].as_str().unwrap().parse().unwrap();
    let db = deploy.connect().await;
    crate::binary::eventually(
        "node-a working on its run",
        Duration::from_secs(20),
        || async {
            entities::run_jobs::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .iter()
                .any(|j| j.run_id == run_id && j.status == "running")
                .then_some(())
        },
    )
    .await;
    a.kill9();
    let killed = Instant::now();
    let owner = crate::binary::eventually("the run adopted", Duration::from_secs(20), || async {
        let owner = entities::run_owners::Entity::find_by_id(run_id)
            .one(&db)
            .await
            .unwrap()?
            .node_id;
        (owner != "node-a").then_some(owner)
    })
    .await;
    let adopted_after = killed.elapsed();
    assert!(
        adopted_after < Duration::from_secs(10),
        "adopted {adopted_after:?} after the kill, a minute's node timeout notwithstanding"
    );
    assert!(["node-b", "node-c"].contains(&owner.as_str()));
    assert!(!seen_alive(&b, &client, &token, "node-a").await);
    assert!(seen_alive(&b, &client, &token, "node-c").await);
    crate::binary::eventually("the run finished", Duration::from_secs(30), || async {
        let run = entities::runs::Entity::find_by_id(run_id)
            .one(&db)
            .await
            .unwrap()?;
        (run.status == "done").then_some(())
    })
    .await;
}
