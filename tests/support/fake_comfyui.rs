//! A fake ComfyUI for the integration tests: HTTP + WebSocket on a free port, behaving as the
//! transcripts captured from a real ComfyUI 0.3.64 show (research/comfyui):
//!
//! - every route also under `/api/` (including `/api/ws`);
//! - `POST /prompt` validation with the real error bodies (`invalid_prompt`,
//!   `prompt_no_outputs`, `no_prompt`, `prompt_outputs_failed_validation` with per-node
//!   `required_input_missing`, `return_type_mismatch`, `invalid_input_type`,
//!   `value_smaller_than_min`, `value_bigger_than_max`, `value_not_in_list`,
//!   `custom_validation_failed`, `bad_linked_input`, `exception_during_validation`), 500
//!   text/plain for a malformed body, a client-chosen `prompt_id` taken verbatim;
//! - the message order of a fresh run, a cached rerun (every node cached, `executed` re-sent,
//!   no per-node `executing`), an `execution_error`, an `execution_interrupted` (effective at
//!   the next node boundary), `executing` null after the history write;
//! - messages to the socket registered for the prompt's client id; `status` and binary TEXT
//!   frames broadcast; a second socket with the same client id replaces the first, and when the
//!   first closes the entry is removed (the new socket then receives nothing, as in ComfyUI);
//! - `kill()` drops every connection without a close frame and loses queue and history; the
//!   output files stay on disk and numbering continues after `restart()`.
//!
//! A small table of core node classes stands in for `object_info`. Test hooks: `hold` (pause
//! execution at node boundaries), the request log, and the count of WebSocket connections.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{Notify, mpsc, watch},
    task::AbortHandle,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};

/// A request the fake received: method, path (without `/api`), JSON body or `null`.
#[derive(Debug, Clone)]
pub struct Logged {
    /// HTTP method.
    pub method: String,
    /// Path without the `/api` prefix and query.
    pub path: String,
    /// JSON body, if any.
    pub body: Value,
}

#[derive(Clone)]
struct QItem {
    number: f64,
    id: String,
    prompt: Value,
    extra: Value,
    outputs: Vec<String>,
}

impl QItem {
    fn json(&self) -> Value {
        json!([self.number, self.id, self.prompt, self.extra, self.outputs])
    }
}

#[derive(Default)]
struct St {
    counter: i64,
    pending: Vec<QItem>,
    running: Option<(QItem, String)>,
    history: Map<String, Value>,
    sockets: HashMap<String, (u64, mpsc::UnboundedSender<Message>)>,
    interrupt: bool,
    cache: HashMap<String, Map<String, Value>>,
}

