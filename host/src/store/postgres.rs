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
//! Migrations are embedded with `include_str!` and run with sqlx's [`Migrator`] (which takes an
//! advisory lock, so many processes may start at once). Add one by appending to [`MIGRATIONS`].

use std::{
    borrow::Cow, cmp::Reverse, collections::BTreeMap, str::FromStr, sync::Arc, time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{
    AssertSqlSafe, Connection, Execute, Postgres, Row, SqlStr,
    postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow},
};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::{
    CancelOutcome, ConsumerInfo, EventKind, ListFilter, NewTask, Page, Progress, Stats, Status,
    StoreError, StoreResult, Task, TaskError, TaskEvent, TaskStore,
    sql::{self, db_err, decode_cursor, json, parse_status, to_json},
};

/// The NOTIFY channel of task events.
pub const CHANNEL: &str = "aihost_events";
/// Capacity of the event channel (see the SQLite store).
const EVENT_CAPACITY: usize = 4096;
/// Page size of [`TaskStore::list`] when the filter says 0.
const DEFAULT_PAGE: u32 = 50;
/// Largest page of [`TaskStore::list`].
const MAX_PAGE: u32 = 1000;
/// Completed tasks (most recent first) the processing-time percentiles are computed over.
const PERCENTILE_SAMPLE: i64 = 10_000;
/// After a listener reconnect, tasks changed this long before the loss are published again.
const RESYNC_MARGIN: Duration = Duration::from_secs(30);
/// Most tasks published again after a listener reconnect.
const RESYNC_LIMIT: i64 = 10_000;
/// Consumers not heard from for this long are forgotten at the next announcement.
const CONSUMER_FORGET: Duration = Duration::from_secs(24 * 3600);
/// Most write statements one group commit runs in one transaction.
const MAX_BATCH: usize = 256;
/// Group committers per store (each holds a pool connection while it runs a batch): one runs
/// its batch while the other gathers the next.
const WRITERS: u32 = 2;

/// Embedded migrations: (version, description, SQL). Versions match the file prefixes.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "tasks",
    include_str!("../../migrations/postgres/0001_tasks.sql"),
)];

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

const SQL_INSERT: &str = notifying!(
    "INSERT INTO tasks (id, task_type, status, input, priority, attempts, max_attempts, \
     created_at, run_at, idempotency_key, webhook_url, cancel_requested, updated_at) \
     VALUES ($1, $2, 'PENDING', $3, $4, 0, $5, statement_timestamp(), statement_timestamp(), \
             $6, $7, false, statement_timestamp()) \
     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    "'created'"
);

const SQL_GET: &str = "SELECT row_to_json(tasks)::text AS j FROM tasks WHERE id = $1";

const SQL_GET_BY_KEY: &str =
    "SELECT row_to_json(tasks)::text AS j FROM tasks WHERE idempotency_key = $1";

/// `$2` is the lease in microseconds.
const SQL_CLAIM: &str = notifying!(
    "UPDATE tasks SET status = 'PROCESSING', attempts = attempts + 1, \
     started_at = statement_timestamp(), \
     worker = $1, lease_until = statement_timestamp() + $2::bigint * interval '1 microsecond', \
     progress_percent = NULL, progress_message = NULL, updated_at = statement_timestamp() \
     WHERE id IN (SELECT id FROM tasks \
                  WHERE status = 'PENDING' AND task_type = $3 \
                    AND run_at <= statement_timestamp() \
                  ORDER BY priority DESC, id LIMIT $4 \
                  FOR UPDATE SKIP LOCKED)",
    "'started'"
);

/// Answers the id of the renewed row (none when the lease is no longer this worker's).
const SQL_RENEW: &str = "UPDATE tasks \
     SET lease_until = statement_timestamp() + $1::bigint * interval '1 microsecond' \
     WHERE id = $2 AND status = 'PROCESSING' AND attempts = $3 AND worker = $4 RETURNING id";

const SQL_PROGRESS: &str = notifying!(
    "UPDATE tasks SET progress_percent = $1, progress_message = $2, \
     updated_at = statement_timestamp() \
     WHERE id = $3 AND status = 'PROCESSING' AND attempts = $4",
    "'progress'"
);

const SQL_COMPLETE: &str = notifying!(
    "UPDATE tasks SET status = 'COMPLETED', result = $1, finished_at = statement_timestamp(), \
     lease_until = NULL, \
     error_code = NULL, error_message = NULL, updated_at = statement_timestamp() \
     WHERE id = $2 AND status = 'PROCESSING' AND attempts = $3",
    "'completed'"
);

