//! The one `Storage` facade over opendal (DESIGN.md §7).
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

pub mod cf_images;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use opendal::{ErrorKind, Operator};
use serde::Serialize;
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

/// Which backend holds the objects, with the settings of the remote ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageKind {
    /// Files under a local folder (`root`).
    Fs,
    /// In-process memory: lost on restart; for tests and throwaway runs.
    Memory,
    /// Any S3-compatible service (AWS, MinIO, R2 with an explicit endpoint, ...).
    S3(S3Settings),
    /// Cloudflare R2: S3 with the account endpoint and region `auto`.
    R2(S3Settings),
    /// Google Cloud Storage (JSON API; resumable uploads).
    Gcs(GcsSettings),
    /// Cloudflare Images (upload API; images only).
    CfImages(CfImagesSettings),
}

impl StorageKind {
    /// The name used in `storage.type`: `fs`, `memory`, `s3`, `r2`, `gcs`, `cf_images`.
    pub fn name(&self) -> &'static str {
        match self {
            StorageKind::Fs => "fs",
            StorageKind::Memory => "memory",
            StorageKind::S3(_) => "s3",
            StorageKind::R2(_) => "r2",
            StorageKind::Gcs(_) => "gcs",
            StorageKind::CfImages(_) => "cf_images",
        }
    }
}

/// A secret string: shown as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Default lifetime of presigned GET URLs.
pub const DEFAULT_PRESIGN_SECS: u64 = 3600;

/// Settings of the `s3` and `r2` backends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL with scheme (`http://127.0.0.1:9000`). `s3`: AWS when absent; `r2`:
    /// `https://{account_id}.r2.cloudflarestorage.com` when absent.
    pub endpoint: Option<String>,
    /// Region. `s3`: `us-east-1` when absent; `r2`: always `auto` unless given.
    pub region: Option<String>,
    /// Access key id; without one (and without a secret) credentials come from the usual AWS
    /// sources (environment, profile, instance metadata).
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Cloudflare account id (`r2`; builds the default endpoint).
    pub account_id: Option<String>,
    /// Public base URL of the bucket (`https://cdn.example.com`): URLs are this + `/` + the
    /// object's path in the bucket. Without it, URLs are presigned GETs.
    pub public_base_url: Option<String>,
    /// Lifetime of presigned GET URLs, in seconds.
    pub presign_secs: u64,
}

/// Settings of the `gcs` backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcsSettings {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL (a local fake server); `https://storage.googleapis.com` when absent.
    pub endpoint: Option<String>,
    /// Service-account JSON file. Without it, credentials come from the usual Google sources
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, VM metadata), except with an explicit `endpoint`,
    /// where requests are sent unsigned (local emulators ignore auth).
    pub credential_path: Option<PathBuf>,
    /// Public base URL of the bucket (`https://storage.googleapis.com/my-bucket`); without it,
    /// URLs are presigned GETs (which need a service account, or an emulator).
    pub public_base_url: Option<String>,
    /// Lifetime of presigned GET URLs, in seconds.
    pub presign_secs: u64,
}

/// Settings of the `cf_images` backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CfImagesSettings {
    /// Cloudflare account id.
    pub account_id: String,
    /// API token with the Images Write permission.
    pub api_token: Secret,
    /// API base URL; `https://api.cloudflare.com/client/v4` when absent.
    pub api_base: Option<String>,
    /// Delivery domain (`imagedelivery.net`, or a zone of the account); the domain of the
    /// variant URLs Cloudflare answers with when absent.
    pub delivery_domain: Option<String>,
}

/// Settings of the storage facade.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Which backend holds the objects.
    pub kind: StorageKind,
    /// Root folder of the `fs` backend (created when missing); ignored by the others.
    pub root: PathBuf,
    /// Prepended to every logical key inside the backend (e.g. `aihost/`); may be empty.
    pub prefix: String,
    /// Base of the service's own `GET /files/{key}` route: `public_url(key)` is this + `/` +
    /// the percent-encoded key, e.g. `http://127.0.0.1:8000/files`. It is the public URL of
    /// `fs` and `memory` objects; URLs under it name stored objects of every backend.
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
            StorageError::NotFound { .. } => "storage_not_found",
            StorageError::InvalidKey { .. } => "storage_invalid_key",
            StorageError::TooLarge { .. } => "storage_too_large",
            StorageError::RangeNotSatisfiable { .. } => "storage_range_not_satisfiable",
            StorageError::Unavailable { .. } | StorageError::Remote { .. } => "storage_unavailable",
            StorageError::Denied { .. } => "storage_denied",
            StorageError::Rejected { .. } => "storage_rejected",
            StorageError::Unsupported { .. } => "storage_unsupported",
            StorageError::Config { .. } => "storage_misconfigured",
            StorageError::Io { .. } => "storage_io",
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

    fn backend(op: &'static str, key: &str, err: opendal::Error) -> StorageError {
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
    backend: Backend,
    settings: StorageSettings,
    /// Normalised prefix: empty, or ending with exactly one `/`.
    prefix: String,
}

