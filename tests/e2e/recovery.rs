//! Attempts that end badly, through the real binary: time limits (the task's own, the
//! configured per-type limit, the plugin's default), fast recovery after `kill -9` (a consumer
//! that starts again takes back at once the tasks its previous run held), worker identities
//! held by one process at a time, and outputs that belong to one attempt (a consumer paused past
//! its lease on PostgreSQL cannot overwrite the winner's files).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aihost_tests::{Options, Server, TestDatabase, aihost_bin, wait_until};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// Options with the testkit plugin configured by `testkit_cfg`, extra TOML and environment.
fn options(testkit_cfg: &str, extra_toml: &str, env: Vec<(String, String)>) -> Options {
    let mut o = Options {
        extra_toml: extra_toml.to_owned(),
        env,
        ..Options::default()
    };
    for (name, _, cfg) in &mut o.plugins {
        if name == "testkit" {
            *cfg = testkit_cfg.to_owned();
        }
    }
    o
}

/// POSTs a task with an envelope; answers (status, body).
async fn submit(s: &Server, envelope: Value) -> (u16, Value) {
    s.post("/api/tasks", &envelope).await
}

#[tokio::test]
async fn a_task_timeout_fails_the_task_with_timeout() {
    let s = Server::start().await;

    // The task's own limit: the attempt is stopped and the task fails, not retried.
    let (status, t) = submit(
        &s,
        json!({"type": "testkit.run", "max_attempts": 3, "timeout_secs": 1,
               "input": {"mode": "ok", "ms": 60000}}),
    )
    .await;
    assert_eq!(status, 202, "{t}");
    assert_eq!(t["timeout_secs"], 1, "the limit is shown on the task: {t}");
    let done = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["code"], "timeout", "{done}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("time limit of 1 s"),
        "{done}"
    );
    assert_eq!(done["attempts"], 1, "a timeout is not retried by default");

    // A task that ends within its limit completes.
    let (status, t) = submit(
        &s,
        json!({"type": "testkit.run", "timeout_secs": 20, "input": {"mode": "ok", "ms": 10}}),
    )
    .await;
    assert_eq!(status, 202, "{t}");
    let done = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");

    // Bad limits are refused and create nothing.
    let (_, before) = s.get("/api/stats").await;
    for bad in [json!(0), json!(604_801), json!("5"), json!(-1), json!(1.5)] {
        let (status, body) = submit(
            &s,
            json!({"type": "testkit.run", "timeout_secs": bad, "input": {"mode": "ok"}}),
        )
        .await;
        assert!(
            status == 400 || status == 422,
            "timeout_secs {bad}: {status} {body}"
        );
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let (_, after) = s.get("/api/stats").await;
    assert_eq!(before["by_status"], after["by_status"]);
}

#[tokio::test]
async fn configured_and_plugin_timeouts_apply_and_may_be_retried() {
    // The plugin's default (testkit: `timeout_secs = 1`) applies when nothing else is set.
    let s = Server::start_with(options("timeout_secs = 1", "", vec![])).await;
    let (_, t) = submit(
        &s,
        json!({"type": "testkit.run", "input": {"mode": "ok", "ms": 60000}}),
    )
    .await;
    let done = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(
        (done["status"].as_str(), done["error"]["code"].as_str()),
        (Some("FAILED"), Some("timeout")),
        "{done}"
    );
    // The task's own limit wins over the plugin's: 20 s is enough for 1.5 s of work.
    let (_, t) = submit(
        &s,
        json!({"type": "testkit.run", "timeout_secs": 20, "input": {"mode": "ok", "ms": 1500}}),
    )
    .await;
    let done = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    drop(s);

    // The configured per-type limit overrides the plugin's (1 s here, 60 s in the plugin), and
    // `retry_timeouts` lets a timed-out attempt run again while attempts remain.
    let s = Server::start_with(options(
        "timeout_secs = 60",
        "[dispatcher]\ntype_timeouts = [\"testkit.run=1\"]\nretry_timeouts = true\n",
        vec![],
    ))
    .await;
    let (_, t) = submit(
        &s,
        json!({"type": "testkit.run", "max_attempts": 2, "input": {"mode": "ok", "ms": 60000}}),
    )
    .await;
    let done = s.wait_done(t["task_id"].as_str().unwrap(), T).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["code"], "timeout", "{done}");
    assert_eq!(done["attempts"], 2, "retried once, then failed: {done}");
    assert!(
        s.log().contains("retry scheduled"),
        "the first timeout was retried"
    );
}

