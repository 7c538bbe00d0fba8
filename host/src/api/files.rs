//! Media in and out: `POST /api/uploads` (multipart, streamed into storage) and
//! `GET /files/{key}` (stored objects, with HTTP Range).
//!
//! These are plain poem handlers (poem-openapi would buffer uploads into a temporary file
//! without a size limit); the OpenAPI spec documents them in [`super::spec`].

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures_util::TryStreamExt;
use poem::{
    Body, IntoResponse, Request, Response, handler,
    http::{StatusCode, header},
    web::{Data, Multipart},
};
use uuid::Uuid;

use super::{AppState, error::error_response};
use crate::{error_codes, storage::StorageError};

fn storage_error(e: &StorageError) -> Response {
    let status = super::error::storage_status(e);
    error_response(status, e.code(), &super::error::storage_message(e, status))
}

/// A client's file name under the one file-name rule, `upload` when nothing is left.
fn clean_name(name: Option<&str>) -> String {
    crate::names::sanitize(crate::names::base_name(name.unwrap_or("")), "upload")
}

/// Bytes read from the request per step of an upload: with a local backend, all an upload
/// holds in memory (remote backends gather one multipart part, 8 MiB, on top).
const UPLOAD_BUFFER: usize = 256 * 1024;

/// The 503 `too_many_uploads` answer (with `Retry-After`) when all of the
/// `server.max_concurrent_uploads` upload slots (`AppState::uploads`) are taken. Every upload
/// route takes a slot first: `let Ok(_permit) = state.uploads.clone().try_acquire_owned()`.
pub(crate) fn too_many_uploads() -> Response {
    let mut r = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        error_codes::TOO_MANY_UPLOADS,
        "the most uploads this process streams at once (server.max_concurrent_uploads) are running; retry shortly",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// `POST /api/uploads`: the first file field of a multipart body is streamed into storage
/// under `uploads/{uuid}/{name}`. Answers 201 `{key, url, size, content_type}`; use `key` or
/// `url` as a task input. At most `server.max_concurrent_uploads` at once (503
/// `too_many_uploads` with `Retry-After` beyond); a body that ends before its multipart end is
/// 400 `upload_incomplete`, and nothing of it stays in storage.
#[handler]
pub(crate) async fn upload(
    mut multipart: Multipart,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
        return too_many_uploads();
    };
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    error_codes::UPLOAD_MISSING_FILE,
                    "the multipart body has no file field (send the file as a form field named `file`)",
                );
            }
            Err(e) if is_incomplete(&e) => return incomplete(),
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    error_codes::UPLOAD_INVALID_MULTIPART,
                    &e.to_string(),
                );
            }
        };
        if field.file_name().is_none() && field.name() != Some("file") {
            continue;
        }
        let name = clean_name(field.file_name());
        let content_type = field.content_type().unwrap_or("").to_owned();
        let folder = format!("uploads/{}", Uuid::now_v7());
        let key = format!("{folder}/{name}");
        // Any error reading the field is the body's (cut or truncated), not the storage's.
        let broken = Arc::new(AtomicBool::new(false));
        let seen = broken.clone();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(field.into_async_read(), UPLOAD_BUFFER)
                .inspect_err(move |_| seen.store(true, Ordering::Relaxed));
        return match state
            .storage
            .put_stream(&key, stream, &content_type, state.max_upload_bytes)
            .await
        {
            Ok(obj) => {
                let body = serde_json::to_string(&obj).unwrap_or_default();
                Response::builder()
                    .status(StatusCode::CREATED)
                    .content_type("application/json")
                    .body(body)
            }
            Err(e) => {
                // The object is gone already; the folder `fs` made for it goes too.
                let _ = state.storage.delete_folder(&folder).await;
                if broken.load(Ordering::Relaxed) {
                    incomplete()
                } else {
                    storage_error(&e)
                }
            }
        };
    }
}

/// A body that ended (or broke) before the multipart end.
fn is_incomplete(e: &poem::error::ParseMultipartError) -> bool {
    use poem::error::ParseMultipartError as P;
    match e {
        P::Io(_) => true,
        P::Multipart(m) => matches!(
            m,
            multer::Error::IncompleteStream
                | multer::Error::IncompleteHeaders
                | multer::Error::IncompleteFieldData { .. }
                | multer::Error::StreamReadFailed(_)
        ),
        _ => false,
    }
}

fn incomplete() -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        error_codes::UPLOAD_INCOMPLETE,
        "the upload ended before the end of its multipart body; nothing was stored",
    )
}

/// Whether a browser may show `content_type` in place: images (but SVG), audio, video and
/// PDF. Anything else (HTML, SVG, XML, scripts, unknown types) is served as an attachment in a
/// CSP sandbox, so a stored file never runs on the API's origin.
fn shown_inline(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    match kind {
        "image" => !sub.contains("svg") && !sub.contains("xml"),
        "audio" | "video" => true,
        "application" => sub == "pdf",
        _ => false,
    }
}

/// Parses a single `bytes=` range into (start, len) for [`crate::storage::Storage::read_range`].
/// Multiple ranges and malformed headers are ignored (the whole object is sent), as RFC 9110
/// allows; suffix ranges (`bytes=-N`) need the size, so they come back as `Suffix(N)`.
enum RangeSpec {
    Whole,
    From(u64, Option<u64>),
    Suffix(u64),
}

