//! The HTTP server loop: accepts connections up to a limit, serves each with hyper (HTTP/1.1
//! with upgrades, HTTP/2) over a [`GuardedIo`] socket, and shuts down gracefully.
//!
//! It replaces poem's `Server` only to own the socket and the accept loop; routing, middleware
//! and handlers stay poem's (a poem `Endpoint` answers every request).
//!
//! At `max_connections` open, a new connection closes the one idle the longest (no request in
//! flight), so a flood of idle or slow-header connections cannot lock real clients out; when
//! none is idle, the new one is closed at once. Either is logged once per burst (one WARN when
//! it starts, one INFO with the counts when connections fall below the limit again), as are
//! failures to accept (e.g. out of file descriptors), after which accepting pauses briefly
//! instead of spinning.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use poem::{Endpoint, http::StatusCode, web::LocalAddr, web::RemoteAddr};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::conn::{Clocks, ConnState, GuardedIo, TrackedBody};

/// How one listener serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenSettings {
    /// Timeouts of every connection.
    pub clocks: Clocks,
    /// Open connections at most.
    pub max_connections: usize,
    /// After the stop signal: how long running requests may take before connections are cut.
    pub grace: Duration,
}

/// File descriptors kept for everything but client connections: the database, storage,
/// plugins, fetches, logs.
const FD_RESERVE: u64 = 256;

/// `configured`, lowered to the process's open-file limit minus [`FD_RESERVE`] (at least 16).
pub(crate) fn connection_limit(configured: u64) -> usize {
    let limit = match open_file_limit() {
        Some(fds) => configured.min(fds.saturating_sub(FD_RESERVE).max(16)),
        None => configured,
    };
    if limit < configured {
        tracing::info!(
            configured,
            effective = limit,
            "server.max_connections lowered to fit the open-file limit"
        );
    }
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// The soft `RLIMIT_NOFILE`, read from `/proc/self/limits` (Linux); `None` elsewhere.
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The open connections, for the limit and for shutdown.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    next: std::sync::atomic::AtomicU64,
    emptied: tokio::sync::Notify,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, state: Arc<ConnState>) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, state);
        id
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        if open.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes the connection idle the longest; false when none is idle.
    fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|s| !s.evict.is_cancelled())
            .filter_map(|s| s.idle_since().map(|t| (t, s)))
            .min_by_key(|(t, _)| *t);
        match idlest {
            Some((_, s)) => {
                s.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// One WARN when a burst of refusals starts, one INFO when it ends.
#[derive(Default)]
struct Burst {
    active: bool,
    refused: u64,
    evicted: u64,
    accept_errors: u64,
    since: Option<Instant>,
}

impl Burst {
    fn start(&mut self, max: usize) {
        if !self.active {
            self.active = true;
            self.since = Some(Instant::now());
            tracing::warn!(
                max_connections = max,
                "connection limit reached: closing the longest-idle connections for new ones, \
                 refusing new ones while none is idle (server.max_connections)"
            );
        }
    }

    fn accept_error(&mut self, e: &std::io::Error) {
        if self.accept_errors == 0 {
            tracing::warn!(error = %e, "cannot accept connections (out of file descriptors?); pausing accepts briefly");
        }
        self.accept_errors += 1;
    }

    fn calm(&mut self) {
        if self.active || self.accept_errors > 0 {
            tracing::info!(
                refused = self.refused,
                closed_idle = self.evicted,
                accept_errors = self.accept_errors,
                secs = self.since.map_or(0, |s| s.elapsed().as_secs()),
                "connections below the limit again"
            );
            *self = Burst::default();
        }
    }
}

/// Serves `ep` on `listener` until `stop` resolves, then lets running requests finish for
/// `settings.grace` and closes what is left.
pub(crate) async fn serve<E>(
    listener: TcpListener,
    ep: E,
    settings: ListenSettings,
    stop: impl Future<Output = ()>,
) where
    E: Endpoint + 'static,
{
    let ep = Arc::new(ep);
    let local = listener
        .local_addr()
        .map(|a| LocalAddr(a.into()))
        .unwrap_or_default();
    let conns = Arc::new(Connections::default());
    let shutdown = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let mut burst = Burst::default();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                burst.accept_error(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if conns.len() >= settings.max_connections {
            burst.start(settings.max_connections);
            if conns.evict_idlest() {
                burst.evicted += 1;
            } else {
                burst.refused += 1;
                drop(stream);
                continue;
            }
        } else {
            burst.calm();
        }
        let _ = stream.set_nodelay(true);
        let state = ConnState::new();
        let id = conns.add(state.clone());
        let conns = conns.clone();
        let ep = ep.clone();
        let local = local.clone();
        let shutdown = shutdown.clone();
        let hard_stop = hard_stop.clone();
        let clocks = settings.clocks;
        tokio::spawn(async move {
            serve_connection(stream, peer, local, ep, state, clocks, shutdown, hard_stop).await;
            conns.remove(id);
        });
    }
    drop(listener);
    shutdown.cancel();
    let emptied = conns.emptied.notified();
    if conns.len() > 0 {
        tracing::info!(open = conns.len(), "waiting for open connections to finish");
        let _ = tokio::time::timeout(settings.grace, emptied).await;
    }
    hard_stop.cancel();
    let emptied = conns.emptied.notified();
    if conns.len() > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(2), emptied).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<E: Endpoint + 'static>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: LocalAddr,
    ep: Arc<E>,
    state: Arc<ConnState>,
    clocks: Clocks,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let io = GuardedIo::new(stream, state.clone(), clocks);
    let service = hyper::service::service_fn({
        let state = state.clone();
        move |req: poem::http::Request<Incoming>| {
            let ep = ep.clone();
            let local = local.clone();
            let in_flight = state.request();
            let state = state.clone();
            async move {
                let req = poem::Request::from((
                    req,
                    local,
                    RemoteAddr(peer.into()),
                    poem::http::uri::Scheme::HTTP,
                ));
                let resp = ep.get_response(req).await;
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    state.upgrade();
                }
                let resp: hyper::Response<_> = resp.into();
                Ok::<_, std::convert::Infallible>(resp.map(|inner| TrackedBody {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            return;
        }
        _ = state.evict.cancelled() => return,
        _ = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = hard_stop.cancelled() => {}
    }
}