#[tokio::test]
async fn a_malformed_type_timeout_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aihost.toml"),
        "[dispatcher]\ntype_timeouts = [\"testkit.run\"]\n",
    )
    .unwrap();
    let (code, _, err) = aihost_tests::run_cli(&["config", "check"], dir.path());
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("dispatcher.type_timeouts"), "{err}");
    assert!(err.contains("type=seconds"), "{err}");
}

/// kill -9 of `aihost serve` with a long lease (60 s): the restarted process takes back the
/// tasks its previous run held at once, and they run again and complete.
#[tokio::test]
async fn after_kill_9_a_restarted_serve_reruns_its_tasks_at_once() {
    let mut s = Server::start_with(options(
        "",
        "",
        vec![("AIHOST_QUEUE__LEASE_SECS".into(), "60".into())],
    ))
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let t = s
            .create("testkit.run", json!({"mode": "ok", "ms": 2000}))
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        s.wait_status(id, "PROCESSING", T).await;
    }
    let (_, before) = s.get(&format!("/api/tasks/{}", ids[0])).await;
    s.kill9();
    let restarted = Instant::now();
    s.restart().await;
    // Far less than the 60 s lease: they were taken back at start, not rescued.
    for id in &ids {
        let done = s.wait_done(id, Duration::from_secs(20)).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(
            done["attempts"], 2,
            "the attempt cut by the crash counts: {done}"
        );
    }
    eprintln!(
        "orphaned tasks completed {:.1} s after the restart (lease 60 s)",
        restarted.elapsed().as_secs_f64()
    );
    let log = s.log();
    assert!(
        log.contains("taking back the tasks this consumer's previous run held"),
        "{log}"
    );
    assert!(before["status"] == "PROCESSING", "{before}");
}

/// Starts `aihost consumer` on `dir`'s config with `env`, and waits for it to exit (it must
/// refuse to start); answers its exit code and stderr.
fn consumer_refusal(dir: &std::path::Path, env: &[(String, String)]) -> (i32, String) {
    let mut cmd = Command::new(aihost_bin());
    cmd.arg("--config")
        .arg(dir.join("aihost.toml"))
        .arg("consumer")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second consumer with a held worker id started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// On PostgreSQL: consumers without a configured id get distinct identities (`host-0`,
/// `host-1`); a configured id is held by one process at a time; and a consumer killed with
/// -9 and started again gets its identity back and takes back its tasks at once.
#[tokio::test]
async fn worker_identities_are_held_once_and_come_back_after_a_crash_postgres() {
    let db = TestDatabase::create().await;
    let mut env = db.env();
    env.push(("AIHOST_QUEUE__LEASE_SECS".into(), "60".into()));
    let api = Server::start_role(options("", "", env.clone()), "api").await;
    let a = Server::start_role(options("", "", env.clone()), "consumer").await;
    let b = Server::start_role(options("", "", env.clone()), "consumer").await;
    wait_until("two consumers listed", T, async || {
        let (_, status) = api.get("/api/status").await;
        status["consumers"].as_array().is_some_and(|c| c.len() == 2)
    })
    .await;
    let (_, status) = api.get("/api/status").await;
    let mut identities: Vec<String> = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let worker = c["worker"].as_str().unwrap();
            worker.split('#').next().unwrap().to_owned()
        })
        .collect();
    identities.sort();
    assert!(
        identities[0].ends_with("-0") && identities[1].ends_with("-1"),
        "{identities:?}"
    );
    drop((a, b));

    // A configured id: a second process with it refuses to start, in one line with its code.
    let mut fixed = env.clone();
    fixed.push(("AIHOST_DISPATCHER__WORKER_ID".into(), "gpu-box-7".into()));
    let mut holder = Server::start_role(options("", "", fixed.clone()), "consumer").await;
    let (code, err) = consumer_refusal(holder.dir.path(), &fixed);
    assert_ne!(code, 0);
    assert!(err.contains("worker_id_in_use"), "{err}");
    assert!(err.contains("gpu-box-7"), "{err}");

    // kill -9 while it runs a task; started again it takes the task back at once.
    let t = api
        .create("testkit.run", json!({"mode": "ok", "ms": 1500}))
        .await;
    let id = t["task_id"].as_str().unwrap();
    let running = api.wait_status(id, "PROCESSING", T).await;
    assert!(
        running["status"] == "PROCESSING",
        "claimed by the holder: {running}"
    );
    holder.kill9();
    holder.restart_as("consumer").await;
    let done = api.wait_done(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert!(
        holder
            .log()
            .contains("taking back the tasks this consumer's previous run held"),
        "{}",
        holder.log()
    );
}

