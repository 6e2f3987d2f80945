//! Spindle's own metrics (`spindle_*`), registered once and updated per batch, never per item.
//!
//! Labels come from closed sets only: `signal` (`metrics`, `traces`), `protocol` (`grpc`,
//! `http`), `reason` (the refusal classes of `receive::status`). Rendered after the stored
//! families on the same `/metrics` endpoint, in either exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::{Format, Protocol, Signal};

const SIGNALS: [Signal; 2] = [Signal::Metrics, Signal::Traces];
const PROTOCOLS: [Protocol; 2] = [Protocol::Grpc, Protocol::Http];
/// Every `reason` a refused request can be counted under.
pub const REFUSAL_REASONS: [&str; 6] = [
    "malformed",
    "too_large",
    "corrupt_compression",
    "unsupported_encoding",
    "unsupported_media_type",
    "overloaded",
];
const DURATION_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

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

impl DropReason {
    const ALL: [DropReason; 3] = [
        DropReason::Permanent,
        DropReason::RejectedByBackend,
        DropReason::Shutdown,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
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

impl RemoteWriteDropReason {
    const ALL: [RemoteWriteDropReason; 3] = [
        RemoteWriteDropReason::QueueFull,
        RemoteWriteDropReason::Permanent,
        RemoteWriteDropReason::Shutdown,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RemoteWriteDropReason::QueueFull => "queue_full",
            RemoteWriteDropReason::Permanent => "permanent_error",
            RemoteWriteDropReason::Shutdown => "shutdown",
        }
    }
}

/// A duration histogram with fixed buckets.
#[derive(Debug, Default)]
struct DurationHistogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        let mut cum = 0;
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            cum += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b:?}\"}} {cum}");
        }
        cum += self.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_count {cum}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum:?}");
    }
}

type PerSignalProtocol = [[AtomicU64; 2]; 2];

/// The self-metric counters.
#[derive(Debug, Default)]
pub struct Telemetry {
    requests: PerSignalProtocol,
    accepted: PerSignalProtocol,
    rejected: PerSignalProtocol,
    refused: [[[AtomicU64; REFUSAL_REASONS.len()]; 2]; 2],
    expired_series: AtomicU64,
    scrape: DurationHistogram,
    spans_forwarded: AtomicU64,
    spans_dropped: [AtomicU64; DropReason::ALL.len()],
    export_retries: AtomicU64,
    export_queue_bytes: AtomicU64,
    export_queue_capacity: AtomicU64,
    export: DurationHistogram,
    rw_sent_samples: AtomicU64,
    rw_sent_exemplars: AtomicU64,
    rw_dropped: [AtomicU64; RemoteWriteDropReason::ALL.len()],
    rw_retries: AtomicU64,
    rw_queue_bytes: AtomicU64,
    rw_queue_capacity: AtomicU64,
    rw_request: DurationHistogram,
}