enum Backend {
    /// A backend reached through opendal.
    Op(OpBackend),
    /// Cloudflare Images.
    CfImages(cf_images::CfImages),
}

struct OpBackend {
    op: Operator,
    /// Base URL under which backend paths are public (s3, r2, gcs with a configured base).
    public_base: Option<String>,
    /// Lifetime of presigned GET URLs (s3, r2, gcs without a public base).
    presign: Option<Duration>,
    /// Bases under which URLs name objects of the bucket (`{endpoint}/{bucket}`): such URLs
    /// are read from storage, not fetched.
    object_bases: Vec<String>,
    /// GCS: write with `if_not_exists`, which makes opendal use the JSON API's resumable
    /// uploads (after deleting any previous object under the key).
    resumable: bool,
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

/// The body of a Cloudflare Images upload.
enum CfBody<'a> {
    /// A local file of this length, streamed.
    File(&'a Path, u64),
    /// Bytes in memory.
    Bytes(Bytes),
}

impl CfBody<'_> {
    async fn part(&self, key: &str) -> Result<reqwest::multipart::Part, StorageError> {
        match self {
            CfBody::File(path, len) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| StorageError::local("put", key, path, e))?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
                Ok(reqwest::multipart::Part::stream_with_length(body, *len))
            }
            CfBody::Bytes(bytes) => Ok(reqwest::multipart::Part::stream(bytes.clone())),
        }
    }
}

/// A stream of object bytes.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

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

fn config_error(detail: impl Into<String>) -> StorageError {
    StorageError::Config {
        detail: detail.into(),
    }
}

fn presign_duration(secs: u64) -> Duration {
    Duration::from_secs(if secs == 0 {
        DEFAULT_PRESIGN_SECS
    } else {
        secs
    })
}

/// Time limits of remote operations, so a stalled server fails the operation (the dispatcher
/// then retries) instead of hanging it: a whole operation, and each read or write of it.
fn remote_timeouts() -> opendal::layers::TimeoutLayer {
    opendal::layers::TimeoutLayer::new()
        .with_timeout(REMOTE_TIMEOUT)
        .with_io_timeout(REMOTE_TIMEOUT)
}

/// See [`remote_timeouts`].
const REMOTE_TIMEOUT: Duration = Duration::from_secs(120);

fn s3_operator(s: &S3Settings, r2: bool) -> Result<OpBackend, StorageError> {
    let name = if r2 { "r2" } else { "s3" };
    if s.bucket.trim().is_empty() {
        return Err(config_error(format!(
            "storage.bucket is required for {name}"
        )));
    }
    let endpoint = match (&s.endpoint, r2, &s.account_id) {
        (Some(e), _, _) => Some(e.trim_end_matches('/').to_owned()),
        (None, true, Some(account)) => Some(format!(
            "https://{}.r2.cloudflarestorage.com",
            account.trim()
        )),
        (None, true, None) => {
            return Err(config_error(
                "storage.account_id (or storage.endpoint) is required for r2",
            ));
        }
        (None, false, _) => None,
    };
    let region = s
        .region
        .clone()
        .unwrap_or_else(|| if r2 { "auto" } else { "us-east-1" }.to_owned());
    let mut b = opendal::services::S3::default()
        .bucket(&s.bucket)
        .region(&region);
    if let Some(e) = &endpoint {
        b = b.endpoint(e);
    }
    match (&s.access_key_id, &s.secret_access_key) {
        (Some(id), Some(secret)) => {
            b = b
                .access_key_id(id)
                .secret_access_key(&secret.0)
                .disable_config_load()
                .disable_ec2_metadata();
        }
        (None, None) => {}
        _ => {
            return Err(config_error(format!(
                "{name}: set both storage.access_key_id and storage.secret_access_key, or neither"
            )));
        }
    }
    let op = Operator::new(b)
        .map_err(|e| StorageError::backend("open", "", e))?
        .layer(remote_timeouts());
    let mut object_bases = Vec::new();
    if let Some(e) = &endpoint {
        object_bases.push(format!("{e}/{}", s.bucket));
    }
    Ok(OpBackend {
        op,
        public_base: s.public_base_url.clone(),
        presign: s
            .public_base_url
            .is_none()
            .then(|| presign_duration(s.presign_secs)),
        object_bases,
        resumable: false,
    })
}

