//! `[plugins]`: which plugin manifest to read, and its default.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[plugins]`: the plugin manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PluginsConfig {
    /// The plugin manifest (see [`crate::manifest`]). Default `plugins.toml`.
    pub manifest: PathBuf,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            manifest: PathBuf::from("plugins.toml"),
        }
    }
}
