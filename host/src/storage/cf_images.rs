//! Cloudflare Images: its settings, a small client for its upload API (opendal has no such
//! service), and the storage operations built on that client.
//!
//! Objects are images stored under a custom ID (the backend path: prefix + logical key) with
//! `POST {api}/accounts/{account_id}/images/v1` (multipart field `file`, plus `id`). Public URLs
//! are the delivery (variant) URLs Cloudflare answers with. Every answer is the Cloudflare v4
//! envelope `{"success", "errors": [{"code", "message"}], "messages", "result"}`; `success` is
//! checked, not only the HTTP status, and error bodies are mapped to [`StorageError`]s with
//! stable codes.
//!
//! Separate because it is the one backend not reached through opendal: it implements each
//! storage operation itself (the opendal-backed ones share `operator.rs`).

use std::io;
use std::path::Path;
use std::pin::pin;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use super::error::config_error;
use super::key::content_type_for;
use super::object::{ObjectRef, Written};
use super::settings::nonempty;
use super::stream::{ByteStream, range_bounds, slice_stream};
use super::{ObjectMeta, Secret, StorageError};
use crate::config::StorageConfig;
use crate::percent::encode_segment_into as percent_encode_into;

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
    /// Store objects that are not images (by their key's extension: videos, text...) in an
    /// `fs` backend under the facade's `root` (`storage.fallback = "fs"`), since Cloudflare
    /// Images holds images only; `false` refuses them with `storage_unsupported`.
    pub fallback_fs: bool,
}

impl CfImagesSettings {
    /// The `cf_images` keys of the `[storage]` section (`storage.endpoint` is the API base;
    /// blank strings count as absent).
    pub fn from_config(c: &StorageConfig) -> CfImagesSettings {
        CfImagesSettings {
            account_id: nonempty(&c.account_id).unwrap_or_default(),
            api_token: Secret(nonempty(&c.api_token).unwrap_or_default()),
            api_base: nonempty(&c.endpoint),
            delivery_domain: nonempty(&c.delivery_domain),
            fallback_fs: c.fallback.trim().eq_ignore_ascii_case("fs"),
        }
    }
}

/// Builds the `cf_images` backend. Refuses incomplete settings before any request.
pub(super) fn backend(s: &CfImagesSettings) -> Result<CfImages, StorageError> {
    if s.account_id.trim().is_empty() || s.api_token.0.trim().is_empty() {
        return Err(config_error(
            "storage.account_id and storage.api_token are required for cf_images",
        ));
    }
    CfImages::new(s)
}

/// Cloudflare's API base when `storage.endpoint` is not set.
pub const DEFAULT_API_BASE: &str = "https://api.cloudflare.com/client/v4";

/// Largest image Cloudflare Images stores (10 MB).
pub const MAX_IMAGE_BYTES: u64 = 10 * 1000 * 1000;

/// The variant used for public URLs.
const VARIANT: &str = "public";

/// Cloudflare error codes meaning the token is missing, wrong or lacks permission.
const AUTH_CODES: [i64; 3] = [10000, 10001, 9109];

/// One entry of the envelope's `errors`.
#[derive(Debug, Deserialize)]
struct CfMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// The Cloudflare v4 response envelope.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    success: bool,
    #[serde(default)]
    errors: Vec<CfMessage>,
    result: Option<T>,
}

