//! The end of an attempt in the PostgreSQL store: completion, failure (retry or final),
//! release at shutdown, a client's cancel and its completion by the worker. Separate because
//! these are the durable, exactly-once transitions, each guarded by the attempt number.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{PostgresStore, events::notifying, read::get_task, schema::clean_text};
use crate::store::{
    CancelOutcome, RetryOutcome, Status, StoreResult, Task, TaskError, sql::to_json,
};

const SQL_COMPLETE: &str = notifying!(
    "UPDATE tasks SET status = 'COMPLETED', result = $1, finished_at = statement_timestamp(), \
     lease_until = NULL, \
     error_code = NULL, error_message = NULL, progress_preview = NULL, \
     updated_at = statement_timestamp() \
     WHERE id = $2 AND status = 'PROCESSING' AND attempts = $3",
    "'completed'"
);

/// Retried (`$3` = retry_at) when a retry is asked for, attempts remain and no cancel was
/// requested; otherwise FAILED. `SET` expressions read the row's old values.
const SQL_FAIL: &str = notifying!(
    "UPDATE tasks SET \
       status = CASE WHEN ($3::timestamptz IS NOT NULL AND attempts < max_attempts \
                           AND NOT cancel_requested) THEN 'PENDING' ELSE 'FAILED' END, \
       run_at = CASE WHEN ($3::timestamptz IS NOT NULL AND attempts < max_attempts \
                           AND NOT cancel_requested) THEN $3::timestamptz ELSE run_at END, \
       finished_at = CASE WHEN ($3::timestamptz IS NOT NULL AND attempts < max_attempts \
                                AND NOT cancel_requested) THEN NULL \
                          ELSE statement_timestamp() END, \
       worker = CASE WHEN ($3::timestamptz IS NOT NULL AND attempts < max_attempts \
                           AND NOT cancel_requested) THEN NULL ELSE worker END, \
       lease_until = NULL, error_code = $4, error_message = $5, updated_at = statement_timestamp(), \
       progress_percent = NULL, progress_message = NULL, progress_preview = NULL \
     WHERE id = $1 AND status = 'PROCESSING' AND attempts = $2",
    "CASE WHEN status = 'PENDING' THEN 'retrying' ELSE 'failed' END"
);

/// A released attempt of a task whose cancel was requested ends CANCELLED.
const SQL_RELEASE: &str = notifying!(
    "UPDATE tasks SET \
       status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'PENDING' END, \
       attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, \
       run_at = CASE WHEN cancel_requested THEN run_at \
         ELSE GREATEST(statement_timestamp(), created_at + interval '1 millisecond') END, \
       finished_at = CASE WHEN cancel_requested THEN statement_timestamp() ELSE NULL END, \
       worker = CASE WHEN cancel_requested THEN worker ELSE NULL END, \
       lease_until = NULL, updated_at = statement_timestamp(), \
       progress_percent = NULL, progress_message = NULL, progress_preview = NULL \
     WHERE id = $1 AND status = 'PROCESSING' AND attempts = $2",
    "CASE WHEN status = 'CANCELLED' THEN 'cancelled' ELSE 'retrying' END"
);

const SQL_CANCEL: &str = notifying!(
    "UPDATE tasks SET \
       status = CASE WHEN status = 'PENDING' THEN 'CANCELLED' ELSE status END, \
       finished_at = CASE WHEN status = 'PENDING' THEN statement_timestamp() ELSE finished_at END, \
       cancel_requested = CASE WHEN status = 'PROCESSING' THEN true ELSE cancel_requested END, \
       progress_percent = CASE WHEN status = 'PENDING' THEN NULL ELSE progress_percent END, \
       progress_message = CASE WHEN status = 'PENDING' THEN NULL ELSE progress_message END, \
       progress_preview = CASE WHEN status = 'PENDING' THEN NULL ELSE progress_preview END, \
       updated_at = statement_timestamp() \
     WHERE id = $1 AND status IN ('PENDING', 'PROCESSING')",
    "CASE WHEN status = 'CANCELLED' THEN 'cancelled' ELSE 'cancel_requested' END"
);

const SQL_FINISH_CANCELLED: &str = notifying!(
    "UPDATE tasks SET status = 'CANCELLED', finished_at = statement_timestamp(), \
     lease_until = NULL, progress_percent = NULL, progress_message = NULL, progress_preview = NULL, \
     updated_at = statement_timestamp() \
     WHERE id = $1 AND status = 'PROCESSING' AND attempts = $2",
    "'cancelled'"
);

/// A finished (FAILED or CANCELLED) task back to the queue with `$1` more attempts.
const SQL_RETRY: &str = notifying!(
    "UPDATE tasks SET status = 'PENDING', max_attempts = attempts + $1, \
       run_at = statement_timestamp(), finished_at = NULL, worker = NULL, lease_until = NULL, \
       cancel_requested = false, result = NULL, error_code = NULL, error_message = NULL, \
       progress_percent = NULL, progress_message = NULL, progress_preview = NULL, \
       updated_at = statement_timestamp() \
     WHERE id = $2 AND status IN ('FAILED', 'CANCELLED')",
    "'retrying'"
);

