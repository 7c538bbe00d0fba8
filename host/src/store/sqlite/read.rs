//! Reads of the SQLite store: one task, pages of tasks, statistics and queue depths, and the
//! health check. Separate because none of it writes: it runs on the read-only pool, never
//! waiting for the writer.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use uuid::Uuid;

use super::{
    SqliteStore,
    schema::{task_columns, task_from_row},
};
use crate::store::{
    ListFilter, Page, Stats, StoreResult, Task,
    sql::{
        PERCENTILE_SAMPLE, PageBuilder, column, count, db_err, decode_cursor, page_size,
        type_status_count,
    },
};

const SQL_GET: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");

const SQL_GET_BY_KEY: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE idempotency_key = ?1"
);

const SQL_COUNTS: &str =
    "SELECT task_type, status, COUNT(*) AS n FROM tasks GROUP BY task_type, status";

const SQL_DURATIONS: &str = "SELECT finished_at - started_at AS ms FROM tasks \
     WHERE status = 'COMPLETED' AND started_at IS NOT NULL AND finished_at IS NOT NULL \
     ORDER BY id DESC LIMIT {limit}";

/// Counted from the partial claim index alone (see [`SQL_CLAIM`](super::claim::SQL_CLAIM)).
pub(super) const SQL_PENDING_BY_TYPE: &str = "SELECT task_type, COUNT(*) AS n FROM tasks INDEXED BY tasks_claim \
     WHERE status = 'PENDING' GROUP BY task_type";

/// [`TaskStore::get`](crate::store::TaskStore::get).
pub(super) async fn get(store: &SqliteStore, id: Uuid) -> StoreResult<Option<Task>> {
    if let Some(answer) = store.inline.get(id) {
        return answer;
    }
    let row = sqlx::query(SQL_GET)
        .bind(id.to_string())
        .fetch_optional(&store.reader)
        .await
        .map_err(db_err)?;
    row.as_ref().map(task_from_row).transpose()
}

/// [`TaskStore::get_by_idempotency_key`](crate::store::TaskStore::get_by_idempotency_key)
/// (the unique partial index on the key serves it).
pub(super) async fn get_by_idempotency_key(
    store: &SqliteStore,
    key: &str,
) -> StoreResult<Option<Task>> {
    let row = sqlx::query(SQL_GET_BY_KEY)
        .bind(key)
        .fetch_optional(&store.reader)
        .await
        .map_err(db_err)?;
    row.as_ref().map(task_from_row).transpose()
}

/// [`TaskStore::list`](crate::store::TaskStore::list).
pub(super) async fn list(store: &SqliteStore, filter: ListFilter) -> StoreResult<Page> {
    let limit = page_size(filter.limit);
    let cursor = filter.cursor.as_deref().map(decode_cursor).transpose()?;

    let mut conditions = Vec::with_capacity(3);
    if filter.status.is_some() {
        conditions.push("status = ?");
    }
    if filter.task_type.is_some() {
        conditions.push("task_type = ?");
    }
    if cursor.is_some() {
        conditions.push("id < ?");
    }
    let columns = if filter.without_input {
        task_columns!().replacen(", input,", ", 'null' AS input,", 1)
    } else {
        task_columns!().to_owned()
    };
    let mut sql = format!("SELECT {columns} FROM tasks");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY id DESC LIMIT {limit}");

    // The SQL text varies in its structure and its limit (written, see `schema::limited`);
    // every other value is bound.
    let mut query = sqlx::query(super::schema::limited(&sql, i64::from(limit) + 1));
    if let Some(status) = filter.status {
        query = query.bind(status.as_str());
    }
    if let Some(task_type) = filter.task_type {
        query = query.bind(task_type);
    }
    if let Some(cursor) = cursor {
        query = query.bind(cursor.to_string());
    }

    // Row by row, so that a page cut by the input budget reads no further.
    let mut page = PageBuilder::new(limit, filter.input_budget.filter(|_| !filter.without_input));
    let mut rows = query.fetch(&store.reader);
    while let Some(row) = rows.try_next().await.map_err(db_err)? {
        if !page.push(task_from_row(&row)?) {
            break;
        }
    }
    Ok(page.finish())
}

/// [`TaskStore::stats`](crate::store::TaskStore::stats).
pub(super) async fn stats(store: &SqliteStore) -> StoreResult<Stats> {
    let rows = sqlx::query(SQL_COUNTS)
        .fetch_all(&store.reader)
        .await
        .map_err(db_err)?;
    let counts = rows
        .iter()
        .map(type_status_count)
        .collect::<StoreResult<Vec<_>>>()?;
    let mut stats = Stats::from_counts(counts);

    let rows = sqlx::query(super::schema::limited(SQL_DURATIONS, PERCENTILE_SAMPLE))
        .fetch_all(&store.reader)
        .await
        .map_err(db_err)?;
    let mut durations = rows
        .iter()
        .map(|r| column::<i64, _>(r, "ms"))
        .collect::<StoreResult<Vec<_>>>()?;
    durations.sort_unstable();
    stats.processing_ms_p50 = percentile(&durations, 50.0);
    stats.processing_ms_p95 = percentile(&durations, 95.0);
    stats.processing_ms_p99 = percentile(&durations, 99.0);
    Ok(stats)
}

/// [`TaskStore::pending_by_type`](crate::store::TaskStore::pending_by_type).
pub(super) async fn pending_by_type(store: &SqliteStore) -> StoreResult<BTreeMap<String, u64>> {
    let rows = sqlx::query(SQL_PENDING_BY_TYPE)
        .fetch_all(&store.reader)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| Ok((column(row, "task_type")?, count(row)?)))
        .collect()
}

/// [`TaskStore::ping`](crate::store::TaskStore::ping).
pub(super) async fn ping(store: &SqliteStore) -> StoreResult<()> {
    sqlx::query("SELECT 1")
        .execute(&store.reader)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Nearest-rank percentile of sorted values.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "the rank is a positive whole number below the sample size, clamped below"
)]
pub(super) fn percentile(sorted: &[i64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64)
}
