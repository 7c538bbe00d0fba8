//! `[fetch]`: the fetcher of remote task inputs (limits, timeouts, allowed hosts) and its
//! defaults.

use serde::{Deserialize, Serialize};

use super::GIB;

/// `[fetch]`: downloads of remote task inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FetchConfig {
    /// Hosts allowed even when they resolve to private addresses (`localhost`, `10.0.0.5`,
    /// `minio:9000`). Default empty: private, loopback and link-local addresses are refused.
    pub allow_hosts: Vec<String>,
    /// Largest download, in bytes. Default 1 GiB.
    pub max_bytes: u64,
    /// Whole-download timeout, in seconds. Default 300.
    pub timeout_secs: u64,
    /// Connect timeout, in seconds. Default 10.
    pub connect_timeout_secs: u64,
    /// Redirects followed (each re-checked by the guard). Default 5.
    pub max_redirects: u32,
    /// Downloads running at once, over all tasks. Default 10.
    pub concurrency: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            allow_hosts: Vec::new(),
            max_bytes: GIB,
            timeout_secs: 300,
            connect_timeout_secs: 10,
            max_redirects: 5,
            concurrency: 10,
        }
    }
}