/// [`TaskStore::retry`](crate::store::TaskStore::retry).
pub(super) async fn retry(
    store: &PostgresStore,
    id: Uuid,
    budget: u32,
) -> StoreResult<RetryOutcome> {
    let query = sqlx::query(SQL_RETRY)
        .bind(i64::from(budget.max(1)))
        .bind(id);
    if let Some((_, task)) = store.write_one(query, true).await? {
        return Ok(RetryOutcome::Retried(task));
    }
    Ok(match get_task(&store.inner.pool, id).await? {
        Some(task) => RetryOutcome::NotRetryable(task),
        None => RetryOutcome::NotFound,
    })
}

/// [`TaskStore::complete`](crate::store::TaskStore::complete).
pub(super) async fn complete(
    store: &PostgresStore,
    id: Uuid,
    attempt: u32,
    result: Value,
) -> StoreResult<Option<Task>> {
    let query = sqlx::query(SQL_COMPLETE)
        .bind(to_json(&result)?)
        .bind(id)
        .bind(i64::from(attempt));
    Ok(store.write_one(query, true).await?.map(|(_, t)| t))
}

/// [`TaskStore::fail`](crate::store::TaskStore::fail).
pub(super) async fn fail(
    store: &PostgresStore,
    id: Uuid,
    attempt: u32,
    error: TaskError,
    retry_at: Option<DateTime<Utc>>,
) -> StoreResult<Option<Task>> {
    let query = sqlx::query(SQL_FAIL)
        .bind(id)
        .bind(i64::from(attempt))
        .bind(retry_at)
        .bind(clean_text(&error.code))
        .bind(clean_text(&error.message));
    Ok(store.write_one(query, true).await?.map(|(_, t)| t))
}

/// [`TaskStore::release`](crate::store::TaskStore::release).
pub(super) async fn release(store: &PostgresStore, id: Uuid, attempt: u32) -> StoreResult<bool> {
    let query = sqlx::query(SQL_RELEASE).bind(id).bind(i64::from(attempt));
    Ok(store.write_one(query, true).await?.is_some())
}

/// [`TaskStore::cancel`](crate::store::TaskStore::cancel).
pub(super) async fn cancel(store: &PostgresStore, id: Uuid) -> StoreResult<CancelOutcome> {
    if let Some((_, task)) = store
        .write_one(sqlx::query(SQL_CANCEL).bind(id), true)
        .await?
    {
        return Ok(if task.status == Status::Cancelled {
            CancelOutcome::Cancelled(task)
        } else {
            CancelOutcome::Requested(task)
        });
    }
    // Nothing was PENDING or PROCESSING with that id: it is unknown or terminal, and a
    // terminal state never changes again.
    Ok(match get_task(&store.inner.pool, id).await? {
        Some(task) => CancelOutcome::AlreadyFinished(task),
        None => CancelOutcome::NotFound,
    })
}

/// [`TaskStore::finish_cancelled`](crate::store::TaskStore::finish_cancelled).
pub(super) async fn finish_cancelled(
    store: &PostgresStore,
    id: Uuid,
    attempt: u32,
) -> StoreResult<Option<Task>> {
    let query = sqlx::query(SQL_FINISH_CANCELLED)
        .bind(id)
        .bind(i64::from(attempt));
    Ok(store.write_one(query, true).await?.map(|(_, t)| t))
}

const SQL_FAIL_WAITING: &str = notifying!(
    "UPDATE tasks SET status = 'FAILED', finished_at = statement_timestamp(), \
       error_code = $1, error_message = $2, updated_at = statement_timestamp(), \
       progress_percent = NULL, progress_message = NULL, progress_preview = NULL \
     WHERE id IN (SELECT id FROM tasks \
                  WHERE status = 'PENDING' AND task_type = $3 AND run_at <= $4 \
                  FOR UPDATE SKIP LOCKED)",
    "'failed'"
);

/// [`TaskStore::fail_waiting`](crate::store::TaskStore::fail_waiting).
pub(super) async fn fail_waiting(
    store: &PostgresStore,
    task_type: &str,
    due_before: DateTime<Utc>,
    error: TaskError,
) -> StoreResult<Vec<Task>> {
    let query = sqlx::query(SQL_FAIL_WAITING)
        .bind(clean_text(&error.code))
        .bind(clean_text(&error.message))
        .bind(task_type.to_owned())
        .bind(due_before);
    let mut changed = store.write(query, true).await?;
    changed.sort_by_key(|(_, t)| t.id);
    for (kind, task) in &changed {
        store.publish(*kind, task);
    }
    Ok(changed.into_iter().map(|(_, task)| task).collect())
}
