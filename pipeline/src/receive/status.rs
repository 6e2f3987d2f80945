//! The one place where errors become gRPC codes and HTTP statuses.
//!
//! Error classes (as in the OTLP spec): permanent (malformed, unsupported, too large) are never
//! retried; "overloaded" is retryable and carries a retry delay (gRPC `RetryInfo`, HTTP
//! `Retry-After`).

use std::time::Duration;

use http::StatusCode;
use tonic_types::{ErrorDetails, StatusExt};

use super::decode::DecodeError;

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
}

impl Refusal {
    /// A closed-set reason, used as the `reason` label of `spindle_refused_requests_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Decode(DecodeError::TooLarge { .. }) => "too_large",
            Refusal::Decode(DecodeError::Corrupt { .. }) => "corrupt_compression",
            Refusal::Decode(DecodeError::UnsupportedEncoding(_)) => "unsupported_encoding",
            Refusal::Decode(DecodeError::UnsupportedMediaType(_)) => "unsupported_media_type",
            Refusal::Decode(DecodeError::Protobuf(_) | DecodeError::Json(_)) => "malformed",
            Refusal::Overloaded(_) => "overloaded",
        }
    }

    /// The HTTP status for this refusal.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::Decode(DecodeError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Decode(DecodeError::UnsupportedMediaType(_) | DecodeError::UnsupportedEncoding(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Refusal::Decode(_) => StatusCode::BAD_REQUEST,
            Refusal::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            Refusal::Decode(DecodeError::TooLarge { .. }) => tonic::Status::resource_exhausted(msg),
            Refusal::Decode(_) => tonic::Status::invalid_argument(msg),
        }
    }

    /// The gRPC status code number, also used in HTTP error bodies (`google.rpc.Status.code`).
    pub fn grpc_code(&self) -> tonic::Code {
        self.grpc_status().code()
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

        let over = Refusal::Overloaded("in-flight bytes");
        assert_eq!(over.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let st = over.grpc_status();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            st.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER)
        );
    }
}
