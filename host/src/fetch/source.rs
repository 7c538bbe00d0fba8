//! What a fetch source names, and the data source that is not the network: objects of this
//! service's own storage.
//!
//! A source is either an object of the service's storage (a bare key such as
//! `uploads/{uuid}/{name}`, or a URL under the storage's public base), which is copied from
//! storage and never fetched over the network, or an `http`/`https` URL. It is separate so the
//! rules that decide which of the two a string is live in one place.

use std::path::{Path, PathBuf};

use url::Url;

use super::error::{FetchError, shorten, shown};
use super::work_file::{ensure_dir, reserve, sanitize};
use crate::storage::{Storage, StorageError, validate_key};

/// A source, once recognised.
#[derive(Debug, PartialEq)]
pub(super) enum Source {
    /// A key of the service's storage.
    Storage(String),
    /// An http(s) URL with a host.
    Http(Url),
}

/// What `source` (already trimmed) names: a key of `storage` (a URL under its public base, or
/// a scheme-less valid key), else an http(s) URL with a host; anything else is an error.
pub(super) fn recognise(storage: &Storage, source: &str) -> Result<Source, FetchError> {
    if let Some(key) = storage.key_from_url(source) {
        return Ok(Source::Storage(key));
    }
    let url = match Url::parse(source) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            let reason = match validate_key(source) {
                Ok(()) => return Ok(Source::Storage(source.to_owned())),
                Err(StorageError::InvalidKey { reason, .. }) => reason,
                Err(_) => "not a URL",
            };
            return Err(FetchError::InvalidUrl {
                input: shorten(source),
                reason: format!(
                    "neither an http(s) URL nor a key of this service's storage ({reason})"
                ),
            });
        }
        Err(e) => {
            return Err(FetchError::InvalidUrl {
                input: shorten(source),
                reason: e.to_string(),
            });
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme {
            url: shown(&url),
            scheme: url.scheme().to_owned(),
        });
    }
    if url.host().is_none() {
        return Err(FetchError::InvalidUrl {
            input: shown(&url),
            reason: "the URL has no host".to_owned(),
        });
    }
    Ok(Source::Http(url))
}

/// Copies the object `key` of `storage` into a new file in `dest_dir` (named `file_name`, else
/// after the key's last segment); on failure no file is left behind.
pub(super) async fn copy_from_storage(
    storage: &Storage,
    key: &str,
    dest_dir: &Path,
    file_name: Option<&str>,
) -> Result<PathBuf, FetchError> {
    ensure_dir(dest_dir).await?;
    let name = sanitize(file_name.unwrap_or_else(|| key.rsplit('/').next().unwrap_or("")));
    let (path, file) = reserve(dest_dir, &name).await?;
    drop(file);
    match storage.copy_to_file(key, &path).await {
        Ok(_) => Ok(path),
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(match e {
                StorageError::NotFound { key } => FetchError::NotFound { key },
                other => FetchError::Io {
                    detail: other.to_string(),
                },
            })
        }
    }
}
