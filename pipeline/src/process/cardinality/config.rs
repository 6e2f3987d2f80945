//! `processors.cardinality`: label allow/deny lists, value normalizers and series limits
//! ([`CardinalityConfig`]), and the checks on them ([`CardinalityConfig::validate`]).

use serde::{Deserialize, Serialize};

use crate::config::types::Problem;

/// `processors.cardinality`: label allow/deny lists and value normalizers, then series limits.
/// Past a limit, new series fold into the metric's overflow series `{otel_metric_overflow="true"}`
/// with totals kept exact. Limits count the overflow series. Metric and label names are matched as
/// Prometheus sees them (`http_server_duration_seconds`, `http_route`; counters also match with
/// `_total`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CardinalityConfig {
    /// Series over all metrics (each metric's overflow series included). `0`: `prometheus.max_series`.
    /// Default `0`.
    pub max_series: usize,
    /// Series per metric (its overflow series included). `0`: no limit. Default `0`.
    pub max_series_per_metric: usize,
    /// Distinct values per label of a metric. `0`: no limit. Default `0`.
    pub max_label_values: usize,
    /// Bound on the per-stream state kept for cumulative streams that are folded or merged by a
    /// label rule (needed to turn them into exact increments). A point that needs new state past it
    /// is rejected (`partial_success`) rather than counted wrongly. Default `1000000`.
    pub max_stream_states: usize,
    /// When not empty, only these labels are kept (`job` and `instance` always are). Default: all.
    pub allow_labels: Vec<String>,
    /// Labels removed. Default: none.
    pub deny_labels: Vec<String>,
    /// Value normalizers, applied in order before the limits. Default: none.
    pub normalize: Vec<NormalizeRule>,
    /// Per-metric overrides; the first whose `match` glob matches applies. Default: none.
    pub metrics: Vec<MetricOverride>,
}

impl Default for CardinalityConfig {
    fn default() -> Self {
        Self {
            max_series: 0,
            max_series_per_metric: 0,
            max_label_values: 0,
            max_stream_states: 1_000_000,
            allow_labels: Vec::new(),
            deny_labels: Vec::new(),
            normalize: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

/// What a normalizer replaces in a label value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NormalizeKind {
    /// UUIDs (`8-4-4-4-12` hex digits) → `{uuid}`.
    Uuid,
    /// Runs of 8 or more hex digits containing a digit (trace ids, hashes, object ids) → `{id}`.
    HexId,
    /// Decimal numbers standing alone (`/users/42` but not `v2`) → `{number}`.
    Number,
    /// IPv4 and IPv6 addresses → `{ip}`.
    Ip,
    /// Every match of `pattern` → `replacement`.
    Regex,
}

impl NormalizeKind {
    /// The placeholder used when a rule sets no `replacement`.
    pub const fn default_replacement(self) -> &'static str {
        match self {
            NormalizeKind::Uuid => "{uuid}",
            NormalizeKind::HexId => "{id}",
            NormalizeKind::Number => "{number}",
            NormalizeKind::Ip => "{ip}",
            NormalizeKind::Regex => "",
        }
    }

    /// The name used in self metrics and `/api/v1/cardinality`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NormalizeKind::Uuid => "uuid",
            NormalizeKind::HexId => "hex_id",
            NormalizeKind::Number => "number",
            NormalizeKind::Ip => "ip",
            NormalizeKind::Regex => "regex",
        }
    }
}

/// One rule of `processors.cardinality.normalize`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NormalizeRule {
    /// Label names (as Prometheus sees them) whose values are normalized.
    pub labels: Vec<String>,
    /// `uuid`, `hex_id`, `number`, `ip` or `regex`.
    pub kind: NormalizeKind,
    /// For `regex`: the regular expression whose matches are replaced.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The placeholder. Default: `{uuid}`, `{id}`, `{number}`, `{ip}`; required for `regex`
    /// (`$name` refers to a capture group).
    #[serde(default)]
    pub replacement: Option<String>,
    /// Globs on the metric name; the rule applies when one matches. Default: every metric.
    #[serde(default)]
    pub metrics: Vec<String>,
}

/// One entry of `processors.cardinality.metrics`: limits and label lists for matching metrics,
/// replacing the top-level ones.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricOverride {
    /// Glob (`*`, `?`) on the metric name.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Series of each matching metric (overflow included), instead of `max_series_per_metric`.
    /// `0`: no limit.
    #[serde(default)]
    pub max_series: Option<usize>,
    /// Distinct values per label, instead of `max_label_values`. `0`: no limit.
    #[serde(default)]
    pub max_label_values: Option<usize>,
    /// Instead of the top-level `allow_labels`.
    #[serde(default)]
    pub allow_labels: Option<Vec<String>>,
    /// Instead of the top-level `deny_labels`.
    #[serde(default)]
    pub deny_labels: Option<Vec<String>>,
}

