//! Claims and the life of a running attempt in the SQLite store: claiming (select and update in
//! one statement), lease renewal, progress, and the rescue of expired leases. Separate because
//! these are the frequent, non-durable writes of the dispatcher.

use std::{cmp::Reverse, time::Duration};

use uuid::Uuid;

use super::{
    SqliteStore,
    group_commit::WriteQuery,
    schema::{duration_ms, now_ms, task_columns},
};
use crate::store::{EventKind, Progress, Status, StoreResult, Task, sql::clean_percent};

/// `INDEXED BY` pins the partial claim index (covering, in claim order): the planner, without
/// statistics, could otherwise pick `tasks_status_id` and sort every PENDING row.
pub(super) const SQL_CLAIM: &str = concat!(
    "UPDATE tasks SET status = 'PROCESSING', attempts = attempts + 1, started_at = ?1, \
     worker = ?2, lease_until = ?3, progress_percent = NULL, progress_message = NULL, \
     progress_preview = NULL, \
     error_code = NULL, error_message = NULL \
     WHERE id IN (SELECT id FROM tasks INDEXED BY tasks_claim \
                  WHERE status = 'PENDING' AND task_type = ?4 AND run_at <= ?1 \
                  ORDER BY priority DESC, id LIMIT {limit}) \
     RETURNING ",
    task_columns!()
);

const SQL_RENEW: &str = "UPDATE tasks SET lease_until = ?1 \
     WHERE id = ?2 AND status = 'PROCESSING' AND attempts = ?3 AND worker = ?4";

const SQL_PROGRESS: &str = concat!(
    "UPDATE tasks SET progress_percent = ?1, progress_message = ?2, \
     progress_preview = COALESCE(?5, progress_preview) \
     WHERE id = ?3 AND status = 'PROCESSING' AND attempts = ?4 \
     RETURNING ",
    task_columns!()
);

/// Expired leases: CANCELLED if a cancel was requested, FAILED `lease_expired` without attempts
/// left, else back to PENDING (claimable at once) with `lease_expired` as the last error.
/// `?1`: now; `?2`: the code [`LEASE_EXPIRED`](crate::error_codes::LEASE_EXPIRED).
pub(super) const SQL_RESCUE: &str = concat!(
    "UPDATE tasks SET \
       status = CASE WHEN cancel_requested = 1 THEN 'CANCELLED' \
                     WHEN attempts >= max_attempts THEN 'FAILED' \
                     ELSE 'PENDING' END, \
       finished_at = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN ?1 \
                          ELSE NULL END, \
       run_at = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN run_at \
                     ELSE ?1 END, \
       worker = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN worker \
                     ELSE NULL END, \
       error_code = CASE WHEN cancel_requested = 1 THEN error_code ELSE ?2 END, \
       error_message = CASE WHEN cancel_requested = 1 THEN error_message \
                            ELSE 'the worker running attempt ' || attempts || \
                                 ' stopped renewing its lease' END, \
       lease_until = NULL, progress_percent = NULL, progress_message = NULL, \
       progress_preview = NULL \
     WHERE status = 'PROCESSING' AND lease_until < ?1 \
     RETURNING ",
    task_columns!()
);

/// [`TaskStore::claim`](crate::store::TaskStore::claim).
pub(super) async fn claim(
    store: &SqliteStore,
    task_type: &str,
    worker: &str,
    lease: Duration,
    limit: u32,
) -> StoreResult<Vec<Task>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let query = WriteQuery::new(super::schema::limited(SQL_CLAIM, limit).0)
        .bind(now)
        .bind(worker.to_owned())
        .bind(now.saturating_add(duration_ms(lease)))
        .bind(task_type.to_owned());
    let mut tasks = store.write_tasks_lazy(query).await?;
    // RETURNING gives no order; hand them out in claim order.
    tasks.sort_by_key(|t| (Reverse(t.priority), t.id));
    for task in &tasks {
        store.publish(EventKind::Started, task);
    }
    Ok(tasks)
}

/// [`TaskStore::renew`](crate::store::TaskStore::renew).
pub(super) async fn renew(
    store: &SqliteStore,
    id: Uuid,
    attempt: u32,
    worker: &str,
    lease: Duration,
) -> StoreResult<bool> {
    let query = WriteQuery::new(SQL_RENEW)
        .bind(now_ms().saturating_add(duration_ms(lease)))
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .bind(worker.to_owned());
    Ok(store.execute(query, false).await? == 1)
}

/// [`TaskStore::set_progress`](crate::store::TaskStore::set_progress).
pub(super) async fn set_progress(
    store: &SqliteStore,
    id: Uuid,
    attempt: u32,
    progress: Progress,
) -> StoreResult<bool> {
    // SQLite stores NaN as NULL: keep the value in range and defined.
    let percent = clean_percent(progress.percent);
    let kind = if progress.preview.is_some() {
        EventKind::Preview
    } else {
        EventKind::Progress
    };
    let query = WriteQuery::new(SQL_PROGRESS)
        .bind(f64::from(percent))
        .bind(progress.message)
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .bind(crate::store::sql::preview_text(progress.preview.as_ref()));
    match store.write_tasks_lazy(query).await?.into_iter().next() {
        Some(task) => {
            store.publish(kind, &task);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// [`TaskStore::rescue_expired`](crate::store::TaskStore::rescue_expired).
pub(super) async fn rescue_expired(store: &SqliteStore) -> StoreResult<Vec<Task>> {
    let mut tasks = store
        .write_tasks_lazy(
            WriteQuery::new(SQL_RESCUE)
                .bind(now_ms())
                .bind(crate::error_codes::LEASE_EXPIRED.to_owned()),
        )
        .await?;
    tasks.sort_by_key(|t| t.id);
    for task in &tasks {
        crate::metrics::task_rescued(
            &task.task_type,
            task.status.as_str(),
            crate::error_codes::LEASE_EXPIRED,
        );
        let kind = match task.status {
            Status::Cancelled => EventKind::Cancelled,
            Status::Failed => EventKind::Failed,
            _ => EventKind::Retrying,
        };
        store.publish(kind, task);
    }
    Ok(tasks)
}