struct Inner {
    st: Mutex<St>,
    wake: Notify,
    hold: watch::Sender<bool>,
    ws_connections: AtomicU64,
    /// Connections with an id up to this one are stalled (silent, unread).
    stalled_upto: AtomicU64,
    next_conn: AtomicU64,
    log: Mutex<Vec<Logged>>,
    dir: PathBuf,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A running fake ComfyUI.
pub struct FakeComfy {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: tempfile::TempDir,
    inner: Option<Arc<Inner>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl FakeComfy {
    /// Starts on a free port with empty input/output folders.
    pub async fn start() -> FakeComfy {
        let dir = tempfile::tempdir().unwrap();
        for d in ["input", "output", "temp"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let port = crate::free_port();
        let mut f = FakeComfy {
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            inner: None,
        };
        f.restart().await;
        f
    }

    /// (Re)starts on the same port and folders, with an empty queue and history.
    pub async fn restart(&mut self) {
        assert!(self.inner.is_none(), "kill it first");
        let inner = Arc::new(Inner {
            st: Mutex::default(),
            wake: Notify::new(),
            hold: watch::channel(false).0,
            ws_connections: AtomicU64::new(0),
            stalled_upto: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            log: Mutex::default(),
            dir: self.dir.path().to_path_buf(),
            tasks: Mutex::default(),
        });
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        let mut tries = 0;
        while let Err(e) = sock.bind(([127, 0, 0, 1], self.port).into()) {
            tries += 1;
            assert!(tries < 100, "cannot bind port {}: {e}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = sock.listen(128).unwrap();
        let i2 = inner.clone();
        let accept = tokio::spawn(async move { accept_loop(i2, listener).await });
        let i3 = inner.clone();
        let exec = tokio::spawn(async move { executor(i3).await });
        inner
            .tasks
            .lock()
            .unwrap()
            .extend([accept.abort_handle(), exec.abort_handle()]);
        self.inner = Some(inner);
    }

    /// Like SIGKILL: every connection dropped without a close frame; queue and history lost.
    pub fn kill(&mut self) {
        if let Some(inner) = self.inner.take() {
            for t in inner.tasks.lock().unwrap().drain(..) {
                t.abort();
            }
            let mut st = inner.st.lock().unwrap();
            st.sockets.clear();
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        self.inner.as_ref().expect("fake ComfyUI is not running")
    }

    /// Pauses (true) or resumes (false) execution at node boundaries.
    pub fn hold(&self, on: bool) {
        self.inner().hold.send_replace(on);
    }

    /// Stalls every WebSocket open now: it stays open but the server neither sends nor
    /// reads anything on it (a hung proxy or server thread). Later connections work.
    pub fn stall_sockets(&self) {
        let last = self.inner().next_conn.load(Ordering::SeqCst) - 1;
        self.inner().stalled_upto.store(last, Ordering::SeqCst);
    }

    /// WebSocket handshakes accepted since the last (re)start.
    pub fn ws_connections(&self) -> u64 {
        self.inner().ws_connections.load(Ordering::SeqCst)
    }

    /// Requests since the last (re)start.
    pub fn requests(&self) -> Vec<Logged> {
        self.inner().log.lock().unwrap().clone()
    }

    /// Prompt ids queued with `POST /prompt` and accepted.
    pub fn prompts(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/prompt")
            .map(|r| r.body)
            .collect()
    }

    /// The running prompt's id.
    pub fn running(&self) -> Option<String> {
        let st = self.inner().st.lock().unwrap();
        st.running.as_ref().map(|(q, _)| q.id.clone())
    }

    /// Pending prompt ids.
    pub fn pending(&self) -> Vec<String> {
        let st = self.inner().st.lock().unwrap();
        st.pending.iter().map(|q| q.id.clone()).collect()
    }

    /// Path of a file in the fake's folders (`input`, `output`, `temp`).
    pub fn file(&self, kind: &str, rel: &str) -> PathBuf {
        self.dir.path().join(kind).join(rel)
    }

    /// Waits until `f` holds (polling), panicking after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&FakeComfy) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fake ComfyUI: never {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FakeComfy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_tracked(inner: &Arc<Inner>, fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let h = tokio::spawn(fut);
    inner.tasks.lock().unwrap().push(h.abort_handle());
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let i2 = inner.clone();
        spawn_tracked(&inner, async move { connection(i2, stream).await });
    }
}

struct Req {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_request(stream: &mut TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let mut parts = first.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect();
    let path = path
        .strip_prefix("/api")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path);
    Some(Req {
        method,
        path: path.to_owned(),
        query,
        headers,
        body,
    })
}

async fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &[u8], extra: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.flush().await;
}

async fn connection(inner: Arc<Inner>, mut stream: TcpStream) {
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let body_json: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    inner.log.lock().unwrap().push(Logged {
        method: req.method.clone(),
        path: req.path.clone(),
        body: body_json.clone(),
    });
    // ComfyUI's origin check: with an Origin header and a loopback Host, the host names must
    // match literally (HTTP and the WebSocket handshake alike).
    let host_name = |v: &str| {
        let v = v.split("://").last().unwrap_or(v);
        v.rsplit_once(':').map_or(v, |(h, _)| h).to_owned()
    };
    if let (Some(origin), Some(host)) = (req.headers.get("origin"), req.headers.get("host")) {
        let h = host_name(host);
        if matches!(h.as_str(), "127.0.0.1" | "localhost" | "::1") && host_name(origin) != h {
            respond(&mut stream, 403, "text/plain; charset=utf-8", b"", "").await;
            return;
        }
    }
    if req.path == "/ws" {
        return websocket(inner, stream, req).await;
    }
    let (status, ctype, body, extra): (u16, String, Vec<u8>, String) =
        route(&inner, &req, body_json);
    respond(&mut stream, status, &ctype, &body, &extra).await;
}

const PLAIN_500: &str = "500 Internal Server Error\n\nServer got itself in trouble";

fn ok_json(v: Value) -> (u16, String, Vec<u8>, String) {
    (
        200,
        "application/json; charset=utf-8".into(),
        v.to_string().into_bytes(),
        String::new(),
    )
}

fn empty(status: u16) -> (u16, String, Vec<u8>, String) {
    (
        status,
        "text/plain; charset=utf-8".into(),
        Vec::new(),
        String::new(),
    )
}

fn route(inner: &Arc<Inner>, req: &Req, body: Value) -> (u16, String, Vec<u8>, String) {
    let m = req.method.as_str();
    let p = req.path.as_str();
    match (m, p) {
        ("GET", "/prompt") => {
            let st = inner.st.lock().unwrap();
            ok_json(json!({"exec_info": {"queue_remaining": remaining(&st)}}))
        }
        ("POST", "/prompt") => {
            if serde_json::from_slice::<Value>(&req.body).is_err() || body["prompt"].is_array() {
                return (
                    500,
                    "text/plain; charset=utf-8".into(),
                    PLAIN_500.as_bytes().to_vec(),
                    String::new(),
                );
            }
            let (status, v) = queue_prompt(inner, &body);
            let mut r = ok_json(v);
            r.0 = status;
            r
        }
        ("GET", "/queue") => {
            let st = inner.st.lock().unwrap();
            let running: Vec<Value> = st.running.iter().map(|(q, _)| q.json()).collect();
            // ComfyUI answers pending items in heap order; we answer them reversed so a
            // client that does not sort notices.
            let pending: Vec<Value> = st.pending.iter().rev().map(QItem::json).collect();
            ok_json(json!({"queue_running": running, "queue_pending": pending}))
        }
        ("POST", "/queue") => {
            let mut st = inner.st.lock().unwrap();
            if body["clear"] == true {
                st.pending.clear();
            }
            if let Some(ids) = body["delete"].as_array() {
                st.pending.retain(|q| !ids.contains(&json!(q.id)));
            }
            let q = remaining(&st);
            broadcast(
                &st,
                &json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": q}}}}),
            );
            empty(200)
        }
        ("POST", "/interrupt") => {
            let mut st = inner.st.lock().unwrap();
            let target = body.get("prompt_id").and_then(Value::as_str);
            let running = st.running.as_ref().map(|(q, _)| q.id.clone());
            match (target, running) {
                (Some(t), Some(r)) if t == r => st.interrupt = true,
                (Some(_), _) => {}
                (None, _) => st.interrupt = true,
            }
            drop(st);
            inner.wake.notify_waiters();
            empty(200)
        }
        ("GET", "/history") => ok_json(Value::Object(inner.st.lock().unwrap().history.clone())),
        ("POST", "/history") => {
            let mut st = inner.st.lock().unwrap();
            if body["clear"] == true {
                st.history.clear();
            }
            for id in body["delete"].as_array().into_iter().flatten() {
                if let Some(id) = id.as_str() {
                    st.history.remove(id);
                }
            }
            empty(200)
        }
        ("GET", p) if p.starts_with("/history/") => {
            let id = &p["/history/".len()..];
            let st = inner.st.lock().unwrap();
            let mut out = Map::new();
            if let Some(e) = st.history.get(id) {
                out.insert(id.to_owned(), e.clone());
            }
            ok_json(Value::Object(out))
        }
        ("GET", "/view") => view(inner, req),
        ("POST", "/upload/image") => upload(inner, req),
        ("GET", "/system_stats") => ok_json(
            json!({"system": {"os": "posix", "ram_total": 25276510208u64, "ram_free": 23795339264u64,
            "comfyui_version": "0.3.64", "required_frontend_version": "1.27.10", "python_version": "3.11.7", "pytorch_version": "2.15.0+cu132",
            "embedded_python": false, "argv": ["main.py", "--cpu"]},
            "devices": [{"name": "cpu", "type": "cpu", "index": null, "vram_total": 25276510208u64, "vram_free": 23795339264u64,
            "torch_vram_total": 25276510208u64, "torch_vram_free": 23795339264u64}]}),
        ),
        ("GET", "/features") => {
            ok_json(json!({"supports_preview_metadata": true, "max_upload_size": 104857600}))
        }
        ("POST", "/free") => {
            if body["free_memory"] == true {
                inner.st.lock().unwrap().cache.clear();
            }
            empty(200)
        }
        _ => (
            404,
            "text/plain; charset=utf-8".into(),
            b"404: Not Found".to_vec(),
            String::new(),
        ),
    }
}

fn remaining(st: &St) -> usize {
    st.pending.len() + usize::from(st.running.is_some())
}

fn broadcast(st: &St, msg: &Value) {
    for (_, tx) in st.sockets.values() {
        let _ = tx.send(Message::Text(msg.to_string().into()));
    }
}

fn send_to(st: &St, client: &str, msg: &Value) {
    if let Some((_, tx)) = st.sockets.get(client) {
        let _ = tx.send(Message::Text(msg.to_string().into()));
    }
}

fn view(inner: &Inner, req: &Req) -> (u16, String, Vec<u8>, String) {
    let Some(name) = req.query.get("filename") else {
        return empty(404);
    };
    let kind = req.query.get("type").map_or("output", String::as_str);
    if name.contains("..") || name.starts_with('/') || !matches!(kind, "output" | "input" | "temp")
    {
        return empty(400);
    }
    let sub = req.query.get("subfolder").cloned().unwrap_or_default();
    if sub.contains("..") {
        return empty(400);
    }
    let path = inner.dir.join(kind).join(&sub).join(name);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let ct = match path.extension().and_then(|e| e.to_str()) {
                Some("png") => "image/png",
                Some("webm") => "video/webm",
                Some("mp4") => "video/mp4",
                _ => "application/octet-stream",
            };
            (
                200,
                ct.into(),
                bytes,
                format!("Content-Disposition: filename=\"{name}\"\r\n"),
            )
        }
        Err(_) => empty(404),
    }
}

/// Minimal multipart/form-data parsing: (name, filename, bytes) per part.
fn multipart(req: &Req) -> Vec<(String, Option<String>, Vec<u8>)> {
    let ct = req.headers.get("content-type").cloned().unwrap_or_default();
    let Some(boundary) = ct.split("boundary=").nth(1) else {
        return Vec::new();
    };
    let boundary = format!("--{}", boundary.trim_matches('"'));
    let b = &req.body;
    let mut out = Vec::new();
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut pos = match find(b, boundary.as_bytes(), 0) {
        Some(p) => p + boundary.len(),
        None => return out,
    };
    loop {
        if b[pos..].starts_with(b"--") {
            break;
        }
        pos += 2; // CRLF
        let Some(head_end) = find(b, b"\r\n\r\n", pos) else {
            break;
        };
        let head = String::from_utf8_lossy(&b[pos..head_end]).into_owned();
        let start = head_end + 4;
        let Some(end) = find(b, format!("\r\n{boundary}").as_bytes(), start) else {
            break;
        };
        let field = |key: &str| {
            head.split(';')
                .map(str::trim)
                .find_map(|s| s.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_owned())
        };
        let name = field("name").unwrap_or_default();
        let filename = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .and_then(|l| {
                l.split(';')
                    .map(str::trim)
                    .find_map(|s| s.strip_prefix("filename="))
            })
            .map(|v| v.trim_matches('"').to_owned());
        out.push((name, filename, b[start..end].to_vec()));
        pos = end + 2 + boundary.len();
    }
    out
}

fn upload(inner: &Inner, req: &Req) -> (u16, String, Vec<u8>, String) {
    let parts = multipart(req);
    let text = |n: &str| {
        parts
            .iter()
            .find(|(k, f, _)| k == n && f.is_none())
            .map(|(_, _, v)| String::from_utf8_lossy(v).into_owned())
    };
    let Some((_, Some(filename), bytes)) = parts.iter().find(|(k, _, _)| k == "image") else {
        return empty(400);
    };
    let kind = text("type").unwrap_or_else(|| "input".into());
    let sub = text("subfolder").unwrap_or_default();
    let overwrite = matches!(text("overwrite").as_deref(), Some("true" | "1"));
    if sub.contains("..")
        || sub.starts_with('/')
        || !matches!(kind.as_str(), "input" | "temp" | "output")
    {
        return empty(400);
    }
    let dir = inner.dir.join(&kind).join(&sub);
    std::fs::create_dir_all(&dir).unwrap();
    let mut name = filename.clone();
    if !overwrite {
        let (stem, ext) = match filename.rsplit_once('.') {
            Some((s, e)) => (s.to_owned(), format!(".{e}")),
            None => (filename.clone(), String::new()),
        };
        let mut i = 1;
        while let Ok(existing) = std::fs::read(dir.join(&name)) {
            if &existing == bytes {
                break;
            }
            name = format!("{stem} ({i}){ext}");
            i += 1;
        }
    }
    std::fs::write(dir.join(&name), bytes).unwrap();
    ok_json(json!({"name": name, "subfolder": sub, "type": kind}))
}

async fn websocket(inner: Arc<Inner>, mut stream: TcpStream, req: Req) {
    let Some(key) = req.headers.get("sec-websocket-key") else {
        respond(&mut stream, 400, "text/plain", b"", "").await;
        return;
    };
    let accept = derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    inner.ws_connections.fetch_add(1, Ordering::SeqCst);
    let conn = inner.next_conn.fetch_add(1, Ordering::SeqCst);
    let sid = req
        .query
        .get("clientId")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("{:032x}", now_ms() as u128 * 7919 + conn as u128));
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    {
        let mut st = inner.st.lock().unwrap();
        let q = remaining(&st);
        let _ = tx.send(Message::Text(
            json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": q}}, "sid": sid}})
                .to_string()
                .into(),
        ));
        // Reconnecting while this client's prompt runs: `executing` without a prompt id.
        if let Some((q, node)) = &st.running
            && q.extra["client_id"] == sid.as_str()
        {
            let _ = tx.send(Message::Text(
                json!({"type": "executing", "data": {"node": node}})
                    .to_string()
                    .into(),
            ));
        }
        // A second socket with the same id replaces the first.
        st.sockets.insert(sid.clone(), (conn, tx.clone()));
    }
    let mut first = true;
    loop {
        if inner.stalled_upto.load(Ordering::SeqCst) >= conn {
            // A stalled socket: open, but nothing is sent or read (no pongs either).
            while rx.try_recv().is_ok() {}
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => if ws.send(m).await.is_err() { break },
                None => break,
            },
            inc = ws.next() => match inc {
                Some(Ok(Message::Text(t))) => {
                    if first && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                        && v["type"] == "feature_flags"
                    {
                        let _ = tx.send(Message::Text(json!({"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}}).to_string().into()));
                    }
                    first = false;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => first = false,
            }
        }
    }
    // ComfyUI's bug, kept: the entry is removed by client id, even if a newer socket owns it.
    inner.st.lock().unwrap().sockets.remove(&sid);
}

// ------------------------------------------------------------------------------------------
// Node classes and validation
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum In {
    Int(i64, i64),
    Float(f64, f64),
    Str,
    Combo(&'static [&'static str]),
    /// An input image file name (LoadImage's custom validation).
    InputFile,
    Link(&'static str),
    Any,
}

struct Class {
    inputs: &'static [(&'static str, In)],
    outputs: &'static [&'static str],
    output_node: bool,
}

const METHODS: &[&str] = &["nearest-exact", "bilinear", "area", "bicubic", "lanczos"];
const CKPTS: &[&str] = &["v1-5-pruned-emaonly.safetensors"];

fn class(name: &str) -> Option<Class> {
    use In::*;
    let c = |inputs, outputs, output_node| {
        Some(Class {
            inputs,
            outputs,
            output_node,
        })
    };
    match name {
        "EmptyImage" => c(
            &[
                ("width", Int(1, 16384)),
                ("height", Int(1, 16384)),
                ("batch_size", Int(1, 4096)),
                ("color", Int(0, 16777215)),
            ],
            &["IMAGE"],
            false,
        ),
        "SaveImage" => c(
            &[("images", Link("IMAGE")), ("filename_prefix", Str)],
            &[],
            true,
        ),
        "PreviewImage" => c(&[("images", Link("IMAGE"))], &[], true),
        "LoadImage" => c(&[("image", InputFile)], &["IMAGE", "MASK"], false),
        "ImageInvert" => c(&[("image", Link("IMAGE"))], &["IMAGE"], false),
        "ImageBlur" => c(
            &[
                ("image", Link("IMAGE")),
                ("blur_radius", Int(1, 31)),
                ("sigma", Float(0.1, 10.0)),
            ],
            &["IMAGE"],
            false,
        ),
        "ImageScale" => c(
            &[
                ("image", Link("IMAGE")),
                ("upscale_method", Combo(METHODS)),
                ("width", Int(0, 16384)),
                ("height", Int(0, 16384)),
                ("crop", Combo(&["disabled", "center"])),
            ],
            &["IMAGE"],
            false,
        ),
        "GetImageSize" => c(&[("image", Link("IMAGE"))], &["INT", "INT", "INT"], false),
        "CheckpointLoaderSimple" => c(
            &[("ckpt_name", Combo(CKPTS))],
            &["MODEL", "CLIP", "VAE"],
            false,
        ),
        "CLIPTextEncode" => c(
            &[("text", Str), ("clip", Link("CLIP"))],
            &["CONDITIONING"],
            false,
        ),
        "EmptyLatentImage" => c(
            &[
                ("width", Int(16, 16384)),
                ("height", Int(16, 16384)),
                ("batch_size", Int(1, 4096)),
            ],
            &["LATENT"],
            false,
        ),
        "KSampler" => c(
            &[
                ("model", Link("MODEL")),
                ("seed", Int(0, i64::MAX)),
                ("steps", Int(1, 10000)),
                ("cfg", Float(0.0, 100.0)),
                (
                    "sampler_name",
                    Combo(&["euler", "euler_ancestral", "dpmpp_2m"]),
                ),
                ("scheduler", Combo(&["normal", "karras", "simple"])),
                ("positive", Link("CONDITIONING")),
                ("negative", Link("CONDITIONING")),
                ("latent_image", Link("LATENT")),
                ("denoise", Float(0.0, 1.0)),
            ],
            &["LATENT"],
            false,
        ),
        "VAEDecode" => c(
            &[("samples", Link("LATENT")), ("vae", Link("VAE"))],
            &["IMAGE"],
            false,
        ),
        "VAEEncode" => c(
            &[("pixels", Link("IMAGE")), ("vae", Link("VAE"))],
            &["LATENT"],
            false,
        ),
        "SaveWEBM" => c(
            &[
                ("images", Link("IMAGE")),
                ("filename_prefix", Str),
                ("codec", Combo(&["vp9", "av1"])),
                ("fps", Float(0.01, 1000.0)),
                ("crf", Float(0.0, 63.0)),
            ],
            &[],
            true,
        ),
        "PreviewAny" => c(&[("source", Any)], &[], true),
        _ => None,
    }
}

fn in_type(i: In) -> &'static str {
    match i {
        In::Int(..) => "INT",
        In::Float(..) => "FLOAT",
        In::Str => "STRING",
        In::Combo(_) | In::InputFile => "COMBO",
        In::Link(t) => t,
        In::Any => "*",
    }
}

fn node_error(kind: &str, message: String, details: String, extra: Value) -> Value {
    json!({"type": kind, "message": message, "details": details, "extra_info": extra})
}

fn top_error(kind: &str, message: &str, details: &str) -> Value {
    json!({"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}})
}

/// Validates one node (memoized): Ok, or Err with this node's own errors (empty when only an
/// upstream node failed).
fn validate_node(
    inner: &Inner,
    prompt: &Map<String, Value>,
    id: &str,
    memo: &mut HashMap<String, Result<(), Vec<Value>>>,
) -> Result<(), Vec<Value>> {
    if let Some(r) = memo.get(id) {
        return r.clone();
    }
    memo.insert(id.to_owned(), Ok(()));
    let node = &prompt[id];
    let cls = class(node["class_type"].as_str().unwrap_or_default()).expect("checked");
    let mut errors = Vec::new();
    let mut upstream_failed = false;
    for (name, spec) in cls.inputs {
        let Some(v) = node["inputs"].get(*name) else {
            errors.push(node_error(
                "required_input_missing",
                "Required input is missing".into(),
                (*name).into(),
                json!({"input_name": name}),
            ));
            continue;
        };
        if let Some(link) = v.as_array() {
            if link.len() != 2 {
                errors.push(node_error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]".into(),
                    (*name).into(),
                    json!({"input_name": name, "received_value": v}),
                ));
                continue;
            }
            let src = link[0]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| link[0].to_string());
            let Some(src_node) = prompt.get(&src) else {
                errors.push(node_error("exception_during_validation", "Exception when validating node".into(), format!("'{src}'"),
                    json!({"exception_type": "KeyError", "traceback": ["  File \"execution.py\", in validate_inputs\n    o_class_type = prompt[o_id]['class_type']\n"]})));
                continue;
            };
            let src_cls =
                class(src_node["class_type"].as_str().unwrap_or_default()).expect("checked");
            let slot = link[1].as_u64().unwrap_or(u64::MAX) as usize;
            let Some(received) = src_cls.outputs.get(slot) else {
                errors.push(node_error("exception_during_validation", "Exception when validating node".into(), "tuple index out of range".into(),
                    json!({"exception_type": "IndexError", "traceback": ["  File \"execution.py\", in validate_inputs\n    received_type = r[val[1]]\n"]})));
                continue;
            };
            let want = in_type(*spec);
            let compatible =
                want == "*" || *received == want || (want == "COMBO" && *received == "STRING");
            if !compatible {
                errors.push(node_error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes".into(),
                    format!("{name}, received_type({received}) mismatch input_type({want})"),
                    json!({"input_name": name, "received_type": received, "linked_node": v}),
                ));
                continue;
            }
            if validate_node(inner, prompt, &src, memo).is_err() {
                upstream_failed = true;
            }
            continue;
        }
        let num = |t: &str| -> Result<f64, Value> {
            let parsed = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|_| t == "FLOAT" || s.trim().parse::<i64>().is_ok()),
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                _ => None,
            };
            parsed.ok_or_else(|| {
                let shown = v.as_str().map_or(v.to_string(), str::to_owned);
                let py = if t == "INT" {
                    format!("invalid literal for int() with base 10: '{shown}'")
                } else {
                    format!("could not convert string to float: '{shown}'")
                };
                node_error(
                    "invalid_input_type",
                    format!("Failed to convert an input value to a {t} value"),
                    format!("{name}, {shown}, {py}"),
                    json!({"input_name": name, "received_value": v, "exception_message": py}),
                )
            })
        };
        let range = |x: f64, min: f64, max: f64, shown: String| -> Option<Value> {
            if x < min {
                Some(node_error(
                    "value_smaller_than_min",
                    format!("Value {shown} smaller than min of {min}"),
                    (*name).into(),
                    json!({"input_name": name, "received_value": v}),
                ))
            } else if x > max {
                Some(node_error(
                    "value_bigger_than_max",
                    format!("Value {shown} bigger than max of {max}"),
                    (*name).into(),
                    json!({"input_name": name, "received_value": v}),
                ))
            } else {
                None
            }
        };
        match *spec {
            In::Int(min, max) => match num("INT") {
                Err(e) => errors.push(e),
                Ok(x) => {
                    let x = x.trunc();
                    if let Some(e) = range(x, min as f64, max as f64, format!("{}", x as i64)) {
                        errors.push(e);
                    }
                }
            },
            In::Float(min, max) => match num("FLOAT") {
                Err(e) => errors.push(e),
                Ok(x) => {
                    if let Some(e) = range(x, min, max, format!("{x}")) {
                        errors.push(e);
                    }
                }
            },
            In::Str => {}
            In::Any => {}
            In::Combo(list) => {
                let s = v.as_str().unwrap_or_default();
                if !list.contains(&s) {
                    let shown: Vec<String> = list.iter().map(|x| format!("'{x}'")).collect();
                    errors.push(node_error(
                        "value_not_in_list",
                        "Value not in list".into(),
                        format!("{name}: '{s}' not in [{}]", shown.join(", ")),
                        json!({"input_name": name, "received_value": v}),
                    ));
                }
            }
            In::InputFile => {
                let s = v.as_str().unwrap_or_default();
                if s.contains("..") || !inner.dir.join("input").join(s).is_file() {
                    errors.push(node_error(
                        "custom_validation_failed",
                        "Custom validation failed for node".into(),
                        format!("{name} - Invalid image file: {s}"),
                        json!({"input_name": name}),
                    ));
                }
            }
            In::Link(_) => errors.push(node_error(
                "required_input_missing",
                "Required input is missing".into(),
                (*name).into(),
                json!({"input_name": name}),
            )),
        }
    }
    let r = if errors.is_empty() && !upstream_failed {
        Ok(())
    } else {
        Err(errors)
    };
    memo.insert(id.to_owned(), r.clone());
    r
}

