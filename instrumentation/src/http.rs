//! HTTP instrumentation: a tower layer for servers ([`HttpLayer`]), W3C trace-context extraction
//! and injection ([`inject_context`], [`extract_context`]) and a client span helper
//! ([`client_span`]).
//!
//! What comes in: each request (its method, matched route, version, `traceparent`/`tracestate`
//! headers) and its response status. What goes out: one server span per request named
//! `{method} {route}` with the HTTP semantic-convention attributes, and the
//! `http.server.request.duration` histogram (seconds) and `http.server.active_requests`
//! up-down counter. The route is axum's [`MatchedPath`] — a template such as `/users/{id}` —
//! or [`UNMATCHED_ROUTE`], never the raw path, so label cardinality stays bounded.
//!
//! Apply the layer with `Router::layer` (after the routes) so that the matched path is known:
//! axum runs such middleware after routing.
//!
//! Cost on the request path (`bench/RESULTS.md`, issue 19): the `tracing` span carries only
//! `otel.kind`; the span's name and attributes are set on its OpenTelemetry span directly and only
//! when that records, so a request whose trace is not sampled builds no attribute or name string.
//! The metrics go through instruments bound to their attribute set (cached per thread shard), so
//! the SDK neither sorts nor hashes attributes per measurement.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use opentelemetry::metrics::{BoundHistogram, BoundUpDownCounter, Histogram, Meter, UpDownCounter};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::exemplars::FxHasher;

/// `http.route` of requests that matched no route (404 fallbacks).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Bucket boundaries of `http.server.request.duration`, in seconds (the semantic conventions').
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The tower layer: wrap an axum `Router` with `.layer(HttpLayer::new())`.
#[derive(Clone)]
pub struct HttpLayer {
    metrics: Arc<HttpMetrics>,
}

impl fmt::Debug for HttpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpLayer").finish_non_exhaustive()
    }
}

struct HttpMetrics {
    duration: Histogram<f64>,
    active: UpDownCounter<i64>,
    /// `active` bound to each (method, scheme) pair on first use, so that the two measurements
    /// of a request skip sorting, hashing and looking up their attributes.
    active_bound: [[OnceLock<BoundUpDownCounter<i64>>; 2]; METHODS.len()],
    /// `duration` bound per attribute set, in shards (2 per CPU, as the exemplar reservoirs) so
    /// that no lock is shared by all threads.
    durations: Box<[Mutex<BoundDurations>]>,
}

/// What the attributes of one `http.server.request.duration` measurement are made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DurationKey {
    route: Arc<str>,
    method_slot: usize,
    https: bool,
    version: &'static str,
    status: Option<u16>,
    /// The error type given (a transport error), not the one derived from a 5xx status.
    error_type: Option<&'static str>,
}

/// Bound duration histograms of one shard.
type BoundDurations = HashMap<DurationKey, BoundHistogram<f64>, BuildHasherDefault<FxHasher>>;

/// Bound duration histograms per shard, beyond which measurements go through the unbound
/// histogram (attribute sets are bounded anyway: routes are templates, statuses few).
const MAX_BOUND_PER_SHARD: usize = 1024;

impl HttpMetrics {
    /// Records `seconds` through the histogram bound to `key`'s attributes (built by `attrs`
    /// the first time this thread's shard sees them): the SDK then neither sorts, hashes nor
    /// looks up the six attributes, and the lock taken is the calling thread's shard's.
    fn record_duration(&self, key: DurationKey, seconds: f64, attrs: impl FnOnce() -> Vec<KeyValue>) {
        let shard = &self.durations[crate::exemplars::thread_index() % self.durations.len()];
        let mut bound = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = bound.get(&key) {
            h.record(seconds);
            return;
        }
        let attrs = attrs();
        if bound.len() >= MAX_BOUND_PER_SHARD {
            drop(bound);
            self.duration.record(seconds, &attrs);
            return;
        }
        let h = self.duration.bind(&attrs);
        h.record(seconds);
        bound.insert(key, h);
    }

