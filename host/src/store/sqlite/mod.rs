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
//! - one writer connection, owned by a thread of its own that group-commits every write
//!   (`group_commit.rs`; SQLite has one writer anyway, and queueing there is cheaper than
//!   `SQLITE_BUSY` retries), and a read-only pool of several connections, so reads never wait
//!   for writes (WAL readers see the last committed state);
//! - every write is one statement (`INSERT/UPDATE ... RETURNING`), atomic on its own in
//!   autocommit mode: claims select and update in the same statement, and conditional
//!   transitions (retry or fail, rescue) decide with `CASE` on the row's old values, so there
//!   is one round trip per operation and no explicit transaction;
//! - events are published on a broadcast channel after the statement committed, carrying the
//!   task as the statement returned it. Other processes on the same file (`aihost api` and
//!   `aihost consumer` on one machine) learn of them through a change log that TEMP triggers
//!   of the writer connection fill, read by a watcher polling `PRAGMA data_version`
//!   (`changes.rs`); this process publishes theirs the same way;
//! - write health: the group committer reports every transaction's outcome to a
//!   [`StoreHealth`](crate::store::health::StoreHealth).
//!
//! Migrations are embedded with `include_str!` and run at open with sqlx's
//! [`Migrator`](sqlx::migrate::Migrator) on a connection of their own (same `_sqlx_migrations`
//! bookkeeping as `sqlx::migrate!`, which needs the `macros` feature this crate does not
//! enable). Add a migration by appending to [`MIGRATIONS`](schema::MIGRATIONS).
//!
//! Files: this one holds the store, its opening and the [`TaskStore`] impl, which delegates
//! each operation to the file of its concern: `submit.rs` (insert), `claim.rs` (claims, leases,
//! progress, rescue), `finish.rs` (complete, fail, release, cancel), `retention.rs` (prune,
//! delete), `read.rs` (get, list,
//! stats), `group_commit.rs` (the writer thread every write goes through), `changes.rs` (events
//! across processes) and `schema.rs` (migrations, the column list, encoding and decoding of
//! rows).

mod changes;
mod claim;
mod deliveries;
mod finish;
mod group_commit;
mod inline_read;
mod read;
mod retention;
mod schema;
mod sharing;
mod submit;
#[cfg(test)]
mod tests;
mod workers;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::broadcast;
use uuid::Uuid;

pub(crate) use self::sharing::network_file_system;
use self::{group_commit::Writes, schema::MIGRATIONS};
use super::{
    CancelOutcome, DeleteOutcome, EventKind, ListFilter, NewTask, Page, Progress, Stats, Status,
    StoreError, StoreFault, StoreResult, Task, TaskError, TaskEvent, TaskStore,
    health::StoreHealth,
    sql::{self, db_err},
};

/// Capacity of the event channel; a subscriber that lags further loses events (and is told so
/// by `RecvError::Lagged`).
const EVENT_CAPACITY: usize = 4096;
/// Connections of the read pool.
const READ_CONNECTIONS: u32 = 4;
/// How long SQLite waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded SQLite [`TaskStore`]. Cheap to clone (pools, channel and background tasks are
/// shared); the background tasks stop when the last clone is dropped or at [`Self::close`].
#[derive(Debug, Clone)]
pub(crate) struct SqliteStore {
    /// Read-only connections for `get`, `list`, `stats`...
    reader: SqlitePool,
    /// Task events.
    events: broadcast::Sender<TaskEvent>,
    /// Where write statements go: the writer thread (`group_commit.rs`).
    writes: Writes,
    /// The database file.
    path: PathBuf,
    /// Point reads on the calling thread (`get`).
    inline: inline_read::InlineReader,
    /// Lock files of the worker identities this process holds (see `workers.rs`); closing one
    /// releases its lock, so they live as long as the process.
    held: Arc<Mutex<Vec<std::fs::File>>>,
    /// Whether writes succeed.
    health: Arc<StoreHealth>,
    /// The change-log watcher and pruner.
    background: Arc<Background>,
}