fn gcs_operator(s: &GcsSettings) -> Result<OpBackend, StorageError> {
    if s.bucket.trim().is_empty() {
        return Err(config_error("storage.bucket is required for gcs"));
    }
    let endpoint = s.endpoint.as_deref().map(|e| e.trim_end_matches('/'));
    let mut b = opendal::services::Gcs::default().bucket(&s.bucket);
    if let Some(e) = endpoint {
        b = b.endpoint(e);
    }
    if let Some(path) = &s.credential_path {
        b = b
            .credential_path(&path.to_string_lossy())
            .disable_config_load()
            .disable_vm_metadata();
    } else if endpoint.is_some() {
        // A local emulator: it ignores auth.
        b = b
            .skip_signature()
            .disable_config_load()
            .disable_vm_metadata();
    }
    let op = Operator::new(b)
        .map_err(|e| StorageError::backend("open", "", e))?
        .layer(remote_timeouts());
    let base = endpoint.unwrap_or("https://storage.googleapis.com");
    Ok(OpBackend {
        op,
        public_base: s.public_base_url.clone(),
        presign: s
            .public_base_url
            .is_none()
            .then(|| presign_duration(s.presign_secs)),
        object_bases: vec![format!("{base}/{}", s.bucket)],
        resumable: true,
    })
}

/// The part of `url` below `base` (same scheme, host and port; query and fragment ignored),
/// percent-decoded segment by segment. `base` may also be a bare path such as `/files`.
fn path_under(base: &str, url: &str) -> Option<String> {
    let base = base.trim_end_matches('/');
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
    let mut path = String::with_capacity(rest.len());
    for (i, segment) in rest.split('/').enumerate() {
        if i > 0 {
            path.push('/');
        }
        path.push_str(&percent_decode(segment)?);
    }
    Some(path)
}

/// `base` + `/` + `path`, each path segment percent-encoded.
fn url_under(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let mut url = String::with_capacity(base.len() + path.len() + 8);
    url.push_str(base);
    for segment in path.split('/') {
        url.push('/');
        percent_encode_into(segment, &mut url);
    }
    url
}

/// Keeps the bytes `[start, end)` of a stream of chunks.
fn slice_stream(
    stream: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    start: u64,
    end: u64,
) -> ByteStream {
    let mut pos = 0u64;
    Box::pin(
        stream
            .take_while(move |_| std::future::ready(pos < end))
            .filter_map(move |chunk| {
                let out = match chunk {
                    Err(e) => Some(Err(e)),
                    Ok(chunk) => {
                        let (from, to) = (pos, pos + chunk.len() as u64);
                        pos = to;
                        let (a, b) = (start.max(from), end.min(to));
                        (a < b).then(|| Ok(chunk.slice((a - from) as usize..(b - from) as usize)))
                    }
                };
                std::future::ready(out)
            }),
    )
}

