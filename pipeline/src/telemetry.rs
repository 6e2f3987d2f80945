//! Spindle's own metrics (`spindle_*`), rendered after the stored families on the same `/metrics`
//! endpoint, in either exposition format.
//!
//! Each component owns its self-metric handles and the closed sets of its label values
//! (`receive::stats`, `server::stats`, `process::translate::stats`, `process::cardinality::stats`,
//! `export::stats`) and counts once per batch or connection, never per item. [`Telemetry`] only
//! composes them: it holds one of each, hands them to the components when the process is wired
//! (`app.rs`), and walks every family, by its named descriptor ([`Family`]), through the same
//! sample walk and encoders as the stored families ([`crate::expose::walk`], via
//! [`SelfMetrics`]). Imports point one way: this module imports the components' stats and the
//! walk; no component imports it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::export::stats::{DURATION_BUCKETS, DurationHistogram};
pub use crate::export::stats::{DropReason, ExporterStats, Reason, RemoteWriteDropReason};
pub use crate::expose::walk::Family;
use crate::expose::walk::{Own, Sink};
use crate::expose::{SelfMetrics, render_own};
use crate::model::batch::LimitReason;
use crate::model::{Format, MetricKind};
use crate::process::cardinality::LimiterStats;
use crate::process::cardinality::RejectReason;
use crate::process::cardinality::stats::MAX_FOLDED_SERIES as FOLDED_SERIES;
use crate::process::translate::LimitStats;
use crate::receive::stats::{PROTOCOLS, ReceiverStats, RefusalReason, SIGNALS};
pub use crate::server::stats::{CloseReason, ConnectionStats, ListenerKind};

/// Most series `spindle_cardinality_folded_points_total` has (see
/// [`process::cardinality::stats`](crate::process::cardinality::stats)).
pub const MAX_FOLDED_SERIES: usize = FOLDED_SERIES;

/// One family Spindle exposes about itself: name (a counter's without `_total`), type and help.
const fn family(name: &'static str, kind: MetricKind, help: &'static str) -> Family<'static> {
    Family::own(name, kind, help)
}

const RECEIVED_REQUESTS: Family<'static> = family(
    "spindle_received_requests",
    MetricKind::Counter,
    "OTLP export requests accepted, by signal and protocol.",
);
const RECEIVED_ITEMS: Family<'static> = family(
    "spindle_received_items",
    MetricKind::Counter,
    "Data points or spans accepted, by signal and protocol.",
);
const REJECTED_ITEMS: Family<'static> = family(
    "spindle_rejected_items",
    MetricKind::Counter,
    "Data points or spans rejected as invalid or conflicting (reported in partial_success).",
);
const REFUSED_REQUESTS: Family<'static> = family(
    "spindle_refused_requests",
    MetricKind::Counter,
    "Requests refused as a whole, by signal, protocol and reason.",
);
const ACTIVE_SERIES: Family<'static> = family(
    "spindle_active_series",
    MetricKind::Gauge,
    "Series currently held for the Prometheus endpoint.",
);
const EXPIRED_SERIES: Family<'static> = family(
    "spindle_expired_series",
    MetricKind::Counter,
    "Series removed after prometheus.series_ttl without updates.",
);
const SCRAPE_DURATION: Family<'static> = family(
    "spindle_scrape_duration_seconds",
    MetricKind::Histogram,
    "Time to render /metrics.",
);

/// The `kind` label values of the disk queues' error counters.
const DISK_ERROR_KINDS: [&str; 2] = ["corrupt", "io"];

/// The families of one exporter, in render order.
struct ExporterFamilies {
    sent: Family<'static>,
    resent: Family<'static>,
    disk_errors: Family<'static>,
    dropped: Family<'static>,
    retries: Family<'static>,
    tls_failures: Family<'static>,
    queue_bytes: Family<'static>,
    queue_capacity: Family<'static>,
    duration: Family<'static>,
}

