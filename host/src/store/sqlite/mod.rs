//! SQLite task store: the embedded default [`TaskStore`].
//!
//! Layout and choices:
//! - one `tasks` table (schema in `host/migrations/sqlite/`), ids as canonical lowercase
//!   hyphenated UUIDv7 TEXT (text order = creation order), timestamps as INTEGER milliseconds
//!   since the Unix epoch (UTC), JSON values as TEXT. Every timestamp comes from this process's
//!   clock, truncated to the millisecond, so a returned [`Task`] equals what a later read gives;
//! - WAL journal with `synchronous = FULL`: a commit is fsynced to the WAL before the call
//!   returns, so an accepted task survives a power loss (`NORMAL` would only survive a process
//!   crash). This is the knob a benchmark may tune later;
//! - two pools: a single-connection *write* pool (SQLite has one writer anyway; queueing in the
//!   pool is cheaper than `SQLITE_BUSY` retries) and a read-only pool of several connections, so
//!   reads never wait for writes (WAL readers see the last committed state);
//! - every write is one statement (`INSERT/UPDATE ... RETURNING`), atomic on its own in
//!   autocommit mode: claims select and update in the same statement, and conditional
//!   transitions (retry or fail, rescue) decide with `CASE` on the row's old values, so there
//!   is one round trip per operation and no explicit transaction;
//! - events are published on a broadcast channel after the statement committed, carrying the
//!   task as the statement returned it.
//!
//! Migrations are embedded with `include_str!` and run with sqlx's
//! [`Migrator`](sqlx::migrate::Migrator) (same `_sqlx_migrations` bookkeeping as
//! `sqlx::migrate!`, which needs the `macros` feature this crate does not enable). Add a
//! migration by appending to [`MIGRATIONS`](schema::MIGRATIONS).
//!
//! Files: this one holds the store, its opening and the [`TaskStore`] impl, which delegates
//! each operation to the file of its concern: `submit.rs` (insert), `claim.rs` (claims, leases,
//! progress, rescue), `finish.rs` (complete, fail, release, cancel), `retention.rs` (prune,
//! delete), `read.rs` (get, list,
//! stats), `group_commit.rs` (the writer task every write goes through) and `schema.rs`
//! (migrations, the column list, encoding and decoding of rows).

mod claim;
mod finish;
mod group_commit;
mod read;
mod retention;
mod schema;
mod submit;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, path::Path, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use self::{group_commit::WriteJob, schema::MIGRATIONS};
use super::{
    CancelOutcome, DeleteOutcome, EventKind, ListFilter, NewTask, Page, Progress, Stats, Status,
    StoreError, StoreResult, Task, TaskError, TaskEvent, TaskStore,
    sql::{self, db_err},
};

/// Capacity of the event channel; a subscriber that lags further loses events (and is told so
/// by `RecvError::Lagged`).
const EVENT_CAPACITY: usize = 4096;
/// Connections of the read pool.
const READ_CONNECTIONS: u32 = 4;
/// How long SQLite waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded SQLite [`TaskStore`]. Cheap to clone (pools and channel are shared).
#[derive(Debug, Clone)]
pub(crate) struct SqliteStore {
    /// One connection: every write goes through it.
    writer: SqlitePool,
    /// Read-only connections for `get`, `list`, `stats`...
    reader: SqlitePool,
    /// Task events.
    events: broadcast::Sender<TaskEvent>,
    /// Write statements waiting for the group committer.
    writes: mpsc::UnboundedSender<WriteJob>,
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if needed) the database at `path` and
    /// applies the pending migrations.
    pub(crate) async fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full),
            )
            .await
            .map_err(db_err)?;

        sql::migrator(MIGRATIONS)
            .run(&writer)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;

        // The journal mode is persistent in the file; readers need not (and, read-only, cannot)
        // set it.
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(base.read_only(true))
            .await
            .map_err(db_err)?;

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let writes = group_commit::start(&writer);
        Ok(SqliteStore {
            writer,
            reader,
            events,
            writes,
        })
    }

    /// Closes both pools, waiting for their connections to close (WAL checkpoint included).
    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Publishes an event; nobody listening is fine.
    fn publish(&self, kind: EventKind, task: &Task) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(TaskEvent::of(kind, task));
        }
    }
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn insert(&self, task: NewTask) -> StoreResult<(Task, bool)> {
        submit::insert(self, task).await
    }

    async fn get(&self, id: Uuid) -> StoreResult<Option<Task>> {
        read::get(self, id).await
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<Page> {
        read::list(self, filter).await
    }

    async fn claim(
        &self,
        task_type: &str,
        worker: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Task>> {
        claim::claim(self, task_type, worker, lease, limit).await
    }

    async fn renew(
        &self,
        id: Uuid,
        attempt: u32,
        worker: &str,
        lease: Duration,
    ) -> StoreResult<bool> {
        claim::renew(self, id, attempt, worker, lease).await
    }

    async fn set_progress(&self, id: Uuid, attempt: u32, progress: Progress) -> StoreResult<bool> {
        claim::set_progress(self, id, attempt, progress).await
    }

    async fn complete(&self, id: Uuid, attempt: u32, result: Value) -> StoreResult<Option<Task>> {
        finish::complete(self, id, attempt, result).await
    }

    async fn fail(
        &self,
        id: Uuid,
        attempt: u32,
        error: TaskError,
        retry_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Task>> {
        finish::fail(self, id, attempt, error, retry_at).await
    }

    async fn release(&self, id: Uuid, attempt: u32) -> StoreResult<bool> {
        finish::release(self, id, attempt).await
    }

    async fn cancel(&self, id: Uuid) -> StoreResult<CancelOutcome> {
        finish::cancel(self, id).await
    }

    async fn finish_cancelled(&self, id: Uuid, attempt: u32) -> StoreResult<Option<Task>> {
        finish::finish_cancelled(self, id, attempt).await
    }

    async fn rescue_expired(&self) -> StoreResult<Vec<Task>> {
        claim::rescue_expired(self).await
    }

    async fn prune(
        &self,
        status: Status,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Uuid>> {
        retention::prune(self, status, before, limit).await
    }

    async fn count_prunable(&self, status: Status, before: DateTime<Utc>) -> StoreResult<u64> {
        retention::count_prunable(self, status, before).await
    }

    async fn delete(&self, id: Uuid) -> StoreResult<DeleteOutcome> {
        retention::delete(self, id).await
    }

    async fn live_input_mentions(&self, needle: &str) -> StoreResult<bool> {
        retention::live_input_mentions(self, needle).await
    }

    async fn stats(&self) -> StoreResult<Stats> {
        read::stats(self).await
    }

    async fn pending_by_type(&self) -> StoreResult<BTreeMap<String, u64>> {
        read::pending_by_type(self).await
    }

    async fn ping(&self) -> StoreResult<()> {
        read::ping(self).await
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }
}
