//! `[dispatcher]`: the consumer that runs tasks, and its defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[dispatcher]`: the consumer that runs tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DispatcherConfig {
    /// Tasks run at once per task type when its plugin declares 0. Default 2.
    pub default_concurrency: u32,
    /// Least milliseconds between two progress updates of one task. Default 250.
    pub progress_interval_ms: u64,
    /// Scratch directory; each attempt gets its own folder inside. Default `data/work`.
    pub work_dir: PathBuf,
    /// This consumer's identity, stable across restarts: a restarted consumer with the same
    /// identity takes back at once the tasks its previous run held. Held by one live process at
    /// a time (a second one with the same id refuses to start). Default: `hostname-N`, with the
    /// lowest N no live consumer of this task store holds (see `service::worker`).
    pub worker_id: Option<String>,
    /// Time limit in seconds of one attempt of any task type that has no other limit (the
    /// task's own `timeout_secs`, `type_timeouts`, the plugin's default). Default 0: none.
    pub timeout_secs: u64,
    /// Time limits per task type, as `type=seconds` entries (e.g.
    /// `["comfyui.generate=900"]`); they override the plugin's default. Default: none.
    pub type_timeouts: Vec<String>,
    /// Whether an attempt that ran out of time may be retried (when attempts remain).
    /// Default false: a timeout fails the task.
    pub retry_timeouts: bool,
    /// Seconds a cancelled running task waits for its plugin to stop the engine (the task shows
    /// "cancel requested, waiting for the engine to stop" meanwhile) before the attempt is
    /// dropped anyway. Default 30.
    pub cancel_grace_secs: u64,
    /// Seconds tasks of a type wait in the queue while its plugin's `availability` op says no
    /// engine can take them (e.g. every ComfyUI instance down) before they fail with
    /// `engine_unavailable`. Default 3600.
    pub max_unavailable_wait_secs: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            default_concurrency: 2,
            progress_interval_ms: 250,
            work_dir: PathBuf::from("data/work"),
            worker_id: None,
            timeout_secs: 0,
            type_timeouts: Vec::new(),
            retry_timeouts: false,
            cancel_grace_secs: 30,
            max_unavailable_wait_secs: 3600,
        }
    }
}

impl DispatcherConfig {
    /// The `type_timeouts` entries as (task type, seconds); `Err` names the first entry that is
    /// not `type=seconds` with seconds at least 1.
    pub(crate) fn type_timeouts(&self) -> Result<Vec<(String, u64)>, String> {
        self.type_timeouts
            .iter()
            .map(|entry| {
                let (name, secs) = entry
                    .split_once('=')
                    .ok_or_else(|| format!("{entry:?} is not type=seconds"))?;
                let secs: u64 = secs.trim().parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("{entry:?}: seconds must be a whole number, at least 1")
                })?;
                let name = name.trim();
                if name.is_empty() {
                    return Err(format!("{entry:?}: the task type is empty"));
                }
                Ok((name.to_owned(), secs))
            })
            .collect()
    }
}
