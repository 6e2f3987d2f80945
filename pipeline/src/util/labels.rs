//! Label names and values as Prometheus takes them: the one sanitizer of names and the one
//! escaper of values, shared by translation, the limiter's config checks and every encoder.

/// An attribute key as the label name translation gives it (`http.route` → `http_route`):
/// invalid characters → `_`, runs of `_` collapsed, `key_` prefix when it would start with a digit,
/// `key` prefix when it would start with `_`, `key_empty` for an empty key.
pub fn sanitized_label_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 4);
    push_sanitized_label_name(&mut out, raw);
    out
}

/// Appends `raw` sanitized as a label name, as [`sanitized_label_name`] gives it (whatever
/// `text` already ends with: runs of `_` collapse within the name only).
pub fn push_sanitized_label_name(text: &mut String, raw: &str) {
    match raw.chars().next() {
        Some(c) if c.is_ascii_digit() => text.push_str("key_"),
        Some('_') => text.push_str("key"),
        None => text.push_str("key_empty"),
        _ => {}
    }
    let start = text.len();
    push_sanitized_from(text, raw, false, start);
}

/// Appends `raw` with characters outside `[a-zA-Z0-9_]` (and `:` if `colon`, for metric names)
/// replaced by `_`, and runs of `_` collapsed to one (with a `_` that `out` ends with, too).
pub fn push_sanitized(out: &mut String, raw: &str, colon: bool) {
    push_sanitized_from(out, raw, colon, 0);
}

/// [`push_sanitized`], collapsing a leading `_` with what `out` ends with only past `start`.
fn push_sanitized_from(out: &mut String, raw: &str, colon: bool, start: usize) {
    let valid = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || (colon && c == b':');
    let b = raw.as_bytes();
    // Most keys are already valid: copied whole when nothing is replaced or collapsed (one pass
    // over the bytes: a `str::contains("__")` alone cost more than the copy).
    let mut prev_underscore = false;
    let clean = b.iter().all(|&c| {
        let ok = valid(c) && !(c == b'_' && prev_underscore);
        prev_underscore = c == b'_';
        ok
    });
    if clean && !(b.first() == Some(&b'_') && out.len() > start && out.ends_with('_')) {
        out.push_str(raw);
        return;
    }
    for c in raw.chars() {
        let ok = c.is_ascii() && valid(c as u8);
        let c = if ok { c } else { '_' };
        if c == '_' && out.len() > start && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
}

/// Appends a label set as `name="escaped value",…` (the form the store keeps and a scrape
/// appends), its values escaped by [`escape_label_value`].
pub fn render_label_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, out: &mut Vec<u8>) {
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        // Room for the pair unescaped, reserved once instead of checked per piece.
        out.reserve(name.len() + value.len() + 4);
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(value, out);
        out.push(b'"');
    }
}

/// Appends `escaped` with [`escape_label_value`]'s escapes undone (`\\\\` → `\\`, `\\"` → `"`,
/// `\\n` → newline); `false` (with `out` partly written) on any other escape.
pub fn unescape_label_value(escaped: &[u8], out: &mut Vec<u8>) -> bool {
    let mut it = escaped.iter();
    while let Some(&c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'"') => out.push(b'"'),
            Some(b'n') => out.push(b'\n'),
            _ => return false,
        }
    }
    true
}

/// Escapes a label value for both exposition formats: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(v: &str, out: &mut Vec<u8>) {
    let b = v.as_bytes();
    if !b.iter().any(|c| matches!(c, b'\\' | b'"' | b'\n')) {
        out.extend_from_slice(b);
        return;
    }
    for &c in b {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            c => out.push(c),
        }
    }
}

/// Whether `name` is in the legacy character set of metric names, `[a-zA-Z_:][a-zA-Z0-9_:]*`
/// (`colon`), or of label names, `[a-zA-Z_][a-zA-Z0-9_]*`: the names every scraper reads
/// unquoted and unescaped.
#[inline]
pub fn is_legacy_name(name: &str, colon: bool) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || (colon && c == b':'))
}

