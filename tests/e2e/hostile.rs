//! What a careless or hostile client, or a careless operator, can try against the real binary:
//! idempotency keys reused for other requests or too long, webhooks on private addresses, API
//! keys of every length, plugin error codes full of markup, storage failures that would name
//! server paths, truncated plugin libraries (at `plugins check`, at start, on reload) and a
//! loaded library overwritten on disk.

use std::{io::Write as _, path::Path, path::PathBuf, time::Duration};

use aihost_tests::{Options, Server, plugin_lib, run_cli};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// POST /api/tasks with an optional `Idempotency-Key` header and a raw JSON body.
async fn create_raw(s: &Server, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = s
        .http
        .post(s.url("/api/tasks"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_idempotency_key_is_bound_to_its_request() {
    let s = Server::start().await;
    let body = r#"{"type": "testkit.run", "input": {"mode": "ok", "ms": 0}}"#;
    let (st, first) = create_raw(&s, Some("order-1"), body).await;
    assert!(st == 202 || st == 200, "{st} {first}");
    let id = first["task_id"].as_str().unwrap().to_owned();

    // The same request again (keys in another order, other spacing): the same task.
    let reordered = r#"{"input":{"ms":0,"mode":"ok"},"type":"testkit.run"}"#;
    let (st, again) = create_raw(&s, Some("order-1"), reordered).await;
    assert!(st == 202 || st == 200, "{st} {again}");
    assert_eq!(again["task_id"], id.as_str());
    // The key as a body field is the same key.
    let (st, again) = create_raw(
        &s,
        None,
        r#"{"type": "testkit.run", "input": {"mode": "ok", "ms": 0}, "idempotency_key": "order-1"}"#,
    )
    .await;
    assert!(st == 202 || st == 200, "{st} {again}");
    assert_eq!(again["task_id"], id.as_str());

    // Another input, another task type, another option: 409, nothing created.
    for other in [
        r#"{"type": "testkit.run", "input": {"mode": "ok", "ms": 1}}"#.to_owned(),
        json!({"type": "imageops.transform", "input": {"source": "uploads/x/y.png", "operations": [{"op": "grayscale"}]}}).to_string(),
        r#"{"type": "testkit.run", "input": {"mode": "ok", "ms": 0}, "priority": 5}"#.to_owned(),
        r#"{"type": "testkit.run", "input": {"mode": "ok", "ms": 0}, "max_attempts": 1}"#.to_owned(),
        r#"{"type": "testkit.run", "input": {"mode": "ok", "ms": 0}, "webhook_url": "https://example.com/hook"}"#.to_owned(),
    ] {
        let (st, body) = create_raw(&s, Some("order-1"), &other).await;
        assert_eq!(st, 409, "{other}: {body}");
        assert_eq!(code(&body), "idempotency_conflict", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&id), "{message}");
    }
    let (_, page) = s.get("/api/tasks?limit=100").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");

    // Keys over 255 bytes: 400, whether header or field, ASCII or not.
    let long = "k".repeat(256);
    let (st, body) = create_raw(&s, Some(&long), body).await;
    assert_eq!(
        (st, code(&body)),
        (400, "idempotency_key_too_long"),
        "{body}"
    );
    let wide = "é".repeat(128); // 256 bytes, 128 characters
    let field = json!({"type": "testkit.run", "input": {"mode": "ok"}, "idempotency_key": wide});
    let (st, body) = create_raw(&s, None, &field.to_string()).await;
    assert_eq!(
        (st, code(&body)),
        (400, "idempotency_key_too_long"),
        "{body}"
    );
    let (st, body) = create_raw(
        &s,
        Some(&"k".repeat(255)),
        r#"{"type": "testkit.run", "input": {"mode": "ok"}}"#,
    )
    .await;
    assert!(
        st == 202 || st == 200,
        "a 255-byte key is fine: {st} {body}"
    );
    assert_eq!(body["idempotency_key"].as_str().unwrap().len(), 255);
}

#[tokio::test]
async fn a_webhook_on_a_refused_address_is_refused_at_submit() {
    let s = Server::start().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/",
        "http://localhost:9/hook",
        "http://[::ffff:192.168.0.1]/",
    ] {
        let (st, body) = s
            .post(
                "/api/tasks",
                &json!({"type": "testkit.run", "input": {"mode": "ok"}, "webhook_url": url}),
            )
            .await;
        assert_eq!(st, 422, "{url}: {body}");
        assert_eq!(code(&body), "webhook_url_blocked", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("webhook_url"),
            "{body}"
        );
    }
    let (st, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}, "webhook_url": "ftp://example.com/"}),
        )
        .await;
    assert_eq!((st, code(&body)), (422, "invalid_webhook_url"), "{body}");
    // An empty webhook_url is no webhook.
    let (st, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}, "webhook_url": ""}),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(body["webhook_url"], Value::Null);
    let (_, page) = s.get("/api/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
}

