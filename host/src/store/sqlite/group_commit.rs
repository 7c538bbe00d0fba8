//! The writer of the SQLite store: every write statement goes to one thread that owns the
//! single writer connection, runs all the statements waiting in one transaction and answers
//! each after the COMMIT, so concurrent writes share one fsync. Separate because it is the one
//! place writes reach the database, and its batching and durability rules stand apart from what
//! each write does.
//!
//! Why a thread of its own with rusqlite, not sqlx's pool: sqlx's SQLite driver runs each
//! connection on a worker thread and sends every statement, `BEGIN`, `COMMIT` and `PRAGMA`
//! to it and the answer back, so one write crossed threads six to eight times (the committer
//! task, the pool, the worker). Here a write crosses twice: the caller's task hands the
//! statement to this thread, which answers after the commit. Rows are decoded on this thread
//! straight from SQLite's buffers (no intermediate row copies).

use std::{borrow::Cow, path::Path, sync::Arc, time::Instant};

use rusqlite::{Connection, OpenFlags, types::Value};
use tokio::sync::{mpsc, oneshot};

use super::schema::{TaskColumns, task_from_row};
use crate::store::{
    StoreError, StoreResult, Task,
    health::{Cause, StoreHealth},
};

/// The `store` label of this store's commit metrics.
const STORE: &str = "sqlite";

/// Most write statements committed together in one transaction (group commit).
const MAX_BATCH: usize = 512;

/// Prepared statements the writer keeps (each `LIMIT` value written into the SQL is a
/// statement of its own: see `schema::limited`).
const STATEMENT_CACHE: usize = 64;

/// A write statement: its SQL and its arguments, bound to `?1`, `?2`... in order.
pub(super) struct WriteQuery {
    sql: Cow<'static, str>,
    args: Vec<Value>,
}

impl WriteQuery {
    pub(super) fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::with_capacity(12),
        }
    }

    /// Binds the next argument.
    pub(super) fn bind(mut self, value: impl Into<Value>) -> Self {
        self.args.push(value.into());
        self
    }
}