/// Appends `name` as a scrape that asked for `escaping` reads it: unchanged when it is a legacy
/// name ([`is_legacy_name`]) or with `AllowUtf8`, else escaped by the scheme (prometheus.io "UTF-8
/// metric and label name escaping schemes", as client_golang applies them: only names outside the
/// legacy set are escaped). `colon`: a metric name (`:` is legal), else a label name.
pub fn push_escaped_name(out: &mut String, name: &str, escaping: crate::model::Escaping, colon: bool) {
    use crate::model::Escaping;
    use std::fmt::Write as _;
    if escaping == Escaping::AllowUtf8 || is_legacy_name(name, colon) {
        out.push_str(name);
        return;
    }
    let legacy =
        |c: char, i: usize| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (i > 0 && c.is_ascii_digit());
    if escaping == Escaping::Values {
        out.push_str("U__");
    }
    for (i, c) in name.char_indices() {
        match escaping {
            Escaping::Underscores => out.push(if legacy(c, i) { c } else { '_' }),
            Escaping::Dots => match c {
                '_' => out.push_str("__"),
                '.' => out.push_str("_dot_"),
                c if legacy(c, i) => out.push(c),
                _ => out.push_str("__"),
            },
            Escaping::Values | Escaping::AllowUtf8 => match c {
                '_' => out.push_str("__"),
                c if legacy(c, i) => out.push(c),
                c => {
                    let _ = write!(out, "_{:x}_", u32::from(c));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_are_sanitized_as_translation_gives_them() {
        for (raw, want) in [
            ("http.route", "http_route"),
            ("a..b", "a_b"),
            ("1st", "key_1st"),
            ("_private", "key_private"),
            ("", "key_empty"),
            ("ok_name", "ok_name"),
        ] {
            assert_eq!(sanitized_label_name(raw), want, "{raw}");
        }
        let mut m = String::new();
        push_sanitized(&mut m, "a:b.c", true);
        assert_eq!(m, "a:b_c");
        // In an arena, a name does not depend on what comes before it (a value ending in `_`).
        for (raw, want) in [(".b", "_b"), ("é", "_"), ("x", "x"), ("_p", "key_p"), ("a__b", "a_b")] {
            let mut text = String::from("value_");
            push_sanitized_label_name(&mut text, raw);
            assert_eq!(&text["value_".len()..], want, "{raw}");
            assert_eq!(sanitized_label_name(raw), want, "{raw}");
        }
    }

    #[test]
    fn names_are_escaped_as_the_scraper_asked() {
        use crate::model::Escaping::*;
        let esc = |name: &str, e, colon| {
            let mut s = String::new();
            push_escaped_name(&mut s, name, e, colon);
            s
        };
        // Legacy names are never changed, whatever the scheme.
        for e in [AllowUtf8, Underscores, Dots, Values] {
            assert_eq!(esc("http_requests:rate5m", e, true), "http_requests:rate5m");
            assert_eq!(esc("http_route", e, false), "http_route");
        }
        assert_eq!(esc("http.server.duration", Underscores, true), "http_server_duration");
        assert_eq!(esc("http.server.duration", AllowUtf8, true), "http.server.duration");
        assert_eq!(esc("http.route", Dots, false), "http_dot_route");
        assert_eq!(esc("my_metric.ü", Dots, true), "my__metric_dot___");
        assert_eq!(esc("my.metric", Values, true), "U__my_2e_metric");
        assert_eq!(esc("a_ü", Values, true), "U__a___fc_");
        assert_eq!(esc("1st.x", Underscores, true), "_st_x");
        // `:` is legal in metric names only.
        assert_eq!(esc("a:b", Underscores, false), "a_b");
        assert!(is_legacy_name("_x:y", true) && !is_legacy_name("_x:y", false));
        assert!(!is_legacy_name("", true) && !is_legacy_name("9x", false));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Vec::new();
        escape_label_value("a\\b\"c\nd", &mut out);
        assert_eq!(out, b"a\\\\b\\\"c\\nd");
    }
}
