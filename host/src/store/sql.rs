//! What the SQL stores share: embedded migrations, the mapping of database errors, and the
//! decoding of stored JSON, statuses and cursors.

use std::borrow::Cow;

use serde_json::Value;
use sqlx::{
    SqlSafeStr,
    migrate::{Migration, MigrationType, Migrator},
};
use uuid::Uuid;

use super::{Status, StoreError, StoreResult};

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
pub(super) fn decode_cursor(cursor: &str) -> StoreResult<Uuid> {
    Uuid::try_parse(cursor).map_err(|_| StoreError::InvalidCursor)
}

/// A stored status.
pub(super) fn parse_status(s: &str) -> StoreResult<Status> {
    Status::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}
