//! Host settings: `aihost.toml`, environment overrides and their validation.
//!
//! Every key has a default, so an absent file gives a working single-machine service. Settings
//! are layered, later layers winning: built-in defaults, the file, the seed service's variables
//! (`STORAGE_PROVIDER`, `R2_*`, `GCS_BUCKET_NAME`, `CF_IMAGES_*`, `LOG_LEVEL`, ...), then
//! `AIHOST_SECTION__KEY` variables. [`Config::load`] reports every problem at once (unknown keys
//! with a suggestion, wrong types, invalid values), each with where it came from (file and line,
//! or the variable) and its dotted key, so an operator fixes everything in one pass.
//!
//! Relative paths are resolved once, at load: against the config file's directory when they come
//! from the file, against the working directory when they come from a default or a variable. A
//! loaded [`Config`] only holds absolute paths.
//!
//! The submodules, one concern each: `error` (the error types, shared with [`crate::manifest`]
//! for `plugins.toml`), `toml_file` (reading a file with the line of every key; also used by the
//! manifest), `settings` (one struct per section, with its defaults), `keys` (the key table and
//! variable names), `layers` (file and variables, with their origins), `validate` (the checks
//! beyond types). This file holds [`Config`] and the load that runs those steps in order; every
//! public type is re-exported here, so `crate::config::X` is the path to use.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub(crate) mod error;
mod keys;
mod layers;
mod settings;
pub(crate) mod toml_file;
mod validate;

pub(crate) use error::{ConfigError, ConfigErrors, Origin};
use keys::KeyId;
use layers::Layers;
pub(crate) use settings::{
    DispatcherConfig, FetchConfig, LogConfig, LogFormat, PluginsConfig, QueueConfig, QueueType,
    RetentionConfig, ServerConfig, StorageConfig, StorageType, WebhooksConfig,
    parse_webhook_secret,
};
use toml_file::{TomlFile, absolute_against};

/// The host file read when no path is given, if it exists in the working directory.
pub(crate) const DEFAULT_FILE: &str = "aihost.toml";

/// All host settings (`aihost.toml`). `Config::default()` holds the defaults with relative
/// paths; [`Config::load`] returns them resolved to absolute paths.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// HTTP server: address, public URL, authentication, body limits.
    pub server: ServerConfig,
    /// The durable task queue.
    pub queue: QueueConfig,
    /// Where task outputs and uploads are stored.
    pub storage: StorageConfig,
    /// Which plugin manifest to read.
    pub plugins: PluginsConfig,
    /// The one fetcher for remote inputs (size limit, timeouts, SSRF guard).
    pub fetch: FetchConfig,
    /// The consumer that runs tasks through plugins.
    pub dispatcher: DispatcherConfig,
    /// Logging.
    pub log: LogConfig,
    /// How long finished tasks, their files and unreferenced uploads are kept.
    pub retention: RetentionConfig,
    /// Signing and durable delivery of task webhooks.
    pub webhooks: WebhooksConfig,
    /// The file these settings were read from (absolute), if any. Not a key.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

