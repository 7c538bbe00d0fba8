//! Conformance checks of webhook deliveries: terminal states write their message in the same
//! transaction (every terminal path), `task.started` / `task.progress` only when asked for,
//! leased claims (never handed out twice while leased), attempts (retry, delivered, dead),
//! redelivery, and deletion with the task.

use std::time::Duration;

use chrono::{Duration as Span, Utc};
use serde_json::json;

use super::{Harness, LEASE, claim_one, err, insert, new_task};
use crate::store::{CancelOutcome, DeliveryAttempt, DeliveryOutcome, DeliveryState, NewTask};

fn hooked(task_type: &str, events: Option<&str>) -> NewTask {
    let mut t = new_task(task_type, 0);
    t.webhook_url = Some("https://example.com/hook".into());
    t.webhook_events = events.map(str::to_owned);
    t
}

fn attempt(outcome: DeliveryOutcome, status: Option<u16>) -> DeliveryAttempt {
    DeliveryAttempt {
        payload: "{\"a\":1}".into(),
        status,
        error: status
            .filter(|s| *s >= 300)
            .map(|s| format!("answered {s}")),
        outcome,
    }
}

/// Every terminal path writes exactly one message of its event; tasks without a webhook none;
/// optional events only when asked for.
pub(super) async fn terminal_states_write_their_message(h: &dyn Harness) {
    let store = h.open().await;
    // Completed, with task.started asked for.
    let done = insert(&*store, hooked("wd", Some("task.started"))).await;
    claim_one(&*store, "wd", LEASE).await;
    store.complete(done.id, 1, json!(1)).await.unwrap().unwrap();
    let events: Vec<String> = store
        .list_deliveries(done.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.event)
        .collect();
    assert_eq!(events, ["task.started", "task.completed"]);
    // Failed (no optional events).
    let failed = insert(&*store, hooked("wf", None)).await;
    claim_one(&*store, "wf", LEASE).await;
    store.fail(failed.id, 1, err("x"), None).await.unwrap();
    let d = store.list_deliveries(failed.id).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].event, "task.failed");
    assert_eq!(d[0].url, "https://example.com/hook");
    assert_eq!(d[0].state, DeliveryState::Pending);
    assert!(d[0].id.starts_with("msg_"), "{}", d[0].id);
    // Cancelled while pending.
    let cancelled = insert(&*store, hooked("wc", None)).await;
    assert!(matches!(
        store.cancel(cancelled.id).await.unwrap(),
        CancelOutcome::Cancelled(_)
    ));
    let d = store.list_deliveries(cancelled.id).await.unwrap();
    assert_eq!(
        d.iter().map(|d| d.event.as_str()).collect::<Vec<_>>(),
        ["task.cancelled"]
    );
    // A retry is no terminal state; no webhook, no message.
    let retried = insert(&*store, hooked("wr", None)).await;
    claim_one(&*store, "wr", LEASE).await;
    store
        .fail(retried.id, 1, err("x"), Some(Utc::now()))
        .await
        .unwrap();
    assert!(store.list_deliveries(retried.id).await.unwrap().is_empty());
    let plain = insert(&*store, new_task("wn", 0)).await;
    claim_one(&*store, "wn", LEASE).await;
    store
        .complete(plain.id, 1, json!(1))
        .await
        .unwrap()
        .unwrap();
    assert!(store.list_deliveries(plain.id).await.unwrap().is_empty());
    // Progress messages only for a task that asked for them.
    assert!(!store.add_delivery(done.id, "task.progress").await.unwrap());
    let progress = insert(&*store, hooked("wp", Some("task.progress"))).await;
    // Not while the task is pending (nor once it is finished: `done` above).
    assert!(
        !store
            .add_delivery(progress.id, "task.progress")
            .await
            .unwrap()
    );
    claim_one(&*store, "wp", LEASE).await;
    assert!(
        store
            .add_delivery(progress.id, "task.progress")
            .await
            .unwrap()
    );
    assert!(!store.add_delivery(plain.id, "task.progress").await.unwrap());
    // A newer progress message supersedes the older one not in flight: one stays pending.
    assert!(
        store
            .add_delivery(progress.id, "task.progress")
            .await
            .unwrap()
    );
    let mut states: Vec<DeliveryState> = store
        .list_deliveries(progress.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.state)
        .collect();
    states.sort_by_key(|s| *s == DeliveryState::Pending);
    assert_eq!(states, [DeliveryState::Dead, DeliveryState::Pending]);
}

