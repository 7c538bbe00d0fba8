//! Conformance checks of retention: pruning finished tasks in bounded batches (live and recent
//! ones kept), deleting one task (a live one refused, an unknown one reported), and the uploads
//! question (is a key named by a live task's input?).

use chrono::{Duration as Span, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{Harness, LEASE, claim_one, err, insert, new_task};
use crate::store::{CancelOutcome, DeleteOutcome, Status, TaskStore};

/// Finishes `n` tasks of `task_type` as COMPLETED; answers their ids.
async fn completed(store: &dyn TaskStore, task_type: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let task = insert(store, new_task(task_type, 0)).await;
        claim_one(store, task_type, LEASE).await;
        store.complete(task.id, 1, json!(1)).await.unwrap().unwrap();
        ids.push(task.id);
    }
    ids
}

/// Prune deletes at most `limit` per call, oldest first, only of the status asked for and only
/// finished before the cutoff; live tasks are never pruned.
pub(super) async fn prune_bounded_batches(h: &dyn Harness) {
    let store = h.open().await;
    let done = completed(&*store, "p", 5).await;
    let failed = insert(&*store, new_task("f", 0)).await;
    claim_one(&*store, "f", LEASE).await;
    store.fail(failed.id, 1, err("x"), None).await.unwrap();
    let pending = insert(&*store, new_task("q", 0)).await;
    let running = insert(&*store, new_task("r", 0)).await;
    claim_one(&*store, "r", LEASE).await;

    let past = Utc::now() - Span::hours(1);
    assert!(
        store
            .prune(Status::Completed, past, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing finished an hour ago"
    );
    let later = Utc::now() + Span::seconds(5);
    assert_eq!(
        store
            .count_prunable(Status::Completed, later)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        store.count_prunable(Status::Pending, later).await.unwrap(),
        0
    );
    // Ids are UUIDv7 (creation order); the answer's own order is not promised.
    let mut first = store.prune(Status::Completed, later, 2).await.unwrap();
    first.sort();
    assert_eq!(first, done[..2].to_vec(), "oldest first, two at most");
    let mut rest = store.prune(Status::Completed, later, 10).await.unwrap();
    rest.sort();
    assert_eq!(rest, done[2..].to_vec());
    assert!(
        store
            .prune(Status::Completed, later, 10)
            .await
            .unwrap()
            .is_empty(),
        "idempotent"
    );
    for id in &done {
        assert!(store.get(*id).await.unwrap().is_none());
    }
    assert!(
        store.get(failed.id).await.unwrap().is_some(),
        "other status"
    );
    for status in [Status::Pending, Status::Processing] {
        assert!(store.prune(status, later, 10).await.unwrap().is_empty());
    }
    assert!(store.get(pending.id).await.unwrap().is_some());
    assert!(store.get(running.id).await.unwrap().is_some());
    assert_eq!(
        store.prune(Status::Failed, later, 10).await.unwrap(),
        vec![failed.id]
    );
}

/// Delete removes a finished task once; a live one is refused and kept; an unknown id is
/// reported; the idempotency key of a deleted task is free again.
pub(super) async fn delete_finished_refuses_live(h: &dyn Harness) {
    let store = h.open().await;
    let mut keyed = new_task("d", 0);
    keyed.idempotency_key = Some("key-1".into());
    let (task, _) = store.insert(keyed.clone()).await.unwrap();
    match store.delete(task.id).await.unwrap() {
        DeleteOutcome::Live(t) => assert_eq!(t.status, Status::Pending),
        other => panic!("pending task deleted: {other:?}"),
    }
    claim_one(&*store, "d", LEASE).await;
    match store.delete(task.id).await.unwrap() {
        DeleteOutcome::Live(t) => assert_eq!(t.status, Status::Processing),
        other => panic!("running task deleted: {other:?}"),
    }
    store.complete(task.id, 1, json!(1)).await.unwrap().unwrap();
    match store.delete(task.id).await.unwrap() {
        DeleteOutcome::Deleted(t) => {
            assert_eq!(t.id, task.id);
            assert_eq!(t.status, Status::Completed);
        }
        other => panic!("finished task not deleted: {other:?}"),
    }
    assert_eq!(
        store.delete(task.id).await.unwrap(),
        DeleteOutcome::NotFound
    );
    assert!(store.get(task.id).await.unwrap().is_none());
    assert_eq!(
        store.delete(Uuid::now_v7()).await.unwrap(),
        DeleteOutcome::NotFound
    );

    // The key is free: the same submission creates a new task.
    keyed.id = Uuid::now_v7();
    let (again, created) = store.insert(keyed).await.unwrap();
    assert!(created, "the deleted task's idempotency key is free");
    assert_ne!(again.id, task.id);

    // A cancelled task is finished too.
    assert!(matches!(
        store.cancel(again.id).await.unwrap(),
        CancelOutcome::Cancelled(_)
    ));
    assert!(matches!(
        store.delete(again.id).await.unwrap(),
        DeleteOutcome::Deleted(_)
    ));
}

/// Only PENDING and PROCESSING inputs count as mentions.
pub(super) async fn live_input_mentions_only_live(h: &dyn Harness) {
    let store = h.open().await;
    let mut pending = new_task("m", 0);
    pending.input = json!({ "image": "http://h/files/uploads/aaa/x.png" });
    insert(&*store, pending).await;
    let mut done = new_task("n", 0);
    done.input = json!({ "image": "uploads/bbb/y.png" });
    let done = insert(&*store, done).await;
    claim_one(&*store, "n", LEASE).await;
    assert!(store.live_input_mentions("uploads/bbb").await.unwrap());
    store.complete(done.id, 1, json!(1)).await.unwrap().unwrap();

    assert!(store.live_input_mentions("uploads/aaa").await.unwrap());
    assert!(!store.live_input_mentions("uploads/bbb").await.unwrap());
    assert!(!store.live_input_mentions("uploads/ccc").await.unwrap());
}
