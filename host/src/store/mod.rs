//! Task state: the [`TaskStore`] trait and its implementations.
//!
//! Every read and write of task state goes through this trait. Implementations:
//! [`sqlite::SqliteStore`] (embedded default: one machine, one or several processes on one
//! file) and [`postgres::PostgresStore`] (scale-out: many processes on many machines); both
//! pass the same conformance suite (`conformance/`).
//!
//! Invariants every implementation keeps:
//! - a task accepted by [`TaskStore::insert`] is durable when the call returns;
//! - claims are atomic: one attempt of a task is handed to one worker only;
//! - a terminal state (COMPLETED, FAILED, CANCELLED) is written once; a late or stale
//!   completion (wrong attempt, task no longer PROCESSING) is refused and changes nothing;
//! - every state change and progress update is published as a [`TaskEvent`], in every process
//!   using the database (its own changes once);
//! - every write transaction's outcome is reported to the store's [`health::StoreHealth`].

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error_codes;
pub(crate) use deliveries::{Delivery, DeliveryAttempt, DeliveryOutcome, DeliveryState};

/// How often a consumer refreshes its row in the consumers table (PostgreSQL); `GET
/// /api/status` lists consumers heard from within three of these.
pub(crate) const CONSUMER_HEARTBEAT: Duration = Duration::from_secs(10);

pub(crate) use health::{Cause, StoreFault};

pub(crate) mod deliveries;
pub(crate) mod health;
pub(crate) mod postgres;
mod sql;
pub(crate) mod sqlite;

#[cfg(test)]
mod conformance;

/// Lifecycle state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Waiting to be claimed (possibly not before `run_at`).
    Pending,
    /// Claimed by a worker that holds a lease.
    Processing,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Processing,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The stored and wire form: `PENDING`, `PROCESSING`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Processing => "PROCESSING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// Parses the wire form (case-insensitive).
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether the status is final.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// Progress of a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0 to 100.
    pub percent: f32,
    /// Short description of the current step.
    pub message: String,
    /// The attempt's latest live preview, `{"key", "url", "content_type", "n"}` (`n` counts
    /// the attempt's previews), when its plugin reported one. Written by `set_progress` only
    /// when given (a progress update without one keeps the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Value>,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// Stable snake_case code (the plugin's, or the host's such as `lease_expired`).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// UUIDv7: sorts by creation time.
    pub id: Uuid,
    /// Task type, e.g. `imageops.transform`.
    pub task_type: String,
    /// Current state.
    pub status: Status,
    /// The validated input.
    pub input: Value,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts started so far (the running one included).
    pub attempts: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Last reported progress.
    pub progress: Option<Progress>,
    /// Result of a COMPLETED task.
    pub result: Option<Value>,
    /// Error of a FAILED task (or the last error of a task waiting for a retry).
    pub error: Option<TaskError>,
    /// When the task was accepted.
    pub created_at: DateTime<Utc>,
    /// When the current (or last) attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the task reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// Not claimable before this time (retry backoff).
    pub run_at: DateTime<Utc>,
    /// Client-chosen deduplication key.
    pub idempotency_key: Option<String>,
    /// URL to call when the task finishes.
    pub webhook_url: Option<String>,
    /// Worker holding the lease while PROCESSING.
    pub worker: Option<String>,
    /// Lease expiry while PROCESSING.
    pub lease_until: Option<DateTime<Utc>>,
    /// A client asked to cancel this PROCESSING task.
    pub cancel_requested: bool,
    /// The trace context of the request that submitted it (W3C `traceparent` text), when trace
    /// export was on; the attempts' spans continue that trace. Opaque to the store.
    pub trace_parent: Option<String>,
    /// The client's time limit of one attempt, in seconds (`None`: the configured or plugin
    /// default applies).
    pub timeout_secs: Option<u32>,
    /// Hex SHA-256 of the request that created it (task type, input and options), which binds
    /// its idempotency key; none for tasks stored before schema v3.
    pub request_hash: Option<String>,
}

