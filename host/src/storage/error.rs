//! [`StorageError`], the one error type of the storage facade, with its stable codes and the
//! mappings from opendal and local I/O errors that every backend shares.
//!
//! Separate from the backends so that each of them, and the API's error mapping, depends only
//! on this small file.

use std::io;
use std::path::Path;

use opendal::ErrorKind;

use crate::error_codes;

/// Errors of the storage facade. [`StorageError::code`] is stable and meant for API clients.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under this key.
    #[error("no stored object with key '{key}'")]
    NotFound {
        /// The logical key.
        key: String,
    },
    /// The key is not acceptable (see [`validate_key`](super::validate_key)).
    #[error("invalid storage key '{key}': {reason}")]
    InvalidKey {
        /// The key as given (possibly truncated for display by the caller).
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// More bytes arrived than allowed; nothing was stored.
    #[error("object '{key}' is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The logical key.
        key: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The requested range starts at or after the end of the object.
    #[error("range starting at byte {start} is outside object '{key}' of {size} bytes")]
    RangeNotSatisfiable {
        /// The logical key.
        key: String,
        /// The first requested byte.
        start: u64,
        /// The size of the object.
        size: u64,
    },
    /// The backend cannot be reached, refused access, or is misconfigured.
    #[error("storage is unavailable ({op} '{key}'): {source}")]
    Unavailable {
        /// The operation that failed.
        op: &'static str,
        /// The logical key.
        key: String,
        /// The backend error.
        source: Box<opendal::Error>,
    },
    /// The backend refused the credentials (a wrong key or signature, a token without the
    /// needed permission).
    #[error("storage refused access ({op} '{key}'): {detail}")]
    Denied {
        /// The operation that failed.
        op: &'static str,
        /// The logical key.
        key: String,
        /// What the backend said.
        detail: String,
    },
    /// The backend refused the object (Cloudflare Images: not an image, too large, ...).
    #[error("storage refused {op} of '{key}' (HTTP {status}, code {cf_code}): {message}")]
    Rejected {
        /// The operation that failed.
        op: &'static str,
        /// The logical key.
        key: String,
        /// HTTP status of the answer.
        status: u16,
        /// The service's own error code (0 when it gave none).
        cf_code: i64,
        /// The service's messages.
        message: String,
    },
    /// A remote service could not be reached or answered with a server error.
    #[error("storage is unavailable ({op} '{key}'): {detail}")]
    Remote {
        /// The operation that failed.
        op: &'static str,
        /// The logical key.
        key: String,
        /// What went wrong.
        detail: String,
    },
    /// The backend cannot do this operation.
    #[error("storage backend '{backend}' cannot {op}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The backend name.
        backend: &'static str,
    },
    /// The storage settings are incomplete or contradictory.
    #[error("storage is misconfigured: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// Any other failure of the backend or of a local file.
    #[error("storage {op} of '{key}' failed: {detail}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The logical key.
        key: String,
        /// What went wrong.
        detail: String,
    },
}

impl StorageError {
    /// Stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::NotFound { .. } => error_codes::STORAGE_NOT_FOUND,
            StorageError::InvalidKey { .. } => error_codes::STORAGE_INVALID_KEY,
            StorageError::TooLarge { .. } => error_codes::STORAGE_TOO_LARGE,
            StorageError::RangeNotSatisfiable { .. } => error_codes::STORAGE_RANGE_NOT_SATISFIABLE,
            StorageError::Unavailable { .. } | StorageError::Remote { .. } => {
                error_codes::STORAGE_UNAVAILABLE
            }
            StorageError::Denied { .. } => error_codes::STORAGE_DENIED,
            StorageError::Rejected { .. } => error_codes::STORAGE_REJECTED,
            StorageError::Unsupported { .. } => error_codes::STORAGE_UNSUPPORTED,
            StorageError::Config { .. } => error_codes::STORAGE_MISCONFIGURED,
            StorageError::Io { .. } => error_codes::STORAGE_IO,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            StorageError::Unavailable { source, .. } => {
                source.is_temporary() || source.kind() == ErrorKind::RateLimited
            }
            StorageError::Remote { .. } | StorageError::Io { .. } => true,
            _ => false,
        }
    }

    /// Whether this is [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// Maps an opendal error of operation `op` on logical key `key`.
    pub(super) fn backend(op: &'static str, key: &str, err: opendal::Error) -> StorageError {
        let key = key.to_owned();
        match err.kind() {
            ErrorKind::NotFound => StorageError::NotFound { key },
            ErrorKind::PermissionDenied => StorageError::Denied {
                op,
                key,
                detail: err.to_string(),
            },
            ErrorKind::ConfigInvalid | ErrorKind::RateLimited => StorageError::Unavailable {
                op,
                key,
                source: Box::new(err),
            },
            _ if err.is_temporary() => StorageError::Unavailable {
                op,
                key,
                source: Box::new(err),
            },
            _ => StorageError::Io {
                op,
                key,
                detail: err.to_string(),
            },
        }
    }

    /// Reading the bytes of an upload (the caller's stream) failed during a `put` of `key`.
    pub(super) fn upload_read(key: &str, err: io::Error) -> StorageError {
        StorageError::Io {
            op: "put",
            key: key.to_owned(),
            detail: format!("reading the upload failed: {err}"),
        }
    }

    /// Maps a failure on the local file `path` during operation `op` on `key`.
    pub(super) fn local(op: &'static str, key: &str, path: &Path, err: io::Error) -> StorageError {
        StorageError::Io {
            op,
            key: key.to_owned(),
            detail: format!("{}: {err}", path.display()),
        }
    }
}

/// A [`StorageError::Config`]: the settings are incomplete or contradictory.
pub(super) fn config_error(detail: impl Into<String>) -> StorageError {
    StorageError::Config {
        detail: detail.into(),
    }
}
