//! The one implementation shared by every backend reached through an opendal [`Operator`]
//! (`fs`, `memory`, `s3`, `r2`, `gcs`): streamed writes in fixed-size parts, ranged reads,
//! server-side copies, public or presigned URLs, and the probe of [`Storage::check`].
//!
//! Separate because the backends differ only in how their operator is built (their own files
//! `fs.rs`, `memory.rs`, `s3.rs`, `gcs.rs`); what is done with the operator is the same.
//!
//! [`Storage::check`]: super::Storage::check

use std::io;
use std::path::Path;
use std::pin::pin;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use opendal::Operator;
use tokio::io::AsyncReadExt;

use super::key::content_type_for;
use super::object::{ObjectRef, Written};
use super::stream::{ByteStream, range_bounds};
use super::url::{presign_duration, url_under};
use super::{ObjectMeta, StorageError};

/// Size of the pieces read from a local file and handed to the backend writer.
const READ_CHUNK: usize = 1024 * 1024;

/// Part size of backend writes: multipart backends (S3, R2) upload parts of exactly this size.
const WRITE_CHUNK: usize = 8 * 1024 * 1024;

/// Time limit of remote operations, so a stalled server fails the operation (the dispatcher
/// then retries) instead of hanging it: a whole operation, and each read or write of it.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(120);

/// A backend reached through opendal.
pub(super) struct OpBackend {
    /// The operator, with paths relative to the backend's root or bucket.
    pub(super) op: Operator,
    /// Base URL under which backend paths are public (s3, r2, gcs with a configured base).
    public_base: Option<String>,
    /// Lifetime of presigned GET URLs (s3, r2, gcs without a public base).
    presign: Option<Duration>,
    /// Bases under which URLs name objects of this backend, with the prefixed path after them:
    /// the public base, then the bucket's own URLs (`{endpoint}/{bucket}`). Such URLs are read
    /// from storage, not fetched.
    url_bases: Vec<String>,
    /// GCS: write with `if_not_exists`, which makes opendal use the JSON API's resumable
    /// uploads (after deleting any previous object under the key).
    resumable: bool,
    /// Bytes gathered before each backend write: a multipart part for remote backends
    /// ([`WRITE_CHUNK`]); none for local ones, whose writes go straight to the file, so an
    /// upload holds no more than the buffer it is read through.
    write_chunk: Option<usize>,
    /// The `fs` backend's root folder: work files are moved into it in one blocking call
    /// (`fs_move.rs`).
    fs_root: Option<std::path::PathBuf>,
}

impl OpBackend {
    /// A local backend (`fs`, `memory`): its objects have no URL of their own, the service's
    /// `/files` route serves them.
    pub(super) fn local(op: Operator) -> OpBackend {
        OpBackend {
            op,
            public_base: None,
            presign: None,
            url_bases: Vec::new(),
            resumable: false,
            write_chunk: None,
            fs_root: None,
        }
    }

    /// The `fs` backend over the folder `root` (absolute).
    pub(super) fn fs(op: Operator, root: std::path::PathBuf) -> OpBackend {
        OpBackend {
            fs_root: Some(root),
            ..OpBackend::local(op)
        }
    }

    /// A remote backend (`s3`, `r2`, `gcs`), with the time limits of remote operations. Its
    /// URLs are `public_base` + the object's path, or without one presigned GETs valid for
    /// `presign_secs` (0: the default); URLs under `bucket_bases` name its objects too.
    pub(super) fn remote(
        op: Operator,
        public_base: Option<String>,
        presign_secs: u64,
        bucket_bases: Vec<String>,
        resumable: bool,
    ) -> OpBackend {
        let timeouts = opendal::layers::TimeoutLayer::new()
            .with_timeout(REMOTE_TIMEOUT)
            .with_io_timeout(REMOTE_TIMEOUT);
        OpBackend {
            op: op.layer(timeouts),
            presign: public_base
                .is_none()
                .then(|| presign_duration(presign_secs)),
            url_bases: public_base.iter().cloned().chain(bucket_bases).collect(),
            public_base,
            resumable,
            write_chunk: Some(WRITE_CHUNK),
            fs_root: None,
        }
    }

    /// See [`OpBackend::url_bases`](OpBackend#structfield.url_bases).
    pub(super) fn url_bases(&self) -> &[String] {
        &self.url_bases
    }

