//! Enrichment: attributes added, changed or removed on metrics and spans before translation and
//! span metrics read them, so an enriched attribute can become a label or a dimension.
//!
//! In: a metrics or traces request, by mutable reference. Out: the same request, edited in
//! place. Order per resource: service-catalog attributes (inserted), static
//! `resource_attributes`, then the rules in config order. Nothing here does I/O except
//! [`CatalogHandle::reload`], which the app calls from a background task; requests only take a
//! snapshot of the current catalog (an `Arc` clone under a short read lock), so a reload never
//! blocks or drops data.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use parking_lot::{Mutex, RwLock};
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::model::Signal;
use crate::util::glob::Glob;

pub mod config;
pub use config::*;

#[cfg(test)]
mod tests;

/// Errors from building an [`Enricher`] or loading a catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrichError {
    /// A rule's pattern does not compile.
    #[error("processors.enrich.rules[{index}].pattern: {source}")]
    Pattern {
        /// The rule's index.
        index: usize,
        /// The compile error.
        source: regex::Error,
    },
    /// The catalog file cannot be read.
    #[error("cannot read catalog {path}: {source}")]
    CatalogRead {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The catalog file's contents are not a valid catalog.
    #[error("invalid catalog {path}: {message}")]
    CatalogParse {
        /// The file.
        path: String,
        /// What is wrong, with a line number where known.
        message: String,
    },
    /// The catalog's format is neither configured nor implied by its extension.
    #[error("cannot tell the format of catalog {0}; set processors.enrich.catalog.format")]
    CatalogFormat(String),
}

/// A service catalog: `service.name` → resource attributes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Catalog {
    entries: HashMap<String, Vec<KeyValue>>,
}

impl Catalog {
    /// Parses catalog text. YAML: `service: {attribute: scalar, …}`; CSV: a header row whose first
    /// column is `service.name`, then one row per service (empty cells are left out).
    ///
    /// # Errors
    /// A message saying what is wrong, with the line where known.
    pub fn parse(text: &str, format: CatalogFormat) -> Result<Self, String> {
        match format {
            CatalogFormat::Yaml => Self::parse_yaml(text),
            CatalogFormat::Csv => Self::parse_csv(text),
        }
    }

    fn parse_yaml(text: &str) -> Result<Self, String> {
        use serde_yaml_ng::Value;
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = HashMap::new();
        let map = match doc {
            Value::Null => return Ok(Self::default()),
            Value::Mapping(m) => m,
            _ => return Err("expected a mapping of service.name to attributes".into()),
        };
        for (service, attrs) in map {
            let service = scalar(&service).ok_or("service names must be scalars")?;
            let Value::Mapping(attrs) = attrs else {
                return Err(format!("`{service}`: expected a mapping of attribute to value"));
            };
            let mut kvs = Vec::with_capacity(attrs.len());
            for (k, v) in attrs {
                let (Some(k), Some(v)) = (scalar(&k), scalar(&v)) else {
                    return Err(format!("`{service}`: attribute keys and values must be scalars"));
                };
                kvs.push(string_kv(k, v));
            }
            entries.insert(service, kvs);
        }
        Ok(Self { entries })
    }

    fn parse_csv(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Ok(Self::default());
        };
        let header = csv_fields(header).map_err(|e| format!("line 1: {e}"))?;
        if header.first().map(String::as_str) != Some("service.name") {
            return Err("line 1: the first column must be `service.name`".into());
        }
        let mut entries = HashMap::new();
        for (n, line) in lines {
            let fields = csv_fields(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            if fields.len() != header.len() {
                return Err(format!(
                    "line {}: {} fields, the header has {}",
                    n + 1,
                    fields.len(),
                    header.len()
                ));
            }
            let mut it = header.iter().zip(fields);
            let Some((_, service)) = it.next() else { continue };
            let kvs = it
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| string_kv(k.clone(), v))
                .collect();
            entries.insert(service, kvs);
        }
        Ok(Self { entries })
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the catalog names no service.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The attributes of `service`.
    pub fn get(&self, service: &str) -> Option<&[KeyValue]> {
        self.entries.get(service).map(Vec::as_slice)
    }
}

fn scalar(v: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One CSV row: comma-separated, fields optionally double-quoted (`""` is a quote).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                out.push(if was_quoted {
                    std::mem::take(&mut cur)
                } else {
                    cur.trim().to_string()
                });
                cur.clear();
                was_quoted = false;
            }
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    out.push(if was_quoted { cur } else { cur.trim().to_string() });
    Ok(out)
}

