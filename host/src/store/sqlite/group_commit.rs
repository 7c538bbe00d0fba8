//! The writer task of the SQLite store: every write statement goes to one group committer that
//! runs all the statements waiting in one transaction on the single writer connection and
//! answers each after the COMMIT, so concurrent writes share one fsync. Separate because it is
//! the one place writes reach the database, and its batching and durability rules stand apart
//! from what each write does.

use std::sync::Arc;

use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use tokio::sync::{mpsc, oneshot};

use super::{SqliteStore, schema::task_from_row};
use crate::store::{
    StoreError, StoreResult, Task,
    health::{Cause, StoreHealth},
    sql::db_err,
};

/// The `store` label of this store's commit metrics.
const STORE: &str = "sqlite";

/// Most write statements committed together in one transaction (group commit).
const MAX_BATCH: usize = 512;

/// A task-returning write statement, and where to send its rows once committed.
pub(super) type WriteQuery = sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments>;

pub(super) struct WriteJob {
    query: WriteQuery,
    /// Whether the commit must reach the disk before the answer (inserts and terminal
    /// states). Claims, progress and rescues may ride on the next durable commit: losing one
    /// in a power cut leaves the task PENDING or its lease to expire, never a wrong state.
    durable: bool,
    reply: oneshot::Sender<Result<Vec<SqliteRow>, sqlx::Error>>,
}

/// Starts the group committer of the writer pool; answers where to send writes. It stops when
/// every sender is dropped. It reports the outcome of every transaction to `health`.
pub(super) fn start(
    writer: &SqlitePool,
    health: Arc<StoreHealth>,
) -> mpsc::UnboundedSender<WriteJob> {
    crate::metrics::store_opened(STORE);
    let (writes, rx) = mpsc::unbounded_channel();
    tokio::spawn(group_commit(writer.clone(), rx, health));
    writes
}

/// Reports a failed write to `health`, and answers every job of the batch with it.
fn fail_batch(health: &StoreHealth, batch: &mut Vec<WriteJob>, e: &sqlx::Error, what: &str) {
    health.write_failed(Cause::of_sqlite(e), &e.to_string());
    let msg = format!("{what}{e}");
    for job in batch.drain(..) {
        let _ = job.reply.send(Err(sqlx::Error::Protocol(msg.clone())));
    }
}

/// The group committer: takes every write waiting (up to [`MAX_BATCH`]), runs them in one
/// transaction on the writer connection, and answers each after the COMMIT. With
/// `synchronous = FULL` each COMMIT is one fsync, so under load many writes share one fsync
/// and a 202 still means "on disk". A statement that fails is rolled back alone (SQLite
/// statement rollback) and answers its error; the others commit.
async fn group_commit(
    writer: SqlitePool,
    mut rx: mpsc::UnboundedReceiver<WriteJob>,
    health: Arc<StoreHealth>,
) {
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
        let began = std::time::Instant::now();
        let mut conn = match writer.acquire().await {
            Ok(c) => c,
            Err(e) => {
                crate::metrics::store_commit(STORE, began, false);
                fail_batch(&health, &mut batch, &e, "");
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
            crate::metrics::store_commit(STORE, began, r.is_ok());
            match &r {
                Ok(rows) => health.write_succeeded(!rows.is_empty()),
                Err(e) => health.write_failed(Cause::of_sqlite(e), &e.to_string()),
            }
            let _ = job.reply.send(r);
            continue;
        }
        if let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
            crate::metrics::store_commit(STORE, began, false);
            fail_batch(&health, &mut batch, &e, "");
            continue;
        }
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            let r = job.query.fetch_all(&mut *conn).await;
            answers.push((job.reply, r));
        }
        let committed = sqlx::raw_sql("COMMIT").execute(&mut *conn).await;
        crate::metrics::store_commit(STORE, began, committed.is_ok());
        match committed {
            Ok(_) => {
                // A statement that failed inside a committed batch still is a failed write.
                match answers.iter().find_map(|(_, r)| r.as_ref().err()) {
                    Some(e) => health.write_failed(Cause::of_sqlite(e), &e.to_string()),
                    None => health.write_succeeded(
                        answers
                            .iter()
                            .any(|(_, r)| r.as_ref().is_ok_and(|rows| !rows.is_empty())),
                    ),
                }
                for (reply, r) in answers {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                health.write_failed(Cause::of_sqlite(&e), &e.to_string());
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                let msg = e.to_string();
                for (reply, _) in answers {
                    let _ = reply.send(Err(sqlx::Error::Protocol(format!("commit failed: {msg}"))));
                }
            }
        }
    }
}

/// Sends a write statement to the group committer and answers its rows once committed.
pub(super) async fn send_write(
    writes: &mpsc::UnboundedSender<WriteJob>,
    query: WriteQuery,
    durable: bool,
) -> StoreResult<Vec<SqliteRow>> {
    // Answered after the COMMIT of the batch the statement ran in.
    let (reply, answer) = oneshot::channel();
    writes
        .send(WriteJob {
            query,
            durable,
            reply,
        })
        .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Unavailable("the group committer stopped".into()))?
        .map_err(db_err)
}

impl SqliteStore {
    /// Runs a task-returning write statement and decodes every row.
    pub(super) async fn write_tasks(&self, query: WriteQuery) -> StoreResult<Vec<Task>> {
        self.write_rows(query, true).await
    }

    /// A write that need not be on disk before it answers (see [`WriteJob::durable`]).
    pub(super) async fn write_tasks_lazy(&self, query: WriteQuery) -> StoreResult<Vec<Task>> {
        self.write_rows(query, false).await
    }

    pub(super) async fn write_rows(
        &self,
        query: WriteQuery,
        durable: bool,
    ) -> StoreResult<Vec<Task>> {
        let rows = send_write(&self.writes, query, durable).await?;
        rows.iter().map(task_from_row).collect()
    }

    pub(super) async fn write_task(&self, query: WriteQuery) -> StoreResult<Option<Task>> {
        Ok(self.write_tasks(query).await?.into_iter().next())
    }
}
