//! The OTLP metric exporter of this crate: the SDK's `ResourceMetrics` go in, the exemplar store
//! turns them into an OTLP request with exemplars ([`ExemplarStore::attach`]), and the request
//! goes out over gRPC or HTTP/protobuf from the exporters' own Tokio runtime (or into an
//! [`OtlpMetricsCapture`] in tests).
//!
//! The SDK's own OTLP exporter cannot be used: it converts `ResourceMetrics` itself and the SDK
//! data points cannot carry exemplars. The request is encoded here, compressed by the transport's
//! body encoder (gzip unless `OTEL_EXPORTER_OTLP_{METRICS_,}COMPRESSION=none`) and sent through
//! the crate's [`Transport`] (shared with the spans), which retries what the OTLP specification
//! calls retryable. A failure that is final is returned to the SDK's periodic
//! reader, which logs it; the crate's log filter lets one such line through per interval
//! ([`crate::throttle`]).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use prost::Message as _;

use crate::client::ClientSettings;
use crate::exemplars::ExemplarStore;
use crate::transport::{METRICS_GRPC_PATH, RETRY, RetryPolicy, Transport};

/// Collects the OTLP metric requests this crate would send, exemplars included, instead of
/// sending them; for tests ([`crate::Builder::with_otlp_metrics_capture`]).
#[derive(Debug, Clone, Default)]
pub struct OtlpMetricsCapture {
    requests: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

impl OtlpMetricsCapture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// The requests captured so far, oldest first.
    pub fn requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Where the metric exporter's requests go.
pub(crate) enum MetricsTarget {
    /// Sent through the transport, from the exporters' runtime.
    Send(Transport, tokio::runtime::Handle),
    /// Kept for tests.
    Capture(OtlpMetricsCapture),
}

pub(crate) struct OtlpMetricExporter {
    store: Arc<ExemplarStore>,
    target: MetricsTarget,
    retry: RetryPolicy,
}

impl fmt::Debug for OtlpMetricExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtlpMetricExporter")
    }
}

impl OtlpMetricExporter {
    pub(crate) fn new(store: Arc<ExemplarStore>, target: MetricsTarget) -> Self {
        Self {
            store,
            target,
            retry: RETRY,
        }
    }

