//! HTTP routes of the Prometheus endpoint: `GET /metrics` (content negotiation, gzip),
//! `/healthz` (alive) and `/readyz` (receivers bound and accepting).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::api::CardinalityReports;
use crate::model::Format;
use crate::process::cardinality::Limiter;
use crate::store::Store;

/// What the routes read.
#[derive(Debug, Clone)]
pub struct ExposeState {
    /// The series store.
    pub store: Arc<Store>,
    /// Spindle's own metrics, rendered after the store's families (`crate::telemetry::Telemetry`).
    pub telemetry: Arc<dyn super::SelfMetrics>,
    /// Set once every receiver is bound and serving; cleared on shutdown.
    pub ready: Arc<AtomicBool>,
    /// Scrape buffers, reused so a large scrape does not fault in fresh memory every time.
    pub buffers: Arc<BufferPool>,
    /// The cardinality limiter, for `/api/v1/cardinality`.
    pub limiter: Arc<Limiter>,
    /// The `/api/v1/cardinality` reports of `limiter` over `store`, cached.
    pub reports: Arc<CardinalityReports>,
}

/// A small pool of scrape buffers. A buffer goes back to the pool when the response that
/// carries it has been sent; at most [`BufferPool::MAX`] are kept.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: parking_lot::Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// Buffers kept for reuse (one per concurrent scrape beyond that is allocated afresh).
    pub const MAX: usize = 2;

    /// An empty buffer, with the capacity of an earlier scrape when one is free.
    pub fn take(&self) -> Vec<u8> {
        self.free.lock().pop().unwrap_or_default()
    }

    /// Wraps a filled buffer as a response body that returns it to the pool when dropped.
    pub fn body(self: &Arc<Self>, buf: Vec<u8>) -> bytes::Bytes {
        bytes::Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        // A buffer far larger than what it last held would pin memory after series expire.
        if buf.capacity() > 2 * buf.len() + (1 << 20) {
            return;
        }
        buf.clear();
        let mut free = self.free.lock();
        if free.len() < Self::MAX {
            free.push(buf);
        }
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

/// The Prometheus endpoint's routes.
pub fn router(state: ExposeState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/cardinality", get(cardinality))
        .with_state(state)
}

/// Query of `/api/v1/cardinality`.
#[derive(Debug, serde::Deserialize)]
struct CardinalityQuery {
    /// How many metrics (and labels per metric) to list. Default 20.
    limit: Option<usize>,
}

/// `GET /api/v1/cardinality[?limit=N]`: the limiter's report as JSON, cached for
/// [`REPORT_MAX_AGE`](super::api::REPORT_MAX_AGE) and computed single-flight on a blocking thread
/// ([`CardinalityReports::cached`]), so polling it cannot stall scrapes.
async fn cardinality(
    State(s): State<ExposeState>,
    query: Result<axum::extract::Query<CardinalityQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let limit = match query {
        Ok(q) => q.limit.unwrap_or(20).clamp(1, 1000),
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("{}; use `?limit=N` (1 to 1000)\n", e.body_text()),
            )
                .into_response();
        }
    };
    let report = tokio::task::spawn_blocking(move || s.reports.cached(&s.limiter, &s.store, limit)).await;
    match report {
        Ok(v) => axum::Json(v).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "report failed\n").into_response(),
    }
}

async fn readyz(State(s): State<ExposeState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Picks the exposition format from an `Accept` header: OpenMetrics when asked for, else text.
pub fn negotiate(accept: Option<&str>) -> Format {
    match accept {
        Some(a)
            if a.split(',').any(|part| {
                let essence = part.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/openmetrics-text")
                    && !part.contains("q=0,")
                    && !part.trim_end().ends_with("q=0")
            }) =>
        {
            Format::OpenMetrics
        }
        _ => Format::Text,
    }
}

fn wants_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q0 = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("gzip") && !q0
        })
}

