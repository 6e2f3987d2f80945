//! One connection: the state its requests and the watchdog share, and the [`Conn`] stream that
//! the watchdog can close.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::watchdog::Registry;
use super::{CloseReason, Limits};

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the server knows about one connection; shared by its [`Conn`], its requests and the
/// listener's watchdog.
#[derive(Debug)]
pub(super) struct ConnState {
    pub(super) epoch: Instant,
    /// When the connection was accepted, in nanoseconds since `epoch`.
    pub(super) opened: u64,
    pub(super) closed: AtomicBool,
    pub(super) in_flight: AtomicU32,
    pub(super) requests: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    /// When the last request ended (`opened` before the first), and `bytes_in` then.
    pub(super) boundary_nanos: AtomicU64,
    pub(super) boundary_bytes: AtomicU64,
    /// The connection speaks HTTP/2 (no per-request header timeout after the first request).
    pub(super) h2: AtomicBool,
    pub(super) read_waker: Mutex<Option<Waker>>,
    pub(super) write_waker: Mutex<Option<Waker>>,
}

impl ConnState {
    pub(super) fn new(epoch: Instant, opened: u64, h2: bool) -> Self {
        Self {
            epoch,
            opened,
            closed: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            boundary_nanos: AtomicU64::new(opened),
            boundary_bytes: AtomicU64::new(0),
            h2: AtomicBool::new(h2),
            read_waker: Mutex::new(None),
            write_waker: Mutex::new(None),
        }
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub(super) fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes the connection: its reads see EOF and its writes fail from now on.
    pub(super) fn kill(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for w in [&self.read_waker, &self.write_waker] {
            if let Some(w) = w.lock().take() {
                w.wake();
            }
        }
    }

    /// Why the connection should be closed now (`now` in nanoseconds since `epoch`), if it should.
    /// `head` remembers when the watchdog first saw bytes of a pending HTTP/1 request head.
    pub(super) fn verdict(&self, head: &mut Option<(u64, u64)>, now: u64, limits: &Limits) -> Option<CloseReason> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            *head = None;
            return None;
        }
        let requests = self.requests.load(Ordering::Relaxed);
        if let Some(hrt) = limits.header_read_timeout.map(nanos) {
            if requests == 0 {
                if now.saturating_sub(self.opened) >= hrt {
                    return Some(CloseReason::HeaderReadTimeout);
                }
            } else if !self.h2.load(Ordering::Relaxed)
                && self.bytes_in.load(Ordering::Relaxed) > self.boundary_bytes.load(Ordering::Relaxed)
            {
                let since = match *head {
                    Some((r, t)) if r == requests => t,
                    _ => {
                        *head = Some((requests, now));
                        now
                    }
                };
                return (now.saturating_sub(since) >= hrt).then_some(CloseReason::HeaderReadTimeout);
            }
        }
        let idle = now.saturating_sub(self.boundary_nanos.load(Ordering::Acquire));
        (idle >= nanos(limits.idle_timeout)).then_some(CloseReason::IdleTimeout)
    }
}

/// A request in flight on a connection; dropped when its response has been written (or
/// abandoned).
#[derive(Debug)]
pub(super) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        // The boundary first: the watchdog must never see no request in flight with an old boundary.
        s.boundary_bytes
            .store(s.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
        s.boundary_nanos.store(nanos(s.epoch.elapsed()), Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection under its listener's limits: a [`TcpStream`] (or TLS over it) the
/// watchdog can close (reads then see EOF and writes fail).
#[derive(Debug)]
pub struct Conn {
    pub(super) io: Io,
    pub(super) peer: Option<SocketAddr>,
    /// A failed handshake was counted.
    pub(super) handshake_counted: bool,
    pub(super) state: Arc<ConnState>,
    pub(super) id: u64,
    pub(super) registry: Arc<Registry>,
}

/// The stream under a [`Conn`]: plain TCP, or TLS whose handshake runs on the first reads and
/// writes (so under the connection's timeouts).
pub(super) enum Io {
    Plain(TcpStream),
    Handshake(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed.
    Failed,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Io::Plain(_) => "Plain",
            Io::Handshake(_) => "Handshake",
            Io::Tls(_) => "Tls",
            Io::Failed => "Failed",
        })
    }
}

impl Io {
    /// Drives a pending TLS handshake; ready when the stream can be used.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Io::Handshake(accept) = self {
            match Pin::new(&mut **accept).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(s)) => *self = Io::Tls(Box::new(s)),
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    *self = Io::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match self {
            Io::Failed => Poll::Ready(Err(closed_error())),
            _ => Poll::Ready(Ok(())),
        }
    }
}

macro_rules! with_stream {
    ($io:expr, $s:ident => $e:expr) => {
        match $io {
            Io::Plain($s) => $e,
            Io::Tls($s) => {
                let $s = &mut **$s;
                $e
            }
            Io::Handshake(_) | Io::Failed => unreachable!("the handshake is driven first"),
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        with_stream!(this, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        with_stream!(this, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        with_stream!(this, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            // Asked once, when the connection starts (so mid-handshake): a TLS stream takes
            // vectored writes.
            Io::Handshake(_) => true,
            Io::Failed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        with_stream!(this, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Io::Handshake(a) => match a.get_mut() {
                Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
                None => Poll::Ready(Ok(())),
            },
            Io::Failed => Poll::Ready(Ok(())),
        }
    }
}

impl Conn {
    /// Counts a failed TLS handshake once (the stream is then `Failed`).
    fn count_failed_handshake(&mut self) {
        if matches!(self.io, Io::Failed) && !self.handshake_counted {
            self.handshake_counted = true;
            self.registry
                .stats
                .closed(self.registry.kind, CloseReason::TlsHandshake);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.registry.conns.lock().remove(&self.id);
        self.registry.stats.ended(self.registry.kind);
    }
}

pub(super) fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the server")
}

/// Registers `cx`'s waker to be woken by [`ConnState::kill`]; true when already closed.
pub(super) fn register(slot: &Mutex<Option<Waker>>, cx: &Context<'_>, state: &ConnState) -> bool {
    {
        let mut w = slot.lock();
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
    }
    state.is_closed()
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.count_failed_handshake();
        match polled {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                this.state.bytes_in.fetch_add(n, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if register(&this.state.read_waker, cx, &this.state) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.count_failed_handshake();
        match polled {
            Poll::Pending if register(&this.state.write_waker, cx, &this.state) => Poll::Ready(Err(closed_error())),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.count_failed_handshake();
        match polled {
            Poll::Pending if register(&this.state.write_waker, cx, &this.state) => Poll::Ready(Err(closed_error())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What tonic attaches to every gRPC request about its connection (see [`TrackLayer`]).
///
/// [`TrackLayer`]: super::TrackLayer
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    pub(super) state: Arc<ConnState>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            remote_addr: self.peer,
            state: self.state.clone(),
        }
    }
}
