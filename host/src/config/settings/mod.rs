//! The settings of each `aihost.toml` section: one struct per section, each with its defaults and
//! the documentation of every key, one file per section.
//!
//! These structs are the shape of the file (serde reads them, `aihost config` prints them) and
//! what the rest of the host reads. How a value is layered from the environment is in
//! [`super::keys`] and [`super::layers`]; which values are acceptable is in [`super::validate`].

use serde::{Deserialize, Deserializer};

mod dispatcher;
mod fetch;
mod log;
mod plugins;
mod queue;
mod retention;
mod server;
mod storage;
mod webhooks;

pub(crate) use dispatcher::DispatcherConfig;
pub(crate) use fetch::FetchConfig;
pub(crate) use log::{LogConfig, LogFormat};
pub(crate) use plugins::PluginsConfig;
pub(crate) use queue::{QueueConfig, QueueType};
pub(crate) use retention::RetentionConfig;
pub(crate) use server::ServerConfig;
pub(crate) use storage::{StorageConfig, StorageType};
pub(crate) use webhooks::{WebhooksConfig, parse_webhook_secret};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Deserializes the section named `section` from `d` and drops it: the one place a section name
/// maps to its struct. `None` for a name that is not a section.
pub(super) fn deserialize_section<'de, D: Deserializer<'de>>(
    section: &str,
    d: D,
) -> Option<Result<(), D::Error>> {
    Some(match section {
        "server" => ServerConfig::deserialize(d).map(drop),
        "queue" => QueueConfig::deserialize(d).map(drop),
        "storage" => StorageConfig::deserialize(d).map(drop),
        "plugins" => PluginsConfig::deserialize(d).map(drop),
        "fetch" => FetchConfig::deserialize(d).map(drop),
        "dispatcher" => DispatcherConfig::deserialize(d).map(drop),
        "log" => LogConfig::deserialize(d).map(drop),
        "retention" => RetentionConfig::deserialize(d).map(drop),
        "webhooks" => WebhooksConfig::deserialize(d).map(drop),
        _ => return None,
    })
}

/// Type-checks one key alone, so that one bad key does not hide the others.
pub(super) fn check_key(
    section: &str,
    key: &str,
    value: &toml::Value,
) -> Result<(), toml::de::Error> {
    let mut t = toml::Table::new();
    t.insert(key.to_owned(), value.clone());
    deserialize_section(section, toml::Value::Table(t)).unwrap_or(Ok(()))
}
