//! The guarded listener for the OTLP/HTTP and Prometheus routers ([`serve`]), and the per-connection
//! service that marks requests in flight.
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::serve::IncomingStream;
use http::{Request, Response, Version};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use super::body::{DeadlineBody, GuardedBody, body_timeout_response};
use super::conn::{Conn, ConnState, Io};
use super::tls::ServerTls;
use super::watchdog::{Closer, Registry};
use super::{CloseReason, ConnectionStats, Limits, ListenerKind};

/// A bound listener that admits connections under its [`Limits`], with a watchdog task that
/// closes connections past their timeouts. An [`axum::serve::Listener`].
#[derive(Debug)]
pub struct GuardedListener {
    pub(super) listener: TcpListener,
    pub(super) registry: Arc<Registry>,
    pub(super) last_warned: Option<Instant>,
    pub(super) tls: Option<Arc<ServerTls>>,
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
            tls: None,
        }
    }

    /// Serves TLS on every connection from now on (`None`: plain TCP). The handshake runs on the
    /// connection's first reads, under its limits.
    #[must_use]
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
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
                    if let Some(mut conn) = self.registry.admit(tcp) {
                        if let Some(tls) = &self.tls
                            && let Io::Plain(tcp) = std::mem::replace(&mut conn.io, Io::Failed)
                        {
                            conn.io = Io::Handshake(Box::new(tls.acceptor().accept(tcp)));
                        }
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

pub(super) fn is_connection_error(e: &io::Error) -> bool {
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

/// Serves `router` on `listener` under `limits` (over TLS when `tls` is given) until `shutdown`
/// resolves, then lets requests in flight finish.
///
/// # Errors
/// An I/O error of the server (accept errors are retried, never returned).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    kind: ListenerKind,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let make = MakeTracked {
        router,
        body_timeout: limits.body_read_timeout,
        kind,
        stats: stats.clone(),
    };
    let listener = GuardedListener::new(listener, kind, limits, stats).with_tls(tls);
    let closer = listener.closer();
    let shutdown = async move {
        shutdown.await;
        closer.close_idle();
    };
    axum::serve(listener, make).with_graceful_shutdown(shutdown).await
}

/// Makes one [`Tracked`] service per connection.
#[derive(Debug, Clone)]
pub(super) struct MakeTracked {
    pub(super) router: Router,
    pub(super) body_timeout: Option<Duration>,
    pub(super) kind: ListenerKind,
    pub(super) stats: Arc<ConnectionStats>,
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
pub(super) struct Tracked {
    pub(super) inner: MakeTracked,
    pub(super) conn: Arc<ConnState>,
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
