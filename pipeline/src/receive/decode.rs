//! Request body decoding: decompression (gzip, zstd) under a size cap, then protobuf or JSON.
//!
//! In: raw body bytes with their `Content-Encoding` and `Content-Type`. Out: an OTLP request
//! message, or a [`DecodeError`] that says what was wrong. Pure; no I/O.

use std::cell::RefCell;
use std::io::Read;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::de::DeserializeOwned;

use super::size::{self, Kind};
use crate::util::gzip::GunzipError;

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
    /// The body would take more memory once decoded than one request may.
    #[error(
        "request would take an estimated {estimated} bytes once decoded, more than the {limit}-byte limit \
         ({DECODED_FACTOR} × its decompressed size, at most receivers.otlp.max_inflight_bytes)"
    )]
    DecodedTooLarge {
        /// The estimate of the decoded size, in bytes.
        estimated: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The body says it is compressed but does not decompress.
    #[error("corrupt {encoding} body, error decompressing: {detail}")]
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

/// How many times its decompressed size one request may take in memory once decoded. Realistic OTLP
/// takes 2–6×; a request of empty messages (2 bytes on the wire, hundreds of bytes decoded) more
/// than 100×, and is refused before it is decoded.
pub const DECODED_FACTOR: u64 = 16;

/// The decoded size any request may reach, however small it is on the wire.
pub const MIN_DECODED: u64 = 64 << 10;

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
    let given = content_encoding.map_or("", str::trim);
    // The names this knows, in canonical form (compared without a lowercased copy per request).
    let enc = ["identity", "gzip", "x-gzip", "zstd"]
        .into_iter()
        .find(|name| given.eq_ignore_ascii_case(name))
        .unwrap_or(given);
    let out = match enc {
        "" | "identity" => {
            if body.len() as u64 > limit {
                return Err(DecodeError::TooLarge {
                    limit,
                    decompressed: false,
                });
            }
            return Ok(body);
        }
        // Both decoders read the body in place (no buffer of their own to fill), and the output is
        // sized once from what the body says it holds (see `size_hint`); gzip inflates with the
        // thread's reused stream (`util::gzip`), zstd with the thread's reused context when its
        // frame records its size (`zstd_one_shot`).
        "gzip" | "x-gzip" => {
            let hint = size_hint(gzip_size(&body), body.len(), limit);
            crate::util::gzip::decompress(&body, hint, limit).map_err(|e| match e {
                GunzipError::TooLarge => DecodeError::TooLarge {
                    limit,
                    decompressed: true,
                },
                GunzipError::Corrupt(detail) => DecodeError::Corrupt {
                    encoding: "gzip",
                    detail,
                },
            })?
        }
        "zstd" => {
            let claimed = zstd::zstd_safe::get_frame_content_size(&body).ok().flatten();
            let hint = size_hint(claimed, body.len(), limit);
            if let Some(out) = zstd_one_shot(&body, claimed, hint, limit) {
                return Ok(bytes::Bytes::from(out));
            }
            let dec = zstd::stream::read::Decoder::with_buffer(&body[..]).map_err(|e| DecodeError::Corrupt {
                encoding: "zstd",
                detail: e.to_string(),
            })?;
            read_capped(dec, hint, limit, "zstd")?
        }
        other => return Err(DecodeError::UnsupportedEncoding(other.to_ascii_lowercase())),
    };
    Ok(bytes::Bytes::from(out))
}

thread_local! {
    /// This thread's zstd decompression context, kept from request to request.
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// A zstd body whose frame records its size (one-shot compression, what OTLP senders write),
/// decompressed in one call with the thread's reused context into exactly that much room, when
/// the size is within `hint` and `limit`. `None` when it is not, or when the call fails — a body
/// with more frames than the first one's size, or a corrupt one — and the streaming decoder then
/// reads it (and names what is wrong).
fn zstd_one_shot(body: &[u8], claimed: Option<u64>, hint: usize, limit: u64) -> Option<Vec<u8>> {
    let size = claimed
        .filter(|size| *size <= limit)
        .and_then(|size| usize::try_from(size).ok())
        .filter(|size| *size <= hint)?;
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = match &mut *slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().ok()?),
        };
        let mut out = Vec::with_capacity(size);
        dctx.decompress_to_buffer(body, &mut out).ok()?;
        Some(out)
    })
}

