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
//! [`ConfigError`] and [`ConfigErrors`] are shared with [`crate::manifest`] (`plugins.toml`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The host file read when no path is given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "aihost.toml";

/// Prefix of the environment variables that override keys: `AIHOST_SECTION__KEY`.
pub const ENV_PREFIX: &str = "AIHOST_";

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Where a setting, or a problem with it, came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file, with the 1-based line when known.
    File {
        /// The file (absolute).
        path: PathBuf,
        /// 1-based line of the key or of the error.
        line: Option<usize>,
    },
    /// An environment variable, by name.
    Env(String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

impl Origin {
    fn sort_key(&self) -> (u8, String, usize) {
        match self {
            Origin::File { path, line } => (0, path.display().to_string(), line.unwrap_or(0)),
            Origin::Env(name) => (1, name.clone(), 0),
            Origin::Default => (2, String::new(), 0),
        }
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// One problem in a settings file or the environment. [`ConfigError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A section, key or `AIHOST_*` variable that means nothing (a typo, usually).
    #[error("{origin}: unknown key `{key}`{}", did_you_mean(.suggestion))]
    UnknownKey {
        /// Where the key was written.
        origin: Origin,
        /// The dotted key as written.
        key: String,
        /// The closest known key (or variable name), if one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong TOML type (a string where a number belongs, ...).
    #[error("{origin}: `{key}`: {message}")]
    InvalidType {
        /// Where the value was written.
        origin: Origin,
        /// The dotted key.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A value of the right type that is not acceptable (bad address, zero lease, ...).
    #[error("{origin}: `{key}`: {message}")]
    InvalidValue {
        /// Where the value was written.
        origin: Origin,
        /// The dotted key.
        key: String,
        /// Why the value is refused.
        message: String,
    },
    /// A key that another setting makes necessary is absent (`queue.url` for postgres, ...).
    #[error("{origin}: `{key}`: {message}")]
    MissingValue {
        /// Where the setting that requires it was written.
        origin: Origin,
        /// The dotted key that is missing.
        key: String,
        /// Why it is needed.
        message: String,
    },
    /// The same name given twice where names must be unique (plugin names).
    #[error("{origin}: `{key}`: {message}")]
    Duplicate {
        /// Where the second occurrence was written.
        origin: Origin,
        /// The dotted key of the second occurrence.
        key: String,
        /// Which name, and where the first one is.
        message: String,
    },
    /// The file could not be read (missing when given explicitly, permissions, not UTF-8).
    #[error("{origin}: cannot read: {message}")]
    UnreadableFile {
        /// The file.
        origin: Origin,
        /// The operating system's reason.
        message: String,
    },
    /// The file is not valid TOML.
    #[error("{origin}: TOML syntax error: {message}")]
    TomlSyntax {
        /// The file, with the line of the error.
        origin: Origin,
        /// The parser's message.
        message: String,
    },
}

impl ConfigError {
    /// Stable, machine-readable code: `unknown_key`, `invalid_type`, `invalid_value`,
    /// `missing_value`, `duplicate`, `unreadable_file`, `toml_syntax`.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::UnknownKey { .. } => "unknown_key",
            ConfigError::InvalidType { .. } => "invalid_type",
            ConfigError::InvalidValue { .. } => "invalid_value",
            ConfigError::MissingValue { .. } => "missing_value",
            ConfigError::Duplicate { .. } => "duplicate",
            ConfigError::UnreadableFile { .. } => "unreadable_file",
            ConfigError::TomlSyntax { .. } => "toml_syntax",
        }
    }

    /// Where the problem is (file and line, variable, or default).
    pub fn origin(&self) -> &Origin {
        match self {
            ConfigError::UnknownKey { origin, .. }
            | ConfigError::InvalidType { origin, .. }
            | ConfigError::InvalidValue { origin, .. }
            | ConfigError::MissingValue { origin, .. }
            | ConfigError::Duplicate { origin, .. }
            | ConfigError::UnreadableFile { origin, .. }
            | ConfigError::TomlSyntax { origin, .. } => origin,
        }
    }

    /// The dotted key concerned, if the problem is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::InvalidType { key, .. }
            | ConfigError::InvalidValue { key, .. }
            | ConfigError::MissingValue { key, .. }
            | ConfigError::Duplicate { key, .. } => Some(key),
            ConfigError::UnreadableFile { .. } | ConfigError::TomlSyntax { .. } => None,
        }
    }
}

/// Every problem found while loading settings; displayed one line per problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(
    /// The problems, by file and line, then variables.
    pub Vec<ConfigError>,
);

impl ConfigErrors {
    /// Orders the problems by file and line, then variables.
    pub(crate) fn sorted(mut self) -> Self {
        self.0.sort_by_key(|e| e.origin().sort_key());
        self
    }
}

