//! Load generators for the benches: realistic OTLP payloads and pre-filled stores.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, HistogramDataPoint, Metric, NumberDataPoint, exemplar, metric, number_data_point,
};
use spindle::process::translate::Translator;
use spindle::store::Store;
use spindle::testing::{self, kv};

fn exemplar(i: u64, value: f64) -> Exemplar {
    let mut trace_id = vec![0u8; 16];
    trace_id[..8].copy_from_slice(&(i + 1).to_be_bytes());
    Exemplar {
        trace_id,
        span_id: (i + 1).to_be_bytes().to_vec(),
        time_unix_nano: 1_700_000_000_000_000_000 + i,
        value: Some(exemplar::Value::AsDouble(value)),
        ..Default::default()
    }
}

/// Five labels per point, like a typical HTTP service metric.
fn attrs(i: u64) -> Vec<KeyValue> {
    vec![
        kv("http.route", format!("/api/v1/items/{}", i % 50)),
        kv("http.method", ["GET", "POST", "PUT", "DELETE"][(i % 4) as usize]),
        kv("http.status_code", ["200", "201", "404", "500"][((i / 4) % 4) as usize]),
        kv("region", format!("eu-{}", (i / 16) % 3)),
        kv("shard", format!("{}", i / 48)),
    ]
}

/// A request with `series` counter points and `series / 10` histogram points (12 buckets),
/// cumulative, every point carrying one exemplar. `offset` shifts the values so successive
/// requests update the same series with new values.
pub fn metrics_request(series: u64, offset: u64) -> ExportMetricsServiceRequest {
    let counters = (0..series)
        .map(|i| NumberDataPoint {
            attributes: attrs(i),
            time_unix_nano: 1_700_000_000_000_000_000,
            value: Some(number_data_point::Value::AsInt((i + offset) as i64)),
            exemplars: vec![exemplar(i, 1.0)],
            ..Default::default()
        })
        .collect();
    let bounds: Vec<f64> = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    let hists = (0..series / 10)
        .map(|i| HistogramDataPoint {
            attributes: attrs(i),
            count: 12 * (offset + 1),
            sum: Some(3.5 * (offset + 1) as f64),
            bucket_counts: vec![offset + 1; 12],
            explicit_bounds: bounds.clone(),
            exemplars: vec![exemplar(i, 0.3)],
            ..Default::default()
        })
        .collect();
    let resource = testing::resource(vec![
        kv("service.name", "checkout"),
        kv("service.namespace", "shop"),
        kv("service.instance.id", "pod-7f9c"),
        kv("host.name", "node-3"),
    ]);
    let metrics = vec![
        Metric {
            description: "Requests served.".into(),
            ..testing::metric("http.server.requests", "{request}", testing::counter(counters))
        },
        Metric {
            description: "Request latency.".into(),
            ..testing::metric("http.server.request.duration", "s", testing::histogram(false, hists))
        },
    ];
    testing::metrics_request_in(Some(resource), Some(testing::scope("bench", "1.0")), metrics)
}

/// A store holding `series` counter series (5 labels plus job/instance/scope, one exemplar each),
/// filled in batches of 10k.
pub fn filled_store(series: u64) -> Store {
    let store = Store::new(Duration::from_secs(3600), usize::MAX, &[]);
    let t = Translator::default();
    let batch = 10_000;
    let mut done = 0;
    while done < series {
        let n = batch.min(series - done);
        let mut req = metrics_request(0, 0);
        let counters: Vec<NumberDataPoint> = (done..done + n)
            .map(|i| {
                let mut a = attrs(i);
                a.push(kv("series", i.to_string()));
                NumberDataPoint {
                    attributes: a,
                    value: Some(number_data_point::Value::AsInt(i as i64)),
                    exemplars: vec![exemplar(i, 1.0)],
                    ..Default::default()
                }
            })
            .collect();
        if let Some(metric::Data::Sum(s)) = &mut req.resource_metrics[0].scope_metrics[0].metrics[0].data {
            s.data_points = counters;
        }
        req.resource_metrics[0].scope_metrics[0].metrics.truncate(1);
        store.write(t.translate(req), Instant::now());
        done += n;
    }
    store
}

/// [`filled_store`] plus `native` exponential-histogram series (`rpc.latency`, scale 3, about 40
/// populated buckets and a zero bucket, one exemplar each): what a protobuf scrape serves as native
/// histograms.
pub fn filled_store_with_native(series: u64, native: u64) -> Store {
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint,
        exponential_histogram_data_point::Buckets,
    };
    let store = filled_store(series);
    let t = Translator::default();
    let batch = 10_000;
    let mut done = 0;
    while done < native {
        let n = batch.min(native - done);
        let points = (done..done + n)
            .map(|i| {
                let counts: Vec<u64> = (0..40).map(|b| (b * 7 + i) % 13).collect();
                let mut a = attrs(i);
                a.push(kv("series", i.to_string()));
                ExponentialHistogramDataPoint {
                    attributes: a,
                    time_unix_nano: 1_700_000_000_000_000_000,
                    count: counts.iter().sum::<u64>() + 2,
                    sum: Some(12.5),
                    scale: 3,
                    zero_count: 2,
                    positive: Some(Buckets {
                        offset: -20,
                        bucket_counts: counts,
                    }),
                    exemplars: vec![exemplar(i, 0.02)],
                    ..Default::default()
                }
            })
            .collect();
        let data = metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        });
        let mut req = metrics_request(0, 0);
        req.resource_metrics[0].scope_metrics[0].metrics = vec![testing::metric("rpc.latency", "s", data)];
        store.write(t.translate(req), Instant::now());
        done += n;
    }
    store
}

