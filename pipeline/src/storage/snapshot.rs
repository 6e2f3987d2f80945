//! The metric state across a graceful restart: at shutdown the store is written to
//! `state/metrics.snapshot` ([`save`]); at start it is read back into the empty store and the file
//! removed ([`restore`]). Counters continue where they stood, so Prometheus sees no reset, and
//! series accumulated from deltas (span metrics) keep their totals. Series whose `series_ttl` ran
//! out while Spindle was down stay gone.
//!
//! After `kill -9` there is no snapshot: counters start from zero, which Prometheus reads as a
//! counter reset (`rate()` and `increase()` handle it). A snapshot left by an older run that was
//! already restored is removed at restore, so a crash never brings back older values.
//!
//! File: `magic "SPS1" | saved_at u64 (Unix seconds) | n u32 | n ages u32 | samples | crc32`, the
//! samples in `model::codec`'s encoding, the checksum over everything before it. Written to a
//! temporary file, flushed and renamed, so a crash mid-save leaves the previous state or none.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::model::codec;
use crate::store::Store;

const MAGIC: &[u8; 4] = b"SPS1";
const FILE: &str = "metrics.snapshot";

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The snapshot file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Writes every series of `store` to `state_dir`. Returns the series written.
///
/// # Errors
/// When the file cannot be written (the caller logs it; nothing else depends on it).
pub fn save(store: &Store, state_dir: &Path) -> io::Result<usize> {
    let (samples, ages) = store.to_samples(Instant::now());
    let mut b = Vec::with_capacity(64 + ages.len() * 4);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&unix_now().to_le_bytes());
    b.extend_from_slice(&(ages.len() as u32).to_le_bytes());
    for a in &ages {
        b.extend_from_slice(&a.to_le_bytes());
    }
    codec::encode(&samples, &mut b);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    {
        let f = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut &f, &b)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(state_dir))?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(ages.len())
}

/// What [`restore`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// Series written back into the store.
    pub series: u64,
    /// Series left out: their `series_ttl` ran out while Spindle was down.
    pub expired: u64,
}

/// Reads the snapshot in `state_dir` (if any) into `store`, leaving out series older than `ttl`
/// counting the time Spindle was down, then removes the file.
///
/// # Errors
/// When the file exists but cannot be read, or is corrupt (it is then set aside as
/// `metrics.snapshot.corrupt`, and the store starts empty).
pub fn restore(store: &Store, state_dir: &Path, ttl: Duration) -> io::Result<Restored> {
    let p = path(state_dir);
    let b = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Restored::default()),
        Err(e) => return Err(e),
    };
    let parsed = parse(&b);
    let Some((saved_at, ages, mut samples)) = parsed else {
        let _ = std::fs::rename(&p, state_dir.join(format!("{FILE}.corrupt")));
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the metric state snapshot is corrupt (set aside as metrics.snapshot.corrupt); starting from zero",
        ));
    };
    let down = unix_now().saturating_sub(saved_at);
    let ttl = ttl.as_secs();
    let keep: Vec<bool> = ages.iter().map(|a| u64::from(*a) + down <= ttl).collect();
    let expired = keep.iter().filter(|k| !**k).count() as u64;
    let mut i = 0;
    samples.points.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    samples.outcome.accepted = samples.points.len() as u64;
    let out = store.write(samples, Instant::now());
    // Restored once: a later crash must not bring these values back.
    std::fs::remove_file(&p)?;
    Ok(Restored {
        series: out.accepted,
        expired,
    })
}

