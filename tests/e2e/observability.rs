//! What an operator sees: one access line per request with its request id, a log line for
//! every task outcome other than a plain success, readiness that follows the store and the
//! queue, and CORS for browser pages on other origins.

use std::time::Duration;

use aihost_tests::{Options, Server, TestDatabase, wait_for};
use serde_json::{Value, json};

/// The log lines that contain every one of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// Waits until the log holds a line with every one of `needles`, and answers it.
async fn log_line(s: &Server, needles: &[&str]) -> String {
    wait_for(
        &format!("a log line with {needles:?}"),
        Duration::from_secs(10),
        async || {
            let log = s.log();
            lines_with(&log, needles)
                .first()
                .map(|l| (*l).to_owned())
                .ok_or_else(|| log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        },
    )
    .await
}

#[tokio::test]
async fn every_request_gets_one_access_line_with_its_route_and_request_id() {
    let s = Server::start().await;
    let missing = s.url("/api/tasks/0190f5d6-0000-7000-8000-000000000000");
    let r = s
        .http
        .get(&missing)
        .header("x-request-id", "client-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "client-req-42");

    // No id, or one that is not a sane token: the service makes one and answers it.
    for given in [None, Some("has spaces and \u{e9}")] {
        let mut req = s.http.get(s.url("/api/health"));
        if let Some(g) = given {
            req = req.header("x-request-id", g.as_bytes());
        }
        let r = req.send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_ne!(Some(id.as_str()), given);
    }

    let line = log_line(&s, &["aihost::access", "request_id=client-req-42"]).await;
    for part in [
        "method=GET",
        "route=\"/api/tasks/{task_id}\"",
        "status=404",
        "duration_ms=",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    // Exactly one line for that request, and the concrete id is not the route.
    let log = s.log();
    assert_eq!(
        lines_with(&log, &["aihost::access", "client-req-42"]).len(),
        1
    );
    assert!(!line.contains("route=\"/api/tasks/0190f5d6"), "{line}");
    // Errors raised by the router itself are logged too.
    let r = s.http.get(s.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let line = log_line(&s, &["aihost::access", &format!("request_id={id}")]).await;
    assert!(
        line.contains("route=\"other\"") && line.contains("status=404"),
        "{line}"
    );
}

#[tokio::test]
async fn task_outcomes_other_than_success_leave_a_log_line() {
    let s = Server::start().await;
    // Failed for good, with its code.
    let failed = s
        .run(
            "testkit.run",
            json!({"mode": "fail", "code": "engine_error"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let id = failed["task_id"].as_str().unwrap();
    let line = log_line(&s, &["task failed", id]).await;
    for part in [
        " WARN ",
        "task_type=testkit.run",
        "attempt=1",
        "code=engine_error",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }

    // A retry: scheduled with its delay, then the success is not logged at INFO.
    let retried = s
        .run(
            "testkit.run",
            json!({"mode": "fail", "fail_times": 1, "retryable": true, "code": "engine_unavailable"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(retried["status"], "COMPLETED", "{retried}");
    let id = retried["task_id"].as_str().unwrap();
    let line = log_line(&s, &["retry scheduled", id]).await;
    for part in [
        " INFO ",
        "attempt=1",
        "code=engine_unavailable",
        "delay_ms=",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(lines_with(&s.log(), &["task failed", id]).is_empty());

    // Cancelled while running.
    let (status, running) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok", "ms": 30000}}),
        )
        .await;
    assert_eq!(status, 202, "{running}");
    let id = running["task_id"].as_str().unwrap().to_owned();
    s.wait_status(&id, "PROCESSING", Duration::from_secs(10))
        .await;
    let (status, _) = s.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202);
    let done = s.wait_done(&id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "CANCELLED", "{done}");
    let line = log_line(&s, &["task cancelled while running", &id]).await;
    assert!(
        line.contains(" INFO ") && line.contains("task_type=testkit.run"),
        "{line}"
    );
}

async fn ready(s: &Server) -> (u16, Value) {
    s.get("/api/ready").await
}

/// Polls `/api/ready` until it answers `status` (readiness is recomputed every 2 s), and
/// answers the body.
async fn wait_ready(s: &Server, status: u16) -> Value {
    wait_for(
        &format!("readiness answers {status}"),
        Duration::from_secs(20),
        async || match ready(s).await {
            (st, b) if st == status => Ok(b),
            other => Err(format!("{other:?}")),
        },
    )
    .await
}

/// A CORS preflight for `POST /api/tasks` from `origin`.
async fn preflight(s: &Server, origin: &str) -> reqwest::Response {
    s.http
        .request(reqwest::Method::OPTIONS, s.url("/api/tasks"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

/// A response header as lower-case text (empty when absent).
fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_lowercase()
}

#[tokio::test]
async fn readiness_flips_when_the_queue_is_deeper_than_allowed() {
    // An API without a consumer: submitted tasks stay pending.
    let s = Server::start_role(
        Options {
            env: vec![
                ("AIHOST_SERVER__MAX_QUEUE_DEPTH".into(), "2".into()),
                ("AIHOST_SERVER__API_KEYS".into(), "k1".into()),
            ],
            ..Options::default()
        },
        "api",
    )
    .await;
    // The probe needs no key.
    let (status, body) = ready(&s).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = s
            .http
            .post(s.url("/api/tasks"))
            .bearer_auth("k1")
            .json(&json!({"type": "testkit.run", "input": {"mode": "ok"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let t: Value = r.json().await.unwrap();
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    let body = wait_ready(&s, 503).await;
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("3 tasks are pending") && message.contains("max_queue_depth (2)"),
        "{message}"
    );

    // Draining the queue makes it ready again.
    for id in &ids[..2] {
        let r = s
            .http
            .post(s.url(&format!("/api/tasks/{id}/cancel")))
            .bearer_auth("k1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_ready(&s, 200).await;
    // The detail route stays 200 either way.
    let r = s
        .http
        .get(s.url("/api/status"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn readiness_flips_when_the_store_is_gone() {
    let db = TestDatabase::create().await;
    let s = Server::start_with(Options {
        env: db.env(),
        ..Options::default()
    })
    .await;
    let (status, body) = ready(&s).await;
    assert_eq!(status, 200, "{body}");
    db.drop_now().await;
    let body = wait_ready(&s, 503).await;
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("task store is failing"),
        "{body}"
    );
    // Liveness is not readiness: the process still answers.
    assert_eq!(s.get("/api/health").await.0, 200);
    let _ = log_line(&s, &["not ready", "task store is failing"]).await;
}

#[tokio::test]
async fn cors_answers_preflights_for_the_configured_origins_only() {
    let s = Server::start_with(Options {
        env: vec![
            (
                "AIHOST_SERVER__CORS_ORIGINS".into(),
                "https://app.example.com".into(),
            ),
            ("AIHOST_SERVER__API_KEYS".into(), "k1".into()),
        ],
        ..Options::default()
    })
    .await;
    // The preflight carries no key and is answered before the key check.
    let r = preflight(&s, "https://app.example.com").await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&r, "access-control-allow-methods").contains("post"));
    assert!(header(&r, "access-control-allow-headers").contains("authorization"));

    // The real request carries the header, and exposes the request id.
    let r = s
        .http
        .post(s.url("/api/tasks"))
        .header("origin", "https://app.example.com")
        .bearer_auth("k1")
        .json(&json!({"type": "testkit.run", "input": {"mode": "ok"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&r, "access-control-expose-headers").contains("x-request-id"));

    // Another origin is refused in the API's error shape.
    let r = preflight(&s, "https://evil.example").await;
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "access-control-allow-origin"), "");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cors_refused", "{body}");

    // The service's own origin (its /docs page) is always allowed.
    let own = s.base.clone();
    let r = s
        .http
        .get(s.url("/api/health"))
        .header("origin", own.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], own.as_str());
}

#[tokio::test]
async fn without_cors_origins_there_are_no_cors_headers() {
    let s = Server::start().await;
    let r = preflight(&s, "https://app.example.com").await;
    assert!(!r.status().is_success(), "{}", r.status());
    assert_eq!(header(&r, "access-control-allow-origin"), "");
}