/// A task to insert.
#[derive(Debug, Clone)]
pub(crate) struct NewTask {
    /// The id to give it (UUIDv7).
    pub id: Uuid,
    /// Task type.
    pub task_type: String,
    /// Validated input.
    pub input: Value,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts allowed (at least 1).
    pub max_attempts: u32,
    /// Deduplication key.
    pub idempotency_key: Option<String>,
    /// Completion webhook.
    pub webhook_url: Option<String>,
    /// The submitting request's trace context (W3C `traceparent`), if traces are exported.
    pub trace_parent: Option<String>,
    /// Time limit of one attempt, in seconds, if the client set one.
    pub timeout_secs: Option<u32>,
    /// Hex SHA-256 of the request (see [`Task::request_hash`]).
    pub request_hash: Option<String>,
    /// Optional webhook events asked for besides the terminal ones, comma-separated
    /// (`task.started,task.progress`); `None` for none.
    pub webhook_events: Option<String>,
}

/// What happened to a task, published to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    /// Inserted (PENDING).
    Created,
    /// Claimed by a worker (PROCESSING).
    Started,
    /// Progress changed.
    Progress,
    /// A new live preview of the running attempt (`progress.preview`).
    Preview,
    /// Back to PENDING after a retryable failure, a lease expiry or a shutdown.
    Retrying,
    /// A client asked to cancel a PROCESSING task.
    CancelRequested,
    /// COMPLETED.
    Completed,
    /// FAILED.
    Failed,
    /// CANCELLED.
    Cancelled,
}

impl std::fmt::Display for EventKind {
    /// The wire form (`created`, `cancel_requested`, ...).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(Value::String(s)) => f.write_str(&s),
            _ => Err(std::fmt::Error),
        }
    }
}

impl EventKind {
    /// Every kind, in lifecycle order.
    pub(crate) const ALL: [EventKind; 9] = [
        EventKind::Created,
        EventKind::Started,
        EventKind::Progress,
        EventKind::Preview,
        EventKind::Retrying,
        EventKind::CancelRequested,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Cancelled,
    ];

    /// Parses the wire form (`created`, `cancel_requested`, ...), as stored in the SQLite
    /// change log and sent in PostgreSQL notifications.
    pub(crate) fn parse(s: &str) -> Option<EventKind> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }
}

/// A state change or progress update of one task, with the task as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TaskEvent {
    /// What happened.
    pub kind: EventKind,
    /// The task after the change, without its input (`input` is null): an event is cloned for
    /// every subscriber and kept in the channel's ring, so it carries nothing a client sized.
    pub task: Task,
}

impl TaskEvent {
    /// The event `kind` of `task`, its input left out.
    pub(crate) fn of(kind: EventKind, task: &Task) -> Self {
        TaskEvent {
            kind,
            task: task.without_input(),
        }
    }

    /// The event `kind` of an owned `task`, its input dropped.
    pub(crate) fn of_owned(kind: EventKind, mut task: Task) -> Self {
        task.input = Value::Null;
        TaskEvent { kind, task }
    }
}

impl Task {
    /// Whether this claimed attempt is the first run of the task: no earlier attempt can have
    /// reached an engine, so a plugin need not look for one (the comfyui plugin then skips its
    /// search for earlier prompts). True when the attempt is the first (`attempts == 1`) and
    /// the task was never given back: a release (graceful shutdown) decrements `attempts` so
    /// the attempt is not counted, and moves `run_at` past `created_at` (both stores), which
    /// no other change undoes; a task inserted has `run_at == created_at`.
    pub fn is_first_run(&self) -> bool {
        self.attempts == 1 && self.run_at == self.created_at
    }

    /// A copy with `input` null, without copying the input.
    pub(crate) fn without_input(&self) -> Task {
        Task {
            id: self.id,
            task_type: self.task_type.clone(),
            status: self.status,
            input: Value::Null,
            priority: self.priority,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            progress: self.progress.clone(),
            result: self.result.clone(),
            error: self.error.clone(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            run_at: self.run_at,
            idempotency_key: self.idempotency_key.clone(),
            webhook_url: self.webhook_url.clone(),
            worker: self.worker.clone(),
            lease_until: self.lease_until,
            cancel_requested: self.cancel_requested,
            trace_parent: self.trace_parent.clone(),
            timeout_secs: self.timeout_secs,
            request_hash: self.request_hash.clone(),
        }
    }
}

/// Filters for [`TaskStore::list`].
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this type.
    pub task_type: Option<String>,
    /// Page size (the store caps it at 1000).
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
    /// Leave the inputs out (each task's `input` is null): they are not even read.
    pub without_input: bool,
    /// With inputs: end the page early (with a next cursor) once the inputs read reach this
    /// many bytes (their JSON length), so a page's memory does not depend on what clients sent.
    /// At least one task is always returned.
    pub input_budget: Option<u64>,
}

