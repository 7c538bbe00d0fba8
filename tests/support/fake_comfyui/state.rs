//! The fake ComfyUI's shared state: queue, running prompt, history, sockets by client id and the
//! execution cache, behind one lock; plus the helpers that send to sockets. Separate so the
//! routes, the WebSocket handler and the executor share one definition of it.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use poem::web::websocket::Message;
use serde_json::{Map, Value, json};
use tokio::{
    sync::{Notify, mpsc, watch},
    task::AbortHandle,
};

use super::{Logged, server::Conns};

/// One queued prompt: ComfyUI's 5-tuple `[number, prompt_id, prompt, extra_data, outputs]`.
#[derive(Clone)]
pub(crate) struct QItem {
    /// The number as answered (an int from the counter, a float when the client chose it).
    pub(crate) number: Value,
    pub(crate) id: String,
    pub(crate) prompt: Value,
    pub(crate) extra: Value,
    pub(crate) outputs: Vec<String>,
}

impl QItem {
    pub(crate) fn json(&self) -> Value {
        json!([self.number, self.id, self.prompt, self.extra, self.outputs])
    }

    /// The queue order key (ComfyUI's heap orders by number).
    pub(crate) fn order(&self) -> f64 {
        self.number.as_f64().unwrap_or(0.0)
    }

    pub(crate) fn client_id(&self) -> Option<&str> {
        self.extra.get("client_id").and_then(Value::as_str)
    }
}

/// A registered socket: connection number and its outgoing queue.
pub(crate) type Socket = (u64, mpsc::UnboundedSender<Message>);

/// Everything behind the one lock.
#[derive(Default)]
pub(crate) struct St {
    /// `number` for the next prompt without one; advances on rejected prompts too.
    pub(crate) counter: i64,
    pub(crate) pending: Vec<QItem>,
    /// The running prompt and the node it is on (`""` before the first).
    pub(crate) running: Option<(QItem, String)>,
    /// History in insertion order (ComfyUI's dict; a repeated id keeps its place).
    pub(crate) history: Vec<(String, Value)>,
    pub(crate) sockets: HashMap<String, Socket>,
    pub(crate) interrupt: bool,
    /// Outputs of successful prompts by prompt graph and outputs (a rerun is served from here).
    pub(crate) cache: HashMap<String, Map<String, Value>>,
    /// Test record: the most prompts queued or running at once since the (re)start.
    pub(crate) max_remaining: usize,
    /// Sockets whose first message announced `supports_preview_metadata` (they get preview
    /// frames of type 4, the others type 1).
    pub(crate) preview_metadata: std::collections::HashSet<String>,
}

impl St {
    pub(crate) fn remaining(&self) -> usize {
        self.pending.len() + usize::from(self.running.is_some())
    }

    /// The `status` message every socket receives when the queue changes.
    pub(crate) fn status(&self) -> Value {
        json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": self.remaining()}}}})
    }

    pub(crate) fn broadcast_status(&self) {
        self.broadcast(&self.status());
    }

    pub(crate) fn broadcast(&self, msg: &Value) {
        self.broadcast_raw(&Message::Text(msg.to_string()));
    }

    pub(crate) fn broadcast_raw(&self, msg: &Message) {
        for (_, tx) in self.sockets.values() {
            let _ = tx.send(msg.clone());
        }
    }

    pub(crate) fn send_raw_to(&self, client: &str, msg: Message) {
        if let Some((_, tx)) = self.sockets.get(client) {
            let _ = tx.send(msg);
        }
    }

    pub(crate) fn send_to(&self, client: &str, msg: &Value) {
        if let Some((_, tx)) = self.sockets.get(client) {
            let _ = tx.send(Message::Text(msg.to_string()));
        }
    }