fn parse(b: &[u8]) -> Option<(u64, Vec<u32>, crate::model::batch::Samples)> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc || body.get(..4)? != MAGIC {
        return None;
    }
    let saved_at = u64::from_le_bytes(body.get(4..12)?.try_into().ok()?);
    let n = u32::from_le_bytes(body.get(12..16)?.try_into().ok()?) as usize;
    let ages_end = 16usize.checked_add(n.checked_mul(4)?)?;
    let ages = body
        .get(16..ages_end)?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect::<Vec<_>>();
    let samples = codec::decode(body.get(ages_end..)?)?;
    (samples.points.len() == n).then_some((saved_at, ages, samples))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::batch::Samples;
    use crate::testing;

    fn store() -> Store {
        Store::new(Duration::from_secs(300), 10_000, &[])
    }

    fn scrape(s: &Store) -> String {
        let mut out = Vec::new();
        let own = crate::telemetry::Telemetry::default();
        crate::expose::render(s, &own, crate::model::Format::OpenMetrics, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// One metric of every kind, exemplars included.
    fn every_kind() -> Samples {
        use opentelemetry_proto::tonic::metrics::v1 as pm;
        let attrs = || testing::kvs(&[("route", "/a \"quoted\"\n"), ("code", "200")]);
        let mut c = testing::int_point(7, attrs());
        c.exemplars.push(pm::Exemplar {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            time_unix_nano: 1_700_000_000_000_000_000,
            value: Some(pm::exemplar::Value::AsDouble(0.5)),
            ..Default::default()
        });
        let exp = pm::ExponentialHistogramDataPoint {
            attributes: attrs(),
            count: 6,
            sum: Some(12.5),
            scale: 2,
            zero_count: 1,
            positive: Some(pm::exponential_histogram_data_point::Buckets {
                offset: -1,
                bucket_counts: vec![2, 0, 3],
            }),
            time_unix_nano: 1,
            ..Default::default()
        };
        let summary = pm::SummaryDataPoint {
            attributes: attrs(),
            count: 4,
            sum: 10.0,
            quantile_values: vec![pm::summary_data_point::ValueAtQuantile {
                quantile: 0.5,
                value: 2.0,
            }],
            time_unix_nano: 1,
            ..Default::default()
        };
        let metrics = vec![
            testing::metric("calls", "", testing::sum(true, true, vec![c])),
            testing::gauge_metric("temp", 21.5, attrs()),
            testing::metric(
                "latency",
                "s",
                testing::histogram(
                    false,
                    vec![testing::hpoint(&[0.1, 1.0], &[1, 2, 3], Some(4.5), attrs())],
                ),
            ),
            testing::metric(
                "sizes",
                "",
                pm::metric::Data::ExponentialHistogram(pm::ExponentialHistogram {
                    data_points: vec![exp],
                    aggregation_temporality: testing::temporality(false),
                }),
            ),
            testing::metric(
                "rtt",
                "",
                pm::metric::Data::Summary(pm::Summary {
                    data_points: vec![summary],
                }),
            ),
        ];
        let req = testing::metrics_request(testing::kvs(&[("service.name", "svc")]), metrics);
        crate::process::translate::Translator::new(Vec::new()).translate(req)
    }

    /// Span metrics with `histogram: both` (classic and native buckets in one series), with
    /// exemplars in both.
    fn span_metrics_both(a: &Store) {
        use crate::process::span_metrics::{HistogramKind, SpanMetrics, SpanMetricsConfig};
        let sm = SpanMetrics::new(SpanMetricsConfig {
            histogram: HistogramKind::Both,
            ..SpanMetricsConfig::default()
        });
        let spans = [3u64, 40, 40, 700]
            .iter()
            .enumerate()
            .map(|(i, ms)| opentelemetry_proto::tonic::trace::v1::Span {
                end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
                ..testing::span("GET /a", i as u8 + 1, Vec::new())
            })
            .collect();
        let out = sm.process(&testing::traces_request(
            vec![testing::kv("service.name", "svc")],
            spans,
        ));
        a.write(out.counts, Instant::now());
        a.write(out.exemplars, Instant::now());
    }

    #[test]
    fn a_restored_store_renders_exactly_as_the_saved_one_and_the_file_is_used_once() {
        let a = store();
        a.write(every_kind(), Instant::now());
        span_metrics_both(&a);
        let before = scrape(&a);
        for part in [
            "traces_span_metrics_duration_seconds_bucket{",
            "calls_total{",
            "# {trace_id=",
            "latency_seconds_bucket{",
            "sizes_bucket{",
            "rtt{",
            "temp{",
        ] {
            assert!(before.contains(part), "{part} in {before}");
        }
        let dir = tempfile::tempdir().unwrap();
        let n = save(&a, dir.path()).unwrap();
        assert_eq!(n, a.series_count());
        let b = store();
        let r = restore(&b, dir.path(), Duration::from_secs(300)).unwrap();
        assert_eq!(
            r,
            Restored {
                series: n as u64,
                expired: 0
            }
        );
        assert_eq!(scrape(&b), before);
        let proto = |s: &Store| {
            let mut out = Vec::new();
            let own = crate::telemetry::Telemetry::default();
            crate::expose::render(s, &own, crate::model::Format::Protobuf, &mut out);
            out
        };
        let (saved, _) = a.to_samples(Instant::now());
        assert!(
            saved.points.iter().any(|p| p.start_time_unix_nano != 0),
            "a start time to keep"
        );
        assert_eq!(proto(&b), proto(&a), "start times (created_timestamp) restored too");
        assert!(!path(dir.path()).exists(), "removed once restored");
        assert_eq!(
            restore(&store(), dir.path(), Duration::from_secs(300)).unwrap(),
            Restored::default()
        );
    }

    #[test]
    fn series_whose_ttl_ran_out_while_down_stay_gone_and_a_corrupt_file_is_set_aside() {
        let a = store();
        a.write(every_kind(), Instant::now());
        let dir = tempfile::tempdir().unwrap();
        save(&a, dir.path()).unwrap();
        // Saved "an hour ago": every series is past a 300 s TTL.
        let mut b = std::fs::read(path(dir.path())).unwrap();
        let old = unix_now() - 3600;
        b[4..12].copy_from_slice(&old.to_le_bytes());
        let crc = crc32fast::hash(&b[..b.len() - 4]);
        let at = b.len() - 4;
        b[at..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(path(dir.path()), &b).unwrap();
        let fresh = store();
        let r = restore(&fresh, dir.path(), Duration::from_secs(300)).unwrap();
        assert_eq!(r.series, 0);
        assert_eq!(r.expired as usize, a.series_count());
        assert_eq!(fresh.series_count(), 0);
        // A flipped bit: refused, set aside, the store stays empty.
        save(&a, dir.path()).unwrap();
        let mut b = std::fs::read(path(dir.path())).unwrap();
        b[20] ^= 1;
        std::fs::write(path(dir.path()), &b).unwrap();
        let e = restore(&fresh, dir.path(), Duration::from_secs(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(dir.path().join("metrics.snapshot.corrupt").exists());
        assert_eq!(fresh.series_count(), 0);
    }
}