async fn metrics(State(s): State<ExposeState>, headers: HeaderMap) -> Response {
    let format = negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let gzip = wants_gzip(&headers);
    // Rendering a large store is CPU work: keep it off the async workers.
    let pool = s.buffers.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut body = s.buffers.take();
        super::render(&s.store, &*s.telemetry, format, &mut body);
        s.telemetry.scrape_took(start.elapsed());
        if !gzip {
            return Ok(body);
        }
        let mut enc = flate2::write::GzEncoder::new(s.buffers.take(), flate2::Compression::fast());
        let out = enc.write_all(&body).and_then(|_| enc.finish());
        s.buffers.body(body); // the plain buffer goes straight back to the pool
        out
    })
    .await;
    let body = match rendered {
        Ok(Ok(b)) => pool.body(b),
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("compression failed: {e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("render failed: {e}\n")).into_response(),
    };
    let ct = match format {
        Format::OpenMetrics => super::openmetrics::CONTENT_TYPE,
        Format::Text => super::text::CONTENT_TYPE,
    };
    let mut resp = ([(header::CONTENT_TYPE, ct)], body).into_response();
    if gzip {
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    /// Routes over a store with `n` series of one counter, and the limiter they report from.
    fn state_with(n: usize) -> ExposeState {
        use crate::model::batch::{FamilyMeta, PointValue, Samples};
        use crate::model::{MetricKind, Temporality};
        let telemetry = Arc::new(Telemetry::default());
        let store = Arc::new(Store::new(std::time::Duration::from_secs(60), usize::MAX, &[]));
        let mut b = Samples::default();
        let f = b.add_family(FamilyMeta {
            name: "requests".into(),
            kind: MetricKind::Counter,
            help: String::new(),
            unit: String::new(),
        });
        for i in 0..n {
            let start = b.labels.len();
            b.add_label("user", &format!("u{i}"));
            b.add_point(f, start, Temporality::Delta, PointValue::Number(1.0), &[]);
        }
        store.write(b, Instant::now());
        let limiter = Limiter::new(&Default::default(), usize::MAX, telemetry.clone()).expect("default limiter");
        ExposeState {
            store,
            telemetry,
            ready: Arc::new(AtomicBool::new(true)),
            buffers: Default::default(),
            limiter: Arc::new(limiter),
            reports: Default::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cardinality_requests_share_one_report_computation() {
        use tower::ServiceExt as _;
        let state = state_with(20_000);
        let app = router(state.clone());
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move {
                    let req = http::Request::get("/api/v1/cardinality?limit=5")
                        .body(axum::body::Body::empty())
                        .expect("request");
                    let resp = app.oneshot(req).await.expect("infallible");
                    assert_eq!(resp.status(), StatusCode::OK);
                    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
                    serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")
                })
            })
            .collect();
        let mut reports = Vec::new();
        for c in calls {
            reports.push(c.await.expect("call"));
        }
        assert_eq!(
            state.reports.computations(),
            1,
            "8 concurrent requests, one computation"
        );
        for r in &reports {
            assert_eq!(r["top_metrics"][0]["series"], 20_000);
            assert_eq!(r["top_metrics"][0]["labels"][0]["distinct_values"], 20_000);
            assert_eq!(r["generated_at_unix_ms"], reports[0]["generated_at_unix_ms"]);
            assert!(r["age_ms"].is_u64(), "{r}");
        }
    }

    #[test]
    fn buffers_return_to_the_pool_with_their_capacity() {
        let pool = Arc::new(BufferPool::default());
        let mut b = pool.take();
        b.extend_from_slice(&[b'x'; 4096]);
        let cap = b.capacity();
        let body = pool.body(b);
        assert_eq!(body.len(), 4096);
        assert!(pool.free.lock().is_empty(), "still in use by the response");
        drop(body);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap, "the same allocation comes back");
        // Oversized buffers (far larger than what they held) are not kept.
        let mut big = Vec::with_capacity(8 << 20);
        big.push(1u8);
        drop(pool.body(big));
        assert!(pool.free.lock().is_empty());
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        // What Prometheus sends.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
    }
}
