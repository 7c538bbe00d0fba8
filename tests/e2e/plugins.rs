//! The plugin system through the real binary and real libraries: loading, refusals, panics,
//! progress, logging, abort on drop, concurrency.

use std::{path::PathBuf, time::Duration};

use aihost_tests::{Options, Server, plugin_lib, run_cli, wait_for};
use serde_json::json;

/// The names of the loaded plugins in a `GET /api/plugins` answer.
fn plugin_names(list: &serde_json::Value) -> Vec<&str> {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect()
}

fn libz() -> Option<PathBuf> {
    [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1",
        "/usr/lib/libz.so.1",
        "/lib/libz.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

fn check(file: &std::path::Path) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    run_cli(&["plugins", "check", file.to_str().unwrap()], dir.path())
}

fn assert_one_line_refusal(file: &std::path::Path, expect: &str) {
    let (code, out, err) = check(file);
    assert_eq!(
        code,
        1,
        "exit code for {}: stdout {out} stderr {err}",
        file.display()
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(
        lines[0].contains(expect),
        "expected {expect:?} in {:?}",
        lines[0]
    );
}

#[test]
fn check_accepts_imageops() {
    let (code, out, err) = check(&plugin_lib("aihost_imageops"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("imageops.transform"), "{out}");
    assert!(out.contains("default config"), "{out}");
}

#[test]
fn check_refuses_a_missing_file() {
    assert_one_line_refusal(
        std::path::Path::new("/nonexistent/libnothing.so"),
        "no such file",
    );
}

#[test]
fn check_refuses_a_text_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("libtext.so");
    std::fs::write(&f, "this is not a library\n").unwrap();
    assert_one_line_refusal(&f, "not a shared library");
}

#[test]
fn check_refuses_a_real_non_plugin_library() {
    let Some(z) = libz() else {
        panic!("libz.so.1 not found on this machine; install zlib1g");
    };
    assert_one_line_refusal(&z, "not an aihost plugin");
}

#[test]
fn check_refuses_a_plugin_built_for_another_interface_version() {
    assert_one_line_refusal(
        &plugin_lib("aihost_test_bad_version"),
        "built against plugin-api 2.0.0",
    );
}

#[test]
fn check_refuses_a_layout_mismatch_in_one_line() {
    assert_one_line_refusal(
        &plugin_lib("aihost_test_bad_layout"),
        "layout of the plugin interface does not match",
    );
}

#[tokio::test]
async fn imageops_transforms_a_real_image_and_its_schema_rejects_bad_input() {
    let s = Server::start().await;
    let img = s.dir.path().join("in.png");
    aihost_tests::write_png(&img, 64, 48);
    let up = s
        .upload("in.png", std::fs::read(&img).unwrap(), Some("image/png"))
        .await;
    let key = up["key"].as_str().expect("upload key").to_owned();

    let done = s
        .run(
            "imageops.transform",
            json!({"source": key, "operations": [{"op": "resize", "width": 32, "height": 24, "fit": "fill"}, {"op": "grayscale"}], "format": "png"}),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let out = &done["result"]["outputs"][0];
    let url = out["url"].as_str().unwrap();
    let bytes = s.download(url).await;
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (32, 24));
    assert_eq!(out["content_type"], "image/png");

    // Bad input: caught by the schema at submit, nothing queued.
    let (status, body) = s
        .post("/api/tasks", &json!({"type": "imageops.transform", "input": {"source": key, "operations": [{"op": "resize", "width": "big"}]}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_input");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operations"),
        "{body}"
    );
}

#[tokio::test]
async fn duplicate_task_types_are_refused_and_the_others_load() {
    let opts = Options {
        env: vec![(
            "AIHOST_TESTKIT_EXTRA_TYPE".into(),
            "imageops.transform".into(),
        )],
        ..Options::default()
    };
    let s = Server::start_with(opts).await;
    let (_, plugins) = s.get("/api/plugins").await;
    let names = plugin_names(&plugins);
    assert_eq!(names, vec!["imageops"], "{plugins}");
    let failure = &plugins["failures"][0];
    assert_eq!(failure["code"], "plugin_duplicate_task_type", "{plugins}");
    let msg = failure["message"].as_str().unwrap();
    assert!(
        msg.contains("imageops.transform") && msg.contains("testkit") && !msg.contains('\n'),
        "{msg}"
    );
}

#[tokio::test]
async fn panics_in_entry_point_poll_and_runtime_fail_the_task_not_the_host() {
    let s = Server::start().await;
    for mode in ["panic_entry", "panic_poll", "panic_runtime"] {
        let done = s
            .run(
                "testkit.run",
                json!({"mode": mode}),
                Duration::from_secs(20),
            )
            .await;
        assert_eq!(done["status"], "FAILED", "{mode}: {done}");
        assert_eq!(done["error"]["code"], "plugin_panic", "{mode}: {done}");
        assert_eq!(done["attempts"], 1, "panics are not retried: {done}");
    }
    let (status, _) = s.get("/api/health").await;
    assert_eq!(status, 200);
    let done = s
        .run(
            "testkit.run",
            json!({"mode": "ok"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(done["status"], "COMPLETED");
}

#[tokio::test]
async fn progress_events_arrive_in_order_over_sse() {
    let opts = Options {
        extra_toml: "[dispatcher]\nprogress_interval_ms = 0\n".into(),
        ..Options::default()
    };
    let s = Server::start_with(opts).await;
    let t = s
        .create("testkit.run", json!({"mode": "progress", "steps": 10}))
        .await;
    let id = t["task_id"].as_str().unwrap();
    let events = s.events(id, Duration::from_secs(20)).await;
    let percents: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["progress"]["percent"].as_f64().unwrap())
        .collect();
    assert!(percents.len() >= 2, "progress events: {events:?}");
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {percents:?}"
    );
    assert_eq!(events.last().unwrap()["status"], "COMPLETED", "{events:?}");
}

#[tokio::test]
async fn plugin_tracing_reaches_the_host_log_with_the_plugin_name() {
    let s = Server::start().await;
    let t = s.create("testkit.run", json!({"mode": "log"})).await;
    let id = t["task_id"].as_str().unwrap();
    s.wait_done(id, Duration::from_secs(20)).await;
    let line = wait_for(
        "the plugin's line is in the log",
        Duration::from_secs(10),
        async || {
            let log = s.log();
            match log
                .lines()
                .find(|l| l.contains(&format!("testkit log line {id}")))
            {
                Some(line) => Ok(line.to_owned()),
                None => Err(log),
            }
        },
    )
    .await;
    assert!(line.contains("plugin=testkit"), "{line}");
}

#[tokio::test]
async fn dropping_the_future_stops_the_plugin_work() {
    let s = Server::start().await;
    let marker = s.dir.path().join("side-effect");
    let t = s
        .create(
            "testkit.run",
            json!({"mode": "ok", "ms": 1500, "marker": marker.to_str().unwrap()}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap();
    s.wait_status(id, "PROCESSING", Duration::from_secs(10))
        .await;
    let (status, body) = s.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    let done = s.wait_done(id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "CANCELLED");
    // Lets the task's 1.5 s pass on purpose: the side effect must NOT appear.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !marker.exists(),
        "the aborted task still wrote its side effect"
    );
}

#[tokio::test]
async fn fifty_slow_tasks_run_at_once_on_a_two_thread_host() {
    let opts = Options {
        extra_toml: "[dispatcher]\ndefault_concurrency = 64\n".into(),
        env: vec![("TOKIO_WORKER_THREADS".into(), "2".into())],
        ..Options::default()
    };
    let s = Server::start_with(opts).await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        let t = s
            .create("testkit.run", json!({"mode": "ok", "ms": 1000}))
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    let mut started = Vec::new();
    let mut finished = Vec::new();
    for id in &ids {
        let t = s.wait_done(id, Duration::from_secs(30)).await;
        assert_eq!(t["status"], "COMPLETED");
        started.push(t["started_at"].as_str().unwrap().to_owned());
        finished.push(t["finished_at"].as_str().unwrap().to_owned());
    }
    // Every task started before any finished: they all ran at the same time.
    let last_start = started.iter().max().unwrap();
    let first_finish = finished.iter().min().unwrap();
    assert!(
        last_start < first_finish,
        "last start {last_start} is after first finish {first_finish}"
    );
}

#[tokio::test]
async fn a_library_dropped_in_loads_without_restart_and_a_replaced_one_asks_for_one() {
    let plugdir = tempfile::tempdir().unwrap();
    let imageops = plugdir.path().join("libaihost_imageops.so");
    std::fs::copy(plugin_lib("aihost_imageops"), &imageops).unwrap();
    let manifest = plugdir.path().join("plugins.toml");
    std::fs::write(&manifest, "dir = \".\"\nautoload = true\n").unwrap();
    let s = Server::start_with(Options {
        plugins: Vec::new(),
        extra_toml: format!(
            "[plugins]\nmanifest = {:?}\n",
            manifest.display().to_string()
        ),
        env: Vec::new(),
    })
    .await;
    let (_, list) = s.get("/api/plugins").await;
    let names = plugin_names(&list);
    assert_eq!(names, vec!["imageops"], "{list}");
    let (st, _) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}}),
        )
        .await;
    assert_eq!(st, 422, "testkit is not loaded yet");

    std::fs::copy(
        plugin_lib("aihost_test_testkit"),
        plugdir.path().join("libaihost_test_testkit.so"),
    )
    .unwrap();
    let (st, report) = s.post("/api/plugins/reload", &json!({})).await;
    assert_eq!(st, 200, "{report}");
    assert_eq!(report["loaded"], json!(["testkit"]), "{report}");
    let done = s
        .run(
            "testkit.run",
            json!({"mode": "ok"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(done["status"], "COMPLETED");
    // The spec follows: the new task type's schema is documented without a restart.
    let (_, spec) = s.get("/openapi.json").await;
    assert!(
        spec["components"]["schemas"]
            .get("TaskInput.testkit.run")
            .is_some()
    );

    // Replace the loaded imageops library (a new file renamed over it, as installers do).
    let staged = plugdir.path().join("staged.tmp");
    let mut bytes = std::fs::read(plugin_lib("aihost_imageops")).unwrap();
    bytes.extend_from_slice(b"changed");
    std::fs::write(&staged, bytes).unwrap();
    std::fs::rename(&staged, &imageops).unwrap();
    let (_, report) = s.post("/api/plugins/reload", &json!({})).await;
    assert_eq!(report["loaded"], json!([]), "{report}");
    let failed = &report["failed"][0];
    assert_eq!(failed["code"], "plugin_needs_restart", "{report}");
    assert!(
        failed["message"].as_str().unwrap().contains("restart"),
        "{report}"
    );
    // The loaded version keeps working.
    let (st, _) = s.get("/api/health").await;
    assert_eq!(st, 200);
}

#[test]
fn plugins_list_shows_the_task_types_of_plugins_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plugins.toml"),
        format!(
            "[[plugin]]\nname = \"imageops\"\nlibrary = {:?}\n",
            plugin_lib("aihost_imageops").display().to_string()
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["plugins", "list"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("imageops"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("imageops.transform") && line.contains("libaihost_imageops.so"),
        "{line}"
    );

    // A broken entry is reported with its one-line reason and a failing exit code.
    std::fs::write(
        dir.path().join("plugins.toml"),
        "[[plugin]]\nname = \"ghost\"\nlibrary = \"libghost.so\"\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["plugins", "list"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("libghost.so: no such file"), "{err}");
}
