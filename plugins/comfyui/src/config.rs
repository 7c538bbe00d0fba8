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
    /// Instances in the richer form (added to `urls`): each with its URL and, optionally, how
    /// to launch and supervise it (see `supervise.rs`).
    pub instances: Vec<crate::supervise::InstanceConfig>,
    /// `POST /free` (unload models, free memory) on an instance idle this long; 0 = never.
    pub idle_free_secs: u64,
    /// A supervised instance whose running prompt sends no socket message this long is
    /// restarted; 0 = no watchdog.
    pub stall_secs: u64,
    /// Models every supervised instance downloads before it takes tasks (see `models.rs`).
    pub models: Vec<crate::models::ModelSpec>,
    /// A TOML file with more models (`[[models]]` tables like `models`); empty = none.
    pub models_file: String,
    /// Hosts per-task model URLs may come from (`example.com`, `*.example.com`); empty
    /// refuses every per-task model URL.
    pub model_url_hosts: Vec<String>,
    /// Largest per-task model file, bytes.
    pub model_url_max_bytes: u64,
    /// Worker threads of the plugin's own runtime (1 to 16). The plugin waits on ComfyUI and
    /// does little work of its own (file writes go to the runtime's blocking pool), so one
    /// thread is enough; more threads wake each other for every message (measured on 2 cores:
    /// a task's light-load latency 27 to 34 % lower with 1 thread than with 2).
    pub runtime_threads: usize,
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
            instances: Vec::new(),
            idle_free_secs: 0,
            stall_secs: 0,
            models: Vec::new(),
            models_file: String::new(),
            model_url_hosts: Vec::new(),
            model_url_max_bytes: 2 << 30,
            runtime_threads: 1,
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

    /// Every instance: `urls` (unless left at the default while `instances` is set) then
    /// `instances`.
    pub(crate) fn all_instances(&self) -> Vec<crate::supervise::InstanceConfig> {
        let keep_urls = self.instances.is_empty() || self.urls != Config::default().urls;
        let mut out: Vec<_> = if keep_urls {
            self.urls
                .iter()
                .map(|u| crate::supervise::InstanceConfig {
                    url: u.clone(),
                    launch: None,
                    input_dir: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        out.extend(self.instances.iter().cloned());
        out
    }

    /// Refuses a config without servers or with a server URL that is not http(s), with
    /// `invalid_config`.
    pub(crate) fn check(&self) -> Result<(), PluginError> {
        if self.urls.is_empty() && self.instances.is_empty() {
            return Err(fatal(
                codes::INVALID_CONFIG,
                "urls must list at least one ComfyUI server",
            ));
        }
        if !(1..=16).contains(&self.runtime_threads) {
            return Err(fatal(
                codes::INVALID_CONFIG,
                format!(
                    "runtime_threads must be from 1 to 16, not {}",
                    self.runtime_threads
                ),
            ));
        }
        for i in &self.instances {
            i.check()?;
        }
        for u in self
            .urls
            .iter()
            .chain(self.instances.iter().map(|i| &i.url))
        {
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

    #[test]
    fn instances_replace_the_default_urls_and_need_a_command() {
        let c: Config = toml::from_str(
            r#"instances = [{ url = "http://127.0.0.1:9000", launch = { command = ["python", "main.py", "--port", "{port}"], cwd = "/opt/ComfyUI", cuda_device = "1" } }]"#,
        )
        .unwrap();
        assert!(c.check().is_ok());
        let all = c.all_instances();
        assert_eq!(all.len(), 1);
        let launch = all[0].launch.as_ref().unwrap();
        assert_eq!(launch.start_timeout_secs, 600);
        assert_eq!(
            all[0].comfyui_dir(),
            Some(std::path::PathBuf::from("/opt/ComfyUI"))
        );
        // Set explicitly, `urls` joins the instances.
        let c: Config =
            toml::from_str("urls = [\"http://a:1\"]\ninstances = [{ url = \"http://b:2\" }]")
                .unwrap();
        let urls: Vec<String> = c.all_instances().into_iter().map(|i| i.url).collect();
        assert_eq!(urls, ["http://a:1", "http://b:2"]);
        let c: Config =
            toml::from_str(r#"instances = [{ url = "http://b:2", launch = { command = [] } }]"#)
                .unwrap();
        assert!(c.check().is_err());
    }

    #[test]
    fn runtime_threads_default_to_one_and_stay_in_range() {
        let c = Config::default();
        assert_eq!(c.runtime_threads, 1);
        assert_eq!(
            <crate::ComfyUi as aihost_plugin_api::sdk::Plugin>::worker_threads(&c),
            1
        );
        for (n, ok) in [(0, false), (1, true), (4, true), (16, true), (17, false)] {
            let c: Config = toml::from_str(&format!("runtime_threads = {n}")).unwrap();
            let r = c.check();
            assert_eq!(r.is_ok(), ok, "runtime_threads = {n}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.code.as_str(), codes::INVALID_CONFIG);
                assert!(e.message.as_str().contains("runtime_threads"), "{e:?}");
            }
        }
    }
}
