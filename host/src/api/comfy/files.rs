//! `GET /view` (stored outputs and gateway uploads, streamed from aihost's storage, never from
//! ComfyUI) and `POST /upload/image` (a file stored as an aihost upload).
//!
//! An upload's key is derived from its ComfyUI name: `uploads/comfy-{hash}/{name}`, the hash
//! being SHA-256 of its type, subfolder and name. A prompt naming `sub/name.png` therefore
//! finds the file by computing the same key (`prompt.rs`), on any process and whatever
//! instance then runs the prompt; no table maps names to files. The folder is an ordinary
//! upload folder for retention (`retention.uploads_days`, kept while a live task names it).

use std::sync::Arc;

use poem::{
    Request, Response, handler,
    http::StatusCode,
    web::{Data, Multipart, Query},
};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, json_response};
use crate::api::error::error_response;
use crate::error_codes;

/// A subfolder under the one path rule: `/`-separated, no empty, `.` or `..` segment, no
/// backslash or control character; `None` when it breaks the rule.
fn clean_subfolder(sub: &str) -> Option<String> {
    let sub = sub.trim_matches('/');
    if sub.is_empty() {
        return Some(String::new());
    }
    let ok = !sub.contains('\\')
        && !sub.chars().any(char::is_control)
        && sub
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    ok.then(|| sub.to_owned())
}

/// Whether a ComfyUI file name is acceptable: not empty, no path separator or control
/// character, not `.` or `..`.
fn clean_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
        && name.len() <= 255
}

/// The storage key of the gateway upload `type`/`subfolder`/`name`, or `None` for a subfolder
/// or name that breaks the path rule.
pub(crate) fn upload_key(kind: &str, subfolder: &str, name: &str) -> Option<String> {
    use sha2::Digest as _;
    let sub = clean_subfolder(subfolder)?;
    if !clean_name(name) {
        return None;
    }
    let digest = sha2::Sha256::digest(format!("{kind}\0{sub}\0{name}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "uploads/comfy-{hex}/{}",
        crate::names::sanitize(name, "upload")
    ))
}

/// The query of `/view`.
#[derive(Debug, Deserialize)]
pub(crate) struct ViewQuery {
    filename: Option<String>,
    #[serde(default)]
    subfolder: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn bad_view(message: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        error_codes::COMFY_INVALID_PROMPT,
        message,
    )
}

fn not_found(message: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        error_codes::STORAGE_NOT_FOUND,
        message,
    )
}

/// `GET /view?filename=&subfolder=&type=`: an output (`type` `output` or `temp`, `subfolder`
/// as history gave it: `outputs/{task}/{attempt}/...`) or an upload (`type=input`). Unknown:
/// 404. `preview` and `channel` are ignored (the stored file is sent as it is).
#[handler]
pub(crate) async fn view(
    req: &Request,
    Query(q): Query<ViewQuery>,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    let Some(filename) = q.filename.filter(|f| !f.is_empty()) else {
        return not_found("give `filename`");
    };
    if !clean_name(&filename) {
        return bad_view("`filename` must be a file name without a path");
    }
    let key = match q.kind.as_deref().unwrap_or("output") {
        "input" => match upload_key("input", &q.subfolder, &filename) {
            Some(k) => k,
            None => return bad_view("`subfolder` must not leave its folder"),
        },
        "output" | "temp" => {
            let Some(sub) = clean_subfolder(&q.subfolder) else {
                return bad_view("`subfolder` must not leave its folder");
            };
            if !sub.starts_with("outputs/") {
                return not_found(
                    "no such output (the subfolder of an output is the one /history gave)",
                );
            }
            format!("{sub}/{filename}")
        }
        _ => return bad_view("`type` must be output, input or temp"),
    };
    super::super::files::serve_key(req, state, &key).await
}

/// `POST /upload/image`: multipart `image` (the file), optional `subfolder`, `type` (`input`,
/// the default, `temp` or `output`) and `overwrite` (`true`/`1`). The file is stored as an
/// aihost upload; without `overwrite` a taken name becomes `name (1).ext`, `name (2).ext`, ...
/// unless it already holds the same bytes (then that name is answered, as ComfyUI does).
/// Answers `{"name", "subfolder", "type"}`.
#[handler]
pub(crate) async fn upload_image(
    mut multipart: Multipart,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
        return super::super::files::too_many_uploads();
    };
    let staging = format!("uploads/comfy-staging-{}", uuid::Uuid::now_v7());
    let result = receive(&mut multipart, state, &staging).await;
    let _ = state.storage.delete_folder(&staging).await;
    result.unwrap_or_else(|r| r)
}

