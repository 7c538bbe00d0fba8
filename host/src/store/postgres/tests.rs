//! Tests of what only the PostgreSQL store does: events across processes, recovery from lost
//! connections, group commit failures, import and the consumers table. What every store does
//! is in the conformance suite.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{events::parse_kind, schema::clean_text};
use crate::store::{
    ConsumerInfo, EventKind, ListFilter, NewTask, Progress, Status, StoreError, TaskError,
    TaskEvent, TaskStore, conformance::pg::PgHarness, sql::clean_percent,
};

#[test]
fn kinds_round_trip() {
    for kind in EventKind::ALL {
        let s = serde_json::to_value(kind).unwrap();
        assert_eq!(parse_kind(s.as_str().unwrap()).unwrap(), kind);
    }
    assert!(matches!(parse_kind("nope"), Err(StoreError::Corrupt(_))));
}

#[test]
fn text_without_nul() {
    assert_eq!(clean_text("a\0b"), "a\u{FFFD}b");
    assert_eq!(clean_text("plain"), "plain");
    assert_eq!(clean_percent(f32::NAN), 0.0);
    assert_eq!(clean_percent(150.0), 100.0);
}

fn new_task(task_type: &str) -> NewTask {
    NewTask {
        id: Uuid::now_v7(),
        task_type: task_type.to_owned(),
        input: json!({ "x": 1 }),
        priority: 0,
        max_attempts: 3,
        idempotency_key: None,
        webhook_url: None,
        trace_parent: None,
        timeout_secs: None,
        request_hash: None,
        webhook_events: None,
    }
}

async fn next(rx: &mut broadcast::Receiver<TaskEvent>) -> TaskEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event in time")
        .expect("event")
}

/// Another store on the same database (another process) sees every change, in order, with
/// the task as it was then; a store never sees its own changes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_stores() {
    let h = PgHarness::new().await;
    let (a, b) = (h.store().await, h.store().await);
    let mut rx = b.subscribe();
    let (task, _) = a.insert(new_task("cross")).await.unwrap();
    let claimed = a
        .claim("cross", "w", Duration::from_secs(60), 1)
        .await
        .unwrap();
    let progress = Progress {
        percent: 25.0,
        message: "quarter".into(),
        preview: None,
    };
    assert!(a.set_progress(task.id, 1, progress.clone()).await.unwrap());
    let done = a
        .complete(task.id, 1, json!({"r": 1}))
        .await
        .unwrap()
        .unwrap();

    let e = next(&mut rx).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Created, &task.without_input())
    );
    let e = next(&mut rx).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Started, &claimed[0].without_input())
    );
    let e = next(&mut rx).await;
    assert_eq!(e.kind, EventKind::Progress);
    assert_eq!(e.task.progress, Some(progress));
    let e = next(&mut rx).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Completed, &done.without_input())
    );

    // B's own insert: one event, published locally.
    let (own, _) = b.insert(new_task("own")).await.unwrap();
    let e = next(&mut rx).await;
    assert_eq!((e.kind, e.task.id), (EventKind::Created, own.id));
    // A marker from A proves B's notification (had it not been skipped) came and went.
    let (marker, _) = a.insert(new_task("marker")).await.unwrap();
    let e = next(&mut rx).await;
    assert_eq!(e.task.id, marker.id, "B saw its own change twice");
}

/// A task too big for a notification is announced by id and re-read by the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_task_event_is_reread() {
    let h = PgHarness::new().await;
    let (a, b) = (h.store().await, h.store().await);
    let mut rx = b.subscribe();
    let mut big = new_task("big");
    big.input = json!({ "blob": "é".repeat(20_000) });
    let (task, _) = a.insert(big).await.unwrap();
    let e = next(&mut rx).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Created, &task.without_input())
    );
}

