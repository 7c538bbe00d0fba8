//! Retention in the SQLite store: pruning finished tasks in bounded batches, deleting one
//! finished task, and the question the uploads pruner asks (is an upload named by a live
//! task?). Separate because these are the only statements that remove rows.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{SqliteStore, group_commit::WriteQuery, read, schema::task_columns};
use crate::store::{
    DeleteOutcome, Status, StoreResult,
    sql::{count, db_err},
};

/// Oldest first by id (UUIDv7: creation order), through `tasks_status_id`, so a batch stops
/// after `{limit}` rows (written into the SQL: `schema::limited`). `?1`: status; `?2`: cutoff
/// (ms).
const SQL_PRUNE: &str = concat!(
    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
       WHERE status = ?1 AND finished_at < ?2 ORDER BY id LIMIT {limit}) \
     RETURNING ",
    task_columns!()
);

const SQL_COUNT_PRUNABLE: &str =
    "SELECT COUNT(*) AS n FROM tasks WHERE status = ?1 AND finished_at < ?2";

const SQL_DELETE: &str = concat!(
    "DELETE FROM tasks WHERE id = ?1 AND status IN ('COMPLETED', 'FAILED', 'CANCELLED') \
     RETURNING ",
    task_columns!()
);

const SQL_MENTIONS: &str = "SELECT COUNT(*) AS n FROM (SELECT 1 FROM tasks \
     WHERE status IN ('PENDING', 'PROCESSING') AND instr(input, ?1) > 0 LIMIT 1)";

/// [`TaskStore::prune`](crate::store::TaskStore::prune).
pub(super) async fn prune(
    store: &SqliteStore,
    status: Status,
    before: DateTime<Utc>,
    limit: u32,
) -> StoreResult<Vec<Uuid>> {
    if !status.is_terminal() || limit == 0 {
        return Ok(Vec::new());
    }
    let query = WriteQuery::new(super::schema::limited(SQL_PRUNE, limit).0)
        .bind(status.as_str().to_owned())
        .bind(before.timestamp_millis());
    Ok(store
        .write_tasks(query)
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect())
}

/// [`TaskStore::count_prunable`](crate::store::TaskStore::count_prunable).
pub(super) async fn count_prunable(
    store: &SqliteStore,
    status: Status,
    before: DateTime<Utc>,
) -> StoreResult<u64> {
    if !status.is_terminal() {
        return Ok(0);
    }
    let row = sqlx::query(SQL_COUNT_PRUNABLE)
        .bind(status.as_str())
        .bind(before.timestamp_millis())
        .fetch_one(&store.reader)
        .await
        .map_err(db_err)?;
    count(&row)
}

/// [`TaskStore::delete`](crate::store::TaskStore::delete).
pub(super) async fn delete(store: &SqliteStore, id: Uuid) -> StoreResult<DeleteOutcome> {
    let query = WriteQuery::new(SQL_DELETE).bind(id.to_string());
    if let Some(task) = store.write_task(query).await? {
        return Ok(DeleteOutcome::Deleted(task));
    }
    Ok(match read::get(store, id).await? {
        Some(task) => DeleteOutcome::Live(task),
        None => DeleteOutcome::NotFound,
    })
}

/// [`TaskStore::live_input_mentions`](crate::store::TaskStore::live_input_mentions).
pub(super) async fn live_input_mentions(store: &SqliteStore, needle: &str) -> StoreResult<bool> {
    let row = sqlx::query(SQL_MENTIONS)
        .bind(needle.to_owned())
        .fetch_one(&store.reader)
        .await
        .map_err(db_err)?;
    Ok(count(&row)? > 0)
}
