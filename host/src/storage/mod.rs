//! The one `Storage` facade over opendal and Cloudflare Images.
//!
//! Callers speak in *logical keys* such as `outputs/{task_id}/{name}` or `uploads/{uuid}/{name}`.
//! The facade validates each key ([`validate_key`]), prepends the configured prefix before it
//! reaches the backend, and builds public URLs from the logical key. Every transfer is streamed:
//! files are written in chunks and read back as streams, so peak memory does not grow with
//! object size (except in the `memory` backend, whose objects live in the process).
//!
//! Backends: `fs`, `memory`, `s3` (any S3-compatible service), `r2` (S3 with Cloudflare's account
//! endpoint and region `auto`), `gcs` (resumable writes) through opendal, and `cf_images`
//! (Cloudflare Images, [`cf_images`]). Public URLs: `fs` and `memory` objects are served by the
//! service at `GET /files/{key}`; `s3`, `r2` and `gcs` objects at a configured public base URL
//! or, without one, through a presigned GET of configured lifetime; `cf_images` objects at their
//! delivery (variant) URL.
//!
//! This file holds the facade only: key checks, content types and URLs are stated here once,
//! and each operation is handed to the backend through `backend.rs`, the one place that tells
//! the opendal-backed backends (`operator.rs`, built in `fs.rs`, `memory.rs`, `s3.rs`,
//! `gcs.rs`) from Cloudflare Images (`cf_images.rs`). Each backend's file owns its settings.
//! Errors are in `error.rs`, key rules in `key.rs`, URLs in `url.rs`, stream helpers in
//! `stream.rs`, the facade's settings and their translation from the config in `settings.rs`,
//! and the percent codec is the host-wide one, `crate::percent`.

mod backend;
pub mod cf_images;
mod error;
mod fs;
mod fs_move;
mod gcs;
mod key;
mod memory;
mod object;
mod operator;
mod s3;
mod settings;
mod stream;
mod url;

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use backend::Backend;
pub use cf_images::CfImagesSettings;
pub use error::StorageError;
pub use gcs::GcsSettings;
pub use key::{MAX_KEY_LEN, validate_key};
use key::{PROBE_DIR, content_type_for, normalise_prefix};
use object::{ObjectRef, Written};
pub use s3::S3Settings;
pub use settings::{Secret, StorageKind, StorageSettings};
pub use stream::ByteStream;
pub use url::DEFAULT_PRESIGN_SECS;
use url::{path_under, url_under};

/// What [`Storage::stat`] knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes of the whole object.
    pub size: u64,
    /// Content type: the stored one, else guessed from the key, else `application/octet-stream`.
    pub content_type: String,
    /// Last modification time, when the backend reports one.
    pub last_modified: Option<SystemTime>,
}

/// An object found by [`Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Its logical key.
    pub key: String,
    /// Last modification time, when the backend reports one.
    pub last_modified: Option<SystemTime>,
}

/// An object that was just stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredObject {
    /// The logical key (without the configured prefix).
    pub key: String,
    /// Its public URL.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Content type it was stored with.
    pub content_type: String,
}

/// The storage facade. Cloning is cheap and clones share the backend.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    settings: StorageSettings,
    /// Normalised prefix: empty, or ending with exactly one `/`.
    prefix: String,
}

/// What [`Storage::check_public`] found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Backend name.
    pub backend: &'static str,
    /// The logical key of the probe object (deleted again).
    pub key: String,
    /// Its public URL, as outputs get them.
    pub url: String,
    /// The HTTP status of a plain GET (no credentials) of that URL while the probe existed, or
    /// why the GET failed.
    pub public_get: Result<u16, String>,
}

/// A 1×1 PNG: the probe object of `cf_images`, which stores only images.
const PROBE_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("kind", &self.inner.settings.kind)
            .field("root", &self.inner.settings.root)
            .field("prefix", &self.inner.prefix)
            .field("public_base_url", &self.inner.settings.public_base_url)
            .finish()
    }
}

