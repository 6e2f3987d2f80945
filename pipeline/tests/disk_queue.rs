//! The disk queue's bound seen from a sender: with the backend down, requests are acknowledged
//! until `storage.queue_max_bytes` of them wait on disk; then the receivers answer "overloaded"
//! (HTTP 503, retryable) and nothing is dropped; once the backend is back, every acknowledged span
//! arrives and the queue is empty again.

mod common;

use std::time::Duration;

use spindle::config::{ByteSize, DurationStr};
use spindle_e2e::otlp_sink::{OtlpSink, SinkReply};

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
    let (accepted, refused) = common::send_numbered(spindle.http_addr, 60, 200, 150).await;
    for body in &refused {
        assert!(body.contains("queue is full"), "{body}");
    }
    let refused = refused.len();
    assert!(refused > 0, "a 1 MiB queue holds fewer than 60 requests of 40 KB");
    assert!(accepted.len() >= 4000, "it held about 1 MiB: {}", accepted.len());
    let queued = spindle.telemetry.traces.queue_bytes();
    assert!(queued <= 1 << 20, "bounded: {queued}");
    sink.set_reply(SinkReply::Accept);
    common::assert_delivered_exactly(&sink, &accepted).await;
    assert_eq!(
        spindle
            .telemetry
            .traces
            .dropped_total(spindle::telemetry::DropReason::Shutdown),
        0
    );
    spindle.shutdown().await.unwrap();
}
