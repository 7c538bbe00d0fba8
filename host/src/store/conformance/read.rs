//! Conformance checks of reads: pagination and filters of `list`, statistics, queue depths and
//! `ping`. One file per topic keeps each concern readable; the suite (`conformance_suite!` in
//! `mod.rs`) runs them all.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::{Harness, LEASE, claim_one, err, insert, new_task, with_attempts};
use crate::store::{ListFilter, Status, StoreError};

/// Pages without inputs carry null inputs and the rest unchanged; with an input budget a page
/// ends early with a cursor that continues where it stopped.
pub(super) async fn list_without_inputs_and_with_a_budget(h: &dyn Harness) {
    let store = h.open().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut t = new_task("budget", 0);
        t.input = json!({ "blob": "x".repeat(1000), "i": i });
        ids.push(insert(&*store, t).await.id);
    }
    ids.reverse(); // newest first
    let full = store.list(ListFilter::default()).await.unwrap().tasks;
    assert!(full.iter().all(|t| t.input["blob"].is_string()));
    let bare = store
        .list(ListFilter {
            without_input: true,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(bare.next_cursor, None);
    assert_eq!(bare.tasks.len(), 6);
    for (b, f) in bare.tasks.iter().zip(&full) {
        assert!(b.input.is_null());
        assert_eq!(*b, f.without_input());
    }

    // About 1 KB of JSON each: a 2,500-byte budget ends a page after the third task.
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(ListFilter {
                cursor: cursor.take(),
                input_budget: Some(2500),
                ..ListFilter::default()
            })
            .await
            .unwrap();
        pages.push(page.tasks.len());
        assert!(page.tasks.iter().all(|t| t.input["blob"].is_string()));
        seen.extend(page.tasks.iter().map(|t| t.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(pages[..2], [3, 3]);
    // A budget smaller than one input still returns one task per page.
    let page = store
        .list(ListFilter {
            input_budget: Some(1),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 1);
    assert!(page.next_cursor.is_some());
}

/// Newest first, every task exactly once across pages, filters, limits, bad cursors.
pub(super) async fn list_pagination_and_filters(h: &dyn Harness) {
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
        ..ListFilter::default()
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
pub(super) async fn stats_on_known_set(h: &dyn Harness) {
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
pub(super) async fn pending_by_type_counts(h: &dyn Harness) {
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

/// `ping` answers on a healthy store.
pub(super) async fn ping_answers(h: &dyn Harness) {
    let store = h.open().await;
    store.ping().await.unwrap();
}

/// The task holding an idempotency key is found by the key; another key finds nothing, and a
/// deleted task frees its key.
pub(super) async fn get_by_idempotency_key_finds_the_holder(h: &dyn Harness) {
    let store = h.open().await;
    let mut t = new_task("keyed", 0);
    t.idempotency_key = Some("comfy:p-1".into());
    let held = insert(&*store, t).await;
    insert(&*store, new_task("keyed", 0)).await;
    let found = store
        .get_by_idempotency_key("comfy:p-1")
        .await
        .unwrap()
        .expect("the holder");
    assert_eq!(found, held);
    assert_eq!(
        store.get_by_idempotency_key("comfy:p-2").await.unwrap(),
        None
    );
    let finished = claim_one(&*store, "keyed", LEASE).await;
    assert_eq!(finished.id, held.id);
    store
        .complete(held.id, finished.attempts, json!({}))
        .await
        .unwrap();
    store.delete(held.id).await.unwrap();
    assert_eq!(
        store.get_by_idempotency_key("comfy:p-1").await.unwrap(),
        None
    );
}
