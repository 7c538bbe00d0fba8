//! The fetcher's one error type, [`FetchError`], with its stable codes and whether a retry may
//! help, and how URLs appear in its messages (passwords redacted, long input shortened).
//!
//! It is separate because the codes are a contract: they travel to plugins (`ctx.fetch`) and
//! from there into task errors, so they are defined in one place.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use aihost_plugin_api::codes;
use url::Url;

/// Errors of the fetcher. [`FetchError::code`] is stable (`fetch_*`); the message is one line meant for
/// API users.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The host is, or resolves to, an address the SSRF guard refuses.
    #[error("refused to fetch {url}: {detail} (allow it with fetch.allow_hosts)")]
    PrivateAddress {
        /// The URL (password redacted).
        url: String,
        /// Its host.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// e.g. "10.0.0.1 is a private address".
        detail: String,
    },
    /// A redirect led somewhere the fetcher will not go.
    #[error("refused to follow the redirect from {from} to {to}: {detail}")]
    RedirectBlocked {
        /// The URL that answered with the redirect.
        from: String,
        /// Where it pointed.
        to: String,
        /// Why it is not followed.
        detail: String,
    },
    /// Neither http, https nor a key of the service's storage.
    #[error(
        "cannot fetch {url}: the '{scheme}' scheme is not supported \
         (use an http or https URL, or a key of this service's storage)"
    )]
    UnsupportedScheme {
        /// The source as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The source is not a usable URL or storage key.
    #[error("invalid input '{input}': {reason}")]
    InvalidUrl {
        /// The source as given (truncated).
        input: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The body is larger than `max_bytes`; nothing was kept.
    #[error("{url} is too large: {}", too_large_detail(*.size, *.limit))]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit, in bytes.
        limit: u64,
        /// The announced size, when the server sent one.
        size: Option<u64>,
    },
    /// The server answered with a status other than 2xx.
    #[error("fetching {url} failed: the server answered HTTP {status}")]
    HttpStatus {
        /// The URL that answered.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Connecting or downloading took too long.
    #[error("fetching {url} timed out after {}", seconds(*.after))]
    Timeout {
        /// The URL.
        url: String,
        /// The limit that was reached.
        after: Duration,
    },
    /// The host could not be resolved or connected to, or the connection broke.
    #[error("could not reach {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The source names an object of this service's storage that does not exist.
    #[error("input '{key}' is not in this service's storage")]
    NotFound {
        /// The storage key.
        key: String,
    },
    /// The input could not be saved locally (or read from storage).
    #[error("could not save the input: {detail}")]
    Io {
        /// What went wrong.
        detail: String,
    },
}

fn too_large_detail(size: Option<u64>, limit: u64) -> String {
    match size {
        Some(size) => format!("{size} bytes, over the fetch limit of {limit} bytes"),
        None => format!("more than the fetch limit of {limit} bytes"),
    }
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

impl FetchError {
    /// Stable machine-readable code of this error, namespaced `fetch_*` so that a task that
    /// fails on an input says so (a fetch timeout is `fetch_timeout`, not the task's
    /// `timeout`). The codes are those of [`aihost_plugin_api::codes`]; `ctx.fetch` passes
    /// them to plugins unchanged.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            FetchError::PrivateAddress { .. } | FetchError::RedirectBlocked { .. } => {
                codes::FETCH_BLOCKED
            }
            FetchError::UnsupportedScheme { .. } | FetchError::InvalidUrl { .. } => {
                codes::FETCH_INVALID_URL
            }
            FetchError::TooLarge { .. } => codes::FETCH_TOO_LARGE,
            FetchError::HttpStatus {
                status: 404 | 410, ..
            }
            | FetchError::NotFound { .. } => codes::FETCH_NOT_FOUND,
            FetchError::Timeout { .. } => codes::FETCH_TIMEOUT,
            FetchError::HttpStatus { .. }
            | FetchError::Unreachable { .. }
            | FetchError::Io { .. } => codes::FETCH_FAILED,
        }
    }

    /// Whether trying again later may succeed: 5xx and 429 answers, timeouts, connection
    /// failures.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            FetchError::HttpStatus { status, .. } => *status >= 500 || *status == 429,
            FetchError::Timeout { .. } | FetchError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// An `Io` error: `context: err`.
    pub(super) fn io(context: &str, err: io::Error) -> FetchError {
        FetchError::Io {
            detail: format!("{context}: {err}"),
        }
    }
}

/// The URL for messages, with any password replaced.
pub(super) fn shown(url: &Url) -> String {
    if url.password().is_some() {
        let mut url = url.clone();
        let _ = url.set_password(Some("***"));
        url.to_string()
    } else {
        url.to_string()
    }
}

/// `text`, cut to 200 characters (with `…`) for messages.
pub(super) fn shorten(text: &str) -> String {
    if text.chars().count() > 200 {
        let mut s: String = text.chars().take(200).collect();
        s.push('…');
        s
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_codes_are_namespaced() {
        let url = || "http://example.com/a".to_owned();
        let status = |status| FetchError::HttpStatus { url: url(), status };
        let cases = [
            (
                FetchError::PrivateAddress {
                    url: url(),
                    host: "x".into(),
                    addr: IpAddr::from([10, 0, 0, 1]),
                    detail: String::new(),
                },
                codes::FETCH_BLOCKED,
            ),
            (
                FetchError::RedirectBlocked {
                    from: url(),
                    to: url(),
                    detail: String::new(),
                },
                codes::FETCH_BLOCKED,
            ),
            (
                FetchError::UnsupportedScheme {
                    url: url(),
                    scheme: "ftp".into(),
                },
                codes::FETCH_INVALID_URL,
            ),
            (
                FetchError::InvalidUrl {
                    input: url(),
                    reason: String::new(),
                },
                codes::FETCH_INVALID_URL,
            ),
            (
                FetchError::TooLarge {
                    url: url(),
                    limit: 1,
                    size: None,
                },
                codes::FETCH_TOO_LARGE,
            ),
            (status(404), codes::FETCH_NOT_FOUND),
            (status(410), codes::FETCH_NOT_FOUND),
            (status(403), codes::FETCH_FAILED),
            (status(503), codes::FETCH_FAILED),
            (
                FetchError::Timeout {
                    url: url(),
                    after: Duration::from_secs(1),
                },
                codes::FETCH_TIMEOUT,
            ),
            (
                FetchError::Unreachable {
                    url: url(),
                    detail: String::new(),
                },
                codes::FETCH_FAILED,
            ),
            (
                FetchError::NotFound { key: "k".into() },
                codes::FETCH_NOT_FOUND,
            ),
            (
                FetchError::Io {
                    detail: String::new(),
                },
                codes::FETCH_FAILED,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err:?}");
        }
        // The task's own timeout keeps its code; a fetch timeout is told apart from it.
        assert_ne!(codes::FETCH_TIMEOUT, codes::TIMEOUT);
        assert!(status(503).retryable() && !status(404).retryable());
    }
}
