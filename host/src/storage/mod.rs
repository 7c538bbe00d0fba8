//! The one `Storage` facade over opendal (DESIGN.md §7).
//!
//! Callers speak in *logical keys* such as `outputs/{task_id}/{name}` or `uploads/{uuid}/{name}`.
//! The facade validates each key ([`validate_key`]), prepends the configured prefix before it
//! reaches the backend, and builds public URLs from the logical key. Every transfer is streamed:
//! files are written in chunks and read back as streams, so peak memory does not grow with
//! object size (except in the `memory` backend, whose objects live in the process).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use opendal::{ErrorKind, Operator};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest accepted key, in bytes (the S3 and R2 limit).
pub const MAX_KEY_LEN: usize = 1024;

/// Size of the pieces read from a local file and handed to the backend writer.
const READ_CHUNK: usize = 1024 * 1024;

/// Part size of backend writes: multipart backends (S3, R2) upload parts of exactly this size.
const WRITE_CHUNK: usize = 8 * 1024 * 1024;

/// Folder (under the fs root) where objects are written before being renamed into place, so a
/// reader never sees a half-written object. Keys may not start with it.
const FS_TMP_DIR: &str = ".aihost-tmp";

/// Folder of the probe objects written by [`Storage::check`].
const PROBE_DIR: &str = ".aihost-probe";

/// Which backend holds the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// Files under a local folder (`root`).
    Fs,
    /// In-process memory: lost on restart; for tests and throwaway runs.
    Memory,
}

/// Settings of the storage facade.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Which backend holds the objects.
    pub kind: StorageKind,
    /// Root folder of the `fs` backend (created when missing); ignored by `memory`.
    pub root: PathBuf,
    /// Prepended to every logical key inside the backend (e.g. `aihost/`); may be empty.
    pub prefix: String,
    /// Base of public URLs: `public_url(key)` is this + `/` + the percent-encoded key,
    /// e.g. `http://127.0.0.1:8000/files` for the fs and memory backends.
    pub public_base_url: String,
}

/// Errors of the storage facade. [`StorageError::code`] is stable and meant for API clients.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under this key.
    #[error("no stored object with key '{key}'")]
    NotFound {
        /// The logical key.
        key: String,
    },
    /// The key is not acceptable (see [`validate_key`]).
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
            StorageError::NotFound { .. } => "storage_not_found",
            StorageError::InvalidKey { .. } => "storage_invalid_key",
            StorageError::TooLarge { .. } => "storage_too_large",
            StorageError::RangeNotSatisfiable { .. } => "storage_range_not_satisfiable",
            StorageError::Unavailable { .. } => "storage_unavailable",
            StorageError::Io { .. } => "storage_io",
        }
    }

    /// Whether this is [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    fn backend(op: &'static str, key: &str, err: opendal::Error) -> StorageError {
        let key = key.to_owned();
        match err.kind() {
            ErrorKind::NotFound => StorageError::NotFound { key },
            ErrorKind::ConfigInvalid | ErrorKind::PermissionDenied | ErrorKind::RateLimited => {
                StorageError::Unavailable {
                    op,
                    key,
                    source: Box::new(err),
                }
            }
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

    fn local(op: &'static str, key: &str, path: &Path, err: io::Error) -> StorageError {
        StorageError::Io {
            op,
            key: key.to_owned(),
            detail: format!("{}: {err}", path.display()),
        }
    }
}

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

