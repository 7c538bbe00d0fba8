//! Group commit of the PostgreSQL store: every write statement goes to a few committer tasks
//! that run all the statements waiting in one transaction and answer each after the COMMIT, so
//! concurrent writes share one WAL flush. Separate because it is the one place writes reach
//! the database, and its batching and failure rules stand apart from what each write does.

use std::{sync::Arc, time::Instant};

use sqlx::{
    Connection, Execute, Postgres, SqlStr,
    postgres::{PgArguments, PgPool, PgRow},
};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{PostgresStore, events::parse_kind, schema::task_from_row};
use crate::store::{
    EventKind, StoreError, StoreResult, Task,
    health::{Cause, StoreHealth},
    sql::{column, db_err},
};

/// The `store` label of this store's commit metrics.
const STORE: &str = "postgres";

/// Most write statements one group commit runs in one transaction.
const MAX_BATCH: usize = 256;
/// Group committers per store (each holds a pool connection while it runs a batch): one runs
/// its batch while the other gathers the next.
const WRITERS: u32 = 2;

/// A write statement with its parameters bound.
pub(super) type WriteQuery = sqlx::query::Query<'static, Postgres, PgArguments>;

/// A write statement, and where to send its rows once committed.
pub(super) struct WriteJob {
    sql: SqlStr,
    args: PgArguments,
    /// Whether the commit must be flushed to disk before the answer (inserts and state changes
    /// a client is told about). Claims, progress, renewals and rescues commit with
    /// `synchronous_commit = off` when a batch holds only those: losing one in a crash leaves
    /// the task PENDING or its lease to expire, never a wrong state (as in the SQLite store).
    durable: bool,
    reply: oneshot::Sender<Result<Vec<PgRow>, sqlx::Error>>,
}

/// Starts the group committers of a pool of `max_connections`; answers where to send writes.
/// They stop when every sender is dropped.
/// They report the outcome of every transaction to `health`.
pub(super) fn start(
    pool: &PgPool,
    max_connections: u32,
    health: Arc<StoreHealth>,
) -> mpsc::UnboundedSender<WriteJob> {
    crate::metrics::store_opened(STORE);
    let (writes, jobs) = mpsc::unbounded_channel();
    let jobs = Arc::new(Mutex::new(jobs));
    for _ in 0..WRITERS.min(max_connections.max(1)) {
        tokio::spawn(group_commit(pool.clone(), jobs.clone(), health.clone()));
    }
    writes
}

/// Reports the outcome of one transaction to `health`.
fn track(health: &StoreHealth, r: &Result<Vec<PgRow>, sqlx::Error>) {
    match r {
        Ok(rows) => health.write_succeeded(!rows.is_empty()),
        Err(e) => health.write_failed(Cause::of_postgres(e), &e.to_string()),
    }
}

/// A group committer: takes every write waiting (up to [`MAX_BATCH`]) and runs them in one
/// transaction on one connection, answering each after the COMMIT, so under load many writes
/// share one WAL flush while an answer still means "committed". Notifications sent inside the
/// transaction are delivered at the COMMIT. Statements use `statement_timestamp()`, so each
/// keeps the timestamps it would have had alone. A statement that fails aborts the
/// transaction: the batch is then run again statement by statement (each its own
/// transaction, as without batching), so one failure fails only its own caller. A failed
/// COMMIT fails the whole batch (whether it took effect is unknown, as for a lone statement).
async fn group_commit(
    pool: PgPool,
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<WriteJob>>>,
    health: Arc<StoreHealth>,
) {
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
            let began = Instant::now();
            let r = run_alone(&pool, job.sql, job.args, job.durable).await;
            crate::metrics::store_commit(STORE, began, r.is_ok());
            track(&health, &r);
            let _ = job.reply.send(r);
            continue;
        }
        let began = Instant::now();
        let together = run_together(&pool, &batch, durable).await;
        crate::metrics::store_commit(STORE, began, together.is_ok());
        match together {
            Ok(answers) => {
                health.write_succeeded(answers.iter().any(|rows| !rows.is_empty()));
                for (job, rows) in batch.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(rows));
                }
            }
            Err(BatchError::Commit(e)) => {
                health.write_failed(Cause::of_postgres(&e), &e.to_string());
                let msg = e.to_string();
                for job in batch.drain(..) {
                    let msg = format!("commit failed: {msg}");
                    let _ = job.reply.send(Err(sqlx::Error::Protocol(msg)));
                }
            }
            Err(BatchError::Statement) => {
                for job in batch.drain(..) {
                    let began = Instant::now();
                    let r = run_alone(&pool, job.sql, job.args, job.durable).await;
                    crate::metrics::store_commit(STORE, began, r.is_ok());
                    track(&health, &r);
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
    Commit(sqlx::Error),
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
    tx.commit().await.map_err(BatchError::Commit)?;
    Ok(answers)
}

impl PostgresStore {
    /// Runs a write statement through the group committer; answers its rows once committed.
    pub(super) async fn write_rows(
        &self,
        query: WriteQuery,
        durable: bool,
    ) -> StoreResult<Vec<PgRow>> {
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

    /// Runs a [`notifying!`](super::events::notifying) statement; answers each changed task with its event kind.
    pub(super) async fn write(
        &self,
        query: WriteQuery,
        durable: bool,
    ) -> StoreResult<Vec<(EventKind, Task)>> {
        let rows = self.write_rows(query, durable).await?;
        rows.iter()
            .map(|row| {
                let kind: String = column(row, "k")?;
                Ok((parse_kind(&kind)?, task_from_row(row)?))
            })
            .collect()
    }

    /// [`Self::write`] for statements that change at most one row, publishing its event.
    pub(super) async fn write_one(
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