/// Decodes one row a write statement returned (on the writer thread).
pub(super) type Decode<R> = fn(&rusqlite::Row<'_>) -> StoreResult<R>;

/// What a committed write statement answered.
pub(super) struct Written<R> {
    /// The rows it returned (`RETURNING`), decoded.
    pub(super) rows: Vec<R>,
    /// The rows it inserted, updated or deleted (triggers' changes not counted).
    pub(super) changes: u64,
}

/// What the writer thread is sent.
pub(super) enum Message {
    Write(Box<dyn Job>),
    /// Finish the writes sent before, close the connection (checkpointing the WAL when it is
    /// the last one), then answer.
    Close(oneshot::Sender<()>),
}

/// Where writes are sent.
pub(super) type Writes = mpsc::UnboundedSender<Message>;

/// A failed statement: its cause for the health report, and its words.
type Failure = (Cause, String);

/// One write statement waiting for the writer thread.
pub(super) trait Job: Send {
    /// Whether its commit must reach the disk before the answer (inserts and terminal
    /// states). Claims, progress and rescues may ride on the next durable commit: losing one
    /// in a power cut leaves the task PENDING or its lease to expire, never a wrong state.
    fn durable(&self) -> bool;
    /// Runs the statement; answers whether it changed rows.
    fn run(&mut self, conn: &Connection) -> Result<bool, Failure>;
    /// Sends the statement's answer: its own outcome when its transaction committed, else
    /// `failed`.
    fn answer(self: Box<Self>, failed: Option<&str>);
}

struct Statement<R> {
    query: WriteQuery,
    decode: Decode<R>,
    durable: bool,
    outcome: Option<StoreResult<Written<R>>>,
    reply: oneshot::Sender<StoreResult<Written<R>>>,
}

impl<R: Send> Job for Statement<R> {
    fn durable(&self) -> bool {
        self.durable
    }

    fn run(&mut self, conn: &Connection) -> Result<bool, Failure> {
        match execute(conn, &self.query, self.decode) {
            Ok(written) => {
                let changed = written.as_ref().is_ok_and(|w| w.changes > 0);
                self.outcome = Some(written);
                Ok(changed)
            }
            Err(e) => {
                let msg = e.to_string();
                self.outcome = Some(Err(StoreError::Unavailable(msg.clone())));
                Err((Cause::of_rusqlite(&e), msg))
            }
        }
    }

    fn answer(self: Box<Self>, failed: Option<&str>) {
        let outcome = match (failed, self.outcome) {
            (None, Some(outcome)) => outcome,
            (Some(why), _) => Err(StoreError::Unavailable(why.to_owned())),
            (None, None) => Err(StoreError::Unavailable(
                "the write's answer could not be decoded".into(),
            )),
        };
        let _ = self.reply.send(outcome);
    }
}

/// Runs one statement to its end (a statement is finished, and in autocommit mode committed,
/// when SQLite has returned its last row) and decodes its rows; a row that does not decode is
/// the answer's error (the statement still ran).
fn execute<R>(
    conn: &Connection,
    query: &WriteQuery,
    decode: Decode<R>,
) -> rusqlite::Result<StoreResult<Written<R>>> {
    let mut stmt = conn.prepare_cached(&query.sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(query.args.iter()))?;
    let mut decoded = Ok(Vec::new());
    while let Some(row) = rows.next()? {
        // After a row that does not decode, the rest are only stepped through.
        if let Ok(list) = &mut decoded {
            match decode(row) {
                Ok(v) => list.push(v),
                Err(e) => decoded = Err(e),
            }
        }
    }
    drop(rows);
    let changes = conn.changes();
    Ok(decoded.map(|rows| Written { rows, changes }))
}

/// Opens the writer connection of the (migrated) database at `path`, with the change-log
/// triggers of `origin` (`triggers`), and starts its thread; answers where to send writes.
/// The thread stops when every sender is dropped or at [`close`]. It reports the outcome of
/// every transaction to `health`.
pub(super) fn start(
    path: &Path,
    busy_timeout: std::time::Duration,
    triggers: &str,
    health: Arc<StoreHealth>,
) -> StoreResult<Writes> {
    let open = || -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(busy_timeout)?;
        // The journal mode (WAL) is kept in the file since the store created it.
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(triggers)?;
        Ok(conn)
    };
    let conn = open()
        .map_err(|e| StoreError::Unavailable(format!("cannot open the writer connection: {e}")))?;
    crate::metrics::store_opened(STORE);
    let (writes, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("aihost-sqlite-writer".into())
        .spawn(move || group_commit(conn, rx, &health))
        .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
    Ok(writes)
}

/// Finishes the writes sent so far and closes the writer connection; later writes answer
/// that the store is closed.
pub(super) async fn close(writes: &Writes) {
    let (done, closed) = oneshot::channel();
    if writes.send(Message::Close(done)).is_ok() {
        let _ = closed.await;
    }
}

/// The writer thread: takes every write waiting (up to [`MAX_BATCH`]) and commits them
/// together ([`commit`]), until closed.
fn group_commit(conn: Connection, mut rx: mpsc::UnboundedReceiver<Message>, health: &StoreHealth) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    // The connection opens with synchronous = FULL.
    let mut synced = true;
    let mut closing = None;
    while closing.is_none() {
        match rx.blocking_recv() {
            Some(Message::Write(job)) => batch.push(job),
            Some(Message::Close(done)) => closing = Some(done),
            None => break,
        }
        while batch.len() < MAX_BATCH && closing.is_none() {
            match rx.try_recv() {
                Ok(Message::Write(job)) => batch.push(job),
                Ok(Message::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit(&conn, &mut batch, &mut synced, health);
        }
    }
    // Writes sent after the close answer "the writer stopped" when their replies drop.
    rx.close();
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Runs `batch` in one transaction and answers each statement after the COMMIT. With
/// `synchronous = FULL` each COMMIT is one fsync, so under load many writes share one fsync
/// and a 202 still means "on disk"; a batch of lazy writes only runs with `NORMAL`. A
/// statement that fails is rolled back alone (SQLite statement rollback) and answers its
/// error; the others commit. If SQLite rolled the whole transaction back (it may on a full
/// disk or an I/O error), no later statement of the batch runs and every one answers that.
fn commit(
    conn: &Connection,
    batch: &mut Vec<Box<dyn Job>>,
    synced: &mut bool,
    health: &StoreHealth,
) {
    let began = Instant::now();
    // A transaction left open (a failed COMMIT whose ROLLBACK failed too) would swallow every
    // later write: end it first.
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let durable = batch.iter().any(|j| j.durable());
    if durable != *synced {
        let pragma = if durable {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        if conn.execute_batch(pragma).is_ok() {
            *synced = durable;
        }
    }
    if batch.len() == 1 {
        let mut job = batch.pop().expect("one job");
        let r = run_guarded(job.as_mut(), conn);
        crate::metrics::store_commit(STORE, began, r.is_ok());
        match &r {
            Ok(changed) => health.write_succeeded(*changed),
            Err((cause, msg)) => health.write_failed(*cause, msg),
        }
        job.answer(None);
        return;
    }
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        crate::metrics::store_commit(STORE, began, false);
        let why = e.to_string();
        health.write_failed(Cause::of_rusqlite(&e), &why);
        for job in batch.drain(..) {
            job.answer(Some(&why));
        }
        return;
    }
    let mut failed: Option<Failure> = None;
    let mut changed = false;
    let mut rolled_back = None;
    for job in batch.iter_mut() {
        match run_guarded(job.as_mut(), conn) {
            Ok(c) => changed |= c,
            Err(f) => {
                if conn.is_autocommit() {
                    // The rollback's cause is the batch's cause.
                    failed = Some(f.clone());
                    rolled_back = Some(f.1);
                    break;
                }
                failed.get_or_insert(f);
            }
        }
    }
    let committed = match rolled_back {
        Some(why) => Err(format!("the transaction was rolled back: {why}")),
        None => conn.execute_batch("COMMIT").map_err(|e| {
            failed = Some((Cause::of_rusqlite(&e), e.to_string()));
            format!("commit failed: {e}")
        }),
    };
    crate::metrics::store_commit(STORE, began, committed.is_ok());
    // `failed` is set whenever the batch did not commit; a statement that failed inside a
    // committed batch still is a failed write.
    match &failed {
        Some((cause, msg)) => health.write_failed(*cause, msg),
        None => health.write_succeeded(changed),
    }
    if committed.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let why = committed.err();
    for job in batch.drain(..) {
        job.answer(why.as_deref());
    }
}

/// Runs one job; a panic (a bug in a row decoder, say) answers that statement with an error
/// instead of stopping the writer thread, which would leave the store unable to write until
/// restarted. What the statement changed before the panic stays (it commits with its batch):
/// only its answer is lost, as when a caller stops waiting.
fn run_guarded(job: &mut dyn Job, conn: &Connection) -> Result<bool, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn))).unwrap_or_else(|_| {
        Err((
            Cause::Other,
            "the write's answer could not be decoded (a panic on the writer thread)".into(),
        ))
    })
}

