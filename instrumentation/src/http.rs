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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use opentelemetry::metrics::{Histogram, Meter, UpDownCounter};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
            metrics: Arc::new(HttpMetrics { duration, active }),
        }
    }
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

/// The semantic-convention method value (`_OTHER` for methods outside the known set).
fn method_value(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
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

struct SpanName<'a>(&'static str, Option<&'a str>);

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(route) => write!(f, "{} {route}", self.0),
            None => f.write_str(self.0),
        }
    }
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
        let method = method_value(req.method());
        let matched = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let route = matched.unwrap_or(UNMATCHED_ROUTE);
        let scheme = if req.uri().scheme_str() == Some("https") {
            "https"
        } else {
            "http"
        };
        let version = version_value(req.version());

        let span = tracing::info_span!(
            "HTTP request",
            otel.name = %SpanName(method, matched),
            otel.kind = "server",
            otel.status_code = Empty,
            "http.request.method" = method,
            "http.request.method_original" = Empty,
            "http.route" = route,
            "url.path" = req.uri().path(),
            "url.query" = Empty,
            "url.scheme" = scheme,
            "network.protocol.version" = version,
            "user_agent.original" = Empty,
            "http.response.status_code" = Empty,
            "error.type" = Empty,
        );
        if !span.is_disabled() {
            if method == "_OTHER" {
                span.record("http.request.method_original", req.method().as_str());
            }
            if let Some(q) = req.uri().query() {
                span.record("url.query", q);
            }
            if let Some(ua) = req
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
            {
                span.record("user_agent.original", ua);
            }
            if req.headers().contains_key("traceparent") {
                // Fails only when no OpenTelemetry layer is installed; then there is no trace.
                let _ = span.set_parent(extract_context(req.headers()));
            }
        }

        let record = RecordOnDone {
            metrics: self.metrics.clone(),
            start,
            method,
            scheme,
            version,
            route: cached_route(route),
        };
        self.metrics.active.add(1, &record.active_attributes());
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            span,
            record: Some(record),
        }
    }
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
    method: &'static str,
    scheme: &'static str,
    version: &'static str,
    route: Arc<str>,
}

impl RecordOnDone {
    fn active_attributes(&self) -> [KeyValue; 2] {
        [
            KeyValue::new("http.request.method", self.method),
            KeyValue::new("url.scheme", self.scheme),
        ]
    }

    /// Records the outcome on the span and the duration histogram; called while the request
    /// span is entered, so the measurement carries its exemplar.
    fn finish(&self, span: &Span, status: Option<u16>, error_type: Option<&'static str>) {
        let seconds = self.start.elapsed().as_secs_f64();
        let server_error = status.is_some_and(|s| s >= 500);
        let error_type: Option<Value> = match (error_type, status) {
            (Some(e), _) => Some(Value::from(e)),
            (None, Some(s)) if server_error => Some(Value::from(s.to_string())),
            _ => None,
        };
        if !span.is_disabled() {
            if let Some(s) = status {
                span.record("http.response.status_code", i64::from(s));
            }
            if let Some(e) = &error_type {
                span.record("error.type", e.as_str().as_ref());
                span.record("otel.status_code", "ERROR");
            }
        }
        let mut n = 4;
        let mut attrs = [
            KeyValue::new("http.request.method", self.method),
            KeyValue::new("url.scheme", self.scheme),
            KeyValue::new("network.protocol.version", self.version),
            KeyValue::new("http.route", Value::String(StringValue::from(Arc::clone(&self.route)))),
            KeyValue::new("http.response.status_code", 0_i64),
            KeyValue::new("error.type", ""),
        ];
        if let Some(s) = status {
            attrs[n] = KeyValue::new("http.response.status_code", i64::from(s));
            n += 1;
        }
        if let Some(e) = error_type {
            attrs[n] = KeyValue::new("error.type", e);
            n += 1;
        }
        self.metrics.duration.record(seconds, &attrs[..n]);
    }
}

impl Drop for RecordOnDone {
    fn drop(&mut self) {
        self.metrics.active.add(-1, &self.active_attributes());
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
                Ok(resp) => record.finish(this.span, Some(resp.status().as_u16()), None),
                Err(_) => record.finish(this.span, None, Some(std::any::type_name::<E>())),
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
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
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