/// Tasks that live as long as the store: the change-log watcher (stopped by dropping its
/// sender, so it closes its connection) and pruner (aborted).
#[derive(Debug)]
struct Background {
    watcher: std::sync::Mutex<
        Option<(
            tokio::task::JoinHandle<()>,
            tokio::sync::oneshot::Sender<()>,
        )>,
    >,
    pruner: tokio::task::JoinHandle<()>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.pruner.abort();
    }
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
        // Tells this store's changes from other processes' in the change log.
        let origin =
            i64::from_ne_bytes(Uuid::new_v4().as_bytes()[..8].try_into().expect("8 bytes"));

        // Migrations run on a connection of their own, closed before the writer thread
        // opens the one every later write goes through.
        let migrating = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full),
            )
            .await
            .map_err(db_err)?;
        let migrated = sql::migrator(MIGRATIONS)
            .run(&migrating)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()));
        migrating.close().await;
        migrated?;
        let health = Arc::new(StoreHealth::new("sqlite"));
        let writes = group_commit::start(
            path,
            BUSY_TIMEOUT,
            &changes::triggers(origin),
            health.clone(),
        )?;

        // The journal mode is persistent in the file; readers need not (and, read-only, cannot)
        // set it.
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(base.clone().read_only(true))
            .await
            .map_err(db_err)?;

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let watcher = changes::start_watcher(&base, origin, events.clone()).await?;
        let pruner = tokio::spawn(changes::prune_loop(reader.clone(), writes.clone()));
        Ok(SqliteStore {
            reader,
            events,
            writes,
            path: path.to_owned(),
            inline: inline_read::InlineReader::new(path),
            held: Arc::default(),
            health,
            background: Arc::new(Background {
                watcher: std::sync::Mutex::new(Some((watcher.task, watcher.stop))),
                pruner,
            }),
        })
    }

    /// Stops the background tasks, the writer thread and the read pool, waiting for their
    /// connections to close (WAL checkpoint included).
    pub(crate) async fn close(&self) {
        self.background.pruner.abort();
        let watcher = self.background.watcher.lock().expect("watcher lock").take();
        if let Some((task, stop)) = watcher {
            let _ = stop.send(());
            let _ = task.await;
        }
        self.reader.close().await;
        group_commit::close(&self.writes).await;
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

    async fn get_by_idempotency_key(&self, key: &str) -> StoreResult<Option<Task>> {
        read::get_by_idempotency_key(self, key).await
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

    async fn retry(&self, id: Uuid, budget: u32) -> StoreResult<crate::store::RetryOutcome> {
        finish::retry(self, id, budget).await
    }

    async fn finish_cancelled(&self, id: Uuid, attempt: u32) -> StoreResult<Option<Task>> {
        finish::finish_cancelled(self, id, attempt).await
    }

    async fn rescue_expired(&self) -> StoreResult<Vec<Task>> {
        claim::rescue_expired(self).await
    }

    async fn fail_waiting(
        &self,
        task_type: &str,
        due_before: DateTime<Utc>,
        error: TaskError,
    ) -> StoreResult<Vec<Task>> {
        finish::fail_waiting(self, task_type, due_before, error).await
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

    async fn hold_worker_identity(&self, identity: &str) -> StoreResult<bool> {
        workers::hold_identity(self, identity).await
    }

    async fn expire_previous_runs(&self, identity: &str, current: &str) -> StoreResult<u64> {
        workers::expire_previous_runs(self, identity, current).await
    }

    fn health(&self) -> Option<StoreFault> {
        self.health.fault()
    }

    async fn claim_deliveries(
        &self,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<crate::store::Delivery>> {
        deliveries::claim(self, lease, limit).await
    }

    async fn record_delivery(
        &self,
        id: &str,
        attempt: crate::store::DeliveryAttempt,
    ) -> StoreResult<()> {
        deliveries::record(self, id, attempt).await
    }

    async fn list_deliveries(&self, task_id: Uuid) -> StoreResult<Vec<crate::store::Delivery>> {
        deliveries::list(self, task_id).await
    }

    async fn redeliver(&self, task_id: Uuid, delivery: Option<&str>) -> StoreResult<u64> {
        deliveries::redeliver(self, task_id, delivery).await
    }

    async fn add_delivery(&self, task_id: Uuid, event: &str) -> StoreResult<bool> {
        deliveries::add(self, task_id, event).await
    }
}
