//! One ComfyUI instance: its HTTP calls and its one WebSocket.
//!
//! Protocol facts (captured from ComfyUI 0.3.64, see the transcripts in
//! `tests/fixtures/comfyui/`): every route is also served under `/api/`; the socket at
//! `/ws?clientId=ID` carries every execution message for prompts queued with that
//! `client_id`, plus broadcasts (`status`, binary TEXT frames, and for prompts without a
//! client id `progress_state`); a second socket with the same client id makes the server drop
//! the first registration *and* the second when the first closes, so the old socket is always
//! fully dropped before reconnecting; a dying server sends no close frame.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aihost_plugin_api::{PluginError, codes};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_tungstenite::tungstenite::Message;

/// Outputs up to this size (by `Content-Length`) are downloaded whole, larger ones streamed.
const SMALL_OUTPUT: u64 = 8 << 20;

/// What the socket tells a waiting task.
#[derive(Debug, Clone)]
pub enum Event {
    /// A JSON message for the task's prompt: (`type`, `data`).
    Message(String, Value),
    /// The socket went down: poll `/history` until it is back.
    Disconnected,
    /// The socket is (back) up: check `/history` once for anything missed.
    Connected,
}

/// One ComfyUI server.
pub struct Instance {
    /// Base URL without a trailing slash.
    pub url: String,
    client_id: String,
    http: reqwest::Client,
    listeners: Mutex<HashMap<String, mpsc::UnboundedSender<Event>>>,
    /// Preview receivers by prompt id (tasks with `previews: true`), and our prompt running
    /// now, to which a preview frame without a prompt id belongs (`previews.rs`).
    previews: Mutex<crate::previews::Routes>,
    connected: AtomicBool,
    /// Successful WebSocket handshakes so far.
    pub connections: AtomicU64,
    /// Prompts of ours queued or running here.
    pub inflight: AtomicUsize,
    last_error: Mutex<Option<String>>,
    last_ok: Mutex<Option<Instant>>,
    ws_ready: tokio::sync::Notify,
    /// When the socket last carried a message (the stall watchdog reads it).
    last_message: Mutex<Option<Instant>>,
}

/// Maps a reqwest failure to a retryable `engine_unavailable`.
pub fn unavailable(url: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::retryable(
        codes::ENGINE_UNAVAILABLE,
        format!("ComfyUI at {url} is unreachable: {e}"),
    )
}

