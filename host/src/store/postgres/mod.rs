//! PostgreSQL task store: the scale-out [`TaskStore`] shared by many `aihost api` and
//! `aihost consumer` processes on many machines.
//!
//! Layout and choices:
//! - one `tasks` table (schema in `host/migrations/postgres/`), the same columns as the SQLite
//!   store in native types (uuid, timestamptz, boolean); JSON values stay TEXT so they come
//!   back byte for byte. Every timestamp is the database's clock (`statement_timestamp()`,
//!   the start of the statement), never a machine's: leases written by one machine are judged
//!   by another;
//! - every write is one statement: claims lock their rows with `FOR UPDATE SKIP LOCKED`, so
//!   concurrent consumers never wait for each other nor take the same attempt; conditional
//!   transitions (retry or fail, rescue) decide with `CASE` on the row's old values;
//! - group commit (as in the SQLite store): write statements go to `group_commit` tasks that
//!   run every statement waiting in one transaction and answer each after the COMMIT, so
//!   concurrent writes share one WAL flush. Claims, progress, renewals and rescues need no
//!   flush of their own (`synchronous_commit = off` when a batch holds only those);
//! - rows are read as `row_to_json(...)` text and decoded by one function, the same that
//!   decodes the events other processes send;
//! - events: each write statement also calls `pg_notify` on the channel [`CHANNEL`] in the same
//!   statement, so the notification is sent exactly when the change commits (a batch's
//!   notifications all at its COMMIT, in statement order). The payload is
//!   `{"o": origin, "k": kind, "t": row}`, or `{"o", "k", "id"}` when the row would pass
//!   PostgreSQL's 8000-byte limit (receivers then re-read the task). A store publishes its own
//!   changes on its broadcast channel directly (in call order) and ignores its own
//!   notifications (`o` is a random id per store, set on every connection as the setting
//!   `aihost.origin`); notifications from other processes are decoded and published by one
//!   listener task on a dedicated connection. So consumers wake at once when any API process
//!   inserts a task, and an API process streams the progress of a task running anywhere;
//! - a lost connection: the pool tests connections before handing them out and reconnects;
//!   the listener reconnects and re-subscribes (sqlx's `PgListener`, rebuilt from scratch if it
//!   reports an error), then re-reads the tasks changed around the outage (`updated_at`) and
//!   publishes them as events, so no consumer or stream waits for a notification it missed.
//!
//! Migrations are embedded with `include_str!` and run with sqlx's
//! [`Migrator`](sqlx::migrate::Migrator) (which takes an advisory lock, so many processes may
//! start at once). Add one by appending to [`MIGRATIONS`](schema::MIGRATIONS).
//!
//! Files: this one holds the store, its opening and the [`TaskStore`] impl, which delegates
//! each operation to the file of its concern: `submit.rs` (insert, import), `claim.rs` (claims,
//! leases, progress, rescue), `finish.rs` (complete, fail, release, cancel), `retention.rs`
//! (prune, delete), `read.rs` (get, list, stats), `read_batch.rs` (concurrent single-task
//! reads sharing one query), `consumers.rs` (the `consumers` table), `events.rs` (NOTIFY and
//! the listener),
//! `group_commit.rs` (the write batching every write goes through) and `schema.rs`
//! (migrations, encoding and decoding of rows).

mod claim;
mod consumers;
mod deliveries;
mod events;
mod finish;
mod group_commit;
mod read;
mod read_batch;
mod retention;
mod schema;
mod submit;
#[cfg(test)]
mod tests;
mod workers;