impl Storage {
    /// Builds the backend. For `fs`, creates the root folder when it is missing. No request is
    /// made to remote backends (use [`Storage::check`]).
    pub fn new(settings: StorageSettings) -> Result<Storage, StorageError> {
        // Installs opendal's reqwest HTTP transport (once per process); the s3 and gcs
        // services need it.
        opendal::install_default();
        let backend = Backend::open(&settings)?;
        let prefix = normalise_prefix(&settings.prefix)?;
        Ok(Storage {
            inner: Arc::new(Inner {
                backend,
                settings,
                prefix,
            }),
        })
    }

    /// The settings this facade was built with.
    pub fn settings(&self) -> &StorageSettings {
        &self.inner.settings
    }

    /// Validates `key` and returns the backend path (prefix + key).
    fn path(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.inner.prefix))
    }

    /// The [`StoredObject`] of a finished write: its URL is the one the backend answered with,
    /// else [`Storage::url`].
    async fn stored(
        &self,
        key: &str,
        written: Written,
        content_type: String,
    ) -> Result<StoredObject, StorageError> {
        crate::metrics::storage_written(written.size);
        let url = match written.url {
            Some(url) => url,
            None => self.url(key).await?,
        };
        Ok(StoredObject {
            key: key.to_owned(),
            url,
            size: written.size,
            content_type,
        })
    }

    /// Stores the local file at `path` under `key`, streaming it in chunks. An empty
    /// `content_type` is guessed from the key.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<StoredObject, StorageError> {
        self.put_local(key, path, None, content_type).await
    }

    /// Stores a work file the caller gives up (an attempt's output, inside its work folder
    /// `within`) under `key`. On `fs` it is moved into place in one blocking call, synced
    /// before this returns (`fs_move.rs`); elsewhere it is streamed as by [`Storage::put_file`].
    pub async fn put_work_file(
        &self,
        key: &str,
        path: &Path,
        within: &Path,
        content_type: &str,
    ) -> Result<StoredObject, StorageError> {
        self.put_local(key, path, Some(within), content_type).await
    }

    /// [`Storage::put_file`], or [`Storage::put_work_file`] when the file lies `within` a work
    /// folder the caller gives up.
    async fn put_local(
        &self,
        key: &str,
        path: &Path,
        within: Option<&Path>,
        content_type: &str,
    ) -> Result<StoredObject, StorageError> {
        let full = self.path(key)?;
        let content_type = content_type_for(key, content_type);
        let obj = ObjectRef { key, path: &full };
        let backend = &self.inner.backend;
        let written = match within {
            Some(within) => {
                backend
                    .put_work_file(obj, path, within, &content_type)
                    .await?
            }
            None => backend.put_file(obj, path, &content_type).await?,
        };
        self.stored(key, written, content_type).await
    }

    /// Stores the bytes of `stream` under `key`. When more than `max_bytes` arrive, the write
    /// is aborted, the partial object deleted, and [`StorageError::TooLarge`] returned. An
    /// empty `content_type` is guessed from the key. (`cf_images` holds the image in memory
    /// before uploading it: at most its 10 MB limit.)
    pub async fn put_stream<S>(
        &self,
        key: &str,
        stream: S,
        content_type: &str,
        max_bytes: u64,
    ) -> Result<StoredObject, StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>>,
    {
        let full = self.path(key)?;
        let content_type = content_type_for(key, content_type);
        let obj = ObjectRef { key, path: &full };
        let written = self
            .inner
            .backend
            .put_stream(obj, stream, &content_type, max_bytes)
            .await?;
        self.stored(key, written, content_type).await
    }

    /// Size, content type and modification time of the object under `key`;
    /// [`StorageError::NotFound`] when there is none.
    pub async fn stat(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let full = self.path(key)?;
        self.inner
            .backend
            .stat(ObjectRef { key, path: &full })
            .await
    }

    /// Opens the object under `key` for reading, for `GET /files/{key}`.
    ///
    /// `range` is `None` for the whole object, or `Some((start, len))`: `start` is the first
    /// byte (0-based) and `len` the number of bytes, `None` meaning "to the end". A `len` that
    /// reaches past the end is clipped. An HTTP `Range: bytes=a-b` (inclusive `b`) is
    /// `Some((a, Some(b - a + 1)))`, and `bytes=a-` is `Some((a, None))`.
    ///
    /// Returns the metadata of the *whole* object (so `size` is the total for
    /// `Content-Range`) and a stream of the requested bytes. A `start` at or past the end of a
    /// non-empty object is [`StorageError::RangeNotSatisfiable`].
    pub async fn read_range(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<(ObjectMeta, ByteStream), StorageError> {
        let full = self.path(key)?;
        let (meta, stream) = self
            .inner
            .backend
            .read(ObjectRef { key, path: &full }, range)
            .await?;
        // Counted as the bytes go by: a client that stops reading early is not counted the rest.
        let counted = stream.inspect(|chunk| {
            if let Ok(bytes) = chunk {
                crate::metrics::storage_read(bytes.len() as u64);
            }
        });
        Ok((meta, Box::pin(counted)))
    }

    /// Copies the object under `key` into the local file `dest` (created or truncated),
    /// streaming. Returns the number of bytes written. On failure the partial file is removed.
    pub async fn copy_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        let (_, mut stream) = self.read_range(key, None).await?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| StorageError::local("copy", key, dest, e))?;
        let result: Result<u64, StorageError> = async {
            let mut written = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StorageError::Io {
                    op: "copy",
                    key: key.to_owned(),
                    detail: e.to_string(),
                })?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| StorageError::local("copy", key, dest, e))?;
                written += chunk.len() as u64;
            }
            file.flush()
                .await
                .map_err(|e| StorageError::local("copy", key, dest, e))?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            drop(file);
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    /// Copies the object under `from` to `to` inside the backend (server-side when the backend
    /// can, else streamed through the service). Not available on `cf_images`.
    pub async fn copy(&self, from: &str, to: &str) -> Result<StoredObject, StorageError> {
        let (src, dst) = (self.path(from)?, self.path(to)?);
        let (size, content_type) = self
            .inner
            .backend
            .copy(
                ObjectRef {
                    key: from,
                    path: &src,
                },
                ObjectRef {
                    key: to,
                    path: &dst,
                },
            )
            .await?;
        let written = Written { size, url: None };
        self.stored(to, written, content_type).await
    }

    /// Deletes the object under `key`. Deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.path(key)?;
        self.inner
            .backend
            .delete(ObjectRef { key, path: &full })
            .await
    }

    /// Every object under the logical folder `folder` (e.g. `uploads`), recursively: logical
    /// keys with their modification time when the backend reports one. Not available on
    /// `cf_images` ([`StorageError::Unsupported`]).
    pub async fn list(&self, folder: &str) -> Result<Vec<ListedObject>, StorageError> {
        let full = self.path(folder)?;
        let listed = self
            .inner
            .backend
            .list(ObjectRef {
                key: folder,
                path: &full,
            })
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|(path, last_modified)| {
                let key = path.strip_prefix(&self.inner.prefix)?.to_owned();
                Some(ListedObject { key, last_modified })
            })
            .collect())
    }

    /// Deletes every object under the logical folder `folder` (e.g. `outputs/{task_id}`);
    /// answers how many were deleted. A missing folder deletes nothing. Not available on
    /// `cf_images` ([`StorageError::Unsupported`]).
    pub async fn delete_folder(&self, folder: &str) -> Result<u64, StorageError> {
        let full = self.path(folder)?;
        self.inner
            .backend
            .delete_folder(ObjectRef {
                key: folder,
                path: &full,
            })
            .await
    }

    /// The service's own URL of a logical key: `public_base_url` (the `GET /files` route) +
    /// `/` + the key, each path segment percent-encoded (everything but `A-Za-z0-9-._~`).
    /// It serves objects of every backend; for `fs` and `memory` it is their public URL.
    pub fn public_url(&self, key: &str) -> String {
        url_under(&self.inner.settings.public_base_url, key)
    }

    /// The URL clients get for a stored object: the `/files` URL for `fs` and `memory`; for
    /// `s3`, `r2` and `gcs` the configured public base + the object's path in the bucket, or a
    /// presigned GET valid for the configured lifetime; for `cf_images` the delivery URL.
    pub async fn url(&self, key: &str) -> Result<String, StorageError> {
        let full = self.path(key)?;
        let own = self
            .inner
            .backend
            .url(ObjectRef { key, path: &full })
            .await?;
        Ok(own.unwrap_or_else(|| self.public_url(key)))
    }

    /// The logical key of a URL that names one of this storage's objects, or `None`: a URL
    /// under `public_base_url` (the `/files` route), or for `s3`, `r2` and `gcs` under the
    /// configured public base or the bucket's own URL (presigned URLs included) with the
    /// prefix. Query and fragment are ignored; the key must be valid.
    pub fn key_from_url(&self, url: &str) -> Option<String> {
        let own = |base: &str| path_under(base, url);
        let key = own(&self.inner.settings.public_base_url).or_else(|| {
            let path = self
                .inner
                .backend
                .url_bases()
                .iter()
                .find_map(|base| own(base))?;
            path.strip_prefix(self.inner.prefix.as_str())
                .map(str::to_owned)
        })?;
        validate_key(&key).ok()?;
        Some(key)
    }

    /// Proves the backend is usable: writes, reads back and deletes a small probe object
    /// (`cf_images`: asks for a missing image, which proves the token, without uploading).
    pub async fn check(&self) -> Result<(), StorageError> {
        let key = format!("{PROBE_DIR}/{}", uuid::Uuid::now_v7());
        let full = format!("{}{key}", self.inner.prefix);
        self.inner
            .backend
            .check(ObjectRef {
                key: &key,
                path: &full,
            })
            .await
    }

    /// What `aihost storage check` does: stores a probe object (a 1×1 PNG) through the same path
    /// as outputs, reads it back, fetches its public URL without credentials, and deletes it.
    /// Fails when the backend refuses any step; an unreachable public URL is reported in
    /// [`CheckReport::public_get`] (the `/files` URL needs the service running).
    pub async fn check_public(&self) -> Result<CheckReport, StorageError> {
        let key = format!("storage-check/{}/probe.png", uuid::Uuid::now_v7());
        let stream =
            futures_util::stream::iter([Ok::<_, io::Error>(Bytes::from_static(PROBE_PNG))]);
        let stored = self.put_stream(&key, stream, "image/png", 1 << 20).await?;
        let result = async {
            let (_, stream) = self.read_range(&key, None).await?;
            let chunks: Vec<Bytes> = stream
                .map(|r| {
                    r.map_err(|e| StorageError::Io {
                        op: "check read",
                        key: key.clone(),
                        detail: e.to_string(),
                    })
                })
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            if chunks.concat() != PROBE_PNG {
                return Err(StorageError::Io {
                    op: "check",
                    key: key.clone(),
                    detail: "the probe object read back differs from what was written".into(),
                });
            }
            let public_get = match reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
            {
                Ok(client) => match client.get(&stored.url).send().await {
                    Ok(r) => Ok(r.status().as_u16()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            Ok(public_get)
        }
        .await;
        let deleted = self.delete(&key).await;
        let public_get = result?;
        deleted?;
        Ok(CheckReport {
            backend: self.inner.settings.kind.name(),
            key,
            url: stored.url,
            public_get,
        })
    }
}

#[cfg(test)]
mod tests;
