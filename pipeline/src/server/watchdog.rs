//! A listener's registry of open connections: admission under `max_connections`, the sweep that
//! closes connections past their timeouts, and the [`Closer`] that closes idle ones on demand.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::conn::{Conn, ConnState, Io, nanos};
use super::{CloseReason, ConnectionStats, Limits, ListenerKind};

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) state: Arc<ConnState>,
    pub(super) head: Option<(u64, u64)>,
}

/// The open connections of one listener.
#[derive(Debug)]
pub(super) struct Registry {
    pub(super) kind: ListenerKind,
    pub(super) limits: Limits,
    pub(super) epoch: Instant,
    pub(super) stats: Arc<ConnectionStats>,
    pub(super) conns: Mutex<HashMap<u64, Entry>>,
    pub(super) next_id: AtomicU64,
}

impl Registry {
    pub(super) fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// Admits an accepted stream, closing the least recently active idle connection when at the
    /// cap; `None` (the stream is dropped, so closed) when every connection is busy.
    pub(super) fn admit(self: &Arc<Self>, tcp: TcpStream) -> Option<Conn> {
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
            peer: tcp.peer_addr().ok(),
            handshake_counted: false,
            io: Io::Plain(tcp),
            state,
            id,
            registry: self.clone(),
        })
    }

    /// Closes every connection with no request in flight (at shutdown: they would otherwise hold
    /// the graceful shutdown until their timeouts).
    pub(super) fn close_idle(&self) {
        self.conns.lock().retain(|_, e| {
            let idle = e.state.in_flight.load(Ordering::Acquire) == 0;
            if idle {
                e.state.kill();
            }
            !idle
        });
    }

    /// Closes every connection past one of its timeouts.
    pub(super) fn sweep(&self) {
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

/// Closes a listener's idle connections on demand (see [`Closer::close_idle`]).
#[derive(Debug, Clone)]
pub struct Closer(pub(super) Arc<Registry>);

impl Closer {
    /// Closes every connection of the listener that has no request in flight. Called when a
    /// graceful shutdown starts, so idle and silent connections do not hold it up; connections
    /// with a request in flight finish it first.
    pub fn close_idle(&self) {
        self.0.close_idle();
    }
}
