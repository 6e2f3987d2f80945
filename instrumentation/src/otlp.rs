//! The OTLP metric exporter of this crate: the SDK's `ResourceMetrics` go in, the exemplar store
//! turns them into an OTLP request with exemplars ([`ExemplarStore::attach`]), and the request
//! goes out over gRPC or HTTP/protobuf from the exporters' own Tokio runtime (or into an
//! [`OtlpMetricsCapture`] in tests).
//!
//! The SDK's own OTLP exporter cannot be used: it converts `ResourceMetrics` itself and the SDK
//! data points cannot carry exemplars. Like it, this one compresses every request with gzip and
//! retries what the OTLP specification calls retryable (gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED`
//! with `RetryInfo`, …; HTTP 429, 502, 503, 504 and connection errors) with exponential backoff and
//! jitter ([`RETRY`]), waiting at least the server's `Retry-After` / `RetryInfo` delay. A failure
//! that is final is returned to the SDK's periodic reader, which logs it; the crate's log filter lets
//! one such line through per interval ([`crate::throttle`]).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use prost::Message as _;
use tonic::transport::Channel;

use crate::client::{ClientSettings, Headers};
use crate::exemplars::ExemplarStore;

/// The retry policy of the metric export: the SDK exporter's recommended one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Attempts after the first.
    pub(crate) max_retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub(crate) initial_delay: Duration,
    /// Largest backoff delay (a server's throttling delay may exceed it, up to [`MAX_THROTTLE`]).
    pub(crate) max_delay: Duration,
    /// Up to this much random delay is added to each backoff delay.
    pub(crate) max_jitter: Duration,
}

/// 3 retries, 100 ms doubling to at most 1.6 s, up to 100 ms of jitter (the SDK exporter's
/// `RetryPolicy::recommended()`).
pub(crate) const RETRY: RetryPolicy = RetryPolicy {
    max_retries: 3,
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_millis(1600),
    max_jitter: Duration::from_millis(100),
};

/// The longest server-requested delay honoured before a retry; longer requests end the export
/// (the next periodic export sends the same cumulative values anyway).
const MAX_THROTTLE: Duration = Duration::from_secs(5);

/// How one failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Not retryable.
    Never,
    /// Retry after the backoff delay.
    Backoff,
    /// Retry after at least this delay, requested by the server.
    After(Duration),
}

fn classify_grpc(status: &tonic::Status) -> Retry {
    use tonic_types::StatusExt as _;
    let delay = status.get_details_retry_info().and_then(|r| r.retry_delay);
    match status.code() {
        tonic::Code::ResourceExhausted => delay.map_or(Retry::Never, Retry::After),
        tonic::Code::Unavailable => delay.filter(|d| !d.is_zero()).map_or(Retry::Backoff, Retry::After),
        tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Aborted
        | tonic::Code::OutOfRange
        | tonic::Code::DataLoss => Retry::Backoff,
        _ => Retry::Never,
    }
}

fn classify_http(status: u16, retry_after: Option<&str>) -> Retry {
    match status {
        429 | 503 => retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Retry::Backoff, |s| Retry::After(Duration::from_secs(s))),
        502 | 504 => Retry::Backoff,
        _ => Retry::Never,
    }
}

/// Up to `max` of jitter, from the clock's nanoseconds (no randomness crate needed for this).
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let max_nanos = max.as_nanos().max(1);
    Duration::from_nanos((u128::from(nanos) % max_nanos) as u64)
}

/// Runs `attempt` until it succeeds, fails for good, or the policy's retries are spent; the error
/// of the last attempt is returned, with how many attempts were made.
async fn with_retry<F, Fut>(policy: RetryPolicy, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), (Retry, String)>>,
{
    let mut delay = policy.initial_delay;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let (retry, error) = match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let wait = match retry {
            Retry::Never => None,
            Retry::Backoff => Some(delay + jitter(policy.max_jitter)),
            Retry::After(d) if d <= MAX_THROTTLE => Some(d.max(delay) + jitter(policy.max_jitter)),
            Retry::After(_) => None,
        };
        match wait {
            Some(wait) if tries <= policy.max_retries => {
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(policy.max_delay);
            }
            _ => {
                return Err(if tries > 1 {
                    format!("{error} (after {tries} attempts)")
                } else {
                    error
                });
            }
        }
    }
}

fn gzip(body: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::fast());
    enc.write_all(body).map_err(|e| e.to_string())?;
    enc.finish().map_err(|e| e.to_string())
}

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

