//! OTLP/HTTP receiver: `POST /v1/metrics` and `POST /v1/traces`, protobuf or JSON bodies,
//! gzip/zstd request compression. Responses (success and error) use the request's encoding; errors
//! carry a `google.rpc.Status` body.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;

use super::decode::{self, DecodeError, Encoding};
use super::status::{RETRY_AFTER, Refusal};
use super::{Consumer, Export, Shared};
use crate::model::{Protocol, Signal};

/// The OTLP/HTTP routes, ready to serve or to test with `oneshot`.
pub fn router<C: Consumer>(shared: Shared<C>) -> Router {
    Router::new()
        .route("/v1/metrics", post(metrics::<C>))
        .route("/v1/traces", post(traces::<C>))
        .with_state(shared)
}

async fn metrics<C: Consumer>(State(s): State<Shared<C>>, headers: HeaderMap, body: Body) -> Response {
    handle::<C, ExportMetricsServiceRequest>(&s, &headers, body).await
}

async fn traces<C: Consumer>(State(s): State<Shared<C>>, headers: HeaderMap, body: Body) -> Response {
    handle::<C, ExportTraceServiceRequest>(&s, &headers, body).await
}

/// Reads and decompresses the body, hands it to [`Shared::export`], and encodes the answer.
async fn handle<C: Consumer, R: Export>(s: &Shared<C>, headers: &HeaderMap, body: Body) -> Response {
    let signal = R::SIGNAL;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    // The token is checked on the headers, before anything is read or decoded.
    let scope = match s.authenticate(headers, signal, Protocol::Http) {
        Ok(scope) => scope,
        Err(r) => return error_response(Encoding::from_content_type(ct).unwrap_or(Encoding::Json), &r),
    };
    let encoding = match Encoding::from_content_type(ct) {
        Ok(e) => e,
        Err(e) => return refuse(s, signal, Encoding::Json, Refusal::Decode(e)),
    };
    let limit = s.max_request_size;
    let raw = match axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await {
        Ok(b) => b,
        Err(e) if caused_by::<crate::server::BodyTimeout>(&e) => {
            // The listener answers 408 and counts it (`spindle_connections_closed_total`); the
            // request was not malformed.
            return StatusCode::REQUEST_TIMEOUT.into_response();
        }
        Err(e) => {
            let err = if caused_by::<http_body_util::LengthLimitError>(&e) {
                DecodeError::TooLarge {
                    limit,
                    decompressed: false,
                }
            } else {
                DecodeError::Protobuf(format!("could not read request body: {e}"))
            };
            return refuse(s, signal, encoding, Refusal::Decode(err));
        }
    };
    let ce = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let body = match decode::decompress(raw, ce, limit) {
        Ok(b) => b,
        Err(e) => return refuse(s, signal, encoding, Refusal::Decode(e)),
    };
    match s.export_as::<R>(body, encoding, Protocol::Http, &scope).await {
        Ok(resp) => encode(StatusCode::OK, encoding, &resp),
        // Already counted by `Shared`.
        Err(r) => error_response(encoding, &r),
    }
}

/// Whether `E` is somewhere in the error's source chain.
fn caused_by<E: std::error::Error + 'static>(e: &axum::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if err.is::<E>() {
            return true;
        }
        src = err.source();
    }
    false
}

fn refuse<C: Consumer>(s: &Shared<C>, signal: Signal, encoding: Encoding, r: Refusal) -> Response {
    s.refused(signal, Protocol::Http, &r);
    error_response(encoding, &r)
}

fn error_response(encoding: Encoding, r: &Refusal) -> Response {
    let st = tonic_types::Status {
        code: r.grpc_code() as i32,
        message: r.to_string(),
        details: Vec::new(),
    };
    let mut resp = match encoding {
        Encoding::Protobuf => (r.http_status(), st.encode_to_vec()).into_response(),
        Encoding::Json => {
            let body = serde_json::json!({ "code": st.code, "message": st.message }).to_string();
            (r.http_status(), body).into_response()
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    if r.retryable() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER.as_secs()));
    }
    if matches!(r, Refusal::Unauthenticated) {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn encode<M: Message + Serialize>(status: StatusCode, encoding: Encoding, msg: &M) -> Response {
    let body = match encoding {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json => {
            // Absent optional fields are left out rather than written as `null`.
            let mut v = serde_json::to_value(msg).unwrap_or_default();
            if let serde_json::Value::Object(m) = &mut v {
                m.retain(|_, x| !x.is_null());
            }
            serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec())
        }
    };
    (status, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::model::Outcome;
    use crate::telemetry::Telemetry;

    #[derive(Debug)]
    struct Accept;

    impl Consumer for Accept {
        fn consume_metrics(&self, _: ExportMetricsServiceRequest) -> Result<Outcome, Refusal> {
            Ok(Outcome {
                accepted: 1,
                ..Default::default()
            })
        }
        fn consume_traces(&self, _: ExportTraceServiceRequest) -> Result<Outcome, Refusal> {
            Ok(Outcome::default())
        }
    }

    #[tokio::test]
    async fn overload_is_retryable_503_with_retry_after_and_counted() {
        let telemetry = Arc::new(Telemetry::default());
        let shared = Shared::new(Arc::new(Accept), 1000, 1000, telemetry.receiver.clone());
        // Another request holds the whole in-flight budget.
        let held = shared.admit(1000).unwrap();
        let body = bytes::Bytes::from(ExportMetricsServiceRequest::default().encode_to_vec());
        let req = || {
            Request::post("/v1/metrics")
                .header("content-type", "application/x-protobuf")
                .body(Body::from(body.clone()))
                .unwrap()
        };
        let resp = router(shared.clone()).oneshot(req()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let st = tonic_types::Status::decode(axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
        assert!(st.message.contains("overloaded"), "{}", st.message);
        assert_eq!(st.code, tonic::Code::ResourceExhausted as i32);
        let mut text = String::new();
        telemetry.render(crate::model::Format::Text, 0, &mut text);
        assert!(text.contains("protocol=\"http\",reason=\"overloaded\"} 1"), "{text}");

        // The same refusal over gRPC carries RetryInfo.
        let err = shared
            .export::<ExportMetricsServiceRequest>(body.clone(), Encoding::Protobuf, Protocol::Grpc)
            .await
            .unwrap_err();
        assert_eq!(err.grpc_status().code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt;
        assert!(err.grpc_status().get_details_retry_info().is_some());

        // Once the budget frees up, requests are admitted again.
        drop(held);
        let resp = router(shared).oneshot(req()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
