//! Forwarded spans are exactly the spans that arrived, or exactly their enriched version (issue 18,
//! point 5): requests whose resources, scopes, spans, events, links and statuses set every field
//! of the OTLP messages go into an in-process Spindle over OTLP/gRPC and OTLP/HTTP, and what its
//! trace exporter delivers to an [`OtlpSink`] (over both exporter protocols) is compared, decoded,
//! field for field with what was sent, and, for the HTTP exporter, byte for byte.
//!
//! Each test fails if forwarding changes any field: the received `ResourceSpans` are compared as
//! a multiset of their encodings (stricter than `==`: a NaN or -0.0 double must keep its bits),
//! a failure showing the innermost message that differs; and the exporter's HTTP bodies must be
//! exactly the expected request bodies, back to back. A request Spindle forwards untouched even
//! keeps a field order prost would not write and a field Spindle does not know, which shows it
//! took the path that never decodes. (Checked by breaking Spindle on purpose: sending every
//! request down the decoding path fails the first test on the HTTP exporter's bodies; zeroing one
//! link's `flags` on that path fails all three, over both exporters.) The gRPC exporter's messages
//! are compared decoded only: the sink's tonic server does not keep their bytes, but both
//! exporter protocols send the same queued bodies.

mod common;

use std::time::Duration;

use common::{enrich_rule, int_kv, kv, post_protobuf, spindle, str_value};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use spindle::app::Running;
use spindle::config::{Config, DurationStr, EnrichRule, OtlpProtocol, RuleAction, StaticAction, StaticAttribute};
use spindle_e2e::otlp_sink::OtlpSink;

const EXPORTERS: [OtlpProtocol; 2] = [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf];

// ---- requests that set every field ---------------------------------------------------------

fn any(value: any_value::Value) -> AnyValue {
    AnyValue { value: Some(value) }
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(any(value)),
        ..Default::default()
    }
}

/// Attributes of every `AnyValue` kind, nested arrays and maps, a value-less attribute and one
/// with `key_strindex`; `tag` makes them differ between spans.
fn every_kind(tag: u8) -> Vec<KeyValue> {
    use any_value::Value::{ArrayValue as Array, BoolValue, BytesValue, DoubleValue, IntValue, KvlistValue};
    let nested = KeyValueList {
        values: vec![kv("inner", "x"), attr("deeper", Array(ArrayValue { values: vec![] }))],
    };
    vec![
        kv("s", format!("text-{tag} ✓")),
        attr("b", BoolValue(tag % 2 == 0)),
        int_kv("i", -9_000_000_000 - i64::from(tag)),
        attr("d", DoubleValue(1e-300 + f64::from(tag))),
        attr("nan", DoubleValue(f64::NAN)),
        attr("neg0", DoubleValue(-0.0)),
        attr("bytes", BytesValue(vec![0, 1, 0xfe, 0xff, tag])),
        attr(
            "arr",
            Array(ArrayValue {
                values: vec![
                    str_value("a"),
                    any(IntValue(7)),
                    AnyValue { value: None },
                    any(Array(ArrayValue {
                        values: vec![any(BoolValue(false))],
                    })),
                    any(KvlistValue(nested.clone())),
                ],
            }),
        ),
        attr("kvlist", KvlistValue(nested)),
        KeyValue {
            key: "no-value".into(),
            value: None,
            ..Default::default()
        },
        KeyValue {
            key_strindex: 3,
            ..kv("strindex", "y")
        },
    ]
}