const TRACE_EXPORTER: ExporterFamilies = ExporterFamilies {
    sent: family(
        "spindle_exporter_sent_spans",
        MetricKind::Counter,
        "Spans the trace backend acknowledged.",
    ),
    resent: family(
        "spindle_exporter_resent_spans",
        MetricKind::Counter,
        "Spans delivered again after a restart: the disk queue (storage.path) delivers at least once, and these had been handed to the backend before.",
    ),
    disk_errors: family(
        "spindle_exporter_queue_disk_errors",
        MetricKind::Counter,
        "Trouble in the trace exporter's disk queue, by kind: corrupt (records that failed their checksum, or torn tails cut at start) and io (failed writes and flushes; the requests were refused as overloaded).",
    ),
    dropped: family(
        "spindle_exporter_dropped_spans",
        MetricKind::Counter,
        "Spans the trace exporter dropped, by reason.",
    ),
    retries: family(
        "spindle_exporter_retries",
        MetricKind::Counter,
        "Trace export attempts that failed and were retried.",
    ),
    tls_failures: family(
        "spindle_exporter_tls_failures",
        MetricKind::Counter,
        "Trace export attempts that failed in the TLS handshake: the backend refused Spindle's client certificate, or Spindle did not trust the backend's (retried, logged once).",
    ),
    queue_bytes: family(
        "spindle_exporter_queue_bytes",
        MetricKind::Gauge,
        "Bytes held by spans queued for the trace backend or in flight: encoded requests and their exemplars in memory, or with storage.path the records on disk not yet delivered.",
    ),
    queue_capacity: family(
        "spindle_exporter_queue_capacity_bytes",
        MetricKind::Gauge,
        "Bound of the trace export queue (exporters.traces.otlp.queue_max_bytes, or storage.queue_max_bytes with storage.path).",
    ),
    duration: family(
        "spindle_exporter_export_duration_seconds",
        MetricKind::Histogram,
        "Duration of trace export attempts.",
    ),
};

const REMOTE_WRITE: ExporterFamilies = ExporterFamilies {
    sent: family(
        "spindle_remote_write_sent_samples",
        MetricKind::Counter,
        "Samples the remote-write receiver acknowledged.",
    ),
    resent: family(
        "spindle_remote_write_resent_samples",
        MetricKind::Counter,
        "Samples delivered again after a restart: the disk queue (storage.path) delivers at least once, and these had been handed to the receiver before.",
    ),
    disk_errors: family(
        "spindle_remote_write_queue_disk_errors",
        MetricKind::Counter,
        "Trouble in the remote-write disk queue, by kind: corrupt (records that failed their checksum, or torn tails cut at start) and io (failed writes and flushes).",
    ),
    dropped: family(
        "spindle_remote_write_dropped_samples",
        MetricKind::Counter,
        "Samples (and exemplars) the remote-write exporter dropped, by reason.",
    ),
    retries: family(
        "spindle_remote_write_retries",
        MetricKind::Counter,
        "Remote-write requests that failed and were retried.",
    ),
    tls_failures: family(
        "spindle_remote_write_tls_failures",
        MetricKind::Counter,
        "Remote-write attempts that failed in the TLS handshake: the receiver refused Spindle's client certificate, or Spindle did not trust the receiver's (retried, logged once).",
    ),
    queue_bytes: family(
        "spindle_remote_write_queue_bytes",
        MetricKind::Gauge,
        "Compressed bytes of remote-write requests waiting to be sent.",
    ),
    queue_capacity: family(
        "spindle_remote_write_queue_capacity_bytes",
        MetricKind::Gauge,
        "Bound of the remote-write queue (exporters.remote_write.queue_max_bytes, or storage.queue_max_bytes with storage.path).",
    ),
    duration: family(
        "spindle_remote_write_request_duration_seconds",
        MetricKind::Histogram,
        "Duration of remote-write request attempts.",
    ),
};