/// Every connection of the database killed by the server: the pool and the listener come
/// back by themselves, and events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_connections_are_terminated() {
    let h = PgHarness::new().await;
    let (a, b) = (h.store().await, h.store().await);
    let mut rx = a.subscribe();
    a.ping().await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&b.inner.pool)
    .await
    .unwrap();
    assert!(
        killed.iter().filter(|k| **k).count() >= 2,
        "listeners and pooled connections were killed: {killed:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // B's pool connection that ran the kill is alive; A's are all dead.
    let task = loop {
        match b.insert(new_task("after")).await {
            Ok((t, _)) => break t,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    loop {
        let e = next(&mut rx).await;
        if e.task.id == task.id {
            assert_eq!(e.kind, EventKind::Created);
            break;
        }
    }
    let claimed = a
        .claim("after", "w", Duration::from_secs(60), 1)
        .await
        .unwrap();
    assert_eq!(claimed[0].id, task.id);
}

/// Writes sent together share a group commit; one that fails (a duplicate id) fails alone
/// and every other write of its batch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_fails_alone() {
    let h = PgHarness::new().await;
    let store = h.store().await;
    let (first, _) = store.insert(new_task("group")).await.unwrap();
    let mut duplicate = new_task("group");
    duplicate.id = first.id;
    let mut tasks: Vec<NewTask> = (0..40).map(|_| new_task("group")).collect();
    tasks.insert(20, duplicate);
    let answers = futures_util::future::join_all(tasks.into_iter().map(|t| {
        let store = store.clone();
        async move { (t.id, store.insert(t).await) }
    }))
    .await;
    let mut inserted = 0;
    for (i, (id, answer)) in answers.into_iter().enumerate() {
        if i == 20 {
            assert!(
                matches!(answer, Err(StoreError::Unavailable(_))),
                "{answer:?}"
            );
            continue;
        }
        let (task, created) = answer.unwrap();
        assert!(created);
        assert_eq!(store.get(id).await.unwrap(), Some(task));
        inserted += 1;
    }
    assert_eq!(inserted, 40);
    assert_eq!(store.get(first.id).await.unwrap(), Some(first));

    // Claims and completions in flight together: each task completes once.
    let claimed = store
        .claim("group", "w", Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 41);
    let done = futures_util::future::join_all(
        claimed
            .iter()
            .map(|t| store.complete(t.id, 1, json!({ "ok": true }))),
    )
    .await;
    for (task, answer) in claimed.iter().zip(done) {
        let done = answer.unwrap().expect("completed");
        assert_eq!((done.id, done.status), (task.id, Status::Completed));
        assert!(done.finished_at.unwrap() >= task.started_at.unwrap());
    }
}

/// `import` copies tasks of every state as they are, and a second run copies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_keeps_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let lite = crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db"))
        .await
        .unwrap();
    let mut keyed = new_task("imp");
    keyed.idempotency_key = Some("k1".into());
    keyed.webhook_url = Some("https://example.com/h".into());
    keyed.priority = 7;
    keyed.trace_parent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    keyed.request_hash = Some("ab".repeat(32));
    lite.insert(keyed).await.unwrap();
    for _ in 0..4 {
        lite.insert(new_task("imp")).await.unwrap();
    }
    let running = lite
        .claim("imp", "w9", Duration::from_secs(60), 4)
        .await
        .unwrap();
    lite.set_progress(
        running[0].id,
        1,
        Progress {
            percent: 10.0,
            message: "m".into(),
            preview: None,
        },
    )
    .await
    .unwrap();
    lite.complete(running[1].id, 1, json!(null))
        .await
        .unwrap()
        .unwrap();
    lite.fail(
        running[2].id,
        1,
        TaskError {
            code: "c".into(),
            message: "m".into(),
        },
        None,
    )
    .await
    .unwrap()
    .unwrap();
    lite.cancel(running[3].id).await.unwrap();
    let all = lite
        .list(ListFilter {
            limit: 1000,
            ..ListFilter::default()
        })
        .await
        .unwrap()
        .tasks;
    assert_eq!(all.len(), 5);

    let h = PgHarness::new().await;
    let pg = h.store().await;
    assert_eq!(pg.import(&all).await.unwrap(), 5);
    assert_eq!(pg.import(&all).await.unwrap(), 0);
    let copied = pg
        .list(ListFilter {
            limit: 1000,
            ..ListFilter::default()
        })
        .await
        .unwrap()
        .tasks;
    assert_eq!(copied, all);
}

/// Consumers announce themselves, beat, and retire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_announce_and_retire() {
    let h = PgHarness::new().await;
    let pg = h.store().await;
    let info = ConsumerInfo {
        worker: "gpu-1".into(),
        hostname: "gpu".into(),
        pid: 42,
        version: "0.1.0".into(),
        task_types: vec!["a.b".into(), "c.d".into()],
        started_at: Utc::now(),
        heartbeat_at: Utc::now(),
    };
    pg.announce_consumer(&info).await.unwrap();
    let first = pg.consumers(Duration::from_secs(60)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].task_types, info.task_types);
    assert_eq!(first[0].pid, 42);
    tokio::time::sleep(Duration::from_millis(20)).await;
    pg.announce_consumer(&info).await.unwrap();
    let second = pg.consumers(Duration::from_secs(60)).await.unwrap();
    assert_eq!(second[0].started_at, first[0].started_at);
    assert!(second[0].heartbeat_at > first[0].heartbeat_at);
    pg.retire_consumer("gpu-1").await.unwrap();
    assert!(
        pg.consumers(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Hundreds of concurrent reads (the same ids many times, and ids that do not exist) share
/// far fewer queries, and each gets its own task or `None`; a read after a write sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_queries() {
    let h = PgHarness::new().await;
    let store = h.store().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut t = new_task("read");
        t.input = json!({ "i": i });
        ids.push(store.insert(t).await.unwrap().0.id);
    }
    let missing: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let before = store.inner.reads.queries();
    let mut reads = tokio::task::JoinSet::new();
    for n in 0..600 {
        let store = store.clone();
        let id = if n % 3 == 0 {
            missing[n % missing.len()]
        } else {
            ids[n % ids.len()]
        };
        reads.spawn(async move { (id, store.get(id).await) });
    }
    let mut answered = 0;
    while let Some(joined) = reads.join_next().await {
        let (id, got) = joined.unwrap();
        match got.unwrap() {
            Some(task) => {
                assert_eq!(task.id, id);
                let i = ids.iter().position(|x| *x == id).expect("an inserted id");
                assert_eq!(task.input, json!({ "i": i }));
            }
            None => assert!(missing.contains(&id), "{id} exists but was not found"),
        }
        answered += 1;
    }
    assert_eq!(answered, 600);
    let queries = store.inner.reads.queries() - before;
    assert!(
        queries < 300,
        "600 concurrent reads took {queries} queries: they were not batched"
    );

    store.cancel(ids[0]).await.unwrap();
    assert_eq!(
        store.get(ids[0]).await.unwrap().unwrap().status,
        Status::Cancelled
    );
}

/// Reads of a store whose pool is closed fail with `store_unavailable`; none waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_cleanly_without_a_pool() {
    let h = PgHarness::new().await;
    let store = h.store().await;
    let (task, _) = store.insert(new_task("read")).await.unwrap();
    store.close().await;
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let store = store.clone();
        reads.spawn(async move { store.get(task.id).await });
    }
    let all = tokio::time::timeout(Duration::from_secs(20), reads.join_all())
        .await
        .expect("every read answered");
    for got in all {
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    }
}
