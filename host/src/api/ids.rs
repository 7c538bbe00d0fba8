//! Path parameters shared by several route modules.

use uuid::Uuid;

use super::error::ApiError;

/// Parses a `{task_id}` path segment; anything that is not a UUID is an unknown task (404).
pub(crate) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::not_found(
            crate::error_codes::TASK_NOT_FOUND,
            format!("no task {id:?}"),
        )
    })
}
