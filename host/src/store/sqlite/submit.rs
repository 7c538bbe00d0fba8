//! Submission to the SQLite store: the insert of a new task, deduplicated by idempotency key.
//! Separate from the state changes of running tasks, which never create a row.

use super::{
    SqliteStore,
    group_commit::WriteQuery,
    schema::{now_ms, task_columns, task_from_row},
};
use crate::store::{
    EventKind, NewTask, StoreError, StoreResult, Task,
    sql::{db_err, keyed_existing, to_json},
};

const SQL_INSERT: &str = concat!(
    "INSERT INTO tasks (id, task_type, status, input, priority, attempts, max_attempts, \
     created_at, run_at, idempotency_key, webhook_url, cancel_requested, trace_parent, \
     timeout_secs, request_hash, webhook_events) \
     VALUES (?1, ?2, 'PENDING', ?3, ?4, 0, ?5, ?6, ?6, ?7, ?8, 0, ?9, ?10, ?11, ?12) \
     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
     RETURNING ",
    task_columns!()
);

const SQL_GET_BY_KEY: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE idempotency_key = ?1"
);

/// [`TaskStore::insert`](crate::store::TaskStore::insert).
pub(super) async fn insert(store: &SqliteStore, task: NewTask) -> StoreResult<(Task, bool)> {
    let now = now_ms();
    let input = to_json(&task.input)?;
    let query = WriteQuery::new(SQL_INSERT)
        .bind(task.id.to_string())
        .bind(task.task_type)
        .bind(input)
        .bind(task.priority)
        .bind(i64::from(task.max_attempts.max(1)))
        .bind(now)
        .bind(task.idempotency_key.clone())
        .bind(task.webhook_url)
        .bind(task.trace_parent)
        .bind(task.timeout_secs.map(i64::from))
        .bind(task.request_hash.clone())
        .bind(task.webhook_events);
    if let Some(created) = store.write_task(query).await? {
        store.publish(EventKind::Created, &created);
        return Ok((created, true));
    }
    // Only the idempotency key can conflict without an error: the task with that key
    // exists and was committed before our statement ran.
    let key = task.idempotency_key.ok_or_else(|| {
        StoreError::Corrupt("insert returned no row without an idempotency key".into())
    })?;
    let row = sqlx::query(SQL_GET_BY_KEY)
        .bind(key)
        .fetch_optional(&store.reader)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::Corrupt("idempotency conflict but no such task".into()))?;
    keyed_existing(task_from_row(&row)?, task.request_hash.as_deref())
}
