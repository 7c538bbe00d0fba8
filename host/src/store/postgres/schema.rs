//! The PostgreSQL `tasks` table as the store sees it: the embedded migrations, the cleaning of
//! values PostgreSQL cannot hold, and the decoding of rows (read as `row_to_json(...)` text, by
//! the store and from other processes' notifications alike). Separate because every other file
//! of the store encodes or decodes through it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
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
        include_str!("../../../migrations/postgres/0001_tasks.sql"),
    ),
    (
        2,
        "trace parent",
        include_str!("../../../migrations/postgres/0002_trace_parent.sql"),
    ),
    (
        3,
        "request hash",
        include_str!("../../../migrations/postgres/0003_request_hash.sql"),
    ),
    (
        4,
        "task timeout",
        include_str!("../../../migrations/postgres/0004_timeout.sql"),
    ),
    (
        5,
        "progress preview",
        include_str!("../../../migrations/postgres/0005_progress_preview.sql"),
    ),
    (
        6,
        "webhook deliveries",
        include_str!("../../../migrations/postgres/0006_webhook_deliveries.sql"),
    ),
];

/// A duration in microseconds, as the statements bind leases and ages.
pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// PostgreSQL text cannot hold NUL: free text keeps everything else.
pub(super) fn clean_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
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
    // Absent from the notifications of a process that predates schema v5.
    #[serde(default)]
    progress_preview: Option<String>,
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
    trace_parent: Option<String>,
    #[serde(default)]
    timeout_secs: Option<i64>,
    // Absent from the notifications of a process that predates schema v3.
    #[serde(default)]
    request_hash: Option<String>,
}

fn unsigned(v: i64, name: &str) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {name}: {v} out of range")))
}

/// Decodes a row selected as `row_to_json(...)::text AS j`.
pub(super) fn task_from_row(row: &PgRow) -> StoreResult<Task> {
    let text: String = column(row, "j")?;
    let value: Value = json(&text, "j")?;
    task_from_json(value)
}

/// Decodes the JSON of a `tasks` row.
pub(super) fn task_from_json(value: Value) -> StoreResult<Task> {
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
            percent: crate::store::sql::stored_percent(percent),
            message: r.progress_message.unwrap_or_default(),
            preview: crate::store::sql::stored_preview(r.progress_preview.as_deref()),
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
        trace_parent: r.trace_parent,
        timeout_secs: r
            .timeout_secs
            .map(|v| unsigned(v, "timeout_secs"))
            .transpose()?,
        request_hash: r.request_hash,
    })
}