/// Families Spindle exposes about itself: `(name, type, help)`; counters without `_total`.
const FAMILIES: [(&str, &str, &str); 20] = [
    (
        "spindle_received_requests",
        "counter",
        "OTLP export requests accepted, by signal and protocol.",
    ),
    (
        "spindle_received_items",
        "counter",
        "Data points or spans accepted, by signal and protocol.",
    ),
    (
        "spindle_rejected_items",
        "counter",
        "Data points or spans rejected as invalid or conflicting (reported in partial_success).",
    ),
    (
        "spindle_refused_requests",
        "counter",
        "Requests refused as a whole, by signal, protocol and reason.",
    ),
    (
        "spindle_active_series",
        "gauge",
        "Series currently held for the Prometheus endpoint.",
    ),
    (
        "spindle_expired_series",
        "counter",
        "Series removed after prometheus.series_ttl without updates.",
    ),
    (
        "spindle_scrape_duration_seconds",
        "histogram",
        "Time to render /metrics.",
    ),
    (
        "spindle_exporter_sent_spans",
        "counter",
        "Spans the trace backend acknowledged.",
    ),
    (
        "spindle_exporter_dropped_spans",
        "counter",
        "Spans the trace exporter dropped, by reason.",
    ),
    (
        "spindle_exporter_retries",
        "counter",
        "Trace export attempts that failed and were retried.",
    ),
    (
        "spindle_exporter_queue_bytes",
        "gauge",
        "Encoded bytes of spans queued or in flight to the trace backend.",
    ),
    (
        "spindle_exporter_queue_capacity_bytes",
        "gauge",
        "Bound of the trace export queue (exporters.traces.otlp.queue_max_bytes).",
    ),
    (
        "spindle_exporter_export_duration_seconds",
        "histogram",
        "Duration of trace export attempts.",
    ),
    (
        "spindle_remote_write_sent_samples",
        "counter",
        "Samples the remote-write receiver acknowledged.",
    ),
    (
        "spindle_remote_write_sent_exemplars",
        "counter",
        "Exemplars the remote-write receiver acknowledged.",
    ),
    (
        "spindle_remote_write_dropped_samples",
        "counter",
        "Samples (and exemplars) the remote-write exporter dropped, by reason.",
    ),
    (
        "spindle_remote_write_retries",
        "counter",
        "Remote-write requests that failed and were retried.",
    ),
    (
        "spindle_remote_write_queue_bytes",
        "gauge",
        "Compressed bytes of remote-write requests waiting to be sent.",
    ),
    (
        "spindle_remote_write_queue_capacity_bytes",
        "gauge",
        "Bound of the remote-write queue (exporters.remote_write.queue_max_bytes).",
    ),
    (
        "spindle_remote_write_request_duration_seconds",
        "histogram",
        "Duration of remote-write request attempts.",
    ),
];

fn idx(s: Signal, p: Protocol) -> (usize, usize) {
    (s as usize, p as usize)
}

impl Telemetry {
    /// Sample names Spindle's own metrics use; the store refuses incoming families that would clash.
    pub fn reserved_names() -> Vec<String> {
        let mut v = Vec::new();
        for (name, ty, _) in FAMILIES {
            match ty {
                "counter" => v.extend([format!("{name}_total"), format!("{name}_created"), name.to_string()]),
                "histogram" => v.extend(
                    ["_bucket", "_count", "_sum", "_created", ""]
                        .iter()
                        .map(|s| format!("{name}{s}")),
                ),
                _ => v.push(name.to_string()),
            }
        }
        v
    }

    /// Counts one accepted request with its accepted and rejected items.
    pub fn received(&self, signal: Signal, protocol: Protocol, accepted: u64, rejected: u64) {
        let (s, p) = idx(signal, protocol);
        self.requests[s][p].fetch_add(1, Ordering::Relaxed);
        self.accepted[s][p].fetch_add(accepted, Ordering::Relaxed);
        self.rejected[s][p].fetch_add(rejected, Ordering::Relaxed);
    }

