//! The end of an attempt in the SQLite store: completion, failure (retry or final), release at
//! shutdown, a client's cancel and its completion by the worker. Separate because these are
//! the durable, exactly-once transitions, each guarded by the attempt number.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{
    SqliteStore,
    group_commit::WriteQuery,
    read,
    schema::{now_ms, task_columns},
};
use crate::store::{
    CancelOutcome, EventKind, RetryOutcome, Status, StoreResult, Task, TaskError, sql::to_json,
};

const SQL_COMPLETE: &str = concat!(
    "UPDATE tasks SET status = 'COMPLETED', result = ?1, finished_at = ?2, lease_until = NULL, \
     error_code = NULL, error_message = NULL, progress_preview = NULL \
     WHERE id = ?3 AND status = 'PROCESSING' AND attempts = ?4 \
     RETURNING ",
    task_columns!()
);

/// Retried (`?3` = retry_at) when a retry is asked for, attempts remain and no cancel was
/// requested; otherwise FAILED. `SET` expressions read the row's old values.
const SQL_FAIL: &str = concat!(
    "UPDATE tasks SET \
       status = CASE WHEN (?3 IS NOT NULL AND attempts < max_attempts AND cancel_requested = 0) \
                     THEN 'PENDING' ELSE 'FAILED' END, \
       run_at = CASE WHEN (?3 IS NOT NULL AND attempts < max_attempts AND cancel_requested = 0) \
                     THEN ?3 ELSE run_at END, \
       finished_at = CASE WHEN (?3 IS NOT NULL AND attempts < max_attempts AND cancel_requested = 0) \
                          THEN NULL ELSE ?4 END, \
       worker = CASE WHEN (?3 IS NOT NULL AND attempts < max_attempts AND cancel_requested = 0) \
                     THEN NULL ELSE worker END, \
       lease_until = NULL, error_code = ?5, error_message = ?6, \
       progress_percent = NULL, progress_message = NULL, progress_preview = NULL \
     WHERE id = ?1 AND status = 'PROCESSING' AND attempts = ?2 \
     RETURNING ",
    task_columns!()
);

/// A released attempt of a task whose cancel was requested ends CANCELLED rather than going
/// back to the queue (it would otherwise run again and the cancel be lost).
const SQL_RELEASE: &str = concat!(
    "UPDATE tasks SET \
       status = CASE WHEN cancel_requested = 1 THEN 'CANCELLED' ELSE 'PENDING' END, \
       attempts = CASE WHEN cancel_requested = 1 THEN attempts ELSE attempts - 1 END, \
       run_at = CASE WHEN cancel_requested = 1 THEN run_at ELSE MAX(?1, created_at + 1) END, \
       finished_at = CASE WHEN cancel_requested = 1 THEN ?1 ELSE NULL END, \
       worker = CASE WHEN cancel_requested = 1 THEN worker ELSE NULL END, \
       lease_until = NULL, progress_percent = NULL, progress_message = NULL, progress_preview = NULL \
     WHERE id = ?2 AND status = 'PROCESSING' AND attempts = ?3 \
     RETURNING ",
    task_columns!()
);

const SQL_CANCEL: &str = concat!(
    "UPDATE tasks SET \
       status = CASE WHEN status = 'PENDING' THEN 'CANCELLED' ELSE status END, \
       finished_at = CASE WHEN status = 'PENDING' THEN ?1 ELSE finished_at END, \
       cancel_requested = CASE WHEN status = 'PROCESSING' THEN 1 ELSE cancel_requested END, \
       progress_percent = CASE WHEN status = 'PENDING' THEN NULL ELSE progress_percent END, \
       progress_message = CASE WHEN status = 'PENDING' THEN NULL ELSE progress_message END, \
       progress_preview = CASE WHEN status = 'PENDING' THEN NULL ELSE progress_preview END \
     WHERE id = ?2 AND status IN ('PENDING', 'PROCESSING') \
     RETURNING ",
    task_columns!()
);

const SQL_FINISH_CANCELLED: &str = concat!(
    "UPDATE tasks SET status = 'CANCELLED', finished_at = ?1, lease_until = NULL, \
     progress_percent = NULL, progress_message = NULL, progress_preview = NULL \
     WHERE id = ?2 AND status = 'PROCESSING' AND attempts = ?3 \
     RETURNING ",
    task_columns!()
);

/// A finished (FAILED or CANCELLED) task back to the queue with `?1` more attempts.
const SQL_RETRY: &str = concat!(
    "UPDATE tasks SET status = 'PENDING', max_attempts = attempts + ?1, run_at = ?2, \
       finished_at = NULL, worker = NULL, lease_until = NULL, cancel_requested = 0, \
       result = NULL, error_code = NULL, error_message = NULL, \
       progress_percent = NULL, progress_message = NULL, progress_preview = NULL \
     WHERE id = ?3 AND status IN ('FAILED', 'CANCELLED') \
     RETURNING ",
    task_columns!()
);

