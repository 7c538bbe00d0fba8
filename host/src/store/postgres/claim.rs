//! Claims and the life of a running attempt in the PostgreSQL store: claiming with
//! `FOR UPDATE SKIP LOCKED`, lease renewal, progress, and the rescue of expired leases.
//! Separate because these are the frequent, non-durable writes of consumers.

use std::{cmp::Reverse, time::Duration};

use uuid::Uuid;

use super::{
    PostgresStore,
    events::notifying,
    schema::{clean_text, micros},
};
use crate::store::{EventKind, Progress, StoreResult, Task, sql::clean_percent};

/// `$2` is the lease in microseconds.
const SQL_CLAIM: &str = notifying!(
    "UPDATE tasks SET status = 'PROCESSING', attempts = attempts + 1, \
     started_at = statement_timestamp(), \
     worker = $1, lease_until = statement_timestamp() + $2::bigint * interval '1 microsecond', \
     progress_percent = NULL, progress_message = NULL, progress_preview = NULL, \
     error_code = NULL, error_message = NULL, \
     updated_at = statement_timestamp() \
     WHERE id IN (SELECT id FROM tasks \
                  WHERE status = 'PENDING' AND task_type = $3 \
                    AND run_at <= statement_timestamp() \
                  ORDER BY priority DESC, id LIMIT $4 \
                  FOR UPDATE SKIP LOCKED)",
    "'started'"
);

/// Answers the id of the renewed row (none when the lease is no longer this worker's).
const SQL_RENEW: &str = "UPDATE tasks \
     SET lease_until = statement_timestamp() + $1::bigint * interval '1 microsecond' \
     WHERE id = $2 AND status = 'PROCESSING' AND attempts = $3 AND worker = $4 RETURNING id";

const SQL_PROGRESS: &str = notifying!(
    "UPDATE tasks SET progress_percent = $1, progress_message = $2, \
     progress_preview = COALESCE($5::text, progress_preview), \
     updated_at = statement_timestamp() \
     WHERE id = $3 AND status = 'PROCESSING' AND attempts = $4",
    "CASE WHEN $5::text IS NULL THEN 'progress' ELSE 'preview' END"
);

/// Expired leases: CANCELLED if a cancel was requested, FAILED `lease_expired` without attempts
/// left, else back to PENDING. Rows another statement holds (a renewal, a completion) are
/// skipped: they are being dealt with. `$1`: the code
/// [`LEASE_EXPIRED`](crate::error_codes::LEASE_EXPIRED).
const SQL_RESCUE: &str = notifying!(
    "UPDATE tasks SET \
       status = CASE WHEN cancel_requested THEN 'CANCELLED' \
                     WHEN attempts >= max_attempts THEN 'FAILED' \
                     ELSE 'PENDING' END, \
       finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts \
                          THEN statement_timestamp() \
                          ELSE NULL END, \
       run_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN run_at \
                     ELSE statement_timestamp() END, \
       worker = CASE WHEN cancel_requested OR attempts >= max_attempts THEN worker \
                     ELSE NULL END, \
       error_code = CASE WHEN cancel_requested THEN error_code ELSE $1::text END, \
       error_message = CASE WHEN cancel_requested THEN error_message \
                            ELSE 'the worker running attempt ' || attempts || \
                                 ' stopped renewing its lease' END, \
       lease_until = NULL, progress_percent = NULL, progress_message = NULL, \
       progress_preview = NULL, updated_at = statement_timestamp() \
     WHERE id IN (SELECT id FROM tasks \
                  WHERE status = 'PROCESSING' AND lease_until < statement_timestamp() \
                  FOR UPDATE SKIP LOCKED)",
    "CASE status WHEN 'CANCELLED' THEN 'cancelled' WHEN 'FAILED' THEN 'failed' \
     ELSE 'retrying' END"
);

/// [`TaskStore::claim`](crate::store::TaskStore::claim).
pub(super) async fn claim(
    store: &PostgresStore,
    task_type: &str,
    worker: &str,
    lease: Duration,
    limit: u32,
) -> StoreResult<Vec<Task>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let query = sqlx::query(SQL_CLAIM)
        .bind(clean_text(worker))
        .bind(micros(lease))
        .bind(task_type)
        .bind(i64::from(limit));
    let mut tasks: Vec<Task> = store
        .write(query, false)
        .await?
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    // RETURNING gives no order; hand them out in claim order.
    tasks.sort_by_key(|t| (Reverse(t.priority), t.id));
    for task in &tasks {
        store.publish(EventKind::Started, task);
    }
    Ok(tasks)
}

/// [`TaskStore::renew`](crate::store::TaskStore::renew).
pub(super) async fn renew(
    store: &PostgresStore,
    id: Uuid,
    attempt: u32,
    worker: &str,
    lease: Duration,
) -> StoreResult<bool> {
    let query = sqlx::query(SQL_RENEW)
        .bind(micros(lease))
        .bind(id)
        .bind(i64::from(attempt))
        .bind(clean_text(worker));
    Ok(store.write_rows(query, false).await?.len() == 1)
}

/// [`TaskStore::set_progress`](crate::store::TaskStore::set_progress).
pub(super) async fn set_progress(
    store: &PostgresStore,
    id: Uuid,
    attempt: u32,
    progress: Progress,
) -> StoreResult<bool> {
    let query = sqlx::query(SQL_PROGRESS)
        .bind(f64::from(clean_percent(progress.percent)))
        .bind(clean_text(&progress.message))
        .bind(id)
        .bind(i64::from(attempt))
        .bind(crate::store::sql::preview_text(progress.preview.as_ref()));
    Ok(store.write_one(query, false).await?.is_some())
}

/// [`TaskStore::rescue_expired`](crate::store::TaskStore::rescue_expired).
pub(super) async fn rescue_expired(store: &PostgresStore) -> StoreResult<Vec<Task>> {
    let mut changed = store
        .write(
            sqlx::query(SQL_RESCUE).bind(crate::error_codes::LEASE_EXPIRED),
            false,
        )
        .await?;
    changed.sort_by_key(|(_, t)| t.id);
    for (kind, task) in &changed {
        crate::metrics::task_rescued(
            &task.task_type,
            task.status.as_str(),
            crate::error_codes::LEASE_EXPIRED,
        );
        store.publish(*kind, task);
    }
    Ok(changed.into_iter().map(|(_, task)| task).collect())
}
