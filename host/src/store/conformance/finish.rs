//! Conformance checks of the end of an attempt: completion exactly once, failure with and
//! without retry, release at shutdown, and cancels in every state. One file per topic keeps each
//! concern readable; the suite (`conformance_suite!` in `mod.rs`) runs them all.

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::{
    Harness, LEASE, assert_close, assert_recent, claim_one, err, get, insert, new_task, next_event,
    with_attempts,
};
use crate::store::{CancelOutcome, EventKind, Progress, RetryOutcome, Status};

/// The first completion wins; later or stale ones change nothing.
pub(super) async fn complete_exactly_once(h: &dyn Harness) {
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
pub(super) async fn fail_retry_then_exhausted(h: &dyn Harness) {
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

/// Progress belongs to one attempt: a failure (retried or final), a release and a cancel clear
/// it; the next attempt starts without it and without the previous attempt's error.
pub(super) async fn attempts_start_and_end_clean(h: &dyn Harness) {
    let store = h.open().await;
    let p = || Progress {
        percent: 40.0,
        message: "waiting for an instance".into(),
        preview: None,
    };
    let task = insert(&*store, with_attempts(new_task("clean", 0), 3)).await;
    claim_one(&*store, "clean", LEASE).await;
    assert!(store.set_progress(task.id, 1, p()).await.unwrap());
    let pending = store
        .fail(task.id, 1, err("first"), Some(Utc::now()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.status, Status::Pending);
    assert_eq!(
        (pending.progress, pending.error),
        (None, Some(err("first")))
    );
    let second = claim_one(&*store, "clean", LEASE).await;
    assert_eq!((second.attempts, second.error.clone()), (2, None));
    assert_eq!(get(&*store, task.id).await.error, None);
    assert!(store.set_progress(task.id, 2, p()).await.unwrap());
    assert!(store.release(task.id, 2).await.unwrap());
    assert_eq!(get(&*store, task.id).await.progress, None);
    claim_one(&*store, "clean", LEASE).await;
    assert!(store.set_progress(task.id, 2, p()).await.unwrap());
    let failed = store
        .fail(task.id, 2, err("last"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!((failed.progress, failed.error), (None, Some(err("last"))));

    let other = insert(&*store, new_task("clean2", 0)).await;
    claim_one(&*store, "clean2", LEASE).await;
    assert!(store.set_progress(other.id, 1, p()).await.unwrap());
    assert!(matches!(
        store.cancel(other.id).await.unwrap(),
        CancelOutcome::Requested(_)
    ));
    let cancelled = store.finish_cancelled(other.id, 1).await.unwrap().unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(cancelled.progress, None);
}

/// Without `retry_at` a failure is final even with attempts left.
pub(super) async fn fail_without_retry_is_final(h: &dyn Harness) {
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
pub(super) async fn release_does_not_count_the_attempt(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, new_task("release", 0)).await;
    let first = claim_one(&*store, "release", LEASE).await;
    assert!(
        first.is_first_run(),
        "a new task's first claim is its first run"
    );
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
    assert!(
        !again.is_first_run(),
        "a released attempt may have reached an engine: its number is reused, but it is no first run"
    );
}

/// Releasing an attempt whose cancel was requested ends the task CANCELLED.
pub(super) async fn release_with_cancel_requested_cancels(h: &dyn Harness) {
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

/// Cancel of a pending, running, finished and unknown task.
pub(super) async fn cancel_in_each_state(h: &dyn Harness) {
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

/// Tasks of a type whose engine stayed unavailable fail with the given error once due before
/// the cutoff; other types and running tasks are left alone.
pub(super) async fn fail_waiting_fails_only_old_pending_of_the_type(h: &dyn Harness) {
    let store = h.open().await;
    let before = Utc::now() - chrono::Duration::seconds(5);
    let busy = insert(&*store, new_task("outage", 0)).await;
    let waiting = insert(&*store, new_task("outage", 0)).await;
    let other = insert(&*store, new_task("outage_other", 0)).await;
    assert_eq!(
        claim_one(&*store, "outage", LEASE).await.id,
        busy.id,
        "fifo"
    );
    let mut events = store.subscribe();
    let e = err(crate::error_codes::ENGINE_UNAVAILABLE);
    assert!(
        store
            .fail_waiting("outage", before, e.clone())
            .await
            .unwrap()
            .is_empty(),
        "none was due before the cutoff"
    );
    let cutoff = Utc::now() + chrono::Duration::seconds(1);
    let failed = store
        .fail_waiting("outage", cutoff, e.clone())
        .await
        .unwrap();
    let ids: Vec<Uuid> = failed.iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![waiting.id], "only the waiting task of the type");
    assert_eq!(failed[0].status, Status::Failed);
    assert_eq!(failed[0].error, Some(e.clone()));
    assert!(failed[0].finished_at.is_some());
    assert_eq!(get(&*store, other.id).await.status, Status::Pending);
    assert_eq!(get(&*store, busy.id).await.status, Status::Processing);
    let mut saw_failed = false;
    while let Ok(Ok(ev)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), events.recv()).await
    {
        if ev.kind == crate::store::EventKind::Failed && ev.task.id == waiting.id {
            saw_failed = true;
            break;
        }
    }
    assert!(saw_failed, "a Failed event is published");
    assert!(
        store
            .fail_waiting("outage", cutoff, e)
            .await
            .unwrap()
            .is_empty(),
        "nothing left to fail"
    );
}

/// A retry puts a FAILED or CANCELLED task back to PENDING, cleared, with `budget` more
/// attempts and the attempt counter kept; its next claim is the next attempt number. Other
/// states and unknown ids change nothing.
pub(super) async fn retry_failed_and_cancelled_only(h: &dyn Harness) {
    let store = h.open().await;
    let failing = insert(&*store, with_attempts(new_task("retry.failed", 0), 1)).await;
    claim_one(&*store, "retry.failed", LEASE).await;
    assert!(
        store
            .set_progress(
                failing.id,
                1,
                Progress {
                    percent: 40.0,
                    message: "half".into(),
                    preview: None,
                }
            )
            .await
            .unwrap()
    );
    store
        .fail(failing.id, 1, err("attempt_broke"), None)
        .await
        .unwrap()
        .unwrap();
    let failed = get(&*store, failing.id).await;
    assert_eq!(failed.status, Status::Failed);
    let mut rx = store.subscribe();
    let RetryOutcome::Retried(retried) = store.retry(failing.id, 2).await.unwrap() else {
        panic!("expected Retried");
    };
    assert_eq!(retried.status, Status::Pending);
    assert_eq!(retried.attempts, 1, "the attempt counter is kept");
    assert_eq!(retried.max_attempts, 3, "attempts + budget");
    assert!(retried.error.is_none());
    assert!(retried.progress.is_none());
    assert!(retried.result.is_none());
    assert!(retried.finished_at.is_none());
    assert!(retried.worker.is_none());
    assert_eq!(retried.input, failing.input);
    assert_eq!(get(&*store, failing.id).await, retried);
    let ev = next_event(&mut rx).await;
    assert_eq!(ev.kind, EventKind::Retrying);
    assert_eq!(ev.task.id, failing.id);
    assert_eq!(ev.task.status, Status::Pending);
    let again = claim_one(&*store, "retry.failed", LEASE).await;
    assert_eq!(again.attempts, 2, "the next attempt has the next number");
    assert_eq!(
        store.retry(failing.id, 2).await.unwrap(),
        RetryOutcome::NotRetryable(again.clone()),
        "a running task is not retried"
    );
    let completed = store
        .complete(failing.id, 2, json!(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.retry(failing.id, 2).await.unwrap(),
        RetryOutcome::NotRetryable(completed)
    );

    let pending = insert(&*store, new_task("retry.cancelled", 0)).await;
    assert!(matches!(
        store.retry(pending.id, 3).await.unwrap(),
        RetryOutcome::NotRetryable(_)
    ));
    claim_one(&*store, "retry.cancelled", LEASE).await;
    let CancelOutcome::Requested(_) = store.cancel(pending.id).await.unwrap() else {
        panic!("expected Requested");
    };
    store
        .finish_cancelled(pending.id, 1)
        .await
        .unwrap()
        .unwrap();
    let RetryOutcome::Retried(back) = store.retry(pending.id, 3).await.unwrap() else {
        panic!("expected Retried");
    };
    assert_eq!(
        (back.status, back.attempts, back.max_attempts),
        (Status::Pending, 1, 4)
    );
    assert!(
        !back.cancel_requested,
        "the old cancel request is forgotten"
    );
    assert_eq!(
        claim_one(&*store, "retry.cancelled", LEASE).await.attempts,
        2
    );

    assert_eq!(
        store.retry(Uuid::now_v7(), 3).await.unwrap(),
        RetryOutcome::NotFound
    );
}