/// A gzip member's own record of its decompressed size (ISIZE, the last four bytes: the size
/// modulo 2³²), for a body long enough to have a header and a trailer.
fn gzip_size(body: &[u8]) -> Option<u64> {
    let tail: [u8; 4] = body.get(body.len().checked_sub(4)?..)?.try_into().ok()?;
    (body.len() >= 18).then(|| u64::from(u32::from_le_bytes(tail)))
}

/// How much room to give the decompressed body up front: the size the body claims, but no more
/// than the cap (plus the byte that detects going over it) nor than [`MAX_RATIO`] times the
/// compressed size — the claim is the sender's, so it cannot make Spindle reserve more than
/// decompressing would take anyway. A body that is larger than it claimed just grows.
fn size_hint(claimed: Option<u64>, compressed: usize, limit: u64) -> usize {
    let most = limit
        .saturating_add(1)
        .min((compressed as u64).saturating_mul(MAX_RATIO));
    usize::try_from(claimed.unwrap_or(0).min(most)).unwrap_or(0)
}

/// The compression ratio up to which the decompressed size a body claims is reserved at once.
/// OTLP compresses 3–10× with gzip; more than this grows as it is read.
const MAX_RATIO: u64 = 64;

/// Reads `r` to the end into a buffer of `hint` bytes reserved up front (exactly the size for an
/// honest body, so nothing is copied to grow it and nothing is left spare while it is queued).
fn read_capped(r: impl Read, hint: usize, limit: u64, encoding: &'static str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(hint);
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

/// An OTLP export request as the receivers handle it: how big it gets once decoded, and how its
/// OTLP/JSON form is checked beyond what serde sees.
pub trait OtlpRequest: Message + Default + DeserializeOwned + Send + 'static {
    /// Its message type, for [`size`] estimates.
    const KIND: Kind;

    /// Checks what the generated serde code lets pass silently: a oneof (`sum`, `asDouble`, …)
    /// whose value has the wrong type is decoded as absent. Fixes what the proto3 JSON mapping
    /// allows (`"NaN"`, `"Infinity"`, `"-Infinity"` as doubles) and names the rest.
    ///
    /// # Errors
    /// [`DecodeError::Json`] naming the field path and what is wrong with it.
    fn check_json(&mut self, _body: &[u8]) -> Result<(), DecodeError> {
        Ok(())
    }
}

impl OtlpRequest for ExportTraceServiceRequest {
    const KIND: Kind = Kind::ExportTraces;
}

impl OtlpRequest for ExportMetricsServiceRequest {
    const KIND: Kind = Kind::ExportMetrics;

    fn check_json(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        json_check::metrics(self, body)
    }
}

/// The heap bytes `body` will take once decoded as `M`.
///
/// # Errors
/// [`DecodeError::Protobuf`] or [`DecodeError::Json`] when the body cannot even be walked.
pub fn decoded_size<M: OtlpRequest>(body: &[u8], encoding: Encoding) -> Result<u64, DecodeError> {
    match encoding {
        Encoding::Protobuf => size::protobuf(M::KIND, body),
        Encoding::Json => size::json(M::KIND, body),
    }
}

/// Decodes an OTLP request message from an uncompressed body.
///
/// # Errors
/// [`DecodeError::Protobuf`] or [`DecodeError::Json`] naming the problem.
pub fn decode<M: OtlpRequest>(body: &[u8], encoding: Encoding) -> Result<M, DecodeError> {
    match encoding {
        Encoding::Protobuf => M::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string())),
        Encoding::Json => {
            let mut m: M = serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
            m.check_json(body)?;
            Ok(m)
        }
    }
}

/// The OTLP/JSON checks of [`OtlpRequest::check_json`] for metrics.
mod json_check {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{self as pm, metric::Data};
    use serde::de::DeserializeOwned;
    use serde_json::Value;

    use super::DecodeError;

    /// Names of the `Metric.data` oneof in OTLP/JSON.
    const DATA_KEYS: [&str; 5] = ["gauge", "sum", "histogram", "exponentialHistogram", "summary"];