use std::{collections::BTreeMap, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use self::{events::EVENT_CAPACITY, group_commit::WriteJob, schema::MIGRATIONS};
use super::{
    CancelOutcome, ConsumerInfo, DeleteOutcome, ListFilter, NewTask, Page, Progress, Stats, Status,
    StoreError, StoreFault, StoreResult, Task, TaskError, TaskEvent, TaskStore,
    health::StoreHealth,
    sql::{self, db_err},
};

/// Connection settings of [`PostgresStore::open`].
#[derive(Debug, Clone)]
pub(crate) struct PostgresSettings {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Most connections of this process's pool (the event listener holds one more).
    pub max_connections: u32,
    /// How long a query waits for a free connection (or a new one) before failing.
    pub acquire_timeout: Duration,
}

impl PostgresSettings {
    /// Settings with the default pool size (10) and acquire timeout (10 s).
    pub(crate) fn new(url: impl Into<String>) -> PostgresSettings {
        PostgresSettings {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// The PostgreSQL [`TaskStore`]. Cheap to clone (pool, channel and listener are shared); the
/// listener stops when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    listen_pool: PgPool,
    events: broadcast::Sender<TaskEvent>,
    listener: tokio::task::JoinHandle<()>,
    /// Write statements waiting for a group committer.
    writes: mpsc::UnboundedSender<WriteJob>,
    /// Single-task reads, batched (see `read_batch.rs`).
    reads: Arc<read_batch::ReadBatcher>,
    /// Sessions holding this process's worker-identity advisory locks (see `workers.rs`),
    /// out of the pool for the life of the process.
    held: std::sync::Mutex<Vec<sqlx::PgConnection>>,
    /// Whether writes succeed.
    health: Arc<StoreHealth>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.inner.pool)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, applies the pending migrations and starts listening for other processes'
    /// events (before returning, so no event after `open` is missed).
    pub(crate) async fn open(settings: &PostgresSettings) -> StoreResult<PostgresStore> {
        let origin = Uuid::new_v4().simple().to_string();
        let options = PgConnectOptions::from_str(&settings.url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("aihost")
            .options([
                ("aihost.origin", origin.as_str()),
                ("timezone", "UTC"),
                // Not the NOTICEs of `CREATE ... IF NOT EXISTS` at every start.
                ("client_min_messages", "warning"),
            ]);

        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(true)
            .connect_with(options.clone())
            .await
            .map_err(db_err)?;

        sql::migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;

        // The listener has a pool of its own, of one connection that it keeps: LISTEN is a
        // property of a session.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options);
        let listener = events::connect_listener(&listen_pool)
            .await
            .map_err(db_err)?;

        let health = Arc::new(StoreHealth::new("postgres"));
        let writes = group_commit::start(&pool, settings.max_connections, health.clone());

        let reads = read_batch::ReadBatcher::new(pool.clone(), settings.max_connections);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let task = tokio::spawn(events::listen_loop(
            listener,
            listen_pool.clone(),
            pool.clone(),
            events.clone(),
            origin,
        ));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                listen_pool,
                events,
                listener: task,
                writes,
                reads,
                held: std::sync::Mutex::default(),
                health,
            }),
        })
    }

    /// Stops the listener and closes the pools.
    pub(crate) async fn close(&self) {
        self.inner.listener.abort();
        self.inner.listen_pool.close().await;
        self.inner.pool.close().await;
    }
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn insert(&self, task: NewTask) -> StoreResult<(Task, bool)> {
        submit::insert(self, task).await
    }

    async fn get(&self, id: Uuid) -> StoreResult<Option<Task>> {
        self.inner.reads.get(id).await
    }

    async fn get_by_idempotency_key(&self, key: &str) -> StoreResult<Option<Task>> {
        read::get_by_idempotency_key(&self.inner.pool, key).await
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

    fn health(&self) -> Option<StoreFault> {
        self.inner.health.fault()
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

    fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.events.subscribe()
    }

    async fn hold_worker_identity(&self, identity: &str) -> StoreResult<bool> {
        workers::hold_identity(self, identity).await
    }

    async fn expire_previous_runs(&self, identity: &str, current: &str) -> StoreResult<u64> {
        workers::expire_previous_runs(self, identity, current).await
    }

    async fn announce_consumer(&self, consumer: &ConsumerInfo) -> StoreResult<()> {
        consumers::announce(self, consumer).await
    }

    async fn retire_consumer(&self, worker: &str) -> StoreResult<()> {
        consumers::retire(self, worker).await
    }

    async fn consumers(&self, max_age: Duration) -> StoreResult<Vec<ConsumerInfo>> {
        consumers::list(self, max_age).await
    }
}
