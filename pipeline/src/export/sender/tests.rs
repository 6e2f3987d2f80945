//! Tests of the memory queue behind the [`Queue`] interface: the byte bound and its typed
//! refusals, batches by items, in-flight accounting with ack and nack, eviction for lossy
//! producers, and what closing counts.

use bytes::Bytes;

use super::*;

fn payload(bytes: usize, items: u64, tag: u32) -> Payload<u32> {
    Payload {
        body: Bytes::from(vec![0u8; bytes]),
        items,
        sidecar: tag,
        sidecar_bytes: 0,
    }
}

fn tags(b: &Batch<u32>) -> Vec<u32> {
    b.payloads.iter().map(|p| p.sidecar).collect()
}

#[test]
fn the_bound_counts_bytes_held_and_a_full_queue_refuses_with_a_typed_error() {
    let q = MemoryQueue::new(100);
    assert_eq!(q.push(payload(60, 1, 1)), Ok(None));
    assert_eq!(q.push(payload(41, 1, 2)), Err(PushError::Full), "over capacity");
    assert_eq!(q.push(payload(40, 1, 3)), Ok(None));
    assert_eq!((q.bytes(), q.queued_items()), (100, 2));
    // The sidecar's bytes count too.
    let mut p = payload(0, 1, 4);
    p.sidecar_bytes = 1;
    assert_eq!(p.held_bytes(), 1);
    assert_eq!(q.push(p), Err(PushError::Full));
    let b = q.pop(10).unwrap();
    assert_eq!(tags(&b), [1, 3]);
    assert_eq!(q.bytes(), 100, "in flight, still held");
    assert_eq!(q.queued_items(), 0);
    assert_eq!(
        q.push(payload(1, 1, 5)),
        Err(PushError::Full),
        "in-flight bytes count against the bound"
    );
    q.ack(b.ticket);
    assert_eq!(q.bytes(), 0);
    assert_eq!(
        q.push(payload(150, 1, 6)),
        Ok(None),
        "larger than the bound, into an empty queue"
    );
    assert_eq!(q.push(payload(1, 1, 7)), Err(PushError::Full), "and nothing beside it");
    assert_eq!(q.capacity(), 100);
}

#[test]
fn batches_hold_at_most_max_items_and_at_least_one_payload() {
    let q = MemoryQueue::new(1000);
    for tag in 0..3 {
        q.push(payload(1, 3, tag)).unwrap();
    }
    let b = q.pop(7).unwrap();
    assert_eq!((tags(&b), b.items()), (vec![0, 1], 6));
    let one = q.pop(1).unwrap();
    assert_eq!(
        tags(&one),
        [2],
        "at least one payload even when it is larger than the batch"
    );
    assert!(q.pop(7).is_none());
    assert!(one.ticket.seq > b.ticket.seq, "tickets follow the queue's order");
}

#[test]
fn a_nacked_batch_goes_back_to_the_front_in_order() {
    let q = MemoryQueue::new(1000);
    for tag in 0..4 {
        q.push(payload(10, 1, tag)).unwrap();
    }
    let b = q.pop(2).unwrap();
    assert_eq!(tags(&b), [0, 1]);
    q.nack(b);
    assert_eq!((q.bytes(), q.queued_items()), (40, 4));
    assert_eq!(tags(&q.pop(10).unwrap()), [0, 1, 2, 3]);
}

#[test]
fn closing_refuses_later_pushes_and_counts_everything_held_once() {
    let q = MemoryQueue::new(1000);
    for (tag, items) in [(0, 4), (1, 5), (2, 6)] {
        q.push(payload(10, items, tag)).unwrap();
    }
    let in_flight = q.pop(4).unwrap();
    assert_eq!(in_flight.items(), 4);
    assert_eq!(q.close(), 15, "queued and in flight: a memory queue loses both");
    assert_eq!(q.bytes(), 0, "released");
    assert_eq!(q.push(payload(1, 1, 9)), Err(PushError::Closed));
    q.nack(in_flight);
    assert_eq!(q.close(), 0, "already counted");
    assert!(q.pop(10).is_none());
}