    /// Whether any metric lost its data or any number point or exemplar its value to a type error.
    fn suspicious(req: &ExportMetricsServiceRequest) -> bool {
        req.resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .any(|m| match &m.data {
                None => true,
                Some(Data::Gauge(g)) => g.data_points.iter().any(number_point_missing),
                Some(Data::Sum(s)) => s.data_points.iter().any(number_point_missing),
                Some(Data::Histogram(h)) => h.data_points.iter().any(|p| exemplar_missing(&p.exemplars)),
                Some(Data::ExponentialHistogram(h)) => h.data_points.iter().any(|p| exemplar_missing(&p.exemplars)),
                Some(Data::Summary(_)) => false,
            })
    }

    fn number_point_missing(p: &pm::NumberDataPoint) -> bool {
        p.value.is_none() || exemplar_missing(&p.exemplars)
    }

    fn exemplar_missing(e: &[pm::Exemplar]) -> bool {
        e.iter().any(|e| e.value.is_none())
    }

    pub(super) fn metrics(req: &mut ExportMetricsServiceRequest, body: &[u8]) -> Result<(), DecodeError> {
        if !suspicious(req) {
            return Ok(());
        }
        // Rare: walk the JSON again as a tree to see what the typed decode hid.
        let v: Value = serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
        for (i, rm) in req.resource_metrics.iter_mut().enumerate() {
            for (j, sm) in rm.scope_metrics.iter_mut().enumerate() {
                for (k, m) in sm.metrics.iter_mut().enumerate() {
                    let path = format!("resourceMetrics[{i}].scopeMetrics[{j}].metrics[{k}]");
                    let mv = &v["resourceMetrics"][i]["scopeMetrics"][j]["metrics"][k];
                    metric(m, mv, &path)?;
                }
            }
        }
        Ok(())
    }

    fn metric(m: &mut pm::Metric, mv: &Value, path: &str) -> Result<(), DecodeError> {
        let points = |key: &str| &mv[key]["dataPoints"];
        match &mut m.data {
            None => {
                // A metric without data is left for translation to reject and count; one whose data
                // did not decode is malformed.
                for key in DATA_KEYS {
                    if let Some(d) = mv.get(key) {
                        let at = format!("{path}.{key}");
                        return Err(match key {
                            "gauge" => blame::<pm::Gauge>(d, &at),
                            "sum" => blame::<pm::Sum>(d, &at),
                            "histogram" => blame::<pm::Histogram>(d, &at),
                            "exponentialHistogram" => blame::<pm::ExponentialHistogram>(d, &at),
                            _ => blame::<pm::Summary>(d, &at),
                        });
                    }
                }
                Ok(())
            }
            Some(Data::Gauge(g)) => number_points(&mut g.data_points, points("gauge"), &format!("{path}.gauge")),
            Some(Data::Sum(s)) => number_points(&mut s.data_points, points("sum"), &format!("{path}.sum")),
            Some(Data::Histogram(h)) => {
                let at = format!("{path}.histogram");
                for (n, p) in h.data_points.iter_mut().enumerate() {
                    exemplars(
                        &mut p.exemplars,
                        &points("histogram")[n]["exemplars"],
                        &format!("{at}.dataPoints[{n}]"),
                    )?;
                }
                Ok(())
            }
            Some(Data::ExponentialHistogram(h)) => {
                let at = format!("{path}.exponentialHistogram");
                for (n, p) in h.data_points.iter_mut().enumerate() {
                    let pv = &points("exponentialHistogram")[n]["exemplars"];
                    exemplars(&mut p.exemplars, pv, &format!("{at}.dataPoints[{n}]"))?;
                }
                Ok(())
            }
            Some(Data::Summary(_)) => Ok(()),
        }
    }

    fn number_points(ps: &mut [pm::NumberDataPoint], pv: &Value, path: &str) -> Result<(), DecodeError> {
        for (n, p) in ps.iter_mut().enumerate() {
            let at = format!("{path}.dataPoints[{n}]");
            let v = &pv[n];
            if p.value.is_none() {
                if let Some(d) = v.get("asDouble") {
                    let x = special_double(d).ok_or_else(|| wrong(&format!("{at}.asDouble"), d, "a number"))?;
                    p.value = Some(pm::number_data_point::Value::AsDouble(x));
                } else if let Some(d) = v.get("asInt") {
                    return Err(wrong(&format!("{at}.asInt"), d, "an integer or a string of one"));
                }
                // Neither: a point without a value, which translation rejects and counts.
            }
            exemplars(&mut p.exemplars, &v["exemplars"], &at)?;
        }
        Ok(())
    }