    pub(crate) fn history_entry(&self, id: &str) -> Option<&Value> {
        self.history.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    /// Writes an entry; a repeated id replaces the old entry in its place.
    pub(crate) fn put_history(&mut self, id: String, entry: Value) {
        match self.history.iter_mut().find(|(k, _)| *k == id) {
            Some(slot) => slot.1 = entry,
            None => self.history.push((id, entry)),
        }
    }
}

/// Model lists given by the test, by folder (kept across restarts).
pub(crate) type Models = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// The file extensions ComfyUI lists as models (`folder_paths.supported_pt_extensions`).
const MODEL_EXTENSIONS: &[&str] = &[
    "ckpt",
    "pt",
    "pt2",
    "bin",
    "pth",
    "safetensors",
    "pkl",
    "sft",
];

fn list_models(root: &std::path::Path, rel: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if e.path().is_dir() {
            list_models(root, &path, out);
        } else if name
            .rsplit_once('.')
            .is_some_and(|(_, ext)| MODEL_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
}

/// One run of the server (a restart makes a new one).
pub(crate) struct Inner {
    pub(crate) st: Mutex<St>,
    /// Wakes the executor (new prompt, interrupt).
    pub(crate) wake: Notify,
    /// Test hook: pause at node boundaries while true.
    pub(crate) hold: watch::Sender<bool>,
    pub(crate) ws_connections: AtomicU64,
    /// Sockets with a connection number up to this one are stalled (silent, unread).
    pub(crate) stalled_upto: AtomicU64,
    pub(crate) next_conn: AtomicU64,
    /// Set by `kill()`: every socket loop ends without a close frame.
    pub(crate) killed: AtomicBool,
    /// Latent previews on, as ComfyUI started with `--preview-method auto`: KSampler sends a
    /// binary preview frame after each step.
    pub(crate) previews: AtomicBool,
    pub(crate) log: Mutex<Vec<Logged>>,
    /// The folder holding `input`, `output` and `temp`.
    pub(crate) dir: PathBuf,
    pub(crate) tasks: Mutex<Vec<AbortHandle>>,
    /// Every open TCP connection, so `kill()` can drop them all.
    pub(crate) conns: Arc<Conns>,
    /// Model lists the test gave.
    pub(crate) models: Models,
    /// The next output file number by folder and prefix (see `executor::save_next`).
    pub(crate) numbers: super::executor::Numbers,
}

impl Inner {
    pub(crate) fn new(dir: PathBuf, models: Models) -> Inner {
        Inner {
            st: Mutex::default(),
            wake: Notify::new(),
            hold: watch::channel(false).0,
            ws_connections: AtomicU64::new(0),
            stalled_upto: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            killed: AtomicBool::new(false),
            previews: AtomicBool::new(false),
            log: Mutex::default(),
            dir,
            tasks: Mutex::default(),
            conns: Arc::default(),
            models,
            numbers: Mutex::default(),
        }
    }

    /// The model files of `folder`: the test's list, else the files under `models/{folder}`
    /// when the fake's folder has `models/`, else the one fake checkpoint.
    pub(crate) fn model_list(&self, folder: &str) -> Vec<String> {
        if let Some(l) = self.models.lock().unwrap().get(folder) {
            return l.clone();
        }
        let root = self.dir.join("models");
        if root.is_dir() {
            let mut out = Vec::new();
            list_models(&root.join(folder), "", &mut out);
            out.sort();
            return out;
        }
        if folder == "checkpoints" {
            return super::nodes::CHECKPOINTS
                .iter()
                .map(|c| (*c).to_owned())
                .collect();
        }
        Vec::new()
    }

    pub(crate) fn st(&self) -> std::sync::MutexGuard<'_, St> {
        self.st.lock().unwrap()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh 32-hex id (uuid4().hex's shape), from the clock and a counter.
pub(crate) fn hex_id(salt: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u128::from(salt).rotate_left(64);
    format!("{mixed:032x}")
}

/// A uuid4-shaped prompt id.
pub(crate) fn uuid(salt: u64) -> String {
    let h = hex_id(salt);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Python's truthiness of a JSON value.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}
