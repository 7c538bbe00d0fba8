//! The one place where the facade chooses between its two kinds of backend: the ones reached
//! through opendal (`fs`, `memory`, `s3`, `r2`, `gcs`; [`OpBackend`]) and Cloudflare Images
//! ([`CfImages`]). Each operation here only forwards to the chosen one.
//!
//! Separate so the facade ([`Storage`](super::Storage)) states each operation once (key
//! checks, content types, URLs), and each kind of backend implements it in its own file.

use std::io;
use std::path::Path;

use bytes::Bytes;
use futures_util::Stream;

use super::cf_images::{self, CfImages};
use super::object::{ObjectRef, Written};
use super::operator::OpBackend;
use super::stream::ByteStream;
use super::{ObjectMeta, StorageError, StorageKind, StorageSettings, fs, gcs, memory, s3};

/// The backend of a [`Storage`](super::Storage).
pub(super) enum Backend {
    /// A backend reached through opendal.
    Op(OpBackend),
    /// Cloudflare Images, with the `fs` backend that holds what is not an image (when
    /// `storage.fallback = "fs"`).
    CfImages(CfImages, Option<OpBackend>),
}

/// Whether `key` names an image (by its extension): what Cloudflare Images holds. Every
/// operation of a key goes to the same backend, decided by this alone.
fn is_image(key: &str) -> bool {
    super::key::content_type_for(key, "").starts_with("image/")
}

/// The refusal of a non-image on `cf_images` without a fallback.
fn no_fallback() -> StorageError {
    StorageError::Unsupported {
        op: "store a non-image (storage.fallback = \"none\"; set it to \"fs\")",
        backend: "cf_images",
    }
}

impl Backend {
    /// Builds the backend `settings.kind` names; no request is made.
    pub(super) fn open(settings: &StorageSettings) -> Result<Backend, StorageError> {
        Ok(match &settings.kind {
            StorageKind::Fs => Backend::Op(fs::backend(&settings.root)?),
            StorageKind::Memory => Backend::Op(memory::backend()?),
            StorageKind::S3(s) => Backend::Op(s3::backend(s, false)?),
            StorageKind::R2(s) => Backend::Op(s3::backend(s, true)?),
            StorageKind::Gcs(s) => Backend::Op(gcs::backend(s)?),
            StorageKind::CfImages(s) => Backend::CfImages(
                cf_images::backend(s)?,
                if s.fallback_fs {
                    Some(fs::backend(&settings.root)?)
                } else {
                    None
                },
            ),
        })
    }

    /// Stores the local file `file`, streaming it.
    pub(super) async fn put_file(
        &self,
        obj: ObjectRef<'_>,
        file: &Path,
        content_type: &str,
    ) -> Result<Written, StorageError> {
        match self {
            Backend::Op(b) => b.put_file(obj, file, content_type).await,
            Backend::CfImages(_, Some(f)) if !is_image(obj.key) => {
                f.put_file(obj, file, content_type).await
            }
            Backend::CfImages(_, None) if !is_image(obj.key) => Err(no_fallback()),
            Backend::CfImages(cf, _) => cf.put_file(obj, file, content_type).await,
        }
    }

    /// Stores the work file `file` (inside the folder `within`), which the caller gives up.
    pub(super) async fn put_work_file(
        &self,
        obj: ObjectRef<'_>,
        file: &Path,
        within: &Path,
        content_type: &str,
    ) -> Result<Written, StorageError> {
        match self {
            Backend::Op(b) => b.put_work_file(obj, file, within, content_type).await,
            Backend::CfImages(_, Some(f)) if !is_image(obj.key) => {
                f.put_work_file(obj, file, within, content_type).await
            }
            _ => self.put_file(obj, file, content_type).await,
        }
    }