/// Retried (`$3` = retry_at) when a retry is asked for, attempts remain and no cancel was
/// requested; otherwise FAILED. `SET` expressions read the row's old values.
const SQL_FAIL: &str = notifying!(
    "UPDATE tasks SET \
       status = CASE WHEN ($3::timestamptz IS NOT NULL AND attempts < max_attempts \
                           AND NOT cancel_requested) THEN 'PENDING' ELSE 'FAILED' END, \
       run_at = CASE WHEN ($3::timestamptz IS NOT NULL AND attempts < max_attempts \
                           AND NOT cancel_requested) THEN $3::timestamptz ELSE run_at END, \
       finished_at = CASE WHEN ($3::timestamptz IS NOT NULL AND attempts < max_attempts \
                                AND NOT cancel_requested) THEN NULL \
                          ELSE statement_timestamp() END, \
       worker = CASE WHEN ($3::timestamptz IS NOT NULL AND attempts < max_attempts \
                           AND NOT cancel_requested) THEN NULL ELSE worker END, \
       lease_until = NULL, error_code = $4, error_message = $5, updated_at = statement_timestamp() \
     WHERE id = $1 AND status = 'PROCESSING' AND attempts = $2",
    "CASE WHEN status = 'PENDING' THEN 'retrying' ELSE 'failed' END"
);

/// A released attempt of a task whose cancel was requested ends CANCELLED.
const SQL_RELEASE: &str = notifying!(
    "UPDATE tasks SET \
       status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'PENDING' END, \
       attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, \
       run_at = CASE WHEN cancel_requested THEN run_at ELSE statement_timestamp() END, \
       finished_at = CASE WHEN cancel_requested THEN statement_timestamp() ELSE NULL END, \
       worker = CASE WHEN cancel_requested THEN worker ELSE NULL END, \
       lease_until = NULL, updated_at = statement_timestamp() \
     WHERE id = $1 AND status = 'PROCESSING' AND attempts = $2",
    "CASE WHEN status = 'CANCELLED' THEN 'cancelled' ELSE 'retrying' END"
);

const SQL_CANCEL: &str = notifying!(
    "UPDATE tasks SET \
       status = CASE WHEN status = 'PENDING' THEN 'CANCELLED' ELSE status END, \
       finished_at = CASE WHEN status = 'PENDING' THEN statement_timestamp() ELSE finished_at END, \
       cancel_requested = CASE WHEN status = 'PROCESSING' THEN true ELSE cancel_requested END, \
       updated_at = statement_timestamp() \
     WHERE id = $1 AND status IN ('PENDING', 'PROCESSING')",
    "CASE WHEN status = 'CANCELLED' THEN 'cancelled' ELSE 'cancel_requested' END"
);

const SQL_FINISH_CANCELLED: &str = notifying!(
    "UPDATE tasks SET status = 'CANCELLED', finished_at = statement_timestamp(), \
     lease_until = NULL, \
     updated_at = statement_timestamp() \
     WHERE id = $1 AND status = 'PROCESSING' AND attempts = $2",
    "'cancelled'"
);

/// Expired leases: CANCELLED if a cancel was requested, FAILED `lease_expired` without attempts
/// left, else back to PENDING. Rows another statement holds (a renewal, a completion) are
/// skipped: they are being dealt with.
const SQL_RESCUE: &str = notifying!(
    "UPDATE tasks SET \
       status = CASE WHEN cancel_requested THEN 'CANCELLED' \
                     WHEN attempts >= max_attempts THEN 'FAILED' \
                     ELSE 'PENDING' END, \
       finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts \
                          THEN statement_timestamp() \
                          ELSE NULL END, \
       run_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN run_at \
                     ELSE statement_timestamp() END, \
       worker = CASE WHEN cancel_requested OR attempts >= max_attempts THEN worker \
                     ELSE NULL END, \
       error_code = CASE WHEN cancel_requested THEN error_code ELSE 'lease_expired' END, \
       error_message = CASE WHEN cancel_requested THEN error_message \
                            ELSE 'the worker running attempt ' || attempts || \
                                 ' stopped renewing its lease' END, \
       lease_until = NULL, updated_at = statement_timestamp() \
     WHERE id IN (SELECT id FROM tasks \
                  WHERE status = 'PROCESSING' AND lease_until < statement_timestamp() \
                  FOR UPDATE SKIP LOCKED)",
    "CASE status WHEN 'CANCELLED' THEN 'cancelled' WHEN 'FAILED' THEN 'failed' \
     ELSE 'retrying' END"
);

const SQL_COUNTS: &str =
    "SELECT task_type, status, COUNT(*) AS n FROM tasks GROUP BY task_type, status";

/// Nearest-rank percentiles (`percentile_disc`) of the most recent completed tasks.
const SQL_PERCENTILES: &str = "SELECT \
       percentile_disc(0.50) WITHIN GROUP (ORDER BY ms) AS p50, \
       percentile_disc(0.95) WITHIN GROUP (ORDER BY ms) AS p95, \
       percentile_disc(0.99) WITHIN GROUP (ORDER BY ms) AS p99 \
     FROM (SELECT (EXTRACT(EPOCH FROM finished_at - started_at) * 1000)::float8 AS ms \
           FROM tasks \
           WHERE status = 'COMPLETED' AND started_at IS NOT NULL AND finished_at IS NOT NULL \
           ORDER BY id DESC LIMIT $1) d";

