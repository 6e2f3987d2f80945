//! The one place where errors become gRPC codes and HTTP statuses.
//!
//! Error classes (as in the OTLP spec): permanent (malformed, unsupported, too large) are never
//! retried; "overloaded" is retryable and carries a retry delay (gRPC `RetryInfo`, HTTP
//! `Retry-After`).

use std::time::Duration;

use http::StatusCode;
use tonic_types::{ErrorDetails, StatusExt};

use super::decode::DecodeError;
use super::stats::RefusalReason;
use crate::export::sender::PushError;

/// Delay clients are asked to wait before retrying an overloaded request.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The body could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Too much data is in flight; the client should retry later.
    #[error("Spindle is overloaded ({0}); retry later")]
    Overloaded(&'static str),
    /// No bearer token, or a wrong one (checked on the headers, before the body is read).
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// The token may write none of the request's services (the message names them).
    #[error("{0}")]
    PermissionDenied(String),
}

/// A queue that refused a request is "overloaded" (retryable). Receivers push only into the
/// trace exporter's queue (through the pipeline), so the message names it.
impl From<PushError> for Refusal {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Full => Refusal::Overloaded("trace export queue is full"),
            PushError::Closed => Refusal::Overloaded("trace exporter is shutting down"),
            PushError::Unwritable => Refusal::Overloaded("trace export queue cannot write to disk"),
        }
    }
}

impl Refusal {
    /// A closed-set reason, used as the `reason` label of `spindle_refused_requests_total`.
    pub fn reason(&self) -> RefusalReason {
        match self {
            Refusal::Decode(DecodeError::TooLarge { .. } | DecodeError::DecodedTooLarge { .. }) => {
                RefusalReason::TooLarge
            }
            Refusal::Decode(DecodeError::Corrupt { .. }) => RefusalReason::CorruptCompression,
            Refusal::Decode(DecodeError::UnsupportedEncoding(_)) => RefusalReason::UnsupportedEncoding,
            Refusal::Decode(DecodeError::UnsupportedMediaType(_)) => RefusalReason::UnsupportedMediaType,
            Refusal::Decode(DecodeError::Protobuf(_) | DecodeError::Json(_)) => RefusalReason::Malformed,
            Refusal::Overloaded(_) => RefusalReason::Overloaded,
            Refusal::Unauthenticated => RefusalReason::Unauthenticated,
            Refusal::PermissionDenied(_) => RefusalReason::PermissionDenied,
        }
    }

    /// The HTTP status for this refusal.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::Decode(DecodeError::TooLarge { .. } | DecodeError::DecodedTooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Refusal::Decode(DecodeError::UnsupportedMediaType(_) | DecodeError::UnsupportedEncoding(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Refusal::Decode(_) => StatusCode::BAD_REQUEST,
            Refusal::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
            Refusal::PermissionDenied(_) => StatusCode::FORBIDDEN,
        }
    }

    /// Whether the client should retry (and so gets a `Retry-After` / `RetryInfo`).
    pub fn retryable(&self) -> bool {
        matches!(self, Refusal::Overloaded(_))
    }

    /// The gRPC status for this refusal; retryable ones carry `RetryInfo`.
    pub fn grpc_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            Refusal::Overloaded(_) => tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                msg,
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            ),
            Refusal::Decode(DecodeError::TooLarge { .. } | DecodeError::DecodedTooLarge { .. }) => {
                tonic::Status::resource_exhausted(msg)
            }
            Refusal::Decode(_) => tonic::Status::invalid_argument(msg),
            Refusal::Unauthenticated => tonic::Status::unauthenticated(msg),
            Refusal::PermissionDenied(_) => tonic::Status::permission_denied(msg),
        }
    }

    /// The gRPC status code number, also used in HTTP error bodies (`google.rpc.Status.code`).
    pub fn grpc_code(&self) -> tonic::Code {
        self.grpc_status().code()
    }

    /// The refusal as a gRPC trailers-only response: [`Refusal::grpc_status`], except that an
    /// unsupported `grpc-encoding` is `UNIMPLEMENTED` with the encodings Spindle accepts in
    /// `grpc-accept-encoding` (the gRPC compression spec).
    pub fn grpc_response(&self) -> http::Response<tonic::body::Body> {
        if let Refusal::Decode(DecodeError::UnsupportedEncoding(name)) = self {
            let msg =
                format!("Content is compressed with `{name}` which isn't supported (supported: gzip, zstd, identity)");
            let mut resp = tonic::Status::unimplemented(msg).into_http();
            resp.headers_mut().insert(
                "grpc-accept-encoding",
                http::HeaderValue::from_static("gzip,zstd,identity"),
            );
            return resp;
        }
        self.grpc_status().into_http()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_documented_statuses() {
        let malformed = Refusal::Decode(DecodeError::Protobuf("x".into()));
        assert_eq!(malformed.http_status(), StatusCode::BAD_REQUEST);
        assert_eq!(malformed.grpc_code(), tonic::Code::InvalidArgument);
        assert!(!malformed.retryable());

        let big = Refusal::Decode(DecodeError::TooLarge {
            limit: 1,
            decompressed: true,
        });
        assert_eq!(big.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!big.retryable());
        assert!(big.grpc_status().get_details_retry_info().is_none());

        let ct = Refusal::Decode(DecodeError::UnsupportedMediaType("text/plain".into()));
        assert_eq!(ct.http_status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let decoded = Refusal::Decode(DecodeError::DecodedTooLarge {
            estimated: 10,
            limit: 1,
        });
        assert_eq!(decoded.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(decoded.grpc_code(), tonic::Code::ResourceExhausted);
        assert!(!decoded.retryable());

        let over = Refusal::Overloaded("in-flight bytes");
        assert_eq!(over.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let st = over.grpc_status();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            st.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER)
        );
    }

    #[test]
    fn auth_refusals_map_to_401_403_and_their_grpc_codes() {
        let r = Refusal::Unauthenticated;
        assert_eq!(r.http_status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.grpc_code(), tonic::Code::Unauthenticated);
        assert_eq!(r.reason(), RefusalReason::Unauthenticated);
        assert!(!r.retryable());
        let r = Refusal::PermissionDenied("may not write service \"billing\"".into());
        assert_eq!(r.http_status(), StatusCode::FORBIDDEN);
        assert_eq!(r.grpc_code(), tonic::Code::PermissionDenied);
        assert_eq!(r.reason(), RefusalReason::PermissionDenied);
        assert!(r.to_string().contains("billing"));
    }

    #[test]
    fn a_refusing_export_queue_is_overloaded_and_retryable() {
        for e in [PushError::Full, PushError::Closed, PushError::Unwritable] {
            let r = Refusal::from(e);
            assert!(matches!(r, Refusal::Overloaded(_)), "{r:?}");
            assert!(r.retryable());
            assert_eq!(r.reason(), RefusalReason::Overloaded);
            assert_eq!(r.http_status(), StatusCode::SERVICE_UNAVAILABLE);
            let st = r.grpc_status();
            assert_eq!(st.code(), tonic::Code::ResourceExhausted);
            assert_eq!(
                st.get_details_retry_info().and_then(|r| r.retry_delay),
                Some(RETRY_AFTER)
            );
        }
        assert_eq!(
            Refusal::from(PushError::Full).to_string(),
            "Spindle is overloaded (trace export queue is full); retry later"
        );
    }
}
