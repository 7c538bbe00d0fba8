//! The `consumers` table of the PostgreSQL store: consumer processes announce themselves and
//! the task types they serve, beat, and retire, so any API process can list who is serving.
//! Separate because it is bookkeeping of processes, not of tasks.

use std::time::Duration;

use super::{
    PostgresStore,
    schema::{clean_text, micros},
};
use crate::store::{
    ConsumerInfo, StoreError, StoreResult,
    sql::{column, db_err},
};

/// Consumers not heard from for this long are forgotten at the next announcement.
const CONSUMER_FORGET: Duration = Duration::from_secs(24 * 3600);

const SQL_ANNOUNCE: &str = "INSERT INTO consumers \
       (worker, hostname, pid, version, task_types, started_at, heartbeat_at) \
     VALUES ($1, $2, $3, $4, $5, now(), now()) \
     ON CONFLICT (worker) DO UPDATE SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, \
       version = EXCLUDED.version, task_types = EXCLUDED.task_types, heartbeat_at = now()";

const SQL_FORGET_CONSUMERS: &str = "DELETE FROM consumers \
     WHERE heartbeat_at < now() - $1::bigint * interval '1 microsecond'";

const SQL_CONSUMERS: &str = "SELECT worker, hostname, pid, version, task_types, started_at, \
       heartbeat_at FROM consumers \
     WHERE heartbeat_at >= now() - $1::bigint * interval '1 microsecond' ORDER BY worker";

/// [`TaskStore::announce_consumer`](crate::store::TaskStore::announce_consumer).
pub(super) async fn announce(store: &PostgresStore, c: &ConsumerInfo) -> StoreResult<()> {
    sqlx::query(SQL_ANNOUNCE)
        .bind(clean_text(&c.worker))
        .bind(clean_text(&c.hostname))
        .bind(i64::from(c.pid))
        .bind(clean_text(&c.version))
        .bind(
            c.task_types
                .iter()
                .map(|t| clean_text(t))
                .collect::<Vec<_>>(),
        )
        .execute(&store.inner.pool)
        .await
        .map_err(db_err)?;
    sqlx::query(SQL_FORGET_CONSUMERS)
        .bind(micros(CONSUMER_FORGET))
        .execute(&store.inner.pool)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// [`TaskStore::retire_consumer`](crate::store::TaskStore::retire_consumer).
pub(super) async fn retire(store: &PostgresStore, worker: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM consumers WHERE worker = $1")
        .bind(clean_text(worker))
        .execute(&store.inner.pool)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// [`TaskStore::consumers`](crate::store::TaskStore::consumers).
pub(super) async fn list(
    store: &PostgresStore,
    max_age: Duration,
) -> StoreResult<Vec<ConsumerInfo>> {
    let rows = sqlx::query(SQL_CONSUMERS)
        .bind(micros(max_age))
        .fetch_all(&store.inner.pool)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            let pid: i64 = column(row, "pid")?;
            Ok(ConsumerInfo {
                worker: column(row, "worker")?,
                hostname: column(row, "hostname")?,
                pid: u32::try_from(pid)
                    .map_err(|_| StoreError::Corrupt(format!("consumer pid {pid}")))?,
                version: column(row, "version")?,
                task_types: column(row, "task_types")?,
                started_at: column(row, "started_at")?,
                heartbeat_at: column(row, "heartbeat_at")?,
            })
        })
        .collect()
}
