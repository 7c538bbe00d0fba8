//! The fake ComfyUI's HTTP server on poem: every route at `/X` and `/api/X`, ComfyUI's
//! Host/Origin check, the request log, and an acceptor that can drop every open connection at
//! once (`kill()`). Keep-alive works as in ComfyUI (aiohttp). The routes' bodies and statuses
//! follow the recorded transcripts (`tests/fixtures/comfyui/`); `routes.rs` holds the queue
//! and history routes, this file the files and info routes. Separate from the executor and
//! the WebSocket handler, which only share state with it.
//!
//! Deliberate differences: no frontend (`GET /` is 404, `/extensions` is empty); `/models/
//! checkpoints` lists the instance's checkpoints (`Inner::model_list`).

use std::{
    collections::HashMap,
    io,
    net::Shutdown,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route, handler,
    http::{StatusCode, uri::Scheme},
    listener::Acceptor,
    web::{Data, Json, LocalAddr, Multipart, Path, Query, RemoteAddr},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

use super::{Logged, nodes, routes, state::Inner, websocket};

/// Every open connection's socket (a duplicate handle), so `kill()` can shut them all down.
#[derive(Default)]
pub(crate) struct Conns {
    next: AtomicU64,
    open: Mutex<HashMap<u64, std::net::TcpStream>>,
}

impl Conns {
    /// Shuts every open connection down (the peers see the TCP connection end, no close
    /// frame, no response).
    pub(crate) fn shutdown_all(&self) {
        for (_, s) in self.open.lock().unwrap().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// An accepted connection; leaves the registry when hyper drops it.
pub(crate) struct Conn {
    stream: TcpStream,
    id: u64,
    conns: Arc<Conns>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.conns.open.lock().unwrap().remove(&self.id);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// poem's acceptor over our listener, registering every connection in `Conns`.
pub(crate) struct KillableAcceptor {
    listener: TcpListener,
    local: LocalAddr,
    conns: Arc<Conns>,
}

impl KillableAcceptor {
    pub(crate) fn new(listener: TcpListener, conns: Arc<Conns>) -> io::Result<Self> {
        let local = LocalAddr(listener.local_addr()?.into());
        Ok(KillableAcceptor {
            listener,
            local,
            conns,
        })
    }
}

impl Acceptor for KillableAcceptor {
    type Io = Conn;

    fn local_addr(&self) -> Vec<LocalAddr> {
        vec![self.local.clone()]
    }

    async fn accept(&mut self) -> io::Result<(Conn, LocalAddr, RemoteAddr, Scheme)> {
        let (stream, addr) = self.listener.accept().await?;
        let std = stream.into_std()?;
        let dup = std.try_clone()?;
        let stream = TcpStream::from_std(std)?;
        let id = self.conns.next.fetch_add(1, Ordering::SeqCst);
        self.conns.open.lock().unwrap().insert(id, dup);
        let conn = Conn {
            stream,
            id,
            conns: self.conns.clone(),
        };
        Ok((
            conn,
            self.local.clone(),
            RemoteAddr(addr.into()),
            Scheme::HTTP,
        ))
    }
}

/// aiohttp's answer to an exception in a handler.
pub(crate) fn plain_500() -> Response {
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .content_type("text/plain; charset=utf-8")
        .body("500 Internal Server Error\n\nServer got itself in trouble")
}

/// A status with no body and no content type (aiohttp's `web.Response(status=N)`).
pub(crate) fn empty(status: StatusCode) -> Response {
    Response::builder().status(status).finish()
}

/// `application/json; charset=utf-8` with a status.
pub(crate) fn json_status(status: StatusCode, v: Value) -> Response {
    let mut r = Json(v).into_response();
    r.set_status(status);
    r
}

fn routes() -> Route {
    Route::new()
        .at(
            "/prompt",
            poem::get(routes::get_prompt).post(routes::post_prompt),
        )
        .at(
            "/queue",
            poem::get(routes::get_queue).post(routes::post_queue),
        )
        .at("/interrupt", poem::post(routes::interrupt))
        .at(
            "/history",
            poem::get(routes::get_history).post(routes::post_history),
        )
        .at("/history/:id", poem::get(routes::history_one))
        .at("/free", poem::post(routes::free))
        .at("/view", poem::get(view))
        .at("/upload/image", poem::post(upload))
        .at("/system_stats", poem::get(system_stats))
        .at(
            "/features",
            poem::get(poem::endpoint::make_sync(|_| {
                Json(websocket::feature_flags())
            })),
        )
        .at("/object_info", poem::get(object_info))
        .at("/object_info/:class", poem::get(object_info_one))
        .at(
            "/embeddings",
            poem::get(poem::endpoint::make_sync(|_| Json(json!([])))),
        )
        .at(
            "/models",
            poem::get(poem::endpoint::make_sync(|_| Json(json!(MODEL_FOLDERS)))),
        )
        .at("/models/:folder", poem::get(models_in))
        .at(
            "/extensions",
            poem::get(poem::endpoint::make_sync(|_| Json(json!([])))),
        )
        .at("/ws", poem::get(websocket::upgrade))
}

/// The whole application: routes twice (`/` and `/api/`), the log and the origin check.
pub(crate) fn app(inner: Arc<Inner>) -> impl Endpoint<Output = Response> {
    let gate = inner.clone();
    Route::new()
        .nest("/api", routes())
        .nest("/", routes())
        .data(inner)
        .around(move |ep, mut req: Request| {
            let inner = gate.clone();
            async move {
                let path = req.uri().path();
                let path = path
                    .strip_prefix("/api")
                    .filter(|p| p.starts_with('/'))
                    .unwrap_or(path)
                    .to_owned();
                let mut body = Value::Null;
                if req.method() != poem::http::Method::GET {
                    let bytes = req.take_body().into_bytes().await?;
                    body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    req.set_body(bytes);
                }
                inner.log.lock().unwrap().push(Logged {
                    method: req.method().to_string(),
                    path,
                    body,
                });
                if origin_refused(&req) {
                    return Ok(empty(StatusCode::FORBIDDEN));
                }
                match ep.call(req).await {
                    Ok(r) => Ok(r.into_response()),
                    // aiohttp's static handler: 404 without a body.
                    Err(e) if e.status() == StatusCode::NOT_FOUND => Ok(Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .content_type("application/octet-stream")
                        .finish()),
                    Err(e) => Err(e),
                }
            }
        })
}

/// ComfyUI's origin middleware: with both headers and a loopback Host, the host part (with
/// the port when both carry one) must match literally. `Origin: null` has no host: allowed.
fn origin_refused(req: &Request) -> bool {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    let (Some(host), Some(origin)) = (header("host"), header("origin")) else {
        return false;
    };
    let split = |hostport: &str| -> (String, Option<String>) {
        let hp = hostport.to_ascii_lowercase();
        if let Some(rest) = hp.strip_prefix('[') {
            let (h, tail) = rest.split_once(']').unwrap_or((rest, ""));
            return (h.to_owned(), tail.strip_prefix(':').map(str::to_owned));
        }
        match hp.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p.to_owned())),
            None => (hp, None),
        }
    };
    let netloc = origin
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
        .unwrap_or_default();
    let (oh, oport) = split(netloc);
    let (hh, hport) = split(host);
    let loopback = hh == "localhost"
        || hh
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mut host_domain = host.to_ascii_lowercase();
    let mut origin_domain = netloc.to_ascii_lowercase();
    if oport.is_none() {
        host_domain = hh;
    }
    if hport.is_none() {
        origin_domain = oh;
    }
    loopback && !host_domain.is_empty() && !origin_domain.is_empty() && host_domain != origin_domain
}

/// The folder of a `type` (`input`, `output`, `temp`).
fn type_dir(inner: &Inner, kind: &str) -> Option<std::path::PathBuf> {
    matches!(kind, "input" | "output" | "temp").then(|| inner.dir.join(kind))
}

/// `sub/name` normalised; `None` when it leaves its folder.
fn inside(parts: &[&str]) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for part in parts.iter().flat_map(|p| p.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    if parts.first().is_some_and(|p| p.starts_with('/')) {
        return None;
    }
    Some(out.join("/"))
}

fn mimetype(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("webm") => "video/webm",
        Some("mp4") => "video/mp4",
        Some("json") => "application/json",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// `GET /view?filename=&subfolder=&type=[&preview=webp;Q|jpeg;Q][&channel=rgb|a|rgba]`.
#[handler]
fn view(Query(q): Query<HashMap<String, String>>, Data(inner): Data<&Arc<Inner>>) -> Response {
    let Some(filename) = q.get("filename") else {
        return empty(StatusCode::NOT_FOUND);
    };
    // "name [output]" picks the folder, as in ComfyUI.
    let (filename, annotated) = match filename.rsplit_once(" [") {
        Some((n, k)) if matches!(k, "input]" | "output]" | "temp]") => {
            (n.to_owned(), Some(k.trim_end_matches(']')))
        }
        _ => (filename.clone(), None),
    };
    if filename.is_empty() || filename.starts_with('/') || filename.contains("..") {
        return empty(StatusCode::BAD_REQUEST);
    }
    let kind = annotated.unwrap_or_else(|| q.get("type").map_or("output", String::as_str));
    let Some(mut dir) = type_dir(inner, kind) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    if let Some(sub) = q.get("subfolder") {
        let Some(sub) = inside(&[sub]) else {
            return empty(StatusCode::FORBIDDEN);
        };
        dir = dir.join(sub);
    }
    let name = filename.rsplit('/').next().unwrap_or_default().to_owned();
    let path = dir.join(&name);
    if !path.is_file() {
        return empty(StatusCode::NOT_FOUND);
    }
    let disposition = format!("filename=\"{name}\"");
    let reply = |ct: String, body: Vec<u8>| {
        Response::builder()
            .content_type(ct)
            .header("Content-Disposition", disposition.clone())
            .body(body)
    };
    let channel = q.get("channel").map_or("rgba", String::as_str);
    if let Some(preview) = q.get("preview") {
        let Ok(img) = image::open(&path) else {
            return plain_500();
        };
        let mut format = preview.split(';').next().unwrap_or_default();
        if !matches!(format, "webp" | "jpeg") || channel.contains('a') {
            format = "webp";
        }
        let img = if format == "jpeg" || channel == "rgb" {
            image::DynamicImage::ImageRgb8(img.to_rgb8())
        } else {
            img
        };
        let f = if format == "jpeg" {
            image::ImageFormat::Jpeg
        } else {
            image::ImageFormat::WebP
        };
        return reply(format!("image/{format}"), encode(&img, f));
    }
    match channel {
        "rgb" | "a" => {
            let Ok(img) = image::open(&path) else {
                return plain_500();
            };
            let out = if channel == "rgb" {
                image::DynamicImage::ImageRgb8(img.to_rgb8())
            } else {
                // The alpha channel on black, as ComfyUI's `putalpha`.
                let rgba = img.to_rgba8();
                let mut a = image::RgbaImage::new(rgba.width(), rgba.height());
                for (dst, src) in a.pixels_mut().zip(rgba.pixels()) {
                    *dst = image::Rgba([0, 0, 0, src[3]]);
                }
                image::DynamicImage::ImageRgba8(a)
            };
            reply("image/png".into(), encode(&out, image::ImageFormat::Png))
        }
        _ => match std::fs::read(&path) {
            Ok(bytes) => reply(mimetype(&name).into(), bytes),
            Err(_) => empty(StatusCode::NOT_FOUND),
        },
    }
}

/// `POST /upload/image`: multipart `image`, `subfolder`, `type`, `overwrite`.
#[handler]
async fn upload(mut form: Multipart, Data(inner): Data<&Arc<Inner>>) -> Response {
    let mut image: Option<(String, Vec<u8>)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let file = field.file_name().map(str::to_owned);
                let Ok(bytes) = field.bytes().await else {
                    return empty(StatusCode::BAD_REQUEST);
                };
                match file {
                    Some(f) if name == "image" => image = Some((f, bytes)),
                    _ => {
                        fields.insert(name, String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
            }
            Ok(None) => break,
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        }
    }
    let kind = fields
        .get("type")
        .map_or("input", String::as_str)
        .to_owned();
    let Some(dir) = type_dir(inner, &kind) else {
        return plain_500(); // ComfyUI: UnboundLocalError for another type
    };
    let Some((filename, bytes)) = image.filter(|(f, _)| !f.is_empty()) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let sub = fields.get("subfolder").cloned().unwrap_or_default();
    if inside(&[&sub, &filename]).is_none() {
        return empty(StatusCode::BAD_REQUEST);
    }
    let folder = dir.join(inside(&[&sub]).unwrap_or_default());
    std::fs::create_dir_all(&folder).unwrap();
    let overwrite = matches!(
        fields.get("overwrite").map(String::as_str),
        Some("true" | "1")
    );
    let mut name = filename.clone();
    let mut duplicate = false;
    if !overwrite {
        let (stem, ext) = match filename.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
            _ => (filename.clone(), String::new()),
        };
        let mut i = 1;
        while folder.join(&name).exists() {
            // Same bytes (ComfyUI compares hashes): the existing name, nothing written.
            if std::fs::read(folder.join(&name)).is_ok_and(|b| b == bytes) {
                duplicate = true;
                break;
            }
            name = format!("{stem} ({i}){ext}");
            i += 1;
        }
    }
    if !duplicate {
        std::fs::write(folder.join(&name), &bytes).unwrap();
    }
    Json(json!({"name": name, "subfolder": sub, "type": kind})).into_response()
}

/// The recorded `GET /system_stats` body.
#[handler]
fn system_stats() -> Json<Value> {
    Json(json!({
        "system": {"os": "posix", "ram_total": 25276510208u64, "ram_free": 23795339264u64,
            "comfyui_version": "0.3.64", "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
            "python_version": "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]",
            "pytorch_version": "2.15.0+cu132", "embedded_python": false,
            "argv": ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", "8188"]},
        "devices": [{"name": "cpu", "type": "cpu", "index": null, "vram_total": 25276510208u64,
            "vram_free": 23795339264u64, "torch_vram_total": 25276510208u64,
            "torch_vram_free": 23795339264u64}]
    }))
}

#[handler]
fn object_info(Data(inner): Data<&Arc<Inner>>) -> Json<Value> {
    Json(nodes::all_object_info(
        &inner.dir.join("input"),
        &inner.model_list("checkpoints"),
    ))
}

/// `{}` for a class the fake does not know.
#[handler]
fn object_info_one(Path(class): Path<String>, Data(inner): Data<&Arc<Inner>>) -> Json<Value> {
    let mut out = serde_json::Map::new();
    if let Some(e) = nodes::object_info(
        &class,
        &inner.dir.join("input"),
        &inner.model_list("checkpoints"),
    ) {
        out.insert(class, e);
    }
    Json(Value::Object(out))
}

/// The recorded `GET /models` list.
const MODEL_FOLDERS: &[&str] = &[
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
];

/// `GET /models/{folder}`: 404 with no body for an unknown folder.
#[handler]
fn models_in(Path(folder): Path<String>, Data(inner): Data<&Arc<Inner>>) -> Response {
    match folder.as_str() {
        f if MODEL_FOLDERS.contains(&f) => Json(json!(inner.model_list(f))).into_response(),
        _ => empty(StatusCode::NOT_FOUND),
    }
}
