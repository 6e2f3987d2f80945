//! Prometheus family names and units from OTLP metric names and UCUM units.

use crate::model::{MetricKind, TranslationStrategy};

use crate::util::labels::push_sanitized;

/// The Prometheus family name and unit of an OTLP metric under
/// [`TranslationStrategy::UnderscoreEscapingWithSuffixes`] (the default).
///
/// For counters the returned family name has no `_total`; encoders add it to sample names.
pub fn prometheus_name(name: &str, unit: &str, kind: MetricKind) -> (String, String) {
    prometheus_name_with(name, unit, kind, TranslationStrategy::UnderscoreEscapingWithSuffixes)
}

/// The Prometheus family name and unit of an OTLP metric under `strategy`, as Prometheus's OTLP
/// receiver names it: escaped to the legacy character set (invalid characters → `_`, runs
/// collapsed, a leading digit prefixed with `_`) or kept as sent; with the unit suffix (and
/// `_ratio` on gauges of unit `1`) or without, and then without a `# UNIT` either (OpenMetrics
/// wants a family's unit to end its name).
///
/// For counters the returned family name has no `_total` under any strategy: the exposition
/// formats name a counter's sample `<family>_total` (OpenMetrics requires it), so a counter keeps
/// `_total` even under the strategies without suffixes.
pub fn prometheus_name_with(
    name: &str,
    unit: &str,
    kind: MetricKind,
    strategy: TranslationStrategy,
) -> (String, String) {
    if strategy == TranslationStrategy::UnderscoreEscapingWithSuffixes {
        return escaped_with_suffixes(name, unit, kind);
    }
    let mut out = String::with_capacity(name.len() + 16);
    if strategy.escapes() {
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            out.push('_');
        }
        push_sanitized(&mut out, name, true);
    } else {
        out.push_str(name);
    }
    // `total` and the one character before it, as Prometheus trims it from UTF-8 names.
    if kind == MetricKind::Counter
        && let Some(base) = out.strip_suffix("total")
        && let Some(delimiter) = base.chars().next_back()
        && base.len() > delimiter.len_utf8()
    {
        out.truncate(base.len() - delimiter.len_utf8());
    }
    let unit = if strategy.suffixes() {
        prometheus_unit(unit, kind)
    } else {
        String::new()
    };
    if !unit.is_empty() && !out.ends_with(unit.as_str()) {
        out.push('_');
        out.push_str(&unit);
    }
    if out.is_empty() {
        out.push('_');
    }
    (out, unit)
}

fn escaped_with_suffixes(name: &str, unit: &str, kind: MetricKind) -> (String, String) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use TranslationStrategy::*;

    /// Each strategy's names for OTLP metrics with units, dots, UTF-8 and `_total`, as
    /// Prometheus's OTLP receiver gives them (`_total` aside: a counter's family name never
    /// carries it, its samples always do).
    #[test]
    fn each_strategy_names_metrics_as_prometheus_does() {
        type Case<'a> = (&'a str, &'a str, MetricKind, [(&'a str, &'a str); 4]);
        let cases: [Case<'_>; 6] = [
            (
                "http.server.request.duration",
                "s",
                MetricKind::Histogram,
                [
                    ("http_server_request_duration_seconds", "seconds"),
                    ("http_server_request_duration", ""),
                    ("http.server.request.duration_seconds", "seconds"),
                    ("http.server.request.duration", ""),
                ],
            ),
            (
                "system.memory.utilization",
                "1",
                MetricKind::Gauge,
                [
                    ("system_memory_utilization_ratio", "ratio"),
                    ("system_memory_utilization", ""),
                    ("system.memory.utilization_ratio", "ratio"),
                    ("system.memory.utilization", ""),
                ],
            ),
            (
                "requests.total",
                "{request}",
                MetricKind::Counter,
                [("requests", ""), ("requests", ""), ("requests", ""), ("requests", "")],
            ),
            (
                "io_bytes_total",
                "By",
                MetricKind::Counter,
                [
                    ("io_bytes", "bytes"),
                    ("io_bytes", ""),
                    ("io_bytes", "bytes"),
                    ("io_bytes", ""),
                ],
            ),
            (
                "température.cœur",
                "Cel",
                MetricKind::Gauge,
                [
                    ("temp_rature_c_ur_celsius", "celsius"),
                    ("temp_rature_c_ur", ""),
                    ("température.cœur_celsius", "celsius"),
                    ("température.cœur", ""),
                ],
            ),
            (
                "2xx.rate",
                "1/s",
                MetricKind::Gauge,
                [
                    ("_2xx_rate_per_second", "per_second"),
                    ("_2xx_rate", ""),
                    ("2xx.rate_per_second", "per_second"),
                    ("2xx.rate", ""),
                ],
            ),
        ];
        for (name, unit, kind, want) in cases {
            for (strategy, (want_name, want_unit)) in [
                UnderscoreEscapingWithSuffixes,
                UnderscoreEscapingWithoutSuffixes,
                NoUtf8EscapingWithSuffixes,
                NoTranslation,
            ]
            .into_iter()
            .zip(want)
            {
                assert_eq!(
                    prometheus_name_with(name, unit, kind, strategy),
                    (want_name.to_string(), want_unit.to_string()),
                    "{name} [{unit}] under {strategy:?}"
                );
            }
        }
    }

    #[test]
    fn strategies_parse_from_their_prometheus_names() {
        for (s, want) in [
            ("UnderscoreEscapingWithSuffixes", UnderscoreEscapingWithSuffixes),
            ("UnderscoreEscapingWithoutSuffixes", UnderscoreEscapingWithoutSuffixes),
            ("NoUTF8EscapingWithSuffixes", NoUtf8EscapingWithSuffixes),
            ("NoTranslation", NoTranslation),
        ] {
            let got: TranslationStrategy = serde_yaml_ng::from_str(s).expect(s);
            assert_eq!(got, want);
            assert_eq!(serde_yaml_ng::to_string(&got).expect("yaml").trim(), s);
        }
        assert!(serde_yaml_ng::from_str::<TranslationStrategy>("NoUtf8EscapingWithSuffixes").is_err());
    }
}
