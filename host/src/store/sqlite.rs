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
//! Migrations are embedded with `include_str!` and run with sqlx's [`Migrator`] (same
//! `_sqlx_migrations` bookkeeping as `sqlx::migrate!`, which needs the `macros` feature this
//! crate does not enable). Add a migration by appending to [`MIGRATIONS`].

use std::{cmp::Reverse, collections::BTreeMap, path::Path, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    AssertSqlSafe, Row,
    sqlite::{
        Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
        SqliteSynchronous,
    },
};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::{
    CancelOutcome, EventKind, ListFilter, NewTask, Page, Progress, Stats, Status, StoreError,
    StoreResult, Task, TaskError, TaskEvent, TaskStore,
    sql::{self, db_err, decode_cursor, json, parse_status, to_json},
};

/// Capacity of the event channel; a subscriber that lags further loses events (and is told so
/// by `RecvError::Lagged`).
const EVENT_CAPACITY: usize = 4096;
/// Connections of the read pool.
const READ_CONNECTIONS: u32 = 4;
/// How long SQLite waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size of [`TaskStore::list`] when the filter says 0.
const DEFAULT_PAGE: u32 = 50;
/// Largest page of [`TaskStore::list`].
const MAX_PAGE: u32 = 1000;
/// Most write statements committed together in one transaction (group commit).
const MAX_BATCH: usize = 512;
/// Completed tasks (most recent first) the processing-time percentiles are computed over.
const PERCENTILE_SAMPLE: i64 = 10_000;

/// Embedded migrations: (version, description, SQL). Versions match the file prefixes.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "tasks",
    include_str!("../../migrations/sqlite/0001_tasks.sql"),
)];

/// The columns every task-returning statement selects, in one place.
macro_rules! task_columns {
    () => {
        "id, task_type, status, input, priority, attempts, max_attempts, progress_percent, \
         progress_message, result, error_code, error_message, created_at, started_at, \
         finished_at, run_at, idempotency_key, webhook_url, worker, lease_until, cancel_requested"
    };
}

const SQL_INSERT: &str = concat!(
    "INSERT INTO tasks (id, task_type, status, input, priority, attempts, max_attempts, \
     created_at, run_at, idempotency_key, webhook_url, cancel_requested) \
     VALUES (?1, ?2, 'PENDING', ?3, ?4, 0, ?5, ?6, ?6, ?7, ?8, 0) \
     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
     RETURNING ",
    task_columns!()
);

const SQL_GET: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");

const SQL_GET_BY_KEY: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE idempotency_key = ?1"
);

/// `INDEXED BY` pins the partial claim index (covering, in claim order): the planner, without
/// statistics, could otherwise pick `tasks_status_id` and sort every PENDING row.
const SQL_CLAIM: &str = concat!(
    "UPDATE tasks SET status = 'PROCESSING', attempts = attempts + 1, started_at = ?1, \
     worker = ?2, lease_until = ?3, progress_percent = NULL, progress_message = NULL \
     WHERE id IN (SELECT id FROM tasks INDEXED BY tasks_claim \
                  WHERE status = 'PENDING' AND task_type = ?4 AND run_at <= ?1 \
                  ORDER BY priority DESC, id LIMIT ?5) \
     RETURNING ",
    task_columns!()
);

const SQL_RENEW: &str = "UPDATE tasks SET lease_until = ?1 \
     WHERE id = ?2 AND status = 'PROCESSING' AND attempts = ?3 AND worker = ?4";

const SQL_PROGRESS: &str = concat!(
    "UPDATE tasks SET progress_percent = ?1, progress_message = ?2 \
     WHERE id = ?3 AND status = 'PROCESSING' AND attempts = ?4 \
     RETURNING ",
    task_columns!()
);

const SQL_COMPLETE: &str = concat!(
    "UPDATE tasks SET status = 'COMPLETED', result = ?1, finished_at = ?2, lease_until = NULL, \
     error_code = NULL, error_message = NULL \
     WHERE id = ?3 AND status = 'PROCESSING' AND attempts = ?4 \
     RETURNING ",
    task_columns!()
);

