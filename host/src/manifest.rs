//! The plugin manifest, `plugins.toml`: which plugin libraries load, and their settings.
//!
//! ```toml
//! dir = "target/debug"      # searched for libraries; relative to this file
//! autoload = true           # also load every other library found in `dir`, with its defaults
//!
//! [[plugin]]
//! name = "comfyui"          # must match the name the library reports
//! library = "libaihost_comfyui.so"   # optional: default is the platform file name in `dir`
//! version = "^0.1"          # semver requirement on the plugin's version; default "*"
//! enabled = true            # default true
//! required = true           # the host refuses to start without it; default false
//! [plugin.config]           # handed to the plugin's `init` as JSON
//! urls = ["http://127.0.0.1:8188"]
//! ```
//!
//! [`PluginManifest::load`] reports every problem of the file together (unknown keys with a
//! suggestion, wrong types, duplicate names, bad version requirements, TOML syntax), each with
//! the file, line and key, using [`ConfigError`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use semver::VersionReq;
use serde_json::Value as Json;

use crate::config::{
    error::{ConfigError, ConfigErrors, Origin},
    toml_file::{TomlFile, absolute_against, closest},
};

const TOP_KEYS: [&str; 3] = ["dir", "autoload", "plugin"];
const ENTRY_KEYS: [&str; 6] = [
    "name", "library", "version", "enabled", "required", "config",
];

/// The contents of `plugins.toml`. `PluginManifest::default()` is the empty manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PluginManifest {
    /// Directory searched for plugin libraries (absolute once loaded). `None`: entries without
    /// `library` are looked up by the system's library search path, and nothing is autoloaded.
    pub dir: Option<PathBuf>,
    /// Also load every library in `dir` that no entry names, with its default config.
    /// Default false.
    pub autoload: bool,
    /// The `[[plugin]]` entries, in file order; names are unique.
    pub plugins: Vec<PluginEntry>,
}

/// One `[[plugin]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PluginEntry {
    /// The plugin's name; the library must report the same one.
    pub name: String,
    /// The library file (absolute once loaded). `None`: [`platform_library_name`] in `dir`.
    pub library: Option<PathBuf>,
    /// Requirement on the plugin's own version. Default `*`.
    pub version: VersionReq,
    /// Whether to load it. Default true.
    pub enabled: bool,
    /// Whether the host refuses to start when it fails to load. Default false.
    pub required: bool,
    /// The `[plugin.config]` table as a JSON object, handed to the plugin's `init`. Default `{}`.
    pub config: Json,
}

impl PluginEntry {
    /// An entry with every default: enabled, not required, any version, empty config.
    pub(crate) fn new(name: impl Into<String>) -> PluginEntry {
        PluginEntry {
            name: name.into(),
            library: None,
            version: VersionReq::STAR,
            enabled: true,
            required: false,
            config: Json::Object(Default::default()),
        }
    }

    /// The library file to load: `library` if set, else [`platform_library_name`] of `name` in
    /// `dir` (or the bare file name, for the system's library search, without a `dir`).
    pub(crate) fn library_path(&self, dir: Option<&Path>) -> PathBuf {
        match (&self.library, dir) {
            (Some(lib), _) => lib.clone(),
            (None, Some(dir)) => dir.join(platform_library_name(&self.name)),
            (None, None) => PathBuf::from(platform_library_name(&self.name)),
        }
    }
}