/// A span setting every field; (request, resource, scope, span) make its ids unique, and the
/// span number picks its kind and status.
fn full_span((req, res, scope, i): (u8, u8, u8, u8)) -> Span {
    let mut trace_id = [0x5a; 16];
    trace_id[..4].copy_from_slice(&[req, res, scope, i]);
    let mut span_id = [0xa5; 8];
    span_id[..4].copy_from_slice(&[req, res, scope, i]);
    let start = 1_700_000_000_123_456_789 + u64::from(i) * 1_000;
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        trace_state: format!("vendor=v{i},other=1"),
        parent_span_id: vec![0xee, req, res, scope, i, 0, 0, 1],
        flags: 0x301,
        name: format!("GET /items/{i}"),
        kind: i32::from(i % 6),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_234_567,
        attributes: every_kind(i),
        dropped_attributes_count: 3,
        events: vec![
            Event {
                time_unix_nano: start + 10,
                name: "exception".into(),
                attributes: every_kind(i + 100),
                dropped_attributes_count: 1,
            },
            Event {
                time_unix_nano: start + 20,
                name: "retry".into(),
                attributes: vec![],
                dropped_attributes_count: 0,
            },
        ],
        dropped_events_count: 4,
        links: vec![Link {
            trace_id: vec![0x11; 16],
            span_id: vec![0x22, req, res, scope, i, 0, 0, 2],
            trace_state: "linked=1".into(),
            attributes: every_kind(i + 200),
            dropped_attributes_count: 2,
            flags: 0x101,
        }],
        dropped_links_count: 5,
        status: Some(Status {
            message: format!("status of {i}"),
            code: i32::from(i % 3),
        }),
    }
}

/// Resource spans setting every field: a resource with attributes of every kind, a dropped count
/// and an entity reference; a scope with every field and a scope-less scope spans; schema URLs.
fn full_resource_spans(req: u8, res: u8) -> ResourceSpans {
    let mut attributes = vec![
        kv("service.name", format!("svc-{req}-{res}")),
        kv("deployment.environment", "dev"),
    ];
    attributes.extend(every_kind(res + 50));
    ResourceSpans {
        resource: Some(Resource {
            attributes,
            dropped_attributes_count: 7,
            entity_refs: vec![EntityRef {
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                r#type: "service".into(),
                id_keys: vec!["service.name".into()],
                description_keys: vec!["deployment.environment".into()],
            }],
        }),
        scope_spans: vec![
            ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.http".into(),
                    version: "1.2.3".into(),
                    attributes: every_kind(res + 150),
                    dropped_attributes_count: 2,
                }),
                spans: (0..3).map(|i| full_span((req, res, 0, i))).collect(),
                schema_url: "https://opentelemetry.io/schemas/1.25.0".into(),
            },
            ScopeSpans {
                scope: None,
                spans: vec![full_span((req, res, 1, 3))],
                schema_url: String::new(),
            },
        ],
        schema_url: "https://opentelemetry.io/schemas/1.24.0".into(),
    }
}

/// Request `req`: two full resource spans and one without a resource.
fn full_request(req: u8) -> ExportTraceServiceRequest {
    let bare = ResourceSpans {
        resource: None,
        scope_spans: vec![ScopeSpans {
            spans: vec![full_span((req, 2, 0, 4))],
            ..Default::default()
        }],
        schema_url: String::new(),
    };
    ExportTraceServiceRequest {
        resource_spans: vec![full_resource_spans(req, 0), full_resource_spans(req, 1), bare],
    }
}

/// Field `number` of wire type LEN holding `payload`.
fn len_field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// `req` encoded as a sender other than prost may write it: in each scope spans, the spans come
/// after the schema URL, and each span ends with field 1000 (a varint), unknown to OTLP. It
/// decodes to `req`; only a forwarder that never decodes can keep these bytes.
fn unusual_encoding(req: &ExportTraceServiceRequest) -> Vec<u8> {
    let unknown = {
        let mut f = Vec::new();
        prost::encoding::encode_key(1000, prost::encoding::WireType::Varint, &mut f);
        prost::encoding::encode_varint(42, &mut f);
        f
    };
    let mut body = Vec::new();
    for rs in &req.resource_spans {
        let mut rs_bytes = ResourceSpans {
            scope_spans: vec![],
            ..rs.clone()
        }
        .encode_to_vec();
        for ss in &rs.scope_spans {
            let mut ss_bytes = ScopeSpans {
                spans: vec![],
                ..ss.clone()
            }
            .encode_to_vec();
            for span in &ss.spans {
                let mut span_bytes = span.encode_to_vec();
                span_bytes.extend_from_slice(&unknown);
                ss_bytes.extend(len_field(2, &span_bytes));
            }
            rs_bytes.extend(len_field(2, &ss_bytes));
        }
        body.extend(len_field(1, &rs_bytes));
    }
    assert_eq!(
        ExportTraceServiceRequest::decode(body.as_slice())
            .unwrap()
            .encode_to_vec(),
        req.encode_to_vec(),
        "decodes to the request"
    );
    assert_ne!(body, req.encode_to_vec(), "not prost's encoding");
    body
}

