//! Logical keys: the rules every key must pass ([`validate_key`]), the folders the facade
//! reserves for itself, the configured prefix that maps a key to its backend path, and the
//! content type a key implies.
//!
//! Separate because every backend and the fetcher rely on the same rules, and they are the
//! facade's first line of defence against path tricks.

use super::StorageError;

/// Longest accepted key, in bytes (the S3 and R2 limit).
pub const MAX_KEY_LEN: usize = 1024;

/// Folder (under the fs root) where objects are written before being renamed into place, so a
/// reader never sees a half-written object. Keys may not start with it.
pub(super) const FS_TMP_DIR: &str = ".aihost-tmp";

/// Folder of the probe objects written by [`Storage::check`](super::Storage::check).
pub(super) const PROBE_DIR: &str = ".aihost-probe";

/// Checks a logical key: non-empty, at most [`MAX_KEY_LEN`] bytes, no leading or trailing `/`,
/// no empty, `.` or `..` segments, no backslashes or control characters, and not under the
/// facade's own internal folders.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let refuse = |reason| {
        Err(StorageError::InvalidKey {
            key: key.chars().take(200).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return refuse("the key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return refuse("the key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return refuse("the key starts with '/'");
    }
    if key.ends_with('/') {
        return refuse("the key ends with '/'");
    }
    if key.contains('\\') {
        return refuse("the key contains a backslash");
    }
    if key.chars().any(char::is_control) {
        return refuse("the key contains a control character");
    }
    for segment in key.split('/') {
        match segment {
            "" => return refuse("the key contains an empty segment ('//')"),
            "." | ".." => return refuse("the key contains a '.' or '..' segment"),
            _ => {}
        }
    }
    let first = key.split('/').next().unwrap_or_default();
    if first == FS_TMP_DIR || first == PROBE_DIR {
        return refuse("the key is under a folder reserved by the service");
    }
    Ok(())
}

/// Normalises the configured prefix: empty, or its segments followed by exactly one `/`.
/// Refuses empty, `.` and `..` segments inside it.
pub(super) fn normalise_prefix(prefix: &str) -> Result<String, StorageError> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(StorageError::InvalidKey {
            key: prefix.to_owned(),
            reason: "the storage prefix contains an empty, '.' or '..' segment",
        });
    }
    Ok(format!("{trimmed}/"))
}

/// The content type to store or report: `content_type` when not blank, else guessed from the
/// key, else `application/octet-stream`.
pub(super) fn content_type_for(key: &str, content_type: &str) -> String {
    if content_type.trim().is_empty() {
        mime_guess::from_path(key)
            .first_or_octet_stream()
            .essence_str()
            .to_owned()
    } else {
        content_type.trim().to_owned()
    }
}
