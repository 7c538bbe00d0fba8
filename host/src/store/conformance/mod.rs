//! Conformance suite of [`TaskStore`]: every implementation must pass every function here.
//!
//! Each check is a generic `async fn(&dyn Harness)`, in the file of its topic (`submit.rs`,
//! `claim.rs`, `finish.rs`, `read.rs`, `events.rs`,
//! `retention.rs`, `workers.rs`); a [`Harness`] opens the store under test
//! (and reopens the same database, for the durability check). [`conformance_suite!`], the one
//! entry point, turns the whole list into `#[tokio::test]`s for one harness:
//!
//! ```ignore
//! mod postgres {
//!     crate::store::conformance::conformance_suite!(PgHarness::new().await);
//! }
//! ```
//!
//! Timestamps are compared with a 1 ms tolerance, so a store keeping micro- or milliseconds
//! both pass.
//!
//! The suite runs for SQLite in `sqlite.rs` and for PostgreSQL in `postgres.rs`; `pg.rs` creates
//! and drops the temporary PostgreSQL databases (also used by the PostgreSQL store's own tests).

mod claim;
mod deliveries;
mod events;
mod finish;
pub(crate) mod pg;
mod postgres;
mod read;
mod retention;
mod sqlite;
mod submit;
mod workers;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{NewTask, Task, TaskError, TaskEvent, TaskStore};

/// Opens the store under test.
#[async_trait]
pub(super) trait Harness: Send + Sync {
    /// Opens the harness's database: empty on the first call, the same data on later calls.
    async fn open(&self) -> Arc<dyn TaskStore>;
}

/// Expands to one `#[tokio::test]` per conformance check (listed here as `topic::check`), each
/// on a fresh harness built by `$harness` (an expression, evaluated inside the async test, so it
/// may `.await`).
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::store::conformance::conformance_suite!(@tests $harness;
            submit::insert_get_round_trip,
            submit::idempotency_key_dedups,
            submit::idempotency_key_bound_to_request_hash,
            submit::idempotency_rows_without_hash_match_any_request,
            submit::durable_across_reopen,
            claim::claim_order_priority_then_fifo,
            claim::claim_skips_future_run_at_and_other_types,
            claim::claim_limit,
            claim::concurrent_claims_never_duplicate,
            claim::renew_by_right_and_wrong_attempt,
            claim::progress_of_current_attempt_only,
            claim::rescue_expired_leases,
            finish::complete_exactly_once,
            finish::fail_retry_then_exhausted,
            finish::fail_without_retry_is_final,
            finish::attempts_start_and_end_clean,
            finish::release_does_not_count_the_attempt,
            finish::release_with_cancel_requested_cancels,
            finish::cancel_in_each_state,
            finish::retry_failed_and_cancelled_only,
            finish::fail_waiting_fails_only_old_pending_of_the_type,
            read::list_pagination_and_filters,
            read::list_without_inputs_and_with_a_budget,
            read::stats_on_known_set,
            read::pending_by_type_counts,
            read::ping_answers,
            read::get_by_idempotency_key_finds_the_holder,
            events::events_in_order,
            events::previews_ride_progress,
            events::events_of_retries_and_cancels,
            events::other_stores_changes_are_published,
            retention::prune_bounded_batches,
            retention::delete_finished_refuses_live,
            retention::live_input_mentions_only_live,
            workers::worker_identity_held_once,
            workers::expire_previous_runs_of_one_identity,
            workers::timeout_secs_round_trips,
            deliveries::terminal_states_write_their_message,
            deliveries::claims_attempts_and_redelivery,
            deliveries::messages_of_a_task_go_in_order,
        );
    };
    (@tests $harness:expr; $($topic:ident :: $name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::store::conformance::$topic::$name(&harness).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

const LEASE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(5);

/// A new task of `task_type` at `priority` (shared by the stores' own tests too).
pub(crate) fn new_task(task_type: &str, priority: i32) -> NewTask {
    NewTask {
        id: Uuid::now_v7(),
        task_type: task_type.to_owned(),
        input: json!({ "n": priority }),
        priority,
        max_attempts: 3,
        idempotency_key: None,
        webhook_url: None,
        trace_parent: None,
        timeout_secs: None,
        request_hash: None,
        webhook_events: None,
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