#[test]
fn make_room_evicts_only_the_oldest_evictable_payloads_and_only_as_needed() {
    let q = MemoryQueue::new(100);
    for tag in [1, 1, 2] {
        q.push(payload(30, 3, tag)).unwrap();
    }
    let older = |t: &u32| *t < 2;
    assert_eq!(q.make_room(10, &older), 0, "it fits already");
    assert_eq!(q.make_room(40, &older), 3, "one payload is enough");
    assert_eq!(q.bytes(), 60);
    assert_eq!(q.make_room(100, &older), 3, "every evictable one, then it stops");
    assert_eq!((q.bytes(), q.queued_items()), (30, 3));
    assert_eq!(q.make_room(100, &older), 0, "payload 2 is not evictable");
    // Never one in flight.
    let b = q.pop(10).unwrap();
    assert_eq!(q.make_room(100, &|_| true), 0);
    q.ack(b.ticket);
}

#[test]
fn a_push_wakes_the_sender() {
    let q = MemoryQueue::<u32>::new(100);
    q.push(payload(1, 1, 0)).unwrap();
    // The permit is stored: a sender that starts waiting afterwards is woken at once.
    let woken = futures_now(q.pushed().notified());
    assert!(woken);
}

/// Whether a future is ready on its first poll.
fn futures_now<F: std::future::Future>(f: F) -> bool {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    f.as_mut().poll(&mut cx).is_ready()
}

