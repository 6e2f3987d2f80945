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
use crate::model::{Escaping, Format};
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

/// What a scrape is answered with: the format, how names outside the legacy character set are
/// written, and so the response's exact `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The exposition format.
    pub format: Format,
    /// How names outside the legacy character set are written (`escaping=` of the chosen type).
    pub escaping: Escaping,
    /// The text format was asked for as `version=1.0.0` (the version that may carry UTF-8 names);
    /// else 0.0.4. The output is the same but for quoted UTF-8 names.
    pub text_v1: bool,
}

impl Negotiated {
    /// What a scraper that sends no `Accept` gets: text 0.0.4, names escaped with underscores.
    pub const TEXT: Negotiated = Negotiated {
        format: Format::Text,
        escaping: Escaping::Underscores,
        text_v1: false,
    };

    /// The response's `Content-Type`, exact and complete: the served format's media type, version
    /// and charset (none for protobuf), and `escaping=` saying how names were written (as
    /// client_golang writes it and Prometheus 3 reads it; older scrapers ignore the parameter).
    pub fn content_type(&self) -> String {
        let base = match self.format {
            Format::OpenMetrics => super::openmetrics::CONTENT_TYPE,
            Format::Text if self.text_v1 => super::text::CONTENT_TYPE_V1,
            Format::Text => super::text::CONTENT_TYPE,
            Format::Protobuf => super::protobuf::CONTENT_TYPE,
        };
        format!("{base}; escaping={}", self.escaping.as_str())
    }
}