impl std::ops::Deref for ConfigErrors {
    type Target = [ConfigError];
    fn deref(&self) -> &[ConfigError] {
        &self.0
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// Shared TOML helpers (also used by `manifest`)
// ---------------------------------------------------------------------------------------------

/// A parsed TOML file, with the line of every key (dotted; array items as `key[i]`).
pub(crate) struct TomlFile {
    /// The file (absolute).
    pub path: PathBuf,
    /// Its contents.
    pub table: toml::Table,
    lines: HashMap<String, usize>,
}

impl TomlFile {
    /// Reads and parses `path` (already absolute). All syntax errors are reported.
    pub(crate) fn read(path: &Path) -> Result<TomlFile, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError::UnreadableFile {
                origin: Origin::File {
                    path: path.to_path_buf(),
                    line: None,
                },
                message: e.to_string(),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`, read from `path`.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<TomlFile, Vec<ConfigError>> {
        let syntax = |e: &toml::de::Error| ConfigError::TomlSyntax {
            origin: Origin::File {
                path: path.to_path_buf(),
                line: e.span().map(|s| line_of(text, s.start)),
            },
            message: e.message().trim().to_owned(),
        };
        let (doc, errors) = toml::de::DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            return Err(errors.iter().map(syntax).collect());
        }
        let mut lines = HashMap::new();
        index_lines(text, doc.get_ref(), "", &mut lines);
        let table: toml::Table = toml::from_str(text).map_err(|e| vec![syntax(&e)])?;
        Ok(TomlFile {
            path: path.to_path_buf(),
            table,
            lines,
        })
    }

    /// The origin of a dotted key: this file, at the key's line (or its parent's).
    pub(crate) fn origin(&self, key: &str) -> Origin {
        let mut k = key;
        let line = loop {
            if let Some(l) = self.lines.get(k) {
                break Some(*l);
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => break None,
            }
        };
        Origin::File {
            path: self.path.clone(),
            line,
        }
    }

    /// The directory relative paths in this file are resolved against.
    pub(crate) fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn index_lines(
    text: &str,
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    out: &mut HashMap<String, usize>,
) {
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.entry(key.clone())
            .or_insert_with(|| line_of(text, k.span().start));
        match v.get_ref() {
            toml::de::DeValue::Table(t) => index_lines(text, t, &key, out),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{key}[{i}]");
                    out.insert(item_key.clone(), line_of(text, item.span().start));
                    if let toml::de::DeValue::Table(t) = item.get_ref() {
                        index_lines(text, t, &item_key, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word` within edit distance 2, if any.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Makes `path` absolute against `base` (itself made absolute against the working directory).
pub(crate) fn absolute_against(base: &Path, path: &Path) -> PathBuf {
    let joined = base.join(path);
    std::path::absolute(&joined).unwrap_or(joined)
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// All host settings (`aihost.toml`). `Config::default()` holds the defaults with relative
/// paths; [`Config::load`] returns them resolved to absolute paths.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
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
    /// The file these settings were read from (absolute), if any. Not a key.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// `[server]`: the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Socket address to listen on (`host:port`). Default `127.0.0.1:8000`.
    pub bind: String,
    /// Base URL clients reach the service at (for `/files/...` links). Default `http://` + bind;
    /// set it when binding to all interfaces or behind a proxy.
    pub public_url: Option<String>,
    /// Accepted API keys (`Authorization: Bearer` / `X-API-Key`). Empty: no authentication.
    pub api_keys: Vec<String>,
    /// Largest JSON request body, in bytes. Default 10 MiB.
    pub max_body_bytes: u64,
    /// Largest upload (`POST /api/uploads`), in bytes. Default 1 GiB.
    pub max_upload_bytes: u64,
    /// Seconds to let running requests and tasks finish on shutdown. Default 30.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:8000".to_owned(),
            public_url: None,
            api_keys: Vec::new(),
            max_body_bytes: 10 * MIB,
            max_upload_bytes: GIB,
            shutdown_grace_secs: 30,
        }
    }
}

/// Queue backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A local SQLite file (`queue.path`): one machine.
    #[default]
    Sqlite,
    /// A PostgreSQL server (`queue.url`): several API and consumer processes.
    Postgres,
}

/// `[queue]`: the durable task queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
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

/// Storage backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageType {
    /// Local filesystem under `storage.root`, served at `/files`.
    #[default]
    Fs,
    /// In memory (tests): lost at exit.
    Memory,
    /// Any S3-compatible service (AWS, MinIO, R2 with an explicit endpoint).
    S3,
    /// Cloudflare R2: S3 with the account endpoint and region `auto`.
    R2,
    /// Google Cloud Storage.
    Gcs,
    /// Cloudflare Images (upload API; images only).
    CfImages,
}

/// `[storage]`: where outputs and uploads go. Which keys matter depends on `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Backend (TOML key `type`): `fs` (default), `memory`, `s3`, `r2`, `gcs`, `cf_images`.
    #[serde(rename = "type")]
    pub kind: StorageType,
    /// Directory for `fs`. Default `data/outputs`.
    pub root: PathBuf,
    /// Prefix put before every object key (e.g. `aihost/`). Default empty.
    pub prefix: String,
    /// Bucket name (`s3`, `r2`, `gcs`).
    pub bucket: Option<String>,
    /// Service endpoint URL (`s3`: MinIO, R2, ...; `gcs`: a local fake server).
    pub endpoint: Option<String>,
    /// Region (`s3`; `r2` uses `auto`).
    pub region: Option<String>,
    /// Access key id (`s3`, `r2`).
    pub access_key_id: Option<String>,
    /// Secret access key (`s3`, `r2`). Secret: redacted when printed.
    pub secret_access_key: Option<String>,
    /// Public base URL of the bucket (`https://cdn.example.com`): output URLs become
    /// base + key instead of presigned links.
    pub public_base_url: Option<String>,
    /// Cloudflare account id (`r2`, `cf_images`).
    pub account_id: Option<String>,
    /// Cloudflare API token (`cf_images`). Secret: redacted when printed.
    pub api_token: Option<String>,
    /// Service-account JSON file (`gcs`).
    pub credential_path: Option<PathBuf>,
    /// Cloudflare Images delivery domain (`cf_images`), e.g. `imagedelivery.net`.
    pub delivery_domain: Option<String>,
    /// Lifetime of presigned GET URLs, in seconds. Default 3600.
    pub presign_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageType::Fs,
            root: PathBuf::from("data/outputs"),
            prefix: String::new(),
            bucket: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            public_base_url: None,
            account_id: None,
            api_token: None,
            credential_path: None,
            delivery_domain: None,
            presign_secs: 3600,
        }
    }
}

