//! One client connection's clocks, kept on the socket itself: the header-read timeout, the idle
//! (keep-alive) timeout and the send timeout.
//!
//! poem's server exposes none of them (hyper's header timer needs a timer poem does not give it,
//! and would close idle keep-alive connections at the same moment as slow senders). So the
//! socket is wrapped ([`GuardedIo`]) and told by the request side ([`ConnState`]) whether a
//! request is in flight:
//!
//! - no request in flight and no byte of the next one: the idle clock runs (from the end of the
//!   last response, or from the accept);
//! - the first byte of a request head arrived: the whole head must follow within the
//!   header-read timeout (a client sending a byte a second gains nothing);
//! - a request in flight (handler running, body streaming either way) or an upgraded WebSocket:
//!   no read clock; long waits and event streams are not cut;
//! - whatever the state, a write the client does not take for the send timeout (its socket
//!   buffer stays full) fails the connection, so a reader that stopped reading is dropped.
//!
//! A clock that runs out fails the socket with `TimedOut`; hyper then closes the connection.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tokio_util::sync::CancellationToken;

/// The three timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clocks {
    /// From the first byte of a request head to its end.
    pub header_read: Duration,
    /// With no request in flight.
    pub idle: Duration,
    /// A write the client does not take.
    pub send: Duration,
}

/// What the request side tells the socket side, shared by both.
pub(super) struct ConnState {
    /// When the connection was accepted; the base of `idle_since_ms`.
    opened: Instant,
    /// Requests started on this connection so far.
    started: AtomicU64,
    /// Requests whose response has not been sent whole yet.
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last response ended (0: none yet).
    idle_since_ms: AtomicU64,
    /// Switched to another protocol (WebSocket): no read clock any more.
    upgraded: AtomicBool,
    /// Cancelled to close this connection at once (the connection limit needs its slot).
    pub(super) evict: CancellationToken,
    /// The read side waiting while a request was in flight (no clock then): woken when the
    /// last request ends, so that the idle clock starts even if hyper's read is already
    /// pending.
    reader: AtomicWaker,
}

impl ConnState {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(ConnState {
            opened: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            evict: CancellationToken::new(),
            reader: AtomicWaker::new(),
        })
    }

    /// A request starts; the returned guard ends it when dropped (with the response body).
    pub(super) fn request(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// The connection now speaks another protocol (a 101 answer).
    pub(super) fn upgrade(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// Idle since this instant, when nothing is in flight and it was not upgraded: a
    /// connection the limit may close to make room.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        if self.upgraded.load(Ordering::Acquire) || self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)))
    }
}

/// One request in flight; dropped with its response body.
pub(super) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(ms.max(1), Ordering::Release);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// A response body that ends its request's [`InFlight`] when hyper is done with it.
pub(super) struct TrackedBody<B> {
    pub(super) inner: B,
    pub(super) _in_flight: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A socket with the clocks of the module documentation.
pub(super) struct GuardedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    clocks: Clocks,
    /// The request (by `started` count) whose head is arriving, and its first byte's time.
    head: Option<(u64, Instant)>,
    read_timer: Pin<Box<Sleep>>,
    /// Since when the pending write has not been taken.
    stalled: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

/// Polls `timer` set to `deadline`: ready when it has passed.
fn expired(timer: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    if Instant::now() >= deadline {
        return true;
    }
    let deadline = tokio::time::Instant::from_std(deadline);
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

impl<T> GuardedIo<T> {
    pub(super) fn new(inner: T, state: Arc<ConnState>, clocks: Clocks) -> Self {
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        GuardedIo {
            inner,
            state,
            clocks,
            head: None,
            read_timer: Box::pin(tokio::time::sleep_until(far)),
            stalled: None,
            write_timer: Box::pin(tokio::time::sleep_until(far)),
        }
    }

    fn between_requests(&self) -> bool {
        !self.state.upgraded.load(Ordering::Acquire)
            && self.state.in_flight.load(Ordering::Acquire) == 0
    }

    /// The read clock now: `None` while a request is in flight.
    fn read_deadline(&self) -> Option<(Instant, &'static str)> {
        if !self.between_requests() {
            return None;
        }
        let started = self.state.started.load(Ordering::Acquire);
        match self.head {
            Some((n, at)) if n == started => Some((
                at + self.clocks.header_read,
                "request head not received in time",
            )),
            _ => self
                .state
                .idle_since()
                .map(|since| (since + self.clocks.idle, "connection idle")),
        }
    }

    fn on_write<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => {
                let since = *self.stalled.get_or_insert_with(Instant::now);
                if expired(&mut self.write_timer, since + self.clocks.send, cx) {
                    Poll::Ready(Err(timed_out("the client does not read")))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && self.between_requests() {
                    let started = self.state.started.load(Ordering::Acquire);
                    if self.head.is_none_or(|(n, _)| n != started) {
                        self.head = Some((started, Instant::now()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.state.reader.register(cx.waker());
                let Some((deadline, what)) = self.read_deadline() else {
                    return Poll::Pending;
                };
                if expired(&mut self.read_timer, deadline, cx) {
                    tracing::debug!(reason = what, "closing a connection");
                    Poll::Ready(Err(timed_out(what)))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
