//! The comfyui plugin in production conditions, through the real binary against the fake
//! ComfyUI: a host killed with `kill -9` mid-prompt re-attaches to the prompt after its restart
//! (the fake receives it once), and a cancel of a running task waits for the engine to stop
//! while the fake never holds more than `queue_depth` of our prompts.

use std::time::Duration;

use aihost_tests::{
    Options, Server, fake_comfyui::FakeComfy, plugin_lib, sse_events, wait_for, workflows_dir,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

async fn start(url: &str, extra: &str, env: Vec<(String, String)>) -> Server {
    let wait = if extra.contains("unavailable_wait_secs") {
        ""
    } else {
        "unavailable_wait_secs = 20\n"
    };
    let cfg = format!(
        "urls = [{url:?}]\nworkflows_dir = {:?}\n{wait}history_poll_ms = 200\nreconnect_max_ms = 300\n{extra}",
        workflows_dir()
    );
    Server::start_with(Options {
        plugins: vec![("comfyui".into(), plugin_lib("aihost_comfyui"), cfg)],
        env,
        ..Options::default()
    })
    .await
}

fn solid(color: u32) -> Value {
    json!({"workflow": "solid_color", "params": {"color": color}})
}

#[tokio::test]
async fn a_host_killed_mid_prompt_re_attaches_after_restart_and_the_prompt_runs_once() {
    let fake = FakeComfy::start().await;
    fake.hold(true);
    let mut s = start(
        &fake.url,
        "",
        vec![("AIHOST_QUEUE__LEASE_SECS".into(), "3".into())],
    )
    .await;
    let t = s.create("comfyui.workflow", solid(4242)).await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    fake.wait_until("runs the prompt", T, |f| f.running().is_some())
        .await;
    let pid = fake.running().unwrap();
    s.kill9();
    s.restart().await;
    // The new attempt finds the prompt still running and follows it.
    wait_for("the task says it re-attached", T, async || {
        let (_, t) = s.get(&format!("/api/tasks/{id}")).await;
        let msg = t["progress"]["message"].as_str().unwrap_or_default();
        if msg.contains("re-attached to prompt") && msg.contains(&pid) {
            Ok(())
        } else {
            Err(t)
        }
    })
    .await;
    assert_eq!(fake.running().as_deref(), Some(pid.as_str()));
    fake.hold(false);
    let done = s.wait_done(&id, T).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["attempts"], 2, "the crashed attempt counts: {done}");
    assert_eq!(done["result"]["prompt_id"], pid.as_str(), "{done}");
    assert_eq!(done["result"]["instance"], fake.url.as_str(), "{done}");
    assert!(
        !done["result"]["outputs"].as_array().unwrap().is_empty(),
        "{done}"
    );
    assert_eq!(
        fake.prompts().len(),
        1,
        "the work ran once: {:?}",
        fake.prompts()
    );
    assert!(s.log().contains("re-attached"), "{}", s.log());
}