impl Config {
    /// Loads settings: defaults, then the file, then the seed service's variables, then
    /// `AIHOST_SECTION__KEY` variables (`env` is normally `std::env::vars().collect()`).
    ///
    /// With `path = None`, `aihost.toml` in the working directory is read if it exists; a path
    /// given explicitly must exist. Every problem is reported in the one error.
    pub(crate) fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigErrors> {
        let mut layers = Layers::default();
        let file_path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.exists()),
        };
        let mut file = None;
        if let Some(p) = &file_path {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            match TomlFile::read(&abs) {
                Ok(f) => {
                    layers.file(&f);
                    file = Some(f);
                }
                Err(es) => layers.errors.extend(es),
            }
        }
        layers.seed_env(env);
        layers.aihost_env(env);

        // Type-check key by key; the good ones make the table to deserialize.
        let (table, bad) = layers.check_types();
        let mut config = match Config::deserialize(toml::Value::Table(table)) {
            Ok(c) => c,
            Err(e) => {
                // Unreachable in practice: every key passed alone.
                layers.errors.push(ConfigError::InvalidValue {
                    origin: Origin::Default,
                    key: String::new(),
                    message: e.message().trim().to_owned(),
                });
                return Err(ConfigErrors(layers.errors).sorted());
            }
        };
        config.file = file.as_ref().map(|f| f.path.clone());

        let before = layers.errors.len();
        config.resolve_paths(&mut layers, file.as_ref());
        config.validate(&mut layers);
        // A key that failed its type check keeps its default: don't also report that.
        let semantic = layers.errors.split_off(before);
        layers.errors.extend(semantic.into_iter().filter(|e| {
            e.key()
                .and_then(|k| k.split_once('.'))
                .is_none_or(|(s, k)| !bad.iter().any(|b| *b == (s, k)))
        }));

        if layers.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(layers.errors).sorted())
        }
    }

    /// Makes every path absolute: against the file's directory for a value from the file,
    /// against the working directory otherwise. An empty path is reported.
    fn resolve_paths(&mut self, layers: &mut Layers, file: Option<&TomlFile>) {
        let base = |layers: &Layers, id: KeyId| match (layers.origin(id), file) {
            (Origin::File { .. }, Some(f)) => f.dir(),
            _ => PathBuf::new(),
        };
        let resolve = |layers: &mut Layers, id: KeyId, p: &mut PathBuf| {
            if p.as_os_str().is_empty() {
                layers.invalid(id, "must not be empty");
            } else {
                *p = absolute_against(&base(layers, id), p);
            }
        };
        resolve(layers, ("queue", "path"), &mut self.queue.path);
        resolve(layers, ("storage", "root"), &mut self.storage.root);
        resolve(layers, ("plugins", "manifest"), &mut self.plugins.manifest);
        resolve(
            layers,
            ("dispatcher", "work_dir"),
            &mut self.dispatcher.work_dir,
        );
        if let Some(p) = &mut self.storage.credential_path {
            resolve(layers, ("storage", "credential_path"), p);
        }
    }

    /// The base URL clients reach the service at, without a trailing slash: `server.public_url`,
    /// or `http://` + `server.bind`.
    pub(crate) fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.server.bind),
        }
    }

    /// This machine's host name (`HOSTNAME`, else the kernel's), or `aihost` when unknown.
    pub(crate) fn hostname() -> String {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "aihost".to_owned())
    }

    /// The effective settings as TOML, secrets (`server.api_keys`, `webhooks.secrets`,
    /// `storage.secret_access_key`,
    /// `storage.api_token`, the password in `queue.url`) replaced by `***`.
    pub(crate) fn redacted_toml(&self) -> String {
        const MASK: &str = "***";
        let mut c = self.clone();
        for k in c.server.api_keys.iter_mut().chain(&mut c.webhooks.secrets) {
            *k = MASK.to_owned();
        }
        for secret in [&mut c.storage.secret_access_key, &mut c.storage.api_token] {
            if secret.is_some() {
                *secret = Some(MASK.to_owned());
            }
        }
        if let Some(u) = &mut c.queue.url
            && let Ok(mut parsed) = url::Url::parse(u)
            && parsed.password().is_some()
            && parsed.set_password(Some(MASK)).is_ok()
        {
            *u = parsed.to_string();
        }
        let body = toml::to_string(&c).unwrap_or_else(|e| format!("# cannot print: {e}\n"));
        let from = match &self.file {
            Some(f) => format!("# from {}", f.display()),
            None => "# no file: defaults and environment".to_owned(),
        };
        format!("{from}\n# public URL: {}\n{body}", self.public_url())
    }
}

/// Helpers shared by the tests of the config modules.
#[cfg(test)]
mod test_support {
    use std::{
        collections::BTreeMap,
        path::{Path, PathBuf},
    };

    use super::ConfigErrors;

    pub(super) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(super) fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("aihost.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub(super) fn cwd(p: &str) -> PathBuf {
        std::env::current_dir().unwrap().join(p)
    }

    pub(super) fn codes(e: &ConfigErrors) -> Vec<(&'static str, Option<&str>)> {
        e.iter().map(|e| (e.code(), e.key())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{test_support::*, *};
    use crate::error_codes;

    #[test]
    fn defaults_without_file() {
        assert!(
            !Path::new(DEFAULT_FILE).exists(),
            "test needs no aihost.toml in the crate dir"
        );
        let c = Config::load(None, &BTreeMap::new()).unwrap();
        assert_eq!(c.file, None);
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.public_url(), "http://127.0.0.1:8000");
        assert_eq!(c.queue.kind, QueueType::Sqlite);
        assert_eq!(c.queue.path, cwd("data/aihost.db"));
        assert_eq!(c.storage.kind, StorageType::Fs);
        assert_eq!(c.storage.root, cwd("data/outputs"));
        assert_eq!(c.plugins.manifest, cwd("plugins.toml"));
        assert_eq!(c.dispatcher.work_dir, cwd("data/work"));
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.fetch, FetchConfig::default());
        assert_eq!(c.dispatcher.worker_id, None);
        assert!(!Config::hostname().is_empty());
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load(Some(&missing), &BTreeMap::new()).unwrap_err();
        assert_eq!(codes(&e), vec![(error_codes::CONFIG_UNREADABLE_FILE, None)]);
        assert!(e.to_string().contains("nope.toml"), "{e}");
    }

