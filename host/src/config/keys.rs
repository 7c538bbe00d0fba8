//! The key table: every section and key of `aihost.toml`, how each is written in an environment
//! variable, the variable names (`AIHOST_SECTION__KEY`) and the did-you-mean suggestions for
//! unknown keys.
//!
//! # Why the table repeats the structs
//!
//! The structs in [`super::settings`] are the one source of key *names* and defaults, but the
//! table also says how each value is written in a variable ([`Kind`]: an integer, a
//! comma-separated list, an optional string that an empty variable unsets). Serde's derive exposes
//! a struct's field names, not their types, so deriving the kinds would take either a macro
//! language wrapping every settings struct (hiding the plain, documented structs) or a
//! hand-written introspecting serde deserializer run at startup; both are more code, and harder
//! to read, than this table. It is a `const`, so lookups and suggestions need no set-up.
//!
//! # Adding a key
//!
//! 1. Add the field, with its doc comment and its default, to the section's struct in
//!    [`super::settings`].
//! 2. Add `("key", Kind)` to that section in [`SCHEMA`], at the same position as the field.
//! 3. If it is a path, resolve it in `Config::resolve_paths`; if some values are not acceptable,
//!    check them in [`super::validate`].
//!
//! A new section also needs its struct in `Config`, in `settings::deserialize_section` and here.
//! The tests below fail when a struct field has no entry here or an entry has no field, and when
//! an entry's kind parses to something its field refuses.

use super::toml_file::closest;

/// Prefix of the environment variables that override keys: `AIHOST_SECTION__KEY`.
pub(crate) const ENV_PREFIX: &str = "AIHOST_";

/// How a key's value is written in an environment variable (and whether it is a path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A string (or enum name).
    Str,
    /// An optional string: an empty variable unsets it.
    OptStr,
    /// An integer.
    Int,
    /// A boolean: `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Bool,
    /// A comma-separated list of strings.
    List,
    /// A path, resolved to absolute.
    Path,
    /// An optional path, resolved to absolute; an empty variable unsets it.
    OptPath,
}

use Kind::{Bool, Int, List, OptPath, OptStr, Path as P, Str};

/// Every section and key, in the order of the structs' fields. Kept in step with the structs by
/// the tests below.
pub(super) const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    (
        "server",
        &[
            ("bind", Str),
            ("public_url", OptStr),
            ("api_keys", List),
            ("max_body_bytes", Int),
            ("max_upload_bytes", Int),
            ("shutdown_grace_secs", Int),
            ("max_queue_depth", Int),
            ("cors_origins", List),
            ("metrics_bind", Str),
            ("header_read_timeout_secs", Int),
            ("idle_timeout_secs", Int),
            ("send_timeout_secs", Int),
            ("max_connections", Int),
            ("max_streams", Int),
            ("max_concurrent_uploads", Int),
            ("max_list_input_bytes", Int),
            ("max_inline_output_bytes", Int),
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
            ("fallback", Str),
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
            ("timeout_secs", Int),
            ("type_timeouts", List),
            ("retry_timeouts", Bool),
            ("cancel_grace_secs", Int),
            ("max_unavailable_wait_secs", Int),
        ],
    ),
    (
        "log",
        &[
            ("level", Str),
            ("format", Str),
            ("otlp_endpoint", OptStr),
            ("otlp_service_name", Str),
        ],
    ),
    (
        "retention",
        &[
            ("completed_days", Int),
            ("failed_days", Int),
            ("cancelled_days", Int),
            ("uploads_days", Int),
            ("delete_files", Bool),
            ("batch", Int),
            ("interval_secs", Int),
            ("day_secs", Int),
        ],
    ),
    (
        "webhooks",
        &[
            ("secrets", List),
            ("max_age_secs", Int),
            ("backoff_base_ms", Int),
            ("backoff_max_ms", Int),
            ("concurrency", Int),
            ("timeout_secs", Int),
            ("progress_interval_ms", Int),
            ("poll_interval_ms", Int),
        ],
    ),
];