/// Picks the exposition format from an `Accept` header by its q-values, as Prometheus 2.x and 3.x
/// send them from their `scrape_protocols`: the protobuf format
/// (`application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited`),
/// OpenMetrics (`application/openmetrics-text`, any version; 1.0.0 is served) or the text format
/// (`text/plain`, `*/*`). The highest q wins, the first listed among equals; `q=0` refuses a type.
/// With no header, or nothing Spindle serves in it, the text format.
///
/// The chosen type's `escaping=` says how names outside the legacy character set are written:
/// `allow-utf-8` is honoured for the types that can carry UTF-8 names (protobuf, OpenMetrics
/// 1.0.0, text 1.0.0; Prometheus 3 sends it with those), `underscores`, `dots` and `values` for
/// any; none, or an unknown value, means `underscores`.
pub fn negotiate(accept: Option<&str>) -> Negotiated {
    let mut best: Option<(f32, Negotiated)> = None;
    for part in accept.unwrap_or("").split(',') {
        let mut params = part.split(';').map(str::trim);
        let essence = params.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut proto = None;
        let mut encoding = None;
        let mut version = None;
        let mut escaping = None;
        for p in params {
            let Some((k, v)) = p.split_once('=') else { continue };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.parse().unwrap_or(0.0),
                "proto" => proto = Some(v),
                "encoding" => encoding = Some(v),
                "version" => version = Some(v),
                "escaping" => escaping = Escaping::parse(v),
                _ => {}
            }
        }
        let (format, utf8_capable, text_v1) = match essence.as_str() {
            "application/vnd.google.protobuf"
                if proto == Some("io.prometheus.client.MetricFamily") && encoding == Some("delimited") =>
            {
                (Format::Protobuf, true, false)
            }
            "application/openmetrics-text" => (Format::OpenMetrics, version.is_none_or(|v| v == "1.0.0"), false),
            "text/plain" if version == Some("1.0.0") => (Format::Text, true, true),
            "text/plain" | "*/*" | "text/*" => (Format::Text, false, false),
            _ => continue,
        };
        let escaping = match escaping {
            Some(Escaping::AllowUtf8) if !utf8_capable => Escaping::Underscores,
            Some(e) => e,
            None => Escaping::Underscores,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((
                q,
                Negotiated {
                    format,
                    escaping,
                    text_v1,
                },
            ));
        }
    }
    best.map_or(Negotiated::TEXT, |(_, n)| n)
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
    let negotiated = negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let gzip = wants_gzip(&headers);
    // Rendering a large store is CPU work: keep it off the async workers.
    let pool = s.buffers.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut body = s.buffers.take();
        super::render_escaped(
            &s.store,
            &*s.telemetry,
            negotiated.format,
            negotiated.escaping,
            &mut body,
        );
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
    let mut resp = ([(header::CONTENT_TYPE, negotiated.content_type())], body).into_response();
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
        let f = |a: Option<&str>| negotiate(a).format;
        assert_eq!(negotiate(None), Negotiated::TEXT);
        assert_eq!(f(Some("text/plain")), Format::Text);
        assert_eq!(
            f(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        assert_eq!(f(Some("application/openmetrics-text;q=0")), Format::Text);
        // `allow-utf-8` only where the type can carry UTF-8 names; unknown schemes: underscores.
        for (accept, escaping) in [
            (
                "application/openmetrics-text;version=0.0.1;escaping=allow-utf-8",
                Escaping::Underscores,
            ),
            ("text/plain;version=0.0.4;escaping=allow-utf-8", Escaping::Underscores),
            (
                "application/openmetrics-text;version=1.0.0;escaping=dots",
                Escaping::Dots,
            ),
            ("text/plain;version=0.0.4;escaping=values", Escaping::Values),
            (
                "application/openmetrics-text;version=1.0.0;escaping=bogus",
                Escaping::Underscores,
            ),
        ] {
            assert_eq!(negotiate(Some(accept)).escaping, escaping, "{accept}");
        }
    }

    /// The `Accept` headers Prometheus sends, from its `scrape_protocols` (2.42: `config.go`
    /// `ScrapeProtocolsHeaders`-equivalents of its fixed header; 3.x: `acceptHeader`), with the
    /// format, the escaping and the exact `Content-Type` each is answered with.
    #[test]
    fn negotiation_follows_what_prometheus_2_and_3_ask_for() {
        const OM: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        const PB: &str = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
        const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
        let cases = [
            // 2.42, default.
            (
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                Format::OpenMetrics,
                format!("{OM}; escaping=underscores"),
            ),
            // 2.42 with --enable-feature=native-histograms.
            (
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                Format::Protobuf,
                format!("{PB}; escaping=underscores"),
            ),
            // 3.x, default scrape_protocols.
            (
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                Format::OpenMetrics,
                format!("{OM}; escaping=allow-utf-8"),
            ),
            // 3.x with PrometheusProto first (native histograms).
            (
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
                Format::Protobuf,
                format!("{PB}; escaping=allow-utf-8"),
            ),
            // 3.x with metric_name_validation_scheme: legacy (escaping=underscores).
            (
                "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=underscores;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                Format::OpenMetrics,
                format!("{OM}; escaping=underscores"),
            ),
            // 3.x, scrape_protocols: [PrometheusText1.0.0].
            (
                "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,*/*;q=0.2",
                Format::Text,
                "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8".to_string(),
            ),
            // 3.x, scrape_protocols: [PrometheusText0.0.4] only.
            (
                "text/plain;version=0.0.4;q=1,*/*;q=0.1",
                Format::Text,
                format!("{TEXT}; escaping=underscores"),
            ),
            // Protobuf ranked below OpenMetrics.
            (
                "application/openmetrics-text;version=1.0.0;q=0.9,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5",
                Format::OpenMetrics,
                format!("{OM}; escaping=underscores"),
            ),
            // Protobuf of another message, or not delimited: not served.
            (
                "application/vnd.google.protobuf;proto=other.Message;encoding=delimited",
                Format::Text,
                format!("{TEXT}; escaping=underscores"),
            ),
            (
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
                Format::Text,
                format!("{TEXT}; escaping=underscores"),
            ),
            (
                "application/json",
                Format::Text,
                format!("{TEXT}; escaping=underscores"),
            ),
        ];
        for (accept, want, content_type) in cases {
            let n = negotiate(Some(accept));
            assert_eq!(n.format, want, "{accept}");
            assert_eq!(n.content_type(), content_type, "{accept}");
        }
    }
}