/// The live catalog and what is needed to reload it.
#[derive(Debug)]
pub struct CatalogHandle {
    path: String,
    format: CatalogFormat,
    current: RwLock<Arc<Catalog>>,
    /// Contents last read (good or bad; `None`: unreadable), so an unchanged file is neither
    /// re-parsed nor re-reported.
    last: Mutex<Option<Vec<u8>>>,
}

impl CatalogHandle {
    /// Loads the catalog `config` names.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or its format is unknown.
    pub fn load(config: &CatalogConfig) -> Result<Self, EnrichError> {
        let format = config
            .effective_format()
            .ok_or_else(|| EnrichError::CatalogFormat(config.path.clone()))?;
        let bytes = std::fs::read(&config.path).map_err(|source| EnrichError::CatalogRead {
            path: config.path.clone(),
            source,
        })?;
        let catalog = parse_bytes(&bytes, format, &config.path)?;
        Ok(Self {
            path: config.path.clone(),
            format,
            current: RwLock::new(Arc::new(catalog)),
            last: Mutex::new(Some(bytes)),
        })
    }

    /// Re-reads the file. `None` when its contents have not changed since the last call; otherwise
    /// the number of services of the new catalog, now live, or why it was refused (the old
    /// catalog stays live).
    ///
    /// # Errors
    /// Inside the `Some`: the file cannot be read or parsed.
    pub fn reload(&self) -> Option<Result<usize, EnrichError>> {
        let read = std::fs::read(&self.path);
        let mut last = self.last.lock();
        let bytes = match read {
            Ok(b) => b,
            Err(source) => {
                // Reported once, until the file can be read again.
                if last.is_none() {
                    return None;
                }
                *last = None;
                return Some(Err(EnrichError::CatalogRead {
                    path: self.path.clone(),
                    source,
                }));
            }
        };
        if last.as_deref() == Some(bytes.as_slice()) {
            return None;
        }
        let parsed = parse_bytes(&bytes, self.format, &self.path);
        *last = Some(bytes);
        drop(last);
        Some(parsed.map(|c| {
            let n = c.len();
            *self.current.write() = Arc::new(c);
            n
        }))
    }

    /// The catalog now live.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.read().clone()
    }

    /// The catalog file.
    pub fn path(&self) -> &str {
        &self.path
    }
}

fn parse_bytes(bytes: &[u8], format: CatalogFormat, path: &str) -> Result<Catalog, EnrichError> {
    let text = std::str::from_utf8(bytes).map_err(|_| EnrichError::CatalogParse {
        path: path.into(),
        message: "not UTF-8".into(),
    })?;
    Catalog::parse(text, format).map_err(|message| EnrichError::CatalogParse {
        path: path.into(),
        message,
    })
}

fn any_match(globs: &[Glob], text: &str) -> bool {
    globs.is_empty() || globs.iter().any(|g| g.matches(text))
}

#[derive(Debug, Clone)]
enum Op {
    Insert(AnyValue),
    Upsert(AnyValue),
    Update(AnyValue),
    Delete,
    Rename(String),
    Hash,
    Extract(Regex),
}

#[derive(Debug, Clone)]
struct Rule {
    key: String,
    op: Op,
    resource: bool,
    metrics: bool,
    traces: bool,
    services: Vec<Glob>,
    names: Vec<Glob>,
}

