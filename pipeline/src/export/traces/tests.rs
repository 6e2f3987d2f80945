//! Tests of the trace exporter's own parts: batching by concatenating encoded requests, what the
//! queue counts for a request, the typed refusals, and reading OTLP answers.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::*;
use crate::export::sender::MemoryQueue;
use crate::testing::kv;

/// A request of `n` spans from service `svc`, span ids starting at `first`.
fn request(svc: &str, first: u64, n: u64) -> ExportTraceServiceRequest {
    let spans = (first..first + n)
        .map(|i| Span {
            trace_id: vec![9; 16],
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: format!("op {i}"),
            attributes: vec![kv("i", i.to_string())],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", svc)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn exporter(capacity: u64) -> TraceExporter {
    TraceExporter {
        queue: Arc::new(MemoryQueue::new(capacity)),
        stats: ExporterStats::default(),
    }
}

#[test]
fn a_batch_of_concatenated_requests_decodes_to_the_same_spans_in_order() {
    let ex = exporter(1 << 20);
    let reqs = [request("a", 0, 3), request("b", 3, 2), request("c", 5, 4)];
    ex.try_enqueue(reqs[0].clone(), 3, Samples::default()).unwrap();
    // Bytes a receiver was sent go in as they are.
    ex.try_enqueue_encoded(Bytes::from(reqs[1].encode_to_vec()), 2, Samples::default())
        .unwrap();
    ex.try_enqueue(reqs[2].clone(), 4, Samples::default()).unwrap();
    let batch = ex.queue.pop(u64::MAX).unwrap();
    assert_eq!(batch.payloads.len(), 3, "one batch");
    // What the client sends: the bodies back to back.
    let body: Vec<u8> = batch.payloads.iter().flat_map(|p| p.body.iter().copied()).collect();
    let got = ExportTraceServiceRequest::decode(&body[..]).expect("a valid request");
    let want = ExportTraceServiceRequest {
        resource_spans: reqs.iter().flat_map(|r| r.resource_spans.clone()).collect(),
    };
    assert_eq!(got, want, "every resource's spans, in the order they were queued");
}

#[test]
fn the_queue_counts_the_encoded_body_the_exemplars_and_the_slot() {
    let ex = exporter(1 << 20);
    let req = request("a", 0, 10);
    let encoded = req.encoded_len() as u64;
    let mut exemplars = Samples::default();
    exemplars.text.reserve(1000);
    let extra = samples_heap_bytes(&exemplars);
    assert!(extra >= 1000);
    ex.try_enqueue(req, 10, exemplars).unwrap();
    let slot = size_of::<Payload<Samples>>() as u64;
    assert_eq!(ex.queue.bytes(), encoded + extra + slot);
    assert_eq!(ex.stats.queue_bytes(), ex.queue.bytes(), "reported as it changes");
    assert_eq!(ex.queue.queued_items(), 10);
}

#[test]
fn a_full_or_closed_queue_refuses_with_typed_errors_and_queues_nothing() {
    let one = request("a", 0, 10);
    let ex = exporter(one.encoded_len() as u64 + size_of::<Payload<Samples>>() as u64);
    ex.try_enqueue(one.clone(), 10, Samples::default()).unwrap();
    assert_eq!(
        ex.try_enqueue(request("b", 0, 1), 1, Samples::default()),
        Err(PushError::Full)
    );
    assert_eq!(ex.queue.queued_items(), 10);
    assert_eq!(ex.abandon(), 10, "an aborted worker's queue is counted as dropped");
    assert_eq!(ex.stats.dropped_total(DropReason::Shutdown), 10);
    assert_eq!(ex.try_enqueue(one, 10, Samples::default()), Err(PushError::Closed));
    assert_eq!(ex.abandon(), 0, "counted once");
}

#[test]
fn otlp_answers_name_rejected_spans_and_retryable_statuses() {
    let ok = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 4,
            error_message: "too old".into(),
        }),
    };
    assert_eq!(rejected_spans(&ok.encode_to_vec()), 4);
    assert_eq!(rejected_spans(b""), 0, "an empty answer rejects nothing");
    assert_eq!(rejected_spans(b"\xff\xff"), 0, "nor does one that cannot be read");
    for s in [429, 502, 503, 504] {
        assert!((ANSWERS.http_retryable)(s), "{s}");
    }
    for s in [400, 401, 404, 413, 500] {
        assert!(!(ANSWERS.http_retryable)(s), "{s}");
    }
}

