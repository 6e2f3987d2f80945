//! What the OTLP receivers report about themselves: requests and items accepted or rejected by
//! signal and protocol, and requests refused as a whole by a closed set of reasons. Counted once
//! per request; `crate::telemetry` renders them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{Protocol, Signal};

/// Why a request was refused as a whole, the `reason` label of `spindle_refused_requests_total`
/// (see [`Refusal::reason`](super::status::Refusal::reason)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The payload could not be decoded (protobuf, JSON or gRPC framing).
    Malformed,
    /// The body was over `max_request_size`, compressed or decompressed, or would decode too large.
    TooLarge,
    /// The compressed body was corrupt.
    CorruptCompression,
    /// A `Content-Encoding` / `grpc-encoding` Spindle does not support.
    UnsupportedEncoding,
    /// A `Content-Type` other than protobuf or JSON.
    UnsupportedMediaType,
    /// A bound was full; the client should retry.
    Overloaded,
    /// No bearer token, or one not in `receivers.otlp.auth.bearer_tokens_file`.
    Unauthenticated,
    /// The token may write none of the request's services.
    PermissionDenied,
}

impl RefusalReason {
    /// Every reason, in label order (`ALL[i] as usize == i`).
    pub const ALL: [Self; 8] = [
        Self::Malformed,
        Self::TooLarge,
        Self::CorruptCompression,
        Self::UnsupportedEncoding,
        Self::UnsupportedMediaType,
        Self::Overloaded,
        Self::Unauthenticated,
        Self::PermissionDenied,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::CorruptCompression => "corrupt_compression",
            Self::UnsupportedEncoding => "unsupported_encoding",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Overloaded => "overloaded",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
        }
    }
}

/// Every `signal` label value of the receiver metrics, in label order.
pub const SIGNALS: [Signal; 2] = [Signal::Metrics, Signal::Traces];
/// Every `protocol` label value of the receiver metrics, in label order.
pub const PROTOCOLS: [Protocol; 2] = [Protocol::Grpc, Protocol::Http];

// The counters are indexed by `as usize`: every value must be listed at its index.
const _: () = {
    let mut i = 0;
    while i < RefusalReason::ALL.len() {
        assert!(RefusalReason::ALL[i] as usize == i);
        i += 1;
    }
    assert!(SIGNALS[0] as usize == 0 && SIGNALS[1] as usize == 1);
    assert!(PROTOCOLS[0] as usize == 0 && PROTOCOLS[1] as usize == 1);
};

type PerSignalProtocol = [[AtomicU64; PROTOCOLS.len()]; SIGNALS.len()];

/// The receivers' counters.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    requests: PerSignalProtocol,
    accepted: PerSignalProtocol,
    rejected: PerSignalProtocol,
    refused: [[[AtomicU64; RefusalReason::ALL.len()]; PROTOCOLS.len()]; SIGNALS.len()],
}

impl ReceiverStats {
    /// Counts one accepted request with its accepted and rejected items.
    pub fn received(&self, signal: Signal, protocol: Protocol, accepted: u64, rejected: u64) {
        let (s, p) = (signal as usize, protocol as usize);
        self.requests[s][p].fetch_add(1, Ordering::Relaxed);
        self.accepted[s][p].fetch_add(accepted, Ordering::Relaxed);
        self.rejected[s][p].fetch_add(rejected, Ordering::Relaxed);
    }

    /// Counts one request refused as a whole.
    pub fn refused(&self, signal: Signal, protocol: Protocol, reason: RefusalReason) {
        self.refused[signal as usize][protocol as usize][reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Accepted requests so far.
    pub fn requests_total(&self, signal: Signal, protocol: Protocol) -> u64 {
        self.requests[signal as usize][protocol as usize].load(Ordering::Relaxed)
    }

    /// Accepted items so far.
    pub fn accepted_items(&self, signal: Signal, protocol: Protocol) -> u64 {
        self.accepted[signal as usize][protocol as usize].load(Ordering::Relaxed)
    }

    /// Rejected items (reported in `partial_success`) so far.
    pub fn rejected_items(&self, signal: Signal, protocol: Protocol) -> u64 {
        self.rejected[signal as usize][protocol as usize].load(Ordering::Relaxed)
    }

    /// Requests refused as a whole for `reason` so far.
    pub fn refused_total(&self, signal: Signal, protocol: Protocol, reason: RefusalReason) -> u64 {
        self.refused[signal as usize][protocol as usize][reason as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons_list_every_value() {
        // Exhaustive: a new reason fails to compile here until it is given its place in `ALL`.
        let index = |r: RefusalReason| match r {
            RefusalReason::Malformed => 0,
            RefusalReason::TooLarge => 1,
            RefusalReason::CorruptCompression => 2,
            RefusalReason::UnsupportedEncoding => 3,
            RefusalReason::UnsupportedMediaType => 4,
            RefusalReason::Overloaded => 5,
            RefusalReason::Unauthenticated => 6,
            RefusalReason::PermissionDenied => 7,
        };
        for (i, r) in RefusalReason::ALL.into_iter().enumerate() {
            assert_eq!(index(r), i);
        }
        assert_eq!(RefusalReason::ALL.len(), 8);
    }

    #[test]
    fn each_refusal_is_counted_under_its_own_reason() {
        let s = ReceiverStats::default();
        s.refused(Signal::Traces, Protocol::Http, RefusalReason::Overloaded);
        assert_eq!(
            s.refused_total(Signal::Traces, Protocol::Http, RefusalReason::Overloaded),
            1
        );
        assert_eq!(
            s.refused_total(Signal::Traces, Protocol::Http, RefusalReason::Malformed),
            0
        );
    }
}
