//! Spindle's own metrics (`spindle_*`), rendered after the stored families on the same `/metrics`
//! endpoint, in either exposition format.
//!
//! Each component owns its self-metric handles and the closed sets of its label values
//! (`receive::stats`, `server::stats`, `process::translate::stats`, `process::cardinality::stats`,
//! `export::stats`) and counts once per batch or connection, never per item. [`Telemetry`] only
//! composes them: it holds one of each, hands them to the components when the process is wired
//! (`app.rs`), and renders every family by its named descriptor ([`Family`]). Imports point one
//! way: this module imports the components' stats; no component imports it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::export::stats::{DURATION_BUCKETS, DurationHistogram};
pub use crate::export::stats::{DropReason, ExporterStats, Reason, RemoteWriteDropReason};
use crate::model::Format;
use crate::model::batch::LimitReason;
use crate::process::cardinality::LimiterStats;
use crate::process::cardinality::RejectReason;
use crate::process::cardinality::stats::MAX_FOLDED_SERIES as FOLDED_SERIES;
use crate::process::translate::LimitStats;
use crate::receive::stats::{PROTOCOLS, ReceiverStats, RefusalReason, SIGNALS};
pub use crate::server::stats::{CloseReason, ConnectionStats, ListenerKind};

/// Most series `spindle_cardinality_folded_points_total` has (see
/// [`process::cardinality::stats`](crate::process::cardinality::stats)).
pub const MAX_FOLDED_SERIES: usize = FOLDED_SERIES;

/// The type of a self-metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A counter; its samples end in `_total`.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram with `_bucket`, `_count` and `_sum` samples.
    Histogram,
}