/// Sends a write statement to the writer and answers its decoded rows once committed.
pub(super) async fn send_write<R: Send + 'static>(
    writes: &Writes,
    query: WriteQuery,
    durable: bool,
    decode: Decode<R>,
) -> StoreResult<Written<R>> {
    // Answered after the COMMIT of the batch the statement ran in.
    let (reply, answer) = oneshot::channel();
    writes
        .send(Message::Write(Box::new(Statement {
            query,
            decode,
            durable,
            outcome: None,
            reply,
        })))
        .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?
}

/// Decodes a row of [`task_columns!`](super::schema::task_columns).
pub(super) fn task_row(row: &rusqlite::Row<'_>) -> StoreResult<Task> {
    task_from_row(&TaskColumns(row))
}

/// For statements whose rows are not needed.
pub(super) fn no_row(_: &rusqlite::Row<'_>) -> StoreResult<()> {
    Ok(())
}

impl super::SqliteStore {
    /// Runs a task-returning write statement durably and answers the tasks.
    pub(super) async fn write_tasks(&self, query: WriteQuery) -> StoreResult<Vec<Task>> {
        self.write_rows(query, true).await
    }

    /// A write that need not be on disk before it answers (see [`Job::durable`]).
    pub(super) async fn write_tasks_lazy(&self, query: WriteQuery) -> StoreResult<Vec<Task>> {
        self.write_rows(query, false).await
    }

    pub(super) async fn write_rows(
        &self,
        query: WriteQuery,
        durable: bool,
    ) -> StoreResult<Vec<Task>> {
        Ok(send_write(&self.writes, query, durable, task_row)
            .await?
            .rows)
    }

    pub(super) async fn write_task(&self, query: WriteQuery) -> StoreResult<Option<Task>> {
        Ok(self.write_tasks(query).await?.into_iter().next())
    }

    /// Runs a write statement whose rows are not needed; answers how many rows it changed.
    pub(super) async fn execute(&self, query: WriteQuery, durable: bool) -> StoreResult<u64> {
        Ok(send_write(&self.writes, query, durable, no_row)
            .await?
            .changes)
    }
}