/// Retried (`?3` = retry_at) when a retry is asked for, attempts remain and no cancel was
/// requested; otherwise FAILED. `SET` expressions read the row's old values.
const SQL_FAIL: &str = concat!(
    "UPDATE tasks SET \
       status = CASE WHEN (?3 IS NOT NULL AND attempts < max_attempts AND cancel_requested = 0) \
                     THEN 'PENDING' ELSE 'FAILED' END, \
       run_at = CASE WHEN (?3 IS NOT NULL AND attempts < max_attempts AND cancel_requested = 0) \
                     THEN ?3 ELSE run_at END, \
       finished_at = CASE WHEN (?3 IS NOT NULL AND attempts < max_attempts AND cancel_requested = 0) \
                          THEN NULL ELSE ?4 END, \
       worker = CASE WHEN (?3 IS NOT NULL AND attempts < max_attempts AND cancel_requested = 0) \
                     THEN NULL ELSE worker END, \
       lease_until = NULL, error_code = ?5, error_message = ?6 \
     WHERE id = ?1 AND status = 'PROCESSING' AND attempts = ?2 \
     RETURNING ",
    task_columns!()
);

/// A released attempt of a task whose cancel was requested ends CANCELLED rather than going
/// back to the queue (it would otherwise run again and the cancel be lost).
const SQL_RELEASE: &str = concat!(
    "UPDATE tasks SET \
       status = CASE WHEN cancel_requested = 1 THEN 'CANCELLED' ELSE 'PENDING' END, \
       attempts = CASE WHEN cancel_requested = 1 THEN attempts ELSE attempts - 1 END, \
       run_at = CASE WHEN cancel_requested = 1 THEN run_at ELSE ?1 END, \
       finished_at = CASE WHEN cancel_requested = 1 THEN ?1 ELSE NULL END, \
       worker = CASE WHEN cancel_requested = 1 THEN worker ELSE NULL END, \
       lease_until = NULL \
     WHERE id = ?2 AND status = 'PROCESSING' AND attempts = ?3 \
     RETURNING ",
    task_columns!()
);

const SQL_CANCEL: &str = concat!(
    "UPDATE tasks SET \
       status = CASE WHEN status = 'PENDING' THEN 'CANCELLED' ELSE status END, \
       finished_at = CASE WHEN status = 'PENDING' THEN ?1 ELSE finished_at END, \
       cancel_requested = CASE WHEN status = 'PROCESSING' THEN 1 ELSE cancel_requested END \
     WHERE id = ?2 AND status IN ('PENDING', 'PROCESSING') \
     RETURNING ",
    task_columns!()
);

const SQL_FINISH_CANCELLED: &str = concat!(
    "UPDATE tasks SET status = 'CANCELLED', finished_at = ?1, lease_until = NULL \
     WHERE id = ?2 AND status = 'PROCESSING' AND attempts = ?3 \
     RETURNING ",
    task_columns!()
);

/// Expired leases: CANCELLED if a cancel was requested, FAILED `lease_expired` without attempts
/// left, else back to PENDING (claimable at once) with `lease_expired` as the last error.
const SQL_RESCUE: &str = concat!(
    "UPDATE tasks SET \
       status = CASE WHEN cancel_requested = 1 THEN 'CANCELLED' \
                     WHEN attempts >= max_attempts THEN 'FAILED' \
                     ELSE 'PENDING' END, \
       finished_at = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN ?1 \
                          ELSE NULL END, \
       run_at = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN run_at \
                     ELSE ?1 END, \
       worker = CASE WHEN cancel_requested = 1 OR attempts >= max_attempts THEN worker \
                     ELSE NULL END, \
       error_code = CASE WHEN cancel_requested = 1 THEN error_code ELSE 'lease_expired' END, \
       error_message = CASE WHEN cancel_requested = 1 THEN error_message \
                            ELSE 'the worker running attempt ' || attempts || \
                                 ' stopped renewing its lease' END, \
       lease_until = NULL \
     WHERE status = 'PROCESSING' AND lease_until < ?1 \
     RETURNING ",
    task_columns!()
);

const SQL_COUNTS: &str =
    "SELECT task_type, status, COUNT(*) AS n FROM tasks GROUP BY task_type, status";

const SQL_DURATIONS: &str = "SELECT finished_at - started_at AS ms FROM tasks \
     WHERE status = 'COMPLETED' AND started_at IS NOT NULL AND finished_at IS NOT NULL \
     ORDER BY id DESC LIMIT ?1";

/// Counted from the partial claim index alone (see [`SQL_CLAIM`]).
const SQL_PENDING_BY_TYPE: &str = "SELECT task_type, COUNT(*) AS n FROM tasks INDEXED BY tasks_claim \
     WHERE status = 'PENDING' GROUP BY task_type";