/// The enrichment processor built from `processors.enrich`.
#[derive(Debug)]
pub struct Enricher {
    statics: Vec<(KeyValue, bool)>,
    rules: Vec<Rule>,
    catalog: Option<Arc<CatalogHandle>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sig {
    Metrics,
    Traces,
}

impl Enricher {
    /// Builds the processor; loads the catalog when one is configured.
    ///
    /// # Errors
    /// A pattern that does not compile, or a catalog that cannot be loaded.
    pub fn new(config: &EnrichConfig) -> Result<Self, EnrichError> {
        let statics = config
            .resource_attributes
            .iter()
            .map(|a| {
                (
                    string_kv(a.key.clone(), a.value.clone()),
                    a.action == StaticAction::Upsert,
                )
            })
            .collect();
        let mut rules = Vec::with_capacity(config.rules.len());
        for (index, r) in config.rules.iter().enumerate() {
            let value = || string_value(r.value.clone().unwrap_or_default());
            let op = match r.action {
                RuleAction::Insert => Op::Insert(value()),
                RuleAction::Upsert => Op::Upsert(value()),
                RuleAction::Update => Op::Update(value()),
                RuleAction::Delete => Op::Delete,
                RuleAction::Rename => Op::Rename(r.new_key.clone().unwrap_or_default()),
                RuleAction::Hash => Op::Hash,
                RuleAction::Extract => Op::Extract(
                    Regex::new(r.pattern.as_deref().unwrap_or_default())
                        .map_err(|source| EnrichError::Pattern { index, source })?,
                ),
            };
            let all = r.signals.is_empty();
            rules.push(Rule {
                key: r.key.clone(),
                op,
                resource: r.target == RuleTarget::Resource,
                metrics: all || r.signals.contains(&Signal::Metrics),
                traces: all || r.signals.contains(&Signal::Traces),
                services: r.services.iter().map(|g| Glob::new(g)).collect(),
                names: r.names.iter().map(|g| Glob::new(g)).collect(),
            });
        }
        let catalog = config
            .catalog
            .as_ref()
            .map(CatalogHandle::load)
            .transpose()?
            .map(Arc::new);
        Ok(Self {
            statics,
            rules,
            catalog,
        })
    }

    /// The catalog, for the reload task.
    pub fn catalog(&self) -> Option<Arc<CatalogHandle>> {
        self.catalog.clone()
    }

    /// Whether enrichment changes nothing (no catalog, no static attributes, no rules).
    pub fn is_noop(&self) -> bool {
        self.statics.is_empty() && self.rules.is_empty() && self.catalog.is_none()
    }

    /// Enriches a metrics request in place.
    pub fn metrics(&self, req: &mut ExportMetricsServiceRequest) {
        if self.is_noop() {
            return;
        }
        let catalog = self.catalog.as_ref().map(|c| c.current());
        for rm in &mut req.resource_metrics {
            let had_resource = rm.resource.is_some();
            let resource = rm.resource.get_or_insert_with(Default::default);
            let service = self.resource(&mut resource.attributes, catalog.as_deref(), Sig::Metrics);
            // A resource the sender left out stays out unless enrichment gave it attributes.
            if !had_resource && resource.attributes.is_empty() {
                rm.resource = None;
            }
            let rules: Vec<&Rule> = self
                .rules
                .iter()
                .filter(|r| !r.resource && r.metrics && any_match(&r.services, &service))
                .collect();
            if rules.is_empty() {
                continue;
            }
            for sm in &mut rm.scope_metrics {
                for m in &mut sm.metrics {
                    for rule in &rules {
                        if any_match(&rule.names, &m.name) {
                            for_each_point(m, |attrs| apply(rule, attrs));
                        }
                    }
                }
            }
        }
    }

    /// Enriches a traces request in place.
    pub fn traces(&self, req: &mut ExportTraceServiceRequest) {
        if self.is_noop() {
            return;
        }
        let catalog = self.catalog.as_ref().map(|c| c.current());
        for rs in &mut req.resource_spans {
            let had_resource = rs.resource.is_some();
            let resource = rs.resource.get_or_insert_with(Default::default);
            let service = self.resource(&mut resource.attributes, catalog.as_deref(), Sig::Traces);
            // A resource the sender left out stays out unless enrichment gave it attributes.
            if !had_resource && resource.attributes.is_empty() {
                rs.resource = None;
            }
            let rules: Vec<&Rule> = self
                .rules
                .iter()
                .filter(|r| !r.resource && r.traces && any_match(&r.services, &service))
                .collect();
            if rules.is_empty() {
                continue;
            }
            for ss in &mut rs.scope_spans {
                for span in &mut ss.spans {
                    for rule in &rules {
                        if any_match(&rule.names, &span.name) {
                            apply(rule, &mut span.attributes);
                        }
                    }
                }
            }
        }
    }

