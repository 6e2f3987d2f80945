//! What the connection layer reports about itself: connections open per listener, and closed by
//! the server by a closed set of reasons. Updated once per connection (never per request or byte);
//! `crate::telemetry` renders them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A listening socket, the `listener` label of the connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// OTLP/gRPC (`receivers.otlp.grpc`).
    OtlpGrpc,
    /// OTLP/HTTP (`receivers.otlp.http`).
    OtlpHttp,
    /// The Prometheus endpoint (`prometheus`).
    Prometheus,
}

impl ListenerKind {
    /// Every listener, in label order (`ALL[i] as usize == i`).
    pub const ALL: [Self; 3] = [Self::OtlpGrpc, Self::OtlpHttp, Self::Prometheus];

    /// The `listener` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtlpGrpc => "otlp_grpc",
            Self::OtlpHttp => "otlp_http",
            Self::Prometheus => "prometheus",
        }
    }
}

/// Why the server closed (or refused) a connection, the `reason` label of
/// `spindle_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The listener was at `max_connections`: an idle connection was closed to make room, or the
    /// new one was closed because every connection had a request in flight.
    MaxConnections,
    /// No request for `idle_timeout`.
    IdleTimeout,
    /// A request's headers did not arrive within `header_read_timeout`.
    HeaderReadTimeout,
    /// A request's body did not arrive within `body_read_timeout` (answered 408).
    BodyReadTimeout,
    /// The TLS handshake failed (a plaintext client, an untrusted or missing client
    /// certificate, no common version or cipher).
    TlsHandshake,
}

impl CloseReason {
    /// Every reason, in label order (`ALL[i] as usize == i`).
    pub const ALL: [Self; 5] = [
        Self::MaxConnections,
        Self::IdleTimeout,
        Self::HeaderReadTimeout,
        Self::BodyReadTimeout,
        Self::TlsHandshake,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::IdleTimeout => "idle_timeout",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::BodyReadTimeout => "body_read_timeout",
            Self::TlsHandshake => "tls_handshake",
        }
    }

    /// Whether the reason can happen on `listener` (gRPC has no header or body timeout).
    pub fn applies_to(self, listener: ListenerKind) -> bool {
        listener != ListenerKind::OtlpGrpc
            || matches!(self, Self::MaxConnections | Self::IdleTimeout | Self::TlsHandshake)
    }
}

// The counters are indexed by `as usize`: every value must be listed at its index.
const _: () = {
    let mut i = 0;
    while i < ListenerKind::ALL.len() {
        assert!(ListenerKind::ALL[i] as usize == i);
        i += 1;
    }
    let mut i = 0;
    while i < CloseReason::ALL.len() {
        assert!(CloseReason::ALL[i] as usize == i);
        i += 1;
    }
};

/// Connection counts per listener, updated once per connection (never per request or byte).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: [AtomicU64; ListenerKind::ALL.len()],
    closed: [[AtomicU64; CloseReason::ALL.len()]; ListenerKind::ALL.len()],
}

impl ConnectionStats {
    /// Counts a connection accepted and kept open.
    pub fn opened(&self, listener: ListenerKind) {
        self.open[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that ended (after [`opened`](Self::opened)), however it ended.
    pub fn ended(&self, listener: ListenerKind) {
        let _ = self.open[listener as usize].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Counts a connection the server closed or refused for `reason`.
    pub fn closed(&self, listener: ListenerKind, reason: CloseReason) {
        self.closed[listener as usize][reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now on `listener`.
    pub fn open_now(&self, listener: ListenerKind) -> u64 {
        self.open[listener as usize].load(Ordering::Relaxed)
    }

    /// Connections closed so far on `listener` for `reason`.
    pub fn closed_total(&self, listener: ListenerKind, reason: CloseReason) -> u64 {
        self.closed[listener as usize][reason as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_list_every_value() {
        // Exhaustive: a new variant fails to compile here until it is listed.
        let listener = |l: ListenerKind| match l {
            ListenerKind::OtlpGrpc => 0,
            ListenerKind::OtlpHttp => 1,
            ListenerKind::Prometheus => 2,
        };
        let reason = |r: CloseReason| match r {
            CloseReason::MaxConnections => 0,
            CloseReason::IdleTimeout => 1,
            CloseReason::HeaderReadTimeout => 2,
            CloseReason::BodyReadTimeout => 3,
            CloseReason::TlsHandshake => 4,
        };
        for (i, l) in ListenerKind::ALL.into_iter().enumerate() {
            assert_eq!(listener(l), i);
        }
        for (i, r) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(reason(r), i);
        }
        assert_eq!(ListenerKind::ALL.len(), 3);
        assert_eq!(CloseReason::ALL.len(), 5);
    }
}
