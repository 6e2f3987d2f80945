//! The disk queue against an in-memory model, with crash points: dropped without closing (as by
//! `kill -9`), a torn final record, reopened after a clean close, and a full disk.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// A sidecar naming the record it rides with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag(u64);

impl Persist for Tag {
    fn persist(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_le_bytes());
    }
    fn restore(bytes: &[u8]) -> Option<Self> {
        Some(Tag(u64::from_le_bytes(bytes.try_into().ok()?)))
    }
}

/// A record's whole length on disk.
fn record_len(body: usize) -> u64 {
    (HEADER + 8 + body) as u64
}

fn body(tag: u64, len: usize) -> Bytes {
    let mut b = tag.to_le_bytes().repeat(len / 8 + 1);
    b.truncate(len);
    Bytes::from(b)
}

fn open(dir: &Path, capacity: u64) -> (DiskQueue<Tag>, Recovered, Arc<QueueEvents>) {
    let events = Arc::new(QueueEvents::default());
    let (q, r) = DiskQueue::open(dir, capacity, "test", events.clone()).unwrap();
    (q, r, events)
}

fn push(q: &DiskQueue<Tag>, tag: u64, len: usize, items: u64) -> Result<Option<Durable>, PushError> {
    q.push(Payload {
        body: body(tag, len),
        items,
        sidecar: Tag(tag),
        sidecar_bytes: 0,
    })
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        len: usize,
        items: u64,
    },
    Pop {
        max: u64,
    },
    Ack {
        which: usize,
    },
    Nack {
        which: usize,
    },
    /// Dropped without closing, then reopened: `kill -9`.
    Crash,
    /// A crash in the middle of writing a record: its first bytes are on disk.
    TornTail {
        keep: usize,
    },
    /// Closed, then reopened: a graceful restart.
    Restart,
    /// The next pushes fail to write, as on a full disk; then space comes back.
    DiskFull {
        pushes: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..3000, 0u64..5).prop_map(|(len, items)| Op::Push { len, items }),
        4 => (1u64..12).prop_map(|max| Op::Pop { max }),
        3 => any::<usize>().prop_map(|which| Op::Ack { which }),
        1 => any::<usize>().prop_map(|which| Op::Nack { which }),
        1 => Just(Op::Crash),
        1 => (1usize..60).prop_map(|keep| Op::TornTail { keep }),
        1 => Just(Op::Restart),
        1 => (1usize..3).prop_map(|pushes| Op::DiskFull { pushes }),
    ]
}

/// What the queue must hold: records by tag, the order they come out in, and what is in flight.
#[derive(Default)]
struct Model {
    /// tag → (items, body length); the tag is the record's push order.
    records: BTreeMap<u64, (u64, usize)>,
    /// Not yet settled, by tag.
    unsettled: std::collections::BTreeSet<u64>,
    queued: VecDeque<u64>,
    inflight: Vec<(Batch<Tag>, Vec<u64>)>,
    /// The highest tag ever handed out, and the same as of the last reopen.
    popped: u64,
    popped_at_open: u64,
    next_tag: u64,
}

impl Model {
    fn live(&self) -> u64 {
        self.unsettled.iter().map(|t| record_len(self.records[t].1)).sum()
    }

    /// After a reopen: every record past the settled prefix is queued again, in order (records
    /// settled out of order past the prefix come back: at least once).
    fn reopen(&mut self) {
        self.inflight.clear();
        let prefix = self.unsettled.first().map_or(u64::MAX, |f| f - 1);
        self.queued = self.records.keys().copied().filter(|t| *t > prefix).collect();
        self.unsettled = self.queued.iter().copied().collect();
        self.popped_at_open = self.popped;
    }
}

fn last_segment(dir: &Path) -> Option<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop()
}