// ---- Spindle, the sink, and the comparison -------------------------------------------------

/// A sink, and a Spindle forwarding to it over `protocol`, configured further by `tweak`.
async fn forwarder(protocol: OtlpProtocol, tweak: impl FnOnce(&mut Config)) -> (OtlpSink, Running) {
    let sink = OtlpSink::start().await;
    let endpoint = match protocol {
        OtlpProtocol::Grpc => sink.grpc_endpoint(),
        OtlpProtocol::HttpProtobuf => sink.http_endpoint(),
    };
    let r = spindle(|c| {
        let ex = &mut c.exporters.traces.otlp;
        ex.endpoint = Some(endpoint);
        ex.protocol = protocol;
        ex.batch_timeout = DurationStr(Duration::from_millis(10));
        tweak(c);
    })
    .await;
    (sink, r)
}

async fn send_grpc(r: &Running, req: ExportTraceServiceRequest) -> ExportTraceServiceResponse {
    let mut client = TraceServiceClient::connect(format!("http://{}", r.grpc_addr))
        .await
        .unwrap();
    client.export(req).await.unwrap().into_inner()
}

async fn send_http(r: &Running, body: Vec<u8>) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse::decode(post_protobuf(r, "/v1/traces", body).await).unwrap()
}

/// Waits for `want.len()` resource spans at the sink, shuts Spindle down (flushing its queue), and
/// asserts the sink received exactly `want`, in any order across batches: every field, compared
/// through the encodings. With the HTTP exporter, the bodies it sent must also be exactly
/// `bodies` (the encoded requests Spindle queued), back to back in some grouping.
async fn assert_forwarded_exactly(
    sink: &OtlpSink,
    r: Running,
    protocol: OtlpProtocol,
    want: Vec<ResourceSpans>,
    bodies: &[Vec<u8>],
) {
    let count = |s: &OtlpSink| s.trace_requests().iter().map(|q| q.resource_spans.len()).sum::<usize>();
    let arrived = sink.wait_for(Duration::from_secs(10), |s| count(s) >= want.len()).await;
    r.shutdown().await.unwrap();
    assert!(
        arrived,
        "{protocol:?}: {} of {} resource spans arrived",
        count(sink),
        want.len()
    );

    let sorted = |mut v: Vec<ResourceSpans>| {
        v.sort_by_cached_key(Message::encode_to_vec);
        v
    };
    let got = sorted(
        sink.trace_requests()
            .into_iter()
            .flat_map(|q| q.resource_spans)
            .collect(),
    );
    let want = sorted(want);
    assert_eq!(got.len(), want.len(), "{protocol:?}: resource spans received");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if let Some(diff) = difference(g, w) {
            panic!("{protocol:?}: resource spans {i} (sorted) differs from the expected at {diff}");
        }
    }

    if protocol == OtlpProtocol::HttpProtobuf {
        let received = sink.http_trace_bodies();
        let total = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>();
        assert_eq!(
            total(&received),
            total(bodies),
            "the exporter's bodies are the queued bodies, nothing more"
        );
        for (i, body) in bodies.iter().enumerate() {
            assert!(
                received
                    .iter()
                    .any(|r| r.windows(body.len()).any(|w| w == body.as_slice())),
                "queued body {i} ({} bytes) is not in any exported body verbatim",
                body.len()
            );
        }
    }
}

