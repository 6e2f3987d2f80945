//! Spindle's own metrics (`spindle_*`), registered once and updated per batch, never per item.
//!
//! Labels come from closed sets only: `signal` (`metrics`, `traces`), `protocol` (`grpc`,
//! `http`), `reason` (the refusal classes of `receive::status`). Rendered after the stored
//! families on the same `/metrics` endpoint, in either exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::model::{Format, Protocol, Signal};
use crate::process::cardinality::RejectReason;
use crate::process::translate::{LimitCounts, LimitReason};

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

impl Reason for DropReason {
    const ALL: &'static [Self] = &[
        DropReason::Permanent,
        DropReason::RejectedByBackend,
        DropReason::Shutdown,
    ];

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

    fn as_str(self) -> &'static str {
        match self {
            RemoteWriteDropReason::QueueFull => "queue_full",
            RemoteWriteDropReason::Permanent => "permanent_error",
            RemoteWriteDropReason::Shutdown => "shutdown",
        }
    }
}

/// A closed set of `reason` label values for an exporter's drops.
pub trait Reason: Copy + Into<usize> + 'static {
    /// Every value, in label order.
    const ALL: &'static [Self];
    /// The `reason` label value.
    fn as_str(self) -> &'static str;
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

/// Most drop reasons any exporter has.
const MAX_REASONS: usize = 3;

/// What every exporter reports: items sent, items dropped by reason, retried attempts, queue fill
/// and bound, and attempt durations.
#[derive(Debug)]
pub struct ExporterStats<R> {
    sent: AtomicU64,
    dropped: [AtomicU64; MAX_REASONS],
    retries: AtomicU64,
    queue_bytes: AtomicU64,
    queue_capacity: AtomicU64,
    attempts: DurationHistogram,
    reason: std::marker::PhantomData<R>,
}

impl<R> Default for ExporterStats<R> {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            dropped: Default::default(),
            retries: AtomicU64::new(0),
            queue_bytes: AtomicU64::new(0),
            queue_capacity: AtomicU64::new(0),
            attempts: DurationHistogram::default(),
            reason: std::marker::PhantomData,
        }
    }
}