#[tokio::test]
async fn fetch_allow_hosts_lets_a_private_webhook_through() {
    let s = Server::start_with(Options {
        extra_toml: "[fetch]\nallow_hosts = [\"127.0.0.1\"]\n".into(),
        ..Options::default()
    })
    .await;
    let (st, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}, "webhook_url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(body["webhook_url"], "http://127.0.0.1:9/hook");
    let (st, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}, "webhook_url": "http://10.1.2.3/"}),
        )
        .await;
    assert_eq!((st, code(&body)), (422, "webhook_url_blocked"), "{body}");
}

#[tokio::test]
async fn api_keys_of_every_length_are_refused_but_the_right_one() {
    let s = Server::start_with(Options {
        env: vec![(
            "AIHOST_SERVER__API_KEYS".into(),
            "the-right-key-0123".into(),
        )],
        ..Options::default()
    })
    .await;
    let status = |key: String| {
        let req = s.http.get(s.url("/api/stats")).header("x-api-key", key);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for wrong in [
        String::new(),
        "t".into(),
        "the-right-key-012".into(),
        "the-right-key-01234".into(),
        "The-right-key-0123".into(),
        "x".repeat(4000),
    ] {
        assert_eq!(status(wrong.clone()).await, 401, "{} bytes", wrong.len());
    }
    assert_eq!(status("the-right-key-0123".into()).await, 200);
    let r = s
        .http
        .get(s.url("/api/stats"))
        .bearer_auth("the-right-key-0123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn plugin_error_codes_outside_the_rule_become_plugin_error() {
    let s = Server::start().await;
    for (bad, shown) in [
        (
            "<script>alert(1)</script>".to_owned(),
            "<script>alert(1)</script>",
        ),
        ("nul\u{0}code".to_owned(), "nulcode"),
        ("Ü".repeat(5000), "ÜÜÜÜ"),
    ] {
        let task = s
            .run("testkit.run", json!({"mode": "fail", "code": bad}), WAIT)
            .await;
        assert_eq!(task["status"], "FAILED", "{task}");
        assert_eq!(task["error"]["code"], "plugin_error", "{task}");
        let message = task["error"]["message"].as_str().unwrap();
        assert!(message.contains(shown), "{message}");
        assert!(message.chars().count() <= 500, "{} chars", message.len());
        assert!(!message.chars().any(char::is_control), "{message:?}");
    }
    // A code inside the rule passes as it is.
    let task = s
        .run(
            "testkit.run",
            json!({"mode": "fail", "code": "my_code_2"}),
            WAIT,
        )
        .await;
    assert_eq!(task["error"]["code"], "my_code_2", "{task}");
}

#[tokio::test]
async fn a_storage_failure_does_not_name_the_storage_root() {
    let s = Server::start().await;
    let root = s.dir.path().join("data/outputs");
    // The storage root becomes a file: every write under it fails, with the backend's
    // detail (paths, OS errors) in the error.
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    std::fs::write(&root, b"not a folder").unwrap();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"hello".to_vec()).file_name("a.txt"),
    );
    let r = s
        .http
        .post(s.url("/api/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert!(st >= 500, "{st} {body}");
    let message = body["error"]["message"].as_str().unwrap();
    let dir = s.dir.path().display().to_string();
    assert!(!message.contains(&dir), "{message}");
    assert!(!message.contains("data/outputs"), "{message}");
    assert!(
        !message.contains("os error"),
        "no backend detail: {message}"
    );
    // The detail is in the log.
    aihost_tests::wait_until("the log has the detail", WAIT, async || {
        s.log().contains("Not a directory")
    })
    .await;
}

/// Copies of a real plugin library cut at 4 KB, 200 KB and 1 MB, in `dir`.
fn truncated_copies(dir: &Path) -> Vec<PathBuf> {
    let bytes = std::fs::read(plugin_lib("aihost_test_testkit")).unwrap();
    [4 << 10, 200 << 10, 1 << 20]
        .into_iter()
        .map(|len| {
            let p = dir.join(format!("libcut_{len}.so"));
            std::fs::write(&p, &bytes[..len]).unwrap();
            p
        })
        .collect()
}

#[test]
fn plugins_check_refuses_truncated_libraries_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for cut in truncated_copies(dir.path()) {
        let (status, out, err) = run_cli(&["plugins", "check", cut.to_str().unwrap()], dir.path());
        assert_eq!(status, 1, "{}: {out}{err}", cut.display());
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(cut.to_str().unwrap()), "{}", lines[0]);
        assert!(
            lines[0].contains("[plugin_invalid_library]"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("truncated"), "{}", lines[0]);
    }
}

fn autoload_options(plugdir: &Path) -> Options {
    let manifest = plugdir.join("plugins.toml");
    std::fs::write(&manifest, "dir = \".\"\nautoload = true\n").unwrap();
    Options {
        plugins: Vec::new(),
        extra_toml: format!(
            "[plugins]\nmanifest = {:?}\n",
            manifest.display().to_string()
        ),
        env: Vec::new(),
    }
}

fn failures_by_file(list: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn expected_failures(cuts: &[PathBuf]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = cuts
        .iter()
        .map(|c| {
            (
                c.canonicalize().unwrap().display().to_string(),
                "plugin_invalid_library".to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn truncated_libraries_are_refused_at_start_with_autoload() {
    let plugdir = tempfile::tempdir().unwrap();
    std::fs::copy(
        plugin_lib("aihost_test_testkit"),
        plugdir.path().join("libaihost_test_testkit.so"),
    )
    .unwrap();
    let cuts = truncated_copies(plugdir.path());
    let mut s = Server::start_with(autoload_options(plugdir.path())).await;
    let (_, list) = s.get("/api/plugins").await;
    assert_eq!(
        failures_by_file(&list["failures"]),
        expected_failures(&cuts),
        "{list}"
    );
    let done = s.run("testkit.run", json!({"mode": "ok"}), WAIT).await;
    assert_eq!(done["status"], "COMPLETED");
    assert!(s.is_running());
    let log = s.log();
    for cut in &cuts {
        let name = cut.file_name().unwrap().to_str().unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains(name) && l.contains("plugin_invalid_library")),
            "no log line names {name}:\n{log}"
        );
    }
}

#[tokio::test]
async fn truncated_libraries_are_refused_on_reload_and_logged() {
    let plugdir = tempfile::tempdir().unwrap();
    let mut s = Server::start_with(autoload_options(plugdir.path())).await;
    let cuts = truncated_copies(plugdir.path());
    let (st, report) = s.post("/api/plugins/reload", &json!({})).await;
    assert_eq!(st, 200, "{report}");
    assert_eq!(report["loaded"], json!([]), "{report}");
    assert_eq!(
        failures_by_file(&report["failed"]),
        expected_failures(&cuts),
        "{report}"
    );
    let (st, _) = s.get("/api/health").await;
    assert_eq!(st, 200);
    assert!(s.is_running());
    let log = s.log();
    for cut in &cuts {
        let name = cut.file_name().unwrap().to_str().unwrap();
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains(name)
                && l.contains("plugin_invalid_library")),
            "no WARN line names {name}:\n{log}"
        );
    }
}

/// Rewrites `path` in place (same inode, as `cp` over an existing file does) with `bytes`.
fn overwrite_in_place(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test]
async fn a_loaded_library_truncated_or_overwritten_on_disk_keeps_running() {
    let plugdir = tempfile::tempdir().unwrap();
    let lib = plugdir.path().join("libaihost_test_testkit.so");
    std::fs::copy(plugin_lib("aihost_test_testkit"), &lib).unwrap();
    let mut s = Server::start_with(autoload_options(plugdir.path())).await;
    let done = s
        .run("testkit.run", json!({"mode": "progress", "steps": 3}), WAIT)
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");

    let original = std::fs::read(&lib).unwrap();
    overwrite_in_place(&lib, &original[..4 << 10]);
    let done = s
        .run("testkit.run", json!({"mode": "progress", "steps": 3}), WAIT)
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(s.is_running());

    // Another library copied over it.
    overwrite_in_place(&lib, &std::fs::read(plugin_lib("aihost_imageops")).unwrap());
    let done = s
        .run(
            "testkit.run",
            json!({"mode": "fail", "code": "still_here"}),
            WAIT,
        )
        .await;
    assert_eq!(done["error"]["code"], "still_here", "{done}");
    let (_, report) = s.post("/api/plugins/reload", &json!({})).await;
    assert_eq!(
        report["failed"][0]["code"], "plugin_needs_restart",
        "{report}"
    );
    assert!(s.is_running());
}

#[tokio::test]
async fn an_empty_cursor_is_the_first_page() {
    let s = Server::start().await;
    s.create("testkit.run", json!({"mode": "ok"})).await;
    let (st, page) = s.get("/api/tasks?cursor=").await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unsupported_methods_answer_405_with_allow() {
    let s = Server::start().await;
    for (method, path, allow) in [
        ("TRACE", "/api/health", "GET, HEAD"),
        ("PUT", "/api/tasks", "GET, POST, HEAD"),
        ("TRACE", "/api/tasks/create", "POST"),
        (
            "PATCH",
            "/api/tasks/01a23201-efa6-70b3-919d-398eae748ec9",
            "DELETE, GET, HEAD",
        ),
        ("DELETE", "/files/uploads/a/b.png", "GET, HEAD"),
    ] {
        let r = s
            .http
            .request(method.parse().unwrap(), s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        let got = r.headers()["allow"].to_str().unwrap().to_owned();
        let mut got: Vec<&str> = got.split(", ").collect();
        got.sort_unstable();
        let mut want: Vec<&str> = allow.split(", ").collect();
        want.sort_unstable();
        assert_eq!(got, want, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(code(&body), "method_not_allowed");
    }
}

#[tokio::test]
async fn the_document_declares_nulls_streams_and_websocket_answers() {
    let s = Server::start().await;
    let (_, spec) = s.get("/openapi.json").await;
    let task = &spec["components"]["schemas"]["TaskView"]["properties"];
    for field in [
        "finished_at",
        "started_at",
        "error",
        "progress",
        "idempotency_key",
        "webhook_url",
        "result",
    ] {
        assert_eq!(
            task[field]["nullable"], true,
            "TaskView.{field}: {}",
            task[field]
        );
    }
    assert_eq!(
        spec["components"]["schemas"]["TaskPage"]["properties"]["next_cursor"]["nullable"],
        true
    );
    assert_eq!(
        spec["components"]["schemas"]["StatsView"]["properties"]["success_rate"]["nullable"],
        true
    );
    // The plugins' input schemas are theirs: not made nullable.
    let input = &spec["components"]["schemas"]["TaskInput.testkit.run"]["properties"]["ms"];
    assert!(input.get("nullable").is_none(), "{input}");
    let events =
        &spec["paths"]["/api/tasks/{task_id}/events"]["get"]["responses"]["200"]["content"];
    let (media, body) = events.as_object().unwrap().iter().next().unwrap();
    assert!(media.starts_with("text/event-stream"), "{media}");
    assert_eq!(body["schema"]["type"], "object", "{body}");
    assert_eq!(body["schema"]["required"], json!(["data"]));
    let ws = &spec["paths"]["/api/tasks/{task_id}/ws"]["get"]["responses"];
    for status in ["101", "400", "401", "404"] {
        assert!(ws.get(status).is_some(), "ws {status}: {ws}");
    }
    // The ws route answers a plain GET with that documented 400.
    let (_, task) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}}),
        )
        .await;
    let id = task["task_id"].as_str().unwrap();
    let (st, body) = s.get(&format!("/api/tasks/{id}/ws")).await;
    assert_eq!(st, 400, "{body}");
    // Every answer of a create is documented, 409 included.
    let create = &spec["paths"]["/api/tasks"]["post"]["responses"];
    for status in [
        "200", "202", "400", "401", "409", "413", "422", "429", "503",
    ] {
        assert!(create.get(status).is_some(), "POST /api/tasks {status}");
    }
}