/// The paths the fake received, in order, with their methods (`GET /queue`, `POST /prompt`).
fn requests(fake: &FakeComfy) -> Vec<String> {
    fake.requests()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn a_first_run_sends_its_prompt_without_looking_for_earlier_ones() {
    let fake = FakeComfy::start().await;
    let s = start(&fake.url, "", vec![]).await;
    let t = s.create("comfyui.workflow", solid(77)).await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let done = s.wait_done(&id, T).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let seen = requests(&fake);
    let prompt = seen
        .iter()
        .position(|r| r == "POST /prompt")
        .unwrap_or_else(|| panic!("no prompt: {seen:?}"));
    assert!(
        !seen.iter().any(|r| r == "GET /queue"),
        "a first run has no earlier prompt to look for: {seen:?}"
    );
    assert!(
        !seen[..prompt].iter().any(|r| r.starts_with("GET /history")),
        "no history read before the prompt: {seen:?}"
    );
}

#[tokio::test]
async fn a_task_given_back_at_shutdown_looks_for_its_prompt_when_it_runs_again() {
    let fake = FakeComfy::start().await;
    fake.hold(true);
    let mut s = start(
        &fake.url,
        "",
        vec![("AIHOST_SERVER__SHUTDOWN_GRACE_SECS".into(), "1".into())],
    )
    .await;
    let t = s.create("comfyui.workflow", solid(4343)).await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    fake.wait_until("runs the prompt", T, |f| f.running().is_some())
        .await;
    let first = fake.running().unwrap();
    assert!(s.terminate(T), "the host stops within its grace period");
    let before = requests(&fake).len();
    s.restart().await;
    fake.hold(false);
    let done = s.wait_done(&id, T).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(
        done["attempts"], 1,
        "the given-back attempt is not counted: {done}"
    );
    let seen = requests(&fake);
    let again = &seen[before..];
    let prompt = again.iter().position(|r| r == "POST /prompt");
    let looked = again.iter().position(|r| r == "GET /queue");
    assert!(
        looked.is_some() && (prompt.is_none() || looked < prompt),
        "the second run looks for the first one's prompt before sending one: {again:?}"
    );
    // The first prompt was stopped at the shutdown, so its id is taken: the new run sent a
    // prompt of its own under a fresh id (or, had it still been queued, followed it).
    if prompt.is_some() {
        assert_ne!(done["result"]["prompt_id"], first.as_str(), "{done}");
    } else {
        assert_eq!(done["result"]["prompt_id"], first.as_str(), "{done}");
    }
}

#[tokio::test]
async fn a_cancelled_running_task_waits_for_the_engine_and_queue_depth_holds() {
    let fake = FakeComfy::start().await;
    fake.hold(true);
    let s = start(&fake.url, "queue_depth = 2\n", vec![]).await;
    let a = s.create("comfyui.workflow", solid(11)).await;
    let a = a["task_id"].as_str().unwrap().to_owned();
    fake.wait_until("runs a prompt", T, |f| f.running().is_some())
        .await;
    let mut others = Vec::new();
    for c in 12..16 {
        let t = s.create("comfyui.workflow", solid(c)).await;
        others.push(t["task_id"].as_str().unwrap().to_owned());
    }
    fake.wait_until("has a pending prompt", T, |f| f.pending().len() == 1)
        .await;
    // Follow a's events from now on.
    let http = s.http.clone();
    let url = s.url(&format!("/api/tasks/{a}/events"));
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let stream = tokio::spawn(resp.text());
    let (st, _) = s.post(&format!("/api/tasks/{a}/cancel"), &json!({})).await;
    assert_eq!(st, 202);
    let ta = s.wait_done(&a, T).await;
    assert_eq!(ta["status"], "CANCELLED", "{ta}");
    let events = sse_events(
        &tokio::time::timeout(T, stream)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    );
    let waiting = events.iter().position(|e| {
        e["status"] == "PROCESSING"
            && e["progress"]["message"] == "cancel requested, waiting for the engine to stop"
    });
    let stopped = events.iter().position(|e| {
        e["progress"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("the engine stopped"))
    });
    let cancelled = events.iter().position(|e| e["status"] == "CANCELLED");
    assert!(
        matches!((waiting, stopped, cancelled), (Some(w), Some(s), Some(c)) if w < s && s < c),
        "{events:#?}"
    );
    fake.hold(false);
    for id in &others {
        let t = s.wait_done(id, T).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
    }
    assert!(
        fake.max_queued() <= 2,
        "the fake held {} of our prompts at once",
        fake.max_queued()
    );
    assert_eq!(fake.prompts().len(), 5);
}

/// Options for the outage tests: attempts fail fast (1 s without an instance, 2 attempts), so
/// the old behaviour would fail every task within a few seconds.
fn outage_env(max_wait: u64) -> Vec<(String, String)> {
    vec![
        ("AIHOST_QUEUE__DEFAULT_MAX_ATTEMPTS".into(), "2".into()),
        ("AIHOST_QUEUE__BACKOFF_BASE_MS".into(), "100".into()),
        (
            "AIHOST_DISPATCHER__MAX_UNAVAILABLE_WAIT_SECS".into(),
            max_wait.to_string(),
        ),
    ]
}

#[tokio::test]
async fn while_comfyui_is_down_tasks_wait_in_the_queue_and_complete_when_it_returns() {
    let mut fake = FakeComfy::start().await;
    fake.kill();
    let s = start(&fake.url, "unavailable_wait_secs = 1\n", outage_env(3600)).await;
    let mut ids = Vec::new();
    for c in 0..3 {
        let t = s.create("comfyui.workflow", solid(300 + c)).await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    // Far longer than the old limit (1 s × 2 attempts plus backoff): lets time pass on
    // purpose, the tasks must not fail meanwhile.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for id in &ids {
        let (_, t) = s.get(&format!("/api/tasks/{id}")).await;
        assert_eq!(t["status"], "PENDING", "{t}");
        assert_eq!(t["attempts"], 0, "no attempt was counted: {t}");
        let msg = t["progress"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("waiting for a ComfyUI instance"), "{t}");
        assert!(msg.contains(&fake.url), "{t}");
    }
    let (_, status) = s.get("/api/status").await;
    let why = status["plugins"]["comfyui"]["waiting"]["comfyui.workflow"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("none is reachable"), "{status}");
    fake.restart().await;
    for id in &ids {
        let t = s.wait_done(id, T).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
    }
    let (_, status) = s.get("/api/status").await;
    assert!(
        status["plugins"]["comfyui"]["waiting"].is_null(),
        "{status}"
    );
    assert!(s.log().contains("engine unavailable"), "{}", s.log());
}

#[tokio::test]
async fn tasks_waiting_longer_than_the_maximum_fail_with_engine_unavailable() {
    let mut fake = FakeComfy::start().await;
    fake.kill();
    let s = start(&fake.url, "unavailable_wait_secs = 1\n", outage_env(2)).await;
    let t = s.create("comfyui.workflow", solid(9)).await;
    let id = t["task_id"].as_str().unwrap();
    let t = s.wait_done(id, T).await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "engine_unavailable", "{t}");
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no engine could take the task for 2 s"),
        "{t}"
    );
    assert_eq!(t["attempts"], 0, "{t}");
}
