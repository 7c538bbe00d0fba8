//! The plugin's configuration: the `[plugin.config]` table of `plugins.toml`, the seed's
//! environment variables that override it, and the checks `init` runs on it.
//!
//! Separate from `lib.rs` so the settings an operator sees are in one place, apart from the
//! code that uses them.

use aihost_plugin_api::{PluginError, codes};
use serde::{Deserialize, Serialize};

use crate::error::fatal;

/// The plugin's configuration: the `[plugin.config]` table of `plugins.toml`.
///
/// The seed's environment variables override it: `COMFYUI_URL` (one URL, or several
/// separated by commas) replaces `urls`, `COMFYUI_CLIENT_ID` replaces `client_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// ComfyUI servers forming the pool.
    pub urls: Vec<String>,
    /// Client id for the WebSocket and every prompt; empty picks a random one at start.
    pub client_id: String,
    /// Folder of workflow templates (relative to the working directory).
    pub workflows_dir: String,
    /// Prompts of ours per instance at once: 2 keeps the next one queued in ComfyUI.
    pub queue_depth: u32,
    /// A task running longer is interrupted and fails with `timeout`.
    pub task_timeout_secs: u64,
    /// Timeout of one HTTP request to ComfyUI.
    pub request_timeout_secs: u64,
    /// How long a task waits for an unreachable instance to come back before failing with a
    /// retryable `engine_unavailable` (the host then puts it back in its queue uncounted while
    /// no instance is reachable: see the `availability` op).
    pub unavailable_wait_secs: u64,
    /// `/history` poll interval while the socket is down, milliseconds.
    pub history_poll_ms: u64,
    /// `/history` check interval while the socket is up (a safety net), seconds.
    pub history_check_secs: u64,
    /// A socket silent this long is pinged, and dropped if still silent after as long again.
    pub ws_idle_secs: u64,
    /// Longest pause between reconnect attempts, milliseconds.
    pub reconnect_max_ms: u64,
    /// Uploads go to `{upload_subfolder}/{task_id}` in ComfyUI's input folder.
    pub upload_subfolder: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:8188".into()],
            client_id: String::new(),
            workflows_dir: "workflows".into(),
            queue_depth: 2,
            task_timeout_secs: 3600,
            request_timeout_secs: 60,
            unavailable_wait_secs: 30,
            history_poll_ms: 1000,
            history_check_secs: 15,
            ws_idle_secs: 30,
            reconnect_max_ms: 5000,
            upload_subfolder: "aihost".into(),
        }
    }
}

impl Config {
    /// Applies `COMFYUI_URL` and `COMFYUI_CLIENT_ID`.
    pub fn with_env(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(u) = get("COMFYUI_URL").filter(|u| !u.trim().is_empty()) {
            self.urls = u
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(c) = get("COMFYUI_CLIENT_ID").filter(|c| !c.trim().is_empty()) {
            self.client_id = c.trim().to_owned();
        }
        self
    }

    /// Refuses a config without servers or with a server URL that is not http(s), with
    /// `invalid_config`.
    pub(crate) fn check(&self) -> Result<(), PluginError> {
        if self.urls.is_empty() {
            return Err(fatal(
                codes::INVALID_CONFIG,
                "urls must list at least one ComfyUI server",
            ));
        }
        for u in &self.urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(fatal(
                    codes::INVALID_CONFIG,
                    format!("ComfyUI URL {u:?} must start with http:// or https://"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn default_config_round_trips_and_env_overrides() {
        let c = Config::default();
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let partial: Config = serde_json::from_str(r#"{"queue_depth": 3}"#).unwrap();
        assert_eq!(partial.queue_depth, 3);
        assert_eq!(partial.urls, c.urls);
        let env: BTreeMap<&str, &str> = [
            ("COMFYUI_URL", "http://a:1, http://b:2"),
            ("COMFYUI_CLIENT_ID", "seed"),
        ]
        .into();
        let c = c.with_env(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(c.urls, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.client_id, "seed");
        assert!(serde_json::from_str::<Config>(r#"{"nope": 1}"#).is_err());
    }
}
