//! The one error shape of the HTTP API: `{"error": {"code": "...", "message": "..."}}`.
//!
//! Every module's error maps to an HTTP status here and nowhere else.

use poem::{Response, http::StatusCode};
use poem_openapi::{ApiResponse, Object, payload::Json};

use crate::{error_codes, storage::StorageError, store::StoreError};

/// The error object.
#[derive(Debug, Clone, Object)]
pub struct ErrorDetail {
    /// Stable snake_case code: one of `ErrorCode` (`#/components/schemas/ErrorCode`, each
    /// code with its status and meaning). The ComfyUI routes pass on the code of a plugin's
    /// engine operation, and plugins may add codes of their own.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Body of every error response.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Every error the API answers, by status.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// Malformed request (bad JSON, bad parameter).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong API key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// Unknown task, file or route.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request conflicts with the task's state (e.g. cancel of a finished task).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// Body over the limit.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    /// Well-formed but invalid: unknown task type, input that fails the schema.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Queue full; retry after the given seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// A bug.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The store, storage or an engine is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.into(),
        },
    })
}

impl ApiError {
    /// Builds an error for `status` (400 when the status has no variant).
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        let b = body(code, message);
        match status.as_u16() {
            401 => ApiError::Unauthorized(b),
            404 => ApiError::NotFound(b),
            409 => ApiError::Conflict(b),
            413 => ApiError::TooLarge(b),
            422 => ApiError::Unprocessable(b),
            429 => ApiError::TooManyRequests(b, 1),
            500 => ApiError::Internal(b),
            503 => ApiError::Unavailable(b),
            _ => ApiError::BadRequest(b),
        }
    }

    /// 400.
    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest(body(code, message))
    }

    /// 404.
    pub fn not_found(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::NotFound(body(code, message))
    }

    /// 422.
    pub fn unprocessable(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable(body(code, message))
    }

    /// 409.
    pub fn conflict(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict(body(code, message))
    }
}

/// The message a client sees for a failure of the server's own machinery (store, storage): the
/// full error (which may name the database file, the storage root or a bucket) is logged with
/// the code; the client gets a generic sentence and the code.
fn server_side(code: &str, what: &str, detail: &dyn std::fmt::Display) -> String {
    tracing::error!(code, error = %detail, "{what} failed while answering a request");
    format!("{what} failed ({code}); the server log has the details")
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidCursor => ApiError::bad_request(e.code(), e.to_string()),
            StoreError::IdempotencyConflict { ref key, existing } => ApiError::conflict(
                e.code(),
                format!(
                    "idempotency key {key:?} belongs to task {existing}, created by another request (type, input, priority, max_attempts, webhook_url or timeout_secs differ); use a new key for a new request"
                ),
            ),
            StoreError::Corrupt(_) => {
                ApiError::Internal(body(e.code(), server_side(e.code(), "the task store", &e)))
            }
            _ => ApiError::Unavailable(body(e.code(), server_side(e.code(), "the task store", &e))),
        }
    }
}

/// The HTTP status of a storage error (the one place this mapping lives).
pub(crate) fn storage_status(e: &StorageError) -> StatusCode {
    match e.code() {
        error_codes::STORAGE_NOT_FOUND => StatusCode::NOT_FOUND,
        error_codes::STORAGE_INVALID_KEY => StatusCode::BAD_REQUEST,
        error_codes::STORAGE_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        error_codes::STORAGE_RANGE_NOT_SATISFIABLE => StatusCode::RANGE_NOT_SATISFIABLE,
        error_codes::STORAGE_REJECTED => StatusCode::UNPROCESSABLE_ENTITY,
        error_codes::STORAGE_DENIED
        | error_codes::STORAGE_MISCONFIGURED
        | error_codes::STORAGE_UNSUPPORTED => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let status = storage_status(&e);
        ApiError::new(status, e.code(), storage_message(&e, status))
    }
}