/// A traces request: `traces` traces of `spans_per_trace` spans each, from service `checkout`,
/// over 10 span names and 3 kinds, with realistic attributes and durations.
pub fn traces_request(
    traces: u32,
    spans_per_trace: u32,
    seed: u32,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};
    let mut spans = Vec::with_capacity((traces * spans_per_trace) as usize);
    for t in 0..traces {
        let mut trace_id = [0u8; 16];
        trace_id[..4].copy_from_slice(&seed.to_be_bytes());
        trace_id[12..].copy_from_slice(&t.to_be_bytes());
        for s in 0..spans_per_trace {
            let i = t * spans_per_trace + s;
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: (u64::from(i) + 1).to_be_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    Vec::new()
                } else {
                    (u64::from(t * spans_per_trace) + 1).to_be_bytes().to_vec()
                },
                name: format!("op-{}", i % 10),
                kind: [2, 3, 1][(i % 3) as usize],
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(i % 97 + 1) * 1_000_000,
                attributes: vec![
                    kv("http.route", format!("/api/items/{}", i % 10)),
                    kv("http.request.method", "GET"),
                ],
                status: Some(Status {
                    code: if i.is_multiple_of(50) { 2 } else { 0 },
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    testing::traces_request(
        vec![kv("service.name", "checkout"), kv("service.instance.id", "pod-1")],
        spans,
    )
}

/// A traces request shaped like the side-by-side forwarding load (`../shared/bench/loadgen`): one
/// resource (service `svc-{k % 8}`), `spans` server spans over six routes, each in its own trace with
/// random ids, and `attrs` HTTP attributes (8 or 4); 1 in 50 spans is an error.
pub fn forwarding_request(
    spans: usize,
    attrs: usize,
    k: usize,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};
    let int = |k: &str, v: i64| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(v)),
        }),
        ..Default::default()
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (k as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut rng = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let routes = [
        "/users/{id}",
        "/orders",
        "/orders/{id}",
        "/checkout",
        "/search",
        "/cart",
    ];
    let spans = (0..spans)
        .map(|j| {
            let trace_id = [rng().to_le_bytes(), rng().to_le_bytes()].concat();
            let start = 1_700_000_000_000_000_000u64 + (j as u64) * 1000;
            let error = j % 50 == 0;
            let mut attributes = vec![
                kv("http.request.method", "GET"),
                kv("http.route", routes[j % routes.len()]),
                int("http.response.status_code", if error { 500 } else { 200 }),
                kv("url.scheme", "http"),
                kv("server.address", "api.example.com"),
                int("server.port", 8080),
                kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) bench"),
                kv("network.protocol.version", "1.1"),
            ];
            attributes.truncate(attrs);
            Span {
                trace_id,
                span_id: rng().to_le_bytes().to_vec(),
                name: format!("GET {}", routes[j % routes.len()]),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 1_000_000 + rng() % 400_000_000,
                attributes,
                status: Some(Status {
                    code: if error { 2 } else { 0 },
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    testing::traces_request(
        vec![
            kv("service.name", format!("svc-{}", k % 8)),
            kv("service.instance.id", format!("i-{}", k % 8)),
            kv("deployment.environment", "bench"),
        ],
        spans,
    )
}

/// An OTLP/gRPC trace backend that only counts the spans it receives (gzip accepted), for
/// forwarding benches.
#[derive(Debug, Clone, Default)]
pub struct CountingBackend(std::sync::Arc<std::sync::atomic::AtomicU64>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for CountingBackend {
    async fn export(
        &self,
        req: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        let n: usize = req
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

impl CountingBackend {
    /// Serves on a free loopback port (on the current tokio runtime); returns its address.
    ///
    /// # Panics
    /// When no loopback port can be bound (a bench cannot run then).
    pub async fn start(&self) -> std::net::SocketAddr {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let svc = TraceServiceServer::new(self.clone()).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

static HELD: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

/// A global allocator that counts the heap bytes held, for the memory examples: declare
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;` and read [`CountingAlloc::held`].
#[derive(Debug)]
pub struct CountingAlloc;

impl CountingAlloc {
    /// Heap bytes currently held through this allocator.
    pub fn held() -> isize {
        HELD.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is updated.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        HELD.fetch_add(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        HELD.fetch_sub(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new as isize - l.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}
