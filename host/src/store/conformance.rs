//! Conformance suite of [`TaskStore`]: every implementation must pass every function here.
//!
//! Each check is a generic `async fn(&dyn Harness)`; a [`Harness`] opens the store under test
//! (and reopens the same database, for the durability check). [`conformance_suite!`] turns the
//! whole list into `#[tokio::test]`s for one harness:
//!
//! ```ignore
//! mod postgres {
//!     crate::store::conformance::conformance_suite!(PgHarness::new().await);
//! }
//! ```
//!
//! Timestamps are compared with a 1 ms tolerance, so a store keeping micro- or milliseconds
//! both pass.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{
    CancelOutcome, EventKind, ListFilter, NewTask, Progress, Status, StoreError, Task, TaskError,
    TaskEvent, TaskStore,
};

/// Opens the store under test.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens the harness's database: empty on the first call, the same data on later calls.
    async fn open(&self) -> Arc<dyn TaskStore>;
}

/// Expands to one `#[tokio::test]` per conformance check, each on a fresh harness built by
/// `$harness` (an expression, evaluated inside the async test, so it may `.await`).
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::store::conformance::conformance_suite!(@tests $harness;
            insert_get_round_trip,
            idempotency_key_dedups,
            claim_order_priority_then_fifo,
            claim_skips_future_run_at_and_other_types,
            claim_limit,
            concurrent_claims_never_duplicate,
            renew_by_right_and_wrong_attempt,
            progress_of_current_attempt_only,
            complete_exactly_once,
            fail_retry_then_exhausted,
            fail_without_retry_is_final,
            release_does_not_count_the_attempt,
            release_with_cancel_requested_cancels,
            rescue_expired_leases,
            cancel_in_each_state,
            list_pagination_and_filters,
            stats_on_known_set,
            pending_by_type_counts,
            events_in_order,
            events_of_retries_and_cancels,
            durable_across_reopen,
            ping_answers,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::store::conformance::$name(&harness).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

const LEASE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(5);

fn new_task(task_type: &str, priority: i32) -> NewTask {
    NewTask {
        id: Uuid::now_v7(),
        task_type: task_type.to_owned(),
        input: json!({ "n": priority }),
        priority,
        max_attempts: 3,
        idempotency_key: None,
        webhook_url: None,
    }
}

fn with_attempts(mut task: NewTask, max_attempts: u32) -> NewTask {
    task.max_attempts = max_attempts;
    task
}

async fn insert(store: &dyn TaskStore, task: NewTask) -> Task {
    let (task, created) = store.insert(task).await.expect("insert");
    assert!(created);
    task
}

async fn claim_one(store: &dyn TaskStore, task_type: &str, lease: Duration) -> Task {
    let mut tasks = store.claim(task_type, "w1", lease, 1).await.expect("claim");
    assert_eq!(tasks.len(), 1, "expected one claimable {task_type} task");
    tasks.remove(0)
}

async fn get(store: &dyn TaskStore, id: Uuid) -> Task {
    store.get(id).await.expect("get").expect("task exists")
}

fn assert_close(a: DateTime<Utc>, b: DateTime<Utc>) {
    assert!((a - b).num_milliseconds().abs() <= 1, "{a} != {b}");
}

fn assert_recent(t: DateTime<Utc>) {
    let age = Utc::now() - t;
    assert!(
        age.num_milliseconds() >= -1 && age.num_seconds() < 30,
        "{t} is not recent"
    );
}

fn err(code: &str) -> TaskError {
    TaskError {
        code: code.to_owned(),
        message: format!("{code} happened"),
    }
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<TaskEvent>) -> TaskEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("event in time")
        .expect("event")
}