    async fn writer(
        &self,
        obj: ObjectRef<'_>,
        content_type: &str,
    ) -> Result<opendal::Writer, StorageError> {
        let key = obj.key;
        if self.resumable {
            // `if_not_exists` needs the key free; the write replaces what was there.
            self.op
                .delete(obj.path)
                .await
                .map_err(|e| StorageError::backend("put", key, e))?;
        }
        let writer = self
            .op
            .writer_with(obj.path)
            .content_type(content_type)
            .if_not_exists(self.resumable);
        match self.write_chunk {
            Some(chunk) => writer.chunk(chunk).await,
            None => writer.await,
        }
        .map_err(|e| StorageError::backend("put", key, e))
    }

    /// Stores the work file at `path` (inside the folder `within`), which the caller gives up:
    /// on `fs` it is moved into place in one blocking call; elsewhere it is written as by
    /// [`OpBackend::put_file`].
    pub(super) async fn put_work_file(
        &self,
        obj: ObjectRef<'_>,
        path: &Path,
        within: &Path,
        content_type: &str,
    ) -> Result<Written, StorageError> {
        let Some(root) = &self.fs_root else {
            return self.put_file(obj, path, content_type).await;
        };
        let (root, rel, key) = (root.clone(), obj.path.to_owned(), obj.key.to_owned());
        let (src, within) = (path.to_owned(), within.to_owned());
        let size = tokio::task::spawn_blocking(move || {
            super::fs_move::store(&root, &rel, &key, &src, &within)
        })
        .await
        .map_err(|e| StorageError::local("put", obj.key, path, io::Error::other(e)))??;
        Ok(Written { size, url: None })
    }