/// The storage facade. Cloning is cheap and clones share the backend.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    op: Operator,
    settings: StorageSettings,
    /// Normalised prefix: empty, or ending with exactly one `/`.
    prefix: String,
}

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
    /// Builds the backend. For `fs`, creates the root folder when it is missing.
    pub fn new(settings: StorageSettings) -> Result<Storage, StorageError> {
        let op = match settings.kind {
            StorageKind::Fs => {
                let root = std::path::absolute(&settings.root)
                    .map_err(|e| StorageError::local("open", "", &settings.root, e))?;
                std::fs::create_dir_all(&root)
                    .map_err(|e| StorageError::local("open", "", &root, e))?;
                let tmp = root.join(FS_TMP_DIR);
                let builder = opendal::services::Fs::default()
                    .root(&root.to_string_lossy())
                    .atomic_write_dir(&tmp.to_string_lossy());
                Operator::new(builder).map_err(|e| StorageError::backend("open", "", e))?
            }
            StorageKind::Memory => Operator::new(opendal::services::Memory::default())
                .map_err(|e| StorageError::backend("open", "", e))?,
        };
        let trimmed = settings.prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            if trimmed
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(StorageError::InvalidKey {
                    key: settings.prefix.clone(),
                    reason: "the storage prefix contains an empty, '.' or '..' segment",
                });
            }
            format!("{trimmed}/")
        };
        Ok(Storage {
            inner: Arc::new(Inner {
                op,
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

    fn content_type_for(key: &str, content_type: &str) -> String {
        if content_type.trim().is_empty() {
            mime_guess::from_path(key)
                .first_or_octet_stream()
                .essence_str()
                .to_owned()
        } else {
            content_type.trim().to_owned()
        }
    }

    fn stored(&self, key: &str, size: u64, content_type: String) -> StoredObject {
        StoredObject {
            key: key.to_owned(),
            url: self.public_url(key),
            size,
            content_type,
        }
    }

    /// Stores the local file at `path` under `key`, streaming it in chunks. An empty
    /// `content_type` is guessed from the key.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<StoredObject, StorageError> {
        let full = self.path(key)?;
        let content_type = Self::content_type_for(key, content_type);
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::local("put", key, path, e))?;
        let mut writer = self
            .inner
            .op
            .writer_with(&full)
            .content_type(&content_type)
            .chunk(WRITE_CHUNK)
            .await
            .map_err(|e| StorageError::backend("put", key, e))?;
        let mut size = 0u64;
        let result: Result<(), StorageError> = async {
            loop {
                let mut buf = BytesMut::with_capacity(READ_CHUNK);
                let n = file
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| StorageError::local("put", key, path, e))?;
                if n == 0 {
                    return Ok(());
                }
                // `read_buf` may return a short read; fill up the chunk before handing it on.
                while buf.len() < READ_CHUNK {
                    let more = file
                        .read_buf(&mut buf)
                        .await
                        .map_err(|e| StorageError::local("put", key, path, e))?;
                    if more == 0 {
                        break;
                    }
                }
                size += buf.len() as u64;
                writer
                    .write(buf.freeze())
                    .await
                    .map_err(|e| StorageError::backend("put", key, e))?;
            }
        }
        .await;
        if let Err(e) = result {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .close()
            .await
            .map_err(|e| StorageError::backend("put", key, e))?;
        Ok(self.stored(key, size, content_type))
    }

    /// Stores the bytes of `stream` under `key`. When more than `max_bytes` arrive, the write
    /// is aborted, the partial object deleted, and [`StorageError::TooLarge`] returned. An
    /// empty `content_type` is guessed from the key.
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
        let content_type = Self::content_type_for(key, content_type);
        let mut writer = self
            .inner
            .op
            .writer_with(&full)
            .content_type(&content_type)
            .chunk(WRITE_CHUNK)
            .await
            .map_err(|e| StorageError::backend("put", key, e))?;
        let mut stream = pin!(stream);
        let mut size = 0u64;
        let result: Result<(), StorageError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StorageError::Io {
                    op: "put",
                    key: key.to_owned(),
                    detail: format!("reading the upload failed: {e}"),
                })?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(StorageError::TooLarge {
                        key: key.to_owned(),
                        limit: max_bytes,
                    });
                }
                writer
                    .write(chunk)
                    .await
                    .map_err(|e| StorageError::backend("put", key, e))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = writer.abort().await;
            // Some backends cannot abort (or had already written): make sure nothing remains.
            let _ = self.inner.op.delete(&full).await;
            return Err(e);
        }
        writer
            .close()
            .await
            .map_err(|e| StorageError::backend("put", key, e))?;
        Ok(self.stored(key, size, content_type))
    }

    /// Size, content type and modification time of the object under `key`;
    /// [`StorageError::NotFound`] when there is none.
    pub async fn stat(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let full = self.path(key)?;
        let meta = self
            .inner
            .op
            .stat(&full)
            .await
            .map_err(|e| StorageError::backend("stat", key, e))?;
        if meta.is_dir() {
            return Err(StorageError::NotFound {
                key: key.to_owned(),
            });
        }
        Ok(ObjectMeta {
            size: meta.content_length(),
            content_type: Self::content_type_for(key, meta.content_type().unwrap_or_default()),
            last_modified: meta.last_modified().map(SystemTime::from),
        })
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
    ) -> Result<
        (
            ObjectMeta,
            impl Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static,
        ),
        StorageError,
    > {
        let meta = self.stat(key).await?;
        let full = self.path(key)?;
        let (start, end) = match range {
            None => (0, meta.size),
            Some((start, len)) => {
                if start >= meta.size && !(start == 0 && meta.size == 0) {
                    return Err(StorageError::RangeNotSatisfiable {
                        key: key.to_owned(),
                        start,
                        size: meta.size,
                    });
                }
                let end = match len {
                    Some(len) => start.saturating_add(len).min(meta.size),
                    None => meta.size,
                };
                (start, end)
            }
        };
        let reader = self
            .inner
            .op
            .reader_with(&full)
            .chunk(WRITE_CHUNK)
            .await
            .map_err(|e| StorageError::backend("read", key, e))?;
        let stream = reader
            .into_bytes_stream(start..end)
            .await
            .map_err(|e| StorageError::backend("read", key, e))?;
        Ok((meta, stream))
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

    /// Deletes the object under `key`. Deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.path(key)?;
        self.inner
            .op
            .delete(&full)
            .await
            .map_err(|e| StorageError::backend("delete", key, e))
    }

    /// Public URL of a logical key: `public_base_url` + `/` + the key, each path segment
    /// percent-encoded (everything but `A-Za-z0-9-._~`).
    pub fn public_url(&self, key: &str) -> String {
        let base = self.inner.settings.public_base_url.trim_end_matches('/');
        let mut url = String::with_capacity(base.len() + key.len() + 8);
        url.push_str(base);
        for segment in key.split('/') {
            url.push('/');
            percent_encode_into(segment, &mut url);
        }
        url
    }

    /// The logical key of a URL under this storage's `public_base_url` (same scheme, host and
    /// port, path below the base; query and fragment ignored), or `None` when the URL is
    /// elsewhere or names no valid key.
    pub fn key_from_url(&self, url: &str) -> Option<String> {
        let base = self.inner.settings.public_base_url.trim_end_matches('/');
        let rest = match (url::Url::parse(base), url::Url::parse(url)) {
            (Ok(base_url), Ok(target)) => {
                if base_url.scheme() != target.scheme()
                    || base_url.host() != target.host()
                    || base_url.port_or_known_default() != target.port_or_known_default()
                {
                    return None;
                }
                let base_path = base_url.path().trim_end_matches('/');
                let rest = target.path().strip_prefix(base_path)?.strip_prefix('/')?;
                rest.to_owned()
            }
            // A base that is not an absolute URL (e.g. "/files"): compare the text.
            (Err(_), _) => {
                let rest = url.strip_prefix(base)?.strip_prefix('/')?;
                rest.split(['?', '#']).next().unwrap_or_default().to_owned()
            }
            (Ok(_), Err(_)) => return None,
        };
        let mut key = String::with_capacity(rest.len());
        for (i, segment) in rest.split('/').enumerate() {
            if i > 0 {
                key.push('/');
            }
            key.push_str(&percent_decode(segment)?);
        }
        validate_key(&key).ok()?;
        Some(key)
    }

    /// Writes, reads back and deletes a small probe object: proves the backend is usable.
    pub async fn check(&self) -> Result<(), StorageError> {
        let key = format!("{PROBE_DIR}/{}", uuid::Uuid::now_v7());
        let full = format!("{}{key}", self.inner.prefix);
        let payload = format!("aihost storage check {key}");
        self.inner
            .op
            .write(&full, payload.clone().into_bytes())
            .await
            .map_err(|e| StorageError::backend("check write", &key, e))?;
        let read = self
            .inner
            .op
            .read(&full)
            .await
            .map_err(|e| StorageError::backend("check read", &key, e))?;
        let matches = read.to_vec() == payload.as_bytes();
        self.inner
            .op
            .delete(&full)
            .await
            .map_err(|e| StorageError::backend("check delete", &key, e))?;
        if !matches {
            return Err(StorageError::Io {
                op: "check",
                key,
                detail: "the probe object read back differs from what was written".to_owned(),
            });
        }
        Ok(())
    }
}

