//! The task queue and REST API through the real binary: lifecycle, events, restarts and
//! crashes, retries, cancel, idempotency, wait, bad input, load.

use std::{collections::HashMap, time::Duration};

use aihost_tests::{Options, Server};
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn imageops_lifecycle_with_sse_and_websocket_events() {
    let s = Server::start().await;
    let img = s.dir.path().join("upload.png");
    aihost_tests::write_png(&img, 40, 30);
    let up = s
        .upload(
            "cat photo.png",
            std::fs::read(&img).unwrap(),
            Some("image/png"),
        )
        .await;
    // The upload URL (under our own /files/) is read from storage, not fetched over the network.
    let t = s
        .create(
            "imageops.transform",
            json!({"source": up["url"], "operations": [{"op": "rotate", "degrees": 90}], "format": "jpeg", "quality": 80}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    assert!(matches!(
        t["status"].as_str(),
        Some("PENDING" | "PROCESSING" | "COMPLETED")
    ));

    let ws_url = s.base.replace("http://", "ws://") + &format!("/api/tasks/{id}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let sse = s.events(&id, Duration::from_secs(30)).await;
    let mut ws_events = Vec::new();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .unwrap()
    {
        match msg.unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                ws_events.push(serde_json::from_str::<Value>(&t).unwrap())
            }
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    for events in [&sse, &ws_events] {
        assert!(!events.is_empty());
        let last = events.last().unwrap();
        assert_eq!(last["status"], "COMPLETED", "{events:?}");
        assert_eq!(last["task_id"], id.as_str());
        // Statuses never go backwards.
        let rank = |s: &str| {
            ["PENDING", "PROCESSING", "COMPLETED"]
                .iter()
                .position(|x| *x == s)
                .unwrap()
        };
        let ranks: Vec<usize> = events
            .iter()
            .map(|e| rank(e["status"].as_str().unwrap()))
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{events:?}");
    }

    let done = s.wait_done(&id, Duration::from_secs(5)).await;
    let out = &done["result"]["outputs"][0];
    assert_eq!(out["content_type"], "image/jpeg");
    assert_eq!(out["key"], format!("outputs/{id}/1/output.jpg"));
    let bytes = s
        .http
        .get(out["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, out["size"].as_u64().unwrap());
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (30, 40));
    // Range requests on /files.
    let r = s
        .http
        .get(out["url"].as_str().unwrap())
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 0-9/{}", bytes.len())
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..10]);
    // Listed, and counted in the stats.
    let (_, page) = s
        .get("/api/tasks?status=COMPLETED&type=imageops.transform")
        .await;
    assert!(
        page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["task_id"] == id.as_str())
    );
    let (_, stats) = s.get("/api/stats").await;
    assert!(
        stats["by_status"]["COMPLETED"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

#[tokio::test]
async fn tasks_survive_a_restart_and_a_kill_9_without_running_twice() {
    let mut s = Server::start().await;
    let count = s.dir.path().join("count.txt");
    // Finished tasks survive a clean restart.
    let done_id = s.create("testkit.run", json!({"mode": "ok"})).await["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_done(&done_id, Duration::from_secs(20)).await;
    assert!(
        s.terminate(Duration::from_secs(15)),
        "clean stop failed:\n{}",
        s.log()
    );
    s.restart().await;
    let (status, t) = s.get(&format!("/api/tasks/{done_id}")).await;
    assert_eq!((status, t["status"].as_str()), (200, Some("COMPLETED")));

    // kill -9 while tasks run: after a restart the lease expires and they complete, once each.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let t = s
            .create(
                "testkit.run",
                json!({"mode": "count", "ms": 1500, "marker": count.to_str().unwrap()}),
            )
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    s.wait_status(&ids[0], "PROCESSING", Duration::from_secs(10))
        .await;
    s.kill9();
    s.restart().await;
    for id in &ids {
        let t = s.wait_done(id, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
    }
    let lines = std::fs::read_to_string(&count).unwrap_or_default();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for l in lines.lines() {
        *seen.entry(l.trim()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            seen.get(id.as_str()),
            Some(&1),
            "task {id} ran {:?} times",
            seen.get(id.as_str())
        );
    }
}

#[tokio::test]
async fn retries_then_success_and_final_failures_keep_their_code() {
    let s = Server::start().await;
    let done = s
        .run("testkit.run", json!({"mode": "fail", "fail_times": 1, "retryable": true, "code": "engine_unavailable"}), Duration::from_secs(20))
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["attempts"], 2);

    let done = s
        .run(
            "testkit.run",
            json!({"mode": "fail", "code": "invalid_input"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["error"]["code"], "invalid_input");
    assert_eq!(done["attempts"], 1, "not retryable: one attempt");

    let (status, t) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "max_attempts": 2, "input": {"mode": "fail", "fail_times": 9, "retryable": true, "code": "engine_unavailable"}}),
        )
        .await;
    assert_eq!(status, 202);
    let done = s
        .wait_done(t["task_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["error"]["code"], "engine_unavailable");
    assert_eq!(done["attempts"], 2);
}

#[tokio::test]
async fn cancel_pending_running_and_finished() {
    let opts = Options {
        extra_toml: "[dispatcher]\ndefault_concurrency = 1\n".into(),
        ..Options::default()
    };
    let s = Server::start_with(opts).await;
    let running = s
        .create("testkit.run", json!({"mode": "ok", "ms": 5000}))
        .await;
    let running_id = running["task_id"].as_str().unwrap().to_owned();
    s.wait_status(&running_id, "PROCESSING", Duration::from_secs(10))
        .await;
    let pending = s.create("testkit.run", json!({"mode": "ok"})).await;
    let pending_id = pending["task_id"].as_str().unwrap();

    let (status, body) = s
        .post(&format!("/api/tasks/{pending_id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("CANCELLED")),
        "{body}"
    );

    let (status, _) = s
        .post(&format!("/api/tasks/{running_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202);
    let done = s.wait_done(&running_id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "CANCELLED");

    let (status, body) = s
        .post(&format!("/api/tasks/{running_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "task_finished");
    let (status, body) = s
        .post(
            "/api/tasks/0190a0a0-0000-7000-8000-000000000000/cancel",
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn idempotency_key_and_wait() {
    let s = Server::start().await;
    let body = json!({"type": "testkit.run", "input": {"mode": "ok"}});
    let submit = async || -> Value {
        let r = s.http.post(s.url("/api/tasks"));
        let r = r.header("Idempotency-Key", "k-1").json(&body).send().await;
        r.unwrap().json().await.unwrap()
    };
    let (a, b) = (submit().await, submit().await);
    assert_eq!(a["task_id"], b["task_id"]);
    let with_field =
        json!({"type": "testkit.run", "input": {"mode": "ok"}, "idempotency_key": "k-1"});
    let (_, c) = s.post("/api/tasks", &with_field).await;
    assert_eq!(a["task_id"], c["task_id"]);
    let (_, page) = s.get("/api/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");

    let (status, done) = s
        .post(
            "/api/tasks?wait=20",
            &json!({"type": "testkit.run", "input": {"mode": "ok", "ms": 100}}),
        )
        .await;
    assert_eq!(
        (status, done["status"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    let (status, pending) = s
        .post(
            "/api/tasks?wait=1",
            &json!({"type": "testkit.run", "input": {"mode": "ok", "ms": 4000}}),
        )
        .await;
    assert_eq!(status, 202, "{pending}");
    assert!(
        matches!(pending["status"].as_str(), Some("PENDING" | "PROCESSING")),
        "{pending}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let opts = Options {
        extra_toml: "[server]\n".into(),
        ..Options::default()
    };
    let _ = opts;
    let s = Server::start_with(Options {
        extra_toml: String::new(),
        env: vec![("AIHOST_SERVER__MAX_BODY_BYTES".into(), "4096".into())],
        ..Options::default()
    })
    .await;
    let raw = |body: &'static str| {
        let s = &s;
        async move {
            let r = s
                .http
                .post(s.url("/api/tasks"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (st, b) = raw("{not json").await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{b}"
    );
    let (st, b) =
        raw(r#"{"type": "testkit.run", "input": {"mode": "ok"}, "priority": "high"}"#).await;
    assert_eq!(st, 400, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("priority"),
        "{b}"
    );
    let (st, b) = s
        .post("/api/tasks", &json!({"type": "nope.nothing", "input": {}}))
        .await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (422, Some("unknown_task_type")),
        "{b}"
    );
    let (st, b) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok", "ms": "soon"}}),
        )
        .await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (422, Some("invalid_input")),
        "{b}"
    );
    assert!(
        b["error"]["message"].as_str().unwrap().contains("/ms"),
        "names the field: {b}"
    );
    let big = json!({"type": "testkit.run", "input": {"mode": "ok", "marker": "x".repeat(10_000)}});
    let (st, b) = s.post("/api/tasks", &big).await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{b}"
    );
    let (st, b) = s.get("/api/tasks/not-a-uuid").await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (404, Some("task_not_found")),
        "{b}"
    );
    let (st, _) = s
        .get("/api/tasks/0190a0a0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(st, 404);
    let (st, b) = s.get("/api/tasks?cursor=garbage").await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = s.get("/api/nothing-here").await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );

    let (_, page) = s.get("/api/tasks").await;
    assert_eq!(
        page["tasks"].as_array().unwrap().len(),
        0,
        "bad input wrote a task: {page}"
    );
    let (st, health) = s.get("/api/health").await;
    assert_eq!((st, health["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn api_keys_are_enforced_when_set() {
    let s = Server::start_with(Options {
        env: vec![("AIHOST_SERVER__API_KEYS".into(), "secret-1,secret-2".into())],
        ..Options::default()
    })
    .await;
    let body = json!({"type": "testkit.run", "input": {"mode": "ok"}});
    let r = s
        .http
        .post(s.url("/api/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .http
        .post(s.url("/api/tasks"))
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "unauthorized");
    let r = s
        .http
        .post(s.url("/api/tasks"))
        .bearer_auth("secret-2")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = s
        .http
        .get(s.url("/api/tasks"))
        .header("X-API-Key", "secret-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s.http.get(s.url("/api/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "health stays open for probes");
}

#[tokio::test]
async fn a_thousand_concurrent_submits_all_complete_exactly_once() {
    let s = Server::start_with(Options {
        extra_toml: "[dispatcher]\ndefault_concurrency = 16\n".into(),
        ..Options::default()
    })
    .await;
    let count = s.dir.path().join("count.txt");
    let marker = count.to_str().unwrap().to_owned();
    let ids: Vec<String> = futures_util::stream::iter(0..1000)
        .map(|_| {
            let s = &s;
            let marker = marker.clone();
            async move {
                let t = s
                    .create("testkit.run", json!({"mode": "count", "marker": marker}))
                    .await;
                t["task_id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(ids.len(), 1000);
    for id in &ids {
        let t = s.wait_done(id, Duration::from_secs(120)).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
    }
    let lines = std::fs::read_to_string(&count).unwrap();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for l in lines.lines() {
        *seen.entry(l.trim()).or_default() += 1;
    }
    assert_eq!(seen.len(), 1000);
    assert!(seen.values().all(|&n| n == 1), "a task ran twice");
}

#[tokio::test]
async fn docs_and_spec_show_every_endpoint_and_the_task_schemas() {
    let s = Server::start().await;
    let (st, spec) = s.get("/openapi.json").await;
    assert_eq!(st, 200);
    for path in [
        "/api/tasks",
        "/api/tasks/{task_id}",
        "/api/tasks/{task_id}/cancel",
        "/api/tasks/{task_id}/events",
        "/api/tasks/{task_id}/ws",
        "/api/stats",
        "/api/health",
        "/api/status",
        "/api/plugins",
        "/api/plugins/reload",
        "/api/uploads",
        "/files/{key}",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the spec"
        );
    }
    assert!(
        spec["components"]["schemas"]
            .get("TaskInput.imageops.transform")
            .is_some()
    );
    let create = &spec["paths"]["/api/tasks"]["post"]["responses"];
    for code in [
        "200", "202", "400", "401", "404", "409", "413", "422", "429", "503",
    ] {
        assert!(
            create.get(code).is_some(),
            "POST /api/tasks lacks {code} in the spec"
        );
    }
    let html = s
        .http
        .get(s.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("SwaggerUIBundle") && html.contains("TaskInput.imageops.transform"));
    // The Python service's clients still find their status route.
    let (st, status) = s.get("/api/status").await;
    assert_eq!(st, 200, "{status}");
    assert_eq!(status["store_ok"], true);
}

/// `/openapi.json` lists the error codes: `ErrorCode` those of HTTP error bodies, with a table
/// of statuses and meanings; `x-error-codes` every code with where it appears. Every host code
/// the integration tests meet is in them (plugins' own codes, like comfyui's
/// `invalid_workflow`, are not the host's and are not listed).
#[tokio::test]
async fn the_spec_lists_every_error_code_the_tests_meet() {
    let s = Server::start().await;
    let (st, spec) = s.get("/openapi.json").await;
    assert_eq!(st, 200);
    let schema = &spec["components"]["schemas"]["ErrorCode"];
    assert_eq!(schema["type"], "string", "{schema}");
    let http: Vec<&str> = schema["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("ErrorCode has no enum: {schema}"))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let table = schema["description"].as_str().unwrap();
    // (code, status) of every error body asserted in tests/e2e.
    for (code, status) in [
        ("task_not_found", 404),
        ("not_found", 404),
        ("invalid_body", 400),
        ("unknown_task_type", 422),
        ("invalid_input", 422),
        ("invalid_webhook_url", 422),
        ("body_too_large", 413),
        ("unauthorized", 401),
        ("task_finished", 409),
        ("workflow_not_found", 404),
        ("comfyui_not_loaded", 503),
        ("engine_unavailable", 503),
        ("invalid_webhook_events", 422),
        ("delivery_not_found", 404),
        ("inline_outputs_too_large", 413),
    ] {
        assert!(http.contains(&code), "ErrorCode lacks {code}: {http:?}");
        assert!(
            table.contains(&format!("| `{code}` | {status} |")),
            "ErrorCode's table lacks {code} with {status}:\n{table}"
        );
    }
    assert!(
        !http.contains(&"lease_expired") && !http.contains(&"fetch_timeout"),
        "task-only codes are not HTTP codes: {http:?}"
    );

    let all = spec["x-error-codes"].as_array().unwrap();
    let find = |code: &str| {
        all.iter()
            .find(|e| e["code"] == code)
            .unwrap_or_else(|| panic!("x-error-codes lacks {code}"))
    };
    let surfaces = |code: &str| -> Vec<String> {
        find(code)["surfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    // Codes of task errors and plugin reports asserted in tests/e2e.
    for code in [
        "invalid_input",
        "engine_unavailable",
        "engine_error",
        "timeout",
        "plugin_panic",
        "fetch_blocked",
        "fetch_invalid_url",
        "fetch_not_found",
        "fetch_timeout",
    ] {
        assert!(surfaces(code).iter().any(|s| s == "task"), "{code}");
    }
    for code in ["plugin_duplicate_task_type", "plugin_needs_restart"] {
        assert!(
            surfaces(code).iter().any(|s| s == "plugin_report"),
            "{code}"
        );
    }
    assert_eq!(find("lease_expired")["surfaces"], json!(["task"]));
    assert_eq!(find("task_not_found")["status"], 404);
    for e in all {
        assert!(e["meaning"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        let listed = http.contains(&e["code"].as_str().unwrap());
        assert_eq!(e["status"].is_u64(), listed, "{e}");
    }

    // The `code` of an error body and of a task error point at the list.
    let schemas = &spec["components"]["schemas"];
    for (schema, says) in [
        ("ErrorDetail", "plugins may add"),
        ("TaskErrorView", "Plugins may add"),
    ] {
        let description = schemas[schema]["properties"]["code"]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{schema}.code has no description"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            description.contains("ErrorCode") && description.contains(says),
            "{schema}.code: {description}"
        );
    }
}

#[tokio::test]
async fn graceful_shutdown_puts_unfinished_work_back() {
    let mut s = Server::start().await;
    // Longer than the 5 s grace period of the test config.
    let t = s
        .create("testkit.run", json!({"mode": "ok", "ms": 20000}))
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    s.wait_status(&id, "PROCESSING", Duration::from_secs(10))
        .await;
    assert!(
        s.terminate(Duration::from_secs(30)),
        "did not stop cleanly:\n{}",
        s.log()
    );
    s.restart().await;
    let (_, t) = s.get(&format!("/api/tasks/{id}")).await;
    assert!(
        matches!(t["status"].as_str(), Some("PENDING" | "PROCESSING")),
        "{t}"
    );
    assert!(
        t["attempts"].as_u64().unwrap() <= 1,
        "the interrupted attempt is not counted: {t}"
    );
}

/// Accepts one HTTP request on `listener`, answers 200, and returns its body.
async fn receive_one_post(listener: tokio::net::TcpListener) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                return text[head_end + 4..].to_string();
            }
        }
        assert!(n > 0, "connection closed early");
    }
}

#[tokio::test]
async fn the_webhook_receives_the_finished_task() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = Server::start_with(Options {
        env: vec![(
            "AIHOST_FETCH__ALLOW_HOSTS".into(),
            format!("127.0.0.1:{port}"),
        )],
        ..Options::default()
    })
    .await;
    let receiver = tokio::spawn(receive_one_post(listener));
    let (status, t) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}, "webhook_url": format!("http://127.0.0.1:{port}/hook")}),
        )
        .await;
    assert_eq!(status, 202, "{t}");
    let body = tokio::time::timeout(Duration::from_secs(20), receiver)
        .await
        .unwrap()
        .unwrap();
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["task_id"], t["task_id"]);
    assert_eq!(got["status"], "COMPLETED");

    // A webhook URL that is not http(s) is refused at submit.
    let (status, b) = s
        .post("/api/tasks", &json!({"type": "testkit.run", "input": {"mode": "ok"}, "webhook_url": "file:///etc/passwd"}))
        .await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (422, Some("invalid_webhook_url")),
        "{b}"
    );
}

#[tokio::test]
async fn a_failed_fetch_fails_the_task_with_a_code_that_names_fetching() {
    let s = Server::start().await;
    // (url, expected task error code): each is told apart from the task's own `timeout` and
    // from the plugin's codes.
    let cases = [
        ("http://127.0.0.1:9/input.png", "fetch_blocked"),
        ("http://169.254.169.254/latest/meta-data", "fetch_blocked"),
        ("ftp://example.com/input.png", "fetch_invalid_url"),
        (
            "uploads/0190f5d6-0000-7000-8000-000000000000/missing.png",
            "fetch_not_found",
        ),
    ];
    for (url, code) in cases {
        let (status, t) = s
            .post(
                "/api/tasks",
                &json!({"type": "testkit.run", "max_attempts": 1, "input": {"mode": "fetch", "url": url}}),
            )
            .await;
        assert_eq!(status, 202, "{t}");
        let done = s
            .wait_done(t["task_id"].as_str().unwrap(), Duration::from_secs(20))
            .await;
        assert_eq!(done["status"], "FAILED", "{url}: {done}");
        assert_eq!(done["error"]["code"], code, "{url}: {done}");
    }
}

/// `POST /api/tasks/{id}/retry`: a FAILED task is queued again under the same id with a fresh
/// budget (`attempts + max_attempts`, or the configured default) and runs as the next attempt,
/// its output under that attempt's folder; other states answer 409 `task_not_retryable`, an
/// unknown id 404; the operation is in the OpenAPI document.
#[tokio::test]
async fn retry_queues_a_finished_task_again() {
    let server = Server::start().await;
    let failed = server
        .run(
            "testkit.run",
            json!({"mode": "fail", "fail_times": 1, "code": "engine_error"}),
            Duration::from_secs(30),
        )
        .await;
    // Not retryable (`retryable` false): FAILED after its first attempt.
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["attempts"], 1);
    let id = failed["task_id"].as_str().unwrap();
    let (status, body) = server
        .post(&format!("/api/tasks/{id}/retry?max_attempts=2"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_id"], id);
    assert_eq!(body["status"], "PENDING");
    assert_eq!(body["attempts"], 1);
    assert_eq!(body["max_attempts"], 3);
    assert!(body["error"].is_null(), "{body}");
    assert_eq!(body["input"]["mode"], "fail");
    let done = server.wait_done(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"]["attempt"], 2);

    let (status, body) = server
        .post(&format!("/api/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "task_not_retryable");
    let (status, body) = server
        .post(
            "/api/tasks/01890000-0000-7000-8000-000000000000/retry",
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "task_not_found");
    let (status, body) = server
        .post(&format!("/api/tasks/{id}/retry?max_attempts=0"), &json!({}))
        .await;
    assert_eq!(status, 400, "{body}");

    // A cancelled task, retried with the configured default budget (3).
    let slow = server
        .create("testkit.run", json!({"mode": "ok", "ms": 60_000}))
        .await;
    let slow_id = slow["task_id"].as_str().unwrap();
    server
        .wait_status(slow_id, "PROCESSING", Duration::from_secs(30))
        .await;
    server
        .post(&format!("/api/tasks/{slow_id}/cancel"), &json!({}))
        .await;
    server
        .wait_status(slow_id, "CANCELLED", Duration::from_secs(30))
        .await;
    let (status, body) = server
        .post(&format!("/api/tasks/{slow_id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["attempts"].as_u64(), body["max_attempts"].as_u64()),
        (Some(1), Some(4))
    );
    server
        .wait_status(slow_id, "PROCESSING", Duration::from_secs(30))
        .await;
    let (_, running) = server.get(&format!("/api/tasks/{slow_id}")).await;
    assert_eq!(running["attempts"], 2);

    let (_, spec) = server.get("/openapi.json").await;
    assert!(
        spec["paths"]["/api/tasks/{task_id}/retry"]["post"].is_object(),
        "the retry operation is documented"
    );
}
