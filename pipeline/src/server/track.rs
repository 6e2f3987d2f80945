//! The OTLP/gRPC side: [`incoming`] connections for tonic and the [`TrackLayer`] that marks each
//! gRPC request in flight.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::net::TcpListener;
use tower::{Layer, Service};

use super::body::GuardedBody;
use super::conn::{Conn, ConnInfo, ConnState, InFlight};
use super::listener::GuardedListener;
use super::tls::ServerTls;
use super::watchdog::Closer;
use super::{ConnectionStats, Limits, ListenerKind};

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
    pub(super) inner: S,
}

pub(super) fn conn_state<B>(req: &Request<B>) -> Option<&Arc<ConnState>> {
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

/// The connections of `listener` under `limits` (over TLS when `tls` is given), as the incoming stream of a tonic server (used
/// with [`TrackLayer`]), and the handle that closes its idle connections at shutdown. Accept
/// errors are retried inside, never yielded.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    tls: Option<Arc<ServerTls>>,
) -> (tokio_stream::wrappers::ReceiverStream<io::Result<Conn>>, Closer) {
    let mut listener = GuardedListener::new(listener, ListenerKind::OtlpGrpc, limits, stats).with_tls(tls);
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
