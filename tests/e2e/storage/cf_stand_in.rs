//! A local stand-in for Cloudflare Images (it cannot run here), following the upload API's
//! recorded request and response shapes (research/storage.md §7):
//!
//! - `POST /client/v4/accounts/{account}/images/v1`, `Authorization: Bearer <token>`,
//!   multipart `file` (required; `url` is mutually exclusive with it), optional `id`,
//!   `metadata`, `requireSignedURLs`, `creator`.
//! - `GET|DELETE …/images/v1/{id}`, `GET …/images/v1/{id}/blob`.
//! - Every answer is the v4 envelope `{"success","errors":[{"code","message"}],"messages",
//!   "result"}`; a bad token is code 10000 "Authentication error".
//! - Delivery: `GET /{account_hash}/{id}/{variant}` (no auth), the `variants` URLs of the result.
//!
//! Codes other than 10000 are the stand-in's own choices in Cloudflare's 5xxx range: 5400 bad
//! request, 5404 not found, 5409 ID taken, 5413 too large, 5415 not an image.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aihost_tests::{free_port, wait_until};
use poem::{
    EndpointExt, Request, Response, Route, handler,
    http::{Method, StatusCode},
    listener::TcpListener,
    web::{Data, Multipart, Path},
};
use serde_json::{Value, json};

/// The hash in delivery URLs.
pub const ACCOUNT_HASH: &str = "Vi7wi5KSItxGFsWRG2Us6Q";
/// The account id the stand-in accepts.
pub const ACCOUNT_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";
/// The token the stand-in accepts.
pub const TOKEN: &str = "cf-images-test-token";

struct Image {
    bytes: Vec<u8>,
    content_type: String,
    filename: String,
}

struct State {
    base: String,
    images: Mutex<HashMap<String, Image>>,
    /// Answered (status, body) to the next API request instead of handling it.
    fail_next: Mutex<Option<(u16, String)>>,
}

/// A running stand-in; stops with the test's runtime.
pub struct CfImagesStandIn {
    state: Arc<State>,
    /// `http://127.0.0.1:PORT` (delivery URLs live here too).
    pub base: String,
}

impl CfImagesStandIn {
    /// Starts it on a free port.
    pub async fn start() -> CfImagesStandIn {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let state = Arc::new(State {
            base: base.clone(),
            images: Mutex::new(HashMap::new()),
            fail_next: Mutex::new(None),
        });
        let app = Route::new()
            .at("/client/v4/accounts/:account/images/v1", upload)
            .at("/client/v4/accounts/:account/images/v1/*rest", image)
            .at("/*path", deliver)
            .data(state.clone());
        tokio::spawn(async move {
            poem::Server::new(TcpListener::bind(format!("127.0.0.1:{port}")))
                .run(app)
                .await
        });
        let http = reqwest::Client::new();
        wait_until(
            "the Cloudflare Images stand-in answers",
            std::time::Duration::from_secs(10),
            async || http.get(format!("{base}/")).send().await.is_ok(),
        )
        .await;
        CfImagesStandIn { state, base }
    }

    /// The API base URL (`storage.endpoint`).
    pub fn api_base(&self) -> String {
        format!("{}/client/v4", self.base)
    }

    /// Makes the next API request answer `status` with `body`.
    pub fn fail_next(&self, status: u16, body: &str) {
        *self.state.fail_next.lock().unwrap() = Some((status, body.to_owned()));
    }

    /// The stored image IDs.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state.images.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }
}

fn envelope(status: u16, result: Value) -> Response {
    json_response(
        status,
        json!({"success": true, "errors": [], "messages": [], "result": result}),
    )
}

fn failure(status: u16, code: i64, message: &str) -> Response {
    json_response(
        status,
        json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
    )
}

fn json_response(status: u16, body: Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .content_type("application/json")
        .body(body.to_string())
}

/// Auth and the injected failure; `Some` answers the request.
fn gate(req: &Request, account: &str, state: &State) -> Option<Response> {
    if let Some((status, body)) = state.fail_next.lock().unwrap().take() {
        return Some(
            Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .body(body),
        );
    }
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) || account != ACCOUNT_ID {
        return Some(failure(401, 10000, "Authentication error"));
    }
    None
}