/// Node ids an output depends on (itself included).
fn deps(prompt: &Map<String, Value>, id: &str, out: &mut Vec<String>) {
    if out.iter().any(|x| x == id) {
        return;
    }
    if let Some(inputs) = prompt.get(id).and_then(|n| n["inputs"].as_object()) {
        for v in inputs.values() {
            if let Some(l) = v.as_array()
                && l.len() == 2
                && let Some(src) = l[0].as_str()
                && prompt.contains_key(src)
            {
                deps(prompt, src, out);
            }
        }
    }
    out.push(id.to_owned());
}

fn sorted_ids<'a>(ids: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = ids.cloned().collect();
    v.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.clone()));
    v
}

fn queue_prompt(inner: &Inner, body: &Value) -> (u16, Value) {
    let mut st = inner.st.lock().unwrap();
    let number = st.counter;
    st.counter += 1;
    let Some(prompt) = body.get("prompt") else {
        return (
            400,
            top_error("no_prompt", "No prompt provided", "No prompt provided"),
        );
    };
    let Some(prompt) = prompt.as_object() else {
        return (
            400,
            top_error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                "",
            ),
        );
    };
    for id in sorted_ids(prompt.keys()) {
        let node = &prompt[&id];
        let Some(ct) = node.get("class_type").and_then(Value::as_str) else {
            return (
                400,
                top_error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    &format!("Node ID '#{id}'"),
                ),
            );
        };
        if class(ct).is_none() {
            return (
                400,
                top_error(
                    "invalid_prompt",
                    &format!("Cannot execute because node {ct} does not exist."),
                    &format!("Node ID '#{id}'"),
                ),
            );
        }
    }
    let outputs: Vec<String> = sorted_ids(prompt.keys())
        .into_iter()
        .filter(|id| {
            class(prompt[id]["class_type"].as_str().unwrap())
                .unwrap()
                .output_node
        })
        .collect();
    if outputs.is_empty() {
        return (
            400,
            top_error("prompt_no_outputs", "Prompt has no outputs", ""),
        );
    }
    let mut memo = HashMap::new();
    let mut good = Vec::new();
    let mut node_errors = Map::new();
    let mut details = Vec::new();
    for o in &outputs {
        match validate_node(inner, prompt, o, &mut memo) {
            Ok(()) => good.push(o.clone()),
            Err(own) => {
                for e in &own {
                    details.push(format!(
                        "{}: {}",
                        e["message"].as_str().unwrap(),
                        e["details"].as_str().unwrap()
                    ));
                }
                let mut d = Vec::new();
                deps(prompt, o, &mut d);
                for n in d {
                    if let Some(Err(errs)) = memo.get(&n)
                        && !errs.is_empty()
                    {
                        let entry = node_errors.entry(n.clone()).or_insert_with(|| json!({"errors": errs, "dependent_outputs": [], "class_type": prompt[&n]["class_type"]}));
                        entry["dependent_outputs"]
                            .as_array_mut()
                            .unwrap()
                            .push(json!(o));
                    }
                }
            }
        }
    }
    if good.is_empty() {
        return (
            400,
            json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
            "details": details.join("\n"), "extra_info": {}}, "node_errors": node_errors}),
        );
    }
    let id = body
        .get("prompt_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:08x}-0000-4000-8000-{:012x}", now_ms() as u32, number));
    let mut number = body
        .get("number")
        .and_then(Value::as_f64)
        .unwrap_or(number as f64);
    if body["front"] == true {
        number = -number;
    }
    let mut extra = body.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    if let Some(c) = body.get("client_id").and_then(Value::as_str) {
        extra["client_id"] = json!(c);
    }
    st.pending.push(QItem {
        number,
        id: id.clone(),
        prompt: Value::Object(prompt.clone()),
        extra,
        outputs: good,
    });
    let q = remaining(&st);
    broadcast(
        &st,
        &json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": q}}}}),
    );
    drop(st);
    inner.wake.notify_waiters();
    (
        200,
        json!({"prompt_id": id, "number": number, "node_errors": node_errors}),
    )
}