    fn active(&self, method: usize, https: bool) -> &BoundUpDownCounter<i64> {
        self.active_bound[method][usize::from(https)].get_or_init(|| {
            self.active.bind(&[
                KeyValue::new("http.request.method", METHODS[method]),
                KeyValue::new("url.scheme", if https { "https" } else { "http" }),
            ])
        })
    }
}

impl Default for HttpLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpLayer {
    /// A layer whose metrics use [`crate::meter()`], the global meter: create it after
    /// [`crate::try_init`].
    pub fn new() -> Self {
        Self::with_meter(&crate::meter())
    }

    /// A layer whose metrics use `meter` (e.g. [`crate::Guard::meter`] when nothing is global).
    pub fn with_meter(meter: &Meter) -> Self {
        let duration = meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests.")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        let active = meter
            .i64_up_down_counter("http.server.active_requests")
            .with_unit("{request}")
            .with_description("Number of active HTTP server requests.")
            .build();
        Self {
            metrics: Arc::new(HttpMetrics {
                duration,
                active,
                active_bound: Default::default(),
                durations: (0..shards()).map(|_| Mutex::default()).collect(),
            }),
        }
    }
}

/// Shards of the bound-instrument cache: two per CPU, at least 4, at most 128.
fn shards() -> usize {
    let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
    (cpus * 2).clamp(4, 128)
}

impl<S> Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`HttpLayer`] wraps around the inner one.
#[derive(Clone)]
pub struct HttpService<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S> fmt::Debug for HttpService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpService").finish_non_exhaustive()
    }
}

/// The semantic-convention method values; the last, `_OTHER`, stands for methods outside the set.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "_OTHER",
];

/// The index in [`METHODS`] of `method`'s semantic-convention value.
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// The semantic-convention method value (`_OTHER` for methods outside the known set).
fn method_value(method: &Method) -> &'static str {
    METHODS[method_index(method)]
}

fn version_value(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The server span's name: `{method} {route}`, or the method alone when no route matched
/// (built with one allocation of the exact size, without the formatting machinery).
fn span_name(method: &'static str, route: Option<&str>) -> String {
    let Some(route) = route else {
        return method.to_owned();
    };
    let mut name = String::with_capacity(method.len() + 1 + route.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(route);
    name
}

impl<S, B, ResB> Service<Request<B>> for HttpService<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let method_slot = method_index(req.method());
        let method = METHODS[method_slot];
        let matched = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let route = matched.unwrap_or(UNMATCHED_ROUTE);
        let https = req.uri().scheme_str() == Some("https");
        let scheme = if https { "https" } else { "http" };
        let version = version_value(req.version());

        // The `tracing` span carries no request fields: the name and the request attributes go
        // to the OpenTelemetry span directly, and only when it records (a sampled trace). No
        // attribute string or span name is built for a trace that is not sampled, static values
        // (method, scheme, version, the cached route) are not copied, and no layer (the OTel
        // layer's field visitor, the fmt layer) formats fields per request.
        let span = tracing::info_span!("HTTP request", otel.kind = "server");
        let route = cached_route(route);
        let mut recording = None;
        if !span.is_disabled() {
            if let Some(traceparent) = req.headers().get(&TRACEPARENT) {
                // Fails only when no OpenTelemetry layer is installed; then there is no trace.
                let _ = span.set_parent(extract_with(traceparent, req.headers()));
            }
            // Starts the OpenTelemetry span (entering the span would): the sampler decides here.
            let cx = span.context();
            let otel = cx.span();
            if otel.is_recording() {
                otel.update_name(span_name(method, matched));
                otel.set_attributes(request_attributes(&req, method, &route, scheme, version));
                recording = Some(cx);
            }
        }

        let record = RecordOnDone {
            metrics: self.metrics.clone(),
            start,
            method_slot,
            https,
            version,
            route,
            recording,
        };
        self.metrics.active(method_slot, https).add(1);
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            span,
            record: Some(record),
        }
    }
}

