//! Replay helpers for the fidelity test: loading a recorded transcript
//! (`tests/fixtures/comfyui/`), sending its requests to the fake, a WebSocket client that
//! records frames in the transcript's form, and the comparisons (JSON shape, frame sequences).
//! Separate from the scenarios so each scenario reads as the transcript it replays.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use aihost_tests::fake_comfyui::FakeComfy;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

pub const T: Duration = Duration::from_secs(30);

/// A recorded transcript.
pub struct Fixture {
    pub name: String,
    pub v: Value,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/comfyui")
            .join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        Fixture {
            name: name.to_owned(),
            v: serde_json::from_str(&text).unwrap(),
        }
    }

    /// The HTTP exchanges in order.
    pub fn http(&self) -> &[Value] {
        self.v["http"].as_array().unwrap()
    }

    /// The exchange whose label starts with `label`.
    pub fn ex(&self, label: &str) -> &Value {
        self.http()
            .iter()
            .find(|h| h["label"].as_str().unwrap().starts_with(label))
            .unwrap_or_else(|| panic!("{}: no exchange {label:?}", self.name))
    }

    /// The recorded socket named `name`.
    pub fn ws(&self, name: &str) -> &Value {
        self.v["ws"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("{}: no socket {name:?}", self.name))
    }
}

/// A response from the fake.
pub struct Got {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Recorded prompt ids → the fake's, for paths and bodies that name them.
#[derive(Default)]
pub struct Ids(pub HashMap<String, String>);

impl Ids {
    pub fn map(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (from, to) in &self.0 {
            out = out.replace(from.as_str(), to);
        }
        out
    }

    /// Learns the id pair from a `POST /prompt` exchange and the fake's answer.
    pub fn learn(&mut self, ex: &Value, got: &Got) {
        let answer: Value = serde_json::from_slice(&got.body).unwrap_or_default();
        if let (Some(rec), Some(fake)) = (
            ex["response"]["json"]["prompt_id"].as_str(),
            answer["prompt_id"].as_str(),
        ) {
            self.0.insert(rec.to_owned(), fake.to_owned());
        }
    }
}

/// Sends a recorded request (`request` of an exchange) to the fake. Multipart file bytes
/// are not recorded: `file` supplies them by file name.
pub async fn send(
    http: &reqwest::Client,
    fake: &FakeComfy,
    req: &Value,
    ids: &Ids,
    file: &dyn Fn(&str) -> Vec<u8>,
) -> Got {
    let method: reqwest::Method = req["method"].as_str().unwrap().parse().unwrap();
    let url = format!("{}{}", fake.url, ids.map(req["path"].as_str().unwrap()));
    let q: Vec<(String, String)> = req["query"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), ids.map(v.as_str().unwrap())))
        .collect();
    let mut b = http.request(method, reqwest::Url::parse_with_params(&url, &q).unwrap());
    for (k, v) in req["headers"].as_object().into_iter().flatten() {
        // The recording's server was on port 8188.
        let v = v
            .as_str()
            .unwrap()
            .replace(":8188", &format!(":{}", fake.port));
        b = b.header(k.as_str(), v);
    }
    if let Some(j) = req.get("json") {
        b = b.json(&serde_json::from_str::<Value>(&ids.map(&j.to_string())).unwrap());
    } else if let Some(raw) = req["raw_body"].as_str() {
        b = b.body(raw.to_owned());
    } else if req.get("multipart_files").is_some() || req.get("multipart_fields").is_some() {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in req["multipart_fields"].as_object().into_iter().flatten() {
            form = form.text(k.clone(), v.as_str().unwrap().to_owned());
        }
        for (k, f) in req["multipart_files"].as_object().into_iter().flatten() {
            let name = f["filename"].as_str().unwrap().to_owned();
            let part = reqwest::multipart::Part::bytes(file(&name))
                .file_name(name)
                .mime_str(f["content_type"].as_str().unwrap())
                .unwrap();
            form = form.part(k.clone(), part);
        }
        b = b.multipart(form);
    }
    let r = b.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.bytes().await.unwrap().to_vec();
    Got {
        status,
        content_type,
        headers,
        body,
    }
}

