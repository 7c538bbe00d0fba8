//! The one fetcher for remote task inputs, with one policy: size limit, timeout, bounded
//! concurrency, retries, and an SSRF guard (DESIGN.md §2, §7).
//!
//! A source is either an object of this service's own storage (a bare key such as
//! `uploads/{uuid}/{name}`, or a URL under the storage's public base), which is copied from
//! storage and never fetched over the network, or an `http`/`https` URL.
//!
//! The SSRF guard refuses hosts that are, or resolve to, loopback, private, link-local,
//! unique-local, CGNAT, unspecified, broadcast, multicast, documentation, benchmarking or
//! reserved addresses, IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64, 6to4), and the
//! cloud metadata addresses, unless the host is listed in `allow_hosts`. It applies to the URL
//! and to every redirect hop (redirects are followed here, one at a time), and once more inside
//! the HTTP client's DNS resolver, so the addresses actually connected to are the ones checked
//! (no DNS-rebinding window between check and connect). Proxies from the environment are
//! ignored for the same reason.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use url::{Host, Url};

use crate::storage::{Storage, StorageError, validate_key};

/// Waits before the first and second retry of a retryable failure.
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];

/// Settings of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchSettings {
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

/// Errors of the fetcher. [`FetchError::code`] is stable; the message is one line meant for
/// API users.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
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
    /// Stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::PrivateAddress { .. } => "private_address",
            FetchError::RedirectBlocked { .. } => "redirect_blocked",
            FetchError::UnsupportedScheme { .. } => "unsupported_scheme",
            FetchError::InvalidUrl { .. } => "invalid_url",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::HttpStatus { .. } => "http_status",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Unreachable { .. } => "unreachable",
            FetchError::NotFound { .. } => "not_found",
            FetchError::Io { .. } => "io",
        }
    }

    /// Whether trying again later may succeed: 5xx and 429 answers, timeouts, connection
    /// failures.
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::HttpStatus { status, .. } => *status >= 500 || *status == 429,
            FetchError::Timeout { .. } | FetchError::Unreachable { .. } => true,
            _ => false,
        }
    }

    fn io(context: &str, err: io::Error) -> FetchError {
        FetchError::Io {
            detail: format!("{context}: {err}"),
        }
    }
}