/// One page of tasks, newest first.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// Outcome of [`TaskStore::cancel`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CancelOutcome {
    /// It was PENDING and is now CANCELLED.
    Cancelled(Task),
    /// It is PROCESSING; `cancel_requested` is set and a CancelRequested event published. The
    /// worker running it stops it and calls [`TaskStore::finish_cancelled`].
    Requested(Task),
    /// It had already finished; nothing changed.
    AlreadyFinished(Task),
    /// No such task.
    NotFound,
}

/// Outcome of [`TaskStore::retry`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RetryOutcome {
    /// It was FAILED or CANCELLED and is now PENDING (the task as it is now).
    Retried(Task),
    /// It is PENDING, PROCESSING or COMPLETED; nothing changed.
    NotRetryable(Task),
    /// No such task.
    NotFound,
}

/// Outcome of [`TaskStore::delete`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeleteOutcome {
    /// It had finished and is deleted (the task as it was).
    Deleted(Task),
    /// It is PENDING or PROCESSING; nothing changed.
    Live(Task),
    /// No such task.
    NotFound,
}

/// Aggregate figures for `GET /api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Stats {
    /// Tasks per status (every status present, zero included).
    pub by_status: BTreeMap<String, u64>,
    /// Tasks per type, then per status.
    pub by_type: BTreeMap<String, BTreeMap<String, u64>>,
    /// COMPLETED / (COMPLETED + FAILED), or none when nothing finished.
    pub success_rate: Option<f64>,
    /// Processing time (started_at to finished_at) of COMPLETED tasks, in milliseconds.
    pub processing_ms_p50: Option<f64>,
    /// 95th percentile of the same.
    pub processing_ms_p95: Option<f64>,
    /// 99th percentile of the same.
    pub processing_ms_p99: Option<f64>,
    /// PENDING tasks.
    pub queue_depth: u64,
}

/// A consumer process as it announced itself (PostgreSQL deployments; see
/// [`TaskStore::announce_consumer`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConsumerInfo {
    /// Its worker id (recorded on the tasks it claims).
    pub worker: String,
    /// Host name of its machine.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// aihost version it runs.
    pub version: String,
    /// Task types it serves (from its loaded plugins).
    pub task_types: Vec<String>,
    /// When it first announced itself.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}

fn zero_counts() -> BTreeMap<String, u64> {
    Status::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect()
}

impl Stats {
    /// Figures from `(task_type, status, count)` rows: every status present (zero included),
    /// per type too, with the success rate and queue depth derived. Percentiles are left to
    /// the caller.
    pub(crate) fn from_counts(rows: impl IntoIterator<Item = (String, Status, u64)>) -> Stats {
        let mut stats = Stats {
            by_status: zero_counts(),
            ..Stats::default()
        };
        for (task_type, status, n) in rows {
            let status = status.as_str().to_owned();
            *stats.by_status.entry(status.clone()).or_default() += n;
            *stats
                .by_type
                .entry(task_type)
                .or_insert_with(zero_counts)
                .entry(status)
                .or_default() += n;
        }
        let completed = stats.by_status[Status::Completed.as_str()];
        let failed = stats.by_status[Status::Failed.as_str()];
        if completed + failed > 0 {
            stats.success_rate = Some(completed as f64 / (completed + failed) as f64);
        }
        stats.queue_depth = stats.by_status[Status::Pending.as_str()];
        stats
    }
}

/// Errors of a task store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or answered with an error.
    #[error("task store unavailable: {0}")]
    Unavailable(String),
    /// A migration failed at open.
    #[error("task store migration failed: {0}")]
    Migration(String),
    /// An insert named an idempotency key whose task was created by another request (another
    /// type, input or options). Nothing was written.
    #[error("idempotency key {key:?} was used by task {existing} for another request")]
    IdempotencyConflict {
        /// The key (cut to 64 characters for the message).
        key: String,
        /// The task that holds the key.
        existing: Uuid,
    },
    /// A cursor that this store did not produce.
    #[error("invalid cursor")]
    InvalidCursor,
    /// Stored data could not be decoded (a bug or a foreign write).
    #[error("corrupt task row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => error_codes::STORE_UNAVAILABLE,
            StoreError::Migration(_) => error_codes::STORE_MIGRATION_FAILED,
            StoreError::InvalidCursor => error_codes::INVALID_CURSOR,
            StoreError::IdempotencyConflict { .. } => error_codes::IDEMPOTENCY_CONFLICT,
            StoreError::Corrupt(_) => error_codes::STORE_CORRUPT,
        }
    }
}