const CAPACITY: u64 = 16 * 1024;

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _, _) = open(dir.path(), CAPACITY);
    let mut m = Model {
        next_tag: 1,
        ..Model::default()
    };
    for op in ops {
        match op {
            Op::Push { len, items } => {
                let tag = m.next_tag;
                let fits = m.unsettled.is_empty() || m.live() + record_len(len) <= CAPACITY;
                let got = push(&q, tag, len, items);
                if fits {
                    prop_assert!(matches!(got, Ok(Some(_))), "push {tag} refused: {got:?}");
                    m.next_tag += 1;
                    m.records.insert(tag, (items, len));
                    m.unsettled.insert(tag);
                    m.queued.push_back(tag);
                } else {
                    prop_assert_eq!(got.err(), Some(PushError::Full));
                }
            }
            Op::Pop { max } => {
                let got = q.pop(max);
                let mut want = Vec::new();
                let mut items = 0;
                while let Some(t) = m.queued.front() {
                    let n = m.records[t].0;
                    if !want.is_empty() && items + n > max {
                        break;
                    }
                    items += n;
                    want.extend(m.queued.pop_front());
                }
                match got {
                    None => prop_assert!(want.is_empty()),
                    Some(b) => {
                        let tags: Vec<u64> = b.payloads.iter().map(|p| p.sidecar.0).collect();
                        prop_assert_eq!(&tags, &want);
                        for p in &b.payloads {
                            let (items, len) = m.records[&p.sidecar.0];
                            prop_assert_eq!(&p.body, &body(p.sidecar.0, len));
                            prop_assert_eq!(p.items, items);
                        }
                        let resent: u64 = want
                            .iter()
                            .filter(|t| **t <= m.popped_at_open)
                            .map(|t| m.records[t].0)
                            .sum();
                        prop_assert_eq!(b.resent, resent, "re-sent items of {:?}", want);
                        m.popped = m.popped.max(*want.iter().max().unwrap());
                        m.inflight.push((b, want));
                    }
                }
            }
            Op::Ack { which } if !m.inflight.is_empty() => {
                let (b, tags) = m.inflight.remove(which % m.inflight.len());
                q.ack(b.ticket);
                for t in tags {
                    m.unsettled.remove(&t);
                }
            }
            Op::Nack { which } if !m.inflight.is_empty() => {
                // The sender hands back the oldest batch first only at shutdown; any order is
                // allowed here, but then the queue order is the handed-back batch first.
                let (b, tags) = m.inflight.remove(which % m.inflight.len());
                q.nack(b);
                for t in tags.into_iter().rev() {
                    m.queued.push_front(t);
                }
            }
            Op::Ack { .. } | Op::Nack { .. } => {}
            Op::Crash | Op::TornTail { .. } | Op::Restart => {
                if matches!(op, Op::Restart) {
                    prop_assert_eq!(q.close(), 0, "a durable queue drops nothing at close");
                    prop_assert_eq!(push(&q, 0, 1, 1).err(), Some(PushError::Closed));
                }
                drop(q);
                let mut torn = false;
                if let Op::TornTail { keep } = op
                    && let Some(seg) = last_segment(dir.path())
                {
                    let mut rec = vec![0; HEADER];
                    record::encode_header(&mut rec, 999_999, 1, &[0; 8], &[7; 100]);
                    rec.extend_from_slice(&[0; 108]);
                    rec.truncate(keep);
                    let f = OpenOptions::new().append(true).open(&seg).unwrap();
                    std::io::Write::write_all(&mut &f, &rec).unwrap();
                    torn = true;
                }
                let (q2, rec, events) = open(dir.path(), CAPACITY);
                q = q2;
                m.reopen();
                prop_assert_eq!(rec.corrupt, u64::from(torn), "a torn tail is found and counted once");
                prop_assert_eq!(events.corrupt.load(Ordering::Relaxed), u64::from(torn));
                prop_assert_eq!(rec.records, m.queued.len() as u64);
            }
            Op::DiskFull { pushes } => {
                q.fail_writes.store(true, Ordering::Relaxed);
                for _ in 0..pushes {
                    let fits = m.unsettled.is_empty() || m.live() + record_len(10) <= CAPACITY;
                    let got = push(&q, m.next_tag, 10, 1).err();
                    prop_assert_eq!(got, Some(if fits { PushError::Unwritable } else { PushError::Full }));
                }
                q.fail_writes.store(false, Ordering::Relaxed);
            }
        }
        prop_assert_eq!(q.bytes(), m.live());
        prop_assert_eq!(q.queued_items(), m.queued.iter().map(|t| m.records[t].0).sum::<u64>());
        prop_assert_eq!(q.is_empty(), m.queued.is_empty());
        // The disk holds what is not settled plus at most a segment and the batches in flight.
        let inflight: u64 = m
            .inflight
            .iter()
            .flat_map(|(_, t)| t)
            .map(|t| record_len(m.records[t].1))
            .sum();
        let segment = (CAPACITY / SEGMENTS_PER_BOUND).max(MIN_SEGMENT);
        prop_assert!(
            disk_bytes(dir.path()) <= m.live() + segment + inflight + record_len(3000) * 2,
            "disk {} live {}",
            disk_bytes(dir.path()),
            m.live()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_disk_queue_behaves_as_its_model_through_crashes_torn_writes_and_a_full_disk(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops)?;
    }
}

