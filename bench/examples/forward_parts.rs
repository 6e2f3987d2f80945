//! Where forwarding's CPU goes, per span, on the side-by-side load's request shape: the parts a
//! forwarder may do to one request (inflate, size walk, decode, span metrics, encode, deflate).
//!
//! `cargo run --release -p spindle-bench --example forward_parts [SPANS ATTRS]` (default 1000 8).

use std::io::{Read, Write};
use std::time::Instant;

use flate2::Compression;
use prost::Message;
use spindle::config::SpanMetricsConfig;
use spindle::process::span_metrics::SpanMetrics;
use spindle::process::span_metrics::wire::WireRequest;
use spindle::receive::size::{self, Kind};

fn per_span(label: &str, spans: usize, mut f: impl FnMut()) {
    f();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed().as_secs_f64() < 1.0 {
        f();
        n += 1;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / (n * spans) as f64;
    println!("{label:<28} {us:>7.3} µs/span");
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (spans, attrs) = (args.first().copied().unwrap_or(1000), args.get(1).copied().unwrap_or(8));
    let req = spindle_bench::forwarding_request(spans, attrs, 3);
    let body = req.encode_to_vec();
    println!(
        "{spans} spans × {attrs} attributes: {} bytes ({} a span)",
        body.len(),
        body.len() / spans
    );
    let gz = |level| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::new(level));
        e.write_all(&body).expect("in memory");
        e.finish().expect("in memory")
    };
    let gz6 = gz(6);
    println!("gzip level 1: {} bytes, level 6: {} bytes", gz(1).len(), gz6.len());
    per_span("inflate", spans, || {
        let mut out = Vec::with_capacity(body.len());
        flate2::read::GzDecoder::new(&gz6[..])
            .read_to_end(&mut out)
            .expect("valid");
    });
    per_span("size walk", spans, || {
        size::protobuf(Kind::ExportTraces, &body).expect("valid");
    });
    per_span("prost decode", spans, || {
        drop(opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(&body[..]));
    });
    let sm = SpanMetrics::new(SpanMetricsConfig::default());
    per_span("span metrics", spans, || drop(sm.process(&req)));
    per_span("wire read", spans, || {
        WireRequest::parse(&body).expect("valid");
    });
    per_span("wire read + span metrics", spans, || {
        drop(sm.process_wire(&WireRequest::parse(&body).expect("valid")));
    });
    per_span("prost encode", spans, || drop(req.encode_to_vec()));
    per_span("deflate level 1", spans, || drop(gz(1)));
    per_span("deflate level 6", spans, || drop(gz(6)));
}