impl CardinalityConfig {
    /// The global series bound in effect: `max_series`, or `prometheus_max` when it is `0` (never
    /// above `prometheus_max`, where the store itself refuses series).
    pub fn effective_max_series(&self, prometheus_max: usize) -> usize {
        if self.max_series == 0 {
            prometheus_max
        } else {
            self.max_series.min(prometheus_max)
        }
    }

    /// Checks `processors.cardinality` against itself and `prometheus.max_series` (passed in as
    /// `prometheus_max`); every problem with its key path and a hint.
    pub fn validate(&self, prometheus_max: usize) -> Vec<Problem> {
        let mut out = Vec::new();
        let p = |key: String, message: String, hint: &str| Problem {
            path: format!("processors.cardinality.{key}"),
            message,
            hint: hint.into(),
        };
        let global = self.effective_max_series(prometheus_max);
        if self.max_series > prometheus_max {
            out.push(p(
                "max_series".into(),
                format!(
                    "{} is above prometheus.max_series ({prometheus_max}), which would refuse series first",
                    self.max_series
                ),
                "lower it, or raise prometheus.max_series (`0` uses prometheus.max_series)",
            ));
        }
        if self.max_series_per_metric > global {
            out.push(p(
                "max_series_per_metric".into(),
                format!(
                    "{} is above the global series limit ({global}), so it could never apply",
                    self.max_series_per_metric
                ),
                "lower it below max_series, or raise max_series",
            ));
        }
        if self.max_stream_states == 0 {
            out.push(p(
                "max_stream_states".into(),
                "must be greater than zero".into(),
                "e.g. `1000000` (50–90 bytes each for counters)",
            ));
        }
        label_list_problems(&self.allow_labels, &self.deny_labels, "", &mut out);
        for (i, r) in self.normalize.iter().enumerate() {
            let at = |k: &str| format!("normalize[{i}].{k}");
            if r.labels.is_empty() {
                out.push(p(at("labels"), "names no label".into(), "e.g. `labels: [http_route]`"));
            }
            for (j, l) in r.labels.iter().enumerate() {
                out.extend(label_name_problem(
                    &format!("processors.cardinality.normalize[{i}].labels[{j}]"),
                    l,
                ));
            }
            match (r.kind, &r.pattern) {
                (NormalizeKind::Regex, None) => out.push(p(
                    at("pattern"),
                    "`regex` needs a pattern".into(),
                    "add e.g. `pattern: '/orders/[^/]+'`",
                )),
                (NormalizeKind::Regex, Some(pat)) => {
                    if let Err(e) = regex::Regex::new(pat) {
                        out.push(p(
                            at("pattern"),
                            format!("does not compile: {e}"),
                            "fix the regular expression (Rust `regex` syntax; in YAML prefer single quotes so `\\` stays a backslash)",
                        ));
                    }
                    if r.replacement.is_none() {
                        out.push(p(
                            at("replacement"),
                            "`regex` needs a replacement".into(),
                            "add e.g. `replacement: '/orders/{id}'`",
                        ));
                    }
                }
                (_, None) => {}
                (k, Some(_)) => out.push(p(
                    at("pattern"),
                    format!("is only used by `regex`; `{}` has a built-in pattern", k.as_str()),
                    "remove it, or use `kind: regex`",
                )),
            }
            if r.replacement.as_deref() == Some("") {
                out.push(p(
                    at("replacement"),
                    "is empty; a label with an empty value disappears in Prometheus".into(),
                    "use a placeholder such as `{id}`, or drop the label with deny_labels",
                ));
            }
            for (j, g) in r.metrics.iter().enumerate() {
                if g.is_empty() {
                    out.push(p(
                        format!("normalize[{i}].metrics[{j}]"),
                        "empty glob".into(),
                        "e.g. `http_*`",
                    ));
                }
            }
        }
        for (i, o) in self.metrics.iter().enumerate() {
            let at = |k: &str| format!("metrics[{i}].{k}");
            if o.pattern.is_empty() {
                out.push(p(at("match"), "empty glob".into(), "e.g. `match: \"http_*\"`"));
            }
            if let Some(n) = o.max_series
                && n > global
            {
                out.push(p(
                    at("max_series"),
                    format!("{n} is above the global series limit ({global}), so it could never apply"),
                    "lower it below processors.cardinality.max_series, or raise that",
                ));
            }
            if o.max_series.is_none()
                && o.max_label_values.is_none()
                && o.allow_labels.is_none()
                && o.deny_labels.is_none()
            {
                out.push(p(
                    format!("metrics[{i}]"),
                    "sets nothing, so it only hides later entries".into(),
                    "add max_series, max_label_values, allow_labels or deny_labels, or remove it",
                ));
            }
            let allow = o.allow_labels.as_ref().unwrap_or(&self.allow_labels);
            let deny = o.deny_labels.as_ref().unwrap_or(&self.deny_labels);
            if o.allow_labels.is_some() || o.deny_labels.is_some() {
                label_list_problems(allow, deny, &format!("metrics[{i}]."), &mut out);
            }
        }
        out
    }
}

