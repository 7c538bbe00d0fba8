//! Conformance checks of submission: every field round-trips, idempotency keys deduplicate,
//! and accepted tasks survive a reopen. One file per topic keeps each concern readable; the
//! suite (`conformance_suite!` in `mod.rs`) runs them all.

use serde_json::json;
use uuid::Uuid;

use super::{
    Harness, LEASE, assert_close, assert_recent, claim_one, err, get, insert, new_task,
    with_attempts,
};
use crate::store::{CancelOutcome, ListFilter, Progress, Status};

/// A W3C `traceparent` as the API stores it; the store keeps it as opaque text.
const TRACE_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Every field survives insert → get, and every later-set field survives an update → get.
pub(super) async fn insert_get_round_trip(h: &dyn Harness) {
    let store = h.open().await;
    let store = &*store;
    let mut new = new_task("round.trip", -7);
    new.input = json!({ "text": "héllo", "list": [1, 2.5, null, true], "nested": { "a": {} } });
    new.max_attempts = 4;
    new.idempotency_key = Some("key-1".into());
    new.webhook_url = Some("https://example.com/hook?x=1".into());
    new.trace_parent = Some(TRACE_PARENT.into());

    let task = insert(store, new.clone()).await;
    assert_eq!(task.id, new.id);
    assert_eq!(task.task_type, "round.trip");
    assert_eq!(task.status, Status::Pending);
    assert_eq!(task.input, new.input);
    assert_eq!(task.priority, -7);
    assert_eq!(task.attempts, 0);
    assert_eq!(task.max_attempts, 4);
    assert_eq!(task.progress, None);
    assert_eq!(task.result, None);
    assert_eq!(task.error, None);
    assert_recent(task.created_at);
    assert_eq!(task.started_at, None);
    assert_eq!(task.finished_at, None);
    assert_close(task.run_at, task.created_at);
    assert_eq!(task.idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(
        task.webhook_url.as_deref(),
        Some("https://example.com/hook?x=1")
    );
    assert_eq!(task.worker, None);
    assert_eq!(task.lease_until, None);
    assert!(!task.cancel_requested);
    assert_eq!(task.trace_parent.as_deref(), Some(TRACE_PARENT));
    assert_eq!(get(store, task.id).await, task);

    // Claimed: started_at, worker, lease_until, attempts.
    let claimed = claim_one(store, "round.trip", LEASE).await;
    assert_eq!(claimed.status, Status::Processing);
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.worker.as_deref(), Some("w1"));
    assert_recent(claimed.started_at.expect("started_at"));
    let lease_until = claimed.lease_until.expect("lease_until");
    assert_close(lease_until, claimed.started_at.unwrap() + LEASE);
    assert_eq!(claimed.trace_parent.as_deref(), Some(TRACE_PARENT));
    assert_eq!(get(store, task.id).await, claimed);

    // Progress and cancel_requested.
    let progress = Progress {
        percent: 42.5,
        message: "step ✓".into(),
    };
    assert!(
        store
            .set_progress(task.id, 1, progress.clone())
            .await
            .unwrap()
    );
    let CancelOutcome::Requested(requested) = store.cancel(task.id).await.unwrap() else {
        panic!("expected Requested");
    };
    assert!(requested.cancel_requested);
    assert_eq!(requested.progress, Some(progress));
    assert_eq!(get(store, task.id).await, requested);

    // Result and finished_at.
    let other = insert(store, new_task("round.trip2", 0)).await;
    assert_eq!(other.trace_parent, None);
    claim_one(store, "round.trip2", LEASE).await;
    let result = json!({ "out": [1, { "b": "c" }], "f": 1.5 });
    let done = store
        .complete(other.id, 1, result.clone())
        .await
        .unwrap()
        .expect("completed");
    assert_eq!(done.result, Some(result));
    assert_recent(done.finished_at.expect("finished_at"));
    assert_eq!(get(store, other.id).await, done);

    // Error.
    let third = insert(store, with_attempts(new_task("round.trip3", 0), 1)).await;
    claim_one(store, "round.trip3", LEASE).await;
    let failed = store
        .fail(third.id, 1, err("boom"), None)
        .await
        .unwrap()
        .expect("failed");
    assert_eq!(failed.error, Some(err("boom")));
    assert_eq!(get(store, third.id).await, failed);

    assert_eq!(store.get(Uuid::now_v7()).await.unwrap(), None);
}

/// A second insert with the same idempotency key returns the first task and writes nothing.
pub(super) async fn idempotency_key_dedups(h: &dyn Harness) {
    let store = h.open().await;
    let mut first = new_task("dedup", 0);
    first.idempotency_key = Some("same".into());
    let created = insert(&*store, first).await;

    let mut rx = store.subscribe();
    let mut second = new_task("dedup", 9);
    second.idempotency_key = Some("same".into());
    let (existing, was_created) = store.insert(second.clone()).await.unwrap();
    assert!(!was_created);
    assert_eq!(existing, created);
    assert_eq!(store.get(second.id).await.unwrap(), None);
    assert!(
        rx.try_recv().is_err(),
        "a deduplicated insert publishes nothing"
    );

    // Tasks without a key never collide.
    insert(&*store, new_task("dedup", 0)).await;
    insert(&*store, new_task("dedup", 0)).await;
    let page = store.list(ListFilter::default()).await.unwrap();
    assert_eq!(page.tasks.len(), 3);
}

/// Tasks survive closing and reopening the store.
pub(super) async fn durable_across_reopen(h: &dyn Harness) {
    let store = h.open().await;
    let a = insert(&*store, new_task("durable", 1)).await;
    let b = insert(&*store, new_task("durable", 0)).await;
    claim_one(&*store, "durable", LEASE).await;
    let a = store
        .complete(a.id, 1, json!({ "kept": true }))
        .await
        .unwrap()
        .unwrap();
    drop(store);

    let store = h.open().await;
    assert_eq!(get(&*store, a.id).await, a);
    assert_eq!(get(&*store, b.id).await, b);
    assert_eq!(claim_one(&*store, "durable", LEASE).await.id, b.id);
}
