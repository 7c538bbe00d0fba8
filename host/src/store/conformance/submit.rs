//! Conformance checks of submission: every field round-trips, idempotency keys deduplicate,
//! and accepted tasks survive a reopen. One file per topic keeps each concern readable; the
//! suite (`conformance_suite!` in `mod.rs`) runs them all.

use serde_json::json;
use uuid::Uuid;

use super::{
    Harness, LEASE, assert_close, assert_recent, claim_one, err, get, insert, new_task,
    with_attempts,
};
use crate::store::{CancelOutcome, ListFilter, Progress, Status, StoreError};

/// A W3C `traceparent` as the API stores it; the store keeps it as opaque text.
const TRACE_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Request hashes as the API writes them (hex SHA-256); the store compares them as text.
const HASH_A: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const HASH_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

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
    new.request_hash = Some(HASH_A.into());

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
    assert_eq!(task.request_hash.as_deref(), Some(HASH_A));
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
        preview: None,
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

/// An idempotency key is bound to the request that created its task: the same key with the
/// same hash answers that task; with another hash the insert is refused
/// (`IdempotencyConflict`, naming the task that holds the key), writes nothing and publishes
/// nothing; the key keeps answering its own request afterwards.
pub(super) async fn idempotency_key_bound_to_request_hash(h: &dyn Harness) {
    let store = h.open().await;
    let mut first = new_task("bound", 0);
    first.idempotency_key = Some("bound-key".into());
    first.request_hash = Some(HASH_A.into());
    let created = insert(&*store, first.clone()).await;

    let mut rx = store.subscribe();
    let mut other = new_task("bound.other", 0);
    other.idempotency_key = Some("bound-key".into());
    other.request_hash = Some(HASH_B.into());
    match store.insert(other.clone()).await {
        Err(e @ StoreError::IdempotencyConflict { .. }) => {
            assert_eq!(e.code(), crate::error_codes::IDEMPOTENCY_CONFLICT);
            let StoreError::IdempotencyConflict { key, existing } = e else {
                unreachable!()
            };
            assert_eq!(key, "bound-key");
            assert_eq!(existing, created.id);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get(other.id).await.unwrap(), None);
    assert!(rx.try_recv().is_err(), "a refused insert publishes nothing");

    let mut same = first.clone();
    same.id = Uuid::now_v7();
    let (existing, was_created) = store.insert(same.clone()).await.unwrap();
    assert!(!was_created);
    assert_eq!(existing, created);
    assert_eq!(store.get(same.id).await.unwrap(), None);

    // Another key with the other hash is simply a new task.
    other.idempotency_key = Some("bound-key-2".into());
    let second = insert(&*store, other).await;
    assert_eq!(second.request_hash.as_deref(), Some(HASH_B));
    let page = store.list(ListFilter::default()).await.unwrap();
    assert_eq!(page.tasks.len(), 2);
}

/// A task stored without a request hash (written before the hash existed) answers every
/// request with its key, whatever that request's hash, as it did before.
pub(super) async fn idempotency_rows_without_hash_match_any_request(h: &dyn Harness) {
    let store = h.open().await;
    let mut legacy = new_task("legacy", 0);
    legacy.idempotency_key = Some("old-key".into());
    legacy.request_hash = None;
    let created = insert(&*store, legacy).await;
    assert_eq!(created.request_hash, None);

    for hash in [Some(HASH_A), Some(HASH_B), None] {
        let mut again = new_task("legacy.other", 5);
        again.idempotency_key = Some("old-key".into());
        again.request_hash = hash.map(str::to_owned);
        let (existing, was_created) = store.insert(again.clone()).await.unwrap();
        assert!(!was_created);
        assert_eq!(existing, created);
        assert_eq!(store.get(again.id).await.unwrap(), None);
    }
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
