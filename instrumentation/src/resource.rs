//! Parsing of `OTEL_RESOURCE_ATTRIBUTES` and the generated `service.instance.id`.
//!
//! What comes in: the variable's text. What goes out: ordered `(key, value)` pairs, values
//! percent-decoded, or an error naming the bad entry.

use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use crate::{InitError, OTEL_RESOURCE_ATTRIBUTES};

/// Parses `key1=value1,key2=value2` (W3C Baggage-style, values percent-encoded). Empty entries
/// are skipped; a later duplicate key wins.
pub(crate) fn parse_resource_attributes(text: &str) -> Result<Vec<(String, String)>, InitError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad =
            |hint: &str| InitError::invalid_env(OTEL_RESOURCE_ATTRIBUTES, text, format!("entry {entry:?}: {hint}"));
        let (key, value) = entry.split_once('=').ok_or_else(|| bad("expected key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        let value =
            percent_decode(value.trim()).ok_or_else(|| bad("invalid percent-encoding or UTF-8 in the value"))?;
        out.retain(|(k, _)| k != key);
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// Percent-decodes `s`; `None` for a bad escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A random (version 4) UUID, as the semantic conventions recommend for `service.instance.id`.
pub(crate) fn random_instance_id() -> String {
    let mut b = RandomIdGenerator::default().new_trace_id().to_bytes();
    if b == TraceId::INVALID.to_bytes() {
        b[15] = 1;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{}-{}-{}-{}-{}", h(0..4), h(4..6), h(6..8), h(8..10), h(10..16))
}

/// `unknown_service:<executable name>`, the specification's fallback `service.name`.
pub(crate) fn unknown_service() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    format!("unknown_service:{exe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes() {
        let parsed =
            parse_resource_attributes(" deployment.environment.name=prod , team=a%20b%2Cc,,service.version=1.2,team=z")
                .expect("valid");
        assert_eq!(
            parsed,
            vec![
                ("deployment.environment.name".into(), "prod".into()),
                ("service.version".into(), "1.2".into()),
                ("team".into(), "z".into()),
            ]
        );
        assert_eq!(
            parse_resource_attributes("team=a%20b%2Cc").expect("valid")[0].1,
            "a b,c"
        );
    }

    #[test]
    fn rejects_bad_entries_with_the_variable_name() {
        for bad in ["novalue", "=x", "k=%zz", "k=%e2%28"] {
            let err = parse_resource_attributes(bad).expect_err(bad);
            assert!(err.to_string().contains("OTEL_RESOURCE_ATTRIBUTES"), "{err}");
        }
    }

    #[test]
    fn instance_ids_are_uuid_v4() {
        let a = random_instance_id();
        let b = random_instance_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "{a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }
}