/// Result alias of this module.
pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// Durable task state. See the module docs for the invariants.
#[async_trait]
pub(crate) trait TaskStore: Send + Sync + 'static {
    /// Inserts a task, durably. If `idempotency_key` is set and a task with that key exists,
    /// returns that task and `false` and writes nothing; otherwise the new task and `true`.
    /// When both the existing task and the new one carry a `request_hash` and the two differ,
    /// answers [`StoreError::IdempotencyConflict`] and writes nothing (a task without a hash,
    /// stored before schema v3, matches any request).
    async fn insert(&self, task: NewTask) -> StoreResult<(Task, bool)>;

    /// Reads one task.
    async fn get(&self, id: Uuid) -> StoreResult<Option<Task>>;

    /// Reads the task holding an idempotency key (the ComfyUI gateway finds a prompt's task
    /// by its key `comfy:{prompt_id}`).
    async fn get_by_idempotency_key(&self, key: &str) -> StoreResult<Option<Task>>;

    /// Lists tasks newest first, with cursor pagination.
    async fn list(&self, filter: ListFilter) -> StoreResult<Page>;

    /// Atomically claims up to `limit` PENDING tasks of `task_type` whose `run_at` has passed,
    /// highest priority first then oldest first: each becomes PROCESSING with `attempts + 1`,
    /// `started_at = now`, `worker`, and `lease_until = now + lease`. Publishes Started.
    async fn claim(
        &self,
        task_type: &str,
        worker: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Task>>;

    /// Extends the lease of a task this worker runs (`attempt` = its `attempts`). `false` if
    /// the task is no longer this attempt's (rescued, cancelled, finished).
    async fn renew(
        &self,
        id: Uuid,
        attempt: u32,
        worker: &str,
        lease: Duration,
    ) -> StoreResult<bool>;

    /// Records progress of a running attempt and publishes Progress (Preview when
    /// `progress.preview` is given; without one the stored preview is kept). `false` if stale.
    async fn set_progress(&self, id: Uuid, attempt: u32, progress: Progress) -> StoreResult<bool>;

    /// PROCESSING → COMPLETED with `result`, if `attempt` is the current one. `None` if stale
    /// (nothing written), else the finished task. Publishes Completed.
    async fn complete(&self, id: Uuid, attempt: u32, result: Value) -> StoreResult<Option<Task>>;

    /// A failed attempt. If `retry_at` is some and attempts remain, → PENDING with
    /// `run_at = retry_at` and `error` kept as the last error (publishes Retrying); otherwise →
    /// FAILED (publishes Failed). `None` if stale.
    async fn fail(
        &self,
        id: Uuid,
        attempt: u32,
        error: TaskError,
        retry_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Task>>;

    /// Gives a running attempt back without counting it (graceful shutdown): → PENDING with
    /// `attempts - 1`, claimable at once. `false` if stale. Publishes Retrying.
    async fn release(&self, id: Uuid, attempt: u32) -> StoreResult<bool>;

    /// A client's cancel. See [`CancelOutcome`].
    async fn cancel(&self, id: Uuid) -> StoreResult<CancelOutcome>;

    /// A client's retry of a FAILED or CANCELLED task: → PENDING, claimable at once, same id,
    /// with `max_attempts = attempts + budget` (the attempt counter keeps increasing: attempt
    /// numbers name output folders), and error, result, progress, cancel request, worker,
    /// lease and `finished_at` cleared. Publishes Retrying. Other states change nothing.
    async fn retry(&self, id: Uuid, budget: u32) -> StoreResult<RetryOutcome>;

    /// PROCESSING → CANCELLED after the worker stopped the attempt. `None` if stale.
    async fn finish_cancelled(&self, id: Uuid, attempt: u32) -> StoreResult<Option<Task>>;

    /// Stalled-task rescue: every PROCESSING task whose lease expired goes back to PENDING, or
    /// to FAILED with code `lease_expired` when it has no attempts left (or CANCELLED if a cancel
    /// was requested). Answers the tasks it changed, in their new state.
    async fn rescue_expired(&self) -> StoreResult<Vec<Task>>;

    /// Outage limit: every PENDING task of `task_type` due at or before `due_before` goes to
    /// FAILED with `error` (its engine stayed unavailable too long). Publishes Failed for each;
    /// answers them in their new state.
    async fn fail_waiting(
        &self,
        task_type: &str,
        due_before: DateTime<Utc>,
        error: TaskError,
    ) -> StoreResult<Vec<Task>>;

    /// Deletes up to `limit` tasks of the terminal `status` that finished before `before`, oldest
    /// first; answers their ids (so their files can be removed). Nothing for a live status.
    /// Deleting frees the task's idempotency key. Idempotent: many processes may prune at once.
    async fn prune(
        &self,
        status: Status,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Uuid>>;

    /// How many tasks [`TaskStore::prune`] would delete without a limit (a dry run).
    async fn count_prunable(&self, status: Status, before: DateTime<Utc>) -> StoreResult<u64>;

    /// Deletes one finished task; refuses a live one. See [`DeleteOutcome`].
    async fn delete(&self, id: Uuid) -> StoreResult<DeleteOutcome>;

    /// Whether the input of any PENDING or PROCESSING task contains `needle` (the uploads
    /// pruner asks for `uploads/{id}`).
    async fn live_input_mentions(&self, needle: &str) -> StoreResult<bool>;

    /// Aggregate figures.
    async fn stats(&self) -> StoreResult<Stats>;

    /// PENDING tasks of each type (claimable now or later).
    async fn pending_by_type(&self) -> StoreResult<BTreeMap<String, u64>>;

    /// Checks the store answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Subscribes to every task event from now on: this process's changes and, when other
    /// processes share the database, theirs.
    fn subscribe(&self) -> broadcast::Receiver<TaskEvent>;

    /// Claims a consumer identity for this process for as long as it lives: `false` if another
    /// live process holds it. The hold ends when the process dies, however it dies (a file
    /// lock on SQLite, a session advisory lock on PostgreSQL), so a restarted consumer gets its
    /// identity back at once.
    async fn hold_worker_identity(&self, identity: &str) -> StoreResult<bool>;

    /// Ends at once the leases of the PROCESSING tasks held by earlier runs of `identity`
    /// (worker ids `{identity}#{run}` other than `current`): a restarted consumer calls it after
    /// [`TaskStore::hold_worker_identity`] so that the next rescue puts back what its previous
    /// run held, instead of waiting for those leases to run out. Answers how many.
    async fn expire_previous_runs(&self, identity: &str, current: &str) -> StoreResult<u64>;

    /// Why writes fail now, or none while they succeed (see [`health`]).
    fn health(&self) -> Option<StoreFault>;

    /// Claims up to `limit` due pending webhook deliveries whose lease (if any) expired, leasing
    /// each for `lease`: no other process claims it meanwhile. Oldest due first.
    async fn claim_deliveries(&self, lease: Duration, limit: u32) -> StoreResult<Vec<Delivery>>;

    /// Records one attempt of a pending delivery (its payload is kept from the first attempt)
    /// and releases its lease. Nothing for a delivery no longer pending.
    async fn record_delivery(&self, id: &str, attempt: DeliveryAttempt) -> StoreResult<()>;

    /// The deliveries of a task, oldest first.
    async fn list_deliveries(&self, task_id: Uuid) -> StoreResult<Vec<Delivery>>;

    /// Makes the task's delivery `delivery` (or all its deliveries) pending and due now, with
    /// a new retry window. Answers how many it changed.
    async fn redeliver(&self, task_id: Uuid, delivery: Option<&str>) -> StoreResult<u64>;

    /// Adds a delivery of `event` for the task if it has a webhook and asked for that event
    /// (its `webhook_events`); answers whether it did.
    async fn add_delivery(&self, task_id: Uuid, event: &str) -> StoreResult<bool>;

    /// Records (or refreshes: a heartbeat) a consumer and the task types it serves; the store
    /// keeps `started_at` of the first announcement and stamps `heartbeat_at` itself. Stores
    /// that serve one machine keep nothing (the default).
    async fn announce_consumer(&self, consumer: &ConsumerInfo) -> StoreResult<()> {
        let _ = consumer;
        Ok(())
    }

    /// Forgets a consumer that stops cleanly.
    async fn retire_consumer(&self, worker: &str) -> StoreResult<()> {
        let _ = worker;
        Ok(())
    }

    /// Consumers heard from within `max_age`, by worker id.
    async fn consumers(&self, max_age: Duration) -> StoreResult<Vec<ConsumerInfo>> {
        let _ = max_age;
        Ok(Vec::new())
    }
}
