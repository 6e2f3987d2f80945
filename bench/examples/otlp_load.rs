//! OTLP/gRPC trace load for side-by-side forwarding comparisons (`bench/compare/forwarding.sh`).
//!
//! `otlp_load ENDPOINT REQUESTS CONCURRENCY SPANS ATTRS gzip|none` sends REQUESTS requests of SPANS
//! spans with ATTRS attributes each ([`spindle_bench::forwarding_request`]) over CONCURRENCY
//! streams, and prints one JSON line: `{"ok":…,"err":…,"overloaded":…,"items":…,"secs":…,"req_bytes":…}`.
//! 64 distinct requests are encoded once and replayed as bytes, so the generator spends almost
//! nothing per request beyond framing (and gzip when asked). An overloaded answer is retried
//! after 1 ms, as an SDK retries; other errors are counted.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};

#[derive(Clone, Default)]
struct Raw;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 7 {
        eprintln!("usage: otlp_load ENDPOINT REQUESTS CONCURRENCY SPANS ATTRS gzip|none");
        std::process::exit(2);
    }
    let num = |i: usize| -> usize {
        a[i].parse().unwrap_or_else(|_| {
            eprintln!("argument {i} ({}) is not a number", a[i]);
            std::process::exit(2)
        })
    };
    let (requests, streams, spans, attrs) = (num(2), num(3).max(1), num(4), num(5));
    let gzip = a[6] == "gzip";
    let bodies: Vec<Bytes> = (0..64)
        .map(|k| Bytes::from(spindle_bench::forwarding_request(spans, attrs, k).encode_to_vec()))
        .collect();
    let channel = match tonic::transport::Endpoint::from_shared(a[1].clone()) {
        Ok(e) => e.connect().await,
        Err(e) => {
            eprintln!("bad endpoint: {e}");
            std::process::exit(2)
        }
    };
    let channel = channel.unwrap_or_else(|e| {
        eprintln!("cannot connect: {e}");
        std::process::exit(1)
    });
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|w| {
            let (channel, bodies) = (channel.clone(), bodies.clone());
            let n = requests / streams + usize::from(w < requests % streams);
            tokio::spawn(async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                if gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                let (mut ok, mut err, mut overloaded) = (0usize, 0usize, 0usize);
                let mut latencies = Vec::with_capacity(n);
                for i in 0..n {
                    let body = bodies[(w * 7 + i) % bodies.len()].clone();
                    loop {
                        if grpc.ready().await.is_err() {
                            err += 1;
                            break;
                        }
                        let req = tonic::Request::new(body.clone());
                        let sent = Instant::now();
                        match grpc.unary(req, http::uri::PathAndQuery::from_static(path), Raw).await {
                            Ok(_) => {
                                ok += 1;
                                latencies.push(sent.elapsed());
                            }
                            Err(s)
                                if s.code() == tonic::Code::ResourceExhausted
                                    || s.code() == tonic::Code::Unavailable =>
                            {
                                overloaded += 1;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                continue;
                            }
                            Err(s) => {
                                err += 1;
                                if err == 1 {
                                    eprintln!("error: {s}");
                                }
                            }
                        }
                        break;
                    }
                }
                (ok, err, overloaded, latencies)
            })
        })
        .collect();
    let (mut ok, mut err, mut overloaded) = (0, 0, 0);
    let mut latencies = Vec::new();
    for t in tasks {
        let (o, e, r, l) = t.await.unwrap_or((0, 1, 0, Vec::new()));
        ok += o;
        err += e;
        overloaded += r;
        latencies.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    let req_bytes = bodies.iter().map(Bytes::len).sum::<usize>() / bodies.len();
    // Acknowledgement latency of the accepted requests (send to OK), in milliseconds.
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{{\"ok\":{ok},\"err\":{err},\"overloaded\":{overloaded},\"items\":{},\"secs\":{secs:.3},\"req_bytes\":{req_bytes},\"ack_p50_ms\":{:.2},\"ack_p99_ms\":{:.2}}}",
        ok * spans,
        pct(0.5),
        pct(0.99)
    );
}
