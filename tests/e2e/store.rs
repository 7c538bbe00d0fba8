//! The task store through the real binary: `aihost api` and `aihost consumer` as two processes
//! on one SQLite file (events, waits and cancels cross between them), and store health when
//! the disk under the SQLite file fills up.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aihost_tests::{Options, Server, wait_for};
use futures_util::StreamExt;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// Options that put the SQLite file and the outputs in `shared`, with extra variables.
fn on_shared(shared: &Path, env_extra: &[(&str, &str)]) -> Options {
    let mut env = vec![
        (
            "AIHOST_QUEUE__PATH".to_owned(),
            shared.join("aihost.db").display().to_string(),
        ),
        (
            "AIHOST_STORAGE__ROOT".to_owned(),
            shared.join("outputs").display().to_string(),
        ),
    ];
    env.extend(
        env_extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Options {
        env,
        ..Options::default()
    }
}

/// `aihost api` and `aihost consumer` on one SQLite file. The consumer polls the queue only
/// every 5 minutes, so it runs a task at once only if the API's insert wakes it.
async fn split_pair() -> (tempfile::TempDir, Server, Server) {
    let shared = tempfile::tempdir().unwrap();
    let api = Server::start_role(on_shared(shared.path(), &[]), "api").await;
    let consumer = Server::start_role(
        on_shared(
            shared.path(),
            &[
                ("AIHOST_QUEUE__POLL_INTERVAL_MS", "300000"),
                ("AIHOST_DISPATCHER__PROGRESS_INTERVAL_MS", "1"),
            ],
        ),
        "consumer",
    )
    .await;
    (shared, api, consumer)
}

/// How long after the task finished (its `finished_at`) an event arrived, in ms (printed, not
/// asserted: the figure is for the record).
fn lag_ms(event: &Value) -> i64 {
    let finished = event["task"]["finished_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    finished.map_or(-1, |f| {
        (chrono::Utc::now() - f.with_timezone(&chrono::Utc)).num_milliseconds()
    })
}