impl Kind {
    /// The `# TYPE` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One family Spindle exposes about itself: its name (a counter's without `_total`), type and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The family name; a counter's samples append `_total`.
    pub name: &'static str,
    /// The family type.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

const RECEIVED_REQUESTS: Family = family(
    "spindle_received_requests",
    Kind::Counter,
    "OTLP export requests accepted, by signal and protocol.",
);
const RECEIVED_ITEMS: Family = family(
    "spindle_received_items",
    Kind::Counter,
    "Data points or spans accepted, by signal and protocol.",
);
const REJECTED_ITEMS: Family = family(
    "spindle_rejected_items",
    Kind::Counter,
    "Data points or spans rejected as invalid or conflicting (reported in partial_success).",
);
const REFUSED_REQUESTS: Family = family(
    "spindle_refused_requests",
    Kind::Counter,
    "Requests refused as a whole, by signal, protocol and reason.",
);
const ACTIVE_SERIES: Family = family(
    "spindle_active_series",
    Kind::Gauge,
    "Series currently held for the Prometheus endpoint.",
);
const EXPIRED_SERIES: Family = family(
    "spindle_expired_series",
    Kind::Counter,
    "Series removed after prometheus.series_ttl without updates.",
);
const SCRAPE_DURATION: Family = family(
    "spindle_scrape_duration_seconds",
    Kind::Histogram,
    "Time to render /metrics.",
);

/// The six families of one exporter, in render order.
struct ExporterFamilies {
    sent: Family,
    dropped: Family,
    retries: Family,
    queue_bytes: Family,
    queue_capacity: Family,
    duration: Family,
}

const TRACE_EXPORTER: ExporterFamilies = ExporterFamilies {
    sent: family(
        "spindle_exporter_sent_spans",
        Kind::Counter,
        "Spans the trace backend acknowledged.",
    ),
    dropped: family(
        "spindle_exporter_dropped_spans",
        Kind::Counter,
        "Spans the trace exporter dropped, by reason.",
    ),
    retries: family(
        "spindle_exporter_retries",
        Kind::Counter,
        "Trace export attempts that failed and were retried.",
    ),
    queue_bytes: family(
        "spindle_exporter_queue_bytes",
        Kind::Gauge,
        "Bytes of memory held by spans queued for the trace backend (decoded requests and their exemplars) or in flight (encoded).",
    ),
    queue_capacity: family(
        "spindle_exporter_queue_capacity_bytes",
        Kind::Gauge,
        "Bound of the trace export queue (exporters.traces.otlp.queue_max_bytes).",
    ),
    duration: family(
        "spindle_exporter_export_duration_seconds",
        Kind::Histogram,
        "Duration of trace export attempts.",
    ),
};

const REMOTE_WRITE: ExporterFamilies = ExporterFamilies {
    sent: family(
        "spindle_remote_write_sent_samples",
        Kind::Counter,
        "Samples the remote-write receiver acknowledged.",
    ),
    dropped: family(
        "spindle_remote_write_dropped_samples",
        Kind::Counter,
        "Samples (and exemplars) the remote-write exporter dropped, by reason.",
    ),
    retries: family(
        "spindle_remote_write_retries",
        Kind::Counter,
        "Remote-write requests that failed and were retried.",
    ),
    queue_bytes: family(
        "spindle_remote_write_queue_bytes",
        Kind::Gauge,
        "Compressed bytes of remote-write requests waiting to be sent.",
    ),
    queue_capacity: family(
        "spindle_remote_write_queue_capacity_bytes",
        Kind::Gauge,
        "Bound of the remote-write queue (exporters.remote_write.queue_max_bytes).",
    ),
    duration: family(
        "spindle_remote_write_request_duration_seconds",
        Kind::Histogram,
        "Duration of remote-write request attempts.",
    ),
};

const REMOTE_WRITE_SENT_EXEMPLARS: Family = family(
    "spindle_remote_write_sent_exemplars",
    Kind::Counter,
    "Exemplars the remote-write receiver acknowledged.",
);
const CATALOG_RELOADS: Family = family(
    "spindle_enrich_catalog_reloads",
    Kind::Counter,
    "Service-catalog reloads after the file changed, by result (ok, or error: the old catalog stays).",
);
const CARDINALITY_FOLDED: Family = family(
    "spindle_cardinality_folded_points",
    Kind::Counter,
    "Data points folded into their metric's overflow series, by metric and reason.",
);
const CARDINALITY_REJECTED: Family = family(
    "spindle_cardinality_rejected_points",
    Kind::Counter,
    "Data points the cardinality limiter rejected (reported in partial_success), by reason.",
);
const CARDINALITY_NORMALIZED: Family = family(
    "spindle_cardinality_normalized_values",
    Kind::Counter,
    "Label values rewritten by processors.cardinality.normalize, by label and kind.",
);
const CARDINALITY_STREAMS: Family = family(
    "spindle_cardinality_stream_states",
    Kind::Gauge,
    "Cumulative streams whose last report is kept to fold or merge them exactly.",
);
const LIMITED_ITEMS: Family = family(
    "spindle_limited_items",
    Kind::Counter,
    "Data points or spans rejected, or label values truncated, by receivers.otlp.limits, by signal and reason.",
);
const CONNECTIONS_CLOSED: Family = family(
    "spindle_connections_closed",
    Kind::Counter,
    "Connections the server closed or refused, by listener and reason (max_connections, idle_timeout, header_read_timeout, body_read_timeout).",
);
const OPEN_CONNECTIONS: Family = family(
    "spindle_open_connections",
    Kind::Gauge,
    "Connections currently open, by listener.",
);

/// Every family, for [`Telemetry::reserved_names`] (order does not matter; a test checks it equals
/// what [`Telemetry::render`] writes).
const FAMILIES: &[Family] = &[
    RECEIVED_REQUESTS,
    RECEIVED_ITEMS,
    REJECTED_ITEMS,
    REFUSED_REQUESTS,
    ACTIVE_SERIES,
    EXPIRED_SERIES,
    SCRAPE_DURATION,
    TRACE_EXPORTER.sent,
    TRACE_EXPORTER.dropped,
    TRACE_EXPORTER.retries,
    TRACE_EXPORTER.queue_bytes,
    TRACE_EXPORTER.queue_capacity,
    TRACE_EXPORTER.duration,
    REMOTE_WRITE.sent,
    REMOTE_WRITE.dropped,
    REMOTE_WRITE.retries,
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
            match f.kind {
                Kind::Counter => v.extend([format!("{name}_total"), format!("{name}_created"), name.to_string()]),
                Kind::Histogram => v.extend(
                    ["_bucket", "_count", "_sum", "_created", ""]
                        .iter()
                        .map(|s| format!("{name}{s}")),
                ),
                Kind::Gauge => v.push(name.to_string()),
            }
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

    /// Appends the self metrics in `format` (without the OpenMetrics `# EOF`).
    pub fn render(&self, format: Format, active_series: usize, out: &mut String) {
        let w = &mut Writer { format, out };
        self.render_receiver(w);
        w.header(&ACTIVE_SERIES);
        let _ = writeln!(w.out, "{} {active_series}", ACTIVE_SERIES.name);
        w.header(&EXPIRED_SERIES);
        let _ = writeln!(
            w.out,
            "{}_total {}",
            EXPIRED_SERIES.name,
            self.expired_series.load(Ordering::Relaxed)
        );
        w.header(&SCRAPE_DURATION);
        w.histogram(SCRAPE_DURATION.name, &self.scrape);
        w.exporter(&TRACE_EXPORTER, &self.traces);
        w.exporter(&REMOTE_WRITE, &self.remote_write);
        w.header(&REMOTE_WRITE_SENT_EXEMPLARS);
        let _ = writeln!(
            w.out,
            "{}_total {}",
            REMOTE_WRITE_SENT_EXEMPLARS.name,
            self.remote_write.sent_exemplars_total()
        );
        w.header(&CATALOG_RELOADS);
        for (i, result) in RELOAD_RESULTS.iter().enumerate() {
            let _ = writeln!(
                w.out,
                "{}_total{{result=\"{result}\"}} {}",
                CATALOG_RELOADS.name,
                self.catalog_reloads[i].load(Ordering::Relaxed)
            );
        }
        self.render_cardinality(w);
        self.render_limited(w);
        self.render_connections(w);
    }

    fn render_receiver(&self, w: &mut Writer<'_>) {
        let r = &*self.receiver;
        for (f, get) in [
            (
                &RECEIVED_REQUESTS,
                ReceiverStats::requests_total as fn(&ReceiverStats, _, _) -> u64,
            ),
            (&RECEIVED_ITEMS, ReceiverStats::accepted_items),
            (&REJECTED_ITEMS, ReceiverStats::rejected_items),
        ] {
            w.header(f);
            for sig in SIGNALS {
                for proto in PROTOCOLS {
                    let _ = writeln!(
                        w.out,
                        "{}_total{{signal=\"{}\",protocol=\"{}\"}} {}",
                        f.name,
                        sig.as_str(),
                        proto.as_str(),
                        get(r, sig, proto)
                    );
                }
            }
        }
        w.header(&REFUSED_REQUESTS);
        for sig in SIGNALS {
            for proto in PROTOCOLS {
                for reason in RefusalReason::ALL {
                    let _ = writeln!(
                        w.out,
                        "{}_total{{signal=\"{}\",protocol=\"{}\",reason=\"{}\"}} {}",
                        REFUSED_REQUESTS.name,
                        sig.as_str(),
                        proto.as_str(),
                        reason.as_str(),
                        r.refused_total(sig, proto, reason)
                    );
                }
            }
        }
    }

    fn render_cardinality(&self, w: &mut Writer<'_>) {
        let c = &self.cardinality;
        let mut escaped = Vec::new();
        w.header(&CARDINALITY_FOLDED);
        c.each_folded(|metric, reason, n| {
            escaped.clear();
            crate::util::labels::escape_label_value(metric, &mut escaped);
            let _ = writeln!(
                w.out,
                "{}_total{{metric=\"{}\",reason=\"{reason}\"}} {n}",
                CARDINALITY_FOLDED.name,
                String::from_utf8_lossy(&escaped)
            );
        });
        w.header(&CARDINALITY_REJECTED);
        for r in RejectReason::ALL {
            let _ = writeln!(
                w.out,
                "{}_total{{reason=\"{}\"}} {}",
                CARDINALITY_REJECTED.name,
                r.as_str(),
                c.rejected_points(r)
            );
        }
        w.header(&CARDINALITY_NORMALIZED);
        c.each_normalized(|label, kind, n| {
            let _ = writeln!(
                w.out,
                "{}_total{{label=\"{label}\",kind=\"{kind}\"}} {n}",
                CARDINALITY_NORMALIZED.name
            );
        });
        w.header(&CARDINALITY_STREAMS);
        let _ = writeln!(w.out, "{} {}", CARDINALITY_STREAMS.name, c.stream_states());
    }

    fn render_limited(&self, w: &mut Writer<'_>) {
        w.header(&LIMITED_ITEMS);
        for sig in SIGNALS {
            for r in LimitReason::ALL {
                let _ = writeln!(
                    w.out,
                    "{}_total{{signal=\"{}\",reason=\"{}\"}} {}",
                    LIMITED_ITEMS.name,
                    sig.as_str(),
                    r.as_str(),
                    self.limited.limited_items(sig, r)
                );
            }
        }
    }

    fn render_connections(&self, w: &mut Writer<'_>) {
        let c = &*self.connections;
        w.header(&CONNECTIONS_CLOSED);
        for l in ListenerKind::ALL {
            for r in CloseReason::ALL.into_iter().filter(|r| r.applies_to(l)) {
                let _ = writeln!(
                    w.out,
                    "{}_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    CONNECTIONS_CLOSED.name,
                    l.as_str(),
                    r.as_str(),
                    c.closed_total(l, r)
                );
            }
        }
        w.header(&OPEN_CONNECTIONS);
        for l in ListenerKind::ALL {
            let _ = writeln!(
                w.out,
                "{}{{listener=\"{}\"}} {}",
                OPEN_CONNECTIONS.name,
                l.as_str(),
                c.open_now(l)
            );
        }
    }
}

/// Where and how the families are written.
struct Writer<'a> {
    format: Format,
    out: &'a mut String,
}

