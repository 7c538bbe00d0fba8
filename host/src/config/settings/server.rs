//! `[server]`: the HTTP API's settings and their defaults.

use serde::{Deserialize, Serialize};

use super::{GIB, MIB};

/// `[server]`: the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServerConfig {
    /// Socket address to listen on (`host:port`). Default `127.0.0.1:8000`.
    pub bind: String,
    /// Base URL clients reach the service at (for `/files/...` links). Default `http://` + bind;
    /// set it when binding to all interfaces or behind a proxy.
    pub public_url: Option<String>,
    /// Accepted API keys (`Authorization: Bearer` / `X-API-Key`). Empty: no authentication.
    pub api_keys: Vec<String>,
    /// Largest JSON request body, in bytes. Default 10 MiB.
    pub max_body_bytes: u64,
    /// Largest upload (`POST /api/uploads`), in bytes. Default 1 GiB.
    pub max_upload_bytes: u64,
    /// Seconds to let running requests and tasks finish on shutdown. Default 30.
    pub shutdown_grace_secs: u64,
    /// `GET /api/ready` answers 503 while more tasks than this are pending, so a load balancer
    /// or autoscaler backs off. 0 (the default): queue depth does not affect readiness.
    pub max_queue_depth: u64,
    /// Origins a browser page may call the API from (CORS), e.g. `https://app.example.com`;
    /// `*` allows any origin. Empty (the default): no CORS headers, cross-origin calls fail.
    pub cors_origins: Vec<String>,
    /// A second listen address (`host:port`) that serves only `GET /metrics`, without API
    /// keys, for a Prometheus on a private network. Empty (the default): none.
    pub metrics_bind: String,
    /// Seconds a client has to send a whole request head (request line and headers), counted
    /// from its first byte; slower senders are disconnected. Default 15.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may sit with no request in flight (a new connection that sends
    /// nothing, or a keep-alive connection between requests) before it is closed. Default 60.
    pub idle_timeout_secs: u64,
    /// Seconds a response may wait for a client that does not read (no byte accepted by the
    /// socket) before the connection is closed: a subscriber or download that stalls is dropped,
    /// not buffered. Default 60.
    pub send_timeout_secs: u64,
    /// Open connections at most. At the limit a new connection closes the one idle the longest;
    /// when none is idle it is refused. Lowered at start to the process's open-file limit minus
    /// 256 (kept for the database, storage and plugins). Default 10000.
    pub max_connections: u64,
    /// SSE and WebSocket subscribers at most, in this process; beyond it they are answered 503
    /// `too_many_streams`. Default 2048.
    pub max_streams: u64,
    /// Uploads (`POST /api/uploads`) streamed at once; beyond it 503 `too_many_uploads` with
    /// `Retry-After`. Each streams through a fixed buffer. Default 32.
    pub max_concurrent_uploads: u64,
    /// With `GET /api/tasks?include=input`, a page stops early (with a `next_cursor`) once the
    /// inputs it holds reach this many bytes. Default 32 MiB.
    pub max_list_input_bytes: u64,
    /// Most bytes of outputs a create with `outputs=base64` answers inline (all outputs
    /// together, before base64); above it the answer is 413 `inline_outputs_too_large`, naming
    /// the task and its output URLs. Default 10 MiB.
    pub max_inline_output_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:8000".to_owned(),
            public_url: None,
            api_keys: Vec::new(),
            max_body_bytes: 10 * MIB,
            max_upload_bytes: GIB,
            shutdown_grace_secs: 30,
            max_queue_depth: 0,
            cors_origins: Vec::new(),
            metrics_bind: String::new(),
            header_read_timeout_secs: 15,
            idle_timeout_secs: 60,
            send_timeout_secs: 60,
            max_connections: 10_000,
            max_streams: 2048,
            max_concurrent_uploads: 32,
            max_list_input_bytes: 32 * MIB,
            max_inline_output_bytes: 10 * MIB,
        }
    }
}
