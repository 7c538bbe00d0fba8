//! Task events across processes sharing one SQLite file (`aihost api` and `aihost consumer` on
//! one machine): the change log other processes read, the watcher that publishes their
//! changes, and the pruning of the log. Separate because it is the one part of the SQLite store
//! that talks with other processes rather than answering a call (as `events.rs` of the
//! PostgreSQL store).
//!
//! How it works:
//! - every store gets a random `origin` at open. Its writer connection holds two TEMP triggers
//!   (per connection, so the origin is a literal in them; the schema holds only the table
//!   `task_changes`) that append `(task, event kind, origin)` for each change of `tasks` that
//!   the in-process path publishes: an insert is `created`; an update that changes the
//!   status, the attempt, the cancel request or the progress gets the kind its new state
//!   implies (the same kinds `claim.rs` and `finish.rs` publish). A lease renewal changes none
//!   of these and logs nothing. The row is written in the same transaction as the change;
//! - a watcher task polls `PRAGMA data_version` on a read-only connection of its own every
//!   [`POLL`]; it changes when any other connection (another process, or this store's writer)
//!   commits. Then the watcher reads the log after the last row it saw, joining the current
//!   task row for rows of other origins only (its own were published in process), and
//!   publishes them. Changes of one task read together are published once, with the last kind
//!   (a task run within one poll shows as `completed`); a kind that the task's state has moved
//!   past (a `started` row read when the task is already COMPLETED) is left to the row that
//!   moved it;
//! - a pruner deletes the rows older than about [`KEEP`] every [`PRUNE_EVERY`] (by sequence
//!   numbers it noted then, so no clock is compared; the newest row always stays, so sequence
//!   numbers are never reused).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use sqlx::{
    Connection, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqlitePool, SqliteRow},
};
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

use super::{
    group_commit::{WriteQuery, Writes, no_row, send_write},
    schema::{task_columns, task_from_row},
};
use crate::store::{
    EventKind, Status, StoreResult, TaskEvent,
    sql::{column, db_err},
};

/// How often the watcher asks whether another connection committed.
pub(super) const POLL: Duration = Duration::from_millis(25);
/// How long rows stay in the log (a watcher stalled longer misses events and says so).
const KEEP: Duration = Duration::from_secs(60);
/// How often the pruner runs.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Most log rows read at once.
const BATCH: i64 = 1000;

/// The TEMP triggers of a writer connection whose store has origin `origin`.
pub(super) fn triggers(origin: i64) -> String {
    use EventKind as K;
    let [
        created,
        completed,
        failed,
        cancelled,
        retrying,
        started,
        cancel_requested,
        progress,
        preview,
    ] = [
        K::Created,
        K::Completed,
        K::Failed,
        K::Cancelled,
        K::Retrying,
        K::Started,
        K::CancelRequested,
        K::Progress,
        K::Preview,
    ]
    .map(|k| k.to_string());
    format!(
        "CREATE TEMP TRIGGER IF NOT EXISTS aihost_task_created AFTER INSERT ON main.tasks \
         BEGIN INSERT INTO task_changes (change_task, change_kind, change_origin) \
               VALUES (new.id, '{created}', {origin}); END; \
         CREATE TEMP TRIGGER IF NOT EXISTS aihost_task_changed AFTER UPDATE ON main.tasks \
         WHEN new.status <> old.status OR new.attempts <> old.attempts \
           OR new.cancel_requested <> old.cancel_requested \
           OR new.progress_percent IS NOT old.progress_percent \
           OR new.progress_message IS NOT old.progress_message \
           OR new.progress_preview IS NOT old.progress_preview \
         BEGIN INSERT INTO task_changes (change_task, change_kind, change_origin) \
               VALUES (new.id, CASE \
                 WHEN new.status = 'COMPLETED' THEN '{completed}' \
                 WHEN new.status = 'FAILED' THEN '{failed}' \
                 WHEN new.status = 'CANCELLED' THEN '{cancelled}' \
                 WHEN new.status = 'PENDING' THEN '{retrying}' \
                 WHEN old.status <> 'PROCESSING' OR new.attempts <> old.attempts \
                   THEN '{started}' \
                 WHEN new.cancel_requested <> old.cancel_requested THEN '{cancel_requested}' \
                 WHEN new.progress_preview IS NOT old.progress_preview \
                   AND new.progress_preview IS NOT NULL THEN '{preview}' \
                 ELSE '{progress}' END, {origin}); END;"
    )
}

const SQL_TOP: &str = "SELECT COALESCE(MAX(change_seq), 0) AS n FROM task_changes";

/// Log rows after `?1`: their kind and origin, and for rows of other origins than `?2` the task
/// as it is now (NULL columns for own rows and deleted tasks).
const SQL_READ: &str = concat!(
    "SELECT change_seq, change_kind, change_origin, ",
    task_columns!(),
    " FROM task_changes LEFT JOIN tasks ON change_origin <> ?2 AND tasks.id = change_task \
     WHERE change_seq > ?1 ORDER BY change_seq LIMIT {limit}"
);

const SQL_PRUNE: &str = "DELETE FROM task_changes WHERE change_seq < ?1";

/// The newest sequence number of the log (0 when empty).
async fn top(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(SQL_TOP).fetch_one(conn).await
}

async fn data_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(conn)
        .await
}

/// The running watcher: its task, and the sender that stops it (sending or dropping it).
pub(super) struct Watcher {
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) stop: oneshot::Sender<()>,
}

