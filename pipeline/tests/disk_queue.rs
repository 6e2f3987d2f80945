//! The disk queue's bound seen from a sender: with the backend down, requests are acknowledged
//! until `storage.queue_max_bytes` of them wait on disk; then the receivers answer "overloaded"
//! (HTTP 503, retryable) and nothing is dropped; once the backend is back, every acknowledged span
//! arrives and the queue is empty again.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{kv, span, traces_request};
use prost::Message;
use spindle::config::{ByteSize, DurationStr};
use spindle_e2e::otlp_sink::{OtlpSink, SinkReply};

/// A request of 200 spans with ids from `first`, about 40 KB.
fn request(first: u32) -> Vec<u8> {
    let spans = (first..first + 200)
        .map(|i| {
            let mut s = span("GET /checkout", 1, vec![kv("payload", "x".repeat(150))]);
            s.trace_id[12..].copy_from_slice(&i.to_be_bytes());
            s.span_id[4..].copy_from_slice(&i.to_be_bytes());
            s
        })
        .collect();
    traces_request(vec![kv("service.name", "checkout")], spans).encode_to_vec()
}

#[tokio::test]
async fn a_full_disk_queue_answers_overloaded_and_delivers_everything_it_acknowledged() {
    let sink = OtlpSink::start().await;
    sink.set_reply(SinkReply::Unavailable);
    let dir = tempfile::tempdir().unwrap();
    let spindle = common::spindle(|c| {
        c.storage.path = Some(dir.path().join("storage"));
        c.storage.queue_max_bytes = ByteSize(1 << 20);
        // A disk queue holds at least 4 of the largest requests.
        c.receivers.otlp.max_request_size = ByteSize(256 << 10);
        let ex = &mut c.exporters.traces.otlp;
        ex.endpoint = Some(sink.grpc_endpoint());
        ex.retry_initial_backoff = DurationStr(Duration::from_millis(50));
        ex.retry_max_backoff = DurationStr(Duration::from_millis(200));
    })
    .await;
    let client = reqwest::Client::new();
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    for r in 0..60u32 {
        let resp = client
            .post(format!("http://{}/v1/traces", spindle.http_addr))
            .header("content-type", "application/x-protobuf")
            .body(request(r * 200))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => accepted.extend(r * 200..r * 200 + 200),
            503 => {
                refused += 1;
                assert!(resp.headers().contains_key("retry-after"));
                let body = resp.text().await.unwrap();
                assert!(body.contains("queue is full"), "{body}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0, "a 1 MiB queue holds fewer than 60 requests of 40 KB");
    assert!(accepted.len() >= 4000, "it held about 1 MiB: {}", accepted.len());
    let queued = spindle.telemetry.traces.queue_bytes();
    assert!(queued <= 1 << 20, "bounded: {queued}");
    sink.set_reply(SinkReply::Accept);
    let want = accepted.len();
    assert!(
        sink.wait_for(Duration::from_secs(30), |s| s.spans().len() >= want)
            .await,
        "only {} of {want} acknowledged spans arrived",
        sink.spans().len()
    );
    let got: BTreeSet<u32> = sink
        .spans()
        .iter()
        .map(|s| u32::from_str_radix(&s.trace_id[24..], 16).unwrap())
        .collect();
    assert_eq!(got, accepted, "exactly the acknowledged spans");
    assert_eq!(
        spindle
            .telemetry
            .traces
            .dropped_total(spindle::telemetry::DropReason::Shutdown),
        0
    );
    spindle.shutdown().await.unwrap();
}