async fn receive(
    multipart: &mut Multipart,
    state: &AppState,
    staging: &str,
) -> Result<Response, Response> {
    let bad = |code: &str, m: &str| error_response(StatusCode::BAD_REQUEST, code, m);
    let mut staged: Option<(String, String)> = None;
    let mut subfolder = String::new();
    let mut kind = "input".to_owned();
    let mut overwrite = false;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(bad(error_codes::UPLOAD_INVALID_MULTIPART, &e.to_string()));
            }
        };
        match field.name().unwrap_or("") {
            "image" => {
                let name = crate::names::base_name(field.file_name().unwrap_or("")).to_owned();
                if !clean_name(&name) {
                    return Err(bad(
                        error_codes::UPLOAD_MISSING_FILE,
                        "the `image` field needs a file name",
                    ));
                }
                let ct = field.content_type().unwrap_or("").to_owned();
                let key = format!("{staging}/{}", crate::names::sanitize(&name, "upload"));
                let stream = tokio_util::io::ReaderStream::new(field.into_async_read());
                if let Err(e) = state
                    .storage
                    .put_stream(&key, stream, &ct, state.max_upload_bytes)
                    .await
                {
                    let status = crate::api::error::storage_status(&e);
                    return Err(error_response(
                        status,
                        e.code(),
                        &crate::api::error::storage_message(&e, status),
                    ));
                }
                staged = Some((key, name));
            }
            "subfolder" => subfolder = field.text().await.unwrap_or_default(),
            "type" => kind = field.text().await.unwrap_or_default(),
            "overwrite" => {
                overwrite = matches!(
                    field.text().await.unwrap_or_default().as_str(),
                    "true" | "1"
                );
            }
            _ => {}
        }
    }
    let Some((staged_key, name)) = staged else {
        return Err(bad(
            error_codes::UPLOAD_MISSING_FILE,
            "the multipart body has no `image` file field",
        ));
    };
    if !matches!(kind.as_str(), "input" | "temp" | "output") {
        return Err(bad(
            error_codes::UPLOAD_INVALID_MULTIPART,
            "`type` must be input, temp or output",
        ));
    }
    let Some(sub) = clean_subfolder(&subfolder) else {
        return Err(bad(
            error_codes::UPLOAD_INVALID_MULTIPART,
            "`subfolder` must not leave its folder",
        ));
    };
    let mut final_name = name.clone();
    if !overwrite {
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
            _ => (name.clone(), String::new()),
        };
        let mut n = 0;
        loop {
            let key = upload_key(&kind, &sub, &final_name).unwrap_or_default();
            if state.storage.stat(&key).await.is_err() {
                break;
            }
            // The same bytes under this name already: ComfyUI answers that name (a client
            // that uploads its input before every prompt does not pile up copies).
            if same_content(&state.storage, &staged_key, &key).await {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"name": final_name, "subfolder": sub, "type": kind}),
                ));
            }
            n += 1;
            if n > 1000 {
                return Err(bad(
                    error_codes::UPLOAD_INVALID_MULTIPART,
                    "too many files of this name; upload with overwrite=true",
                ));
            }
            final_name = format!("{stem} ({n}){ext}");
        }
    }
    let Some(key) = upload_key(&kind, &sub, &final_name) else {
        return Err(bad(
            error_codes::UPLOAD_INVALID_MULTIPART,
            "the file name is not acceptable",
        ));
    };
    if let Err(e) = state.storage.copy(&staged_key, &key).await {
        let status = crate::api::error::storage_status(&e);
        return Err(error_response(
            status,
            e.code(),
            &crate::api::error::storage_message(&e, status),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": final_name, "subfolder": sub, "type": kind}),
    ))
}

/// Whether the objects `a` and `b` hold the same bytes: equal sizes, then equal SHA-256
/// digests, both read as streams (never whole in memory). Any read error answers `false`.
async fn same_content(storage: &crate::storage::Storage, a: &str, b: &str) -> bool {
    async fn digest(storage: &crate::storage::Storage, key: &str) -> Option<(u64, [u8; 32])> {
        use futures_util::StreamExt as _;
        use sha2::Digest as _;
        let (meta, mut stream) = storage.read_range(key, None).await.ok()?;
        let mut hash = sha2::Sha256::new();
        while let Some(chunk) = stream.next().await {
            hash.update(chunk.ok()?);
        }
        Some((meta.size, hash.finalize().into()))
    }
    match (storage.stat(a).await, storage.stat(b).await) {
        (Ok(x), Ok(y)) if x.size == y.size => {
            let (x, y) = (digest(storage, a).await, digest(storage, b).await);
            x.is_some() && x == y
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_keys_follow_the_name_and_refuse_escapes() {
        let a = upload_key("input", "caps", "up.png").unwrap();
        assert!(
            a.starts_with("uploads/comfy-") && a.ends_with("/up.png"),
            "{a}"
        );
        assert_eq!(upload_key("input", "/caps/", "up.png").unwrap(), a);
        assert_ne!(upload_key("input", "", "up.png").unwrap(), a);
        assert_ne!(upload_key("temp", "caps", "up.png").unwrap(), a);
        assert!(upload_key("input", "../x", "up.png").is_none());
        assert!(upload_key("input", "", "a/b.png").is_none());
        assert!(upload_key("input", "", "").is_none());
        crate::storage::validate_key(&upload_key("input", "", "my cat (1).png").unwrap()).unwrap();
    }
}