/// Keys that name things (node ids, prompt ids): such objects are maps, compared by their
/// values' shape.
fn id_like(k: &str) -> bool {
    k.chars().all(|c| c.is_ascii_digit())
        || (k.len() == 36 && k.matches('-').count() == 4)
        || (k.len() == 32 && k.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Compares JSON shape: the same keys (maps keyed by ids with other ids than recorded compared
/// by value shape), the same
/// types (any number matches any number), arrays element-wise when of equal length and
/// otherwise against the recording's first element.
pub fn shape(path: &str, want: &Value, got: &Value, errs: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let is_map = |m: &Map<String, Value>| !m.is_empty() && m.keys().all(|k| id_like(k));
            let same_keys = w.len() == g.len() && w.keys().all(|k| g.contains_key(k));
            if is_map(w) && (is_map(g) || g.is_empty()) && !same_keys {
                let first = w.values().next().unwrap();
                for (k, gv) in g {
                    shape(&format!("{path}.{k}"), first, gv, errs);
                }
                return;
            }
            for k in w.keys().filter(|k| !g.contains_key(*k)) {
                errs.push(format!("{path}: missing key {k:?}"));
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                errs.push(format!("{path}: extra key {k:?}"));
            }
            for (k, wv) in w {
                if let Some(gv) = g.get(k) {
                    shape(&format!("{path}.{k}"), wv, gv, errs);
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() == g.len() {
                for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                    shape(&format!("{path}[{i}]"), wv, gv, errs);
                }
            } else if let Some(first) = w.first() {
                for (i, gv) in g.iter().enumerate() {
                    shape(&format!("{path}[{i}]"), first, gv, errs);
                }
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => {}
        (w, g) => errs.push(format!("{path}: recorded {w}, got {g}")),
    }
}

pub fn assert_shape(what: &str, want: &Value, got: &Value) {
    let mut errs = Vec::new();
    shape("$", want, got, &mut errs);
    assert!(
        errs.is_empty(),
        "{what}: shape differs from the recording:\n  {}\ngot: {got}",
        errs.join("\n  ")
    );
}

/// Volatile values (ids, numbers, timestamps, Python tracebacks) replaced, for exact
/// comparison of the rest.
pub fn scrub(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "prompt_id" | "number" | "timestamp" | "traceback" | "sid" => json!("*"),
                        _ => scrub(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(scrub).collect()),
        other => other.clone(),
    }
}

/// Status, content type, the body (shape of JSON, exact text, magic bytes) and
/// `Content-Disposition` against the recorded response.
pub fn check_response(what: &str, rec: &Value, got: &Got) {
    assert_eq!(
        got.status,
        rec["status"].as_u64().unwrap() as u16,
        "{what}: status"
    );
    assert_eq!(
        got.content_type.as_deref(),
        rec["content_type"].as_str(),
        "{what}: content type"
    );
    if let Some(want) = rec.get("json").filter(|j| !j.is_string()) {
        assert_shape(what, want, &got.json());
    } else if let Some(text) = rec["text"].as_str() {
        assert_eq!(String::from_utf8_lossy(&got.body), text, "{what}: body");
    }
    if let Some(magic) = rec["magic_hex"].as_str() {
        // The signature (a RIFF size follows the first 4 bytes of a WebP).
        let n = if magic.starts_with("52494646") { 4 } else { 8 };
        let hex: String = got
            .body
            .iter()
            .take(n)
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, magic[..n * 2], "{what}: magic bytes");
    }
    if let Some(cd) = rec["other_headers"]["Content-Disposition"].as_str() {
        let got_cd = got
            .headers
            .get("content-disposition")
            .map(|v| v.to_str().unwrap());
        assert_eq!(got_cd, Some(cd), "{what}: Content-Disposition");
    }
}

/// A WebSocket client that records frames as the transcripts do.
pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pub frames: Vec<Value>,
    /// How the connection ended: `"close"` (close frame), `"lost"` (no close frame).
    pub ended: Option<&'static str>,
}

/// Opens `path` (with query) on the fake; `Err(status)` when the handshake is refused.
pub async fn connect(fake: &FakeComfy, path: &str, origin: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://127.0.0.1:{}{path}", fake.port)
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((stream, _)) => {
            let mut ws = Ws {
                stream,
                frames: Vec::new(),
                ended: None,
            };
            // The first `status` means the socket is registered.
            ws.until(|f| f["message"]["type"] == "status", T).await;
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket connect: {e}"),
    }
}

impl Ws {
    pub async fn send_json(&mut self, v: &Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Reads one frame into `frames`; false on timeout or when the connection ended.
    async fn read(&mut self, timeout: Duration) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let Ok(m) = tokio::time::timeout(timeout, self.stream.next()).await else {
            return false;
        };
        let frame = match m {
            Some(Ok(Message::Text(t))) => {
                json!({"frame": "text", "message": serde_json::from_str::<Value>(t.as_str()).unwrap()})
            }
            Some(Ok(Message::Binary(b))) => {
                let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
                let kind = u32_at(0);
                let mut f = json!({"frame": "binary", "event_type_u32_be": kind});
                if kind == 3 {
                    let len = u32_at(4) as usize;
                    f["text_event"] = json!({
                        "node_id": String::from_utf8_lossy(&b[8..8 + len]),
                        "text": String::from_utf8_lossy(&b[8 + len..]),
                    });
                }
                f
            }
            Some(Ok(Message::Close(_))) => {
                self.ended = Some("close");
                return false;
            }
            Some(Ok(_)) => return true,
            Some(Err(_)) | None => {
                self.ended = Some("lost");
                return false;
            }
        };
        self.frames.push(frame);
        true
    }

    /// Reads until a new frame satisfies `f` (panics after `timeout`).
    pub async fn until(&mut self, f: impl Fn(&Value) -> bool, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let before = self.frames.len();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                self.read(left).await,
                "socket: never got the frame; got {:?}",
                labels(&self.frames)
            );
            if self.frames.len() > before && self.frames.last().is_some_and(&f) {
                return;
            }
        }
    }

    /// Reads until `executing` null for `pid`.
    pub async fn until_done(&mut self, pid: &str) {
        self.until(
            |f| {
                f["message"]["type"] == "executing"
                    && f["message"]["data"]["node"].is_null()
                    && f["message"]["data"]["prompt_id"] == pid
            },
            T,
        )
        .await;
    }

    /// Reads until nothing arrives for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) {
        while self.read(quiet).await {}
    }

    pub async fn close(&mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// A frame's label: message type (with the queue length for `status`), `binary:N`, `close`.
pub fn label(f: &Value) -> String {
    match f["frame"].as_str().unwrap() {
        "text" => {
            let m = &f["message"];
            let t = m["type"].as_str().unwrap();
            if t == "status" {
                let q = &m["data"]["status"]["exec_info"]["queue_remaining"];
                let sid = if m["data"].get("sid").is_some() {
                    "+sid"
                } else {
                    ""
                };
                format!("status:{q}{sid}")
            } else {
                t.to_owned()
            }
        }
        "binary" => format!("binary:{}", f["event_type_u32_be"]),
        other => other.to_owned(),
    }
}

pub fn labels(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["frame"] != "close")
        .map(label)
        .collect()
}

