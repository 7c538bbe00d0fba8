//! Webhook deliveries in the SQLite store: claims with a lease, attempts, listing, redelivery
//! and the consumer's progress messages. Every write goes through the one writer (the group
//! committer), so two processes on one file never claim the same row at once.

use std::time::Duration;

use uuid::Uuid;

use super::{
    SqliteStore,
    group_commit::{WriteQuery, no_row, send_write},
    schema::{duration_ms, now_ms},
};
use crate::store::{
    StoreResult,
    deliveries::{Delivery, DeliveryAttempt, DeliveryOutcome, delivery_from_json, new_message_id},
    sql::{column, db_err},
};

/// The JSON object of a delivery row (see `store::deliveries`).
macro_rules! delivery_json {
    () => {
        "json_object('id', id, 'task_id', task_id, 'event', event, 'url', url, 'state', state, \
         'attempts', attempts, 'created_at', created_at, 'window_start', window_start, \
         'next_at', next_at, 'last_attempt_at', last_attempt_at, 'last_status', last_status, \
         'last_error', last_error, 'delivered_at', delivered_at, 'payload', payload) AS j"
    };
}

/// Keeps a task's messages in order without letting one hold the others up: a row is due only
/// when no earlier row of its task (by creation, then event: started, progress, terminal; then
/// id) is pending and either not yet tried or in flight (leased). A row that failed once and
/// waits for its retry no longer holds the later ones. `?2` is now.
macro_rules! first_of_its_task {
    () => {
        "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.task_id = d.task_id \
         AND e.state = 'pending' AND (e.attempts = 0 OR e.lease_until > ?2) \
         AND (e.created_at < d.created_at OR (e.created_at = d.created_at \
         AND (CASE e.event WHEN 'task.started' THEN 0 WHEN 'task.progress' THEN 1 ELSE 2 END, e.id) \
         < (CASE d.event WHEN 'task.started' THEN 0 WHEN 'task.progress' THEN 1 ELSE 2 END, d.id))))"
    };
}

/// `?1`: lease end; `?2`: now; `{limit}` written into the SQL; a task's rows in order
/// (`first_of_its_task`).
const SQL_CLAIM: &str = concat!(
    "UPDATE webhook_deliveries SET lease_until = ?1 WHERE id IN (SELECT id FROM \
     webhook_deliveries d WHERE state = 'pending' AND next_at <= ?2 \
     AND (lease_until IS NULL OR lease_until <= ?2) ",
    first_of_its_task!(),
    " ORDER BY next_at LIMIT {limit}) RETURNING ",
    delivery_json!()
);

/// `?1` id, `?2` payload, `?3` now, `?4` status, `?5` error, `?6` state, `?7` next_at.
const SQL_RECORD: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1, \
     payload = COALESCE(payload, ?2), last_attempt_at = ?3, last_status = ?4, last_error = ?5, \
     state = ?6, next_at = ?7, lease_until = NULL, \
     delivered_at = CASE WHEN ?6 = 'delivered' THEN ?3 ELSE delivered_at END \
     WHERE id = ?1 AND state = 'pending'";

const SQL_LIST: &str = concat!(
    "SELECT ",
    delivery_json!(),
    " FROM webhook_deliveries WHERE task_id = ?1 ORDER BY created_at, id"
);

/// `?1` task, `?2` delivery id or NULL for all, `?3` now. A row being sent keeps its lease (no
/// second process sends it meanwhile).
const SQL_REDELIVER: &str = "UPDATE webhook_deliveries SET state = 'pending', next_at = ?3, \
     window_start = ?3, \
     lease_until = CASE WHEN state = 'pending' THEN lease_until END \
     WHERE task_id = ?1 AND (?2 IS NULL OR id = ?2) RETURNING id";

/// `?1` new id, `?2` task, `?3` event, `?4` now.
const SQL_ADD: &str = "INSERT INTO webhook_deliveries (id, task_id, event, url, created_at, \
     window_start, next_at) SELECT ?1, id, ?3, webhook_url, ?4, ?4, ?4 FROM tasks \
     WHERE id = ?2 AND status = 'PROCESSING' AND webhook_url IS NOT NULL \
     AND instr(COALESCE(webhook_events, ''), ?3) > 0 \
     RETURNING id";