impl Instance {
    /// An instance; call [`Instance::spawn_socket`] to start its WebSocket.
    pub fn new(url: &str, client_id: &str, request_timeout: Duration) -> Arc<Instance> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(request_timeout)
            .build()
            .expect("HTTP client");
        Arc::new(Instance {
            url: url.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            http,
            listeners: Mutex::default(),
            previews: Mutex::default(),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            last_ok: Mutex::new(None),
            ws_ready: tokio::sync::Notify::new(),
            last_message: Mutex::new(None),
        })
    }

    /// Whether the socket is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Up now, or answered HTTP within `within`.
    pub fn seems_reachable(&self, within: Duration) -> bool {
        self.is_connected()
            || self
                .last_ok
                .lock()
                .unwrap()
                .is_some_and(|t| t.elapsed() < within)
    }

    /// When the socket last carried a message.
    pub fn last_message(&self) -> Option<Instant> {
        *self.last_message.lock().unwrap()
    }

    /// The last connection error, if the socket is down.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    fn mark(&self, ok: bool, err: Option<String>) {
        *self.last_ok.lock().unwrap() = ok.then(Instant::now);
        *self.last_error.lock().unwrap() = err;
    }

    /// Waits until the socket is up or `timeout` passes; answers whether it is up.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.ws_ready.notified();
            if self.is_connected() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_connected();
            }
        }
    }

    /// Routes the socket's messages for `prompt_id` to the returned receiver.
    pub fn listen(&self, prompt_id: &str) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.listeners
            .lock()
            .unwrap()
            .insert(prompt_id.to_owned(), tx);
        rx
    }

    /// Stops routing messages for `prompt_id`.
    pub fn unlisten(&self, prompt_id: &str) {
        self.listeners.lock().unwrap().remove(prompt_id);
        self.unlisten_previews(prompt_id);
    }

    /// Routes the preview images of `prompt_id` to the returned receiver, until
    /// [`Instance::unlisten_previews`] (or `unlisten`).
    pub(crate) fn listen_previews(
        &self,
        prompt_id: &str,
    ) -> mpsc::UnboundedReceiver<crate::previews::Frame> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.previews
            .lock()
            .unwrap()
            .0
            .insert(prompt_id.to_owned(), tx);
        rx
    }

    /// Stops routing the previews of `prompt_id` (its receiver ends after those sent).
    pub(crate) fn unlisten_previews(&self, prompt_id: &str) {
        self.previews.lock().unwrap().0.remove(prompt_id);
    }

    /// A binary frame: a preview goes to its prompt's receiver (type 4 names the prompt;
    /// type 1 belongs to the prompt running now).
    fn route_binary(&self, frame: &[u8]) {
        let Some(p) = crate::previews::parse(frame) else {
            return;
        };
        let previews = self.previews.lock().unwrap();
        let Some(pid) = p.prompt_id.as_ref().or(previews.1.as_ref()) else {
            return;
        };
        if let Some(tx) = previews.0.get(pid) {
            let _ = tx.send((p.content_type, p.image));
        }
    }

    fn broadcast(&self, ev: Event) {
        for tx in self.listeners.lock().unwrap().values() {
            let _ = tx.send(ev.clone());
        }
    }

    fn ws_url(&self) -> String {
        let base = if let Some(rest) = self.url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.url.clone()
        };
        format!("{base}/ws?clientId={}", self.client_id)
    }

    /// Runs the instance's one WebSocket for the life of the plugin: connect, route, and on
    /// any failure drop the old socket completely, back off, reconnect.
    pub fn spawn_socket(self: &Arc<Self>, max_backoff: Duration, idle: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match tokio_tungstenite::connect_async_with_config(
                    this.ws_url(),
                    Some(socket_config()),
                    false,
                )
                .await
                {
                    Ok((ws, _)) => {
                        backoff = Duration::from_millis(100);
                        this.connections.fetch_add(1, Ordering::Relaxed);
                        this.connected.store(true, Ordering::Release);
                        this.mark(true, None);
                        this.ws_ready.notify_waiters();
                        this.broadcast(Event::Connected);
                        tracing::info!(url = %this.url, "ComfyUI socket connected");
                        let reason = this.read_socket(ws, idle).await;
                        if reason.contains("stalled") {
                            // We closed a socket the server may not have processed yet; a
                            // new one with the same client id must not register before the
                            // server drops the old one (ComfyUI would then drop both).
                            backoff = backoff.max(Duration::from_secs(2));
                        }
                        // The socket is dropped by now: no second registration can overlap.
                        this.connected.store(false, Ordering::Release);
                        this.mark(false, Some(reason.clone()));
                        this.broadcast(Event::Disconnected);
                        tracing::warn!(url = %this.url, %reason, "ComfyUI socket lost");
                    }
                    Err(e) => {
                        this.mark(false, Some(e.to_string()));
                        tracing::debug!(url = %this.url, error = %e, "ComfyUI socket connect failed");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            }
        });
    }

    /// Reads until the socket fails, closes, or stays silent through a ping; answers why.
    async fn read_socket(
        &self,
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        idle: Duration,
    ) -> String {
        let (mut sink, mut stream) = ws.split();
        let mut pinged = false;
        loop {
            match tokio::time::timeout(idle, stream.next()).await {
                Err(_) if !pinged => {
                    // Silent for a while: a healthy server answers a ping at once.
                    pinged = true;
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return "ping failed".into();
                    }
                }
                Err(_) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
                    return "no answer to a ping: the socket stalled".into();
                }
                Ok(None) => return "the server closed the connection".into(),
                Ok(Some(Err(e))) => return e.to_string(),
                Ok(Some(Ok(msg))) => {
                    pinged = false;
                    *self.last_message.lock().unwrap() = Some(Instant::now());
                    match msg {
                        Message::Text(t) => self.route(t.as_str()),
                        Message::Close(_) => return "the server sent a close frame".into(),
                        // Binary frames: TEXT (broadcast, ignored) and previews.
                        Message::Binary(b) => self.route_binary(&b),
                        _ => {}
                    }
                }
            }
        }
    }

    fn route(&self, text: &str) {
        let Ok(mut v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let kind = v["type"].as_str().unwrap_or_default().to_owned();
        // Taken, not cloned: a progress frame's `data` holds the state of every node.
        let data = v.get_mut("data").map(Value::take).unwrap_or(Value::Null);
        // Messages without our prompt id (`status`, the reconnect-time `executing`) are
        // never attributed to a task.
        let Some(pid) = data.get("prompt_id").and_then(Value::as_str) else {
            return;
        };
        // Which prompt runs now, for the preview frames that do not say.
        match (kind.as_str(), data.get("node")) {
            ("execution_start", _) | ("executing", Some(Value::String(_))) => {
                self.previews.lock().unwrap().1 = Some(pid.to_owned());
            }
            ("executing", Some(Value::Null)) | ("execution_error" | "execution_interrupted", _) => {
                let mut p = self.previews.lock().unwrap();
                if p.1.as_deref() == Some(pid) {
                    p.1 = None;
                }
            }
            _ => {}
        }
        if let Some(tx) = self.listeners.lock().unwrap().get(pid) {
            let _ = tx.send(Event::Message(kind, data));
        }
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, PluginError> {
        match req.send().await {
            Ok(r) => {
                self.mark(true, None);
                Ok(r)
            }
            Err(e) => {
                self.mark(false, Some(e.to_string()));
                Err(unavailable(&self.url, e))
            }
        }
    }

    async fn json(&self, resp: reqwest::Response) -> Result<Value, PluginError> {
        let status = resp.status();
        let text = resp.text().await.map_err(|e| unavailable(&self.url, e))?;
        if !status.is_success() {
            return Err(PluginError::retryable(
                codes::ENGINE_ERROR,
                format!("ComfyUI answered {status}: {}", text.trim()),
            ));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            PluginError::fatal(
                codes::ENGINE_ERROR,
                format!("ComfyUI answered invalid JSON: {e}"),
            )
        })
    }

    /// GET a JSON route.
    pub async fn get_json(&self, path: &str) -> Result<Value, PluginError> {
        let r = self.send(self.http.get(self.endpoint(path))).await?;
        self.json(r).await
    }

    /// POST JSON to a route.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, PluginError> {
        let r = self
            .send(self.http.post(self.endpoint(path)).json(body))
            .await?;
        self.json(r).await
    }

    /// `POST /prompt` with our client id and our own prompt id. Answers the raw status and
    /// body so the caller can read validation errors.
    pub async fn queue_prompt(
        &self,
        graph: &Value,
        prompt_id: &str,
    ) -> Result<(u16, Value), PluginError> {
        let body = json!({"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id});
        let r = self
            .send(self.http.post(self.endpoint("/prompt")).json(&body))
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| unavailable(&self.url, e))?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    /// `GET /history/{id}`: the entry, or `None` when ComfyUI has none (yet).
    pub async fn history(&self, prompt_id: &str) -> Result<Option<Value>, PluginError> {
        let v = self.get_json(&format!("/history/{prompt_id}")).await?;
        Ok(v.get(prompt_id).cloned())
    }

    /// Whether the prompt is running or pending in ComfyUI's queue.
    pub async fn in_queue(&self, prompt_id: &str) -> Result<bool, PluginError> {
        let q = self.get_json("/queue").await?;
        let has = |k: &str| {
            q[k].as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|it| it.get(1).and_then(Value::as_str) == Some(prompt_id))
            })
        };
        Ok(has("queue_running") || has("queue_pending"))
    }

    /// Removes a pending prompt and interrupts it if it runs (an interrupt naming a prompt
    /// that is not running is ignored by ComfyUI).
    pub async fn cancel(&self, prompt_id: &str) -> Result<(), PluginError> {
        self.post_json("/queue", &json!({"delete": [prompt_id]}))
            .await?;
        self.post_json("/interrupt", &json!({"prompt_id": prompt_id}))
            .await?;
        Ok(())
    }

    /// Streams a local file to `POST /upload/image` in `subfolder`; answers the name to put
    /// in the graph (`subfolder/name`).
    pub async fn upload(&self, path: &Path, subfolder: &str) -> Result<String, PluginError> {
        let file = tokio::fs::File::open(path).await.map_err(|e| {
            PluginError::fatal(
                codes::INTERNAL,
                format!("cannot open {}: {e}", path.display()),
            )
        })?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("input.png")
            .to_owned();
        let mime = mime_guess::from_path(path)
            .first_or_octet_stream()
            .to_string();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(name)
            .mime_str(&mime)
            .map_err(|e| PluginError::fatal(codes::INTERNAL, e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("subfolder", subfolder.to_owned())
            .text("type", "input")
            .text("overwrite", "true");
        let r = self
            .send(
                self.http
                    .post(self.endpoint("/upload/image"))
                    .multipart(form),
            )
            .await?;
        let v = self.json(r).await?;
        let name = v["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(PluginError::fatal(
                codes::ENGINE_ERROR,
                format!("ComfyUI's upload answer has no name: {v}"),
            ));
        }
        let sub = v["subfolder"].as_str().unwrap_or_default();
        Ok(if sub.is_empty() {
            name.to_owned()
        } else {
            format!("{sub}/{name}")
        })
    }

    /// Streams `GET /view` of one output into `dest`; answers its size.
    pub async fn download(&self, file: &Value, dest: &Path) -> Result<u64, PluginError> {
        let q = [
            ("filename", file["filename"].as_str().unwrap_or_default()),
            ("subfolder", file["subfolder"].as_str().unwrap_or_default()),
            ("type", file["type"].as_str().unwrap_or("output")),
        ];
        let r = self
            .send(
                self.http.get(
                    url::Url::parse_with_params(&self.endpoint("/view"), q)
                        .map_err(|e| PluginError::fatal(codes::INTERNAL, e.to_string()))?,
                ),
            )
            .await?;
        if !r.status().is_success() {
            return Err(PluginError::retryable(
                codes::ENGINE_ERROR,
                format!("ComfyUI /view of {} answered {}", q[0].1, r.status()),
            ));
        }
        let io = |e: std::io::Error| {
            PluginError::fatal(
                codes::INTERNAL,
                format!("cannot write {}: {e}", dest.display()),
            )
        };
        if r.content_length().is_some_and(|n| n <= SMALL_OUTPUT) {
            // A small file: read it whole and write it in one blocking call instead of a
            // blocking-pool round trip per chunk.
            let body = r.bytes().await.map_err(|e| unavailable(&self.url, e))?;
            let size = body.len() as u64;
            let path = dest.to_owned();
            // Its folder is made in the same blocking call (one round trip per output).
            tokio::task::spawn_blocking(move || {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&path, &body)
            })
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)?;
            return Ok(size);
        }
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let mut out = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut stream = r.bytes_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| unavailable(&self.url, e))?;
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        Ok(size)
    }
}

/// The WebSocket's settings: tungstenite's defaults but a read buffer of [`WS_READ_BUFFER`].
///
/// tungstenite zero-fills its whole free read buffer (128 KiB by default) before every read
/// from the socket; ComfyUI sends a few small JSON frames per prompt, so that zeroing was 8 %
/// of the service's instructions per task (callgrind). A larger frame (a preview image) still
/// fits: the buffer grows to the frame's size.
fn socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
}

/// Read buffer of the ComfyUI WebSocket (see [`socket_config`]).
const WS_READ_BUFFER: usize = 16 * 1024;
