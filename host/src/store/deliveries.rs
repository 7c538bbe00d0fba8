//! Webhook deliveries as the task stores keep them: one row per message of a task with a
//! `webhook_url` (schema: SQLite v7, PostgreSQL v6). Terminal and `task.started` rows are
//! written by triggers in the transaction of the task's state change; `task.progress` rows by
//! [`TaskStore::add_delivery`](super::TaskStore::add_delivery). Both stores answer rows as the
//! same JSON object (times in milliseconds since the epoch), decoded here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{StoreError, StoreResult};

/// The state of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeliveryState {
    /// Not delivered yet: due at `next_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after `webhooks.max_age_secs` (dead-lettered); `redeliver` revives it.
    Dead,
}

impl DeliveryState {
    /// The stored form.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

/// One message to a task's webhook.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delivery {
    /// The message id (`webhook-id`), `msg_` + 32 hex digits.
    pub id: String,
    /// Its task.
    pub task_id: Uuid,
    /// `task.completed`, `task.failed`, `task.cancelled`, `task.started` or `task.progress`.
    pub event: String,
    /// Where it goes.
    pub url: String,
    /// Pending, delivered or dead.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Start of its retry window (creation or last redelivery).
    pub window_start: DateTime<Utc>,
    /// When it is due (pending).
    pub next_at: DateTime<Utc>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status of the last attempt, if the receiver answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the receiver answered 2xx.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The body sent, frozen at the first attempt (retries send the same bytes).
    pub payload: Option<String>,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeliveryOutcome {
    /// 2xx.
    Delivered,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// Give up (its window is over).
    Dead,
}

/// One attempt, as [`TaskStore::record_delivery`](super::TaskStore::record_delivery) records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeliveryAttempt {
    /// The body sent (kept if one is stored already).
    pub payload: String,
    /// HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// What next.
    pub outcome: DeliveryOutcome,
}

#[derive(Deserialize)]
struct Row {
    id: String,
    task_id: Uuid,
    event: String,
    url: String,
    state: DeliveryState,
    attempts: i64,
    created_at: i64,
    window_start: i64,
    next_at: i64,
    last_attempt_at: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<String>,
    delivered_at: Option<i64>,
    payload: Option<String>,
}

fn time(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("delivery timestamp {ms} out of range")))
}

/// Decodes the JSON object both stores answer for a delivery row.
pub(super) fn delivery_from_json(text: &str) -> StoreResult<Delivery> {
    let r: Row = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("delivery row: {e}")))?;
    Ok(Delivery {
        id: r.id,
        task_id: r.task_id,
        event: r.event,
        url: r.url,
        state: r.state,
        attempts: u32::try_from(r.attempts).unwrap_or(0),
        created_at: time(r.created_at)?,
        window_start: time(r.window_start)?,
        next_at: time(r.next_at)?,
        last_attempt_at: r.last_attempt_at.map(time).transpose()?,
        last_status: r.last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: r.last_error,
        delivered_at: r.delivered_at.map(time).transpose()?,
        payload: r.payload,
    })
}

/// A new message id: `msg_` + 32 hex digits.
pub(super) fn new_message_id() -> String {
    format!("msg_{}", Uuid::new_v4().simple())
}