/// The file name cargo gives a `cdylib` built from `crate_name` on this platform:
/// `aihost-imageops` → `libaihost_imageops.so` (Linux), `libaihost_imageops.dylib` (macOS),
/// `aihost_imageops.dll` (Windows).
pub(crate) fn platform_library_name(crate_name: &str) -> String {
    let stem = crate_name.replace('-', "_");
    format!(
        "{}{stem}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

impl PluginManifest {
    /// Reads `path`. An absent file gives the empty manifest unless `must_exist`. Relative
    /// `dir` and `library` paths are resolved against the file's directory.
    pub(crate) fn load(path: &Path, must_exist: bool) -> Result<PluginManifest, ConfigErrors> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if !must_exist && !abs.exists() {
            return Ok(PluginManifest::default());
        }
        let file = TomlFile::read(&abs).map_err(ConfigErrors)?;
        Self::from_file(&file)
    }

    #[cfg(test)]
    /// Parses manifest text as if read from `path` (which sets the base of relative paths and
    /// the file named in errors).
    pub(crate) fn parse(text: &str, path: &Path) -> Result<PluginManifest, ConfigErrors> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let file = TomlFile::parse(&abs, text).map_err(ConfigErrors)?;
        Self::from_file(&file)
    }

    #[cfg(test)]
    /// The entry named `name`, if any.
    pub(crate) fn entry(&self, name: &str) -> Option<&PluginEntry> {
        self.plugins.iter().find(|p| p.name == name)
    }

    fn from_file(file: &TomlFile) -> Result<PluginManifest, ConfigErrors> {
        let mut p = Parser {
            file,
            errors: Vec::new(),
        };
        let mut manifest = PluginManifest::default();
        let base = file.dir();
        for (key, value) in &file.table {
            match key.as_str() {
                "dir" => {
                    if let Some(d) = p.path(key, value) {
                        manifest.dir = Some(absolute_against(&base, &d));
                    }
                }
                "autoload" => {
                    if let Some(b) = p.bool(key, value) {
                        manifest.autoload = b;
                    }
                }
                "plugin" => match value {
                    toml::Value::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(e) = p.entry(i, item, &base) {
                                manifest.plugins.push(e);
                            }
                        }
                    }
                    other => p.wrong_type(key, "an array of tables `[[plugin]]`", other),
                },
                other => p.unknown(other, &TOP_KEYS),
            }
        }
        p.duplicates();
        if p.errors.is_empty() {
            Ok(manifest)
        } else {
            Err(ConfigErrors(p.errors).sorted())
        }
    }
}

struct Parser<'a> {
    file: &'a TomlFile,
    errors: Vec<ConfigError>,
}