const REMOTE_WRITE_SENT_EXEMPLARS: Family<'static> = family(
    "spindle_remote_write_sent_exemplars",
    MetricKind::Counter,
    "Exemplars the remote-write receiver acknowledged.",
);
const CATALOG_RELOADS: Family<'static> = family(
    "spindle_enrich_catalog_reloads",
    MetricKind::Counter,
    "Service-catalog reloads after the file changed, by result (ok, or error: the old catalog stays).",
);
const CARDINALITY_FOLDED: Family<'static> = family(
    "spindle_cardinality_folded_points",
    MetricKind::Counter,
    "Data points folded into their metric's overflow series, by metric and reason.",
);
const CARDINALITY_REJECTED: Family<'static> = family(
    "spindle_cardinality_rejected_points",
    MetricKind::Counter,
    "Data points the cardinality limiter rejected (reported in partial_success), by reason.",
);
const CARDINALITY_NORMALIZED: Family<'static> = family(
    "spindle_cardinality_normalized_values",
    MetricKind::Counter,
    "Label values rewritten by processors.cardinality.normalize, by label and kind.",
);
const CARDINALITY_STREAMS: Family<'static> = family(
    "spindle_cardinality_stream_states",
    MetricKind::Gauge,
    "Cumulative streams whose last report is kept to fold or merge them exactly.",
);
const LIMITED_ITEMS: Family<'static> = family(
    "spindle_limited_items",
    MetricKind::Counter,
    "Data points or spans rejected, or label values truncated, by receivers.otlp.limits, by signal and reason.",
);
const CONNECTIONS_CLOSED: Family<'static> = family(
    "spindle_connections_closed",
    MetricKind::Counter,
    "Connections the server closed or refused, by listener and reason (max_connections, idle_timeout, header_read_timeout, body_read_timeout, tls_handshake).",
);
const OPEN_CONNECTIONS: Family<'static> = family(
    "spindle_open_connections",
    MetricKind::Gauge,
    "Connections currently open, by listener.",
);

/// Every family, for [`Telemetry::reserved_names`] (order does not matter; a test checks it equals
/// what [`Telemetry::walk`](SelfMetrics::walk) walks).
const FAMILIES: &[Family<'static>] = &[
    RECEIVED_REQUESTS,
    RECEIVED_ITEMS,
    REJECTED_ITEMS,
    REFUSED_REQUESTS,
    ACTIVE_SERIES,
    EXPIRED_SERIES,
    SCRAPE_DURATION,
    TRACE_EXPORTER.sent,
    TRACE_EXPORTER.resent,
    TRACE_EXPORTER.disk_errors,
    TRACE_EXPORTER.dropped,
    TRACE_EXPORTER.retries,
    TRACE_EXPORTER.tls_failures,
    TRACE_EXPORTER.queue_bytes,
    TRACE_EXPORTER.queue_capacity,
    TRACE_EXPORTER.duration,
    REMOTE_WRITE.sent,
    REMOTE_WRITE.resent,
    REMOTE_WRITE.disk_errors,
    REMOTE_WRITE.dropped,
    REMOTE_WRITE.retries,
    REMOTE_WRITE.tls_failures,
    REMOTE_WRITE.queue_bytes,
    REMOTE_WRITE.queue_capacity,
    REMOTE_WRITE.duration,
    REMOTE_WRITE_SENT_EXEMPLARS,
    CATALOG_RELOADS,
    CARDINALITY_FOLDED,
    CARDINALITY_REJECTED,
    CARDINALITY_NORMALIZED,
    CARDINALITY_STREAMS,
    LIMITED_ITEMS,
    CONNECTIONS_CLOSED,
    OPEN_CONNECTIONS,
];

/// The `result` label values of `spindle_enrich_catalog_reloads_total`, indexed by `!ok`.
const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// Spindle's self metrics: each component's stats, and the few counters of the wiring itself
/// (expired series, scrape duration, catalog reloads).
#[derive(Debug, Default)]
pub struct Telemetry {
    /// The OTLP receivers' request and item counts.
    pub receiver: Arc<ReceiverStats>,
    /// `receivers.otlp.limits`: items refused or truncated, by signal and [`LimitReason`].
    pub limited: Arc<LimitStats>,
    /// The cardinality limiter's stats.
    pub cardinality: LimiterStats,
    /// The trace exporter's stats.
    pub traces: ExporterStats<DropReason>,
    /// The remote-write exporter's stats (samples, and exemplars apart).
    pub remote_write: ExporterStats<RemoteWriteDropReason>,
    /// Connections per listener: open, and closed by the server by [`CloseReason`].
    pub connections: Arc<ConnectionStats>,
    expired_series: AtomicU64,
    scrape: DurationHistogram,
    /// Catalog reloads: `[ok, error]`.
    catalog_reloads: [AtomicU64; 2],
}

/// The process's telemetry stands for the limiter stats it holds (`Limiter::new`).
impl From<Arc<Telemetry>> for LimiterStats {
    fn from(t: Arc<Telemetry>) -> Self {
        t.cardinality.clone()
    }
}

