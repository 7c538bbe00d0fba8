//! Scale-out on PostgreSQL through the real binary: several `aihost api` and `aihost consumer`
//! processes sharing one database (each test creates and drops a database of its own on the
//! machine's PostgreSQL).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use aihost_tests::{Options, Server, TestDatabase, run_cli, sse_events};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use sqlx::Row as _;

/// Default plugins, testkit running `concurrency` tasks at once per consumer.
fn options(db: &TestDatabase, concurrency: u32, env: &[(&str, &str)]) -> Options {
    let mut o = Options::default();
    for (name, _, cfg) in &mut o.plugins {
        if name == "testkit" {
            *cfg = format!("concurrency = {concurrency}");
        }
    }
    o.env = db.env();
    o.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    o
}

/// Executions per task id, from a testkit `count` marker file.
fn executions(marker: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
    {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    counts
}

/// Creates `n` tasks with `input`, round-robin over `apis`, 16 requests in flight; answers
/// their ids.
async fn create_many(apis: &[&Server], n: usize, input: Value) -> Vec<String> {
    stream::iter(0..n)
        .map(|i| {
            let api = apis[i % apis.len()];
            let input = input.clone();
            async move {
                let t = api.create("testkit.run", input).await;
                t["task_id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Polls `/api/stats` until `n` tasks are COMPLETED.
async fn wait_completed(api: &Server, n: u64, timeout: Duration, logs: &[&Server]) {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, stats) = api.get("/api/stats").await;
        if stats["by_status"]["COMPLETED"].as_u64() == Some(n) {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|s| s.log()).collect();
            panic!(
                "not {n} completed in {timeout:?}: {stats}\nlogs:\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every task through one API, all pages.
async fn all_tasks(api: &Server) -> Vec<Value> {
    let mut tasks = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = api.get(&format!("/api/tasks?limit=1000{cursor}")).await;
        assert_eq!(status, 200, "{page}");
        tasks.extend(page["tasks"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return tasks,
        }
    }
}

/// 2 API and 3 consumer processes, 2,000 tasks submitted through both APIs: each runs
/// exactly once, none is lost, the work is shared, and the consumers show in /api/status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apis_three_consumers_run_2000_tasks_exactly_once() {
    let db = TestDatabase::create().await;
    let api1 = Server::start_role(options(&db, 0, &[]), "api").await;
    let api2 = Server::start_role(options(&db, 0, &[]), "api").await;
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(Server::start_role(options(&db, 8, &[]), "consumer").await);
    }
    let marker = api1.dir.path().join("executions.txt");
    let started = Instant::now();
    let ids = create_many(
        &[&api1, &api2],
        2000,
        json!({"mode": "count", "marker": marker.to_str().unwrap()}),
    )
    .await;
    let mut logs: Vec<&Server> = consumers.iter().collect();
    logs.push(&api1);
    wait_completed(&api1, 2000, Duration::from_secs(300), &logs).await;
    eprintln!(
        "2000 tasks submitted and run in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let ids: HashSet<String> = ids.into_iter().collect();
    assert_eq!(ids.len(), 2000);
    let runs = executions(&marker);
    assert_eq!(runs.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(
        runs.values().all(|&n| n == 1),
        "a task ran twice: {:?}",
        runs.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    // The other API sees the same 2,000, each completed on its first attempt.
    let tasks = all_tasks(&api2).await;
    assert_eq!(tasks.len(), 2000);
    assert!(
        tasks
            .iter()
            .all(|t| t["status"] == "COMPLETED" && t["attempts"] == 1)
    );
    // Shared out: more than one consumer did work.
    let per_worker: BTreeMap<String, i64> = db
        .query("SELECT worker, COUNT(*) AS n FROM tasks GROUP BY worker")
        .await
        .iter()
        .map(|r| (r.get("worker"), r.get("n")))
        .collect();
    eprintln!("tasks per consumer: {per_worker:?}");
    assert!(per_worker.len() >= 2, "{per_worker:?}");

    // Each consumer announced itself and the task types it serves.
    let (_, status) = api2.get("/api/status").await;
    let listed = status["consumers"].as_array().expect("consumers");
    assert_eq!(listed.len(), 3, "{status}");
    for c in listed {
        let types: Vec<&str> = c["task_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(types.contains(&"testkit.run"), "{c}");
        assert!(types.contains(&"imageops.transform"), "{c}");
    }
    for c in &consumers {
        assert!(
            c.log().contains("consumer serving task types"),
            "{}",
            c.log()
        );
    }
}

/// `kill -9` of a consumer in the middle of a run: the tasks it was running are rescued when
/// their leases expire and completed by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_consumer_tasks_are_rescued() {
    let db = TestDatabase::create().await;
    let api = Server::start_role(options(&db, 0, &[]), "api").await;
    let mut victim = Server::start_role(
        options(&db, 4, &[("AIHOST_DISPATCHER__WORKER_ID", "victim")]),
        "consumer",
    )
    .await;
    let c2 = Server::start_role(options(&db, 4, &[]), "consumer").await;
    let c3 = Server::start_role(options(&db, 4, &[]), "consumer").await;
    let marker = api.dir.path().join("executions.txt");
    let ids = create_many(
        &[&api],
        150,
        json!({"mode": "count", "ms": 300, "marker": marker.to_str().unwrap()}),
    )
    .await;

    // Wait until the victim runs something, then kill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held: Vec<String> = loop {
        let rows = db
            .query(
                "SELECT id::text AS id FROM tasks \
                 WHERE worker LIKE 'victim#%' AND status = 'PROCESSING'",
            )
            .await;
        if !rows.is_empty() {
            victim.kill9();
            // What it held at the moment it died.
            break db
                .query(
                    "SELECT id::text AS id FROM tasks \
                     WHERE worker LIKE 'victim#%' AND status = 'PROCESSING'",
                )
                .await
                .iter()
                .map(|r| r.get("id"))
                .collect();
        }
        assert!(Instant::now() < deadline, "the victim never ran a task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!held.is_empty());

    wait_completed(&api, 150, Duration::from_secs(120), &[&api, &c2, &c3]).await;
    let runs = executions(&marker);
    for id in &ids {
        let (_, t) = api.get(&format!("/api/tasks/{id}")).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
        let n = runs.get(id).copied().unwrap_or(0);
        let attempts = t["attempts"].as_u64().unwrap() as usize;
        assert!(
            n >= 1 && n <= attempts,
            "{id}: {n} runs, {attempts} attempts"
        );
    }
    for id in &held {
        let row = &db
            .query(&format!(
                "SELECT worker, attempts FROM tasks WHERE id = '{id}'"
            ))
            .await[0];
        let worker: String = row.get("worker");
        let attempts: i32 = row.get("attempts");
        assert!(
            !worker.starts_with("victim#"),
            "{id} was finished by another consumer: {worker}"
        );
        assert!(attempts >= 2, "{id} was rescued and run again");
    }
}

/// Every database connection of the deployment is cut (as a failover or a network cut
/// would): the consumer, still the same process, reconnects by itself, listens again, and is
/// woken by new tasks (its poll interval is ten minutes, so only a notification wakes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_recovers_from_dropped_connections() {
    let db = TestDatabase::create().await;
    let api = Server::start_role(options(&db, 0, &[]), "api").await;
    let mut consumer = Server::start_role(
        options(&db, 4, &[("AIHOST_QUEUE__POLL_INTERVAL_MS", "600000")]),
        "consumer",
    )
    .await;
    let marker = api.dir.path().join("executions.txt");
    let input = json!({"mode": "count", "marker": marker.to_str().unwrap()});
    create_many(&[&api], 5, input.clone()).await;
    wait_completed(&api, 5, Duration::from_secs(60), &[&api, &consumer]).await;
    let pid = consumer.pid();

    let killed = db.terminate_connections().await;
    assert!(killed >= 2, "terminated {killed} connections");

    let ids = create_many(&[&api], 20, input).await;
    wait_completed(&api, 25, Duration::from_secs(60), &[&api, &consumer]).await;
    assert!(consumer.is_running());
    assert_eq!(consumer.pid(), pid, "same process, no restart");
    let runs = executions(&marker);
    assert!(ids.iter().all(|id| runs.get(id) == Some(&1)));
    assert!(
        consumer
            .log()
            .contains("task event connection to PostgreSQL"),
        "the consumer noticed the cut: {}",
        consumer.log()
    );
}

/// SSE on one API process streams the progress of a task that another API accepted and a
/// consumer runs: the events cross processes through NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_on_one_api_follows_a_task_run_elsewhere() {
    let db = TestDatabase::create().await;
    let api1 = Server::start_role(options(&db, 0, &[]), "api").await;
    let api2 = Server::start_role(options(&db, 0, &[]), "api").await;
    let task = api1
        .create("testkit.run", json!({"mode": "progress", "steps": 40}))
        .await;
    let id = task["task_id"].as_str().unwrap().to_owned();

    // Follow on api2 while the task waits for a consumer.
    let response = api2
        .http
        .get(api2.url(&format!("/api/tasks/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("first event")
        .unwrap()
        .unwrap();
    text.push_str(&String::from_utf8_lossy(&first));
    assert_eq!(sse_events(&text)[0]["status"], "PENDING", "{text}");

    let consumer = Server::start_role(
        options(&db, 1, &[("AIHOST_DISPATCHER__PROGRESS_INTERVAL_MS", "1")]),
        "consumer",
    )
    .await;
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(
        rest.is_ok(),
        "stream did not end: {text}\n{}",
        consumer.log()
    );
    let events = sse_events(&text);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"started"), "{kinds:?}");
    let progress: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["progress"]["percent"].as_f64().unwrap())
        .collect();
    assert!(!progress.is_empty(), "{kinds:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(*kinds.last().unwrap(), "completed", "{kinds:?}");
    assert_eq!(events.last().unwrap()["task"]["result"]["steps"], 40);
}

/// `aihost store migrate` copies every task of a SQLite database, in every state, exactly as
/// it was; a second run copies nothing; consumers then run the pending ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_migrate_keeps_every_task_and_state() {
    // On SQLite: completed, failed and cancelled tasks...
    let mut lite = Server::start().await;
    let mut done_ids = Vec::new();
    for _ in 0..3 {
        let t = lite.create("testkit.run", json!({"mode": "ok"})).await;
        done_ids.push(t["task_id"].as_str().unwrap().to_owned());
    }
    let failing = lite.create("testkit.run", json!({"mode": "fail"})).await;
    let slow = lite
        .create("testkit.run", json!({"mode": "ok", "ms": 60000}))
        .await;
    let slow_id = slow["task_id"].as_str().unwrap();
    lite.wait_status(slow_id, "PROCESSING", Duration::from_secs(30))
        .await;
    let (status, _) = lite
        .post(&format!("/api/tasks/{slow_id}/cancel"), &json!({}))
        .await;
    assert!(status < 300, "cancel answered {status}");
    for id in done_ids.iter().chain(
        [
            failing["task_id"].as_str().unwrap().to_owned(),
            slow_id.to_owned(),
        ]
        .iter(),
    ) {
        lite.wait_done(id, Duration::from_secs(30)).await;
    }
    assert!(lite.terminate(Duration::from_secs(20)));
    // ... and pending ones, accepted by an API without a consumer.
    lite.restart_as("api").await;
    let (status, _) = lite
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}, "priority": 5,
                    "idempotency_key": "migrated-key", "max_attempts": 4}),
        )
        .await;
    assert_eq!(status, 202);
    lite.create("testkit.run", json!({"mode": "ok"})).await;
    let before = all_tasks(&lite).await;
    assert_eq!(before.len(), 7);
    let by_status = |tasks: &[Value]| {
        let mut m = BTreeMap::new();
        for t in tasks {
            *m.entry(t["status"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        m
    };
    assert_eq!(
        by_status(&before),
        BTreeMap::from([
            ("CANCELLED".to_owned(), 1),
            ("COMPLETED".to_owned(), 3),
            ("FAILED".to_owned(), 1),
            ("PENDING".to_owned(), 2)
        ])
    );
    assert!(lite.terminate(Duration::from_secs(20)));

    let db = TestDatabase::create().await;
    let sqlite_path = lite.dir.path().join("data/aihost.db");
    let sqlite_path = sqlite_path.to_str().unwrap();
    let (code, out, err) = run_cli(
        &["store", "migrate", "--from", sqlite_path, "--to", &db.url],
        lite.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("copied 7 of 7 tasks"), "{out}");
    let (code, out, err) = run_cli(
        &["store", "migrate", "--from", sqlite_path, "--to", &db.url],
        lite.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("copied 0 of 7 tasks"), "{out}");
    let (code, _, err) = run_cli(
        &[
            "store",
            "migrate",
            "--from",
            "/nonexistent/x.db",
            "--to",
            &db.url,
        ],
        lite.dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("not a SQLite database file"), "{err}");

    // Every task, every field, as it was.
    let api = Server::start_role(options(&db, 0, &[]), "api").await;
    let after = all_tasks(&api).await;
    assert_eq!(after, before);
    // The idempotency key still deduplicates the same request, and is still bound to it (the
    // request hash was copied too).
    let (status, again) = api
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"}, "priority": 5,
                    "idempotency_key": "migrated-key", "max_attempts": 4}),
        )
        .await;
    assert!(status < 300, "{status} {again}");
    assert_eq!(again["priority"], 5, "the migrated task answered: {again}");
    let (status, other) = api
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"},
                    "idempotency_key": "migrated-key"}),
        )
        .await;
    assert_eq!(status, 409, "{other}");
    assert_eq!(other["error"]["code"], "idempotency_conflict");

    // And the migrated queue runs.
    let consumer = Server::start_role(options(&db, 2, &[]), "consumer").await;
    wait_completed(&api, 5, Duration::from_secs(60), &[&api, &consumer]).await;
}