/// The fetcher. Cloning is cheap; clones share the HTTP client and the concurrency limit.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    settings: FetchSettings,
    allow: Arc<AllowList>,
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
    pub fn new(settings: FetchSettings, storage: Storage) -> Result<Fetcher, FetchError> {
        let allow = Arc::new(AllowList::parse(&settings.allow_hosts));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(settings.connect_timeout)
            .dns_resolver(Arc::new(GuardedResolver {
                allow: allow.clone(),
            }))
            .user_agent(concat!("aihost/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Io {
                detail: format!("cannot build the HTTP client: {e}"),
            })?;
        let permits = Semaphore::new(settings.concurrency.max(1));
        Ok(Fetcher {
            inner: Arc::new(Inner {
                client,
                settings,
                allow,
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
    pub async fn fetch_to(
        &self,
        source: &str,
        dest_dir: &Path,
        file_name: Option<&str>,
    ) -> Result<PathBuf, FetchError> {
        let source = source.trim();
        if let Some(key) = self.own_key(source) {
            return self.copy_from_storage(&key, dest_dir, file_name).await;
        }
        let url = match Url::parse(source) {
            Ok(url) => url,
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                let reason = match validate_key(source) {
                    Err(StorageError::InvalidKey { reason, .. }) => reason,
                    _ => "not a URL",
                };
                return Err(FetchError::InvalidUrl {
                    input: shorten(source),
                    reason: format!(
                        "neither an http(s) URL nor a key of this service's storage ({reason})"
                    ),
                });
            }
            Err(e) => {
                return Err(FetchError::InvalidUrl {
                    input: shorten(source),
                    reason: e.to_string(),
                });
            }
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::UnsupportedScheme {
                url: shown(&url),
                scheme: url.scheme().to_owned(),
            });
        }
        if url.host().is_none() {
            return Err(FetchError::InvalidUrl {
                input: shown(&url),
                reason: "the URL has no host".to_owned(),
            });
        }
        tokio::fs::create_dir_all(dest_dir)
            .await
            .map_err(|e| FetchError::io(&dest_dir.display().to_string(), e))?;

        let mut dest: Option<PathBuf> = None;
        let mut retries = 0;
        loop {
            let result = {
                let _permit = self
                    .inner
                    .permits
                    .acquire()
                    .await
                    .expect("the fetch semaphore is never closed");
                let timeout = self.inner.settings.timeout;
                tokio::time::timeout(timeout, self.attempt(&url, dest_dir, file_name, &mut dest))
                    .await
                    .unwrap_or_else(|_| {
                        Err(FetchError::Timeout {
                            url: shown(&url),
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

    /// The storage key named by `source`, if it names one: a URL under the storage's public
    /// base, or a scheme-less string that is a valid key.
    fn own_key(&self, source: &str) -> Option<String> {
        if let Some(key) = self.inner.storage.key_from_url(source) {
            return Some(key);
        }
        match Url::parse(source) {
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                validate_key(source).ok().map(|()| source.to_owned())
            }
            _ => None,
        }
    }

    async fn copy_from_storage(
        &self,
        key: &str,
        dest_dir: &Path,
        file_name: Option<&str>,
    ) -> Result<PathBuf, FetchError> {
        tokio::fs::create_dir_all(dest_dir)
            .await
            .map_err(|e| FetchError::io(&dest_dir.display().to_string(), e))?;
        let name = sanitize(file_name.unwrap_or_else(|| key.rsplit('/').next().unwrap_or("")));
        let (path, file) = reserve(dest_dir, &name).await?;
        drop(file);
        match self.inner.storage.copy_to_file(key, &path).await {
            Ok(_) => Ok(path),
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(match e {
                    StorageError::NotFound { key } => FetchError::NotFound { key },
                    other => FetchError::Io {
                        detail: other.to_string(),
                    },
                })
            }
        }
    }

    /// One attempt: follow redirects (checking every hop), then stream the body to the file.
    async fn attempt(
        &self,
        url: &Url,
        dest_dir: &Path,
        file_name: Option<&str>,
        dest: &mut Option<PathBuf>,
    ) -> Result<(), FetchError> {
        let settings = &self.inner.settings;
        if let Err(blocked) = self.guard(url).await {
            return Err(blocked.into_error(url));
        }
        let mut current = url.clone();
        let mut hops = 0u32;
        let response = loop {
            let response = self
                .inner
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
                break response;
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
            match self.guard(&next).await {
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
        };

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

    /// POSTs `body` as JSON to an http(s) URL under the same SSRF guard (used for completion
    /// webhooks). Redirects are not followed. Answers the HTTP status.
    pub async fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<u16, FetchError> {
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
        self.guard(&parsed)
            .await
            .map_err(|b| b.into_error(&parsed))?;
        let resp = self
            .inner
            .client
            .post(parsed.clone())
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(
                self.inner
                    .settings
                    .timeout
                    .min(std::time::Duration::from_secs(30)),
            )
            .send()
            .await
            .map_err(|e| FetchError::Unreachable {
                url: shown(&parsed),
                detail: e.to_string(),
            })?;
        Ok(resp.status().as_u16())
    }

    /// The SSRF check of one URL: allow-listed hosts pass; IP literals are checked as they
    /// are; names are resolved and every address checked.
    async fn guard(&self, url: &Url) -> Result<(), Blocked> {
        let Some(host) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(80);
        if self.inner.allow.allows(&host, port) {
            return Ok(());
        }
        let host_text = host_text(&host);
        match host {
            Host::Ipv4(ip) => check_addrs(&host_text, [IpAddr::V4(ip)]),
            Host::Ipv6(ip) => check_addrs(&host_text, [IpAddr::V6(ip)]),
            Host::Domain(name) => {
                let addrs: Vec<IpAddr> = tokio::net::lookup_host((name, port))
                    .await
                    .map_err(|e| Blocked::Resolve {
                        host: host_text.clone(),
                        detail: e.to_string(),
                    })?
                    .map(|a| a.ip())
                    .collect();
                if addrs.is_empty() {
                    return Err(Blocked::Resolve {
                        host: host_text,
                        detail: "no addresses".to_owned(),
                    });
                }
                check_addrs(&host_text, addrs)
            }
        }
    }
}

/// Why the guard refused a URL.
#[derive(Debug)]
enum Blocked {
    /// A refused address.
    Address {
        host: String,
        addr: IpAddr,
        detail: String,
    },
    /// The name did not resolve.
    Resolve { host: String, detail: String },
}

impl Blocked {
    fn into_error(self, url: &Url) -> FetchError {
        match self {
            Blocked::Address { host, addr, detail } => FetchError::PrivateAddress {
                url: shown(url),
                host,
                addr,
                detail,
            },
            Blocked::Resolve { host, detail } => FetchError::Unreachable {
                url: shown(url),
                detail: format!("cannot resolve {host}: {detail}"),
            },
        }
    }
}

fn check_addrs(host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Result<(), Blocked> {
    for addr in addrs {
        if let Some(reason) = blocked_reason(addr) {
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            let detail = if literal.parse::<IpAddr>() == Ok(addr) {
                format!("{addr} is {reason}")
            } else {
                format!("{host} resolves to {addr}, {reason}")
            };
            return Err(Blocked::Address {
                host: host.to_owned(),
                addr,
                detail,
            });
        }
    }
    Ok(())
}

/// The error the resolver returns for a refused address; found again in the error chain.
#[derive(Debug)]
struct BlockedByResolver {
    host: String,
    addr: IpAddr,
    detail: String,
}

impl fmt::Display for BlockedByResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for BlockedByResolver {}

/// The HTTP client's resolver: resolves with the system resolver, then refuses names whose
/// addresses the guard refuses (unless the name is allow-listed).
struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow.allows_name(&host)
                && let Err(Blocked::Address { host, addr, detail }) =
                    check_addrs(&host, addrs.iter().map(SocketAddr::ip))
            {
                return Err(Box::new(BlockedByResolver { host, addr, detail }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Maps a client error to a [`FetchError`].
fn classify(err: reqwest::Error, url: &Url, connect_timeout: Duration) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(b) = e.downcast_ref::<BlockedByResolver>() {
            return FetchError::PrivateAddress {
                url: shown(url),
                host: b.host.clone(),
                addr: b.addr,
                detail: b.detail.clone(),
            };
        }
        source = e.source();
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

/// Why an address is refused, as "a … address", or `None` when it is a public address.
fn blocked_reason(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let reason = if ip == Ipv4Addr::new(169, 254, 169, 254) {
        "a cloud metadata address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_broadcast() {
        "a broadcast address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "a carrier-grade NAT (shared) address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.is_documentation() {
        "a documentation address"
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        "a benchmarking address"
    } else if o[0] == 0 || (o[0] == 192 && o[1] == 0 && o[2] == 0) || o[0] >= 240 {
        "a reserved address"
    } else {
        return None;
    };
    Some(reason)
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_v4(v4);
    }
    let reason = if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        "a cloud metadata address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if s[..6] == [0; 6] {
        // IPv4-compatible (deprecated): judge the embedded IPv4 address.
        return blocked_v4(embedded(s[6], s[7])).or(Some("a reserved address"));
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix: reaches the embedded IPv4 address.
        return blocked_v4(embedded(s[6], s[7]));
    } else if s[0] == 0x2002 {
        // 6to4: the IPv4 address is in the second and third segments.
        return blocked_v4(embedded(s[1], s[2]));
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "a unique-local address"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "a link-local address"
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "a site-local address"
    } else if (s[0] & 0xff00) == 0xff00 {
        "a multicast address"
    } else if (s[0] == 0x2001 && s[1] == 0xdb8) || (s[0] & 0xfff0) == 0x3ff0 {
        "a documentation address"
    } else if (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) || s[..4] == [0x100, 0, 0, 0] {
        "a reserved address"
    } else {
        return None;
    };
    Some(reason)
}

/// The parsed `allow_hosts`.
#[derive(Debug, Default)]
struct AllowList {
    entries: Vec<AllowEntry>,
}

#[derive(Debug, PartialEq)]
struct AllowEntry {
    host: AllowHost,
    port: Option<u16>,
}

#[derive(Debug, PartialEq)]
enum AllowHost {
    Ip(IpAddr),
    Name(String),
}

impl AllowList {
    fn parse(entries: &[String]) -> AllowList {
        AllowList {
            entries: entries
                .iter()
                .filter_map(|e| parse_allow_entry(e))
                .collect(),
        }
    }

    /// Whether `host` on `port` is allow-listed.
    fn allows(&self, host: &Host<&str>, port: u16) -> bool {
        self.entries.iter().any(|e| {
            let host_matches = match (&e.host, host) {
                (AllowHost::Ip(ip), Host::Ipv4(h)) => *ip == IpAddr::V4(*h),
                (AllowHost::Ip(ip), Host::Ipv6(h)) => *ip == IpAddr::V6(*h),
                (AllowHost::Name(name), Host::Domain(h)) => *name == normalize_name(h),
                _ => false,
            };
            host_matches && e.port.is_none_or(|p| p == port)
        })
    }

    /// Whether the name is allow-listed on some port (the resolver does not see the port;
    /// [`Fetcher::guard`] checks it before).
    fn allows_name(&self, name: &str) -> bool {
        let name = normalize_name(name);
        self.entries.iter().any(|e| match &e.host {
            AllowHost::Name(n) => *n == name,
            AllowHost::Ip(ip) => name.parse::<IpAddr>() == Ok(*ip),
        })
    }
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_allow_entry(entry: &str) -> Option<AllowEntry> {
    let mut text = entry.trim().to_ascii_lowercase();
    if text.is_empty() {
        return None;
    }
    if text.contains("://")
        && let Ok(url) = Url::parse(&text)
        && let Some(host) = url.host_str()
    {
        text = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
    }
    let text = text.trim_end_matches('/');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(AllowEntry {
            host: AllowHost::Ip(ip),
            port: None,
        });
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(AllowEntry {
            host: AllowHost::Ip(sa.ip()),
            port: Some(sa.port()),
        });
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<IpAddr>()
    {
        return Some(AllowEntry {
            host: AllowHost::Ip(ip),
            port: None,
        });
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port.parse::<u16>().ok()?)),
        _ => (text, None),
    };
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => AllowHost::Ip(ip),
        Err(_) => AllowHost::Name(normalize_name(host)),
    };
    Some(AllowEntry { host, port })
}

/// The host as written in a URL (IPv6 in brackets).
fn host_text(host: &Host<&str>) -> String {
    match host {
        Host::Domain(d) => d.to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    }
}

/// The URL for messages, with any password replaced.
fn shown(url: &Url) -> String {
    if url.password().is_some() {
        let mut url = url.clone();
        let _ = url.set_password(Some("***"));
        url.to_string()
    } else {
        url.to_string()
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 200 {
        let mut s: String = text.chars().take(200).collect();
        s.push('…');
        s
    } else {
        text.to_owned()
    }
}

/// The one file-name rule ([`crate::names::sanitize`]), `input` when nothing is left.
fn sanitize(name: &str) -> String {
    crate::names::sanitize(name, "input")
}

/// The sanitised, percent-decoded last path segment of the URL, or `input`.
fn name_from_url(url: &Url) -> String {
    let segment = url
        .path_segments()
        .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
        .unwrap_or("");
    sanitize(&percent_decode_lossy(segment))
}

/// Adds an extension from the content type when `name` has none.
fn with_extension(name: String, content_type: Option<&str>) -> String {
    if !crate::names::split_ext(&name).1.is_empty() {
        return name;
    }
    let Some(mime) = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
    else {
        return name;
    };
    let ext = match mime.to_ascii_lowercase().as_str() {
        "image/jpeg" => Some("jpg"),
        "image/png" => Some("png"),
        "image/webp" => Some("webp"),
        "image/gif" => Some("gif"),
        "video/mp4" => Some("mp4"),
        "video/webm" => Some("webm"),
        "video/quicktime" => Some("mov"),
        "audio/mpeg" => Some("mp3"),
        "audio/wav" | "audio/x-wav" => Some("wav"),
        "application/octet-stream" | "text/plain" => None,
        other => mime_guess::get_mime_extensions_str(other).and_then(|e| e.first().copied()),
    };
    match ext {
        Some(ext) => format!("{name}.{ext}"),
        None => name,
    }
}

fn percent_decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates a new file named `name` in `dir`, or `stem-N.ext` when that exists.
async fn reserve(dir: &Path, name: &str) -> Result<(PathBuf, tokio::fs::File), FetchError> {
    let (stem, ext) = crate::names::split_ext(name);
    for n in 0..10_000u32 {
        let candidate = if n == 0 {
            name.to_owned()
        } else {
            format!("{stem}-{n}{ext}")
        };
        let path = dir.join(candidate);
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(FetchError::io(&path.display().to_string(), e)),
        }
    }
    Err(FetchError::Io {
        detail: format!("too many files named like {name} in {}", dir.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{StorageKind, StorageSettings};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A tiny HTTP/1.1 server on 127.0.0.1; counts the requests it receives.
    struct TestServer {
        port: u16,
        hits: Arc<AtomicUsize>,
    }

    fn payload() -> Vec<u8> {
        (0..100_000u32).map(|i| (i % 251) as u8).collect()
    }

    async fn serve() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let flaky = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let flaky = flaky.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let ok = |ct: &str, body: Vec<u8>| {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend(body);
                        r
                    };
                    let redirect = |to: &str| {
                        format!(
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\
                             Connection: close\r\n\r\n"
                        )
                        .into_bytes()
                    };
                    let status = |code: &str| {
                        format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .into_bytes()
                    };
                    let response = match path.as_str() {
                        "/file.bin" | "/" => ok("application/octet-stream", payload()),
                        "/noext" => ok("image/png", b"png bytes".to_vec()),
                        "/big-len" => ok("application/octet-stream", vec![7u8; 5000]),
                        "/big-nolen" => {
                            let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                            r.extend(vec![7u8; 5000]);
                            r
                        }
                        "/redirect-private" => redirect("http://10.0.0.1/secret"),
                        "/redirect-local" => redirect("/file.bin"),
                        "/redirect-ftp" => redirect("ftp://example.com/x"),
                        "/loop" => redirect("/loop"),
                        "/missing" => status("404 Not Found"),
                        "/flaky" => {
                            if flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                                status("503 Service Unavailable")
                            } else {
                                ok("text/plain", b"recovered".to_vec())
                            }
                        }
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            ok("text/plain", b"late".to_vec())
                        }
                        "/delay" => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            ok("text/plain", b"delayed".to_vec())
                        }
                        _ => status("404 Not Found"),
                    };
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        TestServer { port, hits }
    }

    fn memory_storage() -> Storage {
        Storage::new(StorageSettings {
            kind: StorageKind::Memory,
            root: PathBuf::new(),
            prefix: String::new(),
            // Nothing listens there: a network fetch of it would fail.
            public_base_url: "http://127.0.0.1:9/files".to_owned(),
        })
        .unwrap()
    }

    fn settings(allow: &[String]) -> FetchSettings {
        FetchSettings {
            allow_hosts: allow.to_vec(),
            max_bytes: 1024 * 1024,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_redirects: 3,
            concurrency: 4,
        }
    }

    fn fetcher(settings: FetchSettings) -> Fetcher {
        Fetcher::new(settings, memory_storage()).unwrap()
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    #[tokio::test]
    async fn fetch_refuses_private_addresses() {
        let server = serve().await;
        let port = server.port;
        let f = fetcher(settings(&[]));
        let dir = tempfile::tempdir().unwrap();
        for (url, shows) in [
            (format!("http://127.0.0.1:{port}/file.bin"), "127.0.0.1"),
            ("http://10.0.0.1/".to_owned(), "10.0.0.1"),
            (
                "http://169.254.169.254/latest/meta-data".to_owned(),
                "169.254.169.254",
            ),
            (format!("http://[::1]:{port}/"), "::1"),
            (format!("http://localhost:{port}/file.bin"), "localhost"),
            (format!("http://LocalHost:{port}/file.bin"), "localhost"),
            ("http://[::ffff:10.0.0.1]/".to_owned(), "10.0.0.1"),
            ("http://0x7f.1/".to_owned(), "127.0.0.1"),
            ("http://[fd00:ec2::254]/".to_owned(), "fd00:ec2::254"),
        ] {
            let err = f.fetch_to(&url, dir.path(), None).await.unwrap_err();
            assert_eq!(err.code(), "private_address", "{url}: {err}");
            assert!(!err.retryable());
            let msg = err.to_string();
            assert!(msg.contains(shows), "{msg}");
            assert!(msg.contains("fetch.allow_hosts"), "{msg}");
            assert!(!msg.contains('\n'));
        }
        let err = f
            .fetch_to("http://10.0.0.1/x", dir.path(), None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused to fetch http://10.0.0.1/x: 10.0.0.1 is a private address \
             (allow it with fetch.allow_hosts)"
        );
        let err = f
            .fetch_to(&format!("http://localhost:{port}/"), dir.path(), None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("localhost resolves to 127.0.0.1, a loopback address")
                || err.to_string().contains("localhost resolves to ::1"),
            "{err}"
        );
        assert_eq!(server.hits.load(Ordering::SeqCst), 0);
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn fetch_resolver_refuses_private_names() {
        // The client's own resolver refuses too: the addresses connected to are checked, even
        // if a name resolved differently when the guard looked.
        let server = serve().await;
        let f = fetcher(settings(&[]));
        let err = f
            .inner
            .client
            .get(format!("http://localhost:{}/file.bin", server.port))
            .send()
            .await
            .unwrap_err();
        let url = Url::parse("http://localhost/").unwrap();
        let err = classify(err, &url, Duration::from_secs(1));
        assert_eq!(err.code(), "private_address", "{err}");
        assert_eq!(server.hits.load(Ordering::SeqCst), 0);

        // An allow-listed name passes the resolver.
        let f = fetcher(settings(&["localhost".to_owned()]));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://localhost:{}/file.bin", server.port);
        let path = f.fetch_to(&url, dir.path(), None).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), payload());
    }

    #[tokio::test]
    async fn fetch_allow_listed_host() {
        let server = serve().await;
        let port = server.port;
        let f = fetcher(settings(&[format!("127.0.0.1:{port}")]));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{port}/file.bin");
        let first = f.fetch_to(&url, dir.path(), None).await.unwrap();
        assert_eq!(first, dir.path().join("file.bin"));
        assert_eq!(std::fs::read(&first).unwrap(), payload());
        // Never overwrites.
        let second = f.fetch_to(&url, dir.path(), None).await.unwrap();
        assert_eq!(second, dir.path().join("file-1.bin"));
        let named = f
            .fetch_to(&url, dir.path(), Some("../my input (1).png"))
            .await
            .unwrap();
        assert_eq!(named, dir.path().join("_my_input__1_.png"));
        // A redirect to the same allowed host is followed.
        let redirected = f
            .fetch_to(
                &format!("http://127.0.0.1:{port}/redirect-local"),
                dir.path(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(redirected, dir.path().join("redirect-local"));
        assert_eq!(std::fs::read(&redirected).unwrap(), payload());
        // A name without extension gets one from the content type; "/" becomes "input".
        let png = f
            .fetch_to(&format!("http://127.0.0.1:{port}/noext"), dir.path(), None)
            .await
            .unwrap();
        assert_eq!(png, dir.path().join("noext.png"));
        let root = f
            .fetch_to(&format!("http://127.0.0.1:{port}/"), dir.path(), None)
            .await
            .unwrap();
        assert_eq!(root, dir.path().join("input"));
        // The allow entry is for that port only.
        let err = f
            .fetch_to("http://127.0.0.1:1/file.bin", dir.path(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "private_address");
    }

    #[tokio::test]
    async fn fetch_redirects_are_checked() {
        let server = serve().await;
        let port = server.port;
        let f = fetcher(settings(&[format!("127.0.0.1:{port}")]));
        let dir = tempfile::tempdir().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let err = f
            .fetch_to(&format!("{base}/redirect-private"), dir.path(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "redirect_blocked", "{err}");
        let msg = err.to_string();
        assert!(msg.contains("http://10.0.0.1/secret"), "{msg}");
        assert!(msg.contains("10.0.0.1 is a private address"), "{msg}");

        let err = f
            .fetch_to(&format!("{base}/redirect-ftp"), dir.path(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "redirect_blocked", "{err}");

        let err = f
            .fetch_to(&format!("{base}/loop"), dir.path(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "redirect_blocked", "{err}");
        assert!(err.to_string().contains("more than 3 redirects"), "{err}");
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn fetch_too_large_leaves_nothing() {
        let server = serve().await;
        let port = server.port;
        let mut s = settings(&[format!("127.0.0.1:{port}")]);
        s.max_bytes = 1000;
        let f = fetcher(s);
        let dir = tempfile::tempdir().unwrap();
        for path in ["/big-len", "/big-nolen"] {
            let url = format!("http://127.0.0.1:{port}{path}");
            let err = f.fetch_to(&url, dir.path(), None).await.unwrap_err();
            assert_eq!(err.code(), "too_large", "{err}");
            assert!(!err.retryable());
        }
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn fetch_refuses_other_schemes_and_bad_input() {
        let f = fetcher(settings(&[]));
        let dir = tempfile::tempdir().unwrap();
        for source in [
            "ftp://example.com/a.png",
            "file:///etc/passwd",
            "gopher://x/",
        ] {
            let err = f.fetch_to(source, dir.path(), None).await.unwrap_err();
            assert_eq!(err.code(), "unsupported_scheme", "{source}: {err}");
        }
        for source in ["/etc/passwd", "a/../../b", "http://", ""] {
            let err = f.fetch_to(source, dir.path(), None).await.unwrap_err();
            assert_eq!(err.code(), "invalid_url", "{source}: {err}");
        }
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn fetch_own_storage_objects() {
        let storage = memory_storage();
        let f = Fetcher::new(settings(&[]), storage.clone()).unwrap();
        let key = "uploads/0190/my photo.png";
        let body = futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"uploaded"))]);
        storage.put_stream(key, body, "", 1000).await.unwrap();
        let dir = tempfile::tempdir().unwrap();

        let by_key = f.fetch_to(key, dir.path(), None).await.unwrap();
        assert_eq!(by_key, dir.path().join("my_photo.png"));
        assert_eq!(std::fs::read(&by_key).unwrap(), b"uploaded");

        let url = storage.public_url(key);
        assert!(url.starts_with("http://127.0.0.1:9/files/"), "{url}");
        let by_url = f.fetch_to(&url, dir.path(), None).await.unwrap();
        assert_eq!(by_url, dir.path().join("my_photo-1.png"));
        assert_eq!(std::fs::read(&by_url).unwrap(), b"uploaded");

        let named = f
            .fetch_to(&url, dir.path(), Some("face.png"))
            .await
            .unwrap();
        assert_eq!(named, dir.path().join("face.png"));

        let err = f
            .fetch_to("uploads/0190/absent.png", dir.path(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "not_found", "{err}");
        let err = f
            .fetch_to(
                &storage.public_url("uploads/x/absent.png"),
                dir.path(),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "not_found", "{err}");
        assert_eq!(files_in(dir.path()).len(), 3);
    }

    #[tokio::test]
    async fn fetch_http_status_and_retries() {
        let server = serve().await;
        let port = server.port;
        let f = fetcher(settings(&[format!("127.0.0.1:{port}")]));
        let dir = tempfile::tempdir().unwrap();
        let err = f
            .fetch_to(
                &format!("http://127.0.0.1:{port}/missing"),
                dir.path(),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "http_status");
        assert!(!err.retryable());
        assert!(err.to_string().contains("HTTP 404"), "{err}");
        assert_eq!(server.hits.load(Ordering::SeqCst), 1, "404 is not retried");

        // The first answer is a 503: retried, then fetched.
        let path = f
            .fetch_to(&format!("http://127.0.0.1:{port}/flaky"), dir.path(), None)
            .await
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"recovered");
        assert_eq!(server.hits.load(Ordering::SeqCst), 3);

        // Nothing listens on port 1 (allow-listed so the guard lets it through).
        let f = fetcher(settings(&["127.0.0.1".to_owned()]));
        let err = f
            .fetch_to("http://127.0.0.1:1/x", dir.path(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "unreachable", "{err}");
        assert!(err.retryable());
    }

    #[tokio::test]
    async fn fetch_timeout() {
        let server = serve().await;
        let port = server.port;
        let mut s = settings(&[format!("127.0.0.1:{port}")]);
        s.timeout = Duration::from_millis(300);
        let f = fetcher(s);
        let dir = tempfile::tempdir().unwrap();
        let err = f
            .fetch_to(&format!("http://127.0.0.1:{port}/slow"), dir.path(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "timeout", "{err}");
        assert!(err.retryable());
        assert_eq!(server.hits.load(Ordering::SeqCst), 3, "tried three times");
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn fetch_concurrency_is_bounded() {
        let server = serve().await;
        let port = server.port;
        let mut s = settings(&[format!("127.0.0.1:{port}")]);
        s.concurrency = 1;
        let f = fetcher(s);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{port}/delay");
        let start = Instant::now();
        let g = f.clone();
        let (a, b) = tokio::join!(
            f.fetch_to(&url, dir.path(), None),
            g.fetch_to(&url, dir.path(), None)
        );
        a.unwrap();
        b.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(600));
        assert_eq!(files_in(dir.path()), ["delay", "delay-1"]);
    }

    #[test]
    fn fetch_blocked_ranges() {
        let blocked = [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ];
        for ip in blocked {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(blocked_reason(addr).is_some(), "{ip} should be refused");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(blocked_reason(addr), None, "{ip} should be allowed");
        }
        assert_eq!(
            blocked_reason("169.254.169.254".parse().unwrap()),
            Some("a cloud metadata address")
        );
    }

    #[test]
    fn fetch_allow_list_parsing() {
        let list = AllowList::parse(&[
            "LocalHost".to_owned(),
            "comfy.internal:8188".to_owned(),
            "10.0.0.5".to_owned(),
            "[::1]:9000".to_owned(),
            "http://192.168.1.2:81/".to_owned(),
            "  ".to_owned(),
        ]);
        assert_eq!(list.entries.len(), 5);
        assert!(list.allows(&Host::Domain("localhost"), 1234));
        assert!(list.allows(&Host::Domain("comfy.internal"), 8188));
        assert!(!list.allows(&Host::Domain("comfy.internal"), 8189));
        assert!(list.allows(&Host::Ipv4("10.0.0.5".parse().unwrap()), 80));
        assert!(!list.allows(&Host::Ipv4("10.0.0.6".parse().unwrap()), 80));
        assert!(list.allows(&Host::Ipv6("::1".parse().unwrap()), 9000));
        assert!(!list.allows(&Host::Ipv6("::1".parse().unwrap()), 9001));
        assert!(list.allows(&Host::Ipv4("192.168.1.2".parse().unwrap()), 81));
        assert!(list.allows_name("LOCALHOST."));
        assert!(list.allows_name("comfy.internal"));
        assert!(!list.allows_name("example.com"));
    }

    #[test]
    fn fetch_file_names() {
        assert_eq!(sanitize("a b/c?.png"), "a_b_c_.png");
        assert_eq!(sanitize("..hidden"), "hidden");
        assert_eq!(sanitize(".."), "input");
        assert_eq!(sanitize(""), "input");
        let long = format!("{}.png", "x".repeat(300));
        let short = sanitize(&long);
        assert_eq!(short.len(), crate::names::MAX_NAME_LEN);
        assert!(short.ends_with(".png"));
        let url = Url::parse("https://example.com/dir/my%20pic.jpeg?x=1").unwrap();
        assert_eq!(name_from_url(&url), "my_pic.jpeg");
        let url = Url::parse("https://example.com/").unwrap();
        assert_eq!(name_from_url(&url), "input");
        assert_eq!(with_extension("a".into(), Some("image/jpeg; q=1")), "a.jpg");
        assert_eq!(with_extension("a.bin".into(), Some("image/jpeg")), "a.bin");
        assert_eq!(
            with_extension("a".into(), Some("application/octet-stream")),
            "a"
        );
    }
}
