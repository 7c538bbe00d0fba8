//! Validation: the checks a loaded [`Config`] must pass beyond its types (addresses, URLs,
//! ranges, keys one backend requires, log filters), each problem reported at the origin of the
//! value concerned.
//!
//! Separate from the settings structs so that the rules of all sections read in one place, and
//! from loading so that the load reads as its steps.

use std::net::SocketAddr;

use super::{Config, ConfigError, QueueType, StorageType, layers::Layers};

impl Config {
    /// Reports every value that is not acceptable, or missing, to `l`.
    pub(super) fn validate(&self, l: &mut Layers) {
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
        let metrics_bind = &self.server.metrics_bind;
        if !metrics_bind.is_empty() {
            if !is_socket_address(metrics_bind) {
                l.invalid(
                    ("server", "metrics_bind"),
                    format!(
                        "`{metrics_bind}` is not a socket address (host:port, e.g. 127.0.0.1:9100), or empty for none"
                    ),
                );
            } else if *metrics_bind == self.server.bind {
                l.invalid(
                    ("server", "metrics_bind"),
                    "must differ from server.bind (it is a second listener)",
                );
            }
        }
        if let Some(u) = &self.server.public_url
            && let Err(m) = check_http_url(u)
        {
            l.invalid(("server", "public_url"), m);
        }
        if self.server.api_keys.iter().any(|k| k.trim().is_empty()) {
            l.invalid(("server", "api_keys"), "an API key is empty");
        }
        for origin in &self.server.cors_origins {
            if origin != "*" && !is_origin(origin) {
                l.invalid(
                    ("server", "cors_origins"),
                    format!("`{origin}` is not an origin (scheme://host[:port], no path; or `*`)"),
                );
            }
        }
        for (key, v) in [
            ("max_body_bytes", self.server.max_body_bytes),
            ("max_upload_bytes", self.server.max_upload_bytes),
            (
                "header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            ),
            ("idle_timeout_secs", self.server.idle_timeout_secs),
            ("send_timeout_secs", self.server.send_timeout_secs),
            ("max_connections", self.server.max_connections),
            ("max_streams", self.server.max_streams),
            ("max_concurrent_uploads", self.server.max_concurrent_uploads),
            ("max_list_input_bytes", self.server.max_list_input_bytes),
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
        if self
            .dispatcher
            .worker_id
            .as_deref()
            .is_some_and(|w| w.contains('#') || w.len() > 100)
        {
            l.invalid(
                ("dispatcher", "worker_id"),
                "must not contain '#' (it separates the identity from the run) nor pass 100 bytes",
            );
        }
        if let Err(m) = self.dispatcher.type_timeouts() {
            l.invalid(("dispatcher", "type_timeouts"), m);
        }

        // log
        if let Err(m) = check_log_level(&self.log.level) {
            l.invalid(("log", "level"), m);
        }
        if let Some(u) = self.log.otlp()
            && let Err(m) = check_http_url(u)
        {
            l.invalid(("log", "otlp_endpoint"), m);
        }
        if self.log.otlp_service_name.trim().is_empty() {
            l.invalid(("log", "otlp_service_name"), "must not be empty");
        }

        // retention
        if self.retention.batch == 0 {
            l.invalid(("retention", "batch"), "must be at least 1");
        }
        if self.retention.interval_secs == 0 {
            l.invalid(("retention", "interval_secs"), "must be at least 1");
        }
        if self.retention.day_secs == 0 {
            l.invalid(("retention", "day_secs"), "must be at least 1");
        }

        if !matches!(self.storage.fallback.trim(), "fs" | "none") {
            l.invalid(("storage", "fallback"), "must be `fs` or `none`");
        }

        // webhooks
        let w = &self.webhooks;
        for (i, secret) in w.secrets.iter().enumerate() {
            if let Err(m) = super::parse_webhook_secret(secret) {
                l.invalid(("webhooks", "secrets"), format!("secret #{}: {m}", i + 1));
            }
        }
        for (key, v) in [
            ("max_age_secs", w.max_age_secs),
            ("backoff_base_ms", w.backoff_base_ms),
            ("backoff_max_ms", w.backoff_max_ms),
            ("concurrency", u64::from(w.concurrency)),
            ("timeout_secs", w.timeout_secs),
            ("poll_interval_ms", w.poll_interval_ms),
        ] {
            if v == 0 {
                l.invalid(("webhooks", key), "must be at least 1");
            }
        }
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

/// A browser origin: `http(s)://host[:port]` with nothing after it.
fn is_origin(s: &str) -> bool {
    match url::Url::parse(s) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.path() == "/"
                && !s.ends_with('/')
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
        }
        Err(_) => false,
    }
}

/// An `http://` or `https://` URL with a host.
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
    use crate::error_codes;
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{ConfigError, Origin, test_support::*};

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
            (error_codes::CONFIG_UNKNOWN_KEY, Some("server.bnd")),
            (error_codes::CONFIG_INVALID_VALUE, Some("server.bind")),
            (
                error_codes::CONFIG_INVALID_TYPE,
                Some("server.max_body_bytes"),
            ),
            (error_codes::CONFIG_INVALID_VALUE, Some("server.public_url")),
            (error_codes::CONFIG_MISSING_VALUE, Some("queue.url")),
            (error_codes::CONFIG_INVALID_VALUE, Some("queue.lease_secs")),
            (
                error_codes::CONFIG_INVALID_VALUE,
                Some("queue.default_max_attempts"),
            ),
            (error_codes::CONFIG_UNKNOWN_KEY, Some("storag")),
            (error_codes::CONFIG_INVALID_VALUE, Some("log.format")),
            (error_codes::CONFIG_INVALID_VALUE, Some("log.level")),
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
    fn storage_backends_need_their_keys() {
        let e = Config::load(None, &env(&[("AIHOST_STORAGE__TYPE", "cf_images")])).unwrap_err();
        assert_eq!(
            codes(&e),
            vec![
                (
                    error_codes::CONFIG_MISSING_VALUE,
                    Some("storage.account_id")
                ),
                (error_codes::CONFIG_MISSING_VALUE, Some("storage.api_token"))
            ]
        );
        assert_eq!(
            e[0].origin(),
            &Origin::Env("AIHOST_STORAGE__TYPE".to_owned())
        );
        let e = Config::load(None, &env(&[("STORAGE_PROVIDER", "gcs")])).unwrap_err();
        assert_eq!(
            codes(&e),
            vec![(error_codes::CONFIG_MISSING_VALUE, Some("storage.bucket"))]
        );
    }

    #[test]
    fn otlp_endpoint_is_an_http_url_and_empty_means_off() {
        let e = Config::load(
            None,
            &env(&[("AIHOST_LOG__OTLP_ENDPOINT", "grpc://x:4317")]),
        )
        .unwrap_err();
        assert_eq!(
            codes(&e),
            vec![(error_codes::CONFIG_INVALID_VALUE, Some("log.otlp_endpoint"))]
        );
        let c = Config::load(None, &env(&[("AIHOST_LOG__OTLP_ENDPOINT", "")])).unwrap();
        assert_eq!(c.log.otlp(), None);
        let url = "http://127.0.0.1:4318/v1/traces";
        let c = Config::load(
            None,
            &env(&[
                ("AIHOST_LOG__OTLP_ENDPOINT", url),
                ("AIHOST_LOG__OTLP_SERVICE_NAME", "api-eu"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.log.otlp(), c.log.otlp_service_name.as_str()),
            (Some(url), "api-eu")
        );
        let e = Config::load(None, &env(&[("AIHOST_LOG__OTLP_SERVICE_NAME", " ")])).unwrap_err();
        assert_eq!(
            codes(&e),
            vec![(
                error_codes::CONFIG_INVALID_VALUE,
                Some("log.otlp_service_name")
            )]
        );
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
}
