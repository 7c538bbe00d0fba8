//! Conformance checks of claims and running attempts: claim order and filters, limits,
//! concurrent claimers, lease renewal, progress, and the rescue of expired leases. One file per
//! topic keeps each concern readable; the suite (`conformance_suite!` in `mod.rs`) runs them all.

use crate::error_codes;
use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::{
    Harness, LEASE, assert_close, assert_recent, claim_one, err, get, insert, new_task,
    with_attempts,
};
use crate::store::{CancelOutcome, Progress, Status, TaskError};

/// Highest priority first, then oldest first.
pub(super) async fn claim_order_priority_then_fifo(h: &dyn Harness) {
    let store = h.open().await;
    let mut ids = Vec::new();
    for priority in [0, 5, 0, 5, -1, 10] {
        ids.push(insert(&*store, new_task("order", priority)).await.id);
    }
    // Expected: 10, then the two 5s oldest first, then the two 0s, then -1.
    let expected = [ids[5], ids[1], ids[3], ids[0], ids[2], ids[4]];
    let batch: Vec<Uuid> = store
        .claim("order", "w", LEASE, 3)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(batch, expected[..3]);
    let mut rest = Vec::new();
    while let Some(task) = store.claim("order", "w", LEASE, 1).await.unwrap().pop() {
        rest.push(task.id);
    }
    assert_eq!(rest, expected[3..]);
}

