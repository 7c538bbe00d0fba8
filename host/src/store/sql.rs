//! What the SQL stores share: embedded migrations, the mapping of database errors, the
//! decoding of stored JSON, statuses, cursors and columns, the clamping of progress, and the
//! paging of [`TaskStore::list`](super::TaskStore::list).

use std::borrow::Cow;

use serde_json::Value;
use sqlx::{
    ColumnIndex, Decode, Row, SqlSafeStr, Type,
    migrate::{Migration, MigrationType, Migrator},
};
use uuid::Uuid;

use super::{Page, Status, StoreError, StoreResult, Task};

/// Page size of [`TaskStore::list`](super::TaskStore::list) when the filter says 0.
const DEFAULT_PAGE: u32 = 50;
/// Largest page of [`TaskStore::list`](super::TaskStore::list).
const MAX_PAGE: u32 = 1000;
/// Completed tasks (most recent first) the processing-time percentiles are computed over.
pub(super) const PERCENTILE_SAMPLE: i64 = 10_000;

/// A migrator over embedded `(version, description, SQL)` migrations.
pub(super) fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The answer of an insert whose idempotency key is held by `existing`: that task, unless the
/// two requests differ (both hashes known and not equal: [`StoreError::IdempotencyConflict`]).
/// A task stored without a hash (before schema v3) matches any request, as it did then.
pub(super) fn keyed_existing(
    existing: Task,
    request_hash: Option<&str>,
) -> StoreResult<(Task, bool)> {
    match (existing.request_hash.as_deref(), request_hash) {
        (Some(old), Some(new)) if old != new => Err(StoreError::IdempotencyConflict {
            key: existing
                .idempotency_key
                .as_deref()
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect(),
            existing: existing.id,
        }),
        _ => Ok((existing, false)),
    }
}

/// Database errors: decoding problems are corruption, the rest unavailability.
pub(super) fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

/// JSON to store.
pub(super) fn to_json(value: &Value) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("unencodable JSON: {e}")))
}

/// Stored JSON of column `name`.
pub(super) fn json(text: &str, name: &str) -> StoreResult<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// Cursors are the id of the last task of the previous page.
pub(super) fn encode_cursor(id: Uuid) -> String {
    id.to_string()
}

/// The id a cursor of [`encode_cursor`] holds.
pub(super) fn decode_cursor(cursor: &str) -> StoreResult<Uuid> {
    Uuid::try_parse(cursor).map_err(|_| StoreError::InvalidCursor)
}

/// A stored status.
pub(super) fn parse_status(s: &str) -> StoreResult<Status> {
    Status::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

/// The page size a list filter asks for: 0 means the default, and it is capped.
pub(super) fn page_size(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// One page of `limit` tasks from a query that selected `limit + 1`: the extra one only tells
/// that a next page exists.
/// Collects the rows of a page one at a time: at most `limit` tasks (a row more tells that
/// there is a next page) and, with an input budget, no more once the inputs reach it.
pub(super) struct PageBuilder {
    tasks: Vec<Task>,
    limit: u32,
    budget: Option<u64>,
    used: u64,
    cut: bool,
}

impl PageBuilder {
    pub(super) fn new(limit: u32, budget: Option<u64>) -> Self {
        PageBuilder {
            tasks: Vec::new(),
            limit,
            budget,
            used: 0,
            cut: false,
        }
    }

    /// Adds a task; false when no more rows should be read.
    pub(super) fn push(&mut self, task: Task) -> bool {
        let input_bytes = json_len(&task.input);
        self.tasks.push(task);
        if self.tasks.len() > self.limit as usize {
            return false;
        }
        if let Some(budget) = self.budget {
            self.used = self.used.saturating_add(input_bytes);
            if self.used >= budget {
                self.cut = true;
                return false;
            }
        }
        true
    }

    pub(super) fn finish(self) -> Page {
        if self.cut {
            let next_cursor = self.tasks.last().map(|t| encode_cursor(t.id));
            Page {
                tasks: self.tasks,
                next_cursor,
            }
        } else {
            into_page(self.tasks, self.limit)
        }
    }
}

/// Length of a value's JSON text, counted without writing it anywhere.
fn json_len(v: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len() as u64);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

pub(super) fn into_page(mut tasks: Vec<Task>, limit: u32) -> Page {
    let next_cursor = if tasks.len() > limit as usize {
        tasks.truncate(limit as usize);
        tasks.last().map(|t| encode_cursor(t.id))
    } else {
        None
    };
    Page { tasks, next_cursor }
}

/// Progress in range and defined (SQLite would store NaN as NULL).
/// A stored progress percent (a double in both databases) as the task's `f32`, clamped.
#[expect(
    clippy::cast_possible_truncation,
    reason = "a percent in 0..=100 fits an f32; the lost digits are noise"
)]
pub(super) fn stored_percent(p: f64) -> f32 {
    clean_percent(p as f32)
}

/// The stored `progress_preview` text as JSON (text that is not JSON is no preview: the
/// column is the store's own, but an unreadable preview must not make the task unreadable).
pub(super) fn stored_preview(text: Option<&str>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

/// A preview to store, as text (`None` keeps the stored one).
pub(super) fn preview_text(preview: Option<&Value>) -> Option<String> {
    preview.map(Value::to_string)
}

pub(super) fn clean_percent(p: f32) -> f32 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) }
}

/// Column `name` of a row; a value that does not decode is corruption.
pub(super) fn column<'r, T, R>(row: &'r R, name: &str) -> StoreResult<T>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// The `COUNT(*) AS n` column of a row.
pub(super) fn count<R>(row: &R) -> StoreResult<u64>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let n: i64 = column(row, "n")?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

/// One row of the counts by type and status that `stats` reads (`task_type`, `status`, `n`),
/// decoded the same way for both stores.
pub(super) fn type_status_count<R>(row: &R) -> StoreResult<(String, Status, u64)>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = column(row, "status")?;
    Ok((
        column(row, "task_type")?,
        parse_status(&status)?,
        count(row)?,
    ))
}
