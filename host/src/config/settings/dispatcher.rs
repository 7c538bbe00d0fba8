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
    /// This consumer's id in leases. Default: `hostname-pid` (see
    /// [`Config::worker_id`](crate::config::Config::worker_id)).
    pub worker_id: Option<String>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            default_concurrency: 2,
            progress_interval_ms: 250,
            work_dir: PathBuf::from("data/work"),
            worker_id: None,
        }
    }
}
