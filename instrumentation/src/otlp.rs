//! The OTLP metric exporter of this crate: the SDK's `ResourceMetrics` go in, the exemplar store
//! turns them into an OTLP request with exemplars ([`ExemplarStore::attach`]), and the request
//! goes out over gRPC or HTTP/protobuf from the exporters' own Tokio runtime (or into an
//! [`OtlpMetricsCapture`] in tests).
//!
//! The SDK's own OTLP exporter cannot be used: it converts `ResourceMetrics` itself and the SDK
//! data points cannot carry exemplars.

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

use crate::exemplars::ExemplarStore;

/// Time allowed for one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

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
    Grpc(MetricsServiceClient<Channel>, tokio::runtime::Handle),
    Http(reqwest::Client, String, tokio::runtime::Handle),
    Capture(OtlpMetricsCapture),
}

pub(crate) struct OtlpMetricExporter {
    store: Arc<ExemplarStore>,
    transport: Transport,
}

impl fmt::Debug for OtlpMetricExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtlpMetricExporter")
    }
}

impl OtlpMetricExporter {
    pub(crate) fn new(store: Arc<ExemplarStore>, transport: Transport) -> Self {
        Self { store, transport }
    }

    /// A gRPC transport to `endpoint`; must be called inside `runtime`.
    pub(crate) fn grpc(endpoint: &str, runtime: tokio::runtime::Handle) -> Result<Transport, String> {
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|e| e.to_string())?
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        Ok(Transport::Grpc(MetricsServiceClient::new(channel), runtime))
    }

    /// An HTTP/protobuf transport posting to `url`.
    pub(crate) fn http(url: &str, runtime: tokio::runtime::Handle) -> Result<Transport, String> {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Transport::Http(client, url.to_owned(), runtime))
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
            Transport::Grpc(client, rt) => {
                let mut client = client.clone();
                rt.spawn(async move { client.export(request).await.map(|_| ()) })
                    .await
                    .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?
                    .map_err(|status| OTelSdkError::InternalFailure(format!("OTLP/gRPC metrics export: {status}")))
            }
            Transport::Http(client, url, rt) => {
                let body = request.encode_to_vec();
                let req = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(body);
                rt.spawn(async move {
                    let resp = req.send().await.map_err(|e| e.to_string())?;
                    if resp.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("HTTP {}", resp.status()))
                    }
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