/// The server span's request attributes (semantic conventions), set on a recording span.
fn request_attributes<B>(
    req: &Request<B>,
    method: &'static str,
    route: &Arc<str>,
    scheme: &'static str,
    version: &'static str,
) -> impl Iterator<Item = KeyValue> {
    let owned = |key: &'static str, value: &str| KeyValue::new(key, value.to_owned());
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    [
        Some(KeyValue::new("http.request.method", method)),
        (method == "_OTHER").then(|| owned("http.request.method_original", req.method().as_str())),
        Some(KeyValue::new(
            "http.route",
            Value::String(StringValue::from(Arc::clone(route))),
        )),
        Some(owned("url.path", req.uri().path())),
        req.uri().query().map(|q| owned("url.query", q)),
        Some(KeyValue::new("url.scheme", scheme)),
        Some(KeyValue::new("network.protocol.version", version)),
        user_agent.map(|ua| owned("user_agent.original", ua)),
    ]
    .into_iter()
    .flatten()
}

/// Route templates already seen on this thread, shared by reference count so that a request's
/// `http.route` metric attribute costs no allocation; at most [`ROUTE_CACHE_SIZE`] per thread
/// (beyond that each request allocates its own).
const ROUTE_CACHE_SIZE: usize = 256;

thread_local! {
    static ROUTES: std::cell::RefCell<Vec<Arc<str>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn cached_route(route: &str) -> Arc<str> {
    ROUTES
        .try_with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(r) = cache.iter().find(|r| &***r == route) {
                return Arc::clone(r);
            }
            let r: Arc<str> = Arc::from(route);
            if cache.len() < ROUTE_CACHE_SIZE {
                cache.push(Arc::clone(&r));
            }
            r
        })
        .unwrap_or_else(|_| Arc::from(route))
}

/// Holds what the metrics need until the response is there; decrements
/// `http.server.active_requests` even when the request future is dropped (client gone).
struct RecordOnDone {
    metrics: Arc<HttpMetrics>,
    start: Instant,
    /// Index of the method in [`METHODS`].
    method_slot: usize,
    https: bool,
    version: &'static str,
    route: Arc<str>,
    /// The context of the server span when it records (a sampled trace): the outcome is set on
    /// its OpenTelemetry span directly.
    recording: Option<Context>,
}

impl RecordOnDone {
    /// Records the outcome on the OpenTelemetry span (when it records) and the duration
    /// histogram; called while the request span is entered, so the measurement carries its
    /// exemplar.
    fn finish(&self, status: Option<u16>, error_type: Option<&'static str>) {
        let seconds = self.start.elapsed().as_secs_f64();
        let server_error = status.is_some_and(|s| s >= 500);
        let error_value = || -> Option<Value> {
            match (error_type, status) {
                (Some(e), _) => Some(Value::from(e)),
                (None, Some(s)) if server_error => Some(Value::from(s.to_string())),
                _ => None,
            }
        };
        if let Some(cx) = &self.recording {
            let otel = cx.span();
            if let Some(s) = status {
                otel.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
            }
            if let Some(e) = error_value() {
                otel.set_attribute(KeyValue::new("error.type", e));
                otel.set_status(Status::error(""));
            }
        }
        let key = DurationKey {
            route: Arc::clone(&self.route),
            method_slot: self.method_slot,
            https: self.https,
            version: self.version,
            status,
            error_type,
        };
        self.metrics.record_duration(key, seconds, || {
            let mut attrs = Vec::with_capacity(6);
            attrs.extend([
                KeyValue::new("http.request.method", METHODS[self.method_slot]),
                KeyValue::new("url.scheme", if self.https { "https" } else { "http" }),
                KeyValue::new("network.protocol.version", self.version),
                KeyValue::new("http.route", Value::String(StringValue::from(Arc::clone(&self.route)))),
            ]);
            if let Some(s) = status {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
            }
            if let Some(e) = error_value() {
                attrs.push(KeyValue::new("error.type", e));
            }
            attrs
        });
    }
}

