//! Prometheus family names and units from OTLP metric names and UCUM units.

use crate::model::MetricKind;

use crate::util::labels::push_sanitized;

/// The Prometheus family name and unit of an OTLP metric.
///
/// For counters the returned family name has no `_total`; encoders add it to sample names.
pub fn prometheus_name(name: &str, unit: &str, kind: MetricKind) -> (String, String) {
    let mut out = String::with_capacity(name.len() + 16);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    push_sanitized(&mut out, name, true);
    let unit = prometheus_unit(unit, kind);
    if kind == MetricKind::Counter
        && let Some(base) = out.strip_suffix("_total")
    {
        out.truncate(base.len());
    }
    if !unit.is_empty() {
        let suffix = format!("_{unit}");
        if !out.ends_with(&suffix) {
            // Insert the unit before a trailing `_total` already removed above.
            if out.ends_with('_') {
                out.pop();
            }
            out.push_str(&suffix);
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    (out, unit)
}

/// The Prometheus unit word for a UCUM unit, empty when none applies.
pub fn prometheus_unit(unit: &str, kind: MetricKind) -> String {
    let unit = unit.trim();
    if unit.is_empty() || (unit.starts_with('{') && unit.ends_with('}')) {
        return String::new();
    }
    if unit == "1" {
        return if kind == MetricKind::Gauge {
            "ratio".into()
        } else {
            String::new()
        };
    }
    // Drop `{…}` annotations anywhere in the unit.
    let mut stripped = String::with_capacity(unit.len());
    let mut depth = 0;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => stripped.push(c),
            _ => {}
        }
    }
    let (main, per) = match stripped.split_once('/') {
        Some((m, p)) => (m.trim(), Some(p.trim())),
        None => (stripped.trim(), None),
    };
    let mut out = String::new();
    if !main.is_empty() {
        push_sanitized(&mut out, &unit_word(main), false);
    }
    if let Some(per) = per.filter(|p| !p.is_empty()) {
        while out.ends_with('_') {
            out.pop();
        }
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str("per_");
        push_sanitized(&mut out, &per_unit_word(per), false);
    }
    out.trim_matches('_').to_string()
}

pub(super) fn unit_word(u: &str) -> String {
    let w = match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        "1" => "",
        other => other,
    };
    w.to_string()
}

pub(super) fn per_unit_word(u: &str) -> String {
    let w = match u {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    };
    w.to_string()
}