fn details(state: &State, id: &str, img: &Image) -> Value {
    json!({
        "id": id,
        "filename": img.filename,
        "meta": {},
        "requireSignedURLs": false,
        "uploaded": "2026-01-31T16:39:28.458Z",
        "creator": null,
        "variants": [
            format!("{}/{ACCOUNT_HASH}/{id}/thumbnail", state.base),
            format!("{}/{ACCOUNT_HASH}/{id}/public", state.base),
        ],
    })
}

fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF8") {
        Some("image/gif")
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[handler]
async fn upload(
    req: &Request,
    Path(account): Path<String>,
    mut form: Multipart,
    Data(state): Data<&Arc<State>>,
) -> Response {
    // The whole form is read before anything is answered, as Cloudflare does: answering an
    // upload while the client still sends it makes the connection reset under the client,
    // which would turn an injected answer into a transport error at random.
    let (mut file, mut id, mut url, mut unreadable) = (None, None, false, false);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name().unwrap_or_default() {
            "file" => {
                let name = field.file_name().unwrap_or("image").to_owned();
                match field.bytes().await {
                    Ok(b) => file = Some((name, b)),
                    Err(_) => unreadable = true,
                }
            }
            "id" => id = field.text().await.ok(),
            "url" => url = true,
            _ => {
                let _ = field.bytes().await;
            }
        }
    }
    if let Some(r) = gate(req, &account, state) {
        return r;
    }
    if unreadable {
        return failure(400, 5400, "Bad request: unreadable file");
    }
    let Some((filename, bytes)) = file else {
        return failure(
            400,
            5400,
            "Bad request: the form has no `file` (or `url`) field",
        );
    };
    if url {
        return failure(
            400,
            5400,
            "Bad request: `file` and `url` are mutually exclusive",
        );
    }
    if bytes.len() > 10_000_000 {
        return failure(413, 5413, "Image is larger than 10 MB");
    }
    let Some(content_type) = sniff(&bytes) else {
        return failure(415, 5415, "Unsupported image format");
    };
    let id = id.unwrap_or_else(|| format!("{:032x}", rand_id()));
    if id.starts_with('/') || id.ends_with('/') {
        return failure(400, 5400, "Bad request: invalid custom ID");
    }
    let mut images = state.images.lock().unwrap();
    if images.contains_key(&id) {
        return failure(409, 5409, "Resource already exists");
    }
    let img = Image {
        bytes: bytes.to_vec(),
        content_type: content_type.to_owned(),
        filename,
    };
    let result = details(state, &id, &img);
    images.insert(id, img);
    envelope(200, result)
}

fn rand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[handler]
async fn image(
    req: &Request,
    Path((account, rest)): Path<(String, String)>,
    Data(state): Data<&Arc<State>>,
) -> Response {
    if let Some(r) = gate(req, &account, state) {
        return r;
    }
    let raw = req.uri().path();
    let raw = &raw[raw.find("/images/v1/").unwrap() + "/images/v1/".len()..];
    let _ = rest;
    let (id, blob) = match raw.strip_suffix("/blob") {
        Some(id) => (decode(id), true),
        None => (decode(raw), false),
    };
    let mut images = state.images.lock().unwrap();
    if *req.method() == Method::DELETE {
        return match images.remove(&id) {
            Some(_) => envelope(200, json!({})),
            None => failure(404, 5404, "Image not found"),
        };
    }
    let Some(img) = images.get(&id) else {
        return failure(404, 5404, "Image not found");
    };
    if blob {
        return Response::builder()
            .content_type(img.content_type.as_str())
            .body(img.bytes.clone());
    }
    envelope(200, details(state, &id, img))
}

#[handler]
async fn deliver(req: &Request, Data(state): Data<&Arc<State>>) -> Response {
    // /{hash}/{id...}/{variant}
    let path = req.uri().path().trim_start_matches('/');
    let Some(rest) = path.strip_prefix(&format!("{ACCOUNT_HASH}/")) else {
        return Response::builder().status(StatusCode::NOT_FOUND).finish();
    };
    let Some((id, _variant)) = rest.rsplit_once('/') else {
        return Response::builder().status(StatusCode::NOT_FOUND).finish();
    };
    let images = state.images.lock().unwrap();
    match images.get(&decode(id)) {
        Some(img) => Response::builder()
            .content_type(img.content_type.as_str())
            .body(img.bytes.clone()),
        None => Response::builder().status(StatusCode::NOT_FOUND).finish(),
    }
}