impl Parser<'_> {
    fn origin(&self, key: &str) -> Origin {
        self.file.origin(key)
    }

    fn unknown(&mut self, key: &str, known: &[&str]) {
        let (prefix, last) = match key.rsplit_once('.') {
            Some((prefix, last)) => (Some(prefix), last),
            None => (None, key),
        };
        let suggestion = closest(last, known.iter().copied()).map(|s| match prefix {
            Some(prefix) => format!("{prefix}.{s}"),
            None => s.to_owned(),
        });
        self.errors.push(ConfigError::UnknownKey {
            origin: self.origin(key),
            key: key.to_owned(),
            suggestion,
        });
    }

    fn wrong_type(&mut self, key: &str, expected: &str, found: &toml::Value) {
        self.errors.push(ConfigError::InvalidType {
            origin: self.origin(key),
            key: key.to_owned(),
            message: format!("expected {expected}, found {}", found.type_str()),
        });
    }

    fn invalid(&mut self, key: &str, message: String) {
        self.errors.push(ConfigError::InvalidValue {
            origin: self.origin(key),
            key: key.to_owned(),
            message,
        });
    }

    fn bool(&mut self, key: &str, v: &toml::Value) -> Option<bool> {
        match v {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                self.wrong_type(key, "a boolean", other);
                None
            }
        }
    }

    fn string<'v>(&mut self, key: &str, v: &'v toml::Value) -> Option<&'v str> {
        match v {
            toml::Value::String(s) if s.trim().is_empty() => {
                self.invalid(key, "must not be empty".to_owned());
                None
            }
            toml::Value::String(s) => Some(s),
            other => {
                self.wrong_type(key, "a string", other);
                None
            }
        }
    }

    fn path(&mut self, key: &str, v: &toml::Value) -> Option<PathBuf> {
        self.string(key, v).map(PathBuf::from)
    }

    fn entry(&mut self, i: usize, item: &toml::Value, base: &Path) -> Option<PluginEntry> {
        let at = format!("plugin[{i}]");
        let Some(table) = item.as_table() else {
            self.wrong_type(&at, "a table `[[plugin]]`", item);
            return None;
        };
        let before = self.errors.len();
        let name = match table.get("name") {
            Some(v) => {
                let key = format!("{at}.name");
                let name = self.string(&key, v);
                if let Some(n) = name
                    && n.contains(['/', '\\'])
                {
                    self.invalid(&key, format!("`{n}` is a name, not a path (use `library`)"));
                }
                name
            }
            None => {
                self.errors.push(ConfigError::MissingValue {
                    origin: self.origin(&at),
                    key: format!("{at}.name"),
                    message: "every [[plugin]] needs a name".to_owned(),
                });
                None
            }
        };
        // Messages about this entry name the plugin when it has a name.
        let who = name.map_or_else(|| at.clone(), |n| format!("plugin `{n}`"));
        let mut entry = PluginEntry::new(name.unwrap_or_default());
        for (k, v) in table {
            let key = format!("{at}.{k}");
            match k.as_str() {
                "name" => {}
                "library" => {
                    if let Some(lib) = self.path(&key, v) {
                        entry.library = Some(absolute_against(base, &lib));
                    }
                }
                "version" => {
                    if let Some(req) = self.string(&key, v) {
                        match VersionReq::parse(req) {
                            Ok(r) => entry.version = r,
                            Err(e) => self.invalid(
                                &key,
                                format!("{who}: `{req}` is not a version requirement: {e}"),
                            ),
                        }
                    }
                }
                "enabled" => {
                    if let Some(b) = self.bool(&key, v) {
                        entry.enabled = b;
                    }
                }
                "required" => {
                    if let Some(b) = self.bool(&key, v) {
                        entry.required = b;
                    }
                }
                "config" => match v {
                    toml::Value::Table(_) => match toml_to_json(v) {
                        Ok(j) => entry.config = j,
                        Err(m) => self.invalid(&key, format!("{who}: {m}")),
                    },
                    other => self.wrong_type(&key, "a table `[plugin.config]`", other),
                },
                _ => self.unknown(&key, &ENTRY_KEYS),
            }
        }
        (self.errors.len() == before).then_some(entry)
    }

    fn duplicates(&mut self) {
        let Some(toml::Value::Array(items)) = self.file.table.get("plugin") else {
            return;
        };
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let Some(name) = item.get("name").and_then(toml::Value::as_str) else {
                continue;
            };
            match first.get(name) {
                Some(&j) => {
                    let first_at = self.origin(&format!("plugin[{j}]"));
                    self.errors.push(ConfigError::Duplicate {
                        origin: self.origin(&format!("plugin[{i}].name")),
                        key: format!("plugin[{i}].name"),
                        message: format!(
                            "plugin `{name}` is already listed (plugin[{j}], {first_at})"
                        ),
                    });
                }
                None => {
                    first.insert(name, i);
                }
            }
        }
    }
}

/// A TOML value as JSON: datetimes become strings; NaN and infinities are refused.
fn toml_to_json(v: &toml::Value) -> Result<Json, String> {
    Ok(match v {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("{f} cannot be written in JSON"))?,
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(a) => Json::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => Json::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_codes;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("plugins.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn absent_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plugins.toml");
        assert_eq!(
            PluginManifest::load(&p, false).unwrap(),
            PluginManifest::default()
        );
        let e = PluginManifest::load(&p, true).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].code(), error_codes::CONFIG_UNREADABLE_FILE);
    }

    #[test]
    fn entries_defaults_paths_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"
dir = "libs"
autoload = true

[[plugin]]
name = "aihost-imageops"