/// Labels without the per-node messages (`progress_state`, `progress`, `executing` of a
/// node): how many nodes ran before an interrupt depends on timing, the rest does not.
pub fn milestones(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["frame"] != "close")
        .filter(|f| {
            let m = &f["message"];
            !(m["type"] == "progress_state"
                || m["type"] == "progress"
                || (m["type"] == "executing" && !m["data"]["node"].is_null()))
        })
        .map(label)
        .collect()
}

/// Every message's data has the shape of the first recorded message of its type.
pub fn assert_frame_shapes(what: &str, recorded: &[Value], got: &[Value]) {
    // The variants of a type: `status` with or without `sid`, `executing` of a node, null,
    // or on reconnect (no prompt id).
    let variant = |f: &Value| {
        let d = &f["message"]["data"];
        (
            f["message"]["type"].clone(),
            d.get("sid").is_some(),
            d["node"].is_null(),
            d.get("prompt_id").is_some(),
        )
    };
    for g in got.iter().filter(|f| f["frame"] == "text") {
        let t = &g["message"]["type"];
        if let Some(r) = recorded.iter().find(|r| variant(r) == variant(g)) {
            assert_shape(
                &format!("{what}: {t}"),
                &r["message"]["data"],
                &g["message"]["data"],
            );
        }
    }
}

/// The recorded frames of a socket.
pub fn frames(ws: &Value) -> Vec<Value> {
    ws["frames"].as_array().unwrap().clone()
}
