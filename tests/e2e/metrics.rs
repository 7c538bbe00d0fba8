//! `GET /metrics` through the real binary: counters and histograms move by exactly what
//! happened, labels stay bounded, API keys protect it, `server.metrics_bind` serves it without
//! a key, `promtool` accepts a real scrape, and every metric the Grafana dashboard queries is
//! in one.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use aihost_tests::{
    Options, Server, fake_comfyui::FakeComfy, free_port, plugin_lib, wait_for, workflows_dir,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const TYPE: &str = "testkit.run";

/// One sample of a scrape: metric name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// A parsed exposition: every sample, and the `# TYPE` of every family.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<Series, f64>,
    types: BTreeMap<String, String>,
    text: String,
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape {
        text: text.to_owned(),
        ..Scrape::default()
    };
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            scrape.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}').unwrap())),
            None => (series, BTreeMap::new()),
        };
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        scrape.samples.insert(
            Series {
                name: name.to_owned(),
                labels,
            },
            value,
        );
    }
    scrape
}

impl Scrape {
    /// The sum of the samples of `name` whose labels include `labels` (0 when none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(s, _)| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Metric families present (from `# TYPE`).
    fn families(&self) -> BTreeSet<String> {
        self.types.keys().cloned().collect()
    }
}

async fn scrape_at(s: &Server, url: &str) -> Scrape {
    let r = s.http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&r.text().await.unwrap())
}

async fn scrape(s: &Server) -> Scrape {
    scrape_at(s, &s.url("/metrics")).await
}

/// Creates a testkit task with `max_attempts`, answers its id.
async fn submit(s: &Server, input: Value) -> String {
    let t = s.create(TYPE, input).await;
    t["task_id"].as_str().unwrap().to_owned()
}

