//! Exporters: forwarding to other systems. [`traces`] forwards spans over OTLP;
//! [`remote_write`] pushes snapshots of the series store with Prometheus remote write.
//!
//! The retry helpers every exporter shares (jittered backoff, `Retry-After`) live here.

use std::time::{Duration, Instant};

pub mod config;
pub mod remote_write;
pub mod stats;
pub mod traces;

/// `d` scaled by a random factor in [0.8, 1.2].
pub(crate) fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let r = (h.finish() % 4001) as f64 / 10_000.0; // 0.0 ..= 0.4
    d.mul_f64(0.8 + r)
}

/// The delay an HTTP `Retry-After` header asks for, when it is given in seconds.
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(1000));
            assert!(
                j >= Duration::from_millis(800) && j <= Duration::from_millis(1200),
                "{j:?}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(" 3 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None, "dates fall back to the backoff");
    }
}
