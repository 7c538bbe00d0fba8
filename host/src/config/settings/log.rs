//! `[log]`: log level and line format, trace export, and their defaults.

use serde::{Deserialize, Serialize};

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// Level or `tracing` filter (`info`, `debug`, `info,aihost=debug`). Default `info`.
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// OTLP/HTTP traces endpoint (`http://127.0.0.1:4318/v1/traces`) spans are exported to.
    /// None or empty (the default): no trace export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans. Default `aihost`.
    pub otlp_service_name: String,
}

impl LogConfig {
    /// The OTLP endpoint when trace export is on (set and not blank).
    pub(crate) fn otlp(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
            otlp_endpoint: None,
            otlp_service_name: "aihost".to_owned(),
        }
    }
}
