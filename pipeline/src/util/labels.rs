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

/// Appends `raw` sanitized as a label name, as [`sanitized_label_name`] gives it.
pub fn push_sanitized_label_name(text: &mut String, raw: &str) {
    match raw.chars().next() {
        Some(c) if c.is_ascii_digit() => text.push_str("key_"),
        Some('_') => text.push_str("key"),
        None => text.push_str("key_empty"),
        _ => {}
    }
    push_sanitized(text, raw, false);
}

/// Appends `raw` with characters outside `[a-zA-Z0-9_]` (and `:` if `colon`, for metric names)
/// replaced by `_`, and runs of `_` collapsed to one.
pub fn push_sanitized(out: &mut String, raw: &str, colon: bool) {
    for c in raw.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
        let c = if ok { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
}

/// Appends a label set as `name="escaped value",…` (the form the store keeps and a scrape
/// appends), its values escaped by [`escape_label_value`].
pub fn render_label_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, out: &mut Vec<u8>) {
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(value, out);
        out.push(b'"');
    }
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
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Vec::new();
        escape_label_value("a\\b\"c\nd", &mut out);
        assert_eq!(out, b"a\\\\b\\\"c\\nd");
    }
}