/// A task whose run_at is in the future, or of another type, is not claimed.
pub(super) async fn claim_skips_future_run_at_and_other_types(h: &dyn Harness) {
    let store = h.open().await;
    let later = insert(&*store, new_task("delayed", 0)).await;
    claim_one(&*store, "delayed", LEASE).await;
    let retry_at = Utc::now() + chrono::Duration::hours(1);
    let pending = store
        .fail(later.id, 1, err("transient"), Some(retry_at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.status, Status::Pending);
    assert_close(pending.run_at, retry_at);
    assert!(
        store
            .claim("delayed", "w", LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let soon = insert(&*store, new_task("delayed", 0)).await;
    claim_one(&*store, "delayed", LEASE).await;
    let past = Utc::now() - chrono::Duration::seconds(1);
    store
        .fail(soon.id, 1, err("transient"), Some(past))
        .await
        .unwrap()
        .unwrap();
    let claimed = store.claim("delayed", "w", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, soon.id);
    assert_eq!(claimed[0].attempts, 2);

    insert(&*store, new_task("other", 0)).await;
    assert!(
        store
            .claim("delayed", "w", LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim("nope", "w", LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `limit` caps a claim; 0 claims nothing.
pub(super) async fn claim_limit(h: &dyn Harness) {
    let store = h.open().await;
    for _ in 0..5 {
        insert(&*store, new_task("limit", 0)).await;
    }
    assert!(
        store
            .claim("limit", "w", LEASE, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.claim("limit", "w", LEASE, 2).await.unwrap().len(), 2);
    assert_eq!(store.claim("limit", "w", LEASE, 2).await.unwrap().len(), 2);
    assert_eq!(store.claim("limit", "w", LEASE, 2).await.unwrap().len(), 1);
    assert!(
        store
            .claim("limit", "w", LEASE, 2)
            .await
            .unwrap()
            .is_empty()
    );
}

/// 8 concurrent claimers over 200 tasks: every task handed out exactly once.
pub(super) async fn concurrent_claims_never_duplicate(h: &dyn Harness) {
    let store = h.open().await;
    let mut inserted = HashSet::new();
    for i in 0..200 {
        inserted.insert(insert(&*store, new_task("race", i % 3)).await.id);
    }
    let mut handles = Vec::new();
    for w in 0..8 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut got = Vec::new();
            loop {
                let batch = store.claim("race", &worker, LEASE, 7).await.expect("claim");
                if batch.is_empty() {
                    break;
                }
                for task in batch {
                    assert_eq!(task.worker.as_deref(), Some(worker.as_str()));
                    assert_eq!(task.attempts, 1);
                    got.push(task.id);
                }
                tokio::task::yield_now().await;
            }
            got
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a task was claimed twice");
    assert_eq!(unique, inserted);
}

/// Only the current attempt's worker renews.
pub(super) async fn renew_by_right_and_wrong_attempt(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, new_task("renew", 0)).await;
    let claimed = claim_one(&*store, "renew", Duration::from_secs(1)).await;
    let before = claimed.lease_until.unwrap();

    assert!(
        store
            .renew(task.id, 1, "w1", Duration::from_secs(600))
            .await
            .unwrap()
    );
    let after = get(&*store, task.id).await.lease_until.unwrap();
    assert!(after > before + chrono::Duration::seconds(500));

    assert!(
        !store.renew(task.id, 2, "w1", LEASE).await.unwrap(),
        "wrong attempt"
    );
    assert!(
        !store.renew(task.id, 1, "w2", LEASE).await.unwrap(),
        "wrong worker"
    );
    assert!(
        !store.renew(Uuid::now_v7(), 1, "w1", LEASE).await.unwrap(),
        "unknown task"
    );
    assert_eq!(get(&*store, task.id).await.lease_until.unwrap(), after);

    store
        .complete(task.id, 1, json!(null))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !store.renew(task.id, 1, "w1", LEASE).await.unwrap(),
        "finished task"
    );
}

/// Progress is recorded for the current attempt only.
pub(super) async fn progress_of_current_attempt_only(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, new_task("progress", 0)).await;
    let p = |percent| Progress {
        percent,
        message: format!("{percent}%"),
        preview: None,
    };
    assert!(
        !store.set_progress(task.id, 0, p(1.0)).await.unwrap(),
        "pending task"
    );
    claim_one(&*store, "progress", LEASE).await;
    assert!(store.set_progress(task.id, 1, p(10.0)).await.unwrap());
    assert!(
        !store.set_progress(task.id, 2, p(20.0)).await.unwrap(),
        "wrong attempt"
    );
    assert_eq!(get(&*store, task.id).await.progress, Some(p(10.0)));
    assert!(store.set_progress(task.id, 1, p(99.5)).await.unwrap());
    assert_eq!(get(&*store, task.id).await.progress, Some(p(99.5)));
}

/// Expired leases go back to the queue, fail when exhausted, or cancel when requested.
pub(super) async fn rescue_expired_leases(h: &dyn Harness) {
    let store = h.open().await;
    let short = Duration::from_millis(1);
    let task = insert(&*store, with_attempts(new_task("rescue", 0), 2)).await;
    let alive = insert(&*store, new_task("rescue.alive", 0)).await;
    claim_one(&*store, "rescue.alive", LEASE).await;

    // Attempt 1 expires: back to PENDING.
    claim_one(&*store, "rescue", short).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.rescue_expired().await.unwrap().len(), 1);
    let pending = get(&*store, task.id).await;
    assert_eq!(pending.status, Status::Pending);
    assert_eq!(pending.attempts, 1);
    assert_eq!(pending.worker, None);
    assert_eq!(pending.lease_until, None);
    assert_recent(pending.run_at);
    assert!(
        store
            .complete(task.id, 1, json!("late"))
            .await
            .unwrap()
            .is_none(),
        "stale worker"
    );
    assert_eq!(
        get(&*store, alive.id).await.status,
        Status::Processing,
        "live lease untouched"
    );

    // Attempt 2 (the last) expires: FAILED lease_expired.
    let second = claim_one(&*store, "rescue", short).await;
    assert_eq!(second.attempts, 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.rescue_expired().await.unwrap().len(), 1);
    let failed = get(&*store, task.id).await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(
        failed.error,
        Some(TaskError {
            code: error_codes::LEASE_EXPIRED.into(),
            message: "the worker running attempt 2 stopped renewing its lease".into(),
        })
    );
    assert!(failed.finished_at.is_some());

    // A cancel was requested: CANCELLED.
    let cancel = insert(&*store, new_task("rescue.cancel", 0)).await;
    claim_one(&*store, "rescue.cancel", short).await;
    assert!(matches!(
        store.cancel(cancel.id).await.unwrap(),
        CancelOutcome::Requested(_)
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.rescue_expired().await.unwrap().len(), 1);
    let cancelled = get(&*store, cancel.id).await;
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(cancelled.finished_at.is_some());

    assert_eq!(store.rescue_expired().await.unwrap().len(), 0);
}
