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
const SCRAPE_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

type PerSignalProtocol = [[AtomicU64; 2]; 2];

/// The self-metric counters.
#[derive(Debug, Default)]
pub struct Telemetry {
    requests: PerSignalProtocol,
    accepted: PerSignalProtocol,
    rejected: PerSignalProtocol,
    refused: [[[AtomicU64; REFUSAL_REASONS.len()]; 2]; 2],
    expired_series: AtomicU64,
    scrape_buckets: [AtomicU64; SCRAPE_BUCKETS.len() + 1],
    scrape_sum_nanos: AtomicU64,
}

/// Families Spindle exposes about itself: `(name, type, help)`; counters without `_total`.
const FAMILIES: [(&str, &str, &str); 7] = [
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
        let secs = d.as_secs_f64();
        let i = SCRAPE_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(SCRAPE_BUCKETS.len());
        self.scrape_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.scrape_sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
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
        let mut cum = 0;
        for (i, b) in SCRAPE_BUCKETS.iter().enumerate() {
            cum += self.scrape_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "spindle_scrape_duration_seconds_bucket{{le=\"{b:?}\"}} {cum}");
        }
        cum += self.scrape_buckets[SCRAPE_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "spindle_scrape_duration_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "spindle_scrape_duration_seconds_count {cum}");
        let sum = self.scrape_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "spindle_scrape_duration_seconds_sum {sum:?}");
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
        let mut text = String::new();
        t.render(Format::Text, 42, &mut text);
        assert!(text.contains("# TYPE spindle_received_items_total counter"), "{text}");
    }
}