pub(crate) enum Transport {
    Grpc(MetricsServiceClient<Channel>, Headers, tokio::runtime::Handle),
    Http(reqwest::Client, String, Headers, tokio::runtime::Handle),
    Capture(OtlpMetricsCapture),
}

pub(crate) struct OtlpMetricExporter {
    store: Arc<ExemplarStore>,
    transport: Transport,
    retry: RetryPolicy,
}

impl fmt::Debug for OtlpMetricExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtlpMetricExporter")
    }
}

impl OtlpMetricExporter {
    pub(crate) fn new(store: Arc<ExemplarStore>, transport: Transport) -> Self {
        Self {
            store,
            transport,
            retry: RETRY,
        }
    }

    /// The same exporter with another retry policy (tests).
    #[cfg(test)]
    pub(crate) fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// A gRPC transport to `endpoint`, with the TLS settings and headers of `settings`; must be
    /// called inside `runtime`.
    pub(crate) fn grpc(
        endpoint: &str,
        settings: &ClientSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Transport, String> {
        let channel = settings.grpc_channel(endpoint)?;
        let client = MetricsServiceClient::new(channel).send_compressed(tonic::codec::CompressionEncoding::Gzip);
        Ok(Transport::Grpc(client, settings.headers.clone(), runtime))
    }

    /// An HTTP/protobuf transport posting to `url`, with the TLS settings and headers of
    /// `settings`.
    pub(crate) fn http(
        url: &str,
        settings: &ClientSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Transport, String> {
        let client = settings.http_client()?;
        Ok(Transport::Http(
            client,
            url.to_owned(),
            settings.headers.clone(),
            runtime,
        ))
    }
}

impl PushMetricExporter for OtlpMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let request = self.store.attach(metrics);
        match &self.transport {
            Transport::Capture(c) => {
                c.requests.lock().unwrap_or_else(PoisonError::into_inner).push(request);
                Ok(())
            }
            Transport::Grpc(client, headers, rt) => {
                let client = client.clone();
                let headers = headers.clone();
                let policy = self.retry;
                rt.spawn(async move {
                    with_retry(policy, || {
                        let mut client = client.clone();
                        let mut request = tonic::Request::new(request.clone());
                        headers.apply_metadata(request.metadata_mut());
                        async move {
                            client
                                .export(request)
                                .await
                                .map(|_| ())
                                .map_err(|status| (classify_grpc(&status), status.to_string()))
                        }
                    })
                    .await
                })
                .await
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?
                .map_err(|e| OTelSdkError::InternalFailure(format!("OTLP/gRPC metrics export: {e}")))
            }
            Transport::Http(client, url, headers, rt) => {
                let body = gzip(&request.encode_to_vec())
                    .map_err(|e| OTelSdkError::InternalFailure(format!("OTLP/HTTP metrics export: gzip: {e}")))?;
                let body = bytes::Bytes::from(body);
                let client = client.clone();
                let url = url.clone();
                let mut extra = http::HeaderMap::new();
                headers.apply(&mut extra);
                let policy = self.retry;
                rt.spawn(async move {
                    with_retry(policy, || {
                        let req = client
                            .post(url.as_str())
                            .headers(extra.clone())
                            .header("content-type", "application/x-protobuf")
                            .header("content-encoding", "gzip")
                            .body(body.clone());
                        async move {
                            let resp = req.send().await.map_err(|e| (Retry::Backoff, e.to_string()))?;
                            let status = resp.status();
                            if status.is_success() {
                                return Ok(());
                            }
                            let retry_after = resp
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let retry = classify_http(status.as_u16(), retry_after.as_deref());
                            let text = resp.text().await.unwrap_or_default();
                            let text: String = text.chars().take(200).collect();
                            Err((retry, format!("HTTP {status}: {}", text.trim())))
                        }
                    })
                    .await
                })
                .await
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?
                .map_err(|e| OTelSdkError::InternalFailure(format!("OTLP/HTTP metrics export: {e}")))
            }
        }
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

    #[test]
    fn grpc_codes_follow_the_otlp_retry_rules() {
        assert_eq!(classify_grpc(&tonic::Status::unavailable("down")), Retry::Backoff);
        assert_eq!(classify_grpc(&tonic::Status::resource_exhausted("full")), Retry::Never);
        assert_eq!(classify_grpc(&tonic::Status::invalid_argument("bad")), Retry::Never);
        assert_eq!(classify_grpc(&tonic::Status::deadline_exceeded("slow")), Retry::Backoff);
        assert_eq!(classify_http(503, Some("2")), Retry::After(Duration::from_secs(2)));
        assert_eq!(classify_http(404, None), Retry::Never);
    }
}