impl Drop for RecordOnDone {
    fn drop(&mut self) {
        self.metrics.active(self.method_slot, self.https).add(-1);
    }
}

pin_project! {
    /// The response future of [`HttpService`]. Each poll enters the request span once: the
    /// handler runs in it, and on completion the outcome is recorded and the handler's future
    /// dropped before the span is left (one enter and exit per poll, where an `Instrumented`
    /// future plus a separate recording step took three).
    ///
    /// Like an `async fn`, it panics when polled again after it completed.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        span: Span,
        record: Option<RecordOnDone>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                // Cancelled: the handler's future is dropped inside its span, as it ran there.
                let _entered = this.span.enter();
                this.inner.set(None);
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            panic!("spindle_instrument::http::ResponseFuture polled after completion");
        };
        let result = ready!(inner.poll(cx));
        this.inner.set(None);
        if let Some(record) = this.record.take() {
            match &result {
                Ok(resp) => record.finish(Some(resp.status().as_u16()), None),
                Err(_) => record.finish(None, Some(std::any::type_name::<E>())),
            }
        }
        Poll::Ready(result)
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent carried by W3C `traceparent`/`tracestate` headers (an empty context when
/// they are absent or malformed).
pub fn extract_context(headers: &HeaderMap) -> Context {
    match headers.get(&TRACEPARENT) {
        Some(traceparent) => extract_with(traceparent, headers),
        None => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// [`extract_context`] given the `traceparent` value: the canonical form
/// (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase, as every W3C tracer sends it) is read directly,
/// anything else by the SDK's [`TraceContextPropagator`]; the result is the same (its
/// `extract_span_context` splits, collects and parses each part through `from_str_radix`).
fn extract_with(traceparent: &HeaderValue, headers: &HeaderMap) -> Context {
    let Some((trace_id, span_id, flags)) = canonical_traceparent(traceparent.as_bytes()) else {
        return TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    };
    let trace_state = match headers.get(&TRACESTATE).and_then(|v| v.to_str().ok()) {
        Some(ts) => TraceState::from_str(ts).unwrap_or_default(),
        None => TraceState::default(),
    };
    let sc = SpanContext::new(trace_id, span_id, flags & TraceFlags::SAMPLED, true, trace_state);
    if sc.is_valid() {
        Context::current().with_remote_span_context(sc)
    } else {
        Context::current()
    }
}

/// The ids and flags of a canonical version-00 `traceparent`, or `None` for any other form.
fn canonical_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let v = value.trim_ascii();
    if v.len() != 55 || !v.starts_with(b"00-") || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = lower_hex::<16>(&v[3..35])?;
    let span_id = lower_hex::<8>(&v[36..52])?;
    let [flags] = lower_hex::<1>(&v[53..55])?;
    Some((
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::new(flags),
    ))
}

/// `2 * N` lowercase hex digits as `N` bytes (`None` for any other character).
fn lower_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    if digits.len() != 2 * N {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Writes the current span's trace context into `headers` as W3C `traceparent` and `tracestate`,
/// for an outgoing request. Call it inside the client span (see [`client_span`]).
pub fn inject_context(headers: &mut HeaderMap) {
    inject_context_from(&Span::current(), headers);
}

/// Like [`inject_context`], for the context of `span`.
pub fn inject_context_from(span: &Span, headers: &mut HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// A client span for an outgoing request (`otel.kind = client`, named after the method, with
/// `http.request.method`, `server.address`, `server.port` and `url.full`). Enter it (or
/// `.instrument` the call with it), call [`inject_context`], then [`record_response`].
pub fn client_span(method: &Method, uri: &Uri) -> Span {
    let method = method_value(method);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    tracing::info_span!(
        "HTTP client request",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        "http.request.method" = method,
        "server.address" = uri.host().unwrap_or(""),
        "server.port" = i64::from(port),
        "url.full" = %uri,
        "http.response.status_code" = Empty,
        "error.type" = Empty,
    )
}

/// Records the outcome of a client request on a [`client_span`]: the status code, and for
/// 4xx/5xx or a transport error (`status == None`) `error.type` and an error status.
pub fn record_response(span: &Span, status: Option<u16>) {
    match status {
        Some(s) => {
            span.record("http.response.status_code", i64::from(s));
            if s >= 400 {
                span.record("error.type", s.to_string().as_str());
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("error.type", "_OTHER");
            span.record("otel.status_code", "ERROR");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk_extract(headers: &HeaderMap) -> Context {
        TraceContextPropagator::new().extract(&HeaderExtractor(headers))
    }

    /// The direct reading of canonical `traceparent`s gives what the SDK's propagator gives, for
    /// canonical values and for every near miss (which go to the SDK).
    #[test]
    fn extract_matches_the_sdk_propagator() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let span = "00f067aa0ba902b7";
        let traceparents = [
            format!("00-{id}-{span}-01"),
            format!("00-{id}-{span}-00"),
            format!("00-{id}-{span}-03"),
            format!("00-{id}-{span}-ff"),
            format!(" 00-{id}-{span}-01 "),
            format!("00-{}-{span}-01", id.to_uppercase()),
            format!("00-{id}-{}-01", span.to_uppercase()),
            format!("00-{id}-{span}-0A"),
            format!("00-{}-{span}-01", "0".repeat(32)),
            format!("00-{id}-{}-01", "0".repeat(16)),
            format!("00-{id}-{span}-01-extra"),
            format!("01-{id}-{span}-01-extra"),
            format!("ff-{id}-{span}-01"),
            format!("00-{id}-{span}-0g"),
            format!("00_{id}-{span}-01"),
            format!("00-{}-{span}-01", &id[..31]),
            "00-abc-def-01".to_owned(),
            String::new(),
            "garbage".to_owned(),
        ];
        let tracestates = [None, Some("ot=th:8,vendor=x"), Some("not a tracestate"), Some("")];
        for tp in &traceparents {
            for ts in tracestates {
                let mut headers = HeaderMap::new();
                headers.insert(&TRACEPARENT, HeaderValue::from_str(tp).expect("header value"));
                if let Some(ts) = ts {
                    headers.insert(&TRACESTATE, HeaderValue::from_static(ts));
                }
                let ours = extract_context(&headers);
                let sdk = sdk_extract(&headers);
                assert_eq!(
                    ours.span().span_context(),
                    sdk.span().span_context(),
                    "traceparent {tp:?}, tracestate {ts:?}"
                );
                assert_eq!(ours.has_active_span(), sdk.has_active_span(), "{tp:?}");
            }
        }
        let canonical = format!("00-{id}-{span}-01");
        let sc = canonical_traceparent(canonical.as_bytes()).expect("canonical form read directly");
        assert_eq!(sc.0.to_string(), id);
        assert_eq!(sc.1.to_string(), span);
        assert!(canonical_traceparent(format!("00-{}-{span}-01", id.to_uppercase()).as_bytes()).is_none());
    }

    #[test]
    fn span_names_are_method_and_route() {
        assert_eq!(span_name("GET", Some("/users/{id}")), "GET /users/{id}");
        assert_eq!(span_name("_OTHER", None), "_OTHER");
    }

    #[test]
    fn method_values_follow_the_semantic_conventions() {
        assert_eq!(method_value(&Method::GET), "GET");
        assert_eq!(method_value(&Method::TRACE), "TRACE");
        let purge = Method::from_bytes(b"PURGE").expect("method");
        assert_eq!(method_value(&purge), "_OTHER");
    }
}