/// `?wait`, SSE and WebSocket on the API process follow tasks that the consumer process runs,
/// exactly as in `serve`: each ends with `completed` (before the wait runs out, and while the
/// consumer's queue poll is minutes away).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_process_follows_tasks_run_by_a_consumer_process_on_one_sqlite_file() {
    let (_shared, api, consumer) = split_pair().await;

    // ?wait: answered with the finished task long before the wait (600 s) would run out.
    let began = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        api.post(
            "/api/tasks?wait=600",
            &json!({"type": "testkit.run", "input": {"mode": "ok", "ms": 200}}),
        ),
    )
    .await;
    let (status, done) = answer.unwrap_or_else(|_| {
        panic!(
            "?wait did not answer in 60 s\napi:\n{}\nconsumer:\n{}",
            api.log(),
            consumer.log()
        )
    });
    assert_eq!(
        (status, done["status"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    eprintln!(
        "?wait answered a 200 ms task in {} ms",
        began.elapsed().as_millis()
    );

    // SSE: progress events cross too, and the stream ends with `completed`.
    let t = api
        .create("testkit.run", json!({"mode": "progress", "steps": 20}))
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let events = api.events(&id, T).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds.last(), Some(&"completed"), "{events:?}");
    assert_eq!(events.last().unwrap()["task"]["result"]["steps"], 20);
    assert!(kinds.contains(&"progress"), "{kinds:?}");
    eprintln!(
        "SSE `completed` {} ms after finished_at; kinds {kinds:?}",
        lag_ms(events.last().unwrap())
    );

    // WebSocket: the same events, ending with `completed` and a close.
    let t = api
        .create("testkit.run", json!({"mode": "ok", "ms": 300}))
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let ws_url = api.base.replace("http://", "ws://") + &format!("/api/tasks/{id}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let mut ws_events = Vec::new();
    let read = tokio::time::timeout(T, async {
        while let Some(msg) = ws.next().await {
            match msg.unwrap() {
                tokio_tungstenite::tungstenite::Message::Text(t) => {
                    ws_events.push(serde_json::from_str::<Value>(&t).unwrap())
                }
                tokio_tungstenite::tungstenite::Message::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the socket did not close: {ws_events:?}");
    let last = ws_events.last().expect("events");
    assert_eq!(
        (last["event"].as_str(), last["status"].as_str()),
        (Some("completed"), Some("COMPLETED")),
        "{ws_events:?}"
    );
    eprintln!(
        "WebSocket `completed` {} ms after finished_at",
        lag_ms(last)
    );
}

/// A cancel sent to the API process reaches the attempt running in the consumer process: the
/// task ends CANCELLED at once instead of running its minute, and never writes its marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_on_the_api_process_stops_the_attempt_in_the_consumer_process() {
    let (shared, api, consumer) = split_pair().await;
    let marker = shared.path().join("ran-to-the-end");
    let t = api
        .create(
            "testkit.run",
            json!({"mode": "ok", "ms": 60000, "marker": marker.to_str().unwrap()}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    api.wait_status(&id, "PROCESSING", T).await;
    let (status, body) = api
        .post(&format!("/api/tasks/{id}/cancel"), &json!({}))
        .await;
    assert!(status < 300, "cancel answered {status} {body}");
    let done = api.wait_done(&id, T).await;
    assert_eq!(done["status"], "CANCELLED", "{done}\n{}", consumer.log());
    assert!(
        consumer.log().contains("task cancelled while running"),
        "{}",
        consumer.log()
    );
    assert!(!marker.exists(), "the attempt ran to its end");
}

/// A tmpfs of 2 MiB mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts it, or answers why it cannot (not root, no mount permission in this container).
    fn mount() -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; answers its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC: {e}");
                break;
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Submits one task; answers (status, body).
async fn submit(s: &Server) -> (u16, Value) {
    s.post(
        "/api/tasks",
        &json!({"type": "testkit.run", "input": {"mode": "noop"}}),
    )
    .await
}

/// Disk full under the SQLite file: submits answer 503 `store_unavailable`, `/api/status` says
/// `store_ok: false` with the cause, `/api/ready` answers 503, and the log has one ERROR line
/// naming the cause for the whole burst; once space is freed a submit succeeds, the status is
/// healthy again and the recovery is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_marks_the_store_unhealthy_until_a_write_succeeds() {
    let disk = match SmallDisk::mount() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPED disk_full test: cannot mount a tmpfs here ({why})");
            return;
        }
    };
    let options = Options {
        env: vec![(
            "AIHOST_QUEUE__PATH".into(),
            disk.path().join("aihost.db").display().to_string(),
        )],
        ..Options::default()
    };
    let s = Server::start_role(options, "api").await;
    let (status, body) = submit(&s).await;
    assert_eq!(status, 202, "{body}");
    let (_, st) = s.get("/api/status").await;
    assert_eq!(st["store_ok"], true, "{st}");

    let filler = disk.fill();
    // Every submit fails now (the first ones may still fit in pages SQLite holds).
    let first_failure = wait_for("a submit fails", T, async || {
        let (status, body) = submit(&s).await;
        if status == 503 {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    assert_eq!(
        first_failure["error"]["code"], "store_unavailable",
        "{first_failure}"
    );
    for _ in 0..5 {
        let (status, body) = submit(&s).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    }
    let (status, st) = s.get("/api/status").await;
    assert_eq!(status, 200);
    assert_eq!(st["store_ok"], false, "{st}");
    assert_eq!(st["status"], "degraded", "{st}");
    assert_eq!(st["store_error"]["code"], "store_unavailable", "{st}");
    assert_eq!(st["store_error"]["cause"], "disk_full", "{st}");
    assert!(
        st["store_error"]["failed_writes"].as_u64() >= Some(6),
        "{st}"
    );
    let (status, ready) = s.get("/api/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk full"),
        "{ready}"
    );
    let log = s.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("task store writes failing"))
        .collect();
    assert_eq!(errors.len(), 1, "one line per burst:\n{log}");
    assert!(errors[0].contains("ERROR"), "{}", errors[0]);
    assert!(errors[0].contains("disk full"), "{}", errors[0]);
    eprintln!("{}\n{}", errors[0], st["store_error"]);

    std::fs::remove_file(filler).unwrap();
    let (status, body) = submit(&s).await;
    assert_eq!(status, 202, "a submit after freeing space: {body}");
    let (_, st) = s.get("/api/status").await;
    assert_eq!(st["store_ok"], true, "{st}");
    assert!(st["store_error"].is_null(), "{st}");
    let log = s.log();
    let recovered = log
        .lines()
        .find(|l| l.contains("task store writes succeed again"))
        .unwrap_or_else(|| panic!("no recovery line:\n{log}"));
    assert!(recovered.contains("WARN"), "{recovered}");
    eprintln!("{recovered}");
}