/// Every field survives insert → get, and every later-set field survives an update → get.
pub async fn insert_get_round_trip(h: &dyn Harness) {
    let store = h.open().await;
    let store = &*store;
    let mut new = new_task("round.trip", -7);
    new.input = json!({ "text": "héllo", "list": [1, 2.5, null, true], "nested": { "a": {} } });
    new.max_attempts = 4;
    new.idempotency_key = Some("key-1".into());
    new.webhook_url = Some("https://example.com/hook?x=1".into());

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
    assert_eq!(get(store, task.id).await, task);

    // Claimed: started_at, worker, lease_until, attempts.
    let claimed = claim_one(store, "round.trip", LEASE).await;
    assert_eq!(claimed.status, Status::Processing);
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.worker.as_deref(), Some("w1"));
    assert_recent(claimed.started_at.expect("started_at"));
    let lease_until = claimed.lease_until.expect("lease_until");
    assert_close(lease_until, claimed.started_at.unwrap() + LEASE);
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
pub async fn idempotency_key_dedups(h: &dyn Harness) {
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

/// Highest priority first, then oldest first.
pub async fn claim_order_priority_then_fifo(h: &dyn Harness) {
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
pub async fn claim_skips_future_run_at_and_other_types(h: &dyn Harness) {
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
pub async fn claim_limit(h: &dyn Harness) {
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
pub async fn concurrent_claims_never_duplicate(h: &dyn Harness) {
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
pub async fn renew_by_right_and_wrong_attempt(h: &dyn Harness) {
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
pub async fn progress_of_current_attempt_only(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, new_task("progress", 0)).await;
    let p = |percent| Progress {
        percent,
        message: format!("{percent}%"),
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

/// The first completion wins; later or stale ones change nothing.
pub async fn complete_exactly_once(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, new_task("once", 0)).await;
    assert!(
        store
            .complete(task.id, 0, json!(0))
            .await
            .unwrap()
            .is_none(),
        "pending task"
    );
    claim_one(&*store, "once", LEASE).await;
    assert!(
        store
            .complete(task.id, 2, json!("stale"))
            .await
            .unwrap()
            .is_none(),
        "wrong attempt"
    );

    let done = store
        .complete(task.id, 1, json!({ "first": true }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.result, Some(json!({ "first": true })));
    assert_eq!(done.attempts, 1);

    let mut rx = store.subscribe();
    assert!(
        store
            .complete(task.id, 1, json!("again"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .fail(task.id, 1, err("late"), None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.finish_cancelled(task.id, 1).await.unwrap().is_none());
    assert!(!store.release(task.id, 1).await.unwrap());
    assert_eq!(get(&*store, task.id).await, done);
    assert!(
        rx.try_recv().is_err(),
        "refused completions publish nothing"
    );
}

/// A retryable failure goes back to PENDING with the error kept; the last attempt fails.
pub async fn fail_retry_then_exhausted(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, with_attempts(new_task("retry", 0), 2)).await;
    claim_one(&*store, "retry", LEASE).await;
    assert!(
        store
            .fail(task.id, 2, err("stale"), Some(Utc::now()))
            .await
            .unwrap()
            .is_none()
    );

    let retry_at = Utc::now();
    let pending = store
        .fail(task.id, 1, err("first"), Some(retry_at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.status, Status::Pending);
    assert_eq!(pending.attempts, 1);
    assert_eq!(pending.error, Some(err("first")));
    assert_close(pending.run_at, retry_at);
    assert_eq!(pending.worker, None);
    assert_eq!(pending.lease_until, None);
    assert_eq!(pending.finished_at, None);
    assert_eq!(get(&*store, task.id).await, pending);

    let second = claim_one(&*store, "retry", LEASE).await;
    assert_eq!(second.attempts, 2);
    let failed = store
        .fail(task.id, 2, err("second"), Some(Utc::now()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.attempts, 2);
    assert_eq!(failed.error, Some(err("second")));
    assert_recent(failed.finished_at.expect("finished_at"));
    assert_eq!(failed.lease_until, None);
    assert!(
        store
            .claim("retry", "w", LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .fail(task.id, 2, err("again"), None)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(get(&*store, task.id).await, failed);
}

/// Without `retry_at` a failure is final even with attempts left.
pub async fn fail_without_retry_is_final(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, with_attempts(new_task("final", 0), 5)).await;
    claim_one(&*store, "final", LEASE).await;
    let failed = store
        .fail(task.id, 1, err("fatal"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.error, Some(err("fatal")));
    assert!(failed.finished_at.is_some());
}

/// A released attempt is not counted and the task is claimable at once.
pub async fn release_does_not_count_the_attempt(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, new_task("release", 0)).await;
    claim_one(&*store, "release", LEASE).await;
    assert!(!store.release(task.id, 2).await.unwrap(), "wrong attempt");
    assert!(store.release(task.id, 1).await.unwrap());
    let released = get(&*store, task.id).await;
    assert_eq!(released.status, Status::Pending);
    assert_eq!(released.attempts, 0);
    assert_eq!(released.worker, None);
    assert_eq!(released.lease_until, None);
    assert!(
        !store.release(task.id, 1).await.unwrap(),
        "no longer processing"
    );

    let again = claim_one(&*store, "release", LEASE).await;
    assert_eq!(again.id, task.id);
    assert_eq!(again.attempts, 1);
}

/// Releasing an attempt whose cancel was requested ends the task CANCELLED.
pub async fn release_with_cancel_requested_cancels(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, new_task("release.cancel", 0)).await;
    claim_one(&*store, "release.cancel", LEASE).await;
    assert!(matches!(
        store.cancel(task.id).await.unwrap(),
        CancelOutcome::Requested(_)
    ));
    assert!(store.release(task.id, 1).await.unwrap());
    let cancelled = get(&*store, task.id).await;
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert!(
        store
            .claim("release.cancel", "w", LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Expired leases go back to the queue, fail when exhausted, or cancel when requested.
pub async fn rescue_expired_leases(h: &dyn Harness) {
    let store = h.open().await;
    let short = Duration::from_millis(1);
    let task = insert(&*store, with_attempts(new_task("rescue", 0), 2)).await;
    let alive = insert(&*store, new_task("rescue.alive", 0)).await;
    claim_one(&*store, "rescue.alive", LEASE).await;

    // Attempt 1 expires: back to PENDING.
    claim_one(&*store, "rescue", short).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
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
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let failed = get(&*store, task.id).await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(
        failed.error,
        Some(TaskError {
            code: "lease_expired".into(),
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
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let cancelled = get(&*store, cancel.id).await;
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(cancelled.finished_at.is_some());

    assert_eq!(store.rescue_expired().await.unwrap(), 0);
}

/// Cancel of a pending, running, finished and unknown task.
pub async fn cancel_in_each_state(h: &dyn Harness) {
    let store = h.open().await;
    let pending = insert(&*store, new_task("cancel.pending", 0)).await;
    let CancelOutcome::Cancelled(cancelled) = store.cancel(pending.id).await.unwrap() else {
        panic!("expected Cancelled");
    };
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert_eq!(get(&*store, pending.id).await, cancelled);
    assert!(
        store
            .claim("cancel.pending", "w", LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.cancel(pending.id).await.unwrap(),
        CancelOutcome::AlreadyFinished(cancelled)
    );

    let running = insert(&*store, new_task("cancel.running", 0)).await;
    claim_one(&*store, "cancel.running", LEASE).await;
    let CancelOutcome::Requested(requested) = store.cancel(running.id).await.unwrap() else {
        panic!("expected Requested");
    };
    assert_eq!(requested.status, Status::Processing);
    assert!(requested.cancel_requested);
    assert!(
        store
            .finish_cancelled(running.id, 2)
            .await
            .unwrap()
            .is_none(),
        "wrong attempt"
    );
    let finished = store
        .finish_cancelled(running.id, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished.status, Status::Cancelled);
    assert!(finished.finished_at.is_some());
    assert!(
        store
            .finish_cancelled(running.id, 1)
            .await
            .unwrap()
            .is_none(),
        "twice"
    );
    assert!(matches!(
        store.cancel(running.id).await.unwrap(),
        CancelOutcome::AlreadyFinished(_)
    ));

    let done = insert(&*store, new_task("cancel.done", 0)).await;
    claim_one(&*store, "cancel.done", LEASE).await;
    let completed = store.complete(done.id, 1, json!(1)).await.unwrap().unwrap();
    assert_eq!(
        store.cancel(done.id).await.unwrap(),
        CancelOutcome::AlreadyFinished(completed)
    );

    assert_eq!(
        store.cancel(Uuid::now_v7()).await.unwrap(),
        CancelOutcome::NotFound
    );
}

/// Newest first, every task exactly once across pages, filters, limits, bad cursors.
pub async fn list_pagination_and_filters(h: &dyn Harness) {
    let store = h.open().await;
    let mut ids = Vec::new();
    for i in 0..120 {
        let task_type = if i % 3 == 0 { "list.a" } else { "list.b" };
        ids.push(insert(&*store, new_task(task_type, 0)).await.id);
    }
    ids.sort_by(|a, b| b.cmp(a)); // newest first

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = Vec::new();
    loop {
        let filter = ListFilter {
            limit: 50,
            cursor: cursor.clone(),
            ..ListFilter::default()
        };
        let page = store.list(filter).await.unwrap();
        pages.push(page.tasks.len());
        seen.extend(page.tasks.iter().map(|t| t.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, vec![50, 50, 20]);
    assert_eq!(seen, ids);

    // Exactly a full last page: no next cursor.
    let page = store
        .list(ListFilter {
            limit: 120,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 120);
    assert_eq!(page.next_cursor, None);
    // 0 means the default page of 50; huge limits are capped (at 1000, above our 120).
    let page = store.list(ListFilter::default()).await.unwrap();
    assert_eq!(page.tasks.len(), 50);
    assert!(page.next_cursor.is_some());
    let page = store
        .list(ListFilter {
            limit: u32::MAX,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 120);

    // Filters.
    let claimed = store.claim("list.a", "w", LEASE, 10).await.unwrap();
    let by_type = |task_type: &str, status: Option<Status>| ListFilter {
        task_type: Some(task_type.to_owned()),
        status,
        limit: 1000,
        cursor: None,
    };
    let a = store.list(by_type("list.a", None)).await.unwrap().tasks;
    assert_eq!(a.len(), 40);
    assert!(a.iter().all(|t| t.task_type == "list.a"));
    assert!(a.windows(2).all(|w| w[0].id > w[1].id));
    let processing = store
        .list(ListFilter {
            status: Some(Status::Processing),
            limit: 1000,
            ..ListFilter::default()
        })
        .await
        .unwrap()
        .tasks;
    let mut expected: Vec<Uuid> = claimed.iter().map(|t| t.id).collect();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        processing.iter().map(|t| t.id).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        store
            .list(by_type("list.a", Some(Status::Pending)))
            .await
            .unwrap()
            .tasks
            .len(),
        30
    );
    assert_eq!(
        store
            .list(by_type("list.b", Some(Status::Processing)))
            .await
            .unwrap()
            .tasks
            .len(),
        0
    );

    // Paging through a filtered list.
    let mut cursor = None;
    let mut count = 0;
    loop {
        let mut filter = by_type("list.b", Some(Status::Pending));
        filter.limit = 30;
        filter.cursor = cursor;
        let page = store.list(filter).await.unwrap();
        count += page.tasks.len();
        assert!(
            page.tasks
                .iter()
                .all(|t| t.task_type == "list.b" && t.status == Status::Pending)
        );
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(count, 80);

    for bad in ["nope", "", "12345678-1234-1234-1234-1234567890zz"] {
        let filter = ListFilter {
            cursor: Some(bad.into()),
            ..ListFilter::default()
        };
        assert!(
            matches!(store.list(filter).await, Err(StoreError::InvalidCursor)),
            "cursor {bad:?}"
        );
    }
}

/// Counts, success rate, percentiles and queue depth of a known set.
pub async fn stats_on_known_set(h: &dyn Harness) {
    let store = h.open().await;
    let empty = store.stats().await.unwrap();
    assert_eq!(empty.by_status.len(), 5);
    assert!(empty.by_status.values().all(|&n| n == 0));
    assert!(empty.by_type.is_empty());
    assert_eq!(empty.success_rate, None);
    assert_eq!(empty.processing_ms_p50, None);
    assert_eq!(empty.queue_depth, 0);

    // stats.a: 2 COMPLETED (one quick, one ≥150 ms), 1 FAILED, 1 PENDING.
    let quick = insert(&*store, new_task("stats.a", 3)).await;
    let slow = insert(&*store, new_task("stats.a", 2)).await;
    let failing = insert(&*store, with_attempts(new_task("stats.a", 1), 1)).await;
    insert(&*store, new_task("stats.a", 0)).await;
    assert_eq!(
        store.claim("stats.a", "w", LEASE, 3).await.unwrap().len(),
        3
    );
    store
        .complete(quick.id, 1, json!(1))
        .await
        .unwrap()
        .unwrap();
    store
        .fail(failing.id, 1, err("x"), None)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.complete(slow.id, 1, json!(2)).await.unwrap().unwrap();
    // stats.b: 1 PROCESSING, 1 CANCELLED, 2 PENDING.
    insert(&*store, new_task("stats.b", 9)).await;
    claim_one(&*store, "stats.b", LEASE).await;
    let c = insert(&*store, new_task("stats.b", 0)).await;
    store.cancel(c.id).await.unwrap();
    insert(&*store, new_task("stats.b", 0)).await;
    insert(&*store, new_task("stats.b", 0)).await;

    let stats = store.stats().await.unwrap();
    let counts = |pairs: &[(&str, u64)]| {
        Status::ALL
            .iter()
            .map(|s| {
                let n = pairs
                    .iter()
                    .find(|(k, _)| *k == s.as_str())
                    .map_or(0, |(_, n)| *n);
                (s.as_str().to_owned(), n)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(
        stats.by_status,
        counts(&[
            ("PENDING", 3),
            ("PROCESSING", 1),
            ("COMPLETED", 2),
            ("FAILED", 1),
            ("CANCELLED", 1)
        ])
    );
    assert_eq!(stats.by_type.len(), 2);
    let a = &stats.by_type["stats.a"];
    let b = &stats.by_type["stats.b"];
    for (status, n) in counts(&[("PENDING", 1), ("COMPLETED", 2), ("FAILED", 1)]) {
        assert_eq!(a.get(&status).copied().unwrap_or(0), n, "stats.a {status}");
    }
    for (status, n) in counts(&[("PENDING", 2), ("PROCESSING", 1), ("CANCELLED", 1)]) {
        assert_eq!(b.get(&status).copied().unwrap_or(0), n, "stats.b {status}");
    }
    let rate = stats.success_rate.unwrap();
    assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");
    assert_eq!(stats.queue_depth, 3);
    // Nearest rank over [quick, slow]: p50 is the quick one, p95 and p99 the slow one.
    let (p50, p95, p99) = (
        stats.processing_ms_p50.unwrap(),
        stats.processing_ms_p95.unwrap(),
        stats.processing_ms_p99.unwrap(),
    );
    assert!(p50 < 150.0, "p50 {p50}");
    assert!(p95 >= 150.0, "p95 {p95}");
    assert_eq!(p99, p95);
}

/// PENDING counts per type, future run_at included.
pub async fn pending_by_type_counts(h: &dyn Harness) {
    let store = h.open().await;
    assert!(store.pending_by_type().await.unwrap().is_empty());
    for _ in 0..3 {
        insert(&*store, new_task("pbt.a", 0)).await;
    }
    let delayed = insert(&*store, new_task("pbt.b", 0)).await;
    claim_one(&*store, "pbt.b", LEASE).await;
    store
        .fail(
            delayed.id,
            1,
            err("later"),
            Some(Utc::now() + chrono::Duration::hours(1)),
        )
        .await
        .unwrap()
        .unwrap();
    insert(&*store, new_task("pbt.c", 0)).await;
    claim_one(&*store, "pbt.c", LEASE).await;
    let counts = store.pending_by_type().await.unwrap();
    assert_eq!(counts.get("pbt.a"), Some(&3));
    assert_eq!(counts.get("pbt.b"), Some(&1));
    assert_eq!(counts.get("pbt.c").copied().unwrap_or(0), 0);
}

/// Created, Started, Progress, Completed arrive in order with the task as it is then.
pub async fn events_in_order(h: &dyn Harness) {
    let store = h.open().await;
    let mut rx = store.subscribe();
    let task = insert(&*store, new_task("events", 0)).await;
    let claimed = claim_one(&*store, "events", LEASE).await;
    let progress = Progress {
        percent: 50.0,
        message: "half".into(),
    };
    store
        .set_progress(task.id, 1, progress.clone())
        .await
        .unwrap();
    let done = store
        .complete(task.id, 1, json!("ok"))
        .await
        .unwrap()
        .unwrap();

    let e = next_event(&mut rx).await;
    assert_eq!((e.kind, &e.task), (EventKind::Created, &task));
    let e = next_event(&mut rx).await;
    assert_eq!((e.kind, &e.task), (EventKind::Started, &claimed));
    let e = next_event(&mut rx).await;
    assert_eq!(e.kind, EventKind::Progress);
    assert_eq!(e.task.progress, Some(progress));
    let e = next_event(&mut rx).await;
    assert_eq!((e.kind, &e.task), (EventKind::Completed, &done));
    assert!(rx.try_recv().is_err());
}

/// Retrying, Failed, CancelRequested and Cancelled events.
pub async fn events_of_retries_and_cancels(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, with_attempts(new_task("events2", 0), 2)).await;
    let mut rx = store.subscribe();
    claim_one(&*store, "events2", LEASE).await;
    store
        .fail(task.id, 1, err("a"), Some(Utc::now()))
        .await
        .unwrap()
        .unwrap();
    claim_one(&*store, "events2", LEASE).await;
    store.release(task.id, 2).await.unwrap();
    claim_one(&*store, "events2", LEASE).await;
    store
        .fail(task.id, 2, err("b"), Some(Utc::now()))
        .await
        .unwrap()
        .unwrap();

    let running = insert(&*store, new_task("events3", 0)).await;
    claim_one(&*store, "events3", LEASE).await;
    store.cancel(running.id).await.unwrap();
    store
        .finish_cancelled(running.id, 1)
        .await
        .unwrap()
        .unwrap();

    let mut kinds = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        kinds.push((e.kind, e.task.status));
    }
    use EventKind as K;
    use Status as S;
    assert_eq!(
        kinds,
        vec![
            (K::Started, S::Processing),
            (K::Retrying, S::Pending),
            (K::Started, S::Processing),
            (K::Retrying, S::Pending),
            (K::Started, S::Processing),
            (K::Failed, S::Failed),
            (K::Created, S::Pending),
            (K::Started, S::Processing),
            (K::CancelRequested, S::Processing),
            (K::Cancelled, S::Cancelled),
        ]
    );
}

/// Tasks survive closing and reopening the store.
pub async fn durable_across_reopen(h: &dyn Harness) {
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

/// `ping` answers on a healthy store.
pub async fn ping_answers(h: &dyn Harness) {
    let store = h.open().await;
    store.ping().await.unwrap();
}

mod sqlite {
    use std::{path::PathBuf, sync::Arc};

    use async_trait::async_trait;

    use super::Harness;
    use crate::store::{TaskStore, sqlite::SqliteStore};

    /// A fresh database file in a temporary directory.
    struct SqliteHarness {
        dir: tempfile::TempDir,
    }

    impl SqliteHarness {
        fn new() -> Self {
            SqliteHarness {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("nested/dirs/tasks.db")
        }
    }

    #[async_trait]
    impl Harness for SqliteHarness {
        async fn open(&self) -> Arc<dyn TaskStore> {
            Arc::new(
                SqliteStore::open(&self.path())
                    .await
                    .expect("open sqlite store"),
            )
        }
    }

    super::conformance_suite!(SqliteHarness::new());

    /// Closing explicitly and reopening the file keeps the data; migrations run once.
    #[tokio::test]
    async fn reopen_after_close() {
        let harness = SqliteHarness::new();
        let store = SqliteStore::open(&harness.path()).await.unwrap();
        let (task, _) = store.insert(super::new_task("close", 0)).await.unwrap();
        store.close().await;
        let store = SqliteStore::open(&harness.path()).await.unwrap();
        assert_eq!(store.get(task.id).await.unwrap(), Some(task));
    }
}

pub(crate) mod postgres {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use async_trait::async_trait;
    use sqlx::{AssertSqlSafe, Connection, PgConnection};

    use super::Harness;
    use crate::store::{
        TaskStore,
        postgres::{PostgresSettings, PostgresStore},
    };

    /// Server and maintenance database the tests create their databases from; override with
    /// `AIHOST_TEST_POSTGRES_URL`.
    const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    fn admin_url() -> String {
        std::env::var("AIHOST_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
    }

    /// A database of its own on the machine's PostgreSQL, dropped with the harness.
    pub(crate) struct PgHarness {
        name: String,
        url: String,
    }

    impl PgHarness {
        pub(crate) async fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "aihost_test_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let admin = admin_url();
            let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} (set AIHOST_TEST_POSTGRES_URL): {e}")
            });
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .expect("drop stale test database");
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let _ = conn.close().await;
            let mut url = url::Url::parse(&admin).expect("admin URL");
            url.set_path(&name);
            PgHarness {
                name,
                url: url.to_string(),
            }
        }

        pub(crate) async fn store(&self) -> PostgresStore {
            let mut settings = PostgresSettings::new(self.url.clone());
            settings.max_connections = 10;
            PostgresStore::open(&settings)
                .await
                .expect("open postgres store")
        }
    }

    impl Drop for PgHarness {
        fn drop(&mut self) {
            let name = self.name.clone();
            // Drop runs inside the test's runtime: use a runtime of its own on another thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                        let _ = sqlx::query(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                        let _ = conn.close().await;
                    }
                });
            })
            .join();
        }
    }

    #[async_trait]
    impl Harness for PgHarness {
        async fn open(&self) -> Arc<dyn TaskStore> {
            Arc::new(self.store().await)
        }
    }

    super::conformance_suite!(PgHarness::new().await);
}