fn parse_range(h: Option<&str>) -> RangeSpec {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        // An end past the file is clamped to its last byte later (RFC 9110 14.1.2); the
        // length saturates rather than wrapping for `bytes=0-18446744073709551615`.
        (Ok(start), Ok(end)) if end >= start => {
            RangeSpec::From(start, Some((end - start).saturating_add(1)))
        }
        (Ok(start), Err(_)) if b.is_empty() => RangeSpec::From(start, None),
        (Err(_), Ok(n)) if a.is_empty() => RangeSpec::Suffix(n),
        _ => RangeSpec::Whole,
    }
}

/// `GET /files/{key}`: a stored object (fs and memory backends), with `Range` support.
#[handler]
pub(crate) async fn get_file(req: &Request, Data(state): Data<&Arc<AppState>>) -> Response {
    let key = req.uri().path().trim_start_matches("/files/");
    let key = match crate::percent::decode(key) {
        Some(k) => k,
        None => {
            return error_response(
                StatusCode::BAD_REQUEST,
                error_codes::FILES_INVALID_KEY,
                "the key has a malformed %-escape or is not UTF-8",
            );
        }
    };
    serve_key(req, state, &key).await
}

/// Streams the stored object `key` (with `Range`), as `GET /files/{key}` does; shared with
/// the ComfyUI gateway's `/view`.
pub(crate) async fn serve_key(req: &Request, state: &AppState, key: &str) -> Response {
    let key = key.to_owned();
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let mut spec = parse_range(range_header);
    if let RangeSpec::Suffix(n) = spec {
        match state.storage.stat(&key).await {
            Ok(meta) => {
                let n = n.min(meta.size);
                spec = RangeSpec::From(meta.size - n, Some(n));
            }
            Err(e) => return storage_error(&e),
        }
    }
    let range = match spec {
        RangeSpec::From(start, len) => Some((start, len)),
        _ => None,
    };
    match state.storage.read_range(&key, range).await {
        // An empty file has no byte to start at.
        Ok((meta, _)) if range.is_some_and(|(start, _)| start >= meta.size) => {
            unsatisfiable(meta.size)
        }
        Ok((meta, stream)) => {
            let mut resp = Response::builder()
                .header(header::CONTENT_TYPE, meta.content_type.clone())
                .header(header::ACCEPT_RANGES, "bytes");
            resp = if shown_inline(&meta.content_type) {
                resp.header(header::CONTENT_DISPOSITION, "inline")
            } else {
                resp.header(header::CONTENT_DISPOSITION, "attachment")
                    .header(header::CONTENT_SECURITY_POLICY, "sandbox")
            };
            let len = match range {
                Some((start, len)) => {
                    let len = len.unwrap_or(meta.size - start).min(meta.size - start);
                    resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
                        header::CONTENT_RANGE,
                        format!(
                            "bytes {}-{}/{}",
                            start,
                            start + len.saturating_sub(1),
                            meta.size
                        ),
                    );
                    len
                }
                None => meta.size,
            };
            resp.header(header::CONTENT_LENGTH, len)
                .body(Body::from_bytes_stream(
                    stream.map_err(std::io::Error::other),
                ))
        }
        Err(StorageError::RangeNotSatisfiable { .. }) => {
            let size = state.storage.stat(&key).await.map(|m| m.size).unwrap_or(0);
            unsatisfiable(size)
        }
        Err(e) => storage_error(&e),
    }
    .into_response()
}

/// 416 with the size of the file (`Content-Range: bytes */SIZE`).
fn unsatisfiable(size: u64) -> Response {
    let mut r = error_response(
        StatusCode::RANGE_NOT_SATISFIABLE,
        error_codes::FILES_RANGE_NOT_SATISFIABLE,
        "the range starts past the end of the file",
    );
    if let Ok(v) = format!("bytes */{size}").parse() {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(matches!(
            parse_range(Some("bytes=0-9")),
            RangeSpec::From(0, Some(10))
        ));
        assert!(matches!(
            parse_range(Some("bytes=5-")),
            RangeSpec::From(5, None)
        ));
        assert!(matches!(
            parse_range(Some("bytes=-4")),
            RangeSpec::Suffix(4)
        ));
        assert!(matches!(
            parse_range(Some("bytes=0-1,4-5")),
            RangeSpec::Whole
        ));
        assert!(matches!(parse_range(Some("items=0-1")), RangeSpec::Whole));
        assert!(matches!(
            parse_range(Some("bytes=0-18446744073709551615")),
            RangeSpec::From(0, Some(u64::MAX))
        ));
        assert!(matches!(
            parse_range(Some("bytes=1-18446744073709551615")),
            RangeSpec::From(1, Some(u64::MAX))
        ));
        assert!(matches!(parse_range(None), RangeSpec::Whole));
    }

    #[test]
    fn inline_or_attachment() {
        for t in [
            "image/png",
            "image/jpeg",
            "video/mp4",
            "audio/mpeg",
            "application/pdf",
            "IMAGE/WEBP; x=y",
        ] {
            assert!(shown_inline(t), "{t}");
        }
        for t in [
            "text/html",
            "image/svg+xml",
            "application/xml",
            "text/xml",
            "application/javascript",
            "text/javascript",
            "application/octet-stream",
            "text/plain",
            "",
            "nonsense",
        ] {
            assert!(!shown_inline(t), "{t}");
        }
    }

    #[test]
    fn decode() {
        use crate::percent::decode as percent_decode;
        assert_eq!(percent_decode("a%20b.png").as_deref(), Some("a b.png"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
    }

    #[test]
    fn names() {
        assert_eq!(clean_name(Some("../../x y.png")), "x_y.png");
        assert_eq!(clean_name(None), "upload");
    }
}
