//! `processors.enrich`: static resource attributes, attribute rules and the service catalog
//! ([`EnrichConfig`]), and the checks on them ([`EnrichConfig::validate`]).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::types::{DurationStr, Problem};
use crate::model::Signal;

/// `processors.enrich`: applied to every metrics and traces request before anything else reads
/// it. Order: catalog attributes, then `resource_attributes`, then `rules` in order. Default:
/// nothing configured, and enrichment is skipped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Static resource attributes set on every resource, e.g.
    /// `[{key: deployment.environment, value: prod, action: upsert}]`. Default: none.
    pub resource_attributes: Vec<StaticAttribute>,
    /// Attribute rules, applied in order. Default: none.
    pub rules: Vec<EnrichRule>,
    /// A service catalog file mapping `service.name` to resource attributes (team, tier, owner …),
    /// reloaded when it changes. Default: none.
    pub catalog: Option<CatalogConfig>,
}

/// One static resource attribute of `processors.enrich.resource_attributes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticAttribute {
    /// Attribute key.
    pub key: String,
    /// Attribute value (a string).
    pub value: String,
    /// `insert` (only when absent) or `upsert` (always). Default `insert`.
    #[serde(default)]
    pub action: StaticAction,
}

/// How a static resource attribute is set.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StaticAction {
    /// Only when the resource lacks the key.
    #[default]
    Insert,
    /// Always, replacing an existing value.
    Upsert,
}

/// What an enrichment rule does to the attribute `key`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Sets `value` only when `key` is absent.
    Insert,
    /// Sets `value`, replacing an existing value.
    Upsert,
    /// Sets `value` only when `key` is present.
    Update,
    /// Removes `key`.
    Delete,
    /// Moves the value of `key` to `new_key` (replacing `new_key`).
    Rename,
    /// Replaces the value with the SHA-256 hex digest of its text, so values correlate but
    /// cannot be read.
    Hash,
    /// Matches `pattern` against the value; each named capture group that matched becomes an
    /// attribute (upserted).
    Extract,
}

/// Which attributes a rule edits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleTarget {
    /// The data point's or span's own attributes.
    #[default]
    Attributes,
    /// The resource's attributes.
    Resource,
}

/// One rule of `processors.enrich.rules`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichRule {
    /// `insert`, `upsert`, `update`, `delete`, `rename`, `hash` or `extract`.
    pub action: RuleAction,
    /// The attribute the rule reads or writes.
    pub key: String,
    /// The value for `insert`, `upsert` and `update`.
    #[serde(default)]
    pub value: Option<String>,
    /// The destination key for `rename`.
    #[serde(default)]
    pub new_key: Option<String>,
    /// For `extract`: a regular expression with named groups, e.g. `^/api/(?P<api_version>v\d+)/`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `attributes` (data point / span attributes) or `resource`. Default `attributes`.
    #[serde(default)]
    pub target: RuleTarget,
    /// Signals the rule applies to (`metrics`, `traces`). Default: both.
    #[serde(default)]
    pub signals: Vec<Signal>,
    /// Globs (`*`, `?`) on `service.name`; the rule applies when one matches. Default: every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Globs on the metric or span name (only with `target: attributes`). Default: every name.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Format of the service catalog file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CatalogFormat {
    /// `service: {attribute: value, …}` mappings.
    Yaml,
    /// A header row starting with `service.name`, then one row per service.
    Csv,
}

impl CatalogFormat {
    /// The format a file name's extension implies (`.yaml`, `.yml`, `.csv`).
    pub fn from_path(path: &str) -> Option<Self> {
        let ext = Path::new(path).extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Self::Yaml),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// `processors.enrich.catalog`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// The catalog file.
    pub path: String,
    /// `yaml` or `csv`. Default: from the file's extension.
    #[serde(default)]
    pub format: Option<CatalogFormat>,
    /// How often the file is checked for changes. Default `10s`.
    #[serde(default = "default_catalog_reload")]
    pub reload_interval: DurationStr,
}