/// A claimed message is leased (not claimed again until the lease ends); attempts are recorded
/// (retry later, delivered, dead); redelivery revives; deleting the task deletes its messages.
pub(super) async fn claims_attempts_and_redelivery(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, hooked("wl", None)).await;
    claim_one(&*store, "wl", LEASE).await;
    store.complete(task.id, 1, json!(1)).await.unwrap().unwrap();
    let claimed = store.claim_deliveries(LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let id = claimed[0].id.clone();
    assert!(
        store.claim_deliveries(LEASE, 10).await.unwrap().is_empty(),
        "leased"
    );
    // A failed attempt, retried in an hour: not due, and released.
    let later = Utc::now() + Span::hours(1);
    store
        .record_delivery(&id, attempt(DeliveryOutcome::Retry(later), Some(500)))
        .await
        .unwrap();
    assert!(
        store.claim_deliveries(LEASE, 10).await.unwrap().is_empty(),
        "not due"
    );
    let d = store.list_deliveries(task.id).await.unwrap().remove(0);
    assert_eq!(
        (d.attempts, d.last_status, d.state),
        (1, Some(500), DeliveryState::Pending)
    );
    assert_eq!(d.payload.as_deref(), Some("{\"a\":1}"));
    assert!(
        (d.next_at - later).num_milliseconds().abs() <= 1,
        "{}",
        d.next_at
    );
    // Redelivered: due now; then delivered.
    assert_eq!(store.redeliver(task.id, Some(&id)).await.unwrap(), 1);
    assert_eq!(
        store.redeliver(task.id, Some("msg_other")).await.unwrap(),
        0
    );
    let claimed = store.claim_deliveries(LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    store
        .record_delivery(&id, attempt(DeliveryOutcome::Delivered, Some(204)))
        .await
        .unwrap();
    let d = store.list_deliveries(task.id).await.unwrap().remove(0);
    assert_eq!((d.attempts, d.state), (2, DeliveryState::Delivered));
    assert!(d.delivered_at.is_some());
    // A short lease ends and the message is claimed again; dead stays dead until redelivered.
    store.redeliver(task.id, None).await.unwrap();
    assert_eq!(
        store
            .claim_deliveries(Duration::from_millis(1), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.claim_deliveries(LEASE, 10).await.unwrap().len(), 1);
    store
        .record_delivery(&id, attempt(DeliveryOutcome::Dead, None))
        .await
        .unwrap();
    assert_eq!(
        store.list_deliveries(task.id).await.unwrap()[0].state,
        DeliveryState::Dead
    );
    assert!(store.claim_deliveries(LEASE, 10).await.unwrap().is_empty());
    // Deleted with the task.
    store.delete(task.id).await.unwrap();
    assert!(store.list_deliveries(task.id).await.unwrap().is_empty());
}

/// A task's messages go in order: a later message is not claimed while an earlier one of the
/// same task has not been tried or is in flight (leased); one that failed and waits for its
/// retry no longer holds the later ones up; other tasks' messages are never held up.
pub(super) async fn messages_of_a_task_go_in_order(h: &dyn Harness) {
    let store = h.open().await;
    let task = insert(&*store, hooked("wo", Some("task.started"))).await;
    claim_one(&*store, "wo", LEASE).await;
    // The terminal message is written at least a millisecond after task.started.
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.complete(task.id, 1, json!(1)).await.unwrap().unwrap();
    let other = insert(&*store, hooked("wo2", None)).await;
    claim_one(&*store, "wo2", LEASE).await;
    store
        .complete(other.id, 1, json!(1))
        .await
        .unwrap()
        .unwrap();
    let first = store.claim_deliveries(LEASE, 10).await.unwrap();
    let mut got: Vec<(uuid::Uuid, &str)> = first
        .iter()
        .map(|d| (d.task_id, d.event.as_str()))
        .collect();
    got.sort();
    let mut want = vec![(task.id, "task.started"), (other.id, "task.completed")];
    want.sort();
    assert_eq!(got, want, "one message per task, the earliest");
    // In flight (leased): the completion waits.
    assert!(store.claim_deliveries(LEASE, 10).await.unwrap().is_empty());
    let started = first
        .iter()
        .find(|d| d.task_id == task.id)
        .unwrap()
        .id
        .clone();
    // Failed once and retried later: the completion no longer waits for it.
    store
        .record_delivery(
            &started,
            attempt(
                DeliveryOutcome::Retry(Utc::now() + Span::hours(1)),
                Some(500),
            ),
        )
        .await
        .unwrap();
    let next = store.claim_deliveries(LEASE, 10).await.unwrap();
    assert_eq!(
        next.iter().map(|d| d.event.as_str()).collect::<Vec<_>>(),
        ["task.completed"]
    );
    assert_eq!(next[0].task_id, task.id);
}
