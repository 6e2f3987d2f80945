//! Request body decoding: decompression (gzip, zstd) under a size cap, then protobuf or JSON.
//!
//! In: raw body bytes with their `Content-Encoding` and `Content-Type`. Out: an OTLP request
//! message, or a [`DecodeError`] that says what was wrong. Pure; no I/O.

use std::io::Read;

use prost::Message;
use serde::de::DeserializeOwned;

/// Why a request body could not be turned into an OTLP message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The (decompressed) body is larger than the configured cap.
    #[error("request body exceeds the {limit}-byte limit{}", if *.decompressed { " after decompression" } else { "" })]
    TooLarge {
        /// The cap in bytes.
        limit: u64,
        /// Whether the cap was hit while decompressing.
        decompressed: bool,
    },
    /// The body says it is compressed but does not decompress.
    #[error("corrupt {encoding} body: {detail}")]
    Corrupt {
        /// `gzip` or `zstd`.
        encoding: &'static str,
        /// The decompressor's message.
        detail: String,
    },
    /// A `Content-Encoding` we do not speak.
    #[error("unsupported Content-Encoding `{0}` (supported: gzip, zstd, identity)")]
    UnsupportedEncoding(String),
    /// A `Content-Type` that is neither OTLP protobuf nor OTLP JSON.
    #[error("unsupported Content-Type `{0}` (use application/x-protobuf or application/json)")]
    UnsupportedMediaType(String),
    /// The protobuf payload does not decode.
    #[error("malformed protobuf payload: {0}")]
    Protobuf(String),
    /// The JSON payload does not decode.
    #[error("malformed JSON payload: {0}")]
    Json(String),
}

/// The two OTLP/HTTP payload encodings; responses use the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

impl Encoding {
    /// Picks the encoding from a `Content-Type` header value (parameters such as `charset` ignored).
    ///
    /// # Errors
    /// [`DecodeError::UnsupportedMediaType`] for anything else.
    pub fn from_content_type(ct: Option<&str>) -> Result<Self, DecodeError> {
        let raw = ct.unwrap_or("");
        let essence = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(DecodeError::UnsupportedMediaType(raw.to_string())),
        }
    }

    /// The `Content-Type` of a response in this encoding.
    pub const fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Decompresses `body` according to `content_encoding`, refusing output larger than `limit` bytes.
///
/// # Errors
/// [`DecodeError::TooLarge`], [`DecodeError::Corrupt`] or [`DecodeError::UnsupportedEncoding`].
pub fn decompress(body: bytes::Bytes, content_encoding: Option<&str>, limit: u64) -> Result<bytes::Bytes, DecodeError> {
    let enc = content_encoding
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let out = match enc.as_str() {
        "" | "identity" => {
            if body.len() as u64 > limit {
                return Err(DecodeError::TooLarge {
                    limit,
                    decompressed: false,
                });
            }
            return Ok(body);
        }
        "gzip" | "x-gzip" => read_capped(flate2::read::GzDecoder::new(&body[..]), limit, "gzip")?,
        "zstd" => {
            let dec = zstd::stream::read::Decoder::new(&body[..]).map_err(|e| DecodeError::Corrupt {
                encoding: "zstd",
                detail: e.to_string(),
            })?;
            read_capped(dec, limit, "zstd")?
        }
        other => return Err(DecodeError::UnsupportedEncoding(other.to_string())),
    };
    Ok(bytes::Bytes::from(out))
}

fn read_capped(r: impl Read, limit: u64, encoding: &'static str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    r.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt {
            encoding,
            detail: e.to_string(),
        })?;
    if out.len() as u64 > limit {
        return Err(DecodeError::TooLarge {
            limit,
            decompressed: true,
        });
    }
    Ok(out)
}