/// Where `got` differs from `want` (compared through their encodings, so a NaN equals itself but
/// -0.0 does not equal 0.0): the innermost message that differs, with both versions.
fn difference(got: &ResourceSpans, want: &ResourceSpans) -> Option<String> {
    fn differ<M: Message + std::fmt::Debug>(path: String, got: &M, want: &M) -> Option<String> {
        (got.encode_to_vec() != want.encode_to_vec()).then(|| format!("{path}:\n got {got:#?}\nwant {want:#?}"))
    }
    if got.encode_to_vec() == want.encode_to_vec() {
        return None;
    }
    let shell = |rs: &ResourceSpans| ResourceSpans {
        scope_spans: vec![],
        ..rs.clone()
    };
    if let Some(d) = differ("the resource or schema_url".into(), &shell(got), &shell(want)) {
        return Some(d);
    }
    if got.scope_spans.len() != want.scope_spans.len() {
        return differ("scope_spans".into(), got, want);
    }
    for (j, (g, w)) in got.scope_spans.iter().zip(&want.scope_spans).enumerate() {
        let shell = |ss: &ScopeSpans| ScopeSpans {
            spans: vec![],
            ..ss.clone()
        };
        if let Some(d) = differ(format!("scope_spans[{j}] scope or schema_url"), &shell(g), &shell(w)) {
            return Some(d);
        }
        if g.spans.len() != w.spans.len() {
            return differ(format!("scope_spans[{j}] span count"), g, w);
        }
        for (k, (gs, ws)) in g.spans.iter().zip(&w.spans).enumerate() {
            if let Some(d) = differ(format!("scope_spans[{j}].spans[{k}]"), gs, ws) {
                return Some(d);
            }
        }
    }
    differ("the whole resource spans".into(), got, want)
}

fn resource_spans(reqs: &[ExportTraceServiceRequest]) -> Vec<ResourceSpans> {
    reqs.iter().flat_map(|q| q.resource_spans.clone()).collect()
}

// ---- the tests -----------------------------------------------------------------------------

/// Without enrichment, every span passing the checks: what arrives downstream is what the client
/// sent, every field, over gRPC and OTLP/HTTP in and both exporter protocols out; the HTTP
/// exporter's bodies are the client's bodies verbatim, even an encoding prost would not write.
#[tokio::test(flavor = "multi_thread")]
async fn without_enrichment_spans_arrive_exactly_as_sent() {
    for protocol in EXPORTERS {
        let (sink, r) = forwarder(protocol, |_| {}).await;
        let grpc = [full_request(1), full_request(2)];
        let http = [full_request(3), full_request(4)];
        let mut bodies = Vec::new();
        for req in &grpc {
            let resp = send_grpc(&r, req.clone()).await;
            assert_eq!(resp.partial_success, None, "{protocol:?}: all accepted");
            bodies.push(req.encode_to_vec());
        }
        let http_bodies = [http[0].encode_to_vec(), unusual_encoding(&http[1])];
        for body in &http_bodies {
            let resp = send_http(&r, body.clone()).await;
            assert_eq!(resp.partial_success, None, "{protocol:?}: all accepted");
        }
        bodies.extend(http_bodies);
        let want = resource_spans(&[grpc, http].concat());
        assert_forwarded_exactly(&sink, r, protocol, want, &bodies).await;
    }
}

/// The enrichment applied by hand: `team` inserted and `deployment.environment` upserted on every
/// resource; on every span `s` upserted, `kvlist` renamed to `map` (moved to the end, value kept),
/// and `checked = yes` inserted on spans named `GET /items/1`.
fn enriched(mut req: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
    for rs in &mut req.resource_spans {
        let resource = rs.resource.get_or_insert_with(Resource::default);
        let attrs = &mut resource.attributes;
        attrs.push(kv("team", "payments"));
        match attrs.iter_mut().find(|a| a.key == "deployment.environment") {
            Some(a) => a.value = Some(str_value("prod")),
            None => attrs.push(kv("deployment.environment", "prod")),
        }
        for span in rs.scope_spans.iter_mut().flat_map(|ss| &mut ss.spans) {
            let attrs = &mut span.attributes;
            let s = attrs.iter_mut().find(|a| a.key == "s").unwrap();
            s.value = Some(str_value("replaced"));
            let i = attrs.iter().position(|a| a.key == "kvlist").unwrap();
            let moved = attrs.remove(i);
            attrs.push(KeyValue {
                key: "map".into(),
                ..moved
            });
            if span.name == "GET /items/1" {
                attrs.push(kv("checked", "yes"));
            }
        }
    }
    req
}