impl<R: Reason> ExporterStats<R> {
    /// Counts items the receiving end acknowledged.
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts dropped items.
    pub fn dropped(&self, reason: R, n: u64) {
        self.dropped[reason.into()].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one failed attempt that will be retried.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the queue's fill and bound, in bytes.
    pub fn queue(&self, bytes: u64, capacity: u64) {
        self.queue_bytes.store(bytes, Ordering::Relaxed);
        self.queue_capacity.store(capacity, Ordering::Relaxed);
    }

    /// Records the duration of one attempt.
    pub fn took(&self, d: Duration) {
        self.attempts.observe(d);
    }

    /// Items sent so far (for tests and logs).
    pub fn sent_total(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Items dropped for `reason` so far (for tests and logs).
    pub fn dropped_total(&self, reason: R) -> u64 {
        self.dropped[reason.into()].load(Ordering::Relaxed)
    }

    /// Retried attempts so far (for tests and logs).
    pub fn retries_total(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Renders the six families whose [`FAMILIES`] indexes are `f` (sent, dropped, retries, queue
    /// bytes, queue capacity, attempt duration).
    fn render(&self, f: [usize; 6], header: &dyn Fn(&mut String, usize), out: &mut String) {
        let name = |i: usize| FAMILIES[f[i]].0;
        header(out, f[0]);
        let _ = writeln!(out, "{}_total {}", name(0), self.sent.load(Ordering::Relaxed));
        header(out, f[1]);
        for r in R::ALL {
            let n = self.dropped[(*r).into()].load(Ordering::Relaxed);
            let _ = writeln!(out, "{}_total{{reason=\"{}\"}} {n}", name(1), r.as_str());
        }
        header(out, f[2]);
        let _ = writeln!(out, "{}_total {}", name(2), self.retries.load(Ordering::Relaxed));
        header(out, f[3]);
        let _ = writeln!(out, "{} {}", name(3), self.queue_bytes.load(Ordering::Relaxed));
        header(out, f[4]);
        let _ = writeln!(out, "{} {}", name(4), self.queue_capacity.load(Ordering::Relaxed));
        header(out, f[5]);
        self.attempts.render(name(5), out);
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
    /// The trace exporter's stats.
    pub traces: ExporterStats<DropReason>,
    /// The remote-write exporter's stats (samples).
    pub remote_write: ExporterStats<RemoteWriteDropReason>,
    rw_sent_exemplars: AtomicU64,
    /// Catalog reloads: `[ok, error]`.
    catalog_reloads: [AtomicU64; 2],
    cardinality: CardinalityStats,
    /// `receivers.otlp.limits`: items refused or truncated, by signal and [`LimitReason`].
    limited: [[AtomicU64; LimitReason::ALL.len()]; 2],
    /// Connections per listener: open, and closed by the server by [`CloseReason`].
    pub connections: ConnectionStats,
}

/// Most series `spindle_cardinality_folded_points_total` has (one per metric and reason); folds of
/// further metrics are counted under `metric="_other"`.
pub const MAX_FOLDED_SERIES: usize = 1000;

/// What the cardinality limiter did.
#[derive(Debug, Default)]
struct CardinalityStats {
    /// `(metric, reason)` → folded points.
    folded: Mutex<BTreeMap<(Box<str>, &'static str), u64>>,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    /// `(label, normalizer kind)` → values rewritten; labels come from the configuration.
    normalized: Mutex<BTreeMap<(Box<str>, &'static str), u64>>,
    streams: AtomicU64,
}

/// Families Spindle exposes about itself: `(name, type, help)`; counters without `_total`.
const FAMILIES: [(&str, &str, &str); 28] = [
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
        "Bytes of memory held by spans queued for the trace backend (decoded requests and their exemplars) or in flight (encoded).",
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
    (
        "spindle_remote_write_sent_exemplars",
        "counter",
        "Exemplars the remote-write receiver acknowledged.",
    ),
    (
        "spindle_enrich_catalog_reloads",
        "counter",
        "Service-catalog reloads after the file changed, by result (ok, or error: the old catalog stays).",
    ),
    (
        "spindle_cardinality_folded_points",
        "counter",
        "Data points folded into their metric's overflow series, by metric and reason.",
    ),
    (
        "spindle_cardinality_rejected_points",
        "counter",
        "Data points the cardinality limiter rejected (reported in partial_success), by reason.",
    ),
    (
        "spindle_cardinality_normalized_values",
        "counter",
        "Label values rewritten by processors.cardinality.normalize, by label and kind.",
    ),
    (
        "spindle_cardinality_stream_states",
        "gauge",
        "Cumulative streams whose last report is kept to fold or merge them exactly.",
    ),
    (
        "spindle_limited_items",
        "counter",
        "Data points or spans rejected, or label values truncated, by receivers.otlp.limits, by signal and reason.",
    ),
    (
        "spindle_connections_closed",
        "counter",
        "Connections the server closed or refused, by listener and reason (max_connections, idle_timeout, header_read_timeout, body_read_timeout).",
    ),
    (
        "spindle_open_connections",
        "gauge",
        "Connections currently open, by listener.",
    ),
];

/// The index of family `name` in [`FAMILIES`] (a compile error when it is missing).
const fn family(name: &str) -> usize {
    let mut i = 0;
    while i < FAMILIES.len() {
        let f = FAMILIES[i].0.as_bytes();
        let n = name.as_bytes();
        if f.len() == n.len() {
            let mut j = 0;
            while j < n.len() && f[j] == n[j] {
                j += 1;
            }
            if j == n.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("unknown self-metric family")
}

const LIMITED: usize = family("spindle_limited_items");

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

    /// Counts samples and exemplars a remote-write receiver acknowledged.
    pub fn remote_write_sent(&self, samples: u64, exemplars: u64) {
        self.remote_write.sent(samples);
        self.rw_sent_exemplars.fetch_add(exemplars, Ordering::Relaxed);
    }

    /// Counts one catalog reload: `ok` when the new catalog is live, else the old one stayed.
    pub fn catalog_reload(&self, ok: bool) {
        self.catalog_reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Catalog reloads so far: `(ok, error)`.
    pub fn catalog_reloads(&self) -> (u64, u64) {
        (
            self.catalog_reloads[0].load(Ordering::Relaxed),
            self.catalog_reloads[1].load(Ordering::Relaxed),
        )
    }

    /// Counts points folded into `metric`'s overflow series for `reason`.
    pub fn cardinality_folded(&self, metric: &str, reason: &'static str, n: u64) {
        let mut m = self.cardinality.folded.lock();
        let known = m.contains_key(&(Box::from(metric), reason));
        let metric = if known || m.len() < MAX_FOLDED_SERIES {
            metric
        } else {
            "_other"
        };
        *m.entry((metric.into(), reason)).or_default() += n;
    }

    /// Counts points the cardinality limiter rejected.
    pub fn cardinality_rejected(&self, reason: RejectReason, n: u64) {
        self.cardinality.rejected[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts label values a normalizer rewrote.
    pub fn cardinality_normalized(&self, label: &str, kind: &'static str, n: u64) {
        *self
            .cardinality
            .normalized
            .lock()
            .entry((label.into(), kind))
            .or_default() += n;
    }

    /// Sets the number of kept stream states.
    pub fn cardinality_streams(&self, n: usize) {
        self.cardinality.streams.store(n as u64, Ordering::Relaxed);
    }

    /// Counts one batch's items refused or truncated by `receivers.otlp.limits`.
    pub fn limited(&self, signal: Signal, counts: &LimitCounts) {
        for r in LimitReason::ALL {
            let n = counts.get(r);
            if n > 0 {
                self.limited[signal as usize][r as usize].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Items refused or truncated for `signal` and `reason` so far (for tests).
    pub fn limited_items(&self, signal: Signal, reason: LimitReason) -> u64 {
        self.limited[signal as usize][reason as usize].load(Ordering::Relaxed)
    }

    /// Points folded so far for `metric` and `reason` (for tests).
    pub fn folded_points(&self, metric: &str, reason: &str) -> u64 {
        let m = self.cardinality.folded.lock();
        m.iter()
            .filter(|((name, r), _)| &**name == metric && *r == reason)
            .map(|(_, v)| *v)
            .sum()
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
        self.traces.render([7, 8, 9, 10, 11, 12], &header, out);
        self.remote_write.render([13, 14, 15, 16, 17, 18], &header, out);
        header(out, 19);
        let _ = writeln!(
            out,
            "{}_total {}",
            FAMILIES[19].0,
            self.rw_sent_exemplars.load(Ordering::Relaxed)
        );
        header(out, 20);
        for (i, result) in ["ok", "error"].iter().enumerate() {
            let _ = writeln!(
                out,
                "{}_total{{result=\"{result}\"}} {}",
                FAMILIES[20].0,
                self.catalog_reloads[i].load(Ordering::Relaxed)
            );
        }
        let mut escaped = Vec::new();
        header(out, 21);
        for ((metric, reason), n) in self.cardinality.folded.lock().iter() {
            escaped.clear();
            crate::store::escape_label_value(metric, &mut escaped);
            let _ = writeln!(
                out,
                "{}_total{{metric=\"{}\",reason=\"{reason}\"}} {n}",
                FAMILIES[21].0,
                String::from_utf8_lossy(&escaped)
            );
        }
        header(out, 22);
        for r in RejectReason::ALL {
            let _ = writeln!(
                out,
                "{}_total{{reason=\"{}\"}} {}",
                FAMILIES[22].0,
                r.as_str(),
                self.cardinality.rejected[r as usize].load(Ordering::Relaxed)
            );
        }
        header(out, 23);
        for ((label, kind), n) in self.cardinality.normalized.lock().iter() {
            let _ = writeln!(out, "{}_total{{label=\"{label}\",kind=\"{kind}\"}} {n}", FAMILIES[23].0);
        }
        header(out, 24);
        let _ = writeln!(
            out,
            "{} {}",
            FAMILIES[24].0,
            self.cardinality.streams.load(Ordering::Relaxed)
        );
        header(out, LIMITED);
        for sig in SIGNALS {
            for r in LimitReason::ALL {
                let _ = writeln!(
                    out,
                    "{}_total{{signal=\"{}\",reason=\"{}\"}} {}",
                    FAMILIES[LIMITED].0,
                    sig.as_str(),
                    r.as_str(),
                    self.limited[sig as usize][r as usize].load(Ordering::Relaxed)
                );
            }
        }
        self.connections.render(&header, out);
    }
}

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
    /// Every listener, in label order.
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
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 4] = [
        Self::MaxConnections,
        Self::IdleTimeout,
        Self::HeaderReadTimeout,
        Self::BodyReadTimeout,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::IdleTimeout => "idle_timeout",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::BodyReadTimeout => "body_read_timeout",
        }
    }

    /// Whether the reason can happen on `listener` (gRPC has no header or body timeout).
    fn applies_to(self, listener: ListenerKind) -> bool {
        listener != ListenerKind::OtlpGrpc || matches!(self, Self::MaxConnections | Self::IdleTimeout)
    }
}

/// Connection counts per listener, updated once per connection (never per request or byte).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: [AtomicU64; 3],
    closed: [[AtomicU64; 4]; 3],
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

    /// Connections open now on `listener` (for tests).
    pub fn open_now(&self, listener: ListenerKind) -> u64 {
        self.open[listener as usize].load(Ordering::Relaxed)
    }

    /// Connections closed so far on `listener` for `reason` (for tests).
    pub fn closed_total(&self, listener: ListenerKind, reason: CloseReason) -> u64 {
        self.closed[listener as usize][reason as usize].load(Ordering::Relaxed)
    }

    fn render(&self, header: &dyn Fn(&mut String, usize), out: &mut String) {
        const CLOSED: usize = family("spindle_connections_closed");
        const OPEN: usize = family("spindle_open_connections");
        header(out, CLOSED);
        for l in ListenerKind::ALL {
            for r in CloseReason::ALL.into_iter().filter(|r| r.applies_to(l)) {
                let _ = writeln!(
                    out,
                    "{}_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    FAMILIES[CLOSED].0,
                    l.as_str(),
                    r.as_str(),
                    self.closed_total(l, r)
                );
            }
        }
        header(out, OPEN);
        for l in ListenerKind::ALL {
            let _ = writeln!(
                out,
                "{}{{listener=\"{}\"}} {}",
                FAMILIES[OPEN].0,
                l.as_str(),
                self.open_now(l)
            );
        }
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
        t.remote_write.dropped(RemoteWriteDropReason::QueueFull, 3);
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