// ------------------------------------------------------------------------------------------
// Execution
// ------------------------------------------------------------------------------------------

#[derive(Clone)]
enum Val {
    Images(Vec<image::RgbImage>),
    Int(i64),
    Latent(u32, u32, u32),
    Other,
}

struct Failure {
    kind: &'static str,
    message: String,
}

async fn executor(inner: Arc<Inner>) {
    loop {
        let item = loop {
            let notified = inner.wake.notified();
            {
                let mut st = inner.st.lock().unwrap();
                if !st.pending.is_empty() {
                    st.pending.sort_by(|a, b| a.number.total_cmp(&b.number));
                    let item = st.pending.remove(0);
                    st.running = Some((item.clone(), String::new()));
                    // An interrupt sent while idle is cleared when the next execution starts.
                    st.interrupt = false;
                    let q = remaining(&st);
                    broadcast(
                        &st,
                        &json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": q}}}}),
                    );
                    break item;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        };
        run_prompt(&inner, item).await;
    }
}

async fn run_prompt(inner: &Arc<Inner>, item: QItem) {
    let pid = item.id.clone();
    let client = item.extra["client_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let prompt = item.prompt.as_object().cloned().unwrap_or_default();
    let send = |msg: Value| {
        let st = inner.st.lock().unwrap();
        if client.is_empty() {
            if matches!(
                msg["type"].as_str(),
                Some("progress_state" | "execution_interrupted" | "progress")
            ) {
                broadcast(&st, &msg);
            }
        } else {
            send_to(&st, &client, &msg);
        }
    };
    let mut messages: Vec<Value> = Vec::new();
    let start = json!({"prompt_id": pid, "timestamp": now_ms()});
    send(json!({"type": "execution_start", "data": start}));
    messages.push(json!(["execution_start", start]));
    let mut order = Vec::new();
    for o in &item.outputs {
        deps(&prompt, o, &mut order);
    }
    let cache_key = format!("{}|{:?}", item.prompt, item.outputs);
    let cached = inner.st.lock().unwrap().cache.get(&cache_key).cloned();
    let mut outputs = Map::new();
    let mut meta = Map::new();
    for n in &order {
        meta.insert(
            n.clone(),
            json!({"node_id": n, "display_node": n, "parent_node": null, "real_node_id": n}),
        );
    }
    let mut status_str = "success";
    if let Some(cached) = cached {
        let data =
            json!({"nodes": sorted_ids(order.iter()), "prompt_id": pid, "timestamp": now_ms()});
        send(json!({"type": "execution_cached", "data": data}));
        messages.push(json!(["execution_cached", data]));
        for (node, out) in &cached {
            send(
                json!({"type": "executed", "data": {"node": node, "display_node": node, "output": out, "prompt_id": pid}}),
            );
            send(
                json!({"type": "progress_state", "data": {"prompt_id": pid, "nodes": {node.clone(): {"value": 1, "max": 1, "state": "finished", "node_id": node, "prompt_id": pid, "display_node_id": node, "parent_node_id": null, "real_node_id": node}}}}),
            );
        }
        outputs = cached;
    } else {
        let data = json!({"nodes": [], "prompt_id": pid, "timestamp": now_ms()});
        send(json!({"type": "execution_cached", "data": data}));
        messages.push(json!(["execution_cached", data]));
        let mut values: HashMap<String, Vec<Val>> = HashMap::new();
        let mut states: BTreeMap<String, Value> = BTreeMap::new();
        let mut executed: Vec<String> = Vec::new();
        let state = |node: &str, v: f64, m: f64, s: &str| json!({"value": v, "max": m, "state": s, "node_id": node, "prompt_id": pid, "display_node_id": node, "parent_node_id": null, "real_node_id": node});
        for node in &order {
            states.insert(node.clone(), state(node, 0.0, 1.0, "running"));
            send(json!({"type": "progress_state", "data": {"prompt_id": pid, "nodes": states}}));
            send(
                json!({"type": "executing", "data": {"node": node, "display_node": node, "prompt_id": pid}}),
            );
            if let Some((_, cur)) = inner.st.lock().unwrap().running.as_mut() {
                *cur = node.clone();
            }
            // Hold point, and the interrupt check at the node boundary.
            let mut hold = inner.hold.subscribe();
            loop {
                let interrupted = inner.st.lock().unwrap().interrupt;
                if interrupted || !*hold.borrow() {
                    break;
                }
                let notified = inner.wake.notified();
                tokio::select! {
                    _ = hold.changed() => {}
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            let class_type = prompt[node]["class_type"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if std::mem::take(&mut inner.st.lock().unwrap().interrupt) {
                let data = json!({"prompt_id": pid, "node_id": node, "node_type": class_type, "executed": executed, "timestamp": now_ms()});
                send(json!({"type": "execution_interrupted", "data": data}));
                messages.push(json!(["execution_interrupted", data]));
                status_str = "error";
                outputs.clear();
                break;
            }
            match exec_node(
                inner,
                &pid,
                node,
                &class_type,
                &prompt[node]["inputs"],
                &values,
                &send,
            ) {
                Ok((vals, ui)) => {
                    values.insert(node.clone(), vals);
                    if let Some(ui) = ui {
                        send(
                            json!({"type": "executed", "data": {"node": node, "display_node": node, "output": ui, "prompt_id": pid}}),
                        );
                        outputs.insert(node.clone(), ui);
                    }
                    executed.push(node.clone());
                    states.insert(node.clone(), state(node, 1.0, 1.0, "finished"));
                    send(
                        json!({"type": "progress_state", "data": {"prompt_id": pid, "nodes": states}}),
                    );
                }
                Err(f) => {
                    let data = json!({"prompt_id": pid, "node_id": node, "node_type": class_type, "executed": executed,
                        "exception_message": f.message, "exception_type": f.kind, "traceback": ["  File \"execution.py\", line 496, in execute\n"],
                        "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms()});
                    send(json!({"type": "execution_error", "data": data}));
                    messages.push(json!(["execution_error", data]));
                    status_str = "error";
                    outputs.clear();
                    break;
                }
            }
        }
    }
    if status_str == "success" {
        let data = json!({"prompt_id": pid, "timestamp": now_ms()});
        send(json!({"type": "execution_success", "data": data}));
        messages.push(json!(["execution_success", data]));
    }
    {
        let mut st = inner.st.lock().unwrap();
        if status_str == "success" {
            st.cache.insert(cache_key, outputs.clone());
        }
        st.history.insert(pid.clone(), json!({
            "prompt": item.json(),
            "outputs": outputs,
            "status": {"status_str": status_str, "completed": status_str == "success", "messages": messages},
            "meta": meta,
        }));
        st.running = None;
        let q = remaining(&st);
        broadcast(
            &st,
            &json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": q}}}}),
        );
    }
    send(json!({"type": "executing", "data": {"node": null, "prompt_id": pid}}));
}

fn next_file(dir: &Path, prefix: &str, ext: &str) -> String {
    let mut n = 1;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&format!("{prefix}_"))
                && let Some(num) = rest.split('_').next().and_then(|s| s.parse::<u32>().ok())
            {
                n = n.max(num + 1);
            }
        }
    }
    format!("{prefix}_{n:05}_.{ext}")
}

#[allow(clippy::type_complexity)]
fn exec_node(
    inner: &Inner,
    pid: &str,
    node: &str,
    class_type: &str,
    inputs: &Value,
    values: &HashMap<String, Vec<Val>>,
    send: &dyn Fn(Value),
) -> Result<(Vec<Val>, Option<Value>), Failure> {
    let get = |name: &str| -> Val {
        let v = &inputs[name];
        if let Some(l) = v.as_array() {
            let src = l[0].as_str().unwrap_or_default();
            let slot = l[1].as_u64().unwrap_or(0) as usize;
            return values
                .get(src)
                .and_then(|o| o.get(slot))
                .cloned()
                .unwrap_or(Val::Other);
        }
        match v {
            Value::Number(n) => Val::Int(n.as_f64().unwrap_or(0.0) as i64),
            Value::String(s) => s.trim().parse::<i64>().map(Val::Int).unwrap_or(Val::Other),
            _ => Val::Other,
        }
    };
    let int = |name: &str| match get(name) {
        Val::Int(i) => i,
        _ => 0,
    };
    let images = |name: &str| match get(name) {
        Val::Images(v) => v,
        _ => Vec::new(),
    };
    let string = |name: &str| inputs[name].as_str().unwrap_or_default().to_owned();
    let save = |kind: &str, imgs: &[image::RgbImage], prefix: &str| -> Value {
        let (sub, base) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let dir = inner.dir.join(kind).join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        let files: Vec<Value> = imgs
            .iter()
            .map(|img| {
                let name = next_file(&dir, base, "png");
                img.save(dir.join(&name)).unwrap();
                json!({"filename": name, "subfolder": sub, "type": kind})
            })
            .collect();
        json!({"images": files})
    };
    let out = match class_type {
        "EmptyImage" => {
            let c = int("color") as u32;
            let px = image::Rgb([(c >> 16) as u8, (c >> 8) as u8, c as u8]);
            let img = image::RgbImage::from_pixel(int("width") as u32, int("height") as u32, px);
            (
                vec![Val::Images(vec![img; int("batch_size").max(1) as usize])],
                None,
            )
        }
        "LoadImage" => {
            let path = inner.dir.join("input").join(string("image"));
            let img = image::open(&path).map_err(|_| Failure {
                kind: "PIL.UnidentifiedImageError",
                message: format!("cannot identify image file '{}'\n", path.display()),
            })?;
            (vec![Val::Images(vec![img.to_rgb8()]), Val::Other], None)
        }
        "ImageInvert" => {
            let mut v = images("image");
            for img in &mut v {
                image::imageops::invert(img);
            }
            (vec![Val::Images(v)], None)
        }
        "ImageBlur" => (vec![Val::Images(images("image"))], None),
        "ImageScale" => {
            let (w, h) = (int("width") as u32, int("height") as u32);
            let v = images("image")
                .iter()
                .map(|i| {
                    image::imageops::resize(
                        i,
                        w.max(1),
                        h.max(1),
                        image::imageops::FilterType::Nearest,
                    )
                })
                .collect();
            (vec![Val::Images(v)], None)
        }
        "GetImageSize" => {
            let v = images("image");
            let (w, h) = v.first().map_or((0, 0), |i| i.dimensions());
            let text = format!("width: {w}, height: {h}\n batch size: {}", v.len());
            let mut frame = 3u32.to_be_bytes().to_vec();
            frame.extend((node.len() as u32).to_be_bytes());
            frame.extend(node.as_bytes());
            frame.extend(text.as_bytes());
            let st = inner.st.lock().unwrap();
            for (_, tx) in st.sockets.values() {
                let _ = tx.send(Message::Binary(frame.clone().into()));
            }
            (
                vec![
                    Val::Int(w as i64),
                    Val::Int(h as i64),
                    Val::Int(v.len() as i64),
                ],
                None,
            )
        }
        "CheckpointLoaderSimple" => (vec![Val::Other, Val::Other, Val::Other], None),
        "CLIPTextEncode" => (vec![Val::Other], None),
        "EmptyLatentImage" => (
            vec![Val::Latent(
                int("width") as u32,
                int("height") as u32,
                int("batch_size") as u32,
            )],
            None,
        ),
        "KSampler" => {
            let steps = int("steps");
            for i in 1..=steps {
                send(
                    json!({"type": "progress", "data": {"value": i, "max": steps, "prompt_id": pid, "node": node}}),
                );
            }
            (vec![get("latent_image")], None)
        }
        "VAEDecode" => {
            let (w, h, b) = match get("samples") {
                Val::Latent(w, h, b) => (w, h, b),
                _ => (64, 64, 1),
            };
            let img = image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 200]));
            (vec![Val::Images(vec![img; b.max(1) as usize])], None)
        }
        "VAEEncode" => {
            let v = images("pixels");
            let (w, h) = v.first().map_or((64, 64), |i| i.dimensions());
            (vec![Val::Latent(w, h, v.len().max(1) as u32)], None)
        }
        "SaveImage" => (
            vec![],
            Some(save(
                "output",
                &images("images"),
                &string("filename_prefix"),
            )),
        ),
        "PreviewImage" => (
            vec![],
            Some(save("temp", &images("images"), "ComfyUI_temp_fake")),
        ),
        "SaveWEBM" => {
            let prefix = string("filename_prefix");
            let (sub, base) = prefix.rsplit_once('/').unwrap_or(("", &prefix));
            let dir = inner.dir.join("output").join(sub);
            std::fs::create_dir_all(&dir).unwrap();
            let name = next_file(&dir, base, "webm");
            let frames = images("images");
            let mut bytes = vec![0x1a, 0x45, 0xdf, 0xa3];
            for f in &frames {
                bytes.extend_from_slice(&f.as_raw()[..f.as_raw().len().min(1024)]);
            }
            std::fs::write(dir.join(&name), bytes).unwrap();
            (
                vec![],
                Some(
                    json!({"images": [{"filename": name, "subfolder": sub, "type": "output"}], "animated": [true]}),
                ),
            )
        }
        "PreviewAny" => {
            let text = match get("source") {
                Val::Int(i) => i.to_string(),
                _ => inputs["source"]
                    .as_str()
                    .map_or_else(|| inputs["source"].to_string(), str::to_owned),
            };
            (vec![], Some(json!({"text": [text]})))
        }
        other => {
            return Err(Failure {
                kind: "NotImplementedError",
                message: format!("the fake has no executor for {other}"),
            });
        }
    };
    Ok(out)
}
