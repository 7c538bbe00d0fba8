//! Conformance checks of events: every change is published, in order, with the task as it is
//! after the change (its input left out). One file per topic keeps each concern readable; the suite
//! (`conformance_suite!` in `mod.rs`) runs them all.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::{Harness, LEASE, claim_one, err, get, insert, new_task, next_event, with_attempts};
use crate::store::{EventKind, Progress, Status};

/// A preview rides a progress update: published as Preview (by a second store on the same
/// database too), kept by later progress updates without one, cleared when the attempt ends.
pub(super) async fn previews_ride_progress(h: &dyn Harness) {
    let store = h.open().await;
    let other = h.open().await;
    let mut rx = store.subscribe();
    let mut on_other = other.subscribe();
    let task = insert(&*store, new_task("preview", 0)).await;
    claim_one(&*store, "preview", LEASE).await;
    let preview = json!({"key": "previews/x/1/preview-1.png", "url": "/files/previews/x/1/preview-1.png",
        "content_type": "image/png", "n": 1});
    let with = Progress {
        percent: 10.0,
        message: "step".into(),
        preview: Some(preview.clone()),
    };
    assert!(store.set_progress(task.id, 1, with.clone()).await.unwrap());
    loop {
        let e = next_event(&mut on_other).await;
        if e.kind == EventKind::Preview {
            assert_eq!(e.task.progress, Some(with.clone()));
            break;
        }
    }
    let plain = Progress {
        percent: 20.0,
        message: "later".into(),
        preview: None,
    };
    assert!(store.set_progress(task.id, 1, plain).await.unwrap());
    let now = get(&*store, task.id).await;
    assert_eq!(now.progress.unwrap().preview, Some(preview.clone()));
    assert_eq!(next_event(&mut rx).await.kind, EventKind::Created);
    assert_eq!(next_event(&mut rx).await.kind, EventKind::Started);
    let e = next_event(&mut rx).await;
    assert_eq!((e.kind, e.task.progress), (EventKind::Preview, Some(with)));
    let e = next_event(&mut rx).await;
    assert_eq!(e.kind, EventKind::Progress);
    assert_eq!(e.task.progress.unwrap().preview, Some(preview));
    let failed = store
        .fail(task.id, 1, err("x"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.progress, None);
}

/// Created, Started, Progress, Completed arrive in order with the task as it is then.
pub(super) async fn events_in_order(h: &dyn Harness) {
    let store = h.open().await;
    let mut rx = store.subscribe();
    let task = insert(&*store, new_task("events", 0)).await;
    let claimed = claim_one(&*store, "events", LEASE).await;
    let progress = Progress {
        percent: 50.0,
        message: "half".into(),
        preview: None,
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
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Created, &task.without_input())
    );
    let e = next_event(&mut rx).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Started, &claimed.without_input())
    );
    let e = next_event(&mut rx).await;
    assert_eq!(e.kind, EventKind::Progress);
    assert_eq!(e.task.progress, Some(progress));
    let e = next_event(&mut rx).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Completed, &done.without_input())
    );
    assert!(!task.input.is_null(), "the stored task keeps its input");
    assert!(rx.try_recv().is_err());
}

/// Retrying, Failed, CancelRequested and Cancelled events.
pub(super) async fn events_of_retries_and_cancels(h: &dyn Harness) {
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

/// A second store on the same database (another process, in production: `aihost api` and
/// `aihost consumer`) publishes the first one's changes, each with the task as it is then
/// (without its input, like every event), and neither publishes its own changes twice.
pub(super) async fn other_stores_changes_are_published(h: &dyn Harness) {
    use crate::store::CancelOutcome;

    let api = h.open().await;
    let consumer = h.open().await;
    let mut on_api = api.subscribe();
    let mut on_consumer = consumer.subscribe();

    let task = insert(&*api, new_task("cross", 0)).await;
    let e = next_event(&mut on_consumer).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Created, &task.without_input())
    );

    let claimed = claim_one(&*consumer, "cross", LEASE).await;
    let e = next_event(&mut on_api).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Created, &task.without_input())
    );
    let e = next_event(&mut on_api).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Started, &claimed.without_input())
    );

    let CancelOutcome::Requested(requested) = api.cancel(task.id).await.unwrap() else {
        panic!("a running task's cancel is a request");
    };
    let e = next_event(&mut on_consumer).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Started, &claimed.without_input())
    );
    let e = next_event(&mut on_consumer).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::CancelRequested, &requested.without_input())
    );

    let cancelled = consumer
        .finish_cancelled(task.id, 1)
        .await
        .unwrap()
        .unwrap();
    let e = next_event(&mut on_api).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::CancelRequested, &requested.without_input())
    );
    let e = next_event(&mut on_api).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Cancelled, &cancelled.without_input())
    );
    let e = next_event(&mut on_consumer).await;
    assert_eq!(
        (e.kind, &e.task),
        (EventKind::Cancelled, &cancelled.without_input())
    );

    // A client's retry on the API's store reaches the consumer's (it wakes on `retrying`).
    let crate::store::RetryOutcome::Retried(retried) = api.retry(task.id, 2).await.unwrap() else {
        panic!("a cancelled task is retried");
    };
    for rx in [&mut on_api, &mut on_consumer] {
        let e = next_event(rx).await;
        assert_eq!(
            (e.kind, &e.task),
            (EventKind::Retrying, &retried.without_input())
        );
    }

    // Nothing more: no store published a change twice.
    for rx in [&mut on_api, &mut on_consumer] {
        let more = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(more.is_err(), "an event too many: {more:?}");
    }
}
