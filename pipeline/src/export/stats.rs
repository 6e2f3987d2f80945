//! What the exporters report about themselves: the sender's one stats type ([`ExporterStats`],
//! re-exported here for `crate::telemetry`, which holds one per exporter and renders them) and
//! each exporter's closed set of drop reasons.

use super::sender::stats::MAX_REASONS;
pub use super::sender::stats::{DURATION_BUCKETS, DurationHistogram, ExporterStats, LastError, Reason};

/// Why spans were dropped by the trace exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The backend refused the batch with a non-retryable error.
    Permanent,
    /// The backend accepted the batch but rejected these spans (`partial_success`).
    RejectedByBackend,
    /// The queue could not be flushed within `shutdown_timeout`.
    Shutdown,
}

impl Reason for DropReason {
    const ALL: &'static [Self] = &[
        DropReason::Permanent,
        DropReason::RejectedByBackend,
        DropReason::Shutdown,
    ];
    const PERMANENT: Self = DropReason::Permanent;
    const SHUTDOWN: Self = DropReason::Shutdown;
    const REJECTED: Option<Self> = Some(DropReason::RejectedByBackend);

    fn as_str(self) -> &'static str {
        match self {
            DropReason::Permanent => "permanent_error",
            DropReason::RejectedByBackend => "rejected_by_backend",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Why the remote-write exporter dropped samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteWriteDropReason {
    /// A newer snapshot did not fit in `queue_max_bytes`, so older queued requests were dropped.
    QueueFull,
    /// The receiver refused the request with a non-retryable status (4xx other than 429).
    Permanent,
    /// The queue could not be flushed within `shutdown_timeout`.
    Shutdown,
}

impl Reason for RemoteWriteDropReason {
    const ALL: &'static [Self] = &[
        RemoteWriteDropReason::QueueFull,
        RemoteWriteDropReason::Permanent,
        RemoteWriteDropReason::Shutdown,
    ];
    const PERMANENT: Self = RemoteWriteDropReason::Permanent;
    const SHUTDOWN: Self = RemoteWriteDropReason::Shutdown;
    const REJECTED: Option<Self> = None;

    fn as_str(self) -> &'static str {
        match self {
            RemoteWriteDropReason::QueueFull => "queue_full",
            RemoteWriteDropReason::Permanent => "permanent_error",
            RemoteWriteDropReason::Shutdown => "shutdown",
        }
    }
}

impl From<DropReason> for usize {
    fn from(r: DropReason) -> usize {
        r as usize
    }
}

impl From<RemoteWriteDropReason> for usize {
    fn from(r: RemoteWriteDropReason) -> usize {
        r as usize
    }
}

// Every reason indexes the `dropped` counters: the sets must fit and list their values in order.
const _: () = {
    assert!(DropReason::ALL.len() <= MAX_REASONS);
    assert!(RemoteWriteDropReason::ALL.len() <= MAX_REASONS);
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!(DropReason::ALL[i] as usize == i);
        i += 1;
    }
    let mut i = 0;
    while i < RemoteWriteDropReason::ALL.len() {
        assert!(RemoteWriteDropReason::ALL[i] as usize == i);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists every variant of `R` with an exhaustive match (adding a variant fails to compile
    /// here) and checks `ALL` holds each one at its index with a distinct label value.
    fn assert_closed<R: Reason + PartialEq + std::fmt::Debug>(every: &[R]) {
        assert_eq!(R::ALL, every, "ALL lists every variant in order");
        for (i, r) in R::ALL.iter().enumerate() {
            assert_eq!((*r).into(), i);
            assert!(R::ALL[..i].iter().all(|o| o.as_str() != r.as_str()), "{r:?}");
        }
    }

    #[test]
    fn drop_reasons_are_closed_sets() {
        let every = |r: DropReason| match r {
            DropReason::Permanent | DropReason::RejectedByBackend | DropReason::Shutdown => r,
        };
        assert_closed(&[
            every(DropReason::Permanent),
            every(DropReason::RejectedByBackend),
            every(DropReason::Shutdown),
        ]);
        let every = |r: RemoteWriteDropReason| match r {
            RemoteWriteDropReason::QueueFull | RemoteWriteDropReason::Permanent | RemoteWriteDropReason::Shutdown => r,
        };
        assert_closed(&[
            every(RemoteWriteDropReason::QueueFull),
            every(RemoteWriteDropReason::Permanent),
            every(RemoteWriteDropReason::Shutdown),
        ]);
    }
}
