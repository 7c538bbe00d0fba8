//! Webhook deliveries in the PostgreSQL store: claims with a lease (`FOR UPDATE SKIP LOCKED`,
//! so many processes deliver at once without sending a row twice), attempts, listing,
//! redelivery and the consumer's progress messages. Times come from the database's clock.

use std::time::Duration;

use uuid::Uuid;

use super::{PostgresStore, schema::micros};
use crate::store::{
    StoreResult,
    deliveries::{Delivery, DeliveryAttempt, DeliveryOutcome, delivery_from_json, new_message_id},
    sql::{column, db_err},
};

/// The JSON object of a delivery row (see `store::deliveries`), times in milliseconds.
macro_rules! delivery_json {
    () => {
        "json_build_object('id', id, 'task_id', task_id, 'event', event, 'url', url, \
         'state', state, 'attempts', attempts, \
         'created_at', (extract(epoch FROM created_at) * 1000)::bigint, \
         'window_start', (extract(epoch FROM window_start) * 1000)::bigint, \
         'next_at', (extract(epoch FROM next_at) * 1000)::bigint, \
         'last_attempt_at', (extract(epoch FROM last_attempt_at) * 1000)::bigint, \
         'last_status', last_status, 'last_error', last_error, \
         'delivered_at', (extract(epoch FROM delivered_at) * 1000)::bigint, \
         'payload', payload)::text AS j"
    };
}

/// `$1`: lease in microseconds; `$2`: limit. A task's messages go in order: a row is due only
/// when no earlier row of its task (by creation, then event: started, progress, terminal; then
/// id) is pending and either not yet tried or in flight (leased); one that failed once and
/// waits for its retry no longer holds the later ones.
const SQL_CLAIM: &str = concat!(
    "UPDATE webhook_deliveries \
     SET lease_until = statement_timestamp() + $1::bigint * interval '1 microsecond' \
     WHERE id IN (SELECT id FROM webhook_deliveries d WHERE state = 'pending' \
       AND next_at <= statement_timestamp() \
       AND (lease_until IS NULL OR lease_until <= statement_timestamp()) \
       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.task_id = d.task_id \
         AND e.state = 'pending' \
         AND (e.attempts = 0 OR e.lease_until > statement_timestamp()) \
         AND (e.created_at < d.created_at OR (e.created_at = d.created_at \
         AND (CASE e.event WHEN 'task.started' THEN 0 WHEN 'task.progress' THEN 1 ELSE 2 END, e.id) \
         < (CASE d.event WHEN 'task.started' THEN 0 WHEN 'task.progress' THEN 1 ELSE 2 END, d.id)))) \
       ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING ",
    delivery_json!()
);

/// `$1` id, `$2` payload, `$3` status, `$4` error, `$5` state, `$6` retry time (ms) or NULL.
const SQL_RECORD: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1, \
     payload = COALESCE(payload, $2), last_attempt_at = statement_timestamp(), \
     last_status = $3, last_error = $4, state = $5, lease_until = NULL, \
     next_at = COALESCE(to_timestamp($6::bigint / 1000.0), statement_timestamp()), \
     delivered_at = CASE WHEN $5 = 'delivered' THEN statement_timestamp() ELSE delivered_at END \
     WHERE id = $1 AND state = 'pending' RETURNING id";

const SQL_LIST: &str = concat!(
    "SELECT ",
    delivery_json!(),
    " FROM webhook_deliveries WHERE task_id = $1 ORDER BY created_at, id"
);

/// `$1` task, `$2` delivery id or NULL for all. A row being sent keeps its lease (no second
/// process sends it meanwhile).
const SQL_REDELIVER: &str = "UPDATE webhook_deliveries SET state = 'pending', \
     next_at = statement_timestamp(), window_start = statement_timestamp(), \
     lease_until = CASE WHEN state = 'pending' THEN lease_until END \
     WHERE task_id = $1 AND ($2::text IS NULL OR id = $2) RETURNING id";