#[test]
fn http_endpoints_without_a_path_get_v1_traces() {
    assert_eq!(http_url("http://h:4318").unwrap(), "http://h:4318/v1/traces");
    assert_eq!(http_url("http://h:4318/").unwrap(), "http://h:4318/v1/traces");
    assert_eq!(http_url("http://h:4318/custom").unwrap(), "http://h:4318/custom");
    assert!(matches!(http_url("http://bad host"), Err(BuildError::Endpoint(..))));
}

/// A backend over gRPC (tonic, accepting gzip and zstd) and over HTTP (`Content-Encoding` decoded
/// here): it records each request's encoding and the spans, decoded.
mod backend {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use parking_lot::Mutex;
    use prost::Message;
    use tonic::codec::CompressionEncoding;

    /// (`grpc-encoding` or `Content-Encoding`, the request decoded).
    pub(super) type Seen = Arc<Mutex<Vec<(String, ExportTraceServiceRequest)>>>;

    #[derive(Clone, Default)]
    struct Grpc(Seen);

    #[tonic::async_trait]
    impl TraceService for Grpc {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            // Read off the request headers by the layer below and put in the extensions.
            let encoding = req
                .extensions()
                .get::<Encoding>()
                .map(|e| e.0.clone())
                .unwrap_or_default();
            self.0.lock().push((encoding, req.into_inner()));
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    #[derive(Clone)]
    struct Encoding(String);

    pub(super) async fn grpc() -> (String, Seen) {
        let seen = Seen::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = TraceServiceServer::new(Grpc(seen.clone()))
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        let record = tower::util::MapRequestLayer::new(|mut req: http::Request<tonic::body::Body>| {
            let e = req
                .headers()
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("identity")
                .to_string();
            req.extensions_mut().insert(Encoding(e));
            req
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(record)
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{addr}"), seen)
    }

    pub(super) async fn http() -> (String, Seen) {
        let seen = Seen::default();
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    let encoding = headers
                        .get("content-encoding")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("identity")
                        .to_string();
                    let raw = match encoding.as_str() {
                        "gzip" => {
                            let mut out = Vec::new();
                            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out).unwrap();
                            out
                        }
                        "zstd" => zstd::decode_all(&body[..]).unwrap(),
                        _ => body.to_vec(),
                    };
                    s.lock()
                        .push((encoding, ExportTraceServiceRequest::decode(&raw[..]).unwrap()));
                    ExportTraceServiceResponse::default().encode_to_vec()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_compression_and_level_reaches_a_real_backend_over_grpc_and_http() {
    use crate::config::types::DurationStr;
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (endpoint, seen) = match protocol {
            OtlpProtocol::Grpc => backend::grpc().await,
            OtlpProtocol::HttpProtobuf => backend::http().await,
        };
        let cases = [
            (Compression::Gzip, None, "gzip"),
            (Compression::Gzip, Some(9), "gzip"),
            (Compression::Zstd, None, "zstd"),
            (Compression::Zstd, Some(19), "zstd"),
            (Compression::None, None, "identity"),
        ];
        for (i, (compression, level, encoding)) in cases.into_iter().enumerate() {
            let config = OtlpExporterConfig {
                endpoint: Some(endpoint.clone()),
                protocol,
                compression,
                compression_level: level,
                batch_timeout: DurationStr(std::time::Duration::from_millis(10)),
                ..Default::default()
            };
            let drain = CancellationToken::new();
            let (ex, worker) = spawn(
                &config,
                &endpoint,
                ExporterStats::default(),
                Box::new(|_| {}),
                drain.clone(),
                None,
            )
            .unwrap();
            let req = request(&format!("svc-{i}"), 0, 50);
            ex.try_enqueue(req.clone(), 50, Samples::default()).unwrap();
            drain.cancel();
            worker.await.unwrap();
            let got = seen.lock().pop();
            let case = format!("{protocol:?} {compression:?} level {level:?}");
            assert_eq!(got, Some((encoding.to_string(), req)), "{case}");
            assert_eq!(ex.stats.sent_total(), 50, "{case}");
        }
    }
}