/// `result` of an upload or of an image's details.
#[derive(Debug, Deserialize)]
pub struct ImageDetails {
    /// The image ID.
    pub id: String,
    /// Delivery URLs, one per variant (`https://imagedelivery.net/<hash>/<id>/<variant>`).
    #[serde(default)]
    pub variants: Vec<String>,
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct CfImages {
    http: reqwest::Client,
    /// `{api_base}/accounts/{account_id}/images/v1`.
    images_url: String,
    token: String,
    delivery_domain: Option<String>,
}

impl CfImages {
    /// Builds the client (no request is made).
    pub fn new(settings: &CfImagesSettings) -> Result<CfImages, StorageError> {
        let base = settings
            .api_base
            .as_deref()
            .unwrap_or(DEFAULT_API_BASE)
            .trim_end_matches('/');
        let mut account = String::new();
        percent_encode_into(&settings.account_id, &mut account);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StorageError::Remote {
                op: "open",
                key: String::new(),
                detail: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(CfImages {
            http,
            images_url: format!("{base}/accounts/{account}/images/v1"),
            token: settings.api_token.0.clone(),
            delivery_domain: settings.delivery_domain.clone(),
        })
    }

    fn image_url(&self, id: &str) -> String {
        let mut url = self.images_url.clone();
        for segment in id.split('/') {
            url.push('/');
            percent_encode_into(segment, &mut url);
        }
        url
    }

    /// Uploads `body` as image `id` (replacing an existing image of that ID) and returns its
    /// details.
    pub async fn upload(
        &self,
        op: &'static str,
        key: &str,
        id: &str,
        file_name: &str,
        content_type: &str,
        body: reqwest::multipart::Part,
    ) -> Result<ImageDetails, StorageError> {
        let part = body
            .file_name(file_name.to_owned())
            .mime_str(content_type)
            .map_err(|e| StorageError::Io {
                op,
                key: key.to_owned(),
                detail: format!("content type '{content_type}': {e}"),
            })?;
        let form = reqwest::multipart::Form::new()
            .text("id", id.to_owned())
            .text("requireSignedURLs", "false")
            .part("file", part);
        let response = self
            .http
            .post(&self.images_url)
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await;
        self.envelope(op, key, response).await
    }

    /// The details of image `id`.
    pub async fn details(&self, key: &str, id: &str) -> Result<ImageDetails, StorageError> {
        let response = self
            .http
            .get(self.image_url(id))
            .bearer_auth(&self.token)
            .send()
            .await;
        self.envelope("stat", key, response).await
    }

    /// Deletes image `id`; a missing image is not an error.
    pub async fn delete(&self, key: &str, id: &str) -> Result<(), StorageError> {
        let response = self
            .http
            .delete(self.image_url(id))
            .bearer_auth(&self.token)
            .send()
            .await;
        match self
            .envelope::<serde_json::Value>("delete", key, response)
            .await
        {
            Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The original bytes of image `id` (`GET …/images/v1/{id}/blob`), as a response whose
    /// body is still to be read.
    pub async fn blob(&self, key: &str, id: &str) -> Result<reqwest::Response, StorageError> {
        let response = self
            .http
            .get(format!("{}/blob", self.image_url(id)))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| unreachable_error("read", key, &e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        Err(map_error("read", key, status, &body))
    }

    /// The public delivery URL of an image: its `public` variant (else the first one), moved to
    /// `delivery_domain` when one is configured (`imagedelivery.net` keeps the standard form; any
    /// other domain gets the `/cdn-cgi/imagedelivery/…` form of a zone in the same account).
    pub fn delivery_url(&self, key: &str, details: &ImageDetails) -> Result<String, StorageError> {
        let variant = details
            .variants
            .iter()
            .find(|v| v.trim_end_matches('/').rsplit('/').next() == Some(VARIANT))
            .or_else(|| details.variants.first())
            .ok_or_else(|| StorageError::Remote {
                op: "url",
                key: key.to_owned(),
                detail: "Cloudflare Images answered with no variant URL".to_owned(),
            })?;
        let Some(domain) = self.delivery_domain.as_deref().map(str::trim) else {
            return Ok(variant.clone());
        };
        let parsed = url::Url::parse(variant).map_err(|e| StorageError::Remote {
            op: "url",
            key: key.to_owned(),
            detail: format!("Cloudflare Images answered with a bad variant URL '{variant}': {e}"),
        })?;
        let base = if domain.contains("://") {
            domain.trim_end_matches('/').to_owned()
        } else {
            format!("https://{}", domain.trim_end_matches('/'))
        };
        let standard = url::Url::parse(&base)
            .ok()
            .and_then(|u| u.host_str().map(|h| h == "imagedelivery.net"))
            .unwrap_or(false);
        // The variant path is `/<hash>/<id>/<variant>`, or already the cdn-cgi form.
        let path = parsed.path();
        let path = path.strip_prefix("/cdn-cgi/imagedelivery").unwrap_or(path);
        Ok(if standard {
            format!("{base}{path}")
        } else {
            format!("{base}/cdn-cgi/imagedelivery{path}")
        })
    }

    async fn envelope<T: for<'de> Deserialize<'de>>(
        &self,
        op: &'static str,
        key: &str,
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, StorageError> {
        let response = response.map_err(|e| unreachable_error(op, key, &e))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable_error(op, key, &e))?;
        if !(200..300).contains(&status) {
            return Err(map_error(op, key, status, &body));
        }
        match serde_json::from_slice::<Envelope<T>>(&body) {
            Ok(Envelope {
                success: true,
                result: Some(result),
                ..
            }) => Ok(result),
            Ok(_) => Err(map_error(op, key, status, &body)),
            Err(e) => Err(StorageError::Remote {
                op,
                key: key.to_owned(),
                detail: format!(
                    "Cloudflare Images answered HTTP {status} with a body that is not its JSON envelope ({e}): {}",
                    excerpt(&body)
                ),
            }),
        }
    }
}

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

/// The storage operations (see [`Storage`](super::Storage)), on the backend path as image ID.
impl CfImages {
    /// Uploads `body` as image `obj.path`, replacing an image of the same ID (Cloudflare
    /// refuses a taken ID with HTTP 409); returns the delivery URL.
    async fn put(
        &self,
        obj: ObjectRef<'_>,
        content_type: &str,
        body: CfBody<'_>,
    ) -> Result<String, StorageError> {
        let (key, id) = (obj.key, obj.path);
        let name = key.rsplit('/').next().unwrap_or(key);
        let details = match self
            .upload("put", key, id, name, content_type, body.part(key).await?)
            .await
        {
            Err(StorageError::Rejected { status: 409, .. }) => {
                self.delete(key, id).await?;
                self.upload("put", key, id, name, content_type, body.part(key).await?)
                    .await?
            }
            other => other?,
        };
        self.delivery_url(key, &details)
    }

    /// Uploads the local file `path`, streamed; larger than [`MAX_IMAGE_BYTES`] is refused.
    pub(super) async fn put_file(
        &self,
        obj: ObjectRef<'_>,
        path: &Path,
        content_type: &str,
    ) -> Result<Written, StorageError> {
        let key = obj.key;
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| StorageError::local("put", key, path, e))?
            .len();
        if len > MAX_IMAGE_BYTES {
            return Err(StorageError::TooLarge {
                key: key.to_owned(),
                limit: MAX_IMAGE_BYTES,
            });
        }
        let url = self.put(obj, content_type, CfBody::File(path, len)).await?;
        Ok(Written {
            size: len,
            url: Some(url),
        })
    }

    /// Uploads the bytes of `stream`, held in memory first (at most `max_bytes` and
    /// [`MAX_IMAGE_BYTES`]).
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
        let limit = max_bytes.min(MAX_IMAGE_BYTES);
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StorageError::upload_read(key, e))?;
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
        let url = self.put(obj, content_type, CfBody::Bytes(bytes)).await?;
        Ok(Written {
            size,
            url: Some(url),
        })
    }

    /// The metadata of the original image, from the headers of its blob.
    pub(super) async fn stat(&self, obj: ObjectRef<'_>) -> Result<ObjectMeta, StorageError> {
        let response = self.blob(obj.key, obj.path).await?;
        meta(obj.key, &response)
    }

    /// The original image's metadata and the bytes `range` asks for.
    pub(super) async fn read(
        &self,
        obj: ObjectRef<'_>,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<(ObjectMeta, ByteStream), StorageError> {
        let response = self.blob(obj.key, obj.path).await?;
        let meta = meta(obj.key, &response)?;
        let (start, end) = range_bounds(obj.key, range, meta.size)?;
        let stream = response.bytes_stream().map(|r| r.map_err(io::Error::other));
        Ok((meta, slice_stream(stream, start, end)))
    }

    /// The delivery URL of the stored image.
    pub(super) async fn url(&self, obj: ObjectRef<'_>) -> Result<String, StorageError> {
        let details = self.details(obj.key, obj.path).await?;
        self.delivery_url(obj.key, &details)
    }

    /// Asks for the (missing) probe image `obj`, which proves the token, without uploading.
    pub(super) async fn check(&self, obj: ObjectRef<'_>) -> Result<(), StorageError> {
        match self.details(obj.key, obj.path).await {
            Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// [`ObjectMeta`] from the headers of a blob answer.
fn meta(key: &str, response: &reqwest::Response) -> Result<ObjectMeta, StorageError> {
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
        content_type: content_type_for(
            key,
            &header(reqwest::header::CONTENT_TYPE).unwrap_or_default(),
        ),
        last_modified: header(reqwest::header::LAST_MODIFIED)
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(&v).ok())
            .map(SystemTime::from),
    })
}

fn unreachable_error(op: &'static str, key: &str, e: &reqwest::Error) -> StorageError {
    StorageError::Remote {
        op,
        key: key.to_owned(),
        detail: format!("Cloudflare Images cannot be reached: {e}"),
    }
}

fn excerpt(body: &Bytes) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// Maps a failed answer (an HTTP error, or `success: false`) to an error with a stable code:
/// authentication failures are `storage_denied`, a missing image `storage_not_found`, other
/// refusals `storage_rejected` (with Cloudflare's code and message), rate limits and server
/// errors `storage_unavailable`.
pub fn map_error(op: &'static str, key: &str, status: u16, body: &Bytes) -> StorageError {
    let key = key.to_owned();
    let errors = serde_json::from_slice::<Envelope<serde_json::Value>>(body)
        .map(|e| e.errors)
        .unwrap_or_default();
    let cf_code = errors.first().map(|e| e.code).unwrap_or(0);
    let message = if errors.is_empty() {
        format!("HTTP {status}: {}", excerpt(body))
    } else {
        errors
            .iter()
            .map(|e| format!("{} ({})", e.message, e.code))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if status == 401 || status == 403 || errors.iter().any(|e| AUTH_CODES.contains(&e.code)) {
        return StorageError::Denied {
            op,
            key,
            detail: format!("Cloudflare Images refused the API token: {message}"),
        };
    }
    if status == 404 {
        return StorageError::NotFound { key };
    }
    if status == 429 || status >= 500 {
        return StorageError::Remote {
            op,
            key,
            detail: format!("Cloudflare Images answered HTTP {status}: {message}"),
        };
    }
    StorageError::Rejected {
        op,
        key,
        status,
        cf_code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_codes;

    fn body(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    #[test]
    fn cf_images_errors_are_mapped() {
        let auth = r#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}"#;
        let e = map_error("put", "k", 400, &body(auth));
        assert_eq!(e.code(), error_codes::STORAGE_DENIED);
        assert!(
            e.to_string().contains("Authentication error (10000)"),
            "{e}"
        );

        let bad = r#"{"success":false,"errors":[{"code":5400,"message":"Bad request: ERROR 5400: Invalid image"}],"messages":[],"result":null}"#;
        let e = map_error("put", "k", 400, &body(bad));
        assert_eq!(e.code(), error_codes::STORAGE_REJECTED);
        assert!(e.to_string().contains("5400"), "{e}");

        let e = map_error(
            "put",
            "k",
            415,
            &body(r#"{"success":false,"errors":[{"code":5550,"message":"x"}]}"#),
        );
        assert_eq!(e.code(), error_codes::STORAGE_REJECTED);
        assert_eq!(
            map_error("stat", "k", 404, &body("{}")).code(),
            error_codes::STORAGE_NOT_FOUND
        );
        assert_eq!(
            map_error("put", "k", 502, &body("<html>")).code(),
            error_codes::STORAGE_UNAVAILABLE
        );
        assert_eq!(
            map_error("put", "k", 429, &body("")).code(),
            error_codes::STORAGE_UNAVAILABLE
        );
        // `success: false` with a 200 is a refusal too.
        let e = map_error(
            "put",
            "k",
            200,
            &body(r#"{"success":false,"errors":[{"code":5455,"message":"Unsupported"}]}"#),
        );
        assert_eq!(e.code(), error_codes::STORAGE_REJECTED);
    }

    #[test]
    fn cf_images_settings_required() {
        let storage = crate::storage::tests::remote(crate::storage::StorageKind::CfImages(
            CfImagesSettings::default(),
        ));
        assert_eq!(
            storage.unwrap_err().code(),
            error_codes::STORAGE_MISCONFIGURED
        );
    }

    #[test]
    fn cf_images_delivery_urls() {
        let mut settings = CfImagesSettings {
            account_id: "acc".into(),
            api_token: Secret("t".into()),
            api_base: None,
            delivery_domain: None,
            fallback_fs: false,
        };
        let details = ImageDetails {
            id: "a/b.png".into(),
            variants: vec![
                "https://imagedelivery.net/HASH/a/b.png/thumbnail".into(),
                "https://imagedelivery.net/HASH/a/b.png/public".into(),
            ],
        };
        let c = CfImages::new(&settings).unwrap();
        assert_eq!(
            c.delivery_url("k", &details).unwrap(),
            "https://imagedelivery.net/HASH/a/b.png/public"
        );
        settings.delivery_domain = Some("img.example.com".into());
        let c = CfImages::new(&settings).unwrap();
        assert_eq!(
            c.delivery_url("k", &details).unwrap(),
            "https://img.example.com/cdn-cgi/imagedelivery/HASH/a/b.png/public"
        );
        settings.delivery_domain = Some("imagedelivery.net".into());
        let c = CfImages::new(&settings).unwrap();
        assert_eq!(
            c.delivery_url("k", &details).unwrap(),
            "https://imagedelivery.net/HASH/a/b.png/public"
        );
        let none = ImageDetails {
            id: "x".into(),
            variants: vec![],
        };
        assert_eq!(
            c.delivery_url("k", &none).unwrap_err().code(),
            error_codes::STORAGE_UNAVAILABLE
        );
    }
}