/// Decodes an OTLP request message from an uncompressed body.
///
/// # Errors
/// [`DecodeError::Protobuf`] or [`DecodeError::Json`] naming the problem.
pub fn decode<M: Message + Default + DeserializeOwned>(body: &[u8], encoding: Encoding) -> Result<M, DecodeError> {
    match encoding {
        Encoding::Protobuf => M::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string())),
        Encoding::Json => serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use std::io::Write;

    fn gzip(b: &[u8]) -> bytes::Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn gzip_and_zstd_round_trip() {
        let data = b"hello otlp".repeat(100);
        assert_eq!(&decompress(gzip(&data), Some("gzip"), 10_000).unwrap()[..], &data[..]);
        let z = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(&decompress(z.into(), Some("zstd"), 10_000).unwrap()[..], &data[..]);
    }

    #[test]
    fn decompression_bomb_is_capped() {
        let data = vec![0u8; 1 << 20];
        let err = decompress(gzip(&data), Some("gzip"), 1000).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                limit: 1000,
                decompressed: true
            }
        );
        let err = decompress(bytes::Bytes::from(data), None, 1000).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                limit: 1000,
                decompressed: false
            }
        );
    }

    #[test]
    fn corrupt_gzip_and_unknown_encoding() {
        let e = decompress(bytes::Bytes::from_static(b"not gzip"), Some("gzip"), 100).unwrap_err();
        assert!(matches!(e, DecodeError::Corrupt { encoding: "gzip", .. }), "{e}");
        let e = decompress(bytes::Bytes::from_static(b"x"), Some("br"), 100).unwrap_err();
        assert!(e.to_string().contains("`br`"), "{e}");
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")),
            Ok(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_content_type(Some("application/x-protobuf")),
            Ok(Encoding::Protobuf)
        );
        assert!(Encoding::from_content_type(Some("text/plain")).is_err());
        assert!(Encoding::from_content_type(None).is_err());
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        let e = decode::<ExportMetricsServiceRequest>(&[0xff, 0xff, 0xff], Encoding::Protobuf).unwrap_err();
        assert!(e.to_string().starts_with("malformed protobuf payload"), "{e}");
        let e = decode::<ExportMetricsServiceRequest>(b"{\"resourceMetrics\": 5}", Encoding::Json).unwrap_err();
        assert!(e.to_string().contains("malformed JSON"), "{e}");
    }

    #[test]
    fn otlp_json_follows_the_spec_encoding() {
        // Hex ids, integer enums, 64-bit integers as strings, camelCase.
        let json = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
          "scopeMetrics":[{"scope":{"name":"s"},"metrics":[{"name":"c","unit":"1","sum":{"aggregationTemporality":2,"isMonotonic":true,
          "dataPoints":[{"asInt":"42","timeUnixNano":"1700000000000000000","exemplars":[{"asDouble":1.5,"timeUnixNano":"1700000000000000000",
          "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}}]}]}]}"#;
        let req: ExportMetricsServiceRequest = decode(json.as_bytes(), Encoding::Json).unwrap();
        let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) = &m.data else {
            panic!()
        };
        assert!(s.is_monotonic);
        assert_eq!(s.aggregation_temporality, 2);
        let dp = &s.data_points[0];
        assert_eq!(dp.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(dp.exemplars[0].trace_id.len(), 16);
        assert_eq!(
            dp.exemplars[0].span_id,
            vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
    };
    use proptest::prelude::*;

    fn request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
        let point = (any::<i64>(), "[ -~]{0,12}", any::<u64>()).prop_map(|(v, attr, t)| NumberDataPoint {
            attributes: vec![KeyValue {
                key: "k".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(attr)),
                }),
                ..Default::default()
            }],
            time_unix_nano: t,
            value: Some(number_data_point::Value::AsInt(v)),
            ..Default::default()
        });
        let metric = ("[a-z.]{1,10}", proptest::collection::vec(point, 0..4)).prop_map(|(name, points)| Metric {
            name,
            data: Some(metric::Data::Gauge(Gauge { data_points: points })),
            ..Default::default()
        });
        proptest::collection::vec(metric, 0..4).prop_map(|metrics| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ExportMetricsServiceRequest>(&body, Encoding::Protobuf);
            let _ = decode::<ExportTraceServiceRequest>(&body, Encoding::Protobuf);
            let _ = decode::<ExportMetricsServiceRequest>(&body, Encoding::Json);
            let _ = decode::<ExportTraceServiceRequest>(&body, Encoding::Json);
            for enc in ["gzip", "zstd"] {
                if let Ok(out) = decompress(bytes::Bytes::from(body.clone()), Some(enc), 1024) {
                    prop_assert!(out.len() <= 1024);
                }
            }
        }

        #[test]
        fn protobuf_and_json_round_trip(req in request()) {
            let pb = prost::Message::encode_to_vec(&req);
            prop_assert_eq!(&decode::<ExportMetricsServiceRequest>(&pb, Encoding::Protobuf).unwrap(), &req);
            let json = serde_json::to_vec(&req).unwrap();
            prop_assert_eq!(&decode::<ExportMetricsServiceRequest>(&json, Encoding::Json).unwrap(), &req);
        }

        #[test]
        fn decompression_respects_the_cap(len in 0usize..20_000, cap in 1u64..10_000) {
            let data = vec![7u8; len];
            let z = zstd::encode_all(&data[..], 1).unwrap();
            match decompress(z.into(), Some("zstd"), cap) {
                Ok(out) => prop_assert!(out.len() as u64 <= cap && out.len() == len),
                Err(DecodeError::TooLarge { .. }) => prop_assert!(len as u64 > cap),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}