/// `$1` new id, `$2` task, `$3` event.
const SQL_ADD: &str = "INSERT INTO webhook_deliveries (id, task_id, event, url, created_at, \
     window_start, next_at) SELECT $1, id, $3, webhook_url, statement_timestamp(), \
     statement_timestamp(), statement_timestamp() FROM tasks \
     WHERE id = $2 AND status = 'PROCESSING' AND webhook_url IS NOT NULL \
     AND strpos(COALESCE(webhook_events, ''), $3) > 0 \
     RETURNING id";

/// `$1` task: the task's older `task.progress` messages not in flight are superseded by the one
/// about to be added (only the newest progress matters), so a receiver that is down gets one
/// progress message per task to retry, not one per interval.
const SQL_SUPERSEDE: &str = "UPDATE webhook_deliveries SET state = 'dead', \
     last_error = 'superseded by a newer task.progress' \
     WHERE task_id = $1 AND event = 'task.progress' AND state = 'pending' \
     AND (lease_until IS NULL OR lease_until <= statement_timestamp()) RETURNING id";

fn decode(rows: &[sqlx::postgres::PgRow]) -> StoreResult<Vec<Delivery>> {
    rows.iter()
        .map(|r| delivery_from_json(&column::<String, _>(r, "j")?))
        .collect()
}

/// [`TaskStore::claim_deliveries`](crate::store::TaskStore::claim_deliveries).
pub(super) async fn claim(
    store: &PostgresStore,
    lease: Duration,
    limit: u32,
) -> StoreResult<Vec<Delivery>> {
    let query = sqlx::query(SQL_CLAIM)
        .bind(micros(lease))
        .bind(i64::from(limit));
    decode(&store.write_rows(query, false).await?)
}

/// [`TaskStore::record_delivery`](crate::store::TaskStore::record_delivery).
pub(super) async fn record(
    store: &PostgresStore,
    id: &str,
    attempt: DeliveryAttempt,
) -> StoreResult<()> {
    let (state, retry_at) = match attempt.outcome {
        DeliveryOutcome::Delivered => ("delivered", None),
        DeliveryOutcome::Dead => ("dead", None),
        DeliveryOutcome::Retry(at) => ("pending", Some(at.timestamp_millis())),
    };
    let query = sqlx::query(SQL_RECORD)
        .bind(id.to_owned())
        .bind(attempt.payload.replace('\0', "\u{FFFD}"))
        .bind(attempt.status.map(i32::from))
        .bind(attempt.error.map(|e| e.replace('\0', "\u{FFFD}")))
        .bind(state)
        .bind(retry_at);
    store.write_rows(query, true).await?;
    Ok(())
}

/// [`TaskStore::list_deliveries`](crate::store::TaskStore::list_deliveries).
pub(super) async fn list(store: &PostgresStore, task_id: Uuid) -> StoreResult<Vec<Delivery>> {
    let rows = sqlx::query(SQL_LIST)
        .bind(task_id)
        .fetch_all(&store.inner.pool)
        .await
        .map_err(db_err)?;
    decode(&rows)
}

/// [`TaskStore::redeliver`](crate::store::TaskStore::redeliver).
pub(super) async fn redeliver(
    store: &PostgresStore,
    task_id: Uuid,
    delivery: Option<&str>,
) -> StoreResult<u64> {
    let query = sqlx::query(SQL_REDELIVER)
        .bind(task_id)
        .bind(delivery.map(str::to_owned));
    Ok(store.write_rows(query, true).await?.len() as u64)
}

/// [`TaskStore::add_delivery`](crate::store::TaskStore::add_delivery).
pub(super) async fn add(store: &PostgresStore, task_id: Uuid, event: &str) -> StoreResult<bool> {
    if event == "task.progress" {
        store
            .write_rows(sqlx::query(SQL_SUPERSEDE).bind(task_id), false)
            .await?;
    }
    let query = sqlx::query(SQL_ADD)
        .bind(new_message_id())
        .bind(task_id)
        .bind(event.to_owned());
    Ok(!store.write_rows(query, false).await?.is_empty())
}
