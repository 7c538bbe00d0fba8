//! Layering: the values of the file, then of the seed service's variables, then of
//! `AIHOST_SECTION__KEY` variables, each later layer replacing a key's value and recording where
//! it came from; then the per-key type check that turns them into the table serde reads.
//!
//! Separate from [`super::Config::load`], which drives the steps, and from the key table
//! ([`super::keys`]), which says which keys exist and how a variable's text becomes a value.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    error::{ConfigError, Origin},
    keys::{ENV_PREFIX, KeyId, Kind, SCHEMA, env_name, lookup, section_keys, suggest},
    settings::check_key,
    toml_file::{TomlFile, closest},
};

/// Values gathered from the layers, with their origin, before deserialization.
#[derive(Default)]
pub(super) struct Layers {
    /// The value of every key set by a layer, with where it was set; a later layer replaces it.
    pub(super) values: BTreeMap<KeyId, (toml::Value, Origin)>,
    /// Every problem found so far, by any step of the load.
    pub(super) errors: Vec<ConfigError>,
}

impl Layers {
    /// Where a key's value comes from: the layer that set it, or the default.
    pub(super) fn origin(&self, id: KeyId) -> Origin {
        self.values
            .get(&id)
            .map_or(Origin::Default, |(_, o)| o.clone())
    }

    /// Reports a value of `id` that is not acceptable, at its origin.
    pub(super) fn invalid(&mut self, id: KeyId, message: impl Into<String>) {
        let origin = self.origin(id);
        self.errors.push(ConfigError::InvalidValue {
            origin,
            key: format!("{}.{}", id.0, id.1),
            message: message.into(),
        });
    }

    /// The file's sections and keys, over the defaults; unknown ones are reported.
    pub(super) fn file(&mut self, file: &TomlFile) {
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
    pub(super) fn set_env(&mut self, var: &str, id: KeyId, kind: Kind, raw: &str) {
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
            Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
                "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
                _ => {
                    self.errors.push(ConfigError::InvalidType {
                        origin,
                        key: format!("{}.{}", id.0, id.1),
                        message: format!("expected true or false, found `{raw}`"),
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
    pub(super) fn seed_env(&mut self, env: &BTreeMap<String, String>) {
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
    pub(super) fn aihost_env(&mut self, env: &BTreeMap<String, String>) {
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

    /// Type-checks every value alone (so that one bad key does not hide the others) and
    /// returns the table of the good ones, to deserialize, with the keys that failed (they keep
    /// their defaults). Each failure is reported as a wrong type or a bad value.
    pub(super) fn check_types(&mut self) -> (toml::Table, BTreeSet<KeyId>) {
        let mut table = toml::Table::new();
        let mut bad: BTreeSet<KeyId> = BTreeSet::new();
        for (&(s, k), (v, origin)) in &self.values {
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
                    self.errors.push(if message.starts_with("invalid type") {
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
        (table, bad)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Origin, StorageType, test_support::*};
    use crate::error_codes;

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
            error_codes::CONFIG_INVALID_TYPE
        );
        assert_eq!(
            find("AIHOST_QUEUE__TYPE").unwrap().code(),
            error_codes::CONFIG_INVALID_VALUE
        );
        assert_eq!(err.len(), 4, "{err}");
        assert!(
            err.to_string().contains("env AIHOST_QUEUE__LEASE_SECS"),
            "{err}"
        );
    }
}