impl Storage {
    /// Builds the backend. For `fs`, creates the root folder when it is missing. No request is
    /// made to remote backends (use [`Storage::check`]).
    pub fn new(settings: StorageSettings) -> Result<Storage, StorageError> {
        // Installs opendal's reqwest HTTP transport (once per process); the s3 and gcs
        // services need it.
        opendal::install_default();
        let plain = |op| {
            Backend::Op(OpBackend {
                op,
                public_base: None,
                presign: None,
                object_bases: Vec::new(),
                resumable: false,
            })
        };
        let backend = match &settings.kind {
            StorageKind::Fs => {
                let root = std::path::absolute(&settings.root)
                    .map_err(|e| StorageError::local("open", "", &settings.root, e))?;
                std::fs::create_dir_all(&root)
                    .map_err(|e| StorageError::local("open", "", &root, e))?;
                let tmp = root.join(FS_TMP_DIR);
                let builder = opendal::services::Fs::default()
                    .root(&root.to_string_lossy())
                    .atomic_write_dir(&tmp.to_string_lossy());
                plain(Operator::new(builder).map_err(|e| StorageError::backend("open", "", e))?)
            }
            StorageKind::Memory => plain(
                Operator::new(opendal::services::Memory::default())
                    .map_err(|e| StorageError::backend("open", "", e))?,
            ),
            StorageKind::S3(s) => Backend::Op(s3_operator(s, false)?),
            StorageKind::R2(s) => Backend::Op(s3_operator(s, true)?),
            StorageKind::Gcs(s) => Backend::Op(gcs_operator(s)?),
            StorageKind::CfImages(s) => {
                if s.account_id.trim().is_empty() || s.api_token.0.trim().is_empty() {
                    return Err(config_error(
                        "storage.account_id and storage.api_token are required for cf_images",
                    ));
                }
                Backend::CfImages(cf_images::CfImages::new(s)?)
            }
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

    async fn stored(
        &self,
        key: &str,
        size: u64,
        content_type: String,
    ) -> Result<StoredObject, StorageError> {
        Ok(StoredObject {
            key: key.to_owned(),
            url: self.url(key).await?,
            size,
            content_type,
        })
    }

    async fn op_writer(
        &self,
        b: &OpBackend,
        key: &str,
        full: &str,
        content_type: &str,
    ) -> Result<opendal::Writer, StorageError> {
        if b.resumable {
            // `if_not_exists` needs the key free; the write replaces what was there.
            b.op.delete(full)
                .await
                .map_err(|e| StorageError::backend("put", key, e))?;
        }
        b.op.writer_with(full)
            .content_type(content_type)
            .chunk(WRITE_CHUNK)
            .if_not_exists(b.resumable)
            .await
            .map_err(|e| StorageError::backend("put", key, e))
    }

    /// Uploads to Cloudflare Images, replacing an image of the same ID (Cloudflare refuses a
    /// taken ID with HTTP 409).
    async fn cf_upload(
        &self,
        cf: &cf_images::CfImages,
        key: &str,
        content_type: &str,
        body: CfBody<'_>,
    ) -> Result<String, StorageError> {
        let id = self.path(key)?;
        let name = key.rsplit('/').next().unwrap_or(key);
        let details = match cf
            .upload("put", key, &id, name, content_type, body.part(key).await?)
            .await
        {
            Err(StorageError::Rejected { status: 409, .. }) => {
                cf.delete(key, &id).await?;
                cf.upload("put", key, &id, name, content_type, body.part(key).await?)
                    .await?
            }
            other => other?,
        };
        cf.delivery_url(key, &details)
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
        let b = match &self.inner.backend {
            Backend::Op(b) => b,
            Backend::CfImages(cf) => {
                let len = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| StorageError::local("put", key, path, e))?
                    .len();
                if len > cf_images::MAX_IMAGE_BYTES {
                    return Err(StorageError::TooLarge {
                        key: key.to_owned(),
                        limit: cf_images::MAX_IMAGE_BYTES,
                    });
                }
                let url = self
                    .cf_upload(cf, key, &content_type, CfBody::File(path, len))
                    .await?;
                return Ok(StoredObject {
                    key: key.to_owned(),
                    url,
                    size: len,
                    content_type,
                });
            }
        };
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::local("put", key, path, e))?;
        let mut writer = self.op_writer(b, key, &full, &content_type).await?;
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
        self.stored(key, size, content_type).await
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
        let content_type = Self::content_type_for(key, content_type);
        let mut stream = pin!(stream);
        let read_err = |e: io::Error| StorageError::Io {
            op: "put",
            key: key.to_owned(),
            detail: format!("reading the upload failed: {e}"),
        };
        let b = match &self.inner.backend {
            Backend::Op(b) => b,
            Backend::CfImages(cf) => {
                let limit = max_bytes.min(cf_images::MAX_IMAGE_BYTES);
                let mut buf = BytesMut::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(read_err)?;
                    if (buf.len() + chunk.len()) as u64 > limit {
                        return Err(StorageError::TooLarge {
                            key: key.to_owned(),
                            limit,
                        });
                    }
                    buf.extend_from_slice(&chunk);
                }
                let bytes = buf.freeze();
                let size = bytes.len() as u64;
                let url = self
                    .cf_upload(cf, key, &content_type, CfBody::Bytes(bytes))
                    .await?;
                return Ok(StoredObject {
                    key: key.to_owned(),
                    url,
                    size,
                    content_type,
                });
            }
        };
        let mut writer = self.op_writer(b, key, &full, &content_type).await?;
        let mut size = 0u64;
        let result: Result<(), StorageError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(read_err)?;
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
            let _ = b.op.delete(&full).await;
            return Err(e);
        }
        writer
            .close()
            .await
            .map_err(|e| StorageError::backend("put", key, e))?;
        self.stored(key, size, content_type).await
    }

    /// Size, content type and modification time of the object under `key`;
    /// [`StorageError::NotFound`] when there is none.
    pub async fn stat(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let full = self.path(key)?;
        let b = match &self.inner.backend {
            Backend::Op(b) => b,
            Backend::CfImages(cf) => {
                let response = cf.blob(key, &full).await?;
                return Self::cf_meta(key, &response);
            }
        };
        let meta =
            b.op.stat(&full)
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

    fn cf_meta(key: &str, response: &reqwest::Response) -> Result<ObjectMeta, StorageError> {
        let size = response
            .content_length()
            .ok_or_else(|| StorageError::Remote {
                op: "stat",
                key: key.to_owned(),
                detail: "Cloudflare Images answered the image without a Content-Length".into(),
            })?;
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(ObjectMeta {
            size,
            content_type: Self::content_type_for(
                key,
                &header(reqwest::header::CONTENT_TYPE).unwrap_or_default(),
            ),
            last_modified: header(reqwest::header::LAST_MODIFIED)
                .and_then(|v| chrono::DateTime::parse_from_rfc2822(&v).ok())
                .map(SystemTime::from),
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
    ) -> Result<(ObjectMeta, ByteStream), StorageError> {
        let full = self.path(key)?;
        let bounds = |meta: &ObjectMeta| match range {
            None => Ok((0, meta.size)),
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
                Ok((start, end))
            }
        };
        let b = match &self.inner.backend {
            Backend::Op(b) => b,
            Backend::CfImages(cf) => {
                let response = cf.blob(key, &full).await?;
                let meta = Self::cf_meta(key, &response)?;
                let (start, end) = bounds(&meta)?;
                let stream = response.bytes_stream().map(|r| r.map_err(io::Error::other));
                return Ok((meta, slice_stream(stream, start, end)));
            }
        };
        let meta = self.stat(key).await?;
        let (start, end) = bounds(&meta)?;
        let reader =
            b.op.reader_with(&full)
                .chunk(WRITE_CHUNK)
                .await
                .map_err(|e| StorageError::backend("read", key, e))?;
        let stream = reader
            .into_bytes_stream(start..end)
            .await
            .map_err(|e| StorageError::backend("read", key, e))?;
        Ok((meta, Box::pin(stream)))
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
        let Backend::Op(b) = &self.inner.backend else {
            return Err(StorageError::Unsupported {
                op: "copy",
                backend: self.inner.settings.kind.name(),
            });
        };
        let meta = self.stat(from).await?;
        if b.op.info().capability().copy {
            if b.resumable {
                let _ = b.op.delete(&dst).await;
            }
            b.op.copy(&src, &dst)
                .await
                .map_err(|e| StorageError::backend("copy", from, e))?;
            return self.stored(to, meta.size, meta.content_type).await;
        }
        let (meta, stream) = self.read_range(from, None).await?;
        self.put_stream(to, stream, &meta.content_type, u64::MAX)
            .await
    }

    /// Deletes the object under `key`. Deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.path(key)?;
        match &self.inner.backend {
            Backend::Op(b) => {
                b.op.delete(&full)
                    .await
                    .map_err(|e| StorageError::backend("delete", key, e))
            }
            Backend::CfImages(cf) => cf.delete(key, &full).await,
        }
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
        match &self.inner.backend {
            Backend::Op(b) => {
                if let Some(base) = &b.public_base {
                    Ok(url_under(base, &full))
                } else if let Some(lifetime) = b.presign {
                    let req =
                        b.op.presign_read(&full, lifetime)
                            .await
                            .map_err(|e| StorageError::backend("presign", key, e))?;
                    Ok(req.uri().to_string())
                } else {
                    Ok(self.public_url(key))
                }
            }
            Backend::CfImages(cf) => {
                let details = cf.details(key, &full).await?;
                cf.delivery_url(key, &details)
            }
        }
    }

    /// The logical key of a URL that names one of this storage's objects, or `None`: a URL
    /// under `public_base_url` (the `/files` route), or for `s3`, `r2` and `gcs` under the
    /// configured public base or the bucket's own URL (presigned URLs included) with the
    /// prefix. Query and fragment are ignored; the key must be valid.
    pub fn key_from_url(&self, url: &str) -> Option<String> {
        let own = |base: &str| path_under(base, url);
        let key = own(&self.inner.settings.public_base_url).or_else(|| {
            let Backend::Op(b) = &self.inner.backend else {
                return None;
            };
            let path = b
                .public_base
                .iter()
                .chain(b.object_bases.iter())
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
        let b = match &self.inner.backend {
            Backend::Op(b) => b,
            Backend::CfImages(cf) => {
                return match cf.details(&key, &full).await {
                    Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                };
            }
        };
        let payload = format!("aihost storage check {key}");
        if b.resumable {
            b.op.write_with(&full, payload.clone().into_bytes())
                .if_not_exists(true)
                .await
        } else {
            b.op.write(&full, payload.clone().into_bytes()).await
        }
        .map_err(|e| StorageError::backend("check write", &key, e))?;
        let read =
            b.op.read(&full)
                .await
                .map_err(|e| StorageError::backend("check read", &key, e))?;
        let matches = read.to_vec() == payload.as_bytes();
        b.op.delete(&full)
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

pub(crate) fn percent_encode_into(segment: &str, out: &mut String) {
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
pub(crate) fn percent_decode(segment: &str) -> Option<String> {
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

    fn remote(kind: StorageKind) -> Result<Storage, StorageError> {
        Storage::new(StorageSettings {
            kind,
            root: PathBuf::new(),
            prefix: "p".to_owned(),
            public_base_url: BASE.to_owned(),
        })
    }

    #[test]
    fn storage_remote_settings_and_own_urls() {
        // r2 without an endpoint uses the account endpoint; its bucket URLs (presigned ones
        // included) name stored objects, below the prefix.
        let r2 = remote(StorageKind::R2(S3Settings {
            bucket: "media".into(),
            account_id: Some("acc123".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some(Secret("s".into())),
            ..S3Settings::default()
        }))
        .unwrap();
        assert_eq!(
            r2.key_from_url(
                "https://acc123.r2.cloudflarestorage.com/media/p/outputs/t/a%20b.png?X-Amz-Signature=x"
            )
            .as_deref(),
            Some("outputs/t/a b.png")
        );
        // Outside the prefix, or another bucket: not ours.
        for other in [
            "https://acc123.r2.cloudflarestorage.com/media/outputs/t/a.png",
            "https://acc123.r2.cloudflarestorage.com/other/p/outputs/t/a.png",
        ] {
            assert_eq!(r2.key_from_url(other), None, "{other}");
        }
        assert_eq!(
            r2.key_from_url(&format!("{BASE}/outputs/t/a.png"))
                .as_deref(),
            Some("outputs/t/a.png")
        );
        assert!(!format!("{:?}", r2.settings()).contains("\"s\""));

        // gcs defaults to storage.googleapis.com; a public base is recognised too.
        let gcs = remote(StorageKind::Gcs(GcsSettings {
            bucket: "b".into(),
            public_base_url: Some("https://cdn.example.com/media".into()),
            ..GcsSettings::default()
        }))
        .unwrap();
        for url in [
            "https://storage.googleapis.com/b/p/outputs/t/x.png",
            "https://cdn.example.com/media/p/outputs/t/x.png",
        ] {
            assert_eq!(
                gcs.key_from_url(url).as_deref(),
                Some("outputs/t/x.png"),
                "{url}"
            );
        }

        // Incomplete settings are refused before any request.
        let half = S3Settings {
            bucket: "b".into(),
            access_key_id: Some("k".into()),
            ..S3Settings::default()
        };
        for kind in [
            StorageKind::S3(half),
            StorageKind::S3(S3Settings::default()),
            StorageKind::R2(S3Settings {
                bucket: "b".into(),
                ..S3Settings::default()
            }),
            StorageKind::Gcs(GcsSettings::default()),
            StorageKind::CfImages(CfImagesSettings::default()),
        ] {
            let name = kind.name();
            assert_eq!(
                remote(kind).unwrap_err().code(),
                "storage_misconfigured",
                "{name}"
            );
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
            let Backend::Op(b) = &storage.inner.backend else {
                unreachable!("fs and memory use opendal")
            };
            let op = &b.op;
            assert!(op.exists("tenant-a/outputs/t1/p.txt").await.unwrap());
            assert!(!op.exists("outputs/t1/p.txt").await.unwrap());
            if storage.settings().kind == StorageKind::Fs {
                let on_disk = dir.path().join("objects/tenant-a/outputs/t1/p.txt");
                assert_eq!(std::fs::read(on_disk).unwrap(), b"prefixed");
            }
        }
    }
}