    /// Writes the local file at `path`, read in chunks.
    pub(super) async fn put_file(
        &self,
        obj: ObjectRef<'_>,
        path: &Path,
        content_type: &str,
    ) -> Result<Written, StorageError> {
        let key = obj.key;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::local("put", key, path, e))?;
        let mut writer = self.writer(obj, content_type).await?;
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
        Ok(Written { size, url: None })
    }

    /// Writes the bytes of `stream`; past `max_bytes`, aborts and deletes the partial object.
    pub(super) async fn put_stream<S>(
        &self,
        obj: ObjectRef<'_>,
        stream: S,
        content_type: &str,
        max_bytes: u64,
    ) -> Result<Written, StorageError>
    where
        S: Stream<Item = Result<Bytes, io::Error>>,
    {
        let key = obj.key;
        let mut stream = pin!(stream);
        let mut writer = self.writer(obj, content_type).await?;
        let mut size = 0u64;
        let result: Result<(), StorageError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StorageError::upload_read(key, e))?;
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
            let _ = self.op.delete(obj.path).await;
            return Err(e);
        }
        writer
            .close()
            .await
            .map_err(|e| StorageError::backend("put", key, e))?;
        Ok(Written { size, url: None })
    }

    /// Size, content type and modification time; a folder is not an object.
    pub(super) async fn stat(&self, obj: ObjectRef<'_>) -> Result<ObjectMeta, StorageError> {
        let key = obj.key;
        let meta = self
            .op
            .stat(obj.path)
            .await
            .map_err(|e| StorageError::backend("stat", key, e))?;
        if meta.is_dir() {
            return Err(StorageError::NotFound {
                key: key.to_owned(),
            });
        }
        Ok(ObjectMeta {
            size: meta.content_length(),
            content_type: content_type_for(key, meta.content_type().unwrap_or_default()),
            last_modified: meta.last_modified().map(SystemTime::from),
        })
    }

    /// The metadata of the whole object and a stream of the bytes `range` asks for.
    pub(super) async fn read(
        &self,
        obj: ObjectRef<'_>,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<(ObjectMeta, ByteStream), StorageError> {
        let key = obj.key;
        let meta = self.stat(obj).await?;
        let (start, end) = range_bounds(key, range, meta.size)?;
        let reader = self
            .op
            .reader_with(obj.path)
            .chunk(WRITE_CHUNK)
            .await
            .map_err(|e| StorageError::backend("read", key, e))?;
        let stream = reader
            .into_bytes_stream(start..end)
            .await
            .map_err(|e| StorageError::backend("read", key, e))?;
        Ok((meta, Box::pin(stream)))
    }

    /// Copies `from` to `to`: server-side when the service can, else streamed through the
    /// service. Returns the size and content type of the copy.
    pub(super) async fn copy(
        &self,
        from: ObjectRef<'_>,
        to: ObjectRef<'_>,
    ) -> Result<(u64, String), StorageError> {
        let meta = self.stat(from).await?;
        if self.op.info().capability().copy {
            if self.resumable {
                let _ = self.op.delete(to.path).await;
            }
            self.op
                .copy(from.path, to.path)
                .await
                .map_err(|e| StorageError::backend("copy", from.key, e))?;
            return Ok((meta.size, meta.content_type));
        }
        let (meta, stream) = self.read(from, None).await?;
        let content_type = content_type_for(to.key, &meta.content_type);
        let written = self.put_stream(to, stream, &content_type, u64::MAX).await?;
        Ok((written.size, content_type))
    }

    /// Deletes the object; a missing one is not an error.
    pub(super) async fn delete(&self, obj: ObjectRef<'_>) -> Result<(), StorageError> {
        self.op
            .delete(obj.path)
            .await
            .map_err(|e| StorageError::backend("delete", obj.key, e))
    }

    /// Every object under the folder `obj` (recursively), as backend paths with their
    /// modification time (stated when the listing does not carry it).
    pub(super) async fn list(
        &self,
        obj: ObjectRef<'_>,
    ) -> Result<Vec<(String, Option<SystemTime>)>, StorageError> {
        let folder = format!("{}/", obj.path);
        let entries = match self.op.list_with(&folder).recursive(true).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::backend("list", obj.key, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            if entry.metadata().is_dir() {
                continue;
            }
            let modified = match entry.metadata().last_modified() {
                Some(t) => Some(SystemTime::from(t)),
                None => self
                    .op
                    .stat(entry.path())
                    .await
                    .ok()
                    .and_then(|m| m.last_modified().map(SystemTime::from)),
            };
            found.push((entry.path().to_owned(), modified));
        }
        Ok(found)
    }

    /// Deletes every object under the folder `obj`, then the folder itself where folders exist
    /// (`fs`); answers how many objects were deleted.
    pub(super) async fn delete_folder(&self, obj: ObjectRef<'_>) -> Result<u64, StorageError> {
        let mut deleted = 0u64;
        for (path, _) in self.list(obj).await? {
            self.op
                .delete(&path)
                .await
                .map_err(|e| StorageError::backend("delete", obj.key, e))?;
            deleted += 1;
        }
        // The empty folders left by `fs`; nothing is left to delete elsewhere.
        let _ = self
            .op
            .delete_with(&format!("{}/", obj.path))
            .recursive(true)
            .await;
        Ok(deleted)
    }

    /// The public base + the object's path, or a presigned GET; `None` for local backends
    /// (the `/files` route serves their objects).
    pub(super) async fn url(&self, obj: ObjectRef<'_>) -> Result<Option<String>, StorageError> {
        if let Some(base) = &self.public_base {
            Ok(Some(url_under(base, obj.path)))
        } else if let Some(lifetime) = self.presign {
            let req = self
                .op
                .presign_read(obj.path, lifetime)
                .await
                .map_err(|e| StorageError::backend("presign", obj.key, e))?;
            Ok(Some(req.uri().to_string()))
        } else {
            Ok(None)
        }
    }

    /// Writes, reads back and deletes the probe object `obj`.
    pub(super) async fn check(&self, obj: ObjectRef<'_>) -> Result<(), StorageError> {
        let (key, full) = (obj.key, obj.path);
        let payload = format!("aihost storage check {key}");
        if self.resumable {
            self.op
                .write_with(full, payload.clone().into_bytes())
                .if_not_exists(true)
                .await
        } else {
            self.op.write(full, payload.clone().into_bytes()).await
        }
        .map_err(|e| StorageError::backend("check write", key, e))?;
        let read = self
            .op
            .read(full)
            .await
            .map_err(|e| StorageError::backend("check read", key, e))?;
        let matches = read.to_vec() == payload.as_bytes();
        self.op
            .delete(full)
            .await
            .map_err(|e| StorageError::backend("check delete", key, e))?;
        if !matches {
            return Err(StorageError::Io {
                op: "check",
                key: key.to_owned(),
                detail: "the probe object read back differs from what was written".to_owned(),
            });
        }
        Ok(())
    }
}