    /// The same exporter with another retry policy (tests).
    #[cfg(test)]
    pub(crate) fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// A gRPC target at `endpoint`, with the TLS settings, headers and compression of
    /// `settings`; must be called inside `runtime`.
    pub(crate) fn grpc(
        endpoint: &str,
        settings: &ClientSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<MetricsTarget, String> {
        Ok(MetricsTarget::Send(
            Transport::grpc(endpoint, METRICS_GRPC_PATH, settings)?,
            runtime,
        ))
    }

    /// An HTTP/protobuf target posting to `url`, with the TLS settings, headers and compression
    /// of `settings`.
    pub(crate) fn http(
        url: &str,
        settings: &ClientSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<MetricsTarget, String> {
        Ok(MetricsTarget::Send(Transport::http(url, settings)?, runtime))
    }
}

impl PushMetricExporter for OtlpMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let request = self.store.attach(metrics);
        let (transport, rt) = match &self.target {
            MetricsTarget::Capture(c) => {
                c.requests.lock().unwrap_or_else(PoisonError::into_inner).push(request);
                return Ok(());
            }
            MetricsTarget::Send(transport, rt) => (transport.clone(), rt),
        };
        let kind = transport.kind();
        // One export per interval: a gzip compressor is not worth keeping between them.
        let body = transport
            .encoder()
            .encode_vec(request.encode_to_vec())
            .map_err(|e| OTelSdkError::InternalFailure(format!("{kind} metrics export: gzip: {e}")))?;
        let policy = self.retry;
        rt.spawn(async move { transport.send(body, policy).await.map(drop) })
            .await
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?
            .map_err(|e| OTelSdkError::InternalFailure(format!("{kind} metrics export: {e}")))
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{HeaderMap, StatusCode};
    use prost::Message as _;

    use super::*;
    use crate::exemplars::ExemplarFilter;

    const FAST: RetryPolicy = RetryPolicy {
        max_retries: 3,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_jitter: Duration::from_millis(5),
    };

    /// A request's `Content-Encoding` and body.
    type Body = (Option<String>, Vec<u8>);

    #[derive(Clone, Default)]
    struct Seen {
        calls: Arc<AtomicUsize>,
        bodies: Arc<Mutex<Vec<Body>>>,
    }

    /// An OTLP/HTTP receiver answering `statuses` in turn (then 200), recording each body.
    async fn receiver(statuses: Vec<(u16, Option<&'static str>)>) -> (String, Seen) {
        let seen = Seen::default();
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/v1/metrics",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                let statuses = statuses.clone();
                async move {
                    let n = s.calls.fetch_add(1, Ordering::SeqCst);
                    let enc = headers
                        .get("content-encoding")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    s.bodies
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((enc, body.to_vec()));
                    let (code, retry_after) = statuses.get(n).copied().unwrap_or((200, None));
                    let mut headers = HeaderMap::new();
                    if let Some(ra) = retry_after {
                        headers.insert("retry-after", ra.parse().unwrap_or_else(|_| unreachable!()));
                    }
                    (StatusCode::from_u16(code).unwrap_or(StatusCode::OK), headers, "answer")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1/metrics"), seen)
    }

    fn exporter(url: &str) -> OtlpMetricExporter {
        let store = Arc::new(ExemplarStore::new(ExemplarFilter::TraceBased));
        let transport = OtlpMetricExporter::http(url, &ClientSettings::default(), tokio::runtime::Handle::current())
            .expect("transport");
        OtlpMetricExporter::new(store, transport).with_retry_policy(FAST)
    }

    fn gunzip(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .expect("a gzip body");
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_export_is_gzipped_and_retries_retryable_answers() {
        let (url, seen) = receiver(vec![(503, None), (429, Some("0")), (502, None)]).await;
        let exp = exporter(&url);
        exp.export(&ResourceMetrics::default())
            .await
            .expect("the fourth attempt succeeds");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 4);
        for (enc, body) in seen.bodies.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            assert_eq!(enc.as_deref(), Some("gzip"));
            ExportMetricsServiceRequest::decode(gunzip(body).as_slice()).expect("an OTLP request inside");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_export_gives_up_after_the_retries_and_never_retries_a_bad_request() {
        let (url, seen) = receiver(vec![(503, None); 10]).await;
        let err = exporter(&url)
            .export(&ResourceMetrics::default())
            .await
            .expect_err("always 503");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 4, "one attempt and three retries");
        assert!(err.to_string().contains("after 4 attempts"), "{err}");

        let (url, seen) = receiver(vec![(400, None)]).await;
        let err = exporter(&url)
            .export(&ResourceMetrics::default())
            .await
            .expect_err("400");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 1, "a bad request is final");
        assert!(err.to_string().contains("400"), "{err}");

        let (url, seen) = receiver(vec![(503, Some("3600"))]).await;
        exporter(&url)
            .export(&ResourceMetrics::default())
            .await
            .expect_err("throttled for an hour");
        assert_eq!(
            seen.calls.load(Ordering::SeqCst),
            1,
            "a delay past MAX_THROTTLE ends the export"
        );
    }

    #[tokio::test]
    async fn connection_errors_are_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let started = std::time::Instant::now();
        let err = exporter(&format!("http://127.0.0.1:{port}/v1/metrics"))
            .export(&ResourceMetrics::default())
            .await
            .expect_err("nobody listens");
        assert!(err.to_string().contains("after 4 attempts"), "{err}");
        assert!(
            started.elapsed() >= Duration::from_millis(10 + 20 + 40),
            "backoff between attempts"
        );
    }
}