mod worker {
    //! The chain run against a real HTTP peer on port 0 (or a closed port): batching by size with
    //! bodies back to back, retries honouring `Retry-After`, and the shutdown hand-back.

    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use parking_lot::Mutex;
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::super::*;
    use super::payload;
    use crate::export::stats::DropReason;

    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Delivered(Vec<u32>),
        Refused(u64),
        Undelivered(u64),
        Nack(u64),
        Close(u64),
    }

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<Event>>>);

    impl Log {
        fn events(&self) -> Vec<Event> {
            self.0.lock().clone()
        }
    }

    impl Hooks<u32> for Log {
        fn delivered(&self, sidecars: Vec<u32>) {
            self.0.lock().push(Event::Delivered(sidecars));
        }
        fn refused(&self, items: u64, _: &str) {
            self.0.lock().push(Event::Refused(items));
        }
        fn retrying(&self, _: &str, _: Duration) {}
        fn undelivered(&self, items: u64, _: &str, _: Duration) {
            self.0.lock().push(Event::Undelivered(items));
        }
        fn late(&self, _: u64) {}
    }

    /// A memory queue that logs what the worker hands back and when it closes.
    #[derive(Debug)]
    struct Recording {
        inner: MemoryQueue<u32>,
        log: Arc<Mutex<Vec<Event>>>,
    }

    impl std::fmt::Debug for Log {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Log")
        }
    }

    impl Queue<u32> for Recording {
        fn push(&self, p: Payload<u32>) -> Result<Option<crate::model::Durable>, PushError> {
            self.inner.push(p)
        }
        fn make_room(&self, bytes: u64, evictable: &dyn Fn(&u32) -> bool) -> u64 {
            self.inner.make_room(bytes, evictable)
        }
        fn pop(&self, max_items: u64) -> Option<Batch<u32>> {
            self.inner.pop(max_items)
        }
        fn ack(&self, ticket: Ticket) {
            self.inner.ack(ticket)
        }
        fn nack(&self, batch: Batch<u32>) {
            self.log.lock().push(Event::Nack(batch.items()));
            self.inner.nack(batch)
        }
        fn close(&self) -> u64 {
            let n = self.inner.close();
            self.log.lock().push(Event::Close(n));
            n
        }
        fn bytes(&self) -> u64 {
            self.inner.bytes()
        }
        fn queued_items(&self) -> u64 {
            self.inner.queued_items()
        }
        fn is_empty(&self) -> bool {
            self.inner.is_empty()
        }
        fn capacity(&self) -> u64 {
            self.inner.capacity()
        }
        fn pushed(&self) -> &Notify {
            self.inner.pushed()
        }
    }

    const ANSWERS: Answers = Answers {
        http_retryable: |s| s == 503,
        rejected: |_| 0,
    };

    fn client(url: &str) -> Client {
        Client::new(&ClientConfig {
            endpoint: url,
            transport: Transport::Http,
            headers: &BTreeMap::new(),
            protocol_headers: &[],
            user_agent: None,
            timeout: Duration::from_secs(5),
            ca_file: None,
            cert_file: None,
            key_file: None,
            compression: BodyCompression::None,
            answers: ANSWERS,
        })
        .unwrap()
    }

    struct Setup {
        queue: Arc<Recording>,
        log: Log,
        stats: ExporterStats<DropReason>,
        drain: CancellationToken,
        worker: tokio::task::JoinHandle<()>,
    }

    fn start(url: &str, max_items: u64, shutdown_timeout: Duration) -> Setup {
        start_lanes(url, max_items, 1, shutdown_timeout)
    }

    fn start_lanes(url: &str, max_items: u64, lanes: usize, shutdown_timeout: Duration) -> Setup {
        let log = Log::default();
        let queue = Arc::new(Recording {
            inner: MemoryQueue::new(1 << 20),
            log: log.0.clone(),
        });
        let stats = ExporterStats::default();
        let drain = CancellationToken::new();
        let worker = Worker {
            queue: queue.clone(),
            client: client(url),
            batching: Batching {
                max_items,
                timeout: Duration::from_millis(100),
                max_in_flight: lanes,
            },
            retry: RetryPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            stats: stats.clone(),
            shutdown: Arc::new(Shutdown::new(drain.clone(), shutdown_timeout)),
            hooks: log.clone(),
        };
        Setup {
            queue,
            log,
            stats,
            drain,
            worker: tokio::spawn(worker.run()),
        }
    }

    /// An HTTP peer answering each request with the next status of `script` (then 200), with
    /// `Retry-After: 1` on 503; it records the bodies.
    async fn peer(script: Vec<u16>) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let b = bodies.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (b, hits, script) = (b.clone(), hits.clone(), script.clone());
                async move {
                    let status = script.get(hits.fetch_add(1, Ordering::SeqCst)).copied().unwrap_or(200);
                    b.lock().push(body.to_vec());
                    let code = http::StatusCode::from_u16(status).unwrap();
                    (code, [("retry-after", "1")], "")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/"), bodies)
    }

    fn body(tag: u8, n: usize) -> Payload<u32> {
        Payload {
            body: Bytes::from(vec![tag; n]),
            ..payload(0, 2, u32::from(tag))
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn batches_are_cut_by_items_sent_back_to_back_and_retried_after_retry_after() {
        let (url, bodies) = peer(vec![503]).await;
        let s = start(&url, 4, Duration::from_secs(5));
        for tag in 1..=3 {
            s.queue.push(body(tag, 3)).unwrap();
        }
        let t = std::time::Instant::now();
        while s.stats.sent_total() < 6 {
            assert!(t.elapsed() < Duration::from_secs(10), "{:?}", s.log.events());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(t.elapsed() >= Duration::from_millis(900), "waited for Retry-After: 1");
        assert_eq!(s.stats.retries_total(), 1);
        let got = bodies.lock().clone();
        assert_eq!(
            got[0],
            [1, 1, 1, 2, 2, 2],
            "two payloads of 2 items in a batch of 4, joined"
        );
        assert_eq!(got[1], got[0], "the same body again after the 503");
        assert_eq!(got[2], [3, 3, 3]);
        assert_eq!(
            s.log.events(),
            [Event::Delivered(vec![1, 2]), Event::Delivered(vec![3])]
        );
        assert_eq!(s.queue.bytes(), 0, "acknowledged batches are released");
        s.drain.cancel();
        s.worker.await.unwrap();
        assert_eq!(s.log.events().last(), Some(&Event::Close(0)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_permanent_answer_drops_the_batch_and_counts_it() {
        let (url, bodies) = peer(vec![400]).await;
        let s = start(&url, 10, Duration::from_secs(5));
        s.queue.push(body(1, 3)).unwrap();
        let t = std::time::Instant::now();
        while s.stats.dropped_total(DropReason::Permanent) == 0 {
            assert!(t.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.stats.dropped_total(DropReason::Permanent), 2);
        assert_eq!(bodies.lock().len(), 1, "not retried");
        assert_eq!(s.log.events(), [Event::Refused(2)]);
        assert_eq!(s.queue.bytes(), 0);
        s.drain.cancel();
        s.worker.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn at_the_deadline_the_batch_in_flight_is_handed_back_before_the_queue_closes() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let s = start(&format!("http://{closed}/"), 2, Duration::from_millis(300));
        for tag in 1..=3 {
            s.queue.push(body(tag, 3)).unwrap();
        }
        // Let the first batch fail and retry against the closed port.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = std::time::Instant::now();
        s.drain.cancel();
        s.worker.await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "bounded by shutdown_timeout: {:?}",
            t.elapsed()
        );
        assert_eq!(
            s.log.events(),
            [Event::Nack(2), Event::Close(6), Event::Undelivered(6)],
            "handed back (a durable queue would keep it), then counted once"
        );
        assert_eq!(s.stats.dropped_total(DropReason::Shutdown), 6);
        assert_eq!(s.stats.sent_total(), 0);
        assert_eq!(s.queue.push(body(4, 1)), Err(PushError::Closed));
        assert_eq!(s.stats.queue_bytes(), 0);
    }

    /// An HTTP peer that holds each request until `wanted` are open at once (or 5 s pass), and
    /// reports the most it saw open.
    async fn gathering_peer(wanted: usize) -> (String, Arc<AtomicUsize>) {
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let m = most.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |_: axum::body::Bytes| {
                let (open, most) = (open.clone(), m.clone());
                async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let t = std::time::Instant::now();
                    while open.load(Ordering::SeqCst) < wanted && t.elapsed() < Duration::from_secs(5) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // Let the others see the crowd before this one leaves.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/"), most)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lanes_keep_that_many_batches_in_flight_and_deliver_each_once() {
        let (url, most) = gathering_peer(3).await;
        let s = start_lanes(&url, 2, 3, Duration::from_secs(5));
        for tag in 1..=6 {
            s.queue.push(body(tag, 3)).unwrap();
        }
        let t = std::time::Instant::now();
        while s.stats.sent_total() < 12 {
            assert!(t.elapsed() < Duration::from_secs(10), "{:?}", s.log.events());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            3,
            "three requests in flight at once, never more"
        );
        let mut delivered: Vec<u32> = s
            .log
            .events()
            .into_iter()
            .flat_map(|e| match e {
                Event::Delivered(tags) => tags,
                other => panic!("{other:?}"),
            })
            .collect();
        delivered.sort_unstable();
        assert_eq!(delivered, [1, 2, 3, 4, 5, 6], "each batch once");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "the peer held each request until three were open: {:?}",
            t.elapsed()
        );
        s.drain.cancel();
        s.worker.await.unwrap();
        assert_eq!(s.stats.sent_total(), 12);
        assert_eq!(s.queue.bytes(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn at_the_deadline_every_lane_hands_its_batch_back_and_all_is_counted_once() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let s = start_lanes(&format!("http://{closed}/"), 2, 3, Duration::from_millis(300));
        for tag in 1..=5 {
            s.queue.push(body(tag, 3)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = std::time::Instant::now();
        s.drain.cancel();
        s.worker.await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "bounded: {:?}", t.elapsed());
        assert_eq!(
            s.log.events(),
            [
                Event::Nack(2),
                Event::Nack(2),
                Event::Nack(2),
                Event::Close(10),
                Event::Undelivered(10)
            ],
            "each lane's batch handed back, then the queue counted once"
        );
        assert_eq!(s.stats.dropped_total(DropReason::Shutdown), 10);
        assert_eq!(s.stats.sent_total(), 0);
    }
}
