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
        }
    }
}