    /// Stores the bytes of `stream`; [`StorageError::TooLarge`] past `max_bytes`, with nothing
    /// left stored.
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
        match self {
            Backend::Op(b) => b.put_stream(obj, stream, content_type, max_bytes).await,
            Backend::CfImages(_, Some(f)) if !is_image(obj.key) => {
                f.put_stream(obj, stream, content_type, max_bytes).await
            }
            Backend::CfImages(_, None) if !is_image(obj.key) => Err(no_fallback()),
            Backend::CfImages(cf, _) => cf.put_stream(obj, stream, content_type, max_bytes).await,
        }
    }

    /// The object's metadata.
    pub(super) async fn stat(&self, obj: ObjectRef<'_>) -> Result<ObjectMeta, StorageError> {
        match self {
            Backend::Op(b) => b.stat(obj).await,
            Backend::CfImages(_, Some(f)) if !is_image(obj.key) => f.stat(obj).await,
            Backend::CfImages(cf, _) => cf.stat(obj).await,
        }
    }

    /// The metadata of the whole object and a stream of the bytes `range` asks for.
    pub(super) async fn read(
        &self,
        obj: ObjectRef<'_>,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<(ObjectMeta, ByteStream), StorageError> {
        match self {
            Backend::Op(b) => b.read(obj, range).await,
            Backend::CfImages(_, Some(f)) if !is_image(obj.key) => f.read(obj, range).await,
            Backend::CfImages(cf, _) => cf.read(obj, range).await,
        }
    }

    /// Copies `from` to `to`; returns the size and content type of the copy.
    pub(super) async fn copy(
        &self,
        from: ObjectRef<'_>,
        to: ObjectRef<'_>,
    ) -> Result<(u64, String), StorageError> {
        match self {
            Backend::Op(b) => b.copy(from, to).await,
            Backend::CfImages(_, Some(f)) if !is_image(from.key) && !is_image(to.key) => {
                f.copy(from, to).await
            }
            Backend::CfImages(..) => Err(StorageError::Unsupported {
                op: "copy",
                backend: "cf_images",
            }),
        }
    }

    /// Deletes the object; a missing one is not an error.
    pub(super) async fn delete(&self, obj: ObjectRef<'_>) -> Result<(), StorageError> {
        match self {
            Backend::Op(b) => b.delete(obj).await,
            Backend::CfImages(_, Some(f)) if !is_image(obj.key) => f.delete(obj).await,
            Backend::CfImages(cf, _) => cf.delete(obj.key, obj.path).await,
        }
    }

    /// Every object under the folder `obj`: backend paths and modification times. Not
    /// available on `cf_images`.
    pub(super) async fn list(
        &self,
        obj: ObjectRef<'_>,
    ) -> Result<Vec<(String, Option<std::time::SystemTime>)>, StorageError> {
        match self {
            Backend::Op(b) => b.list(obj).await,
            Backend::CfImages(..) => Err(StorageError::Unsupported {
                op: "list",
                backend: "cf_images",
            }),
        }
    }

    /// Deletes every object under the folder `obj`; answers how many. Not available on
    /// `cf_images`.
    pub(super) async fn delete_folder(&self, obj: ObjectRef<'_>) -> Result<u64, StorageError> {
        match self {
            Backend::Op(b) => b.delete_folder(obj).await,
            Backend::CfImages(..) => Err(StorageError::Unsupported {
                op: "delete a folder",
                backend: "cf_images",
            }),
        }
    }

    /// The object's own URL; `None` when the service's `/files` route is its public URL.
    pub(super) async fn url(&self, obj: ObjectRef<'_>) -> Result<Option<String>, StorageError> {
        match self {
            Backend::Op(b) => b.url(obj).await,
            Backend::CfImages(_, Some(f)) if !is_image(obj.key) => f.url(obj).await,
            Backend::CfImages(cf, _) => cf.url(obj).await.map(Some),
        }
    }

    /// Bases under which URLs name this backend's objects (by their backend path), besides
    /// the `/files` route.
    pub(super) fn url_bases(&self) -> &[String] {
        match self {
            Backend::Op(b) => b.url_bases(),
            Backend::CfImages(..) => &[],
        }
    }

    /// Proves the backend usable with the probe object `obj`.
    pub(super) async fn check(&self, obj: ObjectRef<'_>) -> Result<(), StorageError> {
        match self {
            Backend::Op(b) => b.check(obj).await,
            Backend::CfImages(cf, _) => cf.check(obj).await,
        }
    }
}
