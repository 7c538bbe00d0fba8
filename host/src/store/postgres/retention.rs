//! Retention in the PostgreSQL store: pruning finished tasks in bounded batches, deleting one
//! finished task, and the question the uploads pruner asks (is an upload named by a live
//! task?). Separate because these are the only statements that remove rows. Deletes are
//! idempotent, so several processes may prune at once (a row another one deleted first is
//! simply not returned).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{PostgresStore, read::get_task, schema::task_from_row};
use crate::store::{
    DeleteOutcome, Status, StoreResult,
    sql::{count, db_err},
};

/// Oldest first by id (UUIDv7: creation order), through `tasks_status_id`, so a batch stops
/// after `$3` rows; rows locked by another pruner are skipped.
const SQL_PRUNE: &str = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
       WHERE status = $1 AND finished_at < $2 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
     RETURNING row_to_json(tasks)::text AS j";

const SQL_COUNT_PRUNABLE: &str =
    "SELECT COUNT(*) AS n FROM tasks WHERE status = $1 AND finished_at < $2";

const SQL_DELETE: &str = "DELETE FROM tasks \
     WHERE id = $1 AND status IN ('COMPLETED', 'FAILED', 'CANCELLED') \
     RETURNING row_to_json(tasks)::text AS j";

const SQL_MENTIONS: &str = "SELECT COUNT(*) AS n FROM (SELECT 1 FROM tasks \
     WHERE status IN ('PENDING', 'PROCESSING') AND strpos(input, $1) > 0 LIMIT 1) m";

/// [`TaskStore::prune`](crate::store::TaskStore::prune).
pub(super) async fn prune(
    store: &PostgresStore,
    status: Status,
    before: DateTime<Utc>,
    limit: u32,
) -> StoreResult<Vec<Uuid>> {
    if !status.is_terminal() || limit == 0 {
        return Ok(Vec::new());
    }
    let query = sqlx::query(SQL_PRUNE)
        .bind(status.as_str())
        .bind(before)
        .bind(i64::from(limit));
    let rows = store.write_rows(query, true).await?;
    rows.iter()
        .map(|row| task_from_row(row).map(|t| t.id))
        .collect()
}

/// [`TaskStore::count_prunable`](crate::store::TaskStore::count_prunable).
pub(super) async fn count_prunable(
    store: &PostgresStore,
    status: Status,
    before: DateTime<Utc>,
) -> StoreResult<u64> {
    if !status.is_terminal() {
        return Ok(0);
    }
    let row = sqlx::query(SQL_COUNT_PRUNABLE)
        .bind(status.as_str())
        .bind(before)
        .fetch_one(&store.inner.pool)
        .await
        .map_err(db_err)?;
    count(&row)
}

/// [`TaskStore::delete`](crate::store::TaskStore::delete).
pub(super) async fn delete(store: &PostgresStore, id: Uuid) -> StoreResult<DeleteOutcome> {
    let rows = store
        .write_rows(sqlx::query(SQL_DELETE).bind(id), true)
        .await?;
    if let Some(row) = rows.first() {
        return Ok(DeleteOutcome::Deleted(task_from_row(row)?));
    }
    Ok(match get_task(&store.inner.pool, id).await? {
        Some(task) => DeleteOutcome::Live(task),
        None => DeleteOutcome::NotFound,
    })
}

/// [`TaskStore::live_input_mentions`](crate::store::TaskStore::live_input_mentions).
pub(super) async fn live_input_mentions(store: &PostgresStore, needle: &str) -> StoreResult<bool> {
    let row = sqlx::query(SQL_MENTIONS)
        .bind(needle.to_owned())
        .fetch_one(&store.inner.pool)
        .await
        .map_err(db_err)?;
    Ok(count(&row)? > 0)
}
