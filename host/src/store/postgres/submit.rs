//! Submission to the PostgreSQL store: the insert of a new task (deduplicated by idempotency
//! key) and the import of tasks as they are (`aihost store migrate`). Separate from the state
//! changes of running tasks, which never create a row.

use super::{
    PostgresStore,
    events::notifying,
    schema::{clean_text, task_from_row},
};
use crate::store::{
    NewTask, StoreError, StoreResult, Task,
    sql::{clean_percent, db_err, keyed_existing, to_json},
};

const SQL_INSERT: &str = notifying!(
    "INSERT INTO tasks (id, task_type, status, input, priority, attempts, max_attempts, \
     created_at, run_at, idempotency_key, webhook_url, cancel_requested, updated_at, \
     trace_parent, timeout_secs, request_hash, webhook_events) \
     VALUES ($1, $2, 'PENDING', $3, $4, 0, $5, statement_timestamp(), statement_timestamp(), \
             $6, $7, false, statement_timestamp(), $8, $9, $10, $11) \
     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    "'created'"
);

const SQL_GET_BY_KEY: &str =
    "SELECT row_to_json(tasks)::text AS j FROM tasks WHERE idempotency_key = $1";

/// Copies a task as it is (`aihost store migrate`); an existing id or idempotency key is
/// skipped.
const SQL_IMPORT: &str = "INSERT INTO tasks (id, task_type, status, input, priority, attempts, \
     max_attempts, progress_percent, progress_message, result, error_code, error_message, \
     created_at, started_at, finished_at, run_at, idempotency_key, webhook_url, worker, \
     lease_until, cancel_requested, trace_parent, timeout_secs, request_hash, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
             $19, $20, $21, $22, $23, $24, now()) \
     ON CONFLICT DO NOTHING";

/// [`TaskStore::insert`](crate::store::TaskStore::insert).
pub(super) async fn insert(store: &PostgresStore, task: NewTask) -> StoreResult<(Task, bool)> {
    let key = task.idempotency_key.as_deref().map(clean_text);
    let query = sqlx::query(SQL_INSERT)
        .bind(task.id)
        .bind(clean_text(&task.task_type))
        .bind(to_json(&task.input)?)
        .bind(task.priority)
        .bind(i64::from(task.max_attempts.max(1)))
        .bind(key.clone())
        .bind(task.webhook_url.as_deref().map(clean_text))
        .bind(task.trace_parent.as_deref().map(clean_text))
        .bind(task.timeout_secs.map(i64::from))
        .bind(task.request_hash.as_deref().map(clean_text))
        .bind(task.webhook_events.as_deref().map(clean_text));
    if let Some((_, created)) = store.write_one(query, true).await? {
        return Ok((created, true));
    }
    // Only the idempotency key can conflict without an error: the task with that key
    // exists and was committed before our statement finished.
    let key = key.ok_or_else(|| {
        StoreError::Corrupt("insert returned no row without an idempotency key".into())
    })?;
    let row = sqlx::query(SQL_GET_BY_KEY)
        .bind(key)
        .fetch_optional(&store.inner.pool)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::Corrupt("idempotency conflict but no such task".into()))?;
    keyed_existing(task_from_row(&row)?, task.request_hash.as_deref())
}

impl PostgresStore {
    /// Copies tasks as they are (every field, the state included) in one transaction; tasks
    /// whose id or idempotency key exists already are skipped. Answers how many were inserted.
    /// Publishes no events: this is for `aihost store migrate`.
    pub(crate) async fn import(&self, tasks: &[Task]) -> StoreResult<u64> {
        let mut tx = self.inner.pool.begin().await.map_err(db_err)?;
        let mut inserted = 0;
        for t in tasks {
            let done = sqlx::query(SQL_IMPORT)
                .bind(t.id)
                .bind(&t.task_type)
                .bind(t.status.as_str())
                .bind(to_json(&t.input)?)
                .bind(t.priority)
                .bind(i64::from(t.attempts))
                .bind(i64::from(t.max_attempts.max(1)))
                .bind(
                    t.progress
                        .as_ref()
                        .map(|p| f64::from(clean_percent(p.percent))),
                )
                .bind(t.progress.as_ref().map(|p| clean_text(&p.message)))
                .bind(t.result.as_ref().map(to_json).transpose()?)
                .bind(t.error.as_ref().map(|e| clean_text(&e.code)))
                .bind(t.error.as_ref().map(|e| clean_text(&e.message)))
                .bind(t.created_at)
                .bind(t.started_at)
                .bind(t.finished_at)
                .bind(t.run_at)
                .bind(t.idempotency_key.as_deref().map(clean_text))
                .bind(t.webhook_url.as_deref().map(clean_text))
                .bind(t.worker.as_deref().map(clean_text))
                .bind(t.lease_until)
                .bind(t.cancel_requested)
                .bind(t.trace_parent.as_deref().map(clean_text))
                .bind(t.timeout_secs.map(i64::from))
                .bind(t.request_hash.as_deref().map(clean_text))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            inserted += done.rows_affected();
        }
        tx.commit().await.map_err(db_err)?;
        Ok(inserted)
    }
}
