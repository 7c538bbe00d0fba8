//! Conformance checks of consumer identities: an identity is held by one holder at a time and
//! comes free when its holder goes; ending the leases of an identity's earlier runs touches
//! those runs' tasks only; and a task's own time limit is stored.

use std::time::{Duration, Instant};

use super::{Harness, LEASE, get, insert, new_task};
use crate::store::Status;

/// A held identity is refused to a second holder (another store on the same database too),
/// other identities are not, and it comes free once its holder is gone.
pub(super) async fn worker_identity_held_once(h: &dyn Harness) {
    let first = h.open().await;
    assert!(first.hold_worker_identity("host-0").await.unwrap());
    assert!(!first.hold_worker_identity("host-0").await.unwrap());
    assert!(first.hold_worker_identity("host-1").await.unwrap());
    let second = h.open().await;
    assert!(!second.hold_worker_identity("host-0").await.unwrap());
    assert!(second.hold_worker_identity("host-2").await.unwrap());
    drop(first);
    // PostgreSQL frees a session's locks when it notices the closed connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.hold_worker_identity("host-0").await.unwrap() {
        assert!(Instant::now() < deadline, "host-0 never came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Only the PROCESSING tasks of the identity's other runs lose their lease; the rescue then
/// puts exactly those back in the queue.
pub(super) async fn expire_previous_runs_of_one_identity(h: &dyn Harness) {
    let store = h.open().await;
    let mut claimed = Vec::new();
    for worker in ["w#old", "w#new", "wx#old", "other#1"] {
        let task = insert(&*store, new_task("runs", 0)).await;
        let got = store.claim("runs", worker, LEASE, 1).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, task.id);
        claimed.push(task.id);
    }
    assert_eq!(store.expire_previous_runs("w", "w#new").await.unwrap(), 1);
    let rescued = store.rescue_expired().await.unwrap();
    assert_eq!(rescued.len(), 1, "{rescued:?}");
    assert_eq!(rescued[0].id, claimed[0]);
    assert_eq!(rescued[0].status, Status::Pending);
    for id in &claimed[1..] {
        assert_eq!(get(&*store, *id).await.status, Status::Processing);
    }
    assert_eq!(store.expire_previous_runs("w", "w#new").await.unwrap(), 0);
}

/// `timeout_secs` is stored as given, and absent when not given.
pub(super) async fn timeout_secs_round_trips(h: &dyn Harness) {
    let store = h.open().await;
    let mut limited = new_task("limits", 0);
    limited.timeout_secs = Some(90);
    let limited = insert(&*store, limited).await;
    assert_eq!(limited.timeout_secs, Some(90));
    assert_eq!(get(&*store, limited.id).await.timeout_secs, Some(90));
    let free = insert(&*store, new_task("limits", 0)).await;
    assert_eq!(get(&*store, free.id).await.timeout_secs, None);
}