/// Opens the watcher's connection and notes where the log ends, so that only changes after
/// the store's open are published, then starts the task that publishes them.
pub(super) async fn start_watcher(
    options: &SqliteConnectOptions,
    origin: i64,
    events: broadcast::Sender<TaskEvent>,
) -> StoreResult<Watcher> {
    let mut conn = SqliteConnection::connect_with(&options.clone().read_only(true))
        .await
        .map_err(db_err)?;
    let version = data_version(&mut conn).await.map_err(db_err)?;
    let last = top(&mut conn).await.map_err(db_err)?;
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(watch(conn, origin, events, version, last, stopped));
    Ok(Watcher { task, stop })
}

/// The watcher loop (see the module docs), until `stop` is sent or dropped; then it closes its
/// connection. Errors are logged once per run of failures and retried at the next poll.
async fn watch(
    mut conn: SqliteConnection,
    origin: i64,
    events: broadcast::Sender<TaskEvent>,
    mut version: i64,
    mut last: i64,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => {
                let _ = conn.close().await;
                return;
            }
        }
        let read = async {
            let now = data_version(&mut conn).await?;
            if now == version {
                return Ok(());
            }
            if events.receiver_count() == 0 {
                last = top(&mut conn).await?;
                version = now;
                return Ok(());
            }
            loop {
                let rows = sqlx::query(super::schema::limited(SQL_READ, BATCH))
                    .bind(last)
                    .bind(origin)
                    .fetch_all(&mut conn)
                    .await?;
                let full = rows.len() == usize::try_from(BATCH).unwrap_or(usize::MAX);
                last = publish_batch(&rows, origin, last, &events);
                if !full {
                    // Only now: a failed read is tried again at the next poll.
                    version = now;
                    return Ok::<(), sqlx::Error>(());
                }
            }
        };
        match read.await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("reading other processes' task events again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read other processes' task events; retrying");
            }
            Err(_) => {}
        }
    }
}

/// Publishes the changes of other origins among `rows` (see the module docs); answers the last
/// sequence number read.
fn publish_batch(
    rows: &[SqliteRow],
    origin: i64,
    mut last: i64,
    events: &broadcast::Sender<TaskEvent>,
) -> i64 {
    let mut out: Vec<Option<TaskEvent>> = Vec::new();
    let mut slot: HashMap<Uuid, usize> = HashMap::new();
    for row in rows {
        let decoded = (|| {
            let seq: i64 = column(row, "change_seq")?;
            let from: i64 = column(row, "change_origin")?;
            let kind: String = column(row, "change_kind")?;
            let present = column::<Option<String>, _>(row, "id")?.is_some();
            let task = if from != origin && present {
                Some(task_from_row(row)?)
            } else {
                None
            };
            StoreResult::Ok((seq, kind, task))
        })();
        let (seq, kind, task) = match decoded {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable task change; skipped");
                continue;
            }
        };
        if last > 0 && seq > last + 1 {
            tracing::warn!(
                missed = seq - last - 1,
                "task events of other processes were pruned before this process read them"
            );
        }
        last = seq;
        let Some(task) = task else { continue };
        let Some(kind) = EventKind::parse(&kind) else {
            tracing::warn!(kind = %kind, "unknown task change kind; skipped");
            continue;
        };
        if let Some(i) = slot.insert(task.id, out.len()) {
            out[i] = None;
        }
        out.push(Some(TaskEvent::of_owned(kind, task)));
    }
    for ev in out.into_iter().flatten() {
        if !moved_past(ev.kind, ev.task.status) {
            let _ = events.send(ev);
        }
    }
    last
}

/// Whether a task in `status` has moved past an event of `kind`: a finished task's earlier,
/// unfinished kinds are not published with its finished state (the terminal kind is, from its
/// own row).
fn moved_past(kind: EventKind, status: Status) -> bool {
    status.is_terminal()
        && !matches!(
            kind,
            EventKind::Completed | EventKind::Failed | EventKind::Cancelled
        )
}

/// Deletes log rows older than about [`KEEP`] every [`PRUNE_EVERY`], until aborted.
pub(super) async fn prune_loop(reader: SqlitePool, writes: Writes) {
    let mut seen: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut pruned = 0;
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        let top = match reader.acquire().await {
            Ok(mut conn) => top(&mut conn).await,
            Err(e) => Err(e),
        };
        match top {
            Ok(n) => seen.push_back((Instant::now(), n)),
            Err(e) => tracing::debug!(error = %e, "cannot read the task change log"),
        }
        let mut cutoff = None;
        while let Some(&(at, n)) = seen.front() {
            if at.elapsed() < KEEP {
                break;
            }
            cutoff = Some(n);
            seen.pop_front();
        }
        if let Some(cutoff) = cutoff.filter(|&c| c > pruned) {
            let query = WriteQuery::new(SQL_PRUNE).bind(cutoff);
            match send_write(&writes, query, false, no_row).await {
                Ok(_) => pruned = cutoff,
                Err(e) => tracing::debug!(error = %e, "cannot prune the task change log"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_tasks_move_past_unfinished_kinds() {
        assert!(moved_past(EventKind::Started, Status::Completed));
        assert!(moved_past(EventKind::Progress, Status::Cancelled));
        assert!(!moved_past(EventKind::Completed, Status::Completed));
        assert!(!moved_past(EventKind::CancelRequested, Status::Processing));
        assert!(!moved_past(EventKind::Created, Status::Processing));
    }
}