    #[test]
    fn file_values_and_paths_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"
[server]
bind = "0.0.0.0:9000"
public_url = "https://ai.example.com/"
api_keys = ["k1", "k2"]

[queue]
type = "postgres"
url = "postgres://u:p@localhost/aihost"
path = "db/q.db"
lease_secs = 60

[storage]
type = "s3"
bucket = "out"
root = "../outputs"
credential_path = "creds.json"

[plugins]
manifest = "plugins.toml"

[dispatcher]
work_dir = "/abs/work"
worker_id = "w1"

[log]
format = "json"
"#,
        );
        let c = Config::load(Some(&p), &BTreeMap::new()).unwrap();
        let d = std::path::absolute(dir.path()).unwrap();
        assert_eq!(c.file.as_deref(), Some(d.join("aihost.toml").as_path()));
        assert_eq!(c.server.bind, "0.0.0.0:9000");
        assert_eq!(c.public_url(), "https://ai.example.com");
        assert_eq!(c.server.api_keys, ["k1", "k2"]);
        assert_eq!(c.queue.kind, QueueType::Postgres);
        assert_eq!(c.queue.lease_secs, 60);
        assert_eq!(c.queue.path, d.join("db/q.db"));
        assert_eq!(c.storage.kind, StorageType::S3);
        assert_eq!(c.storage.root, d.join("../outputs"));
        assert_eq!(c.storage.credential_path, Some(d.join("creds.json")));
        assert_eq!(c.plugins.manifest, d.join("plugins.toml"));
        assert_eq!(c.dispatcher.work_dir, PathBuf::from("/abs/work"));
        assert_eq!(c.dispatcher.worker_id.as_deref(), Some("w1"));
        assert_eq!(c.log.format, LogFormat::Json);
        // Keys the file left out keep their defaults.
        assert_eq!(c.queue.poll_interval_ms, 500);
        assert_eq!(c.fetch.max_redirects, 5);
    }

    #[test]
    fn a_badly_typed_key_is_not_reported_twice() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[queue]\ntype = \"postgres\"\nurl = 5\n");
        let e = Config::load(Some(&p), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            codes(&e),
            vec![(error_codes::CONFIG_INVALID_TYPE, Some("queue.url"))],
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[server]\nbind = \"x\"\nbind = \"y\"\n[queue\n");
        let e = Config::load(Some(&p), &BTreeMap::new()).unwrap_err();
        assert!(
            e.iter()
                .all(|e| e.code() == error_codes::CONFIG_TOML_SYNTAX),
            "{e}"
        );
        assert!(
            e.iter().any(|e| matches!(
                e.origin(),
                Origin::File {
                    line: Some(3 | 4),
                    ..
                }
            )),
            "{e:?}"
        );
        assert_eq!(e.to_string().lines().count(), e.len());
    }

    #[test]
    fn redacted_toml_hides_secrets_and_parses_back() {
        let mut c = Config::default();
        c.server.api_keys = vec!["secret-key".into()];
        c.webhooks.secrets = vec!["whsec_c2lnbmluZw==".into()];
        c.storage.secret_access_key = Some("s3cret".into());
        c.storage.api_token = Some("t0ken".into());
        c.storage.access_key_id = Some("AKID".into());
        c.queue.url = Some("postgres://user:pw123@db/aihost".into());
        let text = c.redacted_toml();
        for secret in [
            "secret-key",
            "whsec_c2lnbmluZw==",
            "s3cret",
            "t0ken",
            "pw123",
        ] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("AKID"), "{text}");
        assert!(text.contains("postgres://user:***@db/aihost"), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.server.api_keys, ["***"]);
        assert_eq!(back.storage.secret_access_key.as_deref(), Some("***"));
        assert_eq!(back.queue.lease_secs, c.queue.lease_secs);
    }
}
