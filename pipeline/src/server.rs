//! Connection limits and timeouts for every listener: the OTLP/HTTP and Prometheus routers
//! ([`serve`]) and the OTLP/gRPC server ([`incoming`] with [`TrackLayer`]).
//!
//! In: a bound [`TcpListener`] and its [`Limits`]. Out: accepted connections, each wrapped in a
//! [`Conn`] that the listener's watchdog can close. Per listener:
//! - At most `max_connections` are open. At the cap a new connection closes the least recently
//!   active connection that has no request in flight (so a flood of idle or slow clients cannot
//!   keep a well-behaved one out, and nothing in flight is cut); when every connection has a
//!   request in flight, the new one is closed at once.
//! - A connection with no request in flight for `idle_timeout` is closed.
//! - HTTP: the first request's headers must arrive within `header_read_timeout` of the connection
//!   opening, a later request's (HTTP/1) within `header_read_timeout` of its first byte, else the
//!   connection is closed; a request's body must arrive within `body_read_timeout` of its headers,
//!   else it is answered 408 and the connection is closed.
//!
//! Every close is counted once per connection in `spindle_connections_closed_total{listener,
//! reason}`; `spindle_open_connections{listener}` is the gauge. Accept errors (such as running out
//! of file descriptors) never stop a listener: it waits a moment and accepts again. At startup
//! [`raise_open_file_limit`] lifts `RLIMIT_NOFILE`'s soft limit to the hard limit, and
//! `Config::connection_problems` checks the caps fit under it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::serve::IncomingStream;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt};

pub mod stats;

pub use stats::{CloseReason, ConnectionStats, ListenerKind};

/// One listener's connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request's headers must arrive within this (HTTP listeners; `None` for gRPC).
    pub header_read_timeout: Option<Duration>,
    /// A request's body must arrive within this from its headers (HTTP listeners; `None` for gRPC).
    pub body_read_timeout: Option<Duration>,
}

