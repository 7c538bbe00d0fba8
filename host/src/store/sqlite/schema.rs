//! The SQLite `tasks` table as the store sees it: the embedded migrations, the one list of
//! columns every task-returning statement selects, the stored form of times (milliseconds since
//! the epoch), and the decoding of rows. Separate because every other file of the store encodes
//! or decodes through it.

use std::{sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::store::{
    Progress, StoreError, StoreResult, Task, TaskError,
    sql::{column, json, parse_status},
};

/// Embedded migrations: (version, description, SQL). Versions match the file prefixes.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "tasks",
        include_str!("../../../migrations/sqlite/0001_tasks.sql"),
    ),
    (
        2,
        "trace parent",
        include_str!("../../../migrations/sqlite/0002_trace_parent.sql"),
    ),
    (
        3,
        "request hash",
        include_str!("../../../migrations/sqlite/0003_request_hash.sql"),
    ),
    (
        4,
        "task timeout",
        include_str!("../../../migrations/sqlite/0004_timeout.sql"),
    ),
    (
        5,
        "task changes",
        include_str!("../../../migrations/sqlite/0005_task_changes.sql"),
    ),
    (
        6,
        "progress preview",
        include_str!("../../../migrations/sqlite/0006_progress_preview.sql"),
    ),
    (
        7,
        "webhook deliveries",
        include_str!("../../../migrations/sqlite/0007_webhook_deliveries.sql"),
    ),
];

/// The columns every task-returning statement selects, in one place.
macro_rules! task_columns {
    () => {
        "id, task_type, status, input, priority, attempts, max_attempts, progress_percent, \
         progress_message, result, error_code, error_message, created_at, started_at, \
         finished_at, run_at, idempotency_key, webhook_url, worker, lease_until, cancel_requested, \
         trace_parent, timeout_secs, request_hash, progress_preview"
    };
}
pub(super) use task_columns;

/// `sql` with its `{limit}` written as the number `limit`.
///
/// SQLite 3.51 re-prepares a statement whose `LIMIT` is a bound parameter on every run once it
/// has been re-prepared for any reason (the planner then reads the bound value and marks the
/// statement as depending on it). A callgrind profile of the ComfyUI path showed those
/// re-prepares (the whole SQL parser, every run of the claim and of the change-log read) as
/// more than half of the service's instructions per task. Limits are therefore part of the
/// SQL text: one cached statement per value, never re-prepared.
pub(super) fn limited(sql: &str, limit: impl Into<i64>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.replace("{limit}", &limit.into().to_string()))
}

/// Now, in stored form (milliseconds since the epoch).
pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A duration in stored form (milliseconds).
pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn time(ms: i64, name: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("column {name}: timestamp {ms} out of range")))
}

/// The columns of one task row, whichever driver read it: sqlx's pools, or the inline reader
/// of `inline_read.rs` (rusqlite on the calling thread). `None` is SQL NULL.
pub(super) trait TaskRow {
    fn text(&self, name: &str) -> StoreResult<Option<String>>;
    fn int(&self, name: &str) -> StoreResult<Option<i64>>;
    fn real(&self, name: &str) -> StoreResult<Option<f64>>;
}

impl TaskRow for SqliteRow {
    fn text(&self, name: &str) -> StoreResult<Option<String>> {
        column(self, name)
    }
    fn int(&self, name: &str) -> StoreResult<Option<i64>> {
        column(self, name)
    }
    fn real(&self, name: &str) -> StoreResult<Option<f64>> {
        column(self, name)
    }
}

fn null(name: &str) -> StoreError {
    StoreError::Corrupt(format!("column {name}: unexpected NULL"))
}

fn req_text<R: TaskRow + ?Sized>(row: &R, name: &str) -> StoreResult<String> {
    row.text(name)?.ok_or_else(|| null(name))
}

fn req_int<R: TaskRow + ?Sized>(row: &R, name: &str) -> StoreResult<i64> {
    row.int(name)?.ok_or_else(|| null(name))
}