impl CatalogConfig {
    /// The format to read the file with: the configured one, else the extension's.
    pub fn effective_format(&self) -> Option<CatalogFormat> {
        self.format.or_else(|| CatalogFormat::from_path(&self.path))
    }
}

fn default_catalog_reload() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}

impl EnrichConfig {
    /// Checks `processors.enrich`; every problem with its key path and a hint.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let p = |key: String, message: String, hint: &str| Problem {
            path: format!("processors.enrich.{key}"),
            message,
            hint: hint.into(),
        };
        for (i, a) in self.resource_attributes.iter().enumerate() {
            if a.key.is_empty() {
                out.push(p(
                    format!("resource_attributes[{i}].key"),
                    "empty attribute key".into(),
                    "name a resource attribute such as `deployment.environment`",
                ));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |k: &str| format!("rules[{i}].{k}");
            if r.key.is_empty() {
                out.push(p(
                    at("key"),
                    "empty attribute key".into(),
                    "name the attribute the rule acts on",
                ));
            }
            let needs_value = matches!(r.action, RuleAction::Insert | RuleAction::Upsert | RuleAction::Update);
            if needs_value && r.value.is_none() {
                out.push(p(
                    at("value"),
                    format!("`{:?}` needs a value", r.action).to_lowercase(),
                    "add `value: …`",
                ));
            }
            if !needs_value && r.value.is_some() {
                out.push(p(
                    at("value"),
                    "is only used by insert, upsert and update".into(),
                    "remove it or change the action",
                ));
            }
            match (&r.action, &r.new_key) {
                (RuleAction::Rename, None) => out.push(p(
                    at("new_key"),
                    "`rename` needs a new_key".into(),
                    "add `new_key: …`, the attribute's new name",
                )),
                (RuleAction::Rename, Some(k)) if k.is_empty() || *k == r.key => out.push(p(
                    at("new_key"),
                    "must be a non-empty key different from `key`".into(),
                    "name the attribute's new key",
                )),
                (RuleAction::Rename, Some(_)) | (_, None) => {}
                (_, Some(_)) => out.push(p(
                    at("new_key"),
                    "is only used by rename".into(),
                    "remove it or use `action: rename`",
                )),
            }
            match (&r.action, &r.pattern) {
                (RuleAction::Extract, None) => out.push(p(
                    at("pattern"),
                    "`extract` needs a pattern".into(),
                    "add a regular expression with named groups, e.g. `pattern: '^/api/(?P<api_version>v\\d+)/'`",
                )),
                (RuleAction::Extract, Some(pat)) => match regex::Regex::new(pat) {
                    Err(e) => out.push(p(
                        at("pattern"),
                        format!("does not compile: {e}"),
                        "fix the regular expression (Rust `regex` syntax; in YAML prefer single quotes so `\\` stays a backslash)",
                    )),
                    Ok(re) if re.capture_names().flatten().next().is_none() => out.push(p(
                        at("pattern"),
                        "has no named capture group, so it would extract nothing".into(),
                        "name the groups to keep, e.g. `(?P<api_version>v\\d+)`",
                    )),
                    Ok(_) => {}
                },
                (_, None) => {}
                (_, Some(_)) => out.push(p(
                    at("pattern"),
                    "is only used by extract".into(),
                    "remove it or use `action: extract`",
                )),
            }
            if r.target == RuleTarget::Resource && !r.names.is_empty() {
                out.push(p(
                    at("names"),
                    "name globs do not apply to `target: resource` (a resource holds many metrics or spans)".into(),
                    "remove `names`, or use `target: attributes`",
                ));
            }
            for (j, g) in r.services.iter().enumerate() {
                if g.is_empty() {
                    out.push(p(
                        format!("rules[{i}].services[{j}]"),
                        "empty glob".into(),
                        "e.g. `checkout-*`",
                    ));
                }
            }
            for (j, g) in r.names.iter().enumerate() {
                if g.is_empty() {
                    out.push(p(
                        format!("rules[{i}].names[{j}]"),
                        "empty glob".into(),
                        "e.g. `http.server.*`",
                    ));
                }
            }
        }
        if let Some(c) = &self.catalog {
            if c.effective_format().is_none() {
                out.push(p(
                    "catalog.format".into(),
                    format!("cannot tell the format of `{}` from its extension", c.path),
                    "set `format: yaml` or `format: csv`, or name the file `.yaml` / `.csv`",
                ));
            }
            if let Err(e) = std::fs::metadata(&c.path) {
                out.push(p(
                    "catalog.path".into(),
                    format!("cannot read `{}`: {e}", c.path),
                    "give the path of a readable YAML or CSV catalog file",
                ));
            }
            if c.reload_interval.0 < Duration::from_millis(100) {
                out.push(p(
                    "catalog.reload_interval".into(),
                    format!("{} is too short", c.reload_interval),
                    "use at least `100ms`; e.g. `10s`",
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::testing::{parse, problems};

    #[test]
    fn validate_returns_its_own_problems_with_full_key_paths() {
        assert_eq!(EnrichConfig::default().validate(), vec![]);
        let c = EnrichConfig {
            resource_attributes: vec![StaticAttribute {
                key: String::new(),
                value: "x".into(),
                action: StaticAction::Insert,
            }],
            catalog: Some(CatalogConfig {
                path: "/nonexistent/catalog.yaml".into(),
                format: None,
                reload_interval: DurationStr(Duration::from_secs(10)),
            }),
            ..EnrichConfig::default()
        };
        let p = c.validate();
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "processors.enrich.resource_attributes[0].key",
                "processors.enrich.catalog.path"
            ]
        );
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
    }

    #[test]
    fn enrich_keys_parse_and_every_problem_is_reported() {
        let c = parse(
            "processors:\n  enrich:\n    resource_attributes: [{key: env, value: prod, action: upsert}]\n    rules:\n      - {action: extract, key: http.target, pattern: '^/api/(?P<v>v\\d+)', services: ['checkout-*'], names: ['http.*'], signals: [traces]}\n      - {action: hash, key: user.id, target: resource}\n",
        )
        .unwrap();
        let e = &c.processors.enrich;
        assert_eq!(e.resource_attributes[0].action, StaticAction::Upsert);
        assert_eq!(e.rules[0].action, RuleAction::Extract);
        assert_eq!(e.rules[0].signals, vec![Signal::Traces]);
        assert_eq!(e.rules[1].target, RuleTarget::Resource);
        assert_eq!(
            Config::default().processors.enrich,
            EnrichConfig::default(),
            "off by default"
        );

        let p = problems(
            "processors:\n  enrich:\n    rules:\n      - {action: extract, key: a, pattern: '(?P<x>'}\n      - {action: rename, key: a}\n      - {action: extract, key: a}\n      - {action: upsert, key: a}\n      - {action: delete, key: a, target: resource, names: [x]}\n    catalog: {path: /nonexistent/catalog.txt}\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "processors.enrich.rules[0].pattern",
            "processors.enrich.rules[1].new_key",
            "processors.enrich.rules[2].pattern",
            "processors.enrich.rules[3].value",
            "processors.enrich.rules[4].names",
            "processors.enrich.catalog.path",
            "processors.enrich.catalog.format",
        ] {
            assert!(paths.contains(&want), "{want} missing: {paths:?}");
        }
        let re = p
            .iter()
            .find(|p| p.path == "processors.enrich.rules[0].pattern")
            .unwrap();
        assert!(re.message.contains("does not compile"), "{re}");
        assert!(p.iter().all(|p| !p.hint.is_empty()), "{p:?}");
        let p = problems("processors:\n  enrich:\n    rules: [{action: delete, key: a, colour: red}]\n");
        assert_eq!(p[0].path, "processors.enrich.rules[0].colour");
    }
}