impl Limits {
    /// How often the watchdog looks at every connection: an eighth of the shortest timeout,
    /// between 10 ms and 1 s.
    fn tick(&self) -> Duration {
        let shortest = self
            .header_read_timeout
            .map_or(self.idle_timeout, |h| h.min(self.idle_timeout));
        (shortest / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the server knows about one connection; shared by its [`Conn`], its requests and the
/// listener's watchdog.
#[derive(Debug)]
struct ConnState {
    epoch: Instant,
    /// When the connection was accepted, in nanoseconds since `epoch`.
    opened: u64,
    closed: AtomicBool,
    in_flight: AtomicU32,
    requests: AtomicU64,
    bytes_in: AtomicU64,
    /// When the last request ended (`opened` before the first), and `bytes_in` then.
    boundary_nanos: AtomicU64,
    boundary_bytes: AtomicU64,
    /// The connection speaks HTTP/2 (no per-request header timeout after the first request).
    h2: AtomicBool,
    read_waker: Mutex<Option<Waker>>,
    write_waker: Mutex<Option<Waker>>,
}

impl ConnState {
    fn new(epoch: Instant, opened: u64, h2: bool) -> Self {
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
    fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes the connection: its reads see EOF and its writes fail from now on.
    fn kill(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for w in [&self.read_waker, &self.write_waker] {
            if let Some(w) = w.lock().take() {
                w.wake();
            }
        }
    }

    /// Why the connection should be closed now (`now` in nanoseconds since `epoch`), if it should.
    /// `head` remembers when the watchdog first saw bytes of a pending HTTP/1 request head.
    fn verdict(&self, head: &mut Option<(u64, u64)>, now: u64, limits: &Limits) -> Option<CloseReason> {
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
struct InFlight(Arc<ConnState>);

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

#[derive(Debug)]
struct Entry {
    state: Arc<ConnState>,
    head: Option<(u64, u64)>,
}

/// The open connections of one listener.
#[derive(Debug)]
struct Registry {
    kind: ListenerKind,
    limits: Limits,
    epoch: Instant,
    stats: Arc<ConnectionStats>,
    conns: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
}

impl Registry {
    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// Admits an accepted stream, closing the least recently active idle connection when at the
    /// cap; `None` (the stream is dropped, so closed) when every connection is busy.
    fn admit(self: &Arc<Self>, tcp: TcpStream) -> Option<Conn> {
        let _ = tcp.set_nodelay(true);
        let now = self.now();
        let mut conns = self.conns.lock();
        if conns.len() >= self.limits.max_connections {
            let victim = conns
                .iter()
                .filter(|(_, e)| e.state.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, e)| e.state.boundary_nanos.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            self.stats.closed(self.kind, CloseReason::MaxConnections);
            match victim.and_then(|id| conns.remove(&id)) {
                Some(e) => e.state.kill(),
                None => return None,
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(self.epoch, now, self.kind == ListenerKind::OtlpGrpc));
        conns.insert(
            id,
            Entry {
                state: state.clone(),
                head: None,
            },
        );
        drop(conns);
        self.stats.opened(self.kind);
        Some(Conn {
            tcp,
            state,
            id,
            registry: self.clone(),
        })
    }

    /// Closes every connection with no request in flight (at shutdown: they would otherwise hold
    /// the graceful shutdown until their timeouts).
    fn close_idle(&self) {
        self.conns.lock().retain(|_, e| {
            let idle = e.state.in_flight.load(Ordering::Acquire) == 0;
            if idle {
                e.state.kill();
            }
            !idle
        });
    }

    /// Closes every connection past one of its timeouts.
    fn sweep(&self) {
        let now = self.now();
        let mut closed = Vec::new();
        self.conns
            .lock()
            .retain(|_, e| match e.state.verdict(&mut e.head, now, &self.limits) {
                None => true,
                Some(reason) => {
                    e.state.kill();
                    closed.push(reason);
                    false
                }
            });
        for reason in closed {
            self.stats.closed(self.kind, reason);
        }
    }
}

/// An accepted connection under its listener's limits: a [`TcpStream`] the watchdog can close
/// (reads then see EOF and writes fail).
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    state: Arc<ConnState>,
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.registry.conns.lock().remove(&self.id);
        self.registry.stats.ended(self.registry.kind);
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the server")
}

/// Registers `cx`'s waker to be woken by [`ConnState::kill`]; true when already closed.
fn register(slot: &Mutex<Option<Waker>>, cx: &Context<'_>, state: &ConnState) -> bool {
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
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
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
        match Pin::new(&mut this.tcp).poll_write(cx, buf) {
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
        match Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs) {
            Poll::Pending if register(&this.state.write_waker, cx, &this.state) => Poll::Ready(Err(closed_error())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// What tonic attaches to every gRPC request about its connection (see [`TrackLayer`]).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    state: Arc<ConnState>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            remote_addr: self.tcp.peer_addr().ok(),
            state: self.state.clone(),
        }
    }
}

/// A bound listener that admits connections under its [`Limits`], with a watchdog task that
/// closes connections past their timeouts. An [`axum::serve::Listener`].
#[derive(Debug)]
pub struct GuardedListener {
    listener: TcpListener,
    registry: Arc<Registry>,
    last_warned: Option<Instant>,
}

impl GuardedListener {
    /// Wraps `listener` and starts its watchdog (which stops once the listener and all its
    /// connections are gone). Must be called inside a Tokio runtime.
    pub fn new(listener: TcpListener, kind: ListenerKind, limits: Limits, stats: Arc<ConnectionStats>) -> Self {
        let registry = Arc::new(Registry {
            kind,
            limits,
            epoch: Instant::now(),
            stats,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let weak: Weak<Registry> = Arc::downgrade(&registry);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(limits.tick());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else { return };
                r.sweep();
            }
        });
        Self {
            listener,
            registry,
            last_warned: None,
        }
    }

    /// A handle that closes this listener's idle connections.
    pub fn closer(&self) -> Closer {
        Closer(self.registry.clone())
    }

    /// The next admitted connection. Accept errors are retried: per-connection ones at once,
    /// others (out of file descriptors, memory) after a short pause, logged at most every 10 s.
    pub async fn accept_conn(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, addr)) => {
                    if let Some(conn) = self.registry.admit(tcp) {
                        return (conn, addr);
                    }
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    if self.last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        self.last_warned = Some(Instant::now());
                        tracing::warn!(listener = self.registry.kind.as_str(), error = %e, "cannot accept connections; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

impl axum::serve::Listener for GuardedListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        self.accept_conn().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves, then lets requests in
/// flight finish.
///
/// # Errors
/// An I/O error of the server (accept errors are retried, never returned).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    kind: ListenerKind,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let make = MakeTracked {
        router,
        body_timeout: limits.body_read_timeout,
        kind,
        stats: stats.clone(),
    };
    let listener = GuardedListener::new(listener, kind, limits, stats);
    let closer = listener.closer();
    let shutdown = async move {
        shutdown.await;
        closer.close_idle();
    };
    axum::serve(listener, make).with_graceful_shutdown(shutdown).await
}

/// Closes a listener's idle connections on demand (see [`Closer::close_idle`]).
#[derive(Debug, Clone)]
pub struct Closer(Arc<Registry>);

impl Closer {
    /// Closes every connection of the listener that has no request in flight. Called when a
    /// graceful shutdown starts, so idle and silent connections do not hold it up; connections
    /// with a request in flight finish it first.
    pub fn close_idle(&self) {
        self.0.close_idle();
    }
}

/// Makes one [`Tracked`] service per connection.
#[derive(Debug, Clone)]
struct MakeTracked {
    router: Router,
    body_timeout: Option<Duration>,
    kind: ListenerKind,
    stats: Arc<ConnectionStats>,
}

impl Service<IncomingStream<'_, GuardedListener>> for MakeTracked {
    type Response = Tracked;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Tracked, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, GuardedListener>) -> Self::Future {
        std::future::ready(Ok(Tracked {
            inner: self.clone(),
            conn: stream.io().state.clone(),
        }))
    }
}

/// The router for one connection: marks each request in flight until its response is written
/// and bounds the time its body may take.
#[derive(Debug, Clone)]
struct Tracked {
    inner: MakeTracked,
    conn: Arc<ConnState>,
}

impl Service<Request<Body>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let h2 = req.version() == Version::HTTP_2;
        let guard = self.conn.begin(h2);
        let timed_out = Arc::new(AtomicBool::new(false));
        let limit = self.inner.body_timeout;
        let req = match limit {
            Some(d) if !http_body::Body::is_end_stream(req.body()) => {
                let flag = timed_out.clone();
                req.map(|b| Body::new(DeadlineBody::new(b, d, flag)))
            }
            _ => req,
        };
        let router = self.inner.router.clone();
        let (kind, stats) = (self.inner.kind, self.inner.stats.clone());
        Box::pin(async move {
            let resp = router.oneshot(req).await?;
            let resp = match limit {
                Some(d) if timed_out.load(Ordering::Relaxed) => {
                    stats.closed(kind, CloseReason::BodyReadTimeout);
                    body_timeout_response(d, h2)
                }
                _ => resp,
            };
            Ok(resp.map(|b| {
                Body::new(GuardedBody {
                    inner: b,
                    guard: Some(guard),
                })
            }))
        })
    }
}

fn body_timeout_response(limit: Duration, h2: bool) -> Response<Body> {
    let msg = format!(
        "request body did not arrive within {}\n",
        humantime::format_duration(limit)
    );
    let mut resp = Response::new(Body::from(msg));
    *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if !h2 {
        // HTTP/1: the rest of the body may still come; close rather than read it.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The request body did not arrive within `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
struct DeadlineBody {
    inner: Body,
    limit: Duration,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl DeadlineBody {
    fn new(inner: Body, limit: Duration, timed_out: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit,
            deadline: tokio::time::Instant::now() + limit,
            sleep: None,
            timed_out,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.limit)))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is dropped.
    #[derive(Debug)]
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A tower layer for the tonic server: marks each gRPC request in flight on its connection (found
/// through [`ConnInfo`]) until its response is written, so idle connections can be told apart.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

/// The service made by [`TrackLayer`].
#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
}

fn conn_state<B>(req: &Request<B>) -> Option<&Arc<ConnState>> {
    let ext = req.extensions();
    ext.get::<ConnInfo>()
        .or_else(|| {
            ext.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                .map(|t| t.get_ref())
        })
        .map(|c| &c.state)
}

impl<S, B, RB> Service<Request<B>> for Track<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<GuardedBody<RB>>;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = conn_state(&req).map(|s| s.begin(true));
        TrackFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Track`].
    #[derive(Debug)]
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, RB, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<GuardedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(res) => {
                let guard = this.guard.take();
                Poll::Ready(res.map(|r| r.map(|inner| GuardedBody { inner, guard })))
            }
        }
    }
}

/// The connections of `listener` under `limits`, as the incoming stream of a tonic server (used
/// with [`TrackLayer`]), and the handle that closes its idle connections at shutdown. Accept
/// errors are retried inside, never yielded.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
) -> (tokio_stream::wrappers::ReceiverStream<io::Result<Conn>>, Closer) {
    let mut listener = GuardedListener::new(listener, ListenerKind::OtlpGrpc, limits, stats);
    let closer = listener.closer();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                (conn, _) = listener.accept_conn() => {
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), closer)
}

/// The `RLIMIT_NOFILE` hard limit: how many file descriptors this process may open once its soft
/// limit is raised (`None` when unlimited or unknown).
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (_, hard) = get_nofile()?;
        (hard != libc::RLIM_INFINITY).then_some(hard as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(unix)]
fn get_nofile() -> Option<(libc::rlim_t, libc::rlim_t)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives across the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    (rc == 0).then_some((rl.rlim_cur, rl.rlim_max))
}

/// Raises the `RLIMIT_NOFILE` soft limit to the hard limit, so the listeners' connection caps
/// (checked against the hard limit) can be reached. Returns the soft limit before and after.
///
/// # Errors
/// The OS error when the limit cannot be read or set.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
pub fn raise_open_file_limit() -> io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        let (soft, hard) = get_nofile().ok_or_else(io::Error::last_os_error)?;
        if soft >= hard {
            return Ok((soft as u64, soft as u64));
        }
        let rl = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((soft as u64, hard as u64))
    }
    #[cfg(not(unix))]
    {
        Ok((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 2,
        idle_timeout: Duration::from_secs(10),
        header_read_timeout: Some(Duration::from_secs(2)),
        body_read_timeout: Some(Duration::from_secs(5)),
    };
    const S: u64 = 1_000_000_000;

    fn state() -> Arc<ConnState> {
        Arc::new(ConnState::new(Instant::now(), 0, false))
    }

    #[test]
    fn a_silent_new_connection_gets_the_header_timeout() {
        let s = state();
        let mut head = None;
        assert_eq!(s.verdict(&mut head, S, &LIMITS), None);
        assert_eq!(
            s.verdict(&mut head, 2 * S, &LIMITS),
            Some(CloseReason::HeaderReadTimeout)
        );
        // gRPC has no header timeout: only the idle timeout applies.
        let grpc = Limits {
            header_read_timeout: None,
            ..LIMITS
        };
        assert_eq!(s.verdict(&mut head, 9 * S, &grpc), None);
        assert_eq!(s.verdict(&mut head, 10 * S, &grpc), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn keep_alive_idles_for_the_idle_timeout_and_a_started_head_gets_the_header_timeout() {
        let s = state();
        let mut head = None;
        drop(s.begin(false));
        let ended = s.boundary_nanos.load(Ordering::Relaxed);
        assert_eq!(
            s.verdict(&mut head, ended + 9 * S, &LIMITS),
            None,
            "idle, not a slow header"
        );
        assert_eq!(
            s.verdict(&mut head, ended + 10 * S, &LIMITS),
            Some(CloseReason::IdleTimeout)
        );
        // A byte of the next head arrives: from when it is first seen, the header timeout runs.
        s.bytes_in.fetch_add(1, Ordering::Relaxed);
        assert_eq!(s.verdict(&mut head, ended + S, &LIMITS), None);
        assert_eq!(s.verdict(&mut head, ended + 2 * S, &LIMITS), None);
        assert_eq!(
            s.verdict(&mut head, ended + 3 * S, &LIMITS),
            Some(CloseReason::HeaderReadTimeout)
        );
    }

    #[test]
    fn a_request_in_flight_is_never_timed_out_here() {
        let s = state();
        let mut head = None;
        let g = s.begin(false);
        assert_eq!(s.verdict(&mut head, 100 * S, &LIMITS), None);
        drop(g);
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_watchdog_ticks_well_within_the_shortest_timeout() {
        assert_eq!(LIMITS.tick(), Duration::from_millis(250));
        let tiny = Limits {
            idle_timeout: Duration::from_millis(1),
            ..LIMITS
        };
        assert_eq!(tiny.tick(), Duration::from_millis(10));
    }

    #[test]
    fn caps_that_do_not_fit_the_open_file_limit_are_a_problem_with_key_and_hint() {
        let mut c = crate::config::Config::default();
        // Defaults: 1024 + 1024 + 256 + 256 reserved.
        assert_eq!(c.connection_problems(Some(2560)), vec![]);
        assert_eq!(c.connection_problems(None), vec![]);
        let p = c.connection_problems(Some(2559));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "receivers.otlp.http.max_connections", "the largest cap");
        assert!(
            p[0].message.contains("2304") && p[0].message.contains("2559"),
            "{}",
            p[0].message
        );
        assert!(p[0].hint.contains("LimitNOFILE"), "{}", p[0].hint);
        c.prometheus.max_connections = 0;
        c.receivers.otlp.http.header_read_timeout = crate::config::DurationStr(Duration::ZERO);
        let paths: Vec<String> = c.connection_problems(None).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            ["prometheus.max_connections", "receivers.otlp.http.header_read_timeout"]
        );
        // And `validate` (so `spindle validate` and startup) reports them.
        assert!(c.validate().iter().any(|p| p.path == "prometheus.max_connections"));
    }

    #[test]
    fn the_open_file_limit_can_be_raised_to_the_hard_limit() {
        let (_, after) = raise_open_file_limit().unwrap();
        if let Some(hard) = open_file_limit() {
            assert_eq!(after, hard);
        }
    }
}
