//! Task events of the PostgreSQL store: the [`notifying!`] wrapper that makes each write
//! statement NOTIFY its change in the same statement, the publication of this store's own
//! changes, and the listener task that publishes other processes' changes (reconnecting, then
//! re-reading what changed during the outage). Separate because it is the one part that talks
//! with other processes rather than answering a call.

use std::{borrow::Cow, time::Duration};

use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    PostgresStore,
    read::get_task,
    schema::{micros, task_from_json, task_from_row},
};
use crate::store::{EventKind, Status, StoreError, StoreResult, Task, TaskEvent};

/// The NOTIFY channel of task events.
pub(crate) const CHANNEL: &str = "aihost_events";
/// Capacity of the event channel (see the SQLite store).
pub(super) const EVENT_CAPACITY: usize = 4096;
/// After a listener reconnect, tasks changed this long before the loss are published again.
const RESYNC_MARGIN: Duration = Duration::from_secs(30);
/// Most tasks published again after a listener reconnect.
const RESYNC_LIMIT: i64 = 10_000;

/// Wraps a write statement (without its RETURNING) so that it returns each changed row as JSON
/// (`j`) with its event kind (`k`, an SQL expression over the new row) and notifies
/// [`CHANNEL`] in the same statement.
macro_rules! notifying {
    ($write:literal, $kind:literal) => {
        concat!(
            "WITH t AS (",
            $write,
            " RETURNING *), \
             e AS (SELECT row_to_json(t)::text AS j, (",
            $kind,
            ")::text AS k, t.id FROM t) \
             SELECT e.j, e.k, pg_notify('aihost_events', \
                 CASE WHEN octet_length(p.full) < 7900 THEN p.full \
                 ELSE json_build_object('o', current_setting('aihost.origin'), 'k', e.k, \
                                        'id', e.id)::text END) AS n \
             FROM e, LATERAL (SELECT \
                 json_build_object('o', current_setting('aihost.origin'), 'k', e.k, \
                                   't', e.j::json)::text AS full) p"
        )
    };
}
pub(super) use notifying;

/// Tasks changed within the last `$1` microseconds (listener resync).
const SQL_CHANGED_SINCE: &str = "SELECT row_to_json(tasks)::text AS j FROM tasks \
     WHERE updated_at >= now() - $1::bigint * interval '1 microsecond' \
     ORDER BY updated_at LIMIT $2";

impl PostgresStore {
    /// Publishes an event on this process's channel; nobody listening is fine.
    pub(super) fn publish(&self, kind: EventKind, task: &Task) {
        if self.inner.events.receiver_count() > 0 {
            let _ = self.inner.events.send(TaskEvent::of(kind, task));
        }
    }
}

pub(super) async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// One notification as sent by [`notifying!`].
#[derive(Deserialize)]
struct Notice {
    /// Origin: the sending store.
    o: String,
    /// Event kind.
    k: String,
    /// The row, when it fit.
    t: Option<Value>,
    /// The id, when the row did not fit.
    id: Option<Uuid>,
}

/// Just the origin of a notification: a store's own notifications (most of them, on one
/// machine) are recognised without decoding their rows.
#[derive(Deserialize)]
struct NoticeOrigin<'a> {
    #[serde(borrow)]
    o: Cow<'a, str>,
}

/// Receives other processes' events until aborted, reconnecting as needed.
pub(super) async fn listen_loop(
    mut listener: PgListener,
    listen_pool: PgPool,
    pool: PgPool,
    events: broadcast::Sender<TaskEvent>,
    origin: String,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if events.receiver_count() > 0 {
                    handle_notice(notification.payload(), &origin, &pool, &events).await;
                }
            }
            Ok(None) => {
                // sqlx reconnected and subscribed again before answering.
                let lost = tokio::time::Instant::now();
                tracing::warn!("task event connection to PostgreSQL lost; listening again");
                resync(&pool, &events, lost.elapsed()).await;
            }
            Err(e) => {
                let lost = tokio::time::Instant::now();
                tracing::warn!(error = %e, "task event connection to PostgreSQL failed; reconnecting");
                let mut delay = Duration::from_millis(100);
                listener = loop {
                    tokio::time::sleep(delay).await;
                    match connect_listener(&listen_pool).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot listen for task events yet");
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                };
                tracing::info!("listening for task events again");
                resync(&pool, &events, lost.elapsed()).await;
            }
        }
    }
}

async fn handle_notice(
    payload: &str,
    origin: &str,
    pool: &PgPool,
    events: &broadcast::Sender<TaskEvent>,
) {
    if serde_json::from_str::<NoticeOrigin>(payload).is_ok_and(|n| n.o == origin) {
        return;
    }
    let notice: Notice = match serde_json::from_str(payload) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable task event notification");
            return;
        }
    };
    if notice.o == origin {
        return;
    }
    let Ok(kind) = parse_kind(&notice.k) else {
        tracing::warn!(kind = %notice.k, "unknown task event kind");
        return;
    };
    let task = match (notice.t, notice.id) {
        (Some(row), _) => task_from_json(row),
        (None, Some(id)) => match get_task(pool, id).await {
            Ok(Some(task)) => Ok(task),
            Ok(None) => return,
            Err(e) => Err(e),
        },
        (None, None) => return,
    };
    match task {
        Ok(task) => {
            let _ = events.send(TaskEvent::of_owned(kind, task));
        }
        Err(e) => tracing::warn!(error = %e, "undecodable task event"),
    }
}

/// Publishes the tasks changed during an outage of the listener (and a margin before it) with
/// the kind their state implies, so consumers wake and streams catch up.
async fn resync(pool: &PgPool, events: &broadcast::Sender<TaskEvent>, outage: Duration) {
    if events.receiver_count() == 0 {
        return;
    }
    let rows = sqlx::query(SQL_CHANGED_SINCE)
        .bind(micros(outage + RESYNC_MARGIN))
        .bind(RESYNC_LIMIT)
        .fetch_all(pool)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-read tasks changed during the outage");
            return;
        }
    };
    for row in &rows {
        if let Ok(task) = task_from_row(row) {
            let kind = match task.status {
                Status::Pending if task.attempts == 0 => EventKind::Created,
                Status::Pending => EventKind::Retrying,
                Status::Processing if task.cancel_requested => EventKind::CancelRequested,
                Status::Processing => EventKind::Started,
                Status::Completed => EventKind::Completed,
                Status::Failed => EventKind::Failed,
                Status::Cancelled => EventKind::Cancelled,
            };
            let _ = events.send(TaskEvent::of_owned(kind, task));
        }
    }
}

pub(super) fn parse_kind(s: &str) -> StoreResult<EventKind> {
    EventKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {s:?}")))
}