fn opt_time<R: TaskRow + ?Sized>(row: &R, name: &str) -> StoreResult<Option<DateTime<Utc>>> {
    row.int(name)?.map(|ms| time(ms, name)).transpose()
}

fn unsigned<R: TaskRow + ?Sized>(row: &R, name: &str) -> StoreResult<u32> {
    let v = req_int(row, name)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {name}: {v} out of range")))
}

/// Decodes a row of [`task_columns!`].
pub(super) fn task_from_row<R: TaskRow + ?Sized>(row: &R) -> StoreResult<Task> {
    let id = req_text(row, "id")?;
    let id = Uuid::try_parse(&id).map_err(|e| StoreError::Corrupt(format!("column id: {e}")))?;
    let status = req_text(row, "status")?;
    let input = req_text(row, "input")?;
    let progress = match (row.real("progress_percent")?, row.text("progress_message")?) {
        (Some(percent), message) => Some(Progress {
            percent: crate::store::sql::stored_percent(percent),
            message: message.unwrap_or_default(),
            preview: crate::store::sql::stored_preview(row.text("progress_preview")?.as_deref()),
        }),
        (None, _) => None,
    };
    let result = row
        .text("result")?
        .map(|text| json(&text, "result"))
        .transpose()?;
    let error = match (row.text("error_code")?, row.text("error_message")?) {
        (Some(code), message) => Some(TaskError {
            code,
            message: message.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    Ok(Task {
        id,
        task_type: req_text(row, "task_type")?,
        status: parse_status(&status)?,
        input: json(&input, "input")?,
        priority: i32::try_from(req_int(row, "priority")?)
            .map_err(|_| StoreError::Corrupt("column priority: out of range".into()))?,
        attempts: unsigned(row, "attempts")?,
        max_attempts: unsigned(row, "max_attempts")?,
        progress,
        result,
        error,
        created_at: time(req_int(row, "created_at")?, "created_at")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        run_at: time(req_int(row, "run_at")?, "run_at")?,
        idempotency_key: row.text("idempotency_key")?,
        webhook_url: row.text("webhook_url")?,
        worker: row.text("worker")?,
        lease_until: opt_time(row, "lease_until")?,
        cancel_requested: req_int(row, "cancel_requested")? != 0,
        trace_parent: row.text("trace_parent")?,
        timeout_secs: row
            .int("timeout_secs")?
            .map(|v| {
                u32::try_from(v).map_err(|_| {
                    StoreError::Corrupt(format!("column timeout_secs: {v} out of range"))
                })
            })
            .transpose()?,
        request_hash: row.text("request_hash")?,
    })
}

/// A rusqlite row of [`task_columns!`] (the inline reader's and the writer's) as a [`TaskRow`].
pub(super) struct TaskColumns<'a, 'b>(pub(super) &'a rusqlite::Row<'b>);

impl TaskColumns<'_, '_> {
    fn get<T: rusqlite::types::FromSql>(&self, name: &str) -> StoreResult<Option<T>> {
        match column_index(name) {
            Some(i) => self.0.get::<_, Option<T>>(i),
            None => self.0.get::<_, Option<T>>(name),
        }
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
    }
}

/// The place of column `name` in [`task_columns!`].
///
/// rusqlite finds a column by name by asking SQLite for each column's name in turn and
/// comparing them without case; a profile of status reads showed that at about 6 % of the
/// service's CPU, for 20 lookups per row.
pub(super) fn column_index(name: &str) -> Option<usize> {
    static NAMES: LazyLock<Vec<&'static str>> =
        LazyLock::new(|| task_columns!().split(',').map(str::trim).collect());
    NAMES.iter().position(|n| *n == name)
}

impl TaskRow for TaskColumns<'_, '_> {
    fn text(&self, name: &str) -> StoreResult<Option<String>> {
        self.get(name)
    }
    fn int(&self, name: &str) -> StoreResult<Option<i64>> {
        self.get(name)
    }
    fn real(&self, name: &str) -> StoreResult<Option<f64>> {
        self.get(name)
    }
}