/// `[plugins]`: the plugin manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
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

/// `[fetch]`: downloads of remote task inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
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

/// `[dispatcher]`: the consumer that runs tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Tasks run at once per task type when its plugin declares 0. Default 2.
    pub default_concurrency: u32,
    /// Least milliseconds between two progress updates of one task. Default 250.
    pub progress_interval_ms: u64,
    /// Scratch directory; each attempt gets its own folder inside. Default `data/work`.
    pub work_dir: PathBuf,
    /// This consumer's id in leases. Default: `hostname-pid` (see [`Config::worker_id`]).
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

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Level or `tracing` filter (`info`, `debug`, `info,aihost=debug`). Default `info`.
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Known keys
// ---------------------------------------------------------------------------------------------

/// How a key's value is written in an environment variable (and whether it is a path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A string (or enum name).
    Str,
    /// An optional string: an empty variable unsets it.
    OptStr,
    /// An integer.
    Int,
    /// A comma-separated list of strings.
    List,
    /// A path, resolved to absolute.
    Path,
    /// An optional path, resolved to absolute; an empty variable unsets it.
    OptPath,
}

use Kind::{Int, List, OptPath, OptStr, Path as P, Str};

/// Every section and key, in file order. Kept in step with the structs by a test.
const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    (
        "server",
        &[
            ("bind", Str),
            ("public_url", OptStr),
            ("api_keys", List),
            ("max_body_bytes", Int),
            ("max_upload_bytes", Int),
            ("shutdown_grace_secs", Int),
        ],
    ),
    (
        "queue",
        &[
            ("type", Str),
            ("path", P),
            ("url", OptStr),
            ("lease_secs", Int),
            ("poll_interval_ms", Int),
            ("default_max_attempts", Int),
            ("max_pending", Int),
            ("backoff_base_ms", Int),
            ("backoff_max_ms", Int),
            ("max_connections", Int),
        ],
    ),
    (
        "storage",
        &[
            ("type", Str),
            ("root", P),
            ("prefix", Str),
            ("bucket", OptStr),
            ("endpoint", OptStr),
            ("region", OptStr),
            ("access_key_id", OptStr),
            ("secret_access_key", OptStr),
            ("public_base_url", OptStr),
            ("account_id", OptStr),
            ("api_token", OptStr),
            ("credential_path", OptPath),
            ("delivery_domain", OptStr),
            ("presign_secs", Int),
        ],
    ),
    ("plugins", &[("manifest", P)]),
    (
        "fetch",
        &[
            ("allow_hosts", List),
            ("max_bytes", Int),
            ("timeout_secs", Int),
            ("connect_timeout_secs", Int),
            ("max_redirects", Int),
            ("concurrency", Int),
        ],
    ),
    (
        "dispatcher",
        &[
            ("default_concurrency", Int),
            ("progress_interval_ms", Int),
            ("work_dir", P),
            ("worker_id", OptStr),
        ],
    ),
    ("log", &[("level", Str), ("format", Str)]),
];

type KeyId = (&'static str, &'static str);

fn section_keys(section: &str) -> Option<(&'static str, &'static [(&'static str, Kind)])> {
    SCHEMA.iter().find(|(s, _)| *s == section).copied()
}

fn lookup(section: &str, key: &str) -> Option<(KeyId, Kind)> {
    let (s, keys) = section_keys(section)?;
    keys.iter()
        .find(|(k, _)| *k == key)
        .map(|(k, kind)| ((s, *k), *kind))
}

fn env_name(section: &str, key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}__{}",
        section.to_uppercase(),
        key.to_uppercase()
    )
}

/// The closest known `section.key` to an unknown one: a near key of the section, a near
/// section with the same key, or the same key in another section.
fn suggest(section: &str, key: &str) -> Option<(&'static str, &'static str)> {
    if let Some((s, keys)) = section_keys(section) {
        if let Some(k) = closest(key, keys.iter().map(|(k, _)| *k)) {
            return Some((s, k));
        }
    } else if let Some(s) = closest(section, SCHEMA.iter().map(|(s, _)| *s)) {
        let (s, keys) = section_keys(s)?;
        if let Some(k) = closest(key, keys.iter().map(|(k, _)| *k)) {
            return Some((s, k));
        }
    }
    SCHEMA
        .iter()
        .find_map(|(s, keys)| keys.iter().find(|(k, _)| *k == key).map(|(k, _)| (*s, *k)))
}