    fn exemplars(es: &mut [pm::Exemplar], ev: &Value, path: &str) -> Result<(), DecodeError> {
        for (n, e) in es.iter_mut().enumerate().filter(|(_, e)| e.value.is_none()) {
            let at = format!("{path}.exemplars[{n}]");
            let v = &ev[n];
            if let Some(d) = v.get("asDouble") {
                let x = special_double(d).ok_or_else(|| wrong(&format!("{at}.asDouble"), d, "a number"))?;
                e.value = Some(pm::exemplar::Value::AsDouble(x));
            } else if let Some(d) = v.get("asInt") {
                return Err(wrong(&format!("{at}.asInt"), d, "an integer or a string of one"));
            }
        }
        Ok(())
    }

    /// The proto3 JSON spellings of non-finite doubles.
    fn special_double(v: &Value) -> Option<f64> {
        match v.as_str()? {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        }
    }

    fn wrong(path: &str, got: &Value, want: &str) -> DecodeError {
        let mut got = got.to_string();
        if got.len() > 64 {
            let cut = (0..=64).rev().find(|i| got.is_char_boundary(*i)).unwrap_or(0);
            got.truncate(cut);
            got.push('…');
        }
        DecodeError::Json(format!("{path}: expected {want}, got {got}"))
    }

    /// The error decoding `v` as `T` gives, with the path of the offending field.
    fn blame<T: DeserializeOwned>(v: &Value, path: &str) -> DecodeError {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Err(e) => {
                let inner = e.path().to_string();
                let at = if inner == "." {
                    path.to_string()
                } else {
                    format!("{path}.{inner}")
                };
                DecodeError::Json(format!("{at}: {}", e.into_inner()))
            }
            // Decodes on its own (e.g. a nested oneof hid the error again): name the object.
            Ok(_) => DecodeError::Json(format!("{path}: does not decode as OTLP")),
        }
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
        // Encoding names in any case, with surrounding space; an unknown one is named.
        for name in [" GZIP ", "X-Gzip", "gZiP"] {
            assert_eq!(
                &decompress(gzip(&data), Some(name), 10_000).unwrap()[..],
                &data[..],
                "{name}"
            );
        }
        assert_eq!(
            &decompress(data.clone().into(), Some("Identity"), 10_000).unwrap()[..],
            &data[..]
        );
        assert_eq!(
            decompress(data.clone().into(), Some(" Brotli"), 10_000).unwrap_err(),
            DecodeError::UnsupportedEncoding("brotli".into())
        );
        let z = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(&decompress(z.into(), Some("zstd"), 10_000).unwrap()[..], &data[..]);
    }

    #[test]
    fn the_room_reserved_up_front_is_what_the_body_claims_within_the_cap() {
        // Text that compresses about as well as OTLP does (3–10×), not hundreds of times.
        let mut x = 7u32;
        let data: Vec<u8> = (0..10_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b"abcdefghij"[(x >> 16) as usize % 10]
            })
            .collect();
        let gz = gzip(&data);
        assert_eq!(gzip_size(&gz), Some(10_000));
        assert_eq!(size_hint(gzip_size(&gz), gz.len(), 1 << 20), 10_000);
        // A claim beyond the cap or beyond MAX_RATIO times the body reserves no more than those.
        assert_eq!(
            size_hint(Some(u64::from(u32::MAX)), 100, 1 << 20),
            100 * MAX_RATIO as usize
        );
        assert_eq!(size_hint(Some(u64::from(u32::MAX)), 1 << 20, 1000), 1001);
        assert_eq!(size_hint(None, 100, 1000), 0);
        assert_eq!(gzip_size(b"short"), None);
        // A body whose trailer lies about its size is corrupt (the decoder checks it).
        let mut lying = gz.to_vec();
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&5u32.to_le_bytes());
        let err = decompress(lying.into(), Some("gzip"), 1 << 20).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { encoding: "gzip", .. }), "{err}");
        // zstd frames that record their size (one-shot compression) are read into exactly that
        // much room; streamed ones, which do not, grow as they are read.
        let z = zstd::bulk::compress(&data, 1).unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&z).ok().flatten(), Some(10_000));
        assert_eq!(&decompress(z.into(), Some("zstd"), 1 << 20).unwrap()[..], &data[..]);
        let z = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&z).ok().flatten(), None);
        assert_eq!(&decompress(z.into(), Some("zstd"), 1 << 20).unwrap()[..], &data[..]);
        // Two sized frames back to back: more than the first one's size, read by the streaming
        // decoder; a sized frame over the limit is refused; a truncated one is named corrupt.
        let one = zstd::bulk::compress(&data, 1).unwrap();
        assert_eq!(
            zstd_one_shot(&one, Some(10_000), 10_000, 1 << 20).as_deref(),
            Some(&data[..])
        );
        let two = [&one[..], &one[..]].concat();
        assert_eq!(zstd_one_shot(&two, Some(10_000), 10_000, 1 << 20), None);
        let both = decompress(two.into(), Some("zstd"), 1 << 20).unwrap();
        assert_eq!(both.len(), 20_000);
        assert_eq!(&both[10_000..], &data[..]);
        let err = decompress(one.clone().into(), Some("zstd"), 9_999).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
        let truncated = one[..one.len() - 5].to_vec();
        let err = decompress(truncated.into(), Some("zstd"), 1 << 20).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { encoding: "zstd", .. }), "{err}");
        // And the thread's context still decompresses the next body.
        assert_eq!(&decompress(one.into(), Some("zstd"), 1 << 20).unwrap()[..], &data[..]);
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
            for enc in [Encoding::Protobuf, Encoding::Json] {
                let _ = decoded_size::<ExportMetricsServiceRequest>(&body, enc);
                let _ = decoded_size::<ExportTraceServiceRequest>(&body, enc);
            }
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
            // Every well-formed request can be sized, and costs at least its struct.
            prop_assert!(decoded_size::<ExportMetricsServiceRequest>(&pb, Encoding::Protobuf).unwrap() > 0);
            prop_assert!(decoded_size::<ExportMetricsServiceRequest>(&json, Encoding::Json).unwrap() > 0);
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

