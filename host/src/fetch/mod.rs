//! The one fetcher for remote task inputs, with one policy: size limit, timeout, bounded
//! concurrency, retries, and an SSRF guard.
//!
//! This file is the facade: the settings, [`Fetcher`] and its two entry points. The parts:
//! - `guard.rs`: the SSRF guard (refused addresses, `allow_hosts`, the guarded resolver);
//! - `client.rs`: the HTTP client (no redirects, no proxies, the guarded resolver) and how its
//!   errors are classified;
//! - `download.rs`: one http(s) download (retries, redirects hop by hop, size limit);
//! - `source.rs`: what a source names, and copying objects of the service's own storage;
//! - `data_url.rs`: `data:` URL sources (base64 bytes inline), decoded to a work file;
//! - `work_file.rs`: file names and files in the work folder;
//! - `error.rs`: [`FetchError`] and its stable codes.
//!
//! A source is either an object of this service's own storage (a bare key such as
//! `uploads/{uuid}/{name}`, or a URL under the storage's public base), which is copied from
//! storage and never fetched over the network, or an `http`/`https` URL. The SSRF guard applies
//! to the URL, to every redirect hop, and inside the HTTP client's DNS resolver; proxies from
//! the environment are ignored.

mod client;
mod data_url;
mod download;
mod error;
mod guard;
mod source;
#[cfg(test)]
mod tests;
mod work_file;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use url::Url;

pub(crate) use error::FetchError;

use crate::storage::Storage;
use error::shown;
use guard::Guard;
use source::Source;

/// Settings of the fetcher.
#[derive(Debug, Clone)]
pub(crate) struct FetchSettings {
    /// Hosts that may be fetched even though they are (or resolve to) private addresses:
    /// a name or IP literal, optionally with `:port` (`localhost`, `10.0.0.5:8188`,
    /// `[::1]:9000`); case-insensitive. Without a port, every port of the host is allowed.
    pub allow_hosts: Vec<String>,
    /// Largest accepted body, in bytes.
    pub max_bytes: u64,
    /// Limit on one whole attempt: every redirect hop plus the body download.
    pub timeout: Duration,
    /// Limit on establishing one connection.
    pub connect_timeout: Duration,
    /// Most redirects followed for one fetch.
    pub max_redirects: u32,
    /// Most network fetches running at once, over all clones of the fetcher.
    pub concurrency: usize,
}

/// The fetcher. Cloning is cheap; clones share the HTTP client and the concurrency limit.
#[derive(Clone)]
pub(crate) struct Fetcher {
    inner: Arc<Inner>,
}

/// What clones of one fetcher share.
struct Inner {
    client: reqwest::Client,
    settings: FetchSettings,
    guard: Guard,
    storage: Storage,
    permits: Semaphore,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Builds the fetcher and its HTTP client. `storage` is the service's own storage: sources
    /// naming its objects are copied from it.
    pub(crate) fn new(settings: FetchSettings, storage: Storage) -> Result<Fetcher, FetchError> {
        let guard = Guard::new(&settings.allow_hosts);
        let client = client::build(&settings, &guard)?;
        let permits = Semaphore::new(settings.concurrency.max(1));
        Ok(Fetcher {
            inner: Arc::new(Inner {
                client,
                settings,
                guard,
                storage,
                permits,
            }),
        })
    }

    /// Fetches `source` into a new file in `dest_dir` (created when missing) and returns its
    /// path.
    ///
    /// The file is named `file_name`, else after the last path segment of the source, else
    /// `input`, reduced to `[A-Za-z0-9._-]`; an existing file is never overwritten (a `-1`,
    /// `-2`… suffix is added). A name without extension gets one from the response's content
    /// type. On failure no file is left behind. Retryable failures are retried twice (after
    /// 200 ms and 800 ms).
    pub(crate) async fn fetch_to(
        &self,
        source: &str,
        dest_dir: &Path,
        file_name: Option<&str>,
    ) -> Result<PathBuf, FetchError> {
        let inner = &*self.inner;
        if data_url::is_data_url(source.trim()) {
            return data_url::write(source.trim(), inner.settings.max_bytes, dest_dir, file_name)
                .await;
        }
        match source::recognise(&inner.storage, source.trim())? {
            Source::Storage(key) => {
                source::copy_from_storage(&inner.storage, &key, dest_dir, file_name).await
            }
            Source::Http(url) => download::download(inner, &url, dest_dir, file_name).await,
        }
    }

    /// Checks a URL this service will call later (a completion webhook, at submit) under the
    /// rules of [`Fetcher::post_json`]: an http(s) URL whose host is not, and does not resolve
    /// to, an address the SSRF guard refuses (unless `allow_hosts` lists it). A name that does
    /// not resolve now passes: it is checked again, like every call, when it is called.
    pub(crate) async fn check_url(&self, url: &str) -> Result<(), FetchError> {
        let parsed = http_url(url)?;
        match self.inner.guard.check(&parsed).await {
            Ok(()) | Err(guard::Blocked::Resolve { .. }) => Ok(()),
            Err(blocked) => Err(blocked.into_error(&parsed)),
        }
    }

    /// POSTs the JSON `body` with `headers` to an http(s) URL under the same SSRF guard (used
    /// for webhooks), within `timeout`. Redirects are not followed. Answers the HTTP status.
    pub(crate) async fn post_json(
        &self,
        url: &str,
        body: String,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<u16, FetchError> {
        let parsed = http_url(url)?;
        self.inner
            .guard
            .check(&parsed)
            .await
            .map_err(|b| b.into_error(&parsed))?;
        let mut req = self
            .inner
            .client
            .post(parsed.clone())
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let resp =
            req.body(body)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| FetchError::Unreachable {
                    url: shown(&parsed),
                    detail: e.to_string(),
                })?;
        Ok(resp.status().as_u16())
    }
}

/// `url` parsed, if it is an http or https URL.
fn http_url(url: &str) -> Result<Url, FetchError> {
    let parsed = Url::parse(url).map_err(|e| FetchError::InvalidUrl {
        input: url.chars().take(200).collect(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme {
            url: shown(&parsed),
            scheme: parsed.scheme().to_owned(),
        });
    }
    Ok(parsed)
}