/// Type-checks one key alone, so that one bad key does not hide the others.
fn check_key(section: &str, key: &str, value: &toml::Value) -> Result<(), toml::de::Error> {
    let mut t = toml::Table::new();
    t.insert(key.to_owned(), value.clone());
    let v = toml::Value::Table(t);
    match section {
        "server" => ServerConfig::deserialize(v).map(drop),
        "queue" => QueueConfig::deserialize(v).map(drop),
        "storage" => StorageConfig::deserialize(v).map(drop),
        "plugins" => PluginsConfig::deserialize(v).map(drop),
        "fetch" => FetchConfig::deserialize(v).map(drop),
        "dispatcher" => DispatcherConfig::deserialize(v).map(drop),
        "log" => LogConfig::deserialize(v).map(drop),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Values gathered from the layers, with their origin, before deserialization.
#[derive(Default)]
struct Layers {
    values: BTreeMap<KeyId, (toml::Value, Origin)>,
    errors: Vec<ConfigError>,
}

impl Layers {
    fn origin(&self, id: KeyId) -> Origin {
        self.values
            .get(&id)
            .map_or(Origin::Default, |(_, o)| o.clone())
    }

    fn invalid(&mut self, id: KeyId, message: impl Into<String>) {
        let origin = self.origin(id);
        self.errors.push(ConfigError::InvalidValue {
            origin,
            key: format!("{}.{}", id.0, id.1),
            message: message.into(),
        });
    }

    fn file(&mut self, file: &TomlFile) {
        for (section, value) in &file.table {
            let Some((s, keys)) = section_keys(section) else {
                let suggestion =
                    closest(section, SCHEMA.iter().map(|(s, _)| *s)).map(str::to_owned);
                self.errors.push(ConfigError::UnknownKey {
                    origin: file.origin(section),
                    key: section.clone(),
                    suggestion,
                });
                continue;
            };
            let Some(table) = value.as_table() else {
                self.errors.push(ConfigError::InvalidType {
                    origin: file.origin(section),
                    key: section.clone(),
                    message: format!("expected a table `[{section}]`, found {}", value.type_str()),
                });
                continue;
            };
            for (key, v) in table {
                let dotted = format!("{section}.{key}");
                match keys.iter().find(|(k, _)| k == key) {
                    Some((k, _)) => {
                        self.values
                            .insert((s, *k), (v.clone(), file.origin(&dotted)));
                    }
                    None => {
                        let suggestion = suggest(section, key).map(|(s, k)| format!("{s}.{k}"));
                        self.errors.push(ConfigError::UnknownKey {
                            origin: file.origin(&dotted),
                            key: dotted,
                            suggestion,
                        });
                    }
                }
            }
        }
    }

    /// Sets a key from a variable, parsing the text by the key's kind.
    fn set_env(&mut self, var: &str, id: KeyId, kind: Kind, raw: &str) {
        let origin = Origin::Env(var.to_owned());
        let value = match kind {
            Kind::Str | Kind::Path => toml::Value::String(raw.to_owned()),
            Kind::OptStr | Kind::OptPath if raw.trim().is_empty() => {
                self.values.remove(&id);
                return;
            }
            Kind::OptStr | Kind::OptPath => toml::Value::String(raw.to_owned()),
            Kind::Int => match raw.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    self.errors.push(ConfigError::InvalidType {
                        origin,
                        key: format!("{}.{}", id.0, id.1),
                        message: format!("expected an integer, found `{raw}`"),
                    });
                    return;
                }
            },
            Kind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
        };
        self.values.insert(id, (value, origin));
    }

    /// The seed service's variables, applied over the file.
    fn seed_env(&mut self, env: &BTreeMap<String, String>) {
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let set = |layers: &mut Layers, var: &str, section, key| {
            if let Some(v) = get(var) {
                let (id, kind) = lookup(section, key).expect("seed variables map to known keys");
                layers.set_env(var, id, kind, v);
            }
        };
        if let Some(p) = get("STORAGE_PROVIDER") {
            let p = p.to_lowercase();
            let p = if p == "local" { "fs".to_owned() } else { p };
            self.set_env("STORAGE_PROVIDER", ("storage", "type"), Kind::Str, &p);
        }
        set(self, "LOG_LEVEL", "log", "level");
        // The seed's backend variables coexist in one environment: apply those of the
        // backend in effect (the `AIHOST_STORAGE__TYPE` variable, if set, decides).
        let effective = env
            .get("AIHOST_STORAGE__TYPE")
            .map(|v| v.trim().to_lowercase())
            .or_else(|| {
                self.values
                    .get(&("storage", "type"))
                    .and_then(|(v, _)| v.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "fs".to_owned());
        match effective.as_str() {
            "gcs" => {
                set(self, "GCS_BUCKET_NAME", "storage", "bucket");
                set(
                    self,
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    "storage",
                    "credential_path",
                );
            }
            "r2" => {
                set(self, "R2_BUCKET_NAME", "storage", "bucket");
                set(self, "R2_ACCOUNT_ID", "storage", "account_id");
                set(self, "R2_ACCESS_KEY", "storage", "access_key_id");
                set(self, "R2_SECRET_KEY", "storage", "secret_access_key");
                if let Some(d) = get("R2_PUBLIC_DOMAIN") {
                    let url = if d.contains("://") {
                        d.to_owned()
                    } else {
                        format!("https://{d}")
                    };
                    let id = ("storage", "public_base_url");
                    self.set_env("R2_PUBLIC_DOMAIN", id, Kind::OptStr, &url);
                }
            }
            "cf_images" => {
                set(self, "CF_IMAGES_ACCOUNT_ID", "storage", "account_id");
                set(self, "CF_IMAGES_API_TOKEN", "storage", "api_token");
                set(
                    self,
                    "CF_IMAGES_DELIVERY_DOMAIN",
                    "storage",
                    "delivery_domain",
                );
            }
            _ => {}
        }
    }

    /// `AIHOST_SECTION__KEY` variables, applied last.
    fn aihost_env(&mut self, env: &BTreeMap<String, String>) {
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_lowercase();
            if let Some((section, key)) = rest.split_once("__") {
                match lookup(section, key) {
                    Some((id, kind)) => self.set_env(var, id, kind, raw),
                    None => self.errors.push(ConfigError::UnknownKey {
                        origin: Origin::Env(var.clone()),
                        key: format!("{section}.{key}"),
                        suggestion: suggest(section, key).map(|(s, k)| env_name(s, k)),
                    }),
                }
                continue;
            }
            // `AIHOST_SERVER_BIND`: one underscore where two belong. Other `AIHOST_*`
            // variables without `__` (`AIHOST_CONFIG`, ...) are not settings and are ignored.
            for (section, keys) in SCHEMA {
                if let Some(key) = rest.strip_prefix(section).and_then(|r| r.strip_prefix('_'))
                    && let Some(k) = closest(key, keys.iter().map(|(k, _)| *k))
                {
                    self.errors.push(ConfigError::UnknownKey {
                        origin: Origin::Env(var.clone()),
                        key: rest.clone(),
                        suggestion: Some(env_name(section, k)),
                    });
                }
            }
        }
    }
}

impl Config {
    /// Loads settings: defaults, then the file, then the seed service's variables, then
    /// `AIHOST_SECTION__KEY` variables (`env` is normally `std::env::vars().collect()`).
    ///
    /// With `path = None`, `aihost.toml` in the working directory is read if it exists; a path
    /// given explicitly must exist. Every problem is reported in the one error.
    pub fn load(
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
        let mut table = toml::Table::new();
        let mut bad: BTreeSet<KeyId> = BTreeSet::new();
        for (&(s, k), (v, origin)) in &layers.values {
            match check_key(s, k, v) {
                Ok(()) => {
                    let section = table
                        .entry(s)
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(t) = section {
                        t.insert(k.to_owned(), v.clone());
                    }
                }
                Err(e) => {
                    bad.insert((s, k));
                    let message = e.message().trim().to_owned();
                    let key = format!("{s}.{k}");
                    let origin = origin.clone();
                    layers.errors.push(if message.starts_with("invalid type") {
                        ConfigError::InvalidType {
                            origin,
                            key,
                            message,
                        }
                    } else {
                        ConfigError::InvalidValue {
                            origin,
                            key,
                            message,
                        }
                    });
                }
            }
        }
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

    fn validate(&self, l: &mut Layers) {
        // server
        if !is_socket_address(&self.server.bind) {
            l.invalid(
                ("server", "bind"),
                format!(
                    "`{}` is not a socket address (host:port, e.g. 127.0.0.1:8000)",
                    self.server.bind
                ),
            );
        }
        if let Some(u) = &self.server.public_url
            && let Err(m) = check_http_url(u)
        {
            l.invalid(("server", "public_url"), m);
        }
        if self.server.api_keys.iter().any(|k| k.trim().is_empty()) {
            l.invalid(("server", "api_keys"), "an API key is empty");
        }
        for (key, v) in [
            ("max_body_bytes", self.server.max_body_bytes),
            ("max_upload_bytes", self.server.max_upload_bytes),
        ] {
            if v == 0 {
                l.invalid(("server", key), "must be at least 1");
            }
        }

        // queue
        let q = &self.queue;
        if q.kind == QueueType::Postgres {
            match &q.url {
                None => l.errors.push(ConfigError::MissingValue {
                    origin: l.origin(("queue", "type")),
                    key: "queue.url".to_owned(),
                    message:
                        "required when queue.type is `postgres` (postgres://user:pass@host/db)"
                            .to_owned(),
                }),
                Some(u) => match url::Url::parse(u) {
                    Ok(parsed) if matches!(parsed.scheme(), "postgres" | "postgresql") => {}
                    Ok(parsed) => l.invalid(
                        ("queue", "url"),
                        format!(
                            "scheme `{}` is not postgres:// or postgresql://",
                            parsed.scheme()
                        ),
                    ),
                    Err(e) => l.invalid(("queue", "url"), format!("not a URL: {e}")),
                },
            }
        }
        for (key, v) in [
            ("lease_secs", q.lease_secs),
            ("poll_interval_ms", q.poll_interval_ms),
            ("default_max_attempts", u64::from(q.default_max_attempts)),
            ("max_connections", u64::from(q.max_connections)),
        ] {
            if v == 0 {
                l.invalid(("queue", key), "must be at least 1");
            }
        }
        if q.backoff_base_ms > q.backoff_max_ms {
            l.invalid(
                ("queue", "backoff_base_ms"),
                format!(
                    "{} is above queue.backoff_max_ms ({})",
                    q.backoff_base_ms, q.backoff_max_ms
                ),
            );
        }

        // storage
        let s = &self.storage;
        let need = |l: &mut Layers, key: &str, present: bool, why: &str| {
            if !present {
                l.errors.push(ConfigError::MissingValue {
                    origin: l.origin(("storage", "type")),
                    key: format!("storage.{key}"),
                    message: format!("required when storage.type is `{why}`"),
                });
            }
        };
        let has = |o: &Option<String>| o.as_deref().is_some_and(|v| !v.trim().is_empty());
        match s.kind {
            StorageType::Fs | StorageType::Memory => {}
            StorageType::S3 => need(l, "bucket", has(&s.bucket), "s3"),
            StorageType::R2 => {
                need(l, "bucket", has(&s.bucket), "r2");
                need(
                    l,
                    "account_id",
                    has(&s.account_id) || has(&s.endpoint),
                    "r2 (or set storage.endpoint)",
                );
            }
            StorageType::Gcs => need(l, "bucket", has(&s.bucket), "gcs"),
            StorageType::CfImages => {
                need(l, "account_id", has(&s.account_id), "cf_images");
                need(l, "api_token", has(&s.api_token), "cf_images");
            }
        }
        for (key, v) in [
            ("endpoint", &s.endpoint),
            ("public_base_url", &s.public_base_url),
        ] {
            if let Some(u) = v
                && let Err(m) = check_http_url(u)
            {
                l.invalid(("storage", key), m);
            }
        }
        if s.presign_secs == 0 || s.presign_secs > 604_800 {
            l.invalid(
                ("storage", "presign_secs"),
                "must be between 1 and 604800 (7 days)",
            );
        }

        // fetch
        let f = &self.fetch;
        for (key, v) in [
            ("max_bytes", f.max_bytes),
            ("timeout_secs", f.timeout_secs),
            ("connect_timeout_secs", f.connect_timeout_secs),
            ("concurrency", f.concurrency as u64),
        ] {
            if v == 0 {
                l.invalid(("fetch", key), "must be at least 1");
            }
        }
        if f.allow_hosts.iter().any(|h| h.trim().is_empty()) {
            l.invalid(("fetch", "allow_hosts"), "a host is empty");
        }

        // dispatcher
        if self.dispatcher.default_concurrency == 0 {
            l.invalid(("dispatcher", "default_concurrency"), "must be at least 1");
        }
        if self
            .dispatcher
            .worker_id
            .as_deref()
            .is_some_and(|w| w.trim().is_empty())
        {
            l.invalid(("dispatcher", "worker_id"), "must not be empty");
        }

        // log
        if let Err(m) = check_log_level(&self.log.level) {
            l.invalid(("log", "level"), m);
        }
    }

    /// The base URL clients reach the service at, without a trailing slash: `server.public_url`,
    /// or `http://` + `server.bind`.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.server.bind),
        }
    }

    /// This consumer's id: `dispatcher.worker_id`, or `hostname-pid`.
    pub fn worker_id(&self) -> String {
        self.dispatcher.worker_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "aihost".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The effective settings as TOML, secrets (`server.api_keys`, `storage.secret_access_key`,
    /// `storage.api_token`, the password in `queue.url`) replaced by `***`.
    pub fn redacted_toml(&self) -> String {
        const MASK: &str = "***";
        let mut c = self.clone();
        for k in &mut c.server.api_keys {
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

/// `host:port` with a numeric port: an IP socket address or a host name.
fn is_socket_address(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn check_http_url(u: &str) -> Result<(), String> {
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => Ok(()),
        Ok(_) => Err(format!(
            "`{u}` is not an http:// or https:// URL with a host"
        )),
        Err(e) => Err(format!("`{u}` is not a URL: {e}")),
    }
}

/// A level (`info`) or a `tracing` filter (`info,aihost=debug`); a bare word must be a level,
/// so that a typo (`inf`) is not taken for a target name.
fn check_log_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains(['=', '[', ':'])
            && !LEVELS.contains(&directive.to_lowercase().as_str())
        {
            return Err(format!(
                "`{directive}` is not a level (trace, debug, info, warn, error, off) or a `target=level` directive"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| format!("`{level}` is not a log filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("aihost.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn cwd(p: &str) -> PathBuf {
        std::env::current_dir().unwrap().join(p)
    }

    fn codes(e: &ConfigErrors) -> Vec<(&'static str, Option<&str>)> {
        e.iter().map(|e| (e.code(), e.key())).collect()
    }

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
        assert!(!c.worker_id().is_empty());
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load(Some(&missing), &BTreeMap::new()).unwrap_err();
        assert_eq!(codes(&e), vec![("unreadable_file", None)]);
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
        assert_eq!(c.worker_id(), "w1");
        assert_eq!(c.log.format, LogFormat::Json);
        // Keys the file left out keep their defaults.
        assert_eq!(c.queue.poll_interval_ms, 500);
        assert_eq!(c.fetch.max_redirects, 5);
    }

    #[test]
    fn env_overrides_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[storage]\ntype = \"fs\"\nroot = \"files\"\n[log]\nlevel = \"debug\"\n[queue]\nlease_secs = 10\n",
        );
        let e = env(&[
            ("STORAGE_PROVIDER", "r2"),
            ("R2_BUCKET_NAME", "bkt"),
            ("R2_ACCOUNT_ID", "acc"),
            ("R2_ACCESS_KEY", "ak"),
            ("R2_SECRET_KEY", "sk"),
            ("R2_PUBLIC_DOMAIN", "cdn.example.com"),
            ("GCS_BUCKET_NAME", "not-this-one"),
            ("CF_IMAGES_API_TOKEN", "not-this-either"),
            ("LOG_LEVEL", "warn"),
            ("AIHOST_LOG__LEVEL", "error"),
            ("AIHOST_QUEUE__LEASE_SECS", "45"),
            ("AIHOST_QUEUE__PATH", "rel/q.db"),
            ("AIHOST_SERVER__API_KEYS", " a, b,,c "),
            ("AIHOST_FETCH__ALLOW_HOSTS", "localhost,minio:9000"),
            ("AIHOST_CONFIG", "ignored: not a setting"),
            ("PATH", "/usr/bin"),
        ]);
        let c = Config::load(Some(&p), &e).unwrap();
        let d = std::path::absolute(dir.path()).unwrap();
        assert_eq!(c.storage.kind, StorageType::R2);
        assert_eq!(c.storage.bucket.as_deref(), Some("bkt"));
        assert_eq!(c.storage.account_id.as_deref(), Some("acc"));
        assert_eq!(c.storage.access_key_id.as_deref(), Some("ak"));
        assert_eq!(c.storage.secret_access_key.as_deref(), Some("sk"));
        assert_eq!(
            c.storage.public_base_url.as_deref(),
            Some("https://cdn.example.com")
        );
        assert_eq!(c.storage.api_token, None);
        // From the file: relative to the file.
        assert_eq!(c.storage.root, d.join("files"));
        // AIHOST_ beats LOG_LEVEL, which beats the file.
        assert_eq!(c.log.level, "error");
        assert_eq!(c.queue.lease_secs, 45);
        // From the environment: relative to the working directory.
        assert_eq!(c.queue.path, cwd("rel/q.db"));
        assert_eq!(c.server.api_keys, ["a", "b", "c"]);
        assert_eq!(c.fetch.allow_hosts, ["localhost", "minio:9000"]);

        // Seed variable beats the file; AIHOST_ beats the seed variable.
        let c = Config::load(Some(&p), &env(&[("LOG_LEVEL", "warn")])).unwrap();
        assert_eq!(c.log.level, "warn");
        let e = env(&[
            ("STORAGE_PROVIDER", "r2"),
            ("AIHOST_STORAGE__TYPE", "gcs"),
            ("GCS_BUCKET_NAME", "g"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "sa.json"),
            ("R2_BUCKET_NAME", "r"),
        ]);
        let c = Config::load(Some(&p), &e).unwrap();
        assert_eq!(c.storage.kind, StorageType::Gcs);
        assert_eq!(c.storage.bucket.as_deref(), Some("g"));
        assert_eq!(c.storage.credential_path, Some(cwd("sa.json")));

        let c = Config::load(None, &env(&[("STORAGE_PROVIDER", "local")])).unwrap();
        assert_eq!(c.storage.kind, StorageType::Fs);
        let e = env(&[
            ("STORAGE_PROVIDER", "cf_images"),
            ("CF_IMAGES_ACCOUNT_ID", "a"),
            ("CF_IMAGES_API_TOKEN", "t"),
            ("CF_IMAGES_DELIVERY_DOMAIN", "imagedelivery.net"),
        ]);
        let c = Config::load(None, &e).unwrap();
        assert_eq!(c.storage.kind, StorageType::CfImages);
        assert_eq!(c.storage.account_id.as_deref(), Some("a"));
        assert_eq!(c.storage.api_token.as_deref(), Some("t"));
        assert_eq!(
            c.storage.delivery_domain.as_deref(),
            Some("imagedelivery.net")
        );
    }

    #[test]
    fn empty_variable_unsets_an_optional_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[server]\npublic_url = \"http://a.example\"\n");
        let c = Config::load(Some(&p), &env(&[("AIHOST_SERVER__PUBLIC_URL", "")])).unwrap();
        assert_eq!(c.server.public_url, None);
        let c = Config::load(Some(&p), &env(&[("AIHOST_SERVER__API_KEYS", "")])).unwrap();
        assert!(c.server.api_keys.is_empty());
    }

    #[test]
    fn every_error_in_one_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"[server]
bnd = "127.0.0.1:1"
bind = "not an address"
max_body_bytes = "big"
public_url = "ftp://x"

[queue]
type = "postgres"
lease_secs = 0
default_max_attempts = -1

[storag]
root = "x"

[log]
format = "xml"
level = "verbose"
"#,
        );
        let e = Config::load(Some(&p), &BTreeMap::new()).unwrap_err();
        let got = codes(&e);
        for want in [
            ("unknown_key", Some("server.bnd")),
            ("invalid_value", Some("server.bind")),
            ("invalid_type", Some("server.max_body_bytes")),
            ("invalid_value", Some("server.public_url")),
            ("missing_value", Some("queue.url")),
            ("invalid_value", Some("queue.lease_secs")),
            ("invalid_value", Some("queue.default_max_attempts")),
            ("unknown_key", Some("storag")),
            ("invalid_value", Some("log.format")),
            ("invalid_value", Some("log.level")),
        ] {
            assert!(got.contains(&want), "missing {want:?} in {got:?}\n{e}");
        }
        assert_eq!(got.len(), 10, "{e}");
        let text = e.to_string();
        assert_eq!(text.lines().count(), 10, "{text}");
        assert!(text.lines().all(|l| l.contains("aihost.toml:")), "{text}");
        let bnd = e.iter().find(|e| e.key() == Some("server.bnd")).unwrap();
        assert!(
            matches!(bnd, ConfigError::UnknownKey { suggestion: Some(s), origin: Origin::File { line: Some(2), .. }, .. } if s == "server.bind"),
            "{bnd:?}"
        );
        assert!(text.contains("did you mean `server.bind`?"), "{text}");
        let storag = e.iter().find(|e| e.key() == Some("storag")).unwrap();
        assert!(
            matches!(storag, ConfigError::UnknownKey { suggestion: Some(s), .. } if s == "storage")
        );
        let ty = e
            .iter()
            .find(|e| e.key() == Some("server.max_body_bytes"))
            .unwrap();
        assert_eq!(
            ty.origin(),
            &Origin::File {
                path: std::path::absolute(&p).unwrap(),
                line: Some(4)
            }
        );
        // Sorted by line.
        let lines: Vec<usize> = e
            .iter()
            .map(|e| match e.origin() {
                Origin::File { line, .. } => line.unwrap(),
                _ => 0,
            })
            .collect();
        assert!(lines.is_sorted(), "{lines:?}");
    }

    #[test]
    fn a_badly_typed_key_is_not_reported_twice() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[queue]\ntype = \"postgres\"\nurl = 5\n");
        let e = Config::load(Some(&p), &BTreeMap::new()).unwrap_err();
        assert_eq!(codes(&e), vec![("invalid_type", Some("queue.url"))], "{e}");
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let e = env(&[
            ("AIHOST_SERVER__BNID", "x"),
            ("AIHOST_QUEUE__LEASE_SECS", "soon"),
            ("AIHOST_SERVER_BIND", "127.0.0.1:1"),
            ("AIHOST_QUEUE__TYPE", "mysql"),
            ("AIHOST_SERVER__BIND", "localhost:8080"),
        ]);
        let err = Config::load(None, &e).unwrap_err();
        let find = |var: &str| {
            err.iter()
                .find(|e| e.origin() == &Origin::Env(var.to_owned()))
        };
        assert!(
            matches!(find("AIHOST_SERVER__BNID"), Some(ConfigError::UnknownKey { suggestion: Some(s), key, .. })
                if s == "AIHOST_SERVER__BIND" && key == "server.bnid"),
            "{err}"
        );
        assert!(
            matches!(find("AIHOST_SERVER_BIND"), Some(ConfigError::UnknownKey { suggestion: Some(s), .. })
                if s == "AIHOST_SERVER__BIND"),
            "{err}"
        );
        assert_eq!(
            find("AIHOST_QUEUE__LEASE_SECS").unwrap().code(),
            "invalid_type"
        );
        assert_eq!(find("AIHOST_QUEUE__TYPE").unwrap().code(), "invalid_value");
        assert_eq!(err.len(), 4, "{err}");
        assert!(
            err.to_string().contains("env AIHOST_QUEUE__LEASE_SECS"),
            "{err}"
        );
    }

    #[test]
    fn storage_backends_need_their_keys() {
        let e = Config::load(None, &env(&[("AIHOST_STORAGE__TYPE", "cf_images")])).unwrap_err();
        assert_eq!(
            codes(&e),
            vec![
                ("missing_value", Some("storage.account_id")),
                ("missing_value", Some("storage.api_token"))
            ]
        );
        assert_eq!(
            e[0].origin(),
            &Origin::Env("AIHOST_STORAGE__TYPE".to_owned())
        );
        let e = Config::load(None, &env(&[("STORAGE_PROVIDER", "gcs")])).unwrap_err();
        assert_eq!(codes(&e), vec![("missing_value", Some("storage.bucket"))]);
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[server]\nbind = \"x\"\nbind = \"y\"\n[queue\n");
        let e = Config::load(Some(&p), &BTreeMap::new()).unwrap_err();
        assert!(e.iter().all(|e| e.code() == "toml_syntax"), "{e}");
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
    fn socket_addresses() {
        for ok in [
            "127.0.0.1:8000",
            "[::1]:80",
            "0.0.0.0:0",
            "localhost:8080",
            "my-host.lan:1",
        ] {
            assert!(is_socket_address(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "localhost",
            ":80",
            "host:99999",
            "a b:80",
            "http://x:80",
        ] {
            assert!(!is_socket_address(bad), "{bad}");
        }
    }

    #[test]
    fn redacted_toml_hides_secrets_and_parses_back() {
        let mut c = Config::default();
        c.server.api_keys = vec!["secret-key".into()];
        c.storage.secret_access_key = Some("s3cret".into());
        c.storage.api_token = Some("t0ken".into());
        c.storage.access_key_id = Some("AKID".into());
        c.queue.url = Some("postgres://user:pw123@db/aihost".into());
        let text = c.redacted_toml();
        for secret in ["secret-key", "s3cret", "t0ken", "pw123"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("AKID"), "{text}");
        assert!(text.contains("postgres://user:***@db/aihost"), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.server.api_keys, ["***"]);
        assert_eq!(back.storage.secret_access_key.as_deref(), Some("***"));
        assert_eq!(back.queue.lease_secs, c.queue.lease_secs);
    }

    #[test]
    fn schema_matches_the_structs() {
        let mut c = Config::default();
        let s = &mut c.storage;
        for o in [
            &mut s.bucket,
            &mut s.endpoint,
            &mut s.region,
            &mut s.access_key_id,
            &mut s.secret_access_key,
            &mut s.public_base_url,
            &mut s.account_id,
            &mut s.api_token,
            &mut s.delivery_domain,
        ] {
            *o = Some("x".into());
        }
        s.credential_path = Some("x".into());
        c.server.public_url = Some("x".into());
        c.queue.url = Some("x".into());
        c.dispatcher.worker_id = Some("x".into());
        let toml::Value::Table(t) = toml::Value::try_from(&c).unwrap() else {
            panic!()
        };
        let from_structs: Vec<(String, String)> = t
            .iter()
            .flat_map(|(s, v)| v.as_table().unwrap().keys().map(|k| (s.clone(), k.clone())))
            .collect();
        let mut from_schema: Vec<(String, String)> = SCHEMA
            .iter()
            .flat_map(|(s, keys)| keys.iter().map(|(k, _)| (s.to_string(), k.to_string())))
            .collect();
        let mut from_structs = from_structs;
        from_structs.sort();
        from_schema.sort();
        assert_eq!(from_structs, from_schema);
        // Each kind parses from a variable into something the struct accepts.
        for (s, keys) in SCHEMA {
            for (k, kind) in *keys {
                let raw = match kind {
                    Kind::Int => "1",
                    Kind::List => "a,b",
                    _ if *k == "type" && *s == "queue" => "sqlite",
                    _ if *k == "type" => "fs",
                    _ if *k == "format" => "json",
                    _ => "x",
                };
                let mut l = Layers::default();
                l.set_env("V", (s, k), *kind, raw);
                let (v, _) = &l.values[&(*s, *k)];
                check_key(s, k, v).unwrap_or_else(|e| panic!("{s}.{k}: {e}"));
            }
        }
    }

    #[test]
    fn closest_suggestions() {
        assert_eq!(closest("bnd", ["bind", "public_url"]), Some("bind"));
        assert_eq!(closest("completely", ["bind"]), None);
        assert_eq!(suggest("server", "manifest"), Some(("plugins", "manifest")));
        assert_eq!(suggest("srever", "bnid"), Some(("server", "bind")));
    }
}