/// A known key: (section, key).
pub(super) type KeyId = (&'static str, &'static str);

/// The table entry of a known section.
pub(super) fn section_keys(
    section: &str,
) -> Option<(&'static str, &'static [(&'static str, Kind)])> {
    SCHEMA.iter().find(|(s, _)| *s == section).copied()
}

/// A known key's id and kind.
pub(super) fn lookup(section: &str, key: &str) -> Option<(KeyId, Kind)> {
    let (s, keys) = section_keys(section)?;
    keys.iter()
        .find(|(k, _)| *k == key)
        .map(|(k, kind)| ((s, *k), *kind))
}

/// The variable that sets `section.key`: `AIHOST_SECTION__KEY`.
pub(super) fn env_name(section: &str, key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}__{}",
        section.to_uppercase(),
        key.to_uppercase()
    )
}

/// The closest known `section.key` to an unknown one: a near key of the section, a near
/// section with the same key, or the same key in another section.
pub(super) fn suggest(section: &str, key: &str) -> Option<(&'static str, &'static str)> {
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

#[cfg(test)]
mod tests {
    use serde::{Deserialize, de::Visitor};

    use super::*;
    use crate::config::{Config, layers::Layers, settings};

    /// `.env.example` at the repository root lists every variable (commented out, with its
    /// default), so a new key must be added there too.
    #[test]
    fn env_example_lists_every_key() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.env.example");
        let text = std::fs::read_to_string(&path).expect(".env.example");
        let missing: Vec<String> = SCHEMA
            .iter()
            .flat_map(|(section, keys)| keys.iter().map(move |(key, _)| env_name(section, key)))
            .filter(|var| !text.contains(&format!("# {var}=")))
            .collect();
        assert!(missing.is_empty(), ".env.example lacks {missing:?}");
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
        c.log.otlp_endpoint = Some("x".into());
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
                    Kind::Bool => "yes",
                    Kind::List => "a,b",
                    _ if *k == "type" && *s == "queue" => "sqlite",
                    _ if *k == "type" => "fs",
                    _ if *k == "format" => "json",
                    _ => "x",
                };
                let mut l = Layers::default();
                l.set_env("V", (s, k), *kind, raw);
                let (v, _) = &l.values[&(*s, *k)];
                settings::check_key(s, k, v).unwrap_or_else(|e| panic!("{s}.{k}: {e}"));
            }
        }
    }

    /// A deserializer that only records the field names a struct asks for (serde's derive passes
    /// them, `rename`s applied and `skip`ped fields left out), then stops.
    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    /// Unlike `schema_matches_the_structs`, needs no value set: an `Option` field left out of
    /// both the table and that test is still found.
    #[test]
    fn key_table_lists_every_struct_field_in_order() {
        let mut sections = &[][..];
        assert!(Config::deserialize(FieldNames(&mut sections)).is_err());
        let table: Vec<&str> = SCHEMA.iter().map(|(s, _)| *s).collect();
        assert_eq!(sections, table, "sections of `Config` vs the key table");
        for (section, keys) in SCHEMA {
            let mut fields = &[][..];
            let result = settings::deserialize_section(section, FieldNames(&mut fields));
            assert!(
                result.is_some(),
                "settings::deserialize_section does not know `{section}`"
            );
            let table: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            assert_eq!(fields, table, "fields of `[{section}]` vs the key table");
        }
    }

    #[test]
    fn suggestions_for_unknown_keys() {
        assert_eq!(suggest("server", "manifest"), Some(("plugins", "manifest")));
        assert_eq!(suggest("srever", "bnid"), Some(("server", "bind")));
        assert_eq!(env_name("queue", "lease_secs"), "AIHOST_QUEUE__LEASE_SECS");
    }
}