    /// Catalog, static and resource-rule enrichment of one resource; returns its `service.name`
    /// as it was received (the scope of every rule).
    fn resource(&self, attrs: &mut Vec<KeyValue>, catalog: Option<&Catalog>, sig: Sig) -> String {
        let service = attrs
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(value_text)
            .map(Cow::into_owned)
            .unwrap_or_default();
        if let Some(extra) = catalog.and_then(|c| c.get(&service)) {
            for kv in extra {
                if position(attrs, &kv.key).is_none() {
                    attrs.push(kv.clone());
                }
            }
        }
        for (kv, upsert) in &self.statics {
            match position(attrs, &kv.key) {
                Some(i) if *upsert => attrs[i].value = kv.value.clone(),
                Some(_) => {}
                None => attrs.push(kv.clone()),
            }
        }
        for rule in &self.rules {
            let signal_ok = match sig {
                Sig::Metrics => rule.metrics,
                Sig::Traces => rule.traces,
            };
            if rule.resource && signal_ok && any_match(&rule.services, &service) {
                apply(rule, attrs);
            }
        }
        service
    }
}

fn for_each_point(m: &mut Metric, mut f: impl FnMut(&mut Vec<KeyValue>)) {
    match &mut m.data {
        Some(metric::Data::Gauge(g)) => g.data_points.iter_mut().for_each(|p| f(&mut p.attributes)),
        Some(metric::Data::Sum(s)) => s.data_points.iter_mut().for_each(|p| f(&mut p.attributes)),
        Some(metric::Data::Histogram(h)) => h.data_points.iter_mut().for_each(|p| f(&mut p.attributes)),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.iter_mut().for_each(|p| f(&mut p.attributes)),
        Some(metric::Data::Summary(s)) => s.data_points.iter_mut().for_each(|p| f(&mut p.attributes)),
        None => {}
    }
}

fn position(attrs: &[KeyValue], key: &str) -> Option<usize> {
    attrs.iter().position(|kv| kv.key == key)
}

fn apply(rule: &Rule, attrs: &mut Vec<KeyValue>) {
    let at = position(attrs, &rule.key);
    match (&rule.op, at) {
        (Op::Insert(v), None) | (Op::Upsert(v), None) => attrs.push(KeyValue {
            key: rule.key.clone(),
            value: Some(v.clone()),
            ..Default::default()
        }),
        (Op::Upsert(v), Some(i)) | (Op::Update(v), Some(i)) => attrs[i].value = Some(v.clone()),
        (Op::Delete, Some(_)) => attrs.retain(|kv| kv.key != rule.key),
        (Op::Rename(new_key), Some(i)) => {
            let kv = attrs.remove(i);
            attrs.retain(|other| other.key != *new_key);
            attrs.push(KeyValue {
                key: new_key.clone(),
                ..kv
            });
        }
        (Op::Hash, Some(i)) => {
            if let Some(text) = attrs[i].value.as_ref().and_then(value_text) {
                let digest = Sha256::digest(text.as_bytes());
                attrs[i].value = Some(string_value(crate::util::hex::encode(&digest)));
            }
        }
        (Op::Extract(re), Some(i)) => {
            let Some(text) = attrs[i].value.as_ref().and_then(value_text).map(Cow::into_owned) else {
                return;
            };
            if let Some(caps) = re.captures(&text) {
                for name in re.capture_names().flatten() {
                    if let Some(m) = caps.name(name) {
                        let v = string_value(m.as_str().to_owned());
                        match position(attrs, name) {
                            Some(j) => attrs[j].value = Some(v),
                            None => attrs.push(KeyValue {
                                key: name.to_owned(),
                                value: Some(v),
                                ..Default::default()
                            }),
                        }
                    }
                }
            }
        }
        (Op::Update(_) | Op::Delete | Op::Rename(_) | Op::Hash | Op::Extract(_), None) | (Op::Insert(_), Some(_)) => {}
    }
}

/// The text of a scalar value (strings as they are, numbers and booleans printed, bytes as
/// lossy UTF-8); `None` for arrays, maps and empty values.
fn value_text(v: &AnyValue) -> Option<Cow<'_, str>> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(Cow::Borrowed(s)),
        any_value::Value::IntValue(i) => Some(Cow::Owned(i.to_string())),
        any_value::Value::DoubleValue(d) => Some(Cow::Owned(d.to_string())),
        any_value::Value::BoolValue(b) => Some(Cow::Owned(b.to_string())),
        any_value::Value::BytesValue(b) => Some(String::from_utf8_lossy(b)),
        _ => None,
    }
}

fn string_value(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

fn string_kv(key: String, value: String) -> KeyValue {
    KeyValue {
        key,
        value: Some(string_value(value)),
        ..Default::default()
    }
}
