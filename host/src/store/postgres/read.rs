//! Reads of the PostgreSQL store: one task, pages of tasks, statistics and queue depths, and
//! the health check. Separate because none of it writes: it runs on the pool directly, outside
//! the group commit.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use sqlx::{AssertSqlSafe, postgres::PgPool};
use uuid::Uuid;

use super::{PostgresStore, schema::task_from_row};
use crate::store::{
    ListFilter, Page, Stats, StoreResult, Task,
    sql::{
        PERCENTILE_SAMPLE, PageBuilder, column, count, db_err, decode_cursor, page_size,
        type_status_count,
    },
};

const SQL_GET: &str = "SELECT row_to_json(tasks)::text AS j FROM tasks WHERE id = $1";

const SQL_GET_BY_KEY: &str =
    "SELECT row_to_json(tasks)::text AS j FROM tasks WHERE idempotency_key = $1";

const SQL_COUNTS: &str =
    "SELECT task_type, status, COUNT(*) AS n FROM tasks GROUP BY task_type, status";

/// Nearest-rank percentiles (`percentile_disc`) of the most recent completed tasks.
const SQL_PERCENTILES: &str = "SELECT \
       percentile_disc(0.50) WITHIN GROUP (ORDER BY ms) AS p50, \
       percentile_disc(0.95) WITHIN GROUP (ORDER BY ms) AS p95, \
       percentile_disc(0.99) WITHIN GROUP (ORDER BY ms) AS p99 \
     FROM (SELECT (EXTRACT(EPOCH FROM finished_at - started_at) * 1000)::float8 AS ms \
           FROM tasks \
           WHERE status = 'COMPLETED' AND started_at IS NOT NULL AND finished_at IS NOT NULL \
           ORDER BY id DESC LIMIT $1) d";

const SQL_PENDING_BY_TYPE: &str =
    "SELECT task_type, COUNT(*) AS n FROM tasks WHERE status = 'PENDING' GROUP BY task_type";

/// One task by id (also what events of too-big tasks are re-read with).
pub(super) async fn get_task(pool: &PgPool, id: Uuid) -> StoreResult<Option<Task>> {
    let row = sqlx::query(SQL_GET)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(task_from_row).transpose()
}

/// [`TaskStore::get_by_idempotency_key`](crate::store::TaskStore::get_by_idempotency_key)
/// (the unique partial index on the key serves it).
pub(super) async fn get_by_idempotency_key(pool: &PgPool, key: &str) -> StoreResult<Option<Task>> {
    let row = sqlx::query(SQL_GET_BY_KEY)
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(task_from_row).transpose()
}

/// [`TaskStore::list`](crate::store::TaskStore::list).
pub(super) async fn list(store: &PostgresStore, filter: ListFilter) -> StoreResult<Page> {
    let limit = page_size(filter.limit);
    let cursor = filter.cursor.as_deref().map(decode_cursor).transpose()?;

    let mut conditions = Vec::with_capacity(3);
    let mut n = 0;
    let mut param = || {
        n += 1;
        n
    };
    if filter.status.is_some() {
        conditions.push(format!("status = ${}", param()));
    }
    if filter.task_type.is_some() {
        conditions.push(format!("task_type = ${}", param()));
    }
    if cursor.is_some() {
        conditions.push(format!("id < ${}", param()));
    }
    let mut sql = String::from(if filter.without_input {
        "SELECT (to_jsonb(tasks) || '{\"input\": \"null\"}'::jsonb)::text AS j FROM tasks"
    } else {
        "SELECT row_to_json(tasks)::text AS j FROM tasks"
    });
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", param()));

    // The SQL text only varies in its structure; every value is bound.
    let mut query = sqlx::query(AssertSqlSafe(sql));
    if let Some(status) = filter.status {
        query = query.bind(status.as_str());
    }
    if let Some(task_type) = filter.task_type {
        query = query.bind(task_type);
    }
    if let Some(cursor) = cursor {
        query = query.bind(cursor);
    }
    query = query.bind(i64::from(limit) + 1);

    // Row by row, so that a page cut by the input budget reads no further.
    let mut page = PageBuilder::new(limit, filter.input_budget.filter(|_| !filter.without_input));
    let mut rows = query.fetch(&store.inner.pool);
    while let Some(row) = rows.try_next().await.map_err(db_err)? {
        if !page.push(task_from_row(&row)?) {
            break;
        }
    }
    Ok(page.finish())
}

/// [`TaskStore::stats`](crate::store::TaskStore::stats).
pub(super) async fn stats(store: &PostgresStore) -> StoreResult<Stats> {
    let rows = sqlx::query(SQL_COUNTS)
        .fetch_all(&store.inner.pool)
        .await
        .map_err(db_err)?;
    let counts = rows
        .iter()
        .map(type_status_count)
        .collect::<StoreResult<Vec<_>>>()?;
    let mut stats = Stats::from_counts(counts);

    let row = sqlx::query(SQL_PERCENTILES)
        .bind(PERCENTILE_SAMPLE)
        .fetch_one(&store.inner.pool)
        .await
        .map_err(db_err)?;
    stats.processing_ms_p50 = column(&row, "p50")?;
    stats.processing_ms_p95 = column(&row, "p95")?;
    stats.processing_ms_p99 = column(&row, "p99")?;
    Ok(stats)
}

/// [`TaskStore::pending_by_type`](crate::store::TaskStore::pending_by_type).
pub(super) async fn pending_by_type(store: &PostgresStore) -> StoreResult<BTreeMap<String, u64>> {
    let rows = sqlx::query(SQL_PENDING_BY_TYPE)
        .fetch_all(&store.inner.pool)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| Ok((column(row, "task_type")?, count(row)?)))
        .collect()
}

/// [`TaskStore::ping`](crate::store::TaskStore::ping).
pub(super) async fn ping(store: &PostgresStore) -> StoreResult<()> {
    sqlx::query("SELECT 1")
        .execute(&store.inner.pool)
        .await
        .map_err(db_err)?;
    Ok(())
}
