//! Receiver authentication: the bearer token of a request's headers (checked before its body is
//! read, [`authenticate`]), and the service filter of a token limited to some services
//! ([`ServiceFilter`]), which keeps the resources it may write and reports the rest.

use http::HeaderMap;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::status::Refusal;
use crate::util::tokens::{Scope, TokenFile, bearer};

/// The `service.name` a resource without one is written as (the OTel SDKs' default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// The scope of the request's bearer token (`Authorization: Bearer …`, the same header as gRPC's
/// `authorization` metadata); [`Scope::Any`] when no token file is configured.
///
/// # Errors
/// [`Refusal::Unauthenticated`] when the token is missing or not listed.
pub fn authenticate(tokens: Option<&TokenFile>, headers: &HeaderMap) -> Result<Scope, Refusal> {
    let Some(tokens) = tokens else {
        return Ok(Scope::Any);
    };
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .ok_or(Refusal::Unauthenticated)?;
    tokens.check(token).ok_or(Refusal::Unauthenticated)
}

/// What a service filter took out of a request.
#[derive(Debug, Default, PartialEq)]
pub struct Denied {
    /// Items (data points, spans) removed.
    pub items: u64,
    /// Resources removed.
    pub resources: usize,
    /// Their distinct `service.name`s, in order of appearance.
    pub services: Vec<String>,
}

impl Denied {
    /// The message for `partial_success` or the refusal.
    pub fn message(&self) -> String {
        let names: Vec<String> = self.services.iter().map(|s| format!("{s:?}")).collect();
        format!("the bearer token may not write service {}", names.join(", "))
    }

    fn note(&mut self, service: &str, items: u64) {
        self.items += items;
        self.resources += 1;
        if !self.services.iter().any(|s| s == service) {
            self.services.push(service.to_string());
        }
    }
}

/// A request whose resources a limited token's [`Scope`] filters.
pub trait ServiceFilter {
    /// Keeps the resources whose `service.name` the scope allows; returns what was removed.
    fn retain_services(&mut self, scope: &Scope) -> Denied;
    /// Whether the request has no resource left.
    fn is_empty(&self) -> bool;
}

/// The `service.name` of a resource, or [`UNKNOWN_SERVICE`].
pub fn service_name(resource: Option<&Resource>) -> &str {
    resource
        .and_then(|r| service_attr(&r.attributes))
        .unwrap_or(UNKNOWN_SERVICE)
}

fn service_attr(attrs: &[KeyValue]) -> Option<&str> {
    attrs
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

impl ServiceFilter for ExportMetricsServiceRequest {
    fn retain_services(&mut self, scope: &Scope) -> Denied {
        let mut denied = Denied::default();
        self.resource_metrics.retain(|rm| {
            let service = service_name(rm.resource.as_ref());
            if scope.allows(service) {
                return true;
            }
            let points = rm
                .scope_metrics
                .iter()
                .flat_map(|sm| &sm.metrics)
                .map(|m| match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::Sum(s)) => s.data_points.len(),
                    Some(Data::Histogram(h)) => h.data_points.len(),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                    Some(Data::Summary(s)) => s.data_points.len(),
                    None => 0,
                } as u64)
                .sum();
            denied.note(service, points);
            false
        });
        denied
    }

    fn is_empty(&self) -> bool {
        self.resource_metrics.is_empty()
    }
}

impl ServiceFilter for ExportTraceServiceRequest {
    fn retain_services(&mut self, scope: &Scope) -> Denied {
        let mut denied = Denied::default();
        self.resource_spans.retain(|rs| {
            let service = service_name(rs.resource.as_ref());
            if scope.allows(service) {
                return true;
            }
            let spans = rs.scope_spans.iter().map(|ss| ss.spans.len() as u64).sum();
            denied.note(service, spans);
            false
        });
        denied
    }

    fn is_empty(&self) -> bool {
        self.resource_spans.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{counter_metric, kv, metrics_request, span, traces_request};
    use crate::util::tokens::Tokens;

    #[test]
    fn a_limited_scope_keeps_its_services_and_counts_the_rest() {
        let tokens = Tokens::parse("t checkout-*,unknown_*\n").unwrap();
        let scope = tokens.check(b"t").unwrap();
        let m = |s: &str, n: usize| {
            let metrics = (0..n).map(|i| counter_metric(&format!("c{i}"), 1, vec![])).collect();
            metrics_request(vec![kv("service.name", s)], metrics).resource_metrics
        };
        let mut req = ExportMetricsServiceRequest::default();
        for (s, n) in [("checkout-eu", 1), ("billing", 2), ("billing", 1), ("cart", 1)] {
            req.resource_metrics.extend(m(s, n));
        }
        req.resource_metrics
            .extend(metrics_request(vec![], vec![counter_metric("x", 1, vec![])]).resource_metrics);
        let denied = req.retain_services(&scope);
        assert_eq!(denied.items, 4);
        assert_eq!(denied.resources, 3);
        assert_eq!(denied.services, ["billing", "cart"]);
        assert_eq!(
            denied.message(),
            "the bearer token may not write service \"billing\", \"cart\""
        );
        assert_eq!(
            req.resource_metrics.len(),
            2,
            "checkout-eu and the resource without service.name"
        );

        let mut t = traces_request(
            vec![kv("service.name", "billing")],
            vec![span("a", 1, vec![]), span("b", 2, vec![])],
        );
        let denied = t.retain_services(&scope);
        assert_eq!((denied.items, t.is_empty()), (2, true));
        assert_eq!(t.retain_services(&Scope::Any), Denied::default());
    }

    #[test]
    fn authenticate_reads_the_bearer_header() {
        let dir = std::env::temp_dir().join(format!("spindle-recv-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t"), "tok\n").unwrap();
        let file = TokenFile::load(dir.join("t")).unwrap();
        let mut h = HeaderMap::new();
        assert!(matches!(authenticate(None, &h), Ok(Scope::Any)));
        assert!(matches!(authenticate(Some(&file), &h), Err(Refusal::Unauthenticated)));
        h.insert("authorization", "Bearer tok".parse().unwrap());
        assert!(matches!(authenticate(Some(&file), &h), Ok(Scope::Any)));
        h.insert("authorization", "Basic dG9rOg==".parse().unwrap());
        assert!(authenticate(Some(&file), &h).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