[[plugin]]
name = "comfyui"
library = "../other/libcomfy.so"
version = "^0.2"
enabled = false
required = true
[plugin.config]
urls = ["http://127.0.0.1:8188"]
timeout = 1.5
retries = 3
since = 2024-01-02T03:04:05Z
[plugin.config.nested]
on = true
"#,
        );
        let m = PluginManifest::load(&p, true).unwrap();
        let d = std::path::absolute(dir.path()).unwrap();
        assert_eq!(m.dir, Some(d.join("libs")));
        assert!(m.autoload);
        assert_eq!(m.plugins.len(), 2);

        let a = &m.plugins[0];
        assert_eq!(a, &PluginEntry::new("aihost-imageops"));
        assert!(a.enabled && !a.required);
        assert_eq!(a.version, VersionReq::STAR);
        assert_eq!(a.config, serde_json::json!({}));
        assert_eq!(
            a.library_path(m.dir.as_deref()),
            d.join("libs")
                .join(platform_library_name("aihost-imageops"))
        );
        assert_eq!(
            a.library_path(None),
            PathBuf::from(platform_library_name("aihost-imageops"))
        );

        let c = m.entry("comfyui").unwrap();
        assert_eq!(c.library, Some(d.join("../other/libcomfy.so")));
        assert_eq!(
            c.library_path(m.dir.as_deref()),
            d.join("../other/libcomfy.so")
        );
        assert!(!c.enabled && c.required);
        assert!(c.version.matches(&semver::Version::new(0, 2, 5)));
        assert!(!c.version.matches(&semver::Version::new(0, 3, 0)));
        assert_eq!(
            c.config,
            serde_json::json!({
                "urls": ["http://127.0.0.1:8188"],
                "timeout": 1.5,
                "retries": 3,
                "since": "2024-01-02T03:04:05Z",
                "nested": { "on": true },
            })
        );
    }

    #[test]
    fn every_error_reported_with_line_and_key() {
        let text = r#"dir = 5
autoload = true
plugins = []

[[plugin]]
name = "a"
enable = false

[[plugin]]
name = "b"
version = "not a version"
required = "yes"

[[plugin]]
name = "a"

[[plugin]]
library = "x.so"
config = 3
"#;
        let e = PluginManifest::parse(text, Path::new("/etc/aihost/plugins.toml")).unwrap_err();
        let got: Vec<(&str, Option<&str>)> = e.iter().map(|e| (e.code(), e.key())).collect();
        assert_eq!(
            got,
            vec![
                (error_codes::CONFIG_INVALID_TYPE, Some("dir")),
                (error_codes::CONFIG_UNKNOWN_KEY, Some("plugins")),
                (error_codes::CONFIG_UNKNOWN_KEY, Some("plugin[0].enable")),
                (error_codes::CONFIG_INVALID_VALUE, Some("plugin[1].version")),
                (error_codes::CONFIG_INVALID_TYPE, Some("plugin[1].required")),
                (error_codes::CONFIG_DUPLICATE, Some("plugin[2].name")),
                (error_codes::CONFIG_MISSING_VALUE, Some("plugin[3].name")),
                (error_codes::CONFIG_INVALID_TYPE, Some("plugin[3].config")),
            ],
            "{e}"
        );
        let text = e.to_string();
        assert_eq!(text.lines().count(), 8, "{text}");
        assert!(text.contains("/etc/aihost/plugins.toml:1: `dir`"), "{text}");
        assert!(
            text.contains("unknown key `plugins` (did you mean `plugin`?)"),
            "{text}"
        );
        assert!(
            text.contains(":7: unknown key `plugin[0].enable` (did you mean `plugin[0].enabled`?)"),
            "{text}"
        );
        assert!(
            text.contains(":11: `plugin[1].version`: plugin `b`: `not a version`"),
            "{text}"
        );
        assert!(
            text.contains(":15: `plugin[2].name`: plugin `a` is already listed"),
            "{text}"
        );
        assert!(text.contains(":17: `plugin[3].name`"), "{text}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = PluginManifest::parse(
            "[[plugin]]\nname = \"a\"\nversion = \n",
            Path::new("p.toml"),
        )
        .unwrap_err();
        assert_eq!(e[0].code(), error_codes::CONFIG_TOML_SYNTAX);
        assert!(
            matches!(e[0].origin(), Origin::File { line: Some(3), .. }),
            "{e:?}"
        );
    }

    #[test]
    fn library_names() {
        let name = platform_library_name("aihost-imageops");
        if cfg!(target_os = "linux") {
            assert_eq!(name, "libaihost_imageops.so");
        }
        assert!(name.contains("aihost_imageops"));
    }
}
