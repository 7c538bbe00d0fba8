//! `[queue]`: the durable task queue's settings (backend, lease, retries) and their defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Queue backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum QueueType {
    /// A local SQLite file (`queue.path`): one machine.
    #[default]
    Sqlite,
    /// A PostgreSQL server (`queue.url`): several API and consumer processes.
    Postgres,
}

/// `[queue]`: the durable task queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QueueConfig {
    /// Backend (TOML key `type`): `sqlite` (default) or `postgres`.
    #[serde(rename = "type")]
    pub kind: QueueType,
    /// SQLite database file. Default `data/aihost.db`.
    pub path: PathBuf,
    /// PostgreSQL URL (`postgres://user:pass@host/db`); required when `type = "postgres"`.
    pub url: Option<String>,
    /// Seconds a consumer holds a task before it returns to the queue unless renewed. Default 30.
    pub lease_secs: u64,
    /// Milliseconds between queue polls when idle. Default 500.
    pub poll_interval_ms: u64,
    /// Attempts per task unless the submit says otherwise. Default 3.
    pub default_max_attempts: u32,
    /// Most pending tasks; above it submits get 429. Default 0: unlimited.
    pub max_pending: u64,
    /// First retry delay in milliseconds, doubled per attempt. Default 1000.
    pub backoff_base_ms: u64,
    /// Longest retry delay in milliseconds. Default 300000 (5 minutes).
    pub backoff_max_ms: u64,
    /// PostgreSQL: most connections of each process's pool (one more is held for LISTEN).
    /// Default 10.
    pub max_connections: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            kind: QueueType::Sqlite,
            path: PathBuf::from("data/aihost.db"),
            url: None,
            lease_secs: 30,
            poll_interval_ms: 500,
            default_max_attempts: 3,
            max_pending: 0,
            backoff_base_ms: 1000,
            backoff_max_ms: 300_000,
            max_connections: 10,
        }
    }
}