impl Writer<'_> {
    /// `# HELP` and `# TYPE` of `f` (a counter is named with `_total` in the text format).
    fn header(&mut self, f: &Family) {
        let out = &mut *self.out;
        let (name, ty, help) = (f.name, f.kind.as_str(), f.help);
        if self.format == Format::Text && f.kind == Kind::Counter {
            let _ = writeln!(out, "# HELP {name}_total {help}\n# TYPE {name}_total {ty}");
        } else {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
        }
    }

    fn histogram(&mut self, name: &str, h: &DurationHistogram) {
        let out = &mut *self.out;
        let cum = h.cumulative();
        for (b, n) in DURATION_BUCKETS.iter().zip(cum) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b:?}\"}} {n}");
        }
        let total = cum[DURATION_BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_count {total}");
        let _ = writeln!(out, "{name}_sum {:?}", h.sum_seconds());
    }

    fn exporter<R: Reason>(&mut self, f: &ExporterFamilies, s: &ExporterStats<R>) {
        self.header(&f.sent);
        let _ = writeln!(self.out, "{}_total {}", f.sent.name, s.sent_total());
        self.header(&f.dropped);
        for r in R::ALL {
            let _ = writeln!(
                self.out,
                "{}_total{{reason=\"{}\"}} {}",
                f.dropped.name,
                r.as_str(),
                s.dropped_total(*r)
            );
        }
        self.header(&f.retries);
        let _ = writeln!(self.out, "{}_total {}", f.retries.name, s.retries_total());
        self.header(&f.queue_bytes);
        let _ = writeln!(self.out, "{} {}", f.queue_bytes.name, s.queue_bytes());
        self.header(&f.queue_capacity);
        let _ = writeln!(self.out, "{} {}", f.queue_capacity.name, s.queue_capacity());
        self.header(&f.duration);
        self.histogram(f.duration.name, s.attempts());
    }
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