/// With enrichment rules: what arrives is exactly the enriched request — the changed attributes
/// changed as the rules say, every other field of resource, scope, span, events, links and status
/// as sent.
#[tokio::test(flavor = "multi_thread")]
async fn with_enrichment_spans_arrive_exactly_enriched() {
    for protocol in EXPORTERS {
        let (sink, r) = forwarder(protocol, |c| {
            let e = &mut c.processors.enrich;
            e.resource_attributes = vec![
                StaticAttribute {
                    key: "team".into(),
                    value: "payments".into(),
                    action: StaticAction::Insert,
                },
                StaticAttribute {
                    key: "deployment.environment".into(),
                    value: "prod".into(),
                    action: StaticAction::Upsert,
                },
            ];
            let upsert = EnrichRule {
                value: Some("replaced".into()),
                ..enrich_rule(RuleAction::Upsert, "s")
            };
            let rename = EnrichRule {
                new_key: Some("map".into()),
                ..enrich_rule(RuleAction::Rename, "kvlist")
            };
            let insert = EnrichRule {
                value: Some("yes".into()),
                names: vec!["GET /items/1".into()],
                ..enrich_rule(RuleAction::Insert, "checked")
            };
            let elsewhere = EnrichRule {
                services: vec!["no-such-service".into()],
                ..enrich_rule(RuleAction::Delete, "s")
            };
            e.rules = vec![upsert, rename, insert, elsewhere];
        })
        .await;
        let grpc = full_request(1);
        let http = full_request(2);
        let resp = send_grpc(&r, grpc.clone()).await;
        assert_eq!(resp.partial_success, None, "{protocol:?}: all accepted");
        let resp = send_http(&r, unusual_encoding(&http)).await;
        assert_eq!(resp.partial_success, None, "{protocol:?}: all accepted");

        let expected = [enriched(grpc), enriched(http)];
        let bodies: Vec<_> = expected.iter().map(Message::encode_to_vec).collect();
        assert_forwarded_exactly(&sink, r, protocol, resource_spans(&expected), &bodies).await;
    }
}

/// A span that fails the checks, among good ones: the good spans arrive exactly (every field, the
/// rest of the request as sent), the bad one does not, and the answer says one span was rejected.
#[tokio::test(flavor = "multi_thread")]
async fn a_span_failing_the_checks_is_dropped_and_the_rest_arrive_exactly() {
    for protocol in EXPORTERS {
        let (sink, r) = forwarder(protocol, |_| {}).await;
        // Over gRPC a span id of 7 bytes, over HTTP a trace id of 17 bytes, each the middle span of
        // the first scope of the second resource.
        let mut grpc = full_request(1);
        grpc.resource_spans[1].scope_spans[0].spans[1].span_id.pop();
        let mut http = full_request(2);
        http.resource_spans[1].scope_spans[0].spans[1].trace_id.push(0);

        let resp = send_grpc(&r, grpc.clone()).await;
        let partial = resp.partial_success.expect("gRPC: a partial success");
        assert_eq!(partial.rejected_spans, 1, "{protocol:?}: {partial:?}");
        assert!(!partial.error_message.is_empty(), "{protocol:?}: {partial:?}");
        let resp = send_http(&r, http.encode_to_vec()).await;
        let partial = resp.partial_success.expect("HTTP: a partial success");
        assert_eq!(partial.rejected_spans, 1, "{protocol:?}: {partial:?}");
        assert!(!partial.error_message.is_empty(), "{protocol:?}: {partial:?}");

        let expected: Vec<_> = [grpc, http]
            .into_iter()
            .map(|mut req| {
                req.resource_spans[1].scope_spans[0].spans.remove(1);
                req
            })
            .collect();
        let bodies: Vec<_> = expected.iter().map(Message::encode_to_vec).collect();
        assert_forwarded_exactly(&sink, r, protocol, resource_spans(&expected), &bodies).await;
    }
}
