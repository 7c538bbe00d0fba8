//! The HTTP client the fetcher sends through, and how its errors become [`FetchError`]s.
//!
//! The client follows no redirects (the fetcher follows them one at a time, checking each
//! hop), ignores proxies from the environment (a proxy would connect to addresses the guard
//! never saw) and resolves names through the guard's resolver. It is separate from the
//! transfer logic because these settings are what make the SSRF guard hold.

use std::time::Duration;

use url::Url;

use super::FetchSettings;
use super::error::{FetchError, shown};
use super::guard::{Guard, refused_by_resolver};

/// Builds the client for `settings`, resolving through `guard`.
pub(super) fn build(
    settings: &FetchSettings,
    guard: &Guard,
) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(settings.connect_timeout)
        .dns_resolver(guard.resolver())
        .user_agent(concat!("aihost/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Io {
            detail: format!("cannot build the HTTP client: {e}"),
        })
}

/// Maps a client error for `url` to a [`FetchError`]: the resolver's refusal, a timeout
/// (reported as `connect_timeout`), or `Unreachable` with the causes as detail.
pub(super) fn classify(err: reqwest::Error, url: &Url, connect_timeout: Duration) -> FetchError {
    if let Some(refused) = refused_by_resolver(&err, url) {
        return refused;
    }
    if err.is_timeout() {
        return FetchError::Timeout {
            url: shown(url),
            after: connect_timeout,
        };
    }
    // The top-level message repeats the URL; the causes say what happened.
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    let detail = if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    };
    FetchError::Unreachable {
        url: shown(url),
        detail: detail.replace('\n', " "),
    }
}
