//! The SQLite `tasks` table as the store sees it: the embedded migrations, the one list of
//! columns every task-returning statement selects, the stored form of times (milliseconds since
//! the epoch), and the decoding of rows. Separate because every other file of the store encodes
//! or decodes through it.

use std::time::Duration;

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

fn opt_time(row: &SqliteRow, name: &str) -> StoreResult<Option<DateTime<Utc>>> {
    column::<Option<i64>, _>(row, name)?
        .map(|ms| time(ms, name))
        .transpose()
}

fn unsigned(row: &SqliteRow, name: &str) -> StoreResult<u32> {
    let v: i64 = column(row, name)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {name}: {v} out of range")))
}

/// Decodes a row of [`task_columns!`].
pub(super) fn task_from_row(row: &SqliteRow) -> StoreResult<Task> {
    let id: String = column(row, "id")?;
    let id = Uuid::try_parse(&id).map_err(|e| StoreError::Corrupt(format!("column id: {e}")))?;
    let status: String = column(row, "status")?;
    let input: String = column(row, "input")?;
    let progress = match (
        column::<Option<f64>, _>(row, "progress_percent")?,
        column::<Option<String>, _>(row, "progress_message")?,
    ) {
        (Some(percent), message) => Some(Progress {
            percent: crate::store::sql::stored_percent(percent),
            message: message.unwrap_or_default(),
            preview: crate::store::sql::stored_preview(
                column::<Option<String>, _>(row, "progress_preview")?.as_deref(),
            ),
        }),
        (None, _) => None,
    };
    let result = column::<Option<String>, _>(row, "result")?
        .map(|text| json(&text, "result"))
        .transpose()?;
    let error = match (
        column::<Option<String>, _>(row, "error_code")?,
        column::<Option<String>, _>(row, "error_message")?,
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
        cancel_requested: column::<i64, _>(row, "cancel_requested")? != 0,
        trace_parent: column(row, "trace_parent")?,
        timeout_secs: column::<Option<i64>, _>(row, "timeout_secs")?
            .map(|v| {
                u32::try_from(v).map_err(|_| {
                    StoreError::Corrupt(format!("column timeout_secs: {v} out of range"))
                })
            })
            .transpose()?,
        request_hash: column(row, "request_hash")?,
    })
}