fn percent_encode_into(segment: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;
    use tempfile::TempDir;

    const BASE: &str = "http://127.0.0.1:8000/files";

    /// A storage of each kind, with the tempdir that must outlive the fs one.
    fn backends(prefix: &str) -> Vec<(Storage, TempDir)> {
        [StorageKind::Fs, StorageKind::Memory]
            .into_iter()
            .map(|kind| {
                let dir = tempfile::tempdir().unwrap();
                let storage = Storage::new(StorageSettings {
                    kind,
                    root: dir.path().join("objects"),
                    prefix: prefix.to_owned(),
                    public_base_url: BASE.to_owned(),
                })
                .unwrap();
                (storage, dir)
            })
            .collect()
    }

    async fn read_all(
        storage: &Storage,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> (ObjectMeta, Vec<u8>) {
        let (meta, stream) = storage.read_range(key, range).await.unwrap();
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        (meta, chunks.concat())
    }

    async fn round_trip(storage: &Storage, dir: &Path) {
        let src = dir.join("src.png");
        tokio::fs::write(&src, b"0123456789").await.unwrap();
        let key = "outputs/task-1/image.png";
        let stored = storage.put_file(key, &src, "").await.unwrap();
        assert_eq!(stored.key, key);
        assert_eq!(stored.size, 10);
        assert_eq!(stored.content_type, "image/png");
        assert_eq!(stored.url, format!("{BASE}/outputs/task-1/image.png"));

        let meta = storage.stat(key).await.unwrap();
        assert_eq!(meta.size, 10);
        assert_eq!(meta.content_type, "image/png");

        let (meta, all) = read_all(storage, key, None).await;
        assert_eq!(meta.size, 10);
        assert_eq!(all, b"0123456789");
        assert_eq!(read_all(storage, key, Some((4, None))).await.1, b"456789");
        assert_eq!(read_all(storage, key, Some((2, Some(3)))).await.1, b"234");
        assert_eq!(read_all(storage, key, Some((8, Some(100)))).await.1, b"89");
        let err = storage
            .read_range(key, Some((10, None)))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), "storage_range_not_satisfiable");

        let dest = dir.join("copy.bin");
        assert_eq!(storage.copy_to_file(key, &dest).await.unwrap(), 10);
        assert_eq!(tokio::fs::read(&dest).await.unwrap(), b"0123456789");

        // An explicit content type is kept.
        let stored = storage
            .put_file("outputs/task-1/raw", &src, "image/webp")
            .await
            .unwrap();
        assert_eq!(stored.content_type, "image/webp");

        storage.delete(key).await.unwrap();
        let err = storage.stat(key).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.code(), "storage_not_found");
        assert!(
            storage
                .read_range(key, None)
                .await
                .err()
                .unwrap()
                .is_not_found()
        );
        let err = storage
            .copy_to_file(key, &dir.join("missing.bin"))
            .await
            .unwrap_err();
        assert!(err.is_not_found());
        // Deleting again is fine.
        storage.delete(key).await.unwrap();
        storage.check().await.unwrap();
    }

    #[tokio::test]
    async fn storage_round_trip() {
        for (storage, dir) in backends("") {
            round_trip(&storage, dir.path()).await;
        }
    }

    async fn big_file(storage: &Storage, dir: &Path) {
        let len = 20 * 1024 * 1024 + 12345;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let src = dir.join("big.bin");
        tokio::fs::write(&src, &data).await.unwrap();
        let stored = storage
            .put_file("uploads/u1/big.bin", &src, "")
            .await
            .unwrap();
        assert_eq!(stored.size, len as u64);
        assert_eq!(stored.content_type, "application/octet-stream");
        let dest = dir.join("big.out");
        let n = storage
            .copy_to_file("uploads/u1/big.bin", &dest)
            .await
            .unwrap();
        assert_eq!(n, len as u64);
        assert!(tokio::fs::read(&dest).await.unwrap() == data);
        let (_, tail) =
            read_all(storage, "uploads/u1/big.bin", Some((len as u64 - 10, None))).await;
        assert_eq!(tail, &data[len - 10..]);
    }

    #[tokio::test]
    async fn storage_big_file_round_trip() {
        for (storage, dir) in backends("") {
            big_file(&storage, dir.path()).await;
        }
    }

    async fn too_large(storage: &Storage) {
        let chunks = (0..10).map(|_| Ok::<_, io::Error>(Bytes::from(vec![1u8; 1000])));
        let err = storage
            .put_stream(
                "uploads/u2/x.bin",
                futures_util::stream::iter(chunks),
                "",
                5000,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "storage_too_large");
        assert!(
            storage
                .stat("uploads/u2/x.bin")
                .await
                .unwrap_err()
                .is_not_found()
        );

        // At the limit is fine.
        let chunks = (0..5).map(|_| Ok::<_, io::Error>(Bytes::from(vec![1u8; 1000])));
        let stored = storage
            .put_stream(
                "uploads/u2/y.txt",
                futures_util::stream::iter(chunks),
                "",
                5000,
            )
            .await
            .unwrap();
        assert_eq!(stored.size, 5000);
        assert_eq!(stored.content_type, "text/plain");
        assert_eq!(storage.stat("uploads/u2/y.txt").await.unwrap().size, 5000);

        // A failing stream leaves nothing behind either.
        let chunks = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("client went away")),
        ];
        let err = storage
            .put_stream(
                "uploads/u2/z.bin",
                futures_util::stream::iter(chunks),
                "",
                5000,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "storage_io");
        assert!(
            storage
                .stat("uploads/u2/z.bin")
                .await
                .unwrap_err()
                .is_not_found()
        );
    }

    #[tokio::test]
    async fn storage_put_stream_too_large() {
        for (storage, dir) in backends("") {
            too_large(&storage).await;
            if storage.settings().kind == StorageKind::Fs {
                // No half-written temporary file is left behind either.
                let tmp = dir.path().join("objects").join(FS_TMP_DIR);
                assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
            }
        }
    }

    async fn invalid_keys(storage: &Storage, dir: &Path) {
        let src = dir.join("f.txt");
        tokio::fs::write(&src, b"x").await.unwrap();
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for key in [
            "",
            "/abs/x",
            "a/../b",
            "..",
            "a/./b",
            "a//b",
            "dir/",
            "a\\b",
            "a\nb",
            "a\u{0}b",
            ".aihost-tmp/x",
            long.as_str(),
        ] {
            let err = storage.put_file(key, &src, "").await.unwrap_err();
            assert_eq!(err.code(), "storage_invalid_key", "{key:?}");
            assert_eq!(
                storage.stat(key).await.unwrap_err().code(),
                "storage_invalid_key"
            );
            assert_eq!(
                storage.delete(key).await.unwrap_err().code(),
                "storage_invalid_key"
            );
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN)).is_ok());
        assert!(validate_key("uploads/0190/my photo (1).png").is_ok());
    }

    #[tokio::test]
    async fn storage_invalid_keys_refused() {
        for (storage, dir) in backends("") {
            invalid_keys(&storage, dir.path()).await;
        }
    }

    fn urls(storage: &Storage) {
        let key = "uploads/0190a/my photo #1?.png";
        let url = storage.public_url(key);
        assert_eq!(
            url,
            format!("{BASE}/uploads/0190a/my%20photo%20%231%3F.png")
        );
        assert_eq!(storage.key_from_url(&url).as_deref(), Some(key));
        let unicode = "outputs/t/résumé.png";
        assert_eq!(
            storage
                .key_from_url(&storage.public_url(unicode))
                .as_deref(),
            Some(unicode)
        );
        // Query and fragment are ignored; default ports and host case are normalised.
        assert_eq!(
            storage
                .key_from_url("HTTP://127.0.0.1:8000/files/a/b.png?x=1#y")
                .as_deref(),
            Some("a/b.png")
        );
        for other in [
            "http://127.0.0.1:8001/files/a.png",
            "https://127.0.0.1:8000/files/a.png",
            "http://localhost:8000/files/a.png",
            "http://127.0.0.1:8000/filesx/a.png",
            "http://127.0.0.1:8000/files",
            "http://127.0.0.1:8000/files/",
            "http://127.0.0.1:8000/other/a.png",
            "http://127.0.0.1:8000/files/../etc/passwd",
            "http://127.0.0.1:8000/files/%2e%2e/etc/passwd",
            "uploads/a.png",
            "not a url",
        ] {
            assert_eq!(storage.key_from_url(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn storage_public_url_round_trip() {
        for (storage, _dir) in backends("") {
            urls(&storage);
        }
        for (storage, _dir) in backends("tenant-a") {
            // Public URLs use logical keys: the prefix never shows.
            assert_eq!(storage.public_url("a/b.png"), format!("{BASE}/a/b.png"));
            urls(&storage);
        }
    }

    #[test]
    fn storage_public_url_with_relative_base() {
        let storage = Storage::new(StorageSettings {
            kind: StorageKind::Memory,
            root: PathBuf::new(),
            prefix: String::new(),
            public_base_url: "/files/".to_owned(),
        })
        .unwrap();
        assert_eq!(storage.public_url("a b/c.png"), "/files/a%20b/c.png");
        assert_eq!(
            storage.key_from_url("/files/a%20b/c.png").as_deref(),
            Some("a b/c.png")
        );
        assert_eq!(storage.key_from_url("/other/c.png"), None);
    }

    #[tokio::test]
    async fn storage_prefix_applied() {
        for (storage, dir) in backends("/tenant-a/") {
            let src = dir.path().join("p.txt");
            tokio::fs::write(&src, b"prefixed").await.unwrap();
            storage
                .put_file("outputs/t1/p.txt", &src, "")
                .await
                .unwrap();
            assert_eq!(storage.stat("outputs/t1/p.txt").await.unwrap().size, 8);
            // The backend holds it under the prefix, not at the bare key.
            let op = &storage.inner.op;
            assert!(op.exists("tenant-a/outputs/t1/p.txt").await.unwrap());
            assert!(!op.exists("outputs/t1/p.txt").await.unwrap());
            if storage.settings().kind == StorageKind::Fs {
                let on_disk = dir.path().join("objects/tenant-a/outputs/t1/p.txt");
                assert_eq!(std::fs::read(on_disk).unwrap(), b"prefixed");
            }
        }
    }
}
