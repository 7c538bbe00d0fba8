//! Downloading one http(s) URL into the work folder: retries with backoff, the time limit of
//! an attempt, the concurrency limit, redirects followed one hop at a time through the SSRF
//! guard, the size limit, and streaming the body to the file.
//!
//! It is separate from the facade so the policy of one transfer reads top to bottom in one
//! place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::Inner;
use super::client::classify;
use super::error::{FetchError, shorten, shown};
use super::guard::Blocked;
use super::work_file::{ensure_dir, name_from_url, reserve, sanitize, with_extension};

/// Waits before the first and second retry of a retryable failure.
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];

/// Downloads `url` into a new file in `dest_dir` (created when missing) and answers its path.
/// Each attempt holds a concurrency permit and is limited to `settings.timeout`; retryable
/// failures are retried after each [`BACKOFF`] wait. On failure no file is left behind.
pub(super) async fn download(
    inner: &Inner,
    url: &Url,
    dest_dir: &Path,
    file_name: Option<&str>,
) -> Result<PathBuf, FetchError> {
    ensure_dir(dest_dir).await?;
    let mut dest: Option<PathBuf> = None;
    let mut retries = 0;
    loop {
        let result = {
            let _permit = inner
                .permits
                .acquire()
                .await
                .expect("the fetch semaphore is never closed");
            let timeout = inner.settings.timeout;
            tokio::time::timeout(timeout, attempt(inner, url, dest_dir, file_name, &mut dest))
                .await
                .unwrap_or_else(|_| {
                    Err(FetchError::Timeout {
                        url: shown(url),
                        after: timeout,
                    })
                })
        };
        match result {
            Ok(()) => return Ok(dest.expect("a successful attempt reserves the file")),
            Err(e) if e.retryable() && retries < BACKOFF.len() => {
                tokio::time::sleep(BACKOFF[retries]).await;
                retries += 1;
            }
            Err(e) => {
                if let Some(path) = &dest {
                    let _ = tokio::fs::remove_file(path).await;
                }
                return Err(e);
            }
        }
    }
}

/// One attempt: follow redirects (checking every hop), then stream the body to the file. The
/// first attempt reserves the file (`dest`); later ones overwrite it.
async fn attempt(
    inner: &Inner,
    url: &Url,
    dest_dir: &Path,
    file_name: Option<&str>,
    dest: &mut Option<PathBuf>,
) -> Result<(), FetchError> {
    let settings = &inner.settings;
    let (response, current) = follow_redirects(inner, url).await?;

    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::HttpStatus {
            url: shown(&current),
            status: status.as_u16(),
        });
    }
    if let Some(size) = response.content_length()
        && size > settings.max_bytes
    {
        return Err(FetchError::TooLarge {
            url: shown(&current),
            limit: settings.max_bytes,
            size: Some(size),
        });
    }

    let mut file = match dest {
        Some(path) => tokio::fs::File::create(&*path)
            .await
            .map_err(|e| FetchError::io(&path.display().to_string(), e))?,
        None => {
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let name = match file_name {
                Some(name) => sanitize(name),
                None => with_extension(name_from_url(url), content_type),
            };
            let (path, file) = reserve(dest_dir, &name).await?;
            *dest = Some(path);
            file
        }
    };
    let path = dest.as_deref().expect("reserved above");
    let mut body = response.bytes_stream();
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| classify(e, &current, settings.connect_timeout))?;
        written += chunk.len() as u64;
        if written > settings.max_bytes {
            return Err(FetchError::TooLarge {
                url: shown(&current),
                limit: settings.max_bytes,
                size: None,
            });
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| FetchError::io(&path.display().to_string(), e))?;
    }
    file.flush()
        .await
        .map_err(|e| FetchError::io(&path.display().to_string(), e))?;
    Ok(())
}

/// Sends the GET for `url` and follows redirects, at most `settings.max_redirects`, only to
/// http(s) URLs the guard lets through. Answers the final response and its URL.
async fn follow_redirects(
    inner: &Inner,
    url: &Url,
) -> Result<(reqwest::Response, Url), FetchError> {
    let settings = &inner.settings;
    if let Err(blocked) = inner.guard.check(url).await {
        return Err(blocked.into_error(url));
    }
    let mut current = url.clone();
    let mut hops = 0u32;
    loop {
        let response = inner
            .client
            .get(current.clone())
            .send()
            .await
            .map_err(|e| classify(e, &current, settings.connect_timeout))?;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .filter(|_| response.status().is_redirection());
        let Some(location) = location else {
            return Ok((response, current));
        };
        let redirect_blocked = |to: String, detail: String| FetchError::RedirectBlocked {
            from: shown(&current),
            to,
            detail,
        };
        let location_text = String::from_utf8_lossy(location.as_bytes()).into_owned();
        let next = match location.to_str().ok().map(|l| current.join(l)) {
            Some(Ok(next)) => next,
            _ => {
                return Err(redirect_blocked(
                    shorten(&location_text),
                    "the Location header is not a valid URL".to_owned(),
                ));
            }
        };
        hops += 1;
        if hops > settings.max_redirects {
            return Err(redirect_blocked(
                shown(&next),
                format!("more than {} redirects", settings.max_redirects),
            ));
        }
        if !matches!(next.scheme(), "http" | "https") || next.host().is_none() {
            return Err(redirect_blocked(
                shown(&next),
                "only http and https URLs are followed".to_owned(),
            ));
        }
        match inner.guard.check(&next).await {
            Ok(()) => {}
            Err(Blocked::Address { detail, .. }) => {
                return Err(redirect_blocked(
                    shown(&next),
                    format!("{detail} (allow it with fetch.allow_hosts)"),
                ));
            }
            Err(other) => return Err(other.into_error(&next)),
        }
        current = next;
    }
}