#[tokio::test]
async fn a_push_is_durable_once_its_flush_completes_and_concurrent_pushes_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _, _) = open(dir.path(), 1 << 20);
    let q = Arc::new(q);
    let mut waits = Vec::new();
    for i in 0..200 {
        let d = push(&q, i, 100, 1).unwrap().unwrap();
        waits.push(tokio::spawn(d.wait()));
    }
    for w in waits {
        assert_eq!(w.await.unwrap(), Ok(()));
    }
}

#[test]
fn a_corrupt_record_in_the_middle_loses_only_itself_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _, _) = open(dir.path(), 1 << 20);
    for t in 1..=3 {
        push(&q, t, 50, 1).unwrap();
    }
    drop(q);
    let seg = last_segment(dir.path()).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // A bit flipped in the second record's body.
    let second = record_len(50) as usize;
    bytes[second + HEADER + 8 + 10] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let (q, rec, events) = open(dir.path(), 1 << 20);
    assert_eq!((rec.corrupt, rec.records), (1, 2), "{rec:?}");
    assert_eq!(events.corrupt.load(Ordering::Relaxed), 1);
    let b = q.pop(10).unwrap();
    let tags: Vec<u64> = b.payloads.iter().map(|p| p.sidecar.0).collect();
    assert_eq!(tags, vec![1, 3], "the good record after the corrupt one is kept");
}

#[test]
fn delivered_segments_are_deleted_and_sequence_numbers_survive_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _, _) = open(dir.path(), 1 << 20);
    // Segments of 64 KiB: 100 records of 2 KB fill several.
    for t in 1..=100 {
        push(&q, t, 2000, 1).unwrap();
    }
    assert!(disk_bytes(dir.path()) >= 100 * 2000);
    while let Some(b) = q.pop(7) {
        q.ack(b.ticket);
    }
    assert!(
        disk_bytes(dir.path()) <= MIN_SEGMENT,
        "only the segment being written stays"
    );
    drop(q);
    // Reopened: nothing comes back, and new records are not mistaken for settled ones.
    let (q, rec, _) = open(dir.path(), 1 << 20);
    assert_eq!(rec.records, 0);
    assert!(q.pop(10).is_none());
    push(&q, 101, 10, 1).unwrap();
    drop(q);
    let (q, rec, _) = open(dir.path(), 1 << 20);
    assert_eq!(rec.records, 1);
    assert_eq!(q.pop(10).unwrap().payloads[0].sidecar, Tag(101));
}

#[test]
fn an_unusable_directory_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = DiskQueue::<Tag>::open(&file.join("q"), 1 << 20, "t", Arc::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotADirectory, "{err}");
}