/// The embedded SQLite [`TaskStore`]. Cheap to clone (pools and channel are shared).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// One connection: every write goes through it.
    writer: SqlitePool,
    /// Read-only connections for `get`, `list`, `stats`...
    reader: SqlitePool,
    /// Task events.
    events: broadcast::Sender<TaskEvent>,
    /// Write statements waiting for the group committer.
    writes: mpsc::UnboundedSender<WriteJob>,
}

/// A task-returning write statement, and where to send its rows once committed.
type WriteQuery = sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments>;

struct WriteJob {
    query: WriteQuery,
    /// Whether the commit must reach the disk before the answer (inserts and terminal
    /// states). Claims, progress and rescues may ride on the next durable commit: losing one
    /// in a power cut leaves the task PENDING or its lease to expire, never a wrong state.
    durable: bool,
    reply: oneshot::Sender<Result<Vec<SqliteRow>, sqlx::Error>>,
}

/// The group committer: takes every write waiting (up to [`MAX_BATCH`]), runs them in one
/// transaction on the writer connection, and answers each after the COMMIT. With
/// `synchronous = FULL` each COMMIT is one fsync, so under load many writes share one fsync
/// and a 202 still means "on disk". A statement that fails is rolled back alone (SQLite
/// statement rollback) and answers its error; the others commit.
async fn group_commit(writer: SqlitePool, mut rx: mpsc::UnboundedReceiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    // The connection opens with synchronous = FULL.
    let mut synced = true;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut conn = match writer.acquire().await {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(sqlx::Error::Protocol(msg.clone())));
                }
                continue;
            }
        };
        let durable = batch.iter().any(|j| j.durable);
        if durable != synced {
            let pragma = if durable {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            };
            if sqlx::raw_sql(pragma).execute(&mut *conn).await.is_ok() {
                synced = durable;
            }
        }
        if batch.len() == 1 {
            let job = batch.pop().expect("one job");
            let r = job.query.fetch_all(&mut *conn).await;
            let _ = job.reply.send(r);
            continue;
        }
        if let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
            let msg = e.to_string();
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(sqlx::Error::Protocol(msg.clone())));
            }
            continue;
        }
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            let r = job.query.fetch_all(&mut *conn).await;
            answers.push((job.reply, r));
        }
        match sqlx::raw_sql("COMMIT").execute(&mut *conn).await {
            Ok(_) => {
                for (reply, r) in answers {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                let msg = e.to_string();
                for (reply, _) in answers {
                    let _ = reply.send(Err(sqlx::Error::Protocol(format!("commit failed: {msg}"))));
                }
            }
        }
    }
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if needed) the database at `path` and
    /// applies the pending migrations.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
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
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(group_commit(writer.clone(), rx));
        Ok(SqliteStore {
            writer,
            reader,
            events,
            writes,
        })
    }

    /// Closes both pools, waiting for their connections to close (WAL checkpoint included).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Publishes an event; nobody listening is fine.
    fn publish(&self, kind: EventKind, task: &Task) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(TaskEvent {
                kind,
                task: task.clone(),
            });
        }
    }

    /// Runs a task-returning write statement and decodes every row.
    async fn write_tasks(&self, query: WriteQuery) -> StoreResult<Vec<Task>> {
        self.write_rows(query, true).await
    }

    /// A write that need not be on disk before it answers (see [`WriteJob::durable`]).
    async fn write_tasks_lazy(&self, query: WriteQuery) -> StoreResult<Vec<Task>> {
        self.write_rows(query, false).await
    }

    async fn write_rows(&self, query: WriteQuery, durable: bool) -> StoreResult<Vec<Task>> {
        // Answered after the COMMIT of the batch the statement ran in.
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriteJob {
                query,
                durable,
                reply,
            })
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let rows = answer
            .await
            .map_err(|_| StoreError::Unavailable("the group committer stopped".into()))?
            .map_err(db_err)?;
        rows.iter().map(task_from_row).collect()
    }

    async fn write_task(&self, query: WriteQuery) -> StoreResult<Option<Task>> {
        Ok(self.write_tasks(query).await?.into_iter().next())
    }
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn insert(&self, task: NewTask) -> StoreResult<(Task, bool)> {
        let now = now_ms();
        let input = to_json(&task.input)?;
        let query = sqlx::query(SQL_INSERT)
            .bind(task.id.to_string())
            .bind(task.task_type)
            .bind(input)
            .bind(task.priority)
            .bind(i64::from(task.max_attempts.max(1)))
            .bind(now)
            .bind(task.idempotency_key.clone())
            .bind(task.webhook_url);
        if let Some(created) = self.write_task(query).await? {
            self.publish(EventKind::Created, &created);
            return Ok((created, true));
        }
        // Only the idempotency key can conflict without an error: the task with that key
        // exists and was committed before our statement ran.
        let key = task.idempotency_key.ok_or_else(|| {
            StoreError::Corrupt("insert returned no row without an idempotency key".into())
        })?;
        let row = sqlx::query(SQL_GET_BY_KEY)
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?
            .ok_or_else(|| StoreError::Corrupt("idempotency conflict but no such task".into()))?;
        Ok((task_from_row(&row)?, false))
    }

    async fn get(&self, id: Uuid) -> StoreResult<Option<Task>> {
        let row = sqlx::query(SQL_GET)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<Page> {
        let limit = match filter.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let cursor = filter.cursor.as_deref().map(decode_cursor).transpose()?;

        let mut conditions = Vec::with_capacity(3);
        if filter.status.is_some() {
            conditions.push("status = ?");
        }
        if filter.task_type.is_some() {
            conditions.push("task_type = ?");
        }
        if cursor.is_some() {
            conditions.push("id < ?");
        }
        let mut sql = String::from(concat!("SELECT ", task_columns!(), " FROM tasks"));
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");

        // The SQL text only varies in its structure; every value is bound.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(task_type) = filter.task_type {
            query = query.bind(task_type);
        }
        if let Some(cursor) = cursor {
            query = query.bind(cursor.to_string());
        }
        query = query.bind(i64::from(limit) + 1);

        let rows = query.fetch_all(&self.reader).await.map_err(db_err)?;
        let mut tasks = rows
            .iter()
            .map(task_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let next_cursor = if tasks.len() > limit as usize {
            tasks.truncate(limit as usize);
            tasks.last().map(|t| encode_cursor(t.id))
        } else {
            None
        };
        Ok(Page { tasks, next_cursor })
    }

    async fn claim(
        &self,
        task_type: &str,
        worker: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let query = sqlx::query(SQL_CLAIM)
            .bind(now)
            .bind(worker)
            .bind(now.saturating_add(duration_ms(lease)))
            .bind(task_type)
            .bind(i64::from(limit));
        let mut tasks = self.write_tasks_lazy(query).await?;
        // RETURNING gives no order; hand them out in claim order.
        tasks.sort_by_key(|t| (Reverse(t.priority), t.id));
        for task in &tasks {
            self.publish(EventKind::Started, task);
        }
        Ok(tasks)
    }

    async fn renew(
        &self,
        id: Uuid,
        attempt: u32,
        worker: &str,
        lease: Duration,
    ) -> StoreResult<bool> {
        let done = sqlx::query(SQL_RENEW)
            .bind(now_ms().saturating_add(duration_ms(lease)))
            .bind(id.to_string())
            .bind(i64::from(attempt))
            .bind(worker)
            .execute(&self.writer)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_progress(&self, id: Uuid, attempt: u32, progress: Progress) -> StoreResult<bool> {
        // SQLite stores NaN as NULL: keep the value in range and defined.
        let percent = if progress.percent.is_nan() {
            0.0
        } else {
            progress.percent.clamp(0.0, 100.0)
        };
        let query = sqlx::query(SQL_PROGRESS)
            .bind(f64::from(percent))
            .bind(progress.message)
            .bind(id.to_string())
            .bind(i64::from(attempt));
        match self.write_tasks_lazy(query).await?.into_iter().next() {
            Some(task) => {
                self.publish(EventKind::Progress, &task);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn complete(&self, id: Uuid, attempt: u32, result: Value) -> StoreResult<Option<Task>> {
        let query = sqlx::query(SQL_COMPLETE)
            .bind(to_json(&result)?)
            .bind(now_ms())
            .bind(id.to_string())
            .bind(i64::from(attempt));
        let task = self.write_task(query).await?;
        if let Some(task) = &task {
            self.publish(EventKind::Completed, task);
        }
        Ok(task)
    }

    async fn fail(
        &self,
        id: Uuid,
        attempt: u32,
        error: TaskError,
        retry_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Task>> {
        let query = sqlx::query(SQL_FAIL)
            .bind(id.to_string())
            .bind(i64::from(attempt))
            .bind(retry_at.map(|t| t.timestamp_millis()))
            .bind(now_ms())
            .bind(error.code)
            .bind(error.message);
        let task = self.write_task(query).await?;
        if let Some(task) = &task {
            let kind = if task.status == Status::Pending {
                EventKind::Retrying
            } else {
                EventKind::Failed
            };
            self.publish(kind, task);
        }
        Ok(task)
    }

    async fn release(&self, id: Uuid, attempt: u32) -> StoreResult<bool> {
        let query = sqlx::query(SQL_RELEASE)
            .bind(now_ms())
            .bind(id.to_string())
            .bind(i64::from(attempt));
        match self.write_task(query).await? {
            Some(task) => {
                let kind = if task.status == Status::Cancelled {
                    EventKind::Cancelled
                } else {
                    EventKind::Retrying
                };
                self.publish(kind, &task);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn cancel(&self, id: Uuid) -> StoreResult<CancelOutcome> {
        let query = sqlx::query(SQL_CANCEL).bind(now_ms()).bind(id.to_string());
        if let Some(task) = self.write_task(query).await? {
            return Ok(if task.status == Status::Cancelled {
                self.publish(EventKind::Cancelled, &task);
                CancelOutcome::Cancelled(task)
            } else {
                self.publish(EventKind::CancelRequested, &task);
                CancelOutcome::Requested(task)
            });
        }
        // Nothing was PENDING or PROCESSING with that id: it is unknown or terminal, and a
        // terminal state never changes again.
        Ok(match self.get(id).await? {
            Some(task) => CancelOutcome::AlreadyFinished(task),
            None => CancelOutcome::NotFound,
        })
    }

    async fn finish_cancelled(&self, id: Uuid, attempt: u32) -> StoreResult<Option<Task>> {
        let query = sqlx::query(SQL_FINISH_CANCELLED)
            .bind(now_ms())
            .bind(id.to_string())
            .bind(i64::from(attempt));
        let task = self.write_task(query).await?;
        if let Some(task) = &task {
            self.publish(EventKind::Cancelled, task);
        }
        Ok(task)
    }

    async fn rescue_expired(&self) -> StoreResult<u64> {
        let mut tasks = self
            .write_tasks_lazy(sqlx::query(SQL_RESCUE).bind(now_ms()))
            .await?;
        tasks.sort_by_key(|t| t.id);
        for task in &tasks {
            let kind = match task.status {
                Status::Cancelled => EventKind::Cancelled,
                Status::Failed => EventKind::Failed,
                _ => EventKind::Retrying,
            };
            self.publish(kind, task);
        }
        Ok(tasks.len() as u64)
    }

    async fn stats(&self) -> StoreResult<Stats> {
        let rows = sqlx::query(SQL_COUNTS)
            .fetch_all(&self.reader)
            .await
            .map_err(db_err)?;
        let counts = rows
            .iter()
            .map(|row| {
                let status: String = column(row, "status")?;
                Ok((
                    column(row, "task_type")?,
                    parse_status(&status)?,
                    count(row)?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let mut stats = Stats::from_counts(counts);

        let rows = sqlx::query(SQL_DURATIONS)
            .bind(PERCENTILE_SAMPLE)
            .fetch_all(&self.reader)
            .await
            .map_err(db_err)?;
        let mut durations = rows
            .iter()
            .map(|r| column::<i64>(r, "ms"))
            .collect::<StoreResult<Vec<_>>>()?;
        durations.sort_unstable();
        stats.processing_ms_p50 = percentile(&durations, 50.0);
        stats.processing_ms_p95 = percentile(&durations, 95.0);
        stats.processing_ms_p99 = percentile(&durations, 99.0);
        Ok(stats)
    }

    async fn pending_by_type(&self) -> StoreResult<BTreeMap<String, u64>> {
        let rows = sqlx::query(SQL_PENDING_BY_TYPE)
            .fetch_all(&self.reader)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| Ok((column(row, "task_type")?, count(row)?)))
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }
}

/// Now, in stored form (milliseconds since the epoch).
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Cursors are the id of the last task of the previous page.
fn encode_cursor(id: Uuid) -> String {
    id.to_string()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64)
}

fn column<'r, T>(row: &'r SqliteRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

fn count(row: &SqliteRow) -> StoreResult<u64> {
    let n: i64 = column(row, "n")?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

fn time(ms: i64, name: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("column {name}: timestamp {ms} out of range")))
}

fn opt_time(row: &SqliteRow, name: &str) -> StoreResult<Option<DateTime<Utc>>> {
    column::<Option<i64>>(row, name)?
        .map(|ms| time(ms, name))
        .transpose()
}

fn unsigned(row: &SqliteRow, name: &str) -> StoreResult<u32> {
    let v: i64 = column(row, name)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {name}: {v} out of range")))
}

/// Decodes a row of [`task_columns!`].
fn task_from_row(row: &SqliteRow) -> StoreResult<Task> {
    let id: String = column(row, "id")?;
    let id = Uuid::try_parse(&id).map_err(|e| StoreError::Corrupt(format!("column id: {e}")))?;
    let status: String = column(row, "status")?;
    let input: String = column(row, "input")?;
    let progress = match (
        column::<Option<f64>>(row, "progress_percent")?,
        column::<Option<String>>(row, "progress_message")?,
    ) {
        (Some(percent), message) => Some(Progress {
            percent: percent as f32,
            message: message.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    let result = column::<Option<String>>(row, "result")?
        .map(|text| json(&text, "result"))
        .transpose()?;
    let error = match (
        column::<Option<String>>(row, "error_code")?,
        column::<Option<String>>(row, "error_message")?,
    ) {
        (Some(code), message) => Some(TaskError {
            code,
            message: message.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    Ok(Task {
        id,
        task_type: column(row, "task_type")?,
        status: parse_status(&status)?,
        input: json(&input, "input")?,
        priority: column(row, "priority")?,
        attempts: unsigned(row, "attempts")?,
        max_attempts: unsigned(row, "max_attempts")?,
        progress,
        result,
        error,
        created_at: time(column(row, "created_at")?, "created_at")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        run_at: time(column(row, "run_at")?, "run_at")?,
        idempotency_key: column(row, "idempotency_key")?,
        webhook_url: column(row, "webhook_url")?,
        worker: column(row, "worker")?,
        lease_until: opt_time(row, "lease_until")?,
        cancel_requested: column::<i64>(row, "cancel_requested")? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7.0));
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1.0));
        assert_eq!(percentile(&[1, 2], 95.0), Some(2.0));
    }

    #[test]
    fn cursors() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        assert!(matches!(decode_cursor("x"), Err(StoreError::InvalidCursor)));
    }

    async fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn durable_pragmas() {
        let (_dir, store) = open().await;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous = FULL");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(fk, 1);
        // Readers are read-only.
        let write = sqlx::query("DELETE FROM tasks")
            .execute(&store.reader)
            .await;
        assert!(write.is_err());
    }

    /// The hot statements use their indexes (no full scan, no sort).
    #[tokio::test]
    async fn query_plans_use_indexes() {
        let (_dir, store) = open().await;
        let plan = |sql: &'static str| {
            let store = store.clone();
            async move {
                let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&store.writer)
                    .await
                    .unwrap();
                rows.iter()
                    .map(|r| r.try_get::<String, _>("detail").unwrap())
                    .collect::<Vec<_>>()
                    .join(" | ")
            }
        };
        let claim = plan(SQL_CLAIM).await;
        assert!(claim.contains("tasks_claim"), "{claim}");
        assert!(!claim.contains("TEMP B-TREE"), "{claim}");
        let rescue = plan(SQL_RESCUE).await;
        assert!(rescue.contains("tasks_status_id"), "{rescue}");
        let list = plan(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE status = ? AND id < ? ORDER BY id DESC LIMIT ?"
        ))
        .await;
        assert!(
            list.contains("tasks_status_id") && !list.contains("TEMP B-TREE"),
            "{list}"
        );
        let list = plan(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE task_type = ? ORDER BY id DESC LIMIT ?"
        ))
        .await;
        assert!(
            list.contains("tasks_type_id") && !list.contains("TEMP B-TREE"),
            "{list}"
        );
        let pending = plan(SQL_PENDING_BY_TYPE).await;
        assert!(
            pending.contains("tasks_claim") && !pending.contains("TEMP B-TREE"),
            "{pending}"
        );
    }

    /// Rough figure of single durable inserts (one fsync each): `cargo test -- --ignored`.
    #[tokio::test]
    #[ignore]
    async fn insert_throughput() {
        let (_dir, store) = open().await;
        let n = 2000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            store
                .insert(NewTask {
                    id: Uuid::now_v7(),
                    task_type: "bench".into(),
                    input: serde_json::json!({ "x": 1 }),
                    priority: 0,
                    max_attempts: 3,
                    idempotency_key: None,
                    webhook_url: None,
                })
                .await
                .unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!("{n} inserts in {secs:.3}s: {:.0}/s", n as f64 / secs);
    }
}
