//! Secrets out of everything Spindle prints: `print-config`, logs at every level, error messages
//! and API answers show header values, tokens, passwords and URL credentials as [`REDACTED`].

use std::borrow::Cow;
use std::collections::BTreeMap;

/// What a secret is shown as.
pub const REDACTED: &str = "<redacted>";

/// `url` with its credentials (`user:password@`, or `token@`) replaced by [`REDACTED`]; unchanged
/// when it has none. Works on strings that are not valid URLs too, so that an endpoint that fails
/// validation can still be named in the error.
pub fn url(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}{REDACTED}{}", &url[..start], &url[start + at..])),
        None => Cow::Borrowed(url),
    }
}

/// Header values replaced by [`REDACTED`] (names are kept: they say what is configured).
pub fn headers(headers: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    headers.keys().map(|k| (k.clone(), REDACTED.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_redacted_and_the_rest_kept() {
        for (raw, shown) in [
            ("http://u:p@h:4317/x", "http://<redacted>@h:4317/x"),
            ("https://token@h", "https://<redacted>@h"),
            ("http://u:p@ss@h/a@b", "http://<redacted>@h/a@b"),
            ("ftp://u:p@h?q=@", "ftp://<redacted>@h?q=@"),
            ("u:p@h:1", "<redacted>@h:1"),
            ("http://h:4317/v1/traces?a=b@c", "http://h:4317/v1/traces?a=b@c"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url(raw), shown, "{raw}");
        }
        assert!(matches!(url("http://h/"), Cow::Borrowed(_)));
    }

    #[test]
    fn header_values_are_redacted_and_names_kept() {
        let h = BTreeMap::from([("authorization".to_string(), "Bearer x".to_string())]);
        assert_eq!(headers(&h)["authorization"], REDACTED);
    }
}