/// `allow_labels` and `deny_labels` must name valid labels, and no label may be in both.
fn label_list_problems(allow: &[String], deny: &[String], prefix: &str, out: &mut Vec<Problem>) {
    for (key, list) in [("allow_labels", allow), ("deny_labels", deny)] {
        for (j, l) in list.iter().enumerate() {
            out.extend(label_name_problem(
                &format!("processors.cardinality.{prefix}{key}[{j}]"),
                l,
            ));
        }
    }
    for (j, l) in deny.iter().enumerate() {
        if allow.contains(l) {
            out.push(Problem {
                path: format!("processors.cardinality.{prefix}deny_labels[{j}]"),
                message: format!("`{l}` is also in allow_labels"),
                hint: "keep the label in one of the two lists".into(),
            });
        }
    }
}

/// Labels are matched as Prometheus sees them, so a name with characters Prometheus replaces never
/// matches.
fn label_name_problem(path: &str, name: &str) -> Option<Problem> {
    let fixed = crate::util::labels::sanitized_label_name(name);
    (fixed != name).then(|| Problem {
        path: path.into(),
        message: format!("`{name}` is not a label name Spindle produces, so it would never match"),
        hint: format!("labels are matched as Prometheus shows them, e.g. `{fixed}`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{parse, problems};

    #[test]
    fn validate_returns_its_own_problems_with_full_key_paths() {
        assert_eq!(CardinalityConfig::default().validate(100), vec![]);
        let c = CardinalityConfig {
            max_series: 200,
            deny_labels: vec!["http.route".into()],
            ..CardinalityConfig::default()
        };
        // `prometheus.max_series` is passed in: the component never reads another's config.
        assert_eq!(c.validate(1000), vec![c.validate(100)[1].clone()]);
        let p = c.validate(100);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "processors.cardinality.max_series",
                "processors.cardinality.deny_labels[0]"
            ]
        );
        assert!(p[0].message.contains("above prometheus.max_series (100)"), "{}", p[0]);
        assert!(p[1].hint.contains("`http_route`"), "{}", p[1]);
    }

    #[test]
    fn cardinality_keys_parse_and_every_contradiction_is_reported() {
        let c = parse(
            "processors:\n  cardinality:\n    max_series: 1000\n    max_series_per_metric: 100\n    deny_labels: [user_id]\n    normalize:\n      - {labels: [http_route], kind: number}\n      - {labels: [path], kind: regex, pattern: '^/o/[^/]+', replacement: '/o/{id}', metrics: ['http_*']}\n    metrics:\n      - {match: 'http_*', max_series: 500, max_label_values: 50}\n",
        )
        .unwrap();
        let card = &c.processors.cardinality;
        assert_eq!((card.max_series, card.max_series_per_metric), (1000, 100));
        assert_eq!(card.normalize[1].kind, NormalizeKind::Regex);
        assert_eq!(card.metrics[0].max_series, Some(500));

        let p = problems(
            "prometheus:\n  max_series: 100\nprocessors:\n  cardinality:\n    max_series: 200\n    max_series_per_metric: 300\n    max_stream_states: 0\n    allow_labels: [a, http.route]\n    deny_labels: [a]\n    normalize:\n      - {labels: [], kind: uuid, pattern: x}\n      - {labels: [p], kind: regex, pattern: '(unclosed'}\n      - {labels: [p], kind: number, replacement: ''}\n    metrics:\n      - {match: 'http_*', max_series: 150}\n      - {match: 'x'}\n",
        );
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "processors.cardinality.max_series",
            "processors.cardinality.max_series_per_metric",
            "processors.cardinality.max_stream_states",
            "processors.cardinality.allow_labels[1]",
            "processors.cardinality.deny_labels[0]",
            "processors.cardinality.normalize[0].labels",
            "processors.cardinality.normalize[0].pattern",
            "processors.cardinality.normalize[1].pattern",
            "processors.cardinality.normalize[1].replacement",
            "processors.cardinality.normalize[2].replacement",
            "processors.cardinality.metrics[0].max_series",
            "processors.cardinality.metrics[1]",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        let per_metric = p
            .iter()
            .find(|p| p.path == "processors.cardinality.metrics[0].max_series")
            .unwrap();
        assert!(
            per_metric.message.contains("above the global series limit (100)"),
            "{per_metric}"
        );
        let label = p
            .iter()
            .find(|p| p.path == "processors.cardinality.allow_labels[1]")
            .unwrap();
        assert!(label.hint.contains("`http_route`"), "{label}");
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
    }
}