#[cfg(test)]
mod json_types {
    use super::*;

    fn traces(span: &str) -> Result<ExportTraceServiceRequest, DecodeError> {
        let body = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span}]}}]}}]}}"#);
        decode::<ExportTraceServiceRequest>(body.as_bytes(), Encoding::Json)
    }

    #[test]
    fn wrongly_typed_trace_fields_are_malformed_not_dropped() {
        for bad in [
            r#"{"name":"s","attributes":[{"key":"a","value":{"intValue":"x"}}]}"#,
            r#"{"name":"s","attributes":[{"key":"a","value":{"stringValue":5}}]}"#,
            r#"{"name":"s","attributes":[{"key":"a","value":{"boolValue":"yes"}}]}"#,
            r#"{"name":"s","kind":"yes"}"#,
            r#"{"name":5}"#,
            r#"{"name":"s","startTimeUnixNano":"soon"}"#,
            r#"{"name":"s","traceId":"not hex"}"#,
            r#"{"name":"s","status":{"code":"bad"}}"#,
        ] {
            match traces(bad) {
                Err(DecodeError::Json(_)) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        let ok = traces(r#"{"name":"s","kind":2,"attributes":[{"key":"a","value":{"intValue":"7"}}]}"#).unwrap();
        assert_eq!(ok.resource_spans[0].scope_spans[0].spans[0].kind, 2);
    }

    #[test]
    fn wrongly_typed_metric_fields_name_their_path() {
        let body = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"c","sum":{"isMonotonic":"yes","dataPoints":[]}}]}]}]}"#;
        let e = decode::<ExportMetricsServiceRequest>(body.as_bytes(), Encoding::Json).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed JSON payload: resourceMetrics[0].scopeMetrics[0].metrics[0].sum.isMonotonic: \
             invalid type: string \"yes\", expected a boolean"
        );
        // A metric with no data at all is left for translation to reject and count.
        let none = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"c"}]}]}]}"#;
        assert!(decode::<ExportMetricsServiceRequest>(none.as_bytes(), Encoding::Json).is_ok());
    }
}