/// The process's telemetry stands for the trace exporter stats it holds (`traces::spawn`).
impl From<Arc<Telemetry>> for ExporterStats<DropReason> {
    fn from(t: Arc<Telemetry>) -> Self {
        t.traces.clone()
    }
}

/// The process's telemetry stands for the remote-write stats it holds (`remote_write::spawn`).
impl From<Arc<Telemetry>> for ExporterStats<RemoteWriteDropReason> {
    fn from(t: Arc<Telemetry>) -> Self {
        t.remote_write.clone()
    }
}

impl Telemetry {
    /// Sample names Spindle's own metrics use; the store refuses incoming families that would clash.
    pub fn reserved_names() -> Vec<String> {
        let mut v = Vec::new();
        for f in FAMILIES {
            let name = f.name;
            v.extend(f.kind.suffixes().iter().map(|s| format!("{name}{s}")));
            // The family name itself: a gauge's sample, and what a text-format scraper may read
            // as a counter's or histogram's family.
            v.push(name.to_string());
        }
        v
    }

    /// Counts expired series.
    pub fn expired(&self, n: usize) {
        self.expired_series.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records how long a scrape took to render.
    pub fn scrape_took(&self, d: Duration) {
        self.scrape.observe(d);
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

    /// Appends the self metrics in `format` (without the OpenMetrics `# EOF`), as a scrape
    /// renders them after the stored families; `active_series` is the store's series count.
    pub fn render(&self, format: Format, active_series: usize, out: &mut String) {
        let mut bytes = Vec::new();
        render_own(self, format, active_series, &mut bytes);
        out.push_str(&String::from_utf8_lossy(&bytes));
    }

    fn walk_receiver<S: Sink + ?Sized>(&self, w: &mut Own<'_, S>) {
        let r = &*self.receiver;
        for (f, get) in [
            (
                &RECEIVED_REQUESTS,
                ReceiverStats::requests_total as fn(&ReceiverStats, _, _) -> u64,
            ),
            (&RECEIVED_ITEMS, ReceiverStats::accepted_items),
            (&REJECTED_ITEMS, ReceiverStats::rejected_items),
        ] {
            w.family(f);
            for sig in SIGNALS {
                for proto in PROTOCOLS {
                    w.number(
                        &[("signal", sig.as_str()), ("protocol", proto.as_str())],
                        get(r, sig, proto),
                    );
                }
            }
        }
        w.family(&REFUSED_REQUESTS);
        for sig in SIGNALS {
            for proto in PROTOCOLS {
                for reason in RefusalReason::ALL {
                    w.number(
                        &[
                            ("signal", sig.as_str()),
                            ("protocol", proto.as_str()),
                            ("reason", reason.as_str()),
                        ],
                        r.refused_total(sig, proto, reason),
                    );
                }
            }
        }
    }

    fn walk_cardinality<S: Sink + ?Sized>(&self, w: &mut Own<'_, S>) {
        let c = &self.cardinality;
        w.family(&CARDINALITY_FOLDED);
        c.each_folded(|metric, reason, n| w.number(&[("metric", metric), ("reason", reason)], n));
        w.family(&CARDINALITY_REJECTED);
        for r in RejectReason::ALL {
            w.number(&[("reason", r.as_str())], c.rejected_points(r));
        }
        w.family(&CARDINALITY_NORMALIZED);
        c.each_normalized(|label, kind, n| w.number(&[("label", label), ("kind", kind)], n));
        w.family(&CARDINALITY_STREAMS);
        w.number(&[], c.stream_states());
    }

    fn walk_limited<S: Sink + ?Sized>(&self, w: &mut Own<'_, S>) {
        w.family(&LIMITED_ITEMS);
        for sig in SIGNALS {
            for r in LimitReason::ALL {
                w.number(
                    &[("signal", sig.as_str()), ("reason", r.as_str())],
                    self.limited.limited_items(sig, r),
                );
            }
        }
    }

    fn walk_connections<S: Sink + ?Sized>(&self, w: &mut Own<'_, S>) {
        let c = &*self.connections;
        w.family(&CONNECTIONS_CLOSED);
        for l in ListenerKind::ALL {
            for r in CloseReason::ALL.into_iter().filter(|r| r.applies_to(l)) {
                w.number(
                    &[("listener", l.as_str()), ("reason", r.as_str())],
                    c.closed_total(l, r),
                );
            }
        }
        w.family(&OPEN_CONNECTIONS);
        for l in ListenerKind::ALL {
            w.number(&[("listener", l.as_str())], c.open_now(l));
        }
    }
}

/// Spindle's own families, walked after the stored ones on every scrape.
impl SelfMetrics for Telemetry {
    fn walk(&self, active_series: usize, sink: &mut dyn Sink) {
        let w = &mut Own::new(sink);
        self.walk_receiver(w);
        w.family(&ACTIVE_SERIES);
        w.number(&[], active_series as u64);
        w.family(&EXPIRED_SERIES);
        w.number(&[], self.expired_series.load(Ordering::Relaxed));
        w.family(&SCRAPE_DURATION);
        duration(w, &self.scrape);
        exporter(w, &TRACE_EXPORTER, &self.traces);
        exporter(w, &REMOTE_WRITE, &self.remote_write);
        w.family(&REMOTE_WRITE_SENT_EXEMPLARS);
        w.number(&[], self.remote_write.sent_exemplars_total());
        w.family(&CATALOG_RELOADS);
        for (i, result) in RELOAD_RESULTS.iter().enumerate() {
            w.number(&[("result", result)], self.catalog_reloads[i].load(Ordering::Relaxed));
        }
        self.walk_cardinality(w);
        self.walk_limited(w);
        self.walk_connections(w);
    }

    fn scrape_took(&self, took: Duration) {
        Telemetry::scrape_took(self, took);
    }
}

/// A duration histogram's one series.
fn duration<S: Sink + ?Sized>(w: &mut Own<'_, S>, h: &DurationHistogram) {
    w.histogram(&[], &DURATION_BUCKETS, &h.cumulative(), h.sum_seconds());
}

/// The families of one exporter.
fn exporter<S: Sink + ?Sized, R: Reason>(w: &mut Own<'_, S>, f: &ExporterFamilies, s: &ExporterStats<R>) {
    w.family(&f.sent);
    w.number(&[], s.sent_total());
    w.family(&f.resent);
    w.number(&[], s.resent_total());
    w.family(&f.disk_errors);
    let disk = s.disk();
    let [corrupt, io] = DISK_ERROR_KINDS;
    w.number(&[("kind", corrupt)], disk.corrupt.load(Ordering::Relaxed));
    w.number(&[("kind", io)], disk.io_errors.load(Ordering::Relaxed));
    w.family(&f.dropped);
    for r in R::ALL {
        w.number(&[("reason", r.as_str())], s.dropped_total(*r));
    }
    w.family(&f.retries);
    w.number(&[], s.retries_total());
    w.family(&f.tls_failures);
    w.number(&[], s.tls_failures_total());
    w.family(&f.queue_bytes);
    w.number(&[], s.queue_bytes());
    w.family(&f.queue_capacity);
    w.number(&[], s.queue_capacity());
    w.family(&f.duration);
    duration(w, s.attempts());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::NormalizeKind;
    use crate::model::batch::LimitCounts;
    use crate::model::{Protocol, Signal};

    fn rendered(t: &Telemetry, format: Format) -> String {
        let mut s = String::new();
        t.render(format, 42, &mut s);
        s
    }

    /// Every counter of every component set to a distinct value.
    fn populated() -> Telemetry {
        let t = Telemetry::default();
        t.receiver.received(Signal::Metrics, Protocol::Http, 7, 2);
        t.receiver.received(Signal::Traces, Protocol::Grpc, 5, 1);
        t.receiver
            .refused(Signal::Traces, Protocol::Grpc, RefusalReason::Malformed);
        t.receiver
            .refused(Signal::Metrics, Protocol::Http, RefusalReason::Overloaded);
        t.receiver
            .refused(Signal::Metrics, Protocol::Grpc, RefusalReason::TooLarge);
        t.receiver
            .refused(Signal::Metrics, Protocol::Grpc, RefusalReason::UnsupportedMediaType);
        t.expired(4);
        t.scrape_took(Duration::from_millis(3));
        t.traces.sent(11);
        t.traces.dropped(DropReason::Shutdown, 2);
        t.traces.dropped(DropReason::RejectedByBackend, 3);
        t.traces.retried();
        t.traces
            .tls_failure_counter()
            .fetch_add(4, std::sync::atomic::Ordering::Relaxed);
        t.traces.queue(100, 1000);
        t.traces.took(Duration::from_millis(30));
        t.remote_write.sent(10);
        t.remote_write.sent_exemplars(2);
        t.remote_write.dropped(RemoteWriteDropReason::QueueFull, 3);
        t.remote_write.dropped(RemoteWriteDropReason::Permanent, 1);
        t.remote_write.retried();
        t.remote_write.queue(5, 50);
        t.remote_write.took(Duration::from_millis(300));
        t.catalog_reload(true);
        t.catalog_reload(false);
        t.catalog_reload(true);
        t.cardinality
            .folded("a\"b\\c\nd", crate::process::cardinality::FoldReason::MaxSeries, 3);
        t.cardinality
            .folded("req", crate::process::cardinality::FoldReason::MaxSeriesPerMetric, 2);
        t.cardinality
            .folded("req", crate::process::cardinality::FoldReason::LabelCollision, 1);
        t.cardinality.rejected(RejectReason::BucketLayout, 2);
        t.cardinality.normalized("user", NormalizeKind::Uuid, 5);
        t.cardinality.streams(9);
        let mut c = LimitCounts::default();
        c.add(LimitReason::LabelNameTooLong, 2);
        c.add(LimitReason::TooManyAttributes, 1);
        t.limited.limited(Signal::Metrics, &c);
        t.limited.limited(Signal::Traces, &c);
        t.connections.opened(ListenerKind::OtlpHttp);
        t.connections.opened(ListenerKind::OtlpHttp);
        t.connections.ended(ListenerKind::OtlpHttp);
        t.connections.opened(ListenerKind::Prometheus);
        t.connections.closed(ListenerKind::OtlpGrpc, CloseReason::IdleTimeout);
        t.connections
            .closed(ListenerKind::OtlpHttp, CloseReason::BodyReadTimeout);
        t
    }

    /// The golden files were written by the positional-table renderer this one replaced: the
    /// output of every family, label and value stays byte for byte the same.
    #[test]
    fn populated_self_metrics_match_their_golden_files() {
        let t = populated();
        for (format, file) in [
            (Format::OpenMetrics, "self_metrics.openmetrics.txt"),
            (Format::Text, "self_metrics.text.txt"),
        ] {
            let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
            let actual = rendered(&t, format);
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&path, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
                assert_eq!(e, a, "{file} line {}", i + 1);
            }
            assert_eq!(expected, actual, "{file}");
        }
    }

    #[test]
    fn reserved_names_list_every_rendered_family_and_sample() {
        let t = populated();
        let om = rendered(&t, Format::OpenMetrics);
        let typed: BTreeSet<&str> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let listed: BTreeSet<&str> = FAMILIES.iter().map(|f| f.name).collect();
        assert_eq!(typed, listed, "FAMILIES lists exactly the rendered families");
        assert_eq!(listed.len(), FAMILIES.len(), "no family is listed twice");
        assert_eq!(
            om.matches("# TYPE ").count(),
            FAMILIES.len(),
            "each family is rendered once"
        );
        let reserved = Telemetry::reserved_names();
        for format in [Format::OpenMetrics, Format::Text] {
            for line in rendered(&t, format).lines().filter(|l| !l.starts_with('#')) {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert!(reserved.iter().any(|r| r == name), "{name} is reserved");
            }
        }
    }

    #[test]
    fn each_refusal_reason_is_its_own_series() {
        for reason in RefusalReason::ALL {
            let t = Telemetry::default();
            t.receiver.refused(Signal::Metrics, Protocol::Http, reason);
            let om = rendered(&t, Format::OpenMetrics);
            let ones: Vec<&str> = om
                .lines()
                .filter(|l| l.starts_with("spindle_refused_requests_total{") && l.ends_with("} 1"))
                .collect();
            let want = format!(
                "spindle_refused_requests_total{{signal=\"metrics\",protocol=\"http\",reason=\"{}\"}} 1",
                reason.as_str()
            );
            assert_eq!(ones, [want.as_str()]);
        }
    }

    #[test]
    fn counts_show_up_in_both_formats() {
        let t = Telemetry::default();
        t.receiver.received(Signal::Metrics, Protocol::Http, 7, 2);
        t.receiver
            .refused(Signal::Traces, Protocol::Grpc, RefusalReason::Malformed);
        t.scrape_took(Duration::from_millis(3));
        let om = rendered(&t, Format::OpenMetrics);
        assert!(om.contains("# TYPE spindle_received_items counter"), "{om}");
        assert!(om.contains("spindle_received_items_total{signal=\"metrics\",protocol=\"http\"} 7"));
        assert!(om.contains("spindle_rejected_items_total{signal=\"metrics\",protocol=\"http\"} 2"));
        assert!(
            om.contains("spindle_refused_requests_total{signal=\"traces\",protocol=\"grpc\",reason=\"malformed\"} 1")
        );
        assert!(om.contains("spindle_active_series 42"));
        assert!(om.contains("spindle_scrape_duration_seconds_bucket{le=\"0.005\"} 1"));
        t.remote_write.sent(10);
        t.remote_write.sent_exemplars(2);
        t.remote_write.dropped(RemoteWriteDropReason::QueueFull, 3);
        let om = rendered(&t, Format::OpenMetrics);
        assert!(om.contains("spindle_remote_write_sent_samples_total 10"), "{om}");
        assert!(om.contains("spindle_remote_write_sent_exemplars_total 2"), "{om}");
        assert!(om.contains("spindle_remote_write_dropped_samples_total{reason=\"queue_full\"} 3"));
        assert!(om.contains("spindle_remote_write_request_duration_seconds_count 0"));
        let text = rendered(&t, Format::Text);
        assert!(text.contains("# TYPE spindle_received_items_total counter"), "{text}");
    }

    /// Records the walk of the self metrics: families, and each sample with its series' labels.
    #[derive(Default)]
    struct Recorder {
        families: Vec<(&'static str, MetricKind)>,
        samples: Vec<Recorded>,
    }

    /// One sample: family name, series labels, sample kind, value.
    struct Recorded(String, Vec<(String, String)>, crate::expose::walk::SampleKind, u64);

    impl Sink for Recorder {
        fn family(&mut self, f: &Family<'_>) {
            let own = FAMILIES.iter().find(|o| o.name == f.name).expect("a declared family");
            assert_eq!(f, own, "walked with its declared descriptor");
            self.families.push((own.name, f.kind));
        }

        fn sample(&mut self, s: &crate::expose::walk::Sample<'_>) {
            let labels = crate::store::label_pairs(s.labels)
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            let value = match s.value {
                crate::expose::walk::Value::Int(v) => v,
                crate::expose::walk::Value::Float(v) => v as u64,
            };
            self.samples.push(Recorded(s.name.to_string(), labels, s.kind, value));
        }
    }

    fn walked(t: &Telemetry) -> Recorder {
        let mut r = Recorder::default();
        SelfMetrics::walk(t, 42, &mut r);
        r
    }

    /// The self metrics go through the exposition's sample walk: every declared family once, in
    /// declaration order, with counters as `_total`, gauges bare, and histograms as cumulative
    /// buckets whose `+Inf` equals `_count`.
    #[test]
    fn own_families_are_walked_like_stored_ones() {
        use crate::expose::walk::SampleKind;
        let r = walked(&populated());
        let declared: Vec<(&str, MetricKind)> = FAMILIES.iter().map(|f| (f.name, f.kind)).collect();
        assert_eq!(r.families, declared);
        for Recorded(name, _, kind, _) in &r.samples {
            let fam = FAMILIES.iter().find(|f| f.name == name).expect("declared");
            let ok = match fam.kind {
                MetricKind::Counter => *kind == SampleKind::Total,
                MetricKind::Gauge => *kind == SampleKind::Value,
                MetricKind::Histogram => matches!(kind, SampleKind::Bucket(_) | SampleKind::Count | SampleKind::Sum),
                _ => false,
            };
            assert!(ok, "{name}: {kind:?}");
        }
        for fam in FAMILIES.iter().filter(|f| f.kind == MetricKind::Histogram) {
            let of: Vec<_> = r.samples.iter().filter(|s| s.0 == fam.name).collect();
            let inf = of
                .iter()
                .find(|s| s.2 == SampleKind::Bucket(f64::INFINITY))
                .expect("+Inf");
            let count = of.iter().find(|s| s.2 == SampleKind::Count).expect("_count");
            assert_eq!(inf.3, count.3, "{}", fam.name);
            assert!(of.windows(2).all(|w| match (w[0].2, w[1].2) {
                (SampleKind::Bucket(a), SampleKind::Bucket(b)) => a < b && w[0].3 <= w[1].3,
                _ => true,
            }));
        }
        assert!(
            r.samples
                .iter()
                .any(|s| s.0 == "spindle_scrape_duration_seconds" && s.2 == SampleKind::Count && s.3 == 1)
        );
    }

    /// Every label value of the self metrics comes from a closed set: the components' reason
    /// enums, signals, protocols, listeners, reload results and normalizer kinds. Only `metric`
    /// (bounded by `MAX_FOLDED_SERIES`) and `label` (from the configuration) are open.
    #[test]
    fn self_metric_label_values_come_from_closed_sets() {
        use crate::process::cardinality::FoldReason;
        let mut reasons: BTreeSet<&str> = BTreeSet::new();
        reasons.extend(RefusalReason::ALL.map(RefusalReason::as_str));
        reasons.extend(DropReason::ALL.iter().map(|r| r.as_str()));
        reasons.extend(RemoteWriteDropReason::ALL.iter().map(|r| r.as_str()));
        reasons.extend(FoldReason::ALL.map(FoldReason::as_str));
        reasons.extend(RejectReason::ALL.map(RejectReason::as_str));
        reasons.extend(LimitReason::ALL.map(LimitReason::as_str));
        reasons.extend(CloseReason::ALL.map(CloseReason::as_str));
        let kind = |k: NormalizeKind| match k {
            // Exhaustive: a new kind fails to compile here until it is listed below.
            NormalizeKind::Uuid | NormalizeKind::HexId | NormalizeKind::Number | NormalizeKind::Ip => k.as_str(),
            NormalizeKind::Regex => k.as_str(),
        };
        let kinds = [
            NormalizeKind::Uuid,
            NormalizeKind::HexId,
            NormalizeKind::Number,
            NormalizeKind::Ip,
            NormalizeKind::Regex,
        ]
        .map(kind);
        let r = walked(&populated());
        let mut seen = BTreeSet::new();
        for Recorded(name, labels, _, _) in &r.samples {
            for (k, v) in labels {
                let closed = match k.as_str() {
                    "signal" => SIGNALS.iter().any(|s| s.as_str() == v),
                    "protocol" => PROTOCOLS.iter().any(|p| p.as_str() == v),
                    "listener" => ListenerKind::ALL.iter().any(|l| l.as_str() == v),
                    "result" => RELOAD_RESULTS.contains(&v.as_str()),
                    "reason" => reasons.contains(v.as_str()),
                    "kind" => kinds.contains(&v.as_str()) || DISK_ERROR_KINDS.contains(&v.as_str()),
                    "metric" => name == CARDINALITY_FOLDED.name,
                    "label" => name == CARDINALITY_NORMALIZED.name,
                    _ => false,
                };
                assert!(closed, "{name}: {k}=\"{v}\" is not from a closed set");
                seen.insert(k.clone());
            }
        }
        let all = [
            "kind", "label", "listener", "metric", "protocol", "reason", "result", "signal",
        ];
        assert_eq!(seen.iter().map(String::as_str).collect::<Vec<_>>(), all);
    }

    /// Sums and bounds of the self histograms are written by the exposition's float formatter,
    /// like every stored float (`0.00001`, not `1e-5`).
    #[test]
    fn own_histograms_use_the_one_float_formatter() {
        let t = Telemetry::default();
        t.scrape_took(Duration::from_micros(10));
        for format in [Format::OpenMetrics, Format::Text] {
            let text = rendered(&t, format);
            assert!(
                text.contains("\nspindle_scrape_duration_seconds_sum 0.00001\n"),
                "{text}"
            );
            assert!(text.contains("spindle_scrape_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        }
    }

    #[test]
    fn telemetry_hands_out_the_stats_it_renders() {
        let t = Arc::new(Telemetry::default());
        let traces: ExporterStats<DropReason> = t.clone().into();
        traces.sent(4);
        let limiter: LimiterStats = t.clone().into();
        limiter.streams(3);
        let om = rendered(&t, Format::OpenMetrics);
        assert!(om.contains("spindle_exporter_sent_spans_total 4\n"), "{om}");
        assert!(om.contains("spindle_cardinality_stream_states 3\n"), "{om}");
    }
}
