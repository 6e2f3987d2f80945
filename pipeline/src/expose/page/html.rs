//! HTML writing for the status page: escaping ([`Esc`], the only way text reaches the page), the
//! page frame with its inline style and script, number formats and bars.

use std::fmt::{self, Display, Write as _};
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The page's style sheet, inlined in every page.
pub const CSS: &str = include_str!("page.css");
/// The page's script, inlined in the status page: re-fetches the page every few seconds and
/// swaps its live sections in.
pub const JS: &str = include_str!("page.js");

/// The `Content-Security-Policy` of every page: nothing loads from anywhere, and the only style
/// and script that run are the inline [`CSS`] and [`JS`] (by hash), so a label value that got
/// past escaping still could not run.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = |s: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; img-src data:; \
         connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        hash(JS),
        hash(CSS)
    )
});

/// Text escaped for HTML element content and attribute values: `&`, `<`, `>`, `"` and `'`.
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Text escaped as a URL query value (everything but unreserved characters percent-encoded);
/// still to be written through [`Esc`] in an attribute (it never needs it).
#[derive(Debug, Clone, Copy)]
pub struct Query<'a>(pub &'a str);

impl Display for Query<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                f.write_char(char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// Starts a page: the document head (title, style, no favicon request), `<body>` with
/// `body_attrs` (trusted markup, e.g. ` data-no-rates`) and the page header.
pub fn open(out: &mut String, title: &str, version: &str, body_attrs: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>{}</title><style>{CSS}</style></head>\n\
         <body{body_attrs}><header><p class=\"brand\"><a href=\"/\">Spindle</a> <span>{}</span></p>\
         <nav aria-label=\"Raw data\"><a href=\"/metrics\">/metrics</a> \
         <a href=\"/api/v1/cardinality\">/api/v1/cardinality</a></nav></header>\n<main>\n",
        Esc(title),
        Esc(version)
    );
}

/// Ends a page; with the live-refresh script when `live`.
pub fn close(out: &mut String, live: bool) {
    out.push_str("</main>\n");
    if live {
        let _ = write!(out, "<script>{JS}</script>");
    }
    out.push_str("</body></html>\n");
}

/// A count with thousands separators (`1,234,567`); fractions rounded.
#[derive(Debug, Clone, Copy)]
pub struct Count(pub f64);

impl Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_finite() {
            return write!(f, "{}", self.0);
        }
        let n = self.0.round();
        if n < 0.0 {
            f.write_char('-')?;
        }
        let digits = format!("{:.0}", n.abs());
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                f.write_char(',')?;
            }
            f.write_char(c)?;
        }
        Ok(())
    }
}

/// A rate per second with three significant digits (`0.25/s`, `1,250/s`), or `—` without one.
#[derive(Debug, Clone, Copy)]
pub struct PerSecond(pub Option<f64>);

impl Display for PerSecond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("—"),
            Some(0.0) => f.write_str("0/s"),
            Some(v) if v >= 100.0 => write!(f, "{}/s", Count(v)),
            Some(v) if v >= 10.0 => write!(f, "{v:.1}/s"),
            Some(v) if v >= 0.01 => write!(f, "{v:.2}/s"),
            Some(_) => f.write_str("&lt;0.01/s"),
        }
    }
}

/// Bytes in binary units (`512 B`, `1.5 KiB`, `64.0 MiB`).
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub f64);

impl Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = self.0;
        if v < 1024.0 {
            return write!(f, "{} B", Count(v));
        }
        for unit in ["KiB", "MiB", "GiB", "TiB"] {
            v /= 1024.0;
            if v < 1024.0 || unit == "TiB" {
                return write!(f, "{v:.1} {unit}");
            }
        }
        Ok(())
    }
}

/// Seconds as a duration to read (`850 µs`, `12.5 ms`, `1.25 s`), or `—`.
#[derive(Debug, Clone, Copy)]
pub struct Seconds(pub Option<f64>);

impl Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("—"),
            Some(s) if s.is_infinite() => f.write_str("more than the largest bucket"),
            Some(s) if s < 0.001 => write!(f, "{:.0} µs", s * 1e6),
            Some(s) if s < 1.0 => write!(f, "{:.1} ms", s * 1e3),
            Some(s) => write!(f, "{s:.2} s"),
        }
    }
}

/// An age (`3 s`, `4 min 10 s`, `2 h 5 min`, `3 d 4 h`).
#[derive(Debug, Clone, Copy)]
pub struct Age(pub Duration);

impl Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            0..60 => write!(f, "{s} s"),
            60..3600 => write!(f, "{} min {} s", s / 60, s % 60),
            3600..86400 => write!(f, "{} h {} min", s / 3600, s % 3600 / 60),
            _ => write!(f, "{} d {} h", s / 86400, s % 86400 / 3600),
        }
    }
}

/// A horizontal bar: `value` against `max` as an inline SVG, with its share in words for screen
/// readers; the class turns `warn` from 80% and `full` at 100%.
#[derive(Debug, Clone, Copy)]
pub struct Bar {
    /// The value drawn.
    pub value: f64,
    /// What a full bar stands for.
    pub max: f64,
    /// What the share is of, for the accessible label (`"of the limit"`).
    pub of: &'static str,
}

impl Bar {
    /// `value / max`, within 0 and 1 (0 when `max` is not positive).
    pub fn share(&self) -> f64 {
        if self.max > 0.0 {
            (self.value / self.max).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

impl Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let share = self.share();
        let class = if share >= 1.0 {
            "full"
        } else if share >= 0.8 {
            "warn"
        } else {
            "ok"
        };
        let pct = share * 100.0;
        write!(
            f,
            "<span class=\"barwrap\"><svg class=\"bar {class}\" width=\"120\" height=\"12\" viewBox=\"0 0 120 12\" role=\"img\" \
             aria-label=\"{pct:.0}% {}\"><rect class=\"track\" width=\"120\" height=\"12\" rx=\"2\"/>\
             <rect class=\"fill\" width=\"{:.1}\" height=\"12\" rx=\"2\"/></svg> <span class=\"pct\">{pct:.0}%</span></span>",
            Esc(self.of),
            share * 120.0
        )
    }
}