const SQL_PENDING_BY_TYPE: &str =
    "SELECT task_type, COUNT(*) AS n FROM tasks WHERE status = 'PENDING' GROUP BY task_type";

/// Tasks changed within the last `$1` microseconds (listener resync).
const SQL_CHANGED_SINCE: &str = "SELECT row_to_json(tasks)::text AS j FROM tasks \
     WHERE updated_at >= now() - $1::bigint * interval '1 microsecond' \
     ORDER BY updated_at LIMIT $2";

/// Copies a task as it is (`aihost store migrate`); an existing id or idempotency key is
/// skipped.
const SQL_IMPORT: &str = "INSERT INTO tasks (id, task_type, status, input, priority, attempts, \
     max_attempts, progress_percent, progress_message, result, error_code, error_message, \
     created_at, started_at, finished_at, run_at, idempotency_key, webhook_url, worker, \
     lease_until, cancel_requested, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
             $19, $20, $21, now()) \
     ON CONFLICT DO NOTHING";

const SQL_ANNOUNCE: &str = "INSERT INTO consumers \
       (worker, hostname, pid, version, task_types, started_at, heartbeat_at) \
     VALUES ($1, $2, $3, $4, $5, now(), now()) \
     ON CONFLICT (worker) DO UPDATE SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, \
       version = EXCLUDED.version, task_types = EXCLUDED.task_types, heartbeat_at = now()";

const SQL_FORGET_CONSUMERS: &str = "DELETE FROM consumers \
     WHERE heartbeat_at < now() - $1::bigint * interval '1 microsecond'";

const SQL_CONSUMERS: &str = "SELECT worker, hostname, pid, version, task_types, started_at, \
       heartbeat_at FROM consumers \
     WHERE heartbeat_at >= now() - $1::bigint * interval '1 microsecond' ORDER BY worker";

/// A write statement with its parameters bound.
type WriteQuery = sqlx::query::Query<'static, Postgres, PgArguments>;

/// Connection settings of [`PostgresStore::open`].
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Most connections of this process's pool (the event listener holds one more).
    pub max_connections: u32,
    /// How long a query waits for a free connection (or a new one) before failing.
    pub acquire_timeout: Duration,
}

impl PostgresSettings {
    /// Settings with the default pool size (10) and acquire timeout (10 s).
    pub fn new(url: impl Into<String>) -> PostgresSettings {
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
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    listen_pool: PgPool,
    events: broadcast::Sender<TaskEvent>,
    listener: tokio::task::JoinHandle<()>,
    /// Write statements waiting for a group committer.
    writes: mpsc::UnboundedSender<WriteJob>,
}

/// A write statement, and where to send its rows once committed.
struct WriteJob {
    sql: SqlStr,
    args: PgArguments,
    /// Whether the commit must be flushed to disk before the answer (inserts and state changes
    /// a client is told about). Claims, progress, renewals and rescues commit with
    /// `synchronous_commit = off` when a batch holds only those: losing one in a crash leaves
    /// the task PENDING or its lease to expire, never a wrong state (as in the SQLite store).
    durable: bool,
    reply: oneshot::Sender<Result<Vec<PgRow>, sqlx::Error>>,
}

/// A group committer: takes every write waiting (up to [`MAX_BATCH`]) and runs them in one
/// transaction on one connection, answering each after the COMMIT, so under load many writes
/// share one WAL flush while an answer still means "committed". Notifications sent inside the
/// transaction are delivered at the COMMIT. Statements use `statement_timestamp()`, so each
/// keeps the timestamps it would have had alone. A statement that fails aborts the
/// transaction: the batch is then run again statement by statement (each its own
/// transaction, as without batching), so one failure fails only its own caller. A failed
/// COMMIT fails the whole batch (whether it took effect is unknown, as for a lone statement).
async fn group_commit(pool: PgPool, jobs: Arc<Mutex<mpsc::UnboundedReceiver<WriteJob>>>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut rx = jobs.lock().await;
            match rx.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        let durable = batch.iter().any(|j| j.durable);
        if batch.len() == 1 {
            let job = batch.pop().expect("one job");
            let r = run_alone(&pool, job.sql, job.args, job.durable).await;
            let _ = job.reply.send(r);
            continue;
        }
        match run_together(&pool, &batch, durable).await {
            Ok(answers) => {
                for (job, rows) in batch.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(rows));
                }
            }
            Err(BatchError::Commit(msg)) => {
                for job in batch.drain(..) {
                    let msg = format!("commit failed: {msg}");
                    let _ = job.reply.send(Err(sqlx::Error::Protocol(msg)));
                }
            }
            Err(BatchError::Statement) => {
                for job in batch.drain(..) {
                    let r = run_alone(&pool, job.sql, job.args, job.durable).await;
                    let _ = job.reply.send(r);
                }
            }
        }
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// A statement (or BEGIN) failed: nothing was committed.
    Statement,
    /// The COMMIT failed: the outcome is unknown.
    Commit(String),
}

