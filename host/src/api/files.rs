//! Media in and out: `POST /api/uploads` (multipart, streamed into storage) and
//! `GET /files/{key}` (stored objects, with HTTP Range).
//!
//! These are plain poem handlers (poem-openapi would buffer uploads into a temporary file
//! without a size limit); the OpenAPI spec documents them in [`super::spec`].

use std::sync::Arc;

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

/// `POST /api/uploads`: the first file field of a multipart body is streamed into storage
/// under `uploads/{uuid}/{name}`. Answers 201 `{key, url, size, content_type}`; use `key` or
/// `url` as a task input.
#[handler]
pub(crate) async fn upload(
    mut multipart: Multipart,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
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
        let key = format!("uploads/{}/{name}", Uuid::now_v7());
        let stream =
            tokio_util::io::ReaderStream::with_capacity(field.into_async_read(), 256 * 1024);
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
            Err(e) => storage_error(&e),
        };
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
        (Ok(start), Ok(end)) if end >= start => RangeSpec::From(start, Some(end - start + 1)),
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
        Ok((meta, stream)) => {
            let mut resp = Response::builder()
                .header(header::CONTENT_TYPE, meta.content_type.clone())
                .header(header::ACCEPT_RANGES, "bytes");
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
        Err(e) => storage_error(&e),
    }
    .into_response()
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
        assert!(matches!(parse_range(None), RangeSpec::Whole));
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