/// Opens an SSE stream of a task and keeps it open (the response is not read).
async fn open_sse(s: &Server, id: &str) -> reqwest::Response {
    let r = s
        .http
        .get(s.url(&format!("/api/tasks/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

#[tokio::test]
async fn counters_and_histograms_move_by_exactly_what_happened() {
    let s = Server::start().await;
    let before = scrape(&s).await;

    // N = 3 completed, at once.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&s, json!({"mode": "ok"})).await);
    }
    // M = 3 failed at the first attempt: two with a code, one with a code outside
    // `[a-z0-9_]{1,64}`, which the host turns into `plugin_error` before anything sees it.
    for code in ["my_failure", "my_failure", "Not-A-Label"] {
        ids.push(submit(&s, json!({"mode": "fail", "code": code})).await);
    }
    // K = 2 retried once, then completed.
    for _ in 0..2 {
        ids.push(
            submit(
                &s,
                json!({"mode": "fail", "fail_times": 1, "retryable": true, "code": "flaky_engine"}),
            )
            .await,
        );
    }
    let mut written = 0.0;
    let mut outputs = Vec::new();
    for id in &ids {
        let t = s.wait_done(id, T).await;
        for o in t["result"]["outputs"].as_array().into_iter().flatten() {
            written += o["size"].as_f64().unwrap();
            outputs.push(o["url"].as_str().unwrap().to_owned());
        }
    }
    // C = 2 cancelled while running, one of them followed over SSE meanwhile.
    let mut running = Vec::new();
    for _ in 0..2 {
        running.push(submit(&s, json!({"mode": "ok", "ms": 60_000})).await);
    }
    for id in &running {
        s.wait_status(id, "PROCESSING", T).await;
    }
    let sse = open_sse(&s, &running[0]).await;
    let during = scrape(&s).await;
    assert_eq!(
        during.get("aihost_event_streams_open", &[("kind", "sse")]),
        1.0
    );
    assert_eq!(
        during.get(
            "aihost_tasks_in_flight",
            &[("type", TYPE), ("plugin", "testkit")]
        ),
        2.0
    );
    assert_eq!(
        during.get(
            "aihost_queue_tasks",
            &[("type", TYPE), ("status", "PROCESSING")]
        ),
        2.0
    );
    for id in &running {
        let (st, _) = s.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(st, 202);
    }
    for id in &running {
        s.wait_status(id, "CANCELLED", T).await;
    }
    let _ = sse.text().await;
    // Reading one output counts its bytes as read.
    let downloaded = s.download(&outputs[0]).await.len() as f64;

    // Counters move just after the store write the API shows: wait until the last of them.
    let after = wait_for("every attempt is counted", T, async || {
        let now = scrape(&s).await;
        let ended = now.get("aihost_task_run_seconds_count", &[("type", TYPE)])
            - before.get("aihost_task_run_seconds_count", &[("type", TYPE)]);
        let streams = now.get("aihost_event_streams_open", &[("kind", "sse")]);
        if ended == 12.0 && streams == 0.0 {
            Ok(now)
        } else {
            Err(format!(
                "{ended} attempts ended, {streams} SSE streams open"
            ))
        }
    })
    .await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let t = ("type", TYPE);

    assert_eq!(delta("aihost_tasks_submitted_total", &[t]), 10.0);
    // 3 + 3 + 2 × 2 + 2 attempts.
    assert_eq!(delta("aihost_tasks_started_total", &[t]), 12.0);
    assert_eq!(delta("aihost_tasks_completed_total", &[t]), 5.0);
    assert_eq!(delta("aihost_tasks_failed_total", &[t]), 3.0);
    assert_eq!(
        delta("aihost_tasks_failed_total", &[t, ("code", "my_failure")]),
        2.0
    );
    assert_eq!(
        delta("aihost_tasks_failed_total", &[t, ("code", "plugin_error")]),
        1.0
    );
    assert_eq!(delta("aihost_tasks_retried_total", &[t]), 2.0);
    assert_eq!(
        delta("aihost_tasks_retried_total", &[t, ("code", "flaky_engine")]),
        2.0
    );
    assert_eq!(delta("aihost_tasks_cancelled_total", &[t]), 2.0);
    assert_eq!(delta("aihost_tasks_rescued_total", &[t]), 0.0);
    // Time in queue: once per task, at its first attempt.
    assert_eq!(delta("aihost_task_queue_seconds_count", &[t]), 10.0);
    for (outcome, n) in [
        ("completed", 5.0),
        ("failed", 3.0),
        ("retried", 2.0),
        ("cancelled", 2.0),
    ] {
        assert_eq!(
            delta("aihost_task_run_seconds_count", &[t, ("outcome", outcome)]),
            n,
            "{outcome}"
        );
        // Every observation is in the +Inf bucket.
        assert_eq!(
            delta(
                "aihost_task_run_seconds_bucket",
                &[t, ("outcome", outcome), ("le", "+Inf")]
            ),
            n,
            "{outcome}"
        );
    }
    // HTTP: 10 creates answered 202, 2 cancels answered 202, by route template.
    let create = [
        ("method", "POST"),
        ("route", "/api/tasks"),
        ("status", "202"),
    ];
    assert_eq!(delta("aihost_http_requests_total", &create), 10.0);
    let cancel = [
        ("method", "POST"),
        ("route", "/api/tasks/{task_id}/cancel"),
        ("status", "202"),
    ];
    assert_eq!(delta("aihost_http_requests_total", &cancel), 2.0);
    assert_eq!(
        delta(
            "aihost_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/api/tasks")]
        ),
        10.0
    );
    // Storage: the outputs' sizes written, one download read.
    assert_eq!(delta("aihost_storage_written_bytes_total", &[]), written);
    assert!(written > 0.0);
    assert_eq!(delta("aihost_storage_read_bytes_total", &[]), downloaded);

    // Values read at scrape time.
    for (status, n) in [
        ("PENDING", 0.0),
        ("PROCESSING", 0.0),
        ("COMPLETED", 5.0),
        ("FAILED", 3.0),
        ("CANCELLED", 2.0),
    ] {
        assert_eq!(
            after.get("aihost_queue_tasks", &[t, ("status", status)]),
            n,
            "{status}"
        );
    }
    assert_eq!(
        after.get("aihost_tasks_in_flight", &[t, ("plugin", "testkit")]),
        0.0
    );
    assert_eq!(
        after.get("aihost_task_concurrency_limit", &[t, ("plugin", "testkit")]),
        2.0
    );
    assert_eq!(after.get("aihost_engine_up", &[("plugin", "testkit")]), 1.0);
    assert_eq!(
        after.get("aihost_plugin_info", &[("plugin", "imageops")]),
        1.0
    );
    assert_eq!(
        after.get(
            "aihost_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(after.get("aihost_store_commit_seconds_count", &[("store", "sqlite")]) > 0.0);
    assert_eq!(
        after.get("aihost_store_commit_errors_total", &[("store", "sqlite")]),
        0.0
    );

    // No label value holds a task id (or any id-like value), whatever was requested.
    let every_id: Vec<&String> = ids.iter().chain(&running).collect();
    for series in after.samples.keys() {
        for (k, v) in &series.labels {
            assert!(
                !every_id.iter().any(|id| v.contains(id.as_str())),
                "{} {k}={v} holds a task id",
                series.name
            );
        }
    }
    let routes: BTreeSet<&str> = after
        .samples
        .keys()
        .filter(|s| s.name == "aihost_http_requests_total")
        .map(|s| s.labels["route"].as_str())
        .collect();
    assert!(routes.contains("/api/tasks/{task_id}"), "{routes:?}");
    assert!(routes.contains("/files/{key}"), "{routes:?}");
}

#[tokio::test]
async fn unknown_paths_share_one_route_label() {
    let s = Server::start().await;
    for i in 0..5 {
        let (st, _) = s.get(&format!("/no/such/path/{i}")).await;
        assert_eq!(st, 404);
    }
    let m = scrape(&s).await;
    assert_eq!(
        m.get(
            "aihost_http_requests_total",
            &[("route", "other"), ("status", "404")]
        ),
        5.0
    );
    assert!(!m.text.contains("/no/such/path"), "{}", m.text);
}

#[tokio::test]
async fn api_keys_protect_metrics_and_metrics_bind_serves_it_without() {
    let port = free_port();
    let s = Server::start_with(Options {
        env: vec![
            ("AIHOST_SERVER__API_KEYS".into(), "secret-1".into()),
            (
                "AIHOST_SERVER__METRICS_BIND".into(),
                format!("127.0.0.1:{port}"),
            ),
        ],
        ..Options::default()
    })
    .await;
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "unauthorized");
    let r = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .http
        .get(s.url("/metrics"))
        .header("X-API-Key", "secret-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("aihost_build_info"));

    // The private listener: /metrics without a key, and nothing else.
    let private = format!("http://127.0.0.1:{port}");
    let m = scrape_at(&s, &format!("{private}/metrics")).await;
    assert_eq!(m.get("aihost_engine_up", &[("plugin", "testkit")]), 1.0);
    // The refused scrape above was counted on the main listener.
    assert_eq!(
        m.get(
            "aihost_http_requests_total",
            &[("route", "/metrics"), ("status", "401")]
        ),
        2.0
    );
    for path in ["/api/tasks", "/api/health", "/docs"] {
        let r = s.http.get(format!("{private}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    })
}

/// A scrape after a bit of everything (tasks of each outcome, a stream, a download, a ComfyUI
/// pool with one instance up and one down) passes `promtool check metrics`, and holds every
/// metric the Grafana dashboard queries (the README documents them: a unit test checks that).
#[tokio::test]
async fn a_real_scrape_passes_promtool_and_has_every_dashboard_metric() {
    let promtool = promtool()
        .expect("promtool is not on PATH: install Debian's `prometheus` package (tests/run does)");
    let fake = FakeComfy::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let comfy = format!(
        "urls = [{:?}, {dead:?}]\nworkflows_dir = {:?}\nunavailable_wait_secs = 5\nreconnect_max_ms = 300\n",
        fake.url,
        workflows_dir()
    );
    let mut options = Options::default();
    options
        .plugins
        .push(("comfyui".into(), plugin_lib("aihost_comfyui"), comfy));
    let s = Server::start_with(options).await;

    let ok = s.run(TYPE, json!({"mode": "ok"}), T).await;
    s.download(ok["result"]["outputs"][0]["url"].as_str().unwrap())
        .await;
    s.run(TYPE, json!({"mode": "fail", "code": "my_failure"}), T)
        .await;
    s.run(
        TYPE,
        json!({"mode": "fail", "fail_times": 1, "retryable": true}),
        T,
    )
    .await;
    let long = submit(&s, json!({"mode": "ok", "ms": 60_000})).await;
    s.wait_status(&long, "PROCESSING", T).await;
    s.post(&format!("/api/tasks/{long}/cancel"), &json!({}))
        .await;
    s.events(&long, T).await;
    let comfy_task = s
        .run(
            "comfyui.workflow",
            json!({"workflow": "solid_color", "params": {"width": 8, "height": 8, "color": 255}}),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(comfy_task["status"], "COMPLETED", "{comfy_task}");

    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let m = parse(&text);
    assert_eq!(m.get("aihost_engine_up", &[("plugin", "comfyui")]), 1.0);
    assert_eq!(
        m.get(
            "aihost_engine_instance_up",
            &[("plugin", "comfyui"), ("instance", fake.url.as_str())]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "aihost_engine_instance_up",
            &[("plugin", "comfyui"), ("instance", dead.as_str())]
        ),
        0.0
    );
    assert!(
        m.samples
            .keys()
            .any(|s| s.name == "aihost_engine_instance_up"
                && s.labels.get("instance") == Some(&dead))
    );
    assert!(
        m.samples
            .keys()
            .any(|s| s.name == "aihost_engine_instance_queue_length")
    );

    let dashboard = dashboard_metrics();
    let present = m.families();
    let missing: Vec<&String> = dashboard.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics a scrape lacks: {missing:?}"
    );
}

/// The metric names the dashboard's queries use, histogram series suffixes removed.
fn dashboard_metrics() -> BTreeSet<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/aihost-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("aihost_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let base = name.strip_suffix("_bucket").unwrap_or(&name).to_owned();
        names.insert(base);
    }
    assert!(names.len() >= 10, "{names:?}");
    names
}