/// Runs one statement in a transaction of its own.
async fn run_alone(
    pool: &PgPool,
    sql: SqlStr,
    args: PgArguments,
    durable: bool,
) -> Result<Vec<PgRow>, sqlx::Error> {
    if durable {
        return sqlx::query_with(sql, args).fetch_all(pool).await;
    }
    let mut conn = pool.acquire().await?;
    let mut tx = conn
        .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await?;
    let rows = sqlx::query_with(sql, args).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Runs a batch in one transaction; answers the rows of each statement, in order.
async fn run_together(
    pool: &PgPool,
    batch: &[WriteJob],
    durable: bool,
) -> Result<Vec<Vec<PgRow>>, BatchError> {
    let begin = if durable {
        "BEGIN"
    } else {
        "BEGIN; SET LOCAL synchronous_commit = off"
    };
    let mut conn = pool.acquire().await.map_err(|_| BatchError::Statement)?;
    let mut tx = conn
        .begin_with(begin)
        .await
        .map_err(|_| BatchError::Statement)?;
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        let rows = sqlx::query_with(job.sql.clone(), job.args.clone())
            .fetch_all(&mut *tx)
            .await
            .map_err(|_| BatchError::Statement)?;
        answers.push(rows);
    }
    tx.commit()
        .await
        .map_err(|e| BatchError::Commit(e.to_string()))?;
    Ok(answers)
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
    pub async fn open(settings: &PostgresSettings) -> StoreResult<PostgresStore> {
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
        let listener = connect_listener(&listen_pool).await.map_err(db_err)?;

        let (writes, jobs) = mpsc::unbounded_channel();
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..WRITERS.min(settings.max_connections.max(1)) {
            tokio::spawn(group_commit(pool.clone(), jobs.clone()));
        }

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let task = tokio::spawn(listen_loop(
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
            }),
        })
    }

    /// Stops the listener and closes the pools.
    pub async fn close(&self) {
        self.inner.listener.abort();
        self.inner.listen_pool.close().await;
        self.inner.pool.close().await;
    }

    /// Copies tasks as they are (every field, the state included) in one transaction; tasks
    /// whose id or idempotency key exists already are skipped. Answers how many were inserted.
    /// Publishes no events: this is for `aihost store migrate`.
    pub async fn import(&self, tasks: &[Task]) -> StoreResult<u64> {
        let mut tx = self.inner.pool.begin().await.map_err(db_err)?;
        let mut inserted = 0;
        for t in tasks {
            let done = sqlx::query(SQL_IMPORT)
                .bind(t.id)
                .bind(&t.task_type)
                .bind(t.status.as_str())
                .bind(to_json(&t.input)?)
                .bind(t.priority)
                .bind(i64::from(t.attempts))
                .bind(i64::from(t.max_attempts.max(1)))
                .bind(
                    t.progress
                        .as_ref()
                        .map(|p| f64::from(clean_percent(p.percent))),
                )
                .bind(t.progress.as_ref().map(|p| clean_text(&p.message)))
                .bind(t.result.as_ref().map(to_json).transpose()?)
                .bind(t.error.as_ref().map(|e| clean_text(&e.code)))
                .bind(t.error.as_ref().map(|e| clean_text(&e.message)))
                .bind(t.created_at)
                .bind(t.started_at)
                .bind(t.finished_at)
                .bind(t.run_at)
                .bind(t.idempotency_key.as_deref().map(clean_text))
                .bind(t.webhook_url.as_deref().map(clean_text))
                .bind(t.worker.as_deref().map(clean_text))
                .bind(t.lease_until)
                .bind(t.cancel_requested)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            inserted += done.rows_affected();
        }
        tx.commit().await.map_err(db_err)?;
        Ok(inserted)
    }

    /// Publishes an event on this process's channel; nobody listening is fine.
    fn publish(&self, kind: EventKind, task: &Task) {
        if self.inner.events.receiver_count() > 0 {
            let _ = self.inner.events.send(TaskEvent {
                kind,
                task: task.clone(),
            });
        }
    }

    /// Runs a write statement through the group committer; answers its rows once committed.
    async fn write_rows(&self, query: WriteQuery, durable: bool) -> StoreResult<Vec<PgRow>> {
        let mut query = query;
        let args = query
            .take_arguments()
            .map_err(|e| StoreError::Unavailable(format!("cannot encode a parameter: {e}")))?
            .unwrap_or_default();
        let (reply, answer) = oneshot::channel();
        self.inner
            .writes
            .send(WriteJob {
                sql: query.sql(),
                args,
                durable,
                reply,
            })
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the group committer stopped".into()))?
            .map_err(db_err)
    }

    /// Runs a [`notifying!`] statement; answers each changed task with its event kind.
    async fn write(&self, query: WriteQuery, durable: bool) -> StoreResult<Vec<(EventKind, Task)>> {
        let rows = self.write_rows(query, durable).await?;
        rows.iter()
            .map(|row| {
                let kind: String = column(row, "k")?;
                Ok((parse_kind(&kind)?, task_from_row(row)?))
            })
            .collect()
    }

    /// [`Self::write`] for statements that change at most one row, publishing its event.
    async fn write_one(
        &self,
        query: WriteQuery,
        durable: bool,
    ) -> StoreResult<Option<(EventKind, Task)>> {
        let changed = self.write(query, durable).await?.into_iter().next();
        if let Some((kind, task)) = &changed {
            self.publish(*kind, task);
        }
        Ok(changed)
    }
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn insert(&self, task: NewTask) -> StoreResult<(Task, bool)> {
        let key = task.idempotency_key.as_deref().map(clean_text);
        let query = sqlx::query(SQL_INSERT)
            .bind(task.id)
            .bind(clean_text(&task.task_type))
            .bind(to_json(&task.input)?)
            .bind(task.priority)
            .bind(i64::from(task.max_attempts.max(1)))
            .bind(key.clone())
            .bind(task.webhook_url.as_deref().map(clean_text));
        if let Some((_, created)) = self.write_one(query, true).await? {
            return Ok((created, true));
        }
        // Only the idempotency key can conflict without an error: the task with that key
        // exists and was committed before our statement finished.
        let key = key.ok_or_else(|| {
            StoreError::Corrupt("insert returned no row without an idempotency key".into())
        })?;
        let row = sqlx::query(SQL_GET_BY_KEY)
            .bind(key)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(db_err)?
            .ok_or_else(|| StoreError::Corrupt("idempotency conflict but no such task".into()))?;
        Ok((task_from_row(&row)?, false))
    }

    async fn get(&self, id: Uuid) -> StoreResult<Option<Task>> {
        get_task(&self.inner.pool, id).await
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<Page> {
        let limit = match filter.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let cursor = filter.cursor.as_deref().map(decode_cursor).transpose()?;

        let mut conditions = Vec::with_capacity(3);
        let mut n = 0;
        let mut param = || {
            n += 1;
            n
        };
        if filter.status.is_some() {
            conditions.push(format!("status = ${}", param()));
        }
        if filter.task_type.is_some() {
            conditions.push(format!("task_type = ${}", param()));
        }
        if cursor.is_some() {
            conditions.push(format!("id < ${}", param()));
        }
        let mut sql = String::from("SELECT row_to_json(tasks)::text AS j FROM tasks");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", param()));

        // The SQL text only varies in its structure; every value is bound.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(task_type) = filter.task_type {
            query = query.bind(task_type);
        }
        if let Some(cursor) = cursor {
            query = query.bind(cursor);
        }
        query = query.bind(i64::from(limit) + 1);

        let rows = query.fetch_all(&self.inner.pool).await.map_err(db_err)?;
        let mut tasks = rows
            .iter()
            .map(task_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let next_cursor = if tasks.len() > limit as usize {
            tasks.truncate(limit as usize);
            tasks.last().map(|t| t.id.to_string())
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
        let query = sqlx::query(SQL_CLAIM)
            .bind(clean_text(worker))
            .bind(micros(lease))
            .bind(task_type)
            .bind(i64::from(limit));
        let mut tasks: Vec<Task> = self
            .write(query, false)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect();
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
        let query = sqlx::query(SQL_RENEW)
            .bind(micros(lease))
            .bind(id)
            .bind(i64::from(attempt))
            .bind(clean_text(worker));
        Ok(self.write_rows(query, false).await?.len() == 1)
    }

    async fn set_progress(&self, id: Uuid, attempt: u32, progress: Progress) -> StoreResult<bool> {
        let query = sqlx::query(SQL_PROGRESS)
            .bind(f64::from(clean_percent(progress.percent)))
            .bind(clean_text(&progress.message))
            .bind(id)
            .bind(i64::from(attempt));
        Ok(self.write_one(query, false).await?.is_some())
    }

    async fn complete(&self, id: Uuid, attempt: u32, result: Value) -> StoreResult<Option<Task>> {
        let query = sqlx::query(SQL_COMPLETE)
            .bind(to_json(&result)?)
            .bind(id)
            .bind(i64::from(attempt));
        Ok(self.write_one(query, true).await?.map(|(_, t)| t))
    }

    async fn fail(
        &self,
        id: Uuid,
        attempt: u32,
        error: TaskError,
        retry_at: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Task>> {
        let query = sqlx::query(SQL_FAIL)
            .bind(id)
            .bind(i64::from(attempt))
            .bind(retry_at)
            .bind(clean_text(&error.code))
            .bind(clean_text(&error.message));
        Ok(self.write_one(query, true).await?.map(|(_, t)| t))
    }

    async fn release(&self, id: Uuid, attempt: u32) -> StoreResult<bool> {
        let query = sqlx::query(SQL_RELEASE).bind(id).bind(i64::from(attempt));
        Ok(self.write_one(query, true).await?.is_some())
    }

    async fn cancel(&self, id: Uuid) -> StoreResult<CancelOutcome> {
        if let Some((_, task)) = self
            .write_one(sqlx::query(SQL_CANCEL).bind(id), true)
            .await?
        {
            return Ok(if task.status == Status::Cancelled {
                CancelOutcome::Cancelled(task)
            } else {
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
            .bind(id)
            .bind(i64::from(attempt));
        Ok(self.write_one(query, true).await?.map(|(_, t)| t))
    }

    async fn rescue_expired(&self) -> StoreResult<u64> {
        let mut changed = self.write(sqlx::query(SQL_RESCUE), false).await?;
        changed.sort_by_key(|(_, t)| t.id);
        for (kind, task) in &changed {
            self.publish(*kind, task);
        }
        Ok(changed.len() as u64)
    }

    async fn stats(&self) -> StoreResult<Stats> {
        let rows = sqlx::query(SQL_COUNTS)
            .fetch_all(&self.inner.pool)
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

        let row = sqlx::query(SQL_PERCENTILES)
            .bind(PERCENTILE_SAMPLE)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(db_err)?;
        stats.processing_ms_p50 = column(&row, "p50")?;
        stats.processing_ms_p95 = column(&row, "p95")?;
        stats.processing_ms_p99 = column(&row, "p99")?;
        Ok(stats)
    }

    async fn pending_by_type(&self) -> StoreResult<BTreeMap<String, u64>> {
        let rows = sqlx::query(SQL_PENDING_BY_TYPE)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| Ok((column(row, "task_type")?, count(row)?)))
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.events.subscribe()
    }

    async fn announce_consumer(&self, c: &ConsumerInfo) -> StoreResult<()> {
        sqlx::query(SQL_ANNOUNCE)
            .bind(clean_text(&c.worker))
            .bind(clean_text(&c.hostname))
            .bind(i64::from(c.pid))
            .bind(clean_text(&c.version))
            .bind(
                c.task_types
                    .iter()
                    .map(|t| clean_text(t))
                    .collect::<Vec<_>>(),
            )
            .execute(&self.inner.pool)
            .await
            .map_err(db_err)?;
        sqlx::query(SQL_FORGET_CONSUMERS)
            .bind(micros(CONSUMER_FORGET))
            .execute(&self.inner.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn retire_consumer(&self, worker: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM consumers WHERE worker = $1")
            .bind(clean_text(worker))
            .execute(&self.inner.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn consumers(&self, max_age: Duration) -> StoreResult<Vec<ConsumerInfo>> {
        let rows = sqlx::query(SQL_CONSUMERS)
            .bind(micros(max_age))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let pid: i64 = column(row, "pid")?;
                Ok(ConsumerInfo {
                    worker: column(row, "worker")?,
                    hostname: column(row, "hostname")?,
                    pid: u32::try_from(pid)
                        .map_err(|_| StoreError::Corrupt(format!("consumer pid {pid}")))?,
                    version: column(row, "version")?,
                    task_types: column(row, "task_types")?,
                    started_at: column(row, "started_at")?,
                    heartbeat_at: column(row, "heartbeat_at")?,
                })
            })
            .collect()
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
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
async fn listen_loop(
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
            let _ = events.send(TaskEvent { kind, task });
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
            let _ = events.send(TaskEvent { kind, task });
        }
    }
}

async fn get_task(pool: &PgPool, id: Uuid) -> StoreResult<Option<Task>> {
    let row = sqlx::query(SQL_GET)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(task_from_row).transpose()
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// PostgreSQL text cannot hold NUL: free text keeps everything else.
fn clean_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

/// Progress in range and defined (as the SQLite store keeps it).
fn clean_percent(p: f32) -> f32 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) }
}

fn column<'r, T>(row: &'r PgRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

fn count(row: &PgRow) -> StoreResult<u64> {
    let n: i64 = column(row, "n")?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

fn parse_kind(s: &str) -> StoreResult<EventKind> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("unknown event kind {s:?}")))
}

/// A `tasks` row as `row_to_json` writes it.
#[derive(Deserialize)]
struct TaskRow {
    id: Uuid,
    task_type: String,
    status: String,
    input: String,
    priority: i32,
    attempts: i64,
    max_attempts: i64,
    progress_percent: Option<f64>,
    progress_message: Option<String>,
    result: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    run_at: DateTime<Utc>,
    idempotency_key: Option<String>,
    webhook_url: Option<String>,
    worker: Option<String>,
    lease_until: Option<DateTime<Utc>>,
    cancel_requested: bool,
}

fn unsigned(v: i64, name: &str) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {name}: {v} out of range")))
}

/// Decodes a row selected as `row_to_json(...)::text AS j`.
fn task_from_row(row: &PgRow) -> StoreResult<Task> {
    let text: String = column(row, "j")?;
    let value: Value = json(&text, "j")?;
    task_from_json(value)
}

/// Decodes the JSON of a `tasks` row.
fn task_from_json(value: Value) -> StoreResult<Task> {
    let r: TaskRow =
        serde_json::from_value(value).map_err(|e| StoreError::Corrupt(format!("task row: {e}")))?;
    Ok(Task {
        id: r.id,
        task_type: r.task_type,
        status: parse_status(&r.status)?,
        input: json(&r.input, "input")?,
        priority: r.priority,
        attempts: unsigned(r.attempts, "attempts")?,
        max_attempts: unsigned(r.max_attempts, "max_attempts")?,
        progress: r.progress_percent.map(|percent| Progress {
            percent: percent as f32,
            message: r.progress_message.unwrap_or_default(),
        }),
        result: r.result.map(|text| json(&text, "result")).transpose()?,
        error: r.error_code.map(|code| TaskError {
            code,
            message: r.error_message.unwrap_or_default(),
        }),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        run_at: r.run_at,
        idempotency_key: r.idempotency_key,
        webhook_url: r.webhook_url,
        worker: r.worker,
        lease_until: r.lease_until,
        cancel_requested: r.cancel_requested,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in [
            EventKind::Created,
            EventKind::Started,
            EventKind::Progress,
            EventKind::Retrying,
            EventKind::CancelRequested,
            EventKind::Completed,
            EventKind::Failed,
            EventKind::Cancelled,
        ] {
            let s = serde_json::to_value(kind).unwrap();
            assert_eq!(parse_kind(s.as_str().unwrap()).unwrap(), kind);
        }
        assert!(matches!(parse_kind("nope"), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn text_without_nul() {
        assert_eq!(clean_text("a\0b"), "a\u{FFFD}b");
        assert_eq!(clean_text("plain"), "plain");
        assert_eq!(clean_percent(f32::NAN), 0.0);
        assert_eq!(clean_percent(150.0), 100.0);
    }

    use crate::store::conformance::pg::PgHarness;
    use serde_json::json;

    fn new_task(task_type: &str) -> NewTask {
        NewTask {
            id: Uuid::now_v7(),
            task_type: task_type.to_owned(),
            input: json!({ "x": 1 }),
            priority: 0,
            max_attempts: 3,
            idempotency_key: None,
            webhook_url: None,
        }
    }

    async fn next(rx: &mut broadcast::Receiver<TaskEvent>) -> TaskEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("event in time")
            .expect("event")
    }

    /// Another store on the same database (another process) sees every change, in order, with
    /// the task as it was then; a store never sees its own changes twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_cross_stores() {
        let h = PgHarness::new().await;
        let (a, b) = (h.store().await, h.store().await);
        let mut rx = b.subscribe();
        let (task, _) = a.insert(new_task("cross")).await.unwrap();
        let claimed = a
            .claim("cross", "w", Duration::from_secs(60), 1)
            .await
            .unwrap();
        let progress = Progress {
            percent: 25.0,
            message: "quarter".into(),
        };
        assert!(a.set_progress(task.id, 1, progress.clone()).await.unwrap());
        let done = a
            .complete(task.id, 1, json!({"r": 1}))
            .await
            .unwrap()
            .unwrap();

        let e = next(&mut rx).await;
        assert_eq!((e.kind, &e.task), (EventKind::Created, &task));
        let e = next(&mut rx).await;
        assert_eq!((e.kind, &e.task), (EventKind::Started, &claimed[0]));
        let e = next(&mut rx).await;
        assert_eq!(e.kind, EventKind::Progress);
        assert_eq!(e.task.progress, Some(progress));
        let e = next(&mut rx).await;
        assert_eq!((e.kind, &e.task), (EventKind::Completed, &done));

        // B's own insert: one event, published locally.
        let (own, _) = b.insert(new_task("own")).await.unwrap();
        let e = next(&mut rx).await;
        assert_eq!((e.kind, e.task.id), (EventKind::Created, own.id));
        // A marker from A proves B's notification (had it not been skipped) came and went.
        let (marker, _) = a.insert(new_task("marker")).await.unwrap();
        let e = next(&mut rx).await;
        assert_eq!(e.task.id, marker.id, "B saw its own change twice");
    }

    /// A task too big for a notification is announced by id and re-read by the receiver.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_task_event_is_reread() {
        let h = PgHarness::new().await;
        let (a, b) = (h.store().await, h.store().await);
        let mut rx = b.subscribe();
        let mut big = new_task("big");
        big.input = json!({ "blob": "é".repeat(20_000) });
        let (task, _) = a.insert(big).await.unwrap();
        let e = next(&mut rx).await;
        assert_eq!((e.kind, &e.task), (EventKind::Created, &task));
    }

    /// Every connection of the database killed by the server: the pool and the listener come
    /// back by themselves, and events flow again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_after_connections_are_terminated() {
        let h = PgHarness::new().await;
        let (a, b) = (h.store().await, h.store().await);
        let mut rx = a.subscribe();
        a.ping().await.unwrap();
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&b.inner.pool)
        .await
        .unwrap();
        assert!(
            killed.iter().filter(|k| **k).count() >= 2,
            "listeners and pooled connections were killed: {killed:?}"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // B's pool connection that ran the kill is alive; A's are all dead.
        let task = loop {
            match b.insert(new_task("after")).await {
                Ok((t, _)) => break t,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        loop {
            let e = next(&mut rx).await;
            if e.task.id == task.id {
                assert_eq!(e.kind, EventKind::Created);
                break;
            }
        }
        let claimed = a
            .claim("after", "w", Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert_eq!(claimed[0].id, task.id);
    }

    /// Writes sent together share a group commit; one that fails (a duplicate id) fails alone
    /// and every other write of its batch commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone() {
        let h = PgHarness::new().await;
        let store = h.store().await;
        let (first, _) = store.insert(new_task("group")).await.unwrap();
        let mut duplicate = new_task("group");
        duplicate.id = first.id;
        let mut tasks: Vec<NewTask> = (0..40).map(|_| new_task("group")).collect();
        tasks.insert(20, duplicate);
        let answers = futures_util::future::join_all(tasks.into_iter().map(|t| {
            let store = store.clone();
            async move { (t.id, store.insert(t).await) }
        }))
        .await;
        let mut inserted = 0;
        for (i, (id, answer)) in answers.into_iter().enumerate() {
            if i == 20 {
                assert!(
                    matches!(answer, Err(StoreError::Unavailable(_))),
                    "{answer:?}"
                );
                continue;
            }
            let (task, created) = answer.unwrap();
            assert!(created);
            assert_eq!(store.get(id).await.unwrap(), Some(task));
            inserted += 1;
        }
        assert_eq!(inserted, 40);
        assert_eq!(store.get(first.id).await.unwrap(), Some(first));

        // Claims and completions in flight together: each task completes once.
        let claimed = store
            .claim("group", "w", Duration::from_secs(60), 100)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 41);
        let done = futures_util::future::join_all(
            claimed
                .iter()
                .map(|t| store.complete(t.id, 1, json!({ "ok": true }))),
        )
        .await;
        for (task, answer) in claimed.iter().zip(done) {
            let done = answer.unwrap().expect("completed");
            assert_eq!((done.id, done.status), (task.id, Status::Completed));
            assert!(done.finished_at.unwrap() >= task.started_at.unwrap());
        }
    }

    /// `import` copies tasks of every state as they are, and a second run copies nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn import_keeps_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let lite = crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db"))
            .await
            .unwrap();
        let mut keyed = new_task("imp");
        keyed.idempotency_key = Some("k1".into());
        keyed.webhook_url = Some("https://example.com/h".into());
        keyed.priority = 7;
        lite.insert(keyed).await.unwrap();
        for _ in 0..4 {
            lite.insert(new_task("imp")).await.unwrap();
        }
        let running = lite
            .claim("imp", "w9", Duration::from_secs(60), 4)
            .await
            .unwrap();
        lite.set_progress(
            running[0].id,
            1,
            Progress {
                percent: 10.0,
                message: "m".into(),
            },
        )
        .await
        .unwrap();
        lite.complete(running[1].id, 1, json!(null))
            .await
            .unwrap()
            .unwrap();
        lite.fail(
            running[2].id,
            1,
            TaskError {
                code: "c".into(),
                message: "m".into(),
            },
            None,
        )
        .await
        .unwrap()
        .unwrap();
        lite.cancel(running[3].id).await.unwrap();
        let all = lite
            .list(ListFilter {
                limit: 1000,
                ..ListFilter::default()
            })
            .await
            .unwrap()
            .tasks;
        assert_eq!(all.len(), 5);

        let h = PgHarness::new().await;
        let pg = h.store().await;
        assert_eq!(pg.import(&all).await.unwrap(), 5);
        assert_eq!(pg.import(&all).await.unwrap(), 0);
        let copied = pg
            .list(ListFilter {
                limit: 1000,
                ..ListFilter::default()
            })
            .await
            .unwrap()
            .tasks;
        assert_eq!(copied, all);
    }

    /// Consumers announce themselves, beat, and retire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumers_announce_and_retire() {
        let h = PgHarness::new().await;
        let pg = h.store().await;
        let info = ConsumerInfo {
            worker: "gpu-1".into(),
            hostname: "gpu".into(),
            pid: 42,
            version: "0.1.0".into(),
            task_types: vec!["a.b".into(), "c.d".into()],
            started_at: Utc::now(),
            heartbeat_at: Utc::now(),
        };
        pg.announce_consumer(&info).await.unwrap();
        let first = pg.consumers(Duration::from_secs(60)).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].task_types, info.task_types);
        assert_eq!(first[0].pid, 42);
        tokio::time::sleep(Duration::from_millis(20)).await;
        pg.announce_consumer(&info).await.unwrap();
        let second = pg.consumers(Duration::from_secs(60)).await.unwrap();
        assert_eq!(second[0].started_at, first[0].started_at);
        assert!(second[0].heartbeat_at > first[0].heartbeat_at);
        pg.retire_consumer("gpu-1").await.unwrap();
        assert!(
            pg.consumers(Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        );
    }
}