/// What a client reads of a storage error answered with `status`: 4xx name the client's own
/// key or file and are kept; 5xx are the backend's and may name paths, so they are logged and
/// answered with a generic sentence.
pub(crate) fn storage_message(e: &StorageError, status: StatusCode) -> String {
    if status.is_server_error() {
        server_side(e.code(), "storage", e)
    } else {
        e.to_string()
    }
}

/// A JSON error response outside poem-openapi (plain poem handlers, middleware).
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let text = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(text)
}

/// Rewrites errors raised by poem itself (routing, parsing) into the API's error shape; errors
/// that already are API responses pass through.
pub(crate) fn normalize(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let code = if err.is::<poem::error::NotFoundError>() {
        error_codes::ROUTE_NOT_FOUND
    } else if err.is::<poem::error::CorsError>() {
        crate::error_codes::CORS_REFUSED
    } else if err.is::<poem::error::MethodNotAllowedError>() {
        error_codes::METHOD_NOT_ALLOWED
    } else if err.is::<poem_openapi::error::ParseRequestPayloadError>() {
        error_codes::INVALID_BODY
    } else if err.is::<poem_openapi::error::ParseParamError>() {
        error_codes::INVALID_PARAMETER
    } else if err.is::<poem_openapi::error::ContentTypeError>() {
        error_codes::UNSUPPORTED_CONTENT_TYPE
    } else {
        match status.as_u16() {
            400 => error_codes::BAD_REQUEST,
            401 => error_codes::UNAUTHORIZED,
            404 => error_codes::ROUTE_NOT_FOUND,
            405 => error_codes::METHOD_NOT_ALLOWED,
            413 => error_codes::BODY_TOO_LARGE,
            415 => error_codes::UNSUPPORTED_CONTENT_TYPE,
            _ if status.is_server_error() => error_codes::INTERNAL,
            _ => error_codes::BAD_REQUEST,
        }
    };
    let status = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    error_response(status, code, &err.to_string())
}

#[cfg(test)]
mod tests {
    use poem::IntoResponse;

    use super::*;

    /// The status of every HTTP error code is the one `error_codes::ALL` documents.
    fn assert_documented(code: &str, status: StatusCode) {
        let entry = error_codes::find(code).unwrap_or_else(|| panic!("{code} is not listed"));
        assert_eq!(entry.status, Some(status.as_u16()), "{code}");
    }

    #[test]
    fn storage_and_store_statuses_are_the_documented_ones() {
        let key = || "k".to_owned();
        let storage = [
            StorageError::NotFound { key: key() },
            StorageError::InvalidKey {
                key: key(),
                reason: "r",
            },
            StorageError::TooLarge {
                key: key(),
                limit: 1,
            },
            StorageError::Unavailable {
                op: "put",
                key: key(),
                source: Box::new(opendal::Error::new(opendal::ErrorKind::Unexpected, "x")),
            },
            StorageError::Remote {
                op: "put",
                key: key(),
                detail: String::new(),
            },
            StorageError::Denied {
                op: "put",
                key: key(),
                detail: String::new(),
            },
            StorageError::Rejected {
                op: "put",
                key: key(),
                status: 400,
                cf_code: 0,
                message: String::new(),
            },
            StorageError::Unsupported {
                op: "read",
                backend: "b",
            },
            StorageError::Config {
                detail: String::new(),
            },
            StorageError::Io {
                op: "put",
                key: key(),
                detail: String::new(),
            },
        ];
        for e in storage {
            assert_documented(e.code(), storage_status(&e));
            let code = e.code();
            assert_documented(code, ApiError::from(e).into_response().status());
        }
        for e in [
            StoreError::InvalidCursor,
            StoreError::IdempotencyConflict {
                key: "k".into(),
                existing: uuid::Uuid::nil(),
            },
            StoreError::Corrupt(String::new()),
            StoreError::Unavailable(String::new()),
        ] {
            let code = e.code();
            assert_documented(code, ApiError::from(e).into_response().status());
        }
    }
}