/// On PostgreSQL with a 2 s lease: consumer A is paused (SIGSTOP) while it runs a task; its
/// lease runs out, consumer B runs the task again and completes it; A resumes (SIGCONT) with
/// its work done. The result names B's files only, the stored file is B's, A stored nothing,
/// and A logs that its attempt was dropped, with the attempt numbers.
#[tokio::test]
async fn a_paused_consumer_cannot_overwrite_the_winners_outputs_postgres() {
    let db = TestDatabase::create().await;
    let shared = tempfile::tempdir().unwrap();
    let mut env = db.env();
    env.push(("AIHOST_QUEUE__LEASE_SECS".into(), "2".into()));
    env.push((
        "AIHOST_STORAGE__ROOT".into(),
        shared.path().to_str().unwrap().to_owned(),
    ));
    let api = Server::start_role(options("", "", env.clone()), "api").await;
    let mut a = Server::start_role(options("", "", env.clone()), "consumer").await;

    let t = api
        .create("testkit.run", json!({"mode": "ok", "ms": 3000}))
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    api.wait_status(&id, "PROCESSING", T).await;
    let a_pid = a.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &a_pid])
            .status()
            .unwrap()
            .success()
    );

    // B takes the task once A's lease ran out, and completes it as attempt 2.
    let b = Server::start_role(options("", "", env.clone()), "consumer").await;
    let done = api.wait_done(&id, T).await;
    assert!(
        Command::new("kill")
            .args(["-CONT", &a_pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(done["status"], "COMPLETED", "{done}\nB:\n{}", b.log());
    assert_eq!(done["attempts"], 2, "{done}");
    let key = done["result"]["outputs"][0]["key"].as_str().unwrap();
    assert_eq!(key, format!("outputs/{id}/2/out.txt"));

    // A resumes with its attempt done: it must store nothing and say why.
    wait_until("A to drop its stale attempt", T, async || {
        let log = a.log();
        log.contains("stale attempt dropped") || log.contains("lease lost")
    })
    .await;
    let a_log = a.log();
    let line = a_log
        .lines()
        .find(|l| l.contains("stale attempt dropped") || l.contains("lease lost"))
        .unwrap();
    assert!(line.contains(&id) && line.contains("attempt=1"), "{line}");
    if line.contains("stale attempt dropped") {
        assert!(line.contains("current_attempt=2"), "{line}");
    }
    // Give A time to do anything it still would, then look at what is stored.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let folder = shared.path().join("outputs").join(&id);
    let mut stored: Vec<String> = walk(&folder)
        .into_iter()
        .map(|p| {
            p.strip_prefix(&folder)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    stored.sort();
    assert_eq!(stored, ["2/out.txt"], "only the winner's files are stored");
    // The URL names the consumer's public URL, which serves no HTTP: read it through the API.
    let body = api.download(&api.url(&format!("/files/{key}"))).await;
    assert_eq!(String::from_utf8_lossy(&body), id);
    a.kill9();
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