/// [`TaskStore::retry`](crate::store::TaskStore::retry).
pub(super) async fn retry(store: &SqliteStore, id: Uuid, budget: u32) -> StoreResult<RetryOutcome> {
    let query = WriteQuery::new(SQL_RETRY)
        .bind(i64::from(budget.max(1)))
        .bind(now_ms())
        .bind(id.to_string());
    if let Some(task) = store.write_task(query).await? {
        store.publish(EventKind::Retrying, &task);
        return Ok(RetryOutcome::Retried(task));
    }
    Ok(match read::get(store, id).await? {
        Some(task) => RetryOutcome::NotRetryable(task),
        None => RetryOutcome::NotFound,
    })
}

/// [`TaskStore::complete`](crate::store::TaskStore::complete).
pub(super) async fn complete(
    store: &SqliteStore,
    id: Uuid,
    attempt: u32,
    result: Value,
) -> StoreResult<Option<Task>> {
    let query = WriteQuery::new(SQL_COMPLETE)
        .bind(to_json(&result)?)
        .bind(now_ms())
        .bind(id.to_string())
        .bind(i64::from(attempt));
    let task = store.write_task(query).await?;
    if let Some(task) = &task {
        store.publish(EventKind::Completed, task);
    }
    Ok(task)
}

/// [`TaskStore::fail`](crate::store::TaskStore::fail).
pub(super) async fn fail(
    store: &SqliteStore,
    id: Uuid,
    attempt: u32,
    error: TaskError,
    retry_at: Option<DateTime<Utc>>,
) -> StoreResult<Option<Task>> {
    let query = WriteQuery::new(SQL_FAIL)
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .bind(retry_at.map(|t| t.timestamp_millis()))
        .bind(now_ms())
        .bind(error.code)
        .bind(error.message);
    let task = store.write_task(query).await?;
    if let Some(task) = &task {
        let kind = if task.status == Status::Pending {
            EventKind::Retrying
        } else {
            EventKind::Failed
        };
        store.publish(kind, task);
    }
    Ok(task)
}

/// [`TaskStore::release`](crate::store::TaskStore::release).
pub(super) async fn release(store: &SqliteStore, id: Uuid, attempt: u32) -> StoreResult<bool> {
    let query = WriteQuery::new(SQL_RELEASE)
        .bind(now_ms())
        .bind(id.to_string())
        .bind(i64::from(attempt));
    match store.write_task(query).await? {
        Some(task) => {
            let kind = if task.status == Status::Cancelled {
                EventKind::Cancelled
            } else {
                EventKind::Retrying
            };
            store.publish(kind, &task);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// [`TaskStore::cancel`](crate::store::TaskStore::cancel).
pub(super) async fn cancel(store: &SqliteStore, id: Uuid) -> StoreResult<CancelOutcome> {
    let query = WriteQuery::new(SQL_CANCEL)
        .bind(now_ms())
        .bind(id.to_string());
    if let Some(task) = store.write_task(query).await? {
        return Ok(if task.status == Status::Cancelled {
            store.publish(EventKind::Cancelled, &task);
            CancelOutcome::Cancelled(task)
        } else {
            store.publish(EventKind::CancelRequested, &task);
            CancelOutcome::Requested(task)
        });
    }
    // Nothing was PENDING or PROCESSING with that id: it is unknown or terminal, and a
    // terminal state never changes again.
    Ok(match read::get(store, id).await? {
        Some(task) => CancelOutcome::AlreadyFinished(task),
        None => CancelOutcome::NotFound,
    })
}

/// [`TaskStore::finish_cancelled`](crate::store::TaskStore::finish_cancelled).
pub(super) async fn finish_cancelled(
    store: &SqliteStore,
    id: Uuid,
    attempt: u32,
) -> StoreResult<Option<Task>> {
    let query = WriteQuery::new(SQL_FINISH_CANCELLED)
        .bind(now_ms())
        .bind(id.to_string())
        .bind(i64::from(attempt));
    let task = store.write_task(query).await?;
    if let Some(task) = &task {
        store.publish(EventKind::Cancelled, task);
    }
    Ok(task)
}

const SQL_FAIL_WAITING: &str = concat!(
    "UPDATE tasks SET status = 'FAILED', finished_at = ?1, error_code = ?2, error_message = ?3, \
       progress_percent = NULL, progress_message = NULL, progress_preview = NULL \
     WHERE status = 'PENDING' AND task_type = ?4 AND run_at <= ?5 \
     RETURNING ",
    task_columns!()
);

/// [`TaskStore::fail_waiting`](crate::store::TaskStore::fail_waiting).
pub(super) async fn fail_waiting(
    store: &SqliteStore,
    task_type: &str,
    due_before: DateTime<Utc>,
    error: TaskError,
) -> StoreResult<Vec<Task>> {
    let query = WriteQuery::new(SQL_FAIL_WAITING)
        .bind(now_ms())
        .bind(error.code)
        .bind(error.message)
        .bind(task_type.to_owned())
        .bind(due_before.timestamp_millis());
    let mut tasks = store.write_rows(query, true).await?;
    tasks.sort_by_key(|t| t.id);
    for task in &tasks {
        store.publish(EventKind::Failed, task);
    }
    Ok(tasks)
}