/// `?1` task, `?2` now: the task's older `task.progress` messages not in flight are superseded
/// by the one about to be added (progress is a state, not a log: only the newest matters), so a
/// receiver that is down gets one progress message per task to retry, not one per interval.
const SQL_SUPERSEDE: &str = "UPDATE webhook_deliveries SET state = 'dead', \
     last_error = 'superseded by a newer task.progress' \
     WHERE task_id = ?1 AND event = 'task.progress' AND state = 'pending' \
     AND (lease_until IS NULL OR lease_until <= ?2)";

fn decode(rows: &[sqlx::sqlite::SqliteRow]) -> StoreResult<Vec<Delivery>> {
    rows.iter()
        .map(|r| delivery_from_json(&column::<String, _>(r, "j")?))
        .collect()
}

/// A row of [`delivery_json!`] returned by a write.
fn delivery_row(row: &rusqlite::Row<'_>) -> StoreResult<Delivery> {
    let text: String = row
        .get(0)
        .map_err(|e| crate::store::StoreError::Corrupt(format!("column j: {e}")))?;
    delivery_from_json(&text)
}

/// [`TaskStore::claim_deliveries`](crate::store::TaskStore::claim_deliveries).
pub(super) async fn claim(
    store: &SqliteStore,
    lease: Duration,
    limit: u32,
) -> StoreResult<Vec<Delivery>> {
    let now = now_ms();
    let query = WriteQuery::new(super::schema::limited(SQL_CLAIM, limit).0)
        .bind(now.saturating_add(duration_ms(lease)))
        .bind(now);
    Ok(send_write(&store.writes, query, false, delivery_row)
        .await?
        .rows)
}

/// [`TaskStore::record_delivery`](crate::store::TaskStore::record_delivery).
pub(super) async fn record(
    store: &SqliteStore,
    id: &str,
    attempt: DeliveryAttempt,
) -> StoreResult<()> {
    let now = now_ms();
    let (state, next_at) = match attempt.outcome {
        DeliveryOutcome::Delivered => ("delivered", now),
        DeliveryOutcome::Dead => ("dead", now),
        DeliveryOutcome::Retry(at) => ("pending", at.timestamp_millis()),
    };
    let query = WriteQuery::new(SQL_RECORD)
        .bind(id.to_owned())
        .bind(attempt.payload)
        .bind(now)
        .bind(attempt.status.map(i64::from))
        .bind(attempt.error)
        .bind(state.to_owned())
        .bind(next_at);
    store.execute(query, true).await?;
    Ok(())
}

/// [`TaskStore::list_deliveries`](crate::store::TaskStore::list_deliveries).
pub(super) async fn list(store: &SqliteStore, task_id: Uuid) -> StoreResult<Vec<Delivery>> {
    let rows = sqlx::query(SQL_LIST)
        .bind(task_id.to_string())
        .fetch_all(&store.reader)
        .await
        .map_err(db_err)?;
    decode(&rows)
}

/// [`TaskStore::redeliver`](crate::store::TaskStore::redeliver).
pub(super) async fn redeliver(
    store: &SqliteStore,
    task_id: Uuid,
    delivery: Option<&str>,
) -> StoreResult<u64> {
    let query = WriteQuery::new(SQL_REDELIVER)
        .bind(task_id.to_string())
        .bind(delivery.map(str::to_owned))
        .bind(now_ms());
    Ok(send_write(&store.writes, query, true, no_row)
        .await?
        .rows
        .len() as u64)
}

/// [`TaskStore::add_delivery`](crate::store::TaskStore::add_delivery).
pub(super) async fn add(store: &SqliteStore, task_id: Uuid, event: &str) -> StoreResult<bool> {
    if event == "task.progress" {
        let supersede = WriteQuery::new(SQL_SUPERSEDE)
            .bind(task_id.to_string())
            .bind(now_ms());
        store.execute(supersede, false).await?;
    }
    let query = WriteQuery::new(SQL_ADD)
        .bind(new_message_id())
        .bind(task_id.to_string())
        .bind(event.to_owned())
        .bind(now_ms());
    Ok(!send_write(&store.writes, query, false, no_row)
        .await?
        .rows
        .is_empty())
}