    /// Counts one request refused as a whole. `reason` should be one of [`REFUSAL_REASONS`].
    pub fn refused(&self, signal: Signal, protocol: Protocol, reason: &str) {
        let (s, p) = idx(signal, protocol);
        let r = REFUSAL_REASONS.iter().position(|x| *x == reason).unwrap_or(0);
        self.refused[s][p][r].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts expired series.
    pub fn expired(&self, n: usize) {
        self.expired_series.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records how long a scrape took to render.
    pub fn scrape_took(&self, d: Duration) {
        self.scrape.observe(d);
    }

    /// Records the duration of one trace export attempt.
    pub fn export_took(&self, d: Duration) {
        self.export.observe(d);
    }

    /// Counts spans the backend acknowledged.
    pub fn spans_forwarded(&self, n: u64) {
        self.spans_forwarded.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts spans dropped by the exporter.
    pub fn spans_dropped(&self, reason: DropReason, n: u64) {
        self.spans_dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one retried export attempt.
    pub fn export_retried(&self) {
        self.export_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the export queue's fill and bound.
    pub fn export_queue_bytes(&self, bytes: u64, capacity: u64) {
        self.export_queue_bytes.store(bytes, Ordering::Relaxed);
        self.export_queue_capacity.store(capacity, Ordering::Relaxed);
    }

    /// Counts samples and exemplars a remote-write receiver acknowledged.
    pub fn remote_write_sent(&self, samples: u64, exemplars: u64) {
        self.rw_sent_samples.fetch_add(samples, Ordering::Relaxed);
        self.rw_sent_exemplars.fetch_add(exemplars, Ordering::Relaxed);
    }

    /// Counts samples (exemplars included) the remote-write exporter dropped.
    pub fn remote_write_dropped(&self, reason: RemoteWriteDropReason, n: u64) {
        self.rw_dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one retried remote-write request.
    pub fn remote_write_retried(&self) {
        self.rw_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the remote-write queue's fill and bound.
    pub fn remote_write_queue_bytes(&self, bytes: u64, capacity: u64) {
        self.rw_queue_bytes.store(bytes, Ordering::Relaxed);
        self.rw_queue_capacity.store(capacity, Ordering::Relaxed);
    }

    /// Records the duration of one remote-write request attempt.
    pub fn remote_write_took(&self, d: Duration) {
        self.rw_request.observe(d);
    }

    /// Samples a remote-write receiver acknowledged so far (for tests and logs).
    pub fn remote_write_sent_samples(&self) -> u64 {
        self.rw_sent_samples.load(Ordering::Relaxed)
    }

    /// Samples the remote-write exporter dropped for `reason` so far (for tests and logs).
    pub fn remote_write_dropped_samples(&self, reason: RemoteWriteDropReason) -> u64 {
        self.rw_dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Remote-write retries so far (for tests and logs).
    pub fn remote_write_retries(&self) -> u64 {
        self.rw_retries.load(Ordering::Relaxed)
    }

    /// Spans forwarded so far (for tests and logs).
    pub fn forwarded_spans(&self) -> u64 {
        self.spans_forwarded.load(Ordering::Relaxed)
    }

    /// Accepted item count for a signal and protocol (for tests and logs).
    pub fn accepted_items(&self, signal: Signal, protocol: Protocol) -> u64 {
        let (s, p) = idx(signal, protocol);
        self.accepted[s][p].load(Ordering::Relaxed)
    }

    /// Appends the self metrics in `format` (without the OpenMetrics `# EOF`).
    pub fn render(&self, format: Format, active_series: usize, out: &mut String) {
        let header = |out: &mut String, i: usize| {
            let (name, ty, help) = FAMILIES[i];
            let shown = if format == Format::Text && ty == "counter" {
                format!("{name}_total")
            } else {
                name.into()
            };
            let _ = writeln!(out, "# HELP {shown} {help}\n# TYPE {shown} {ty}");
        };
        let per_sp = |out: &mut String, i: usize, v: &PerSignalProtocol| {
            header(out, i);
            for sig in SIGNALS {
                for proto in PROTOCOLS {
                    let (s, p) = idx(sig, proto);
                    let _ = writeln!(
                        out,
                        "{}_total{{signal=\"{}\",protocol=\"{}\"}} {}",
                        FAMILIES[i].0,
                        sig.as_str(),
                        proto.as_str(),
                        v[s][p].load(Ordering::Relaxed)
                    );
                }
            }
        };
        per_sp(out, 0, &self.requests);
        per_sp(out, 1, &self.accepted);
        per_sp(out, 2, &self.rejected);
        header(out, 3);
        for sig in SIGNALS {
            for proto in PROTOCOLS {
                let (s, p) = idx(sig, proto);
                for (r, reason) in REFUSAL_REASONS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "spindle_refused_requests_total{{signal=\"{}\",protocol=\"{}\",reason=\"{reason}\"}} {}",
                        sig.as_str(),
                        proto.as_str(),
                        self.refused[s][p][r].load(Ordering::Relaxed)
                    );
                }
            }
        }
        header(out, 4);
        let _ = writeln!(out, "spindle_active_series {active_series}");
        header(out, 5);
        let _ = writeln!(
            out,
            "spindle_expired_series_total {}",
            self.expired_series.load(Ordering::Relaxed)
        );
        header(out, 6);
        self.scrape.render("spindle_scrape_duration_seconds", out);
        header(out, 7);
        let _ = writeln!(
            out,
            "spindle_exporter_sent_spans_total {}",
            self.spans_forwarded.load(Ordering::Relaxed)
        );
        header(out, 8);
        for r in DropReason::ALL {
            let n = self.spans_dropped[r as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "spindle_exporter_dropped_spans_total{{reason=\"{}\"}} {n}",
                r.as_str()
            );
        }
        header(out, 9);
        let _ = writeln!(
            out,
            "spindle_exporter_retries_total {}",
            self.export_retries.load(Ordering::Relaxed)
        );
        header(out, 10);
        let _ = writeln!(
            out,
            "spindle_exporter_queue_bytes {}",
            self.export_queue_bytes.load(Ordering::Relaxed)
        );
        header(out, 11);
        let _ = writeln!(
            out,
            "spindle_exporter_queue_capacity_bytes {}",
            self.export_queue_capacity.load(Ordering::Relaxed)
        );
        header(out, 12);
        self.export.render("spindle_exporter_export_duration_seconds", out);
        let counter = |out: &mut String, i: usize, v: &AtomicU64| {
            header(out, i);
            let _ = writeln!(out, "{}_total {}", FAMILIES[i].0, v.load(Ordering::Relaxed));
        };
        counter(out, 13, &self.rw_sent_samples);
        counter(out, 14, &self.rw_sent_exemplars);
        header(out, 15);
        for r in RemoteWriteDropReason::ALL {
            let n = self.rw_dropped[r as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "spindle_remote_write_dropped_samples_total{{reason=\"{}\"}} {n}",
                r.as_str()
            );
        }
        counter(out, 16, &self.rw_retries);
        header(out, 17);
        let _ = writeln!(
            out,
            "spindle_remote_write_queue_bytes {}",
            self.rw_queue_bytes.load(Ordering::Relaxed)
        );
        header(out, 18);
        let _ = writeln!(
            out,
            "spindle_remote_write_queue_capacity_bytes {}",
            self.rw_queue_capacity.load(Ordering::Relaxed)
        );
        header(out, 19);
        self.rw_request
            .render("spindle_remote_write_request_duration_seconds", out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_both_formats() {
        let t = Telemetry::default();
        t.received(Signal::Metrics, Protocol::Http, 7, 2);
        t.refused(Signal::Traces, Protocol::Grpc, "malformed");
        t.scrape_took(Duration::from_millis(3));
        let mut om = String::new();
        t.render(Format::OpenMetrics, 42, &mut om);
        assert!(om.contains("# TYPE spindle_received_items counter"), "{om}");
        assert!(om.contains("spindle_received_items_total{signal=\"metrics\",protocol=\"http\"} 7"));
        assert!(om.contains("spindle_rejected_items_total{signal=\"metrics\",protocol=\"http\"} 2"));
        assert!(
            om.contains("spindle_refused_requests_total{signal=\"traces\",protocol=\"grpc\",reason=\"malformed\"} 1")
        );
        assert!(om.contains("spindle_active_series 42"));
        assert!(om.contains("spindle_scrape_duration_seconds_bucket{le=\"0.005\"} 1"));
        t.remote_write_sent(10, 2);
        t.remote_write_dropped(RemoteWriteDropReason::QueueFull, 3);
        let mut om = String::new();
        t.render(Format::OpenMetrics, 42, &mut om);
        assert!(om.contains("spindle_remote_write_sent_samples_total 10"), "{om}");
        assert!(om.contains("spindle_remote_write_sent_exemplars_total 2"), "{om}");
        assert!(om.contains("spindle_remote_write_dropped_samples_total{reason=\"queue_full\"} 3"));
        assert!(om.contains("spindle_remote_write_request_duration_seconds_count 0"));
        let mut text = String::new();
        t.render(Format::Text, 42, &mut text);
        assert!(text.contains("# TYPE spindle_received_items_total counter"), "{text}");
    }
}
