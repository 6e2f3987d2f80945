//! The durable [`Queue`]: payloads in a log of segment files on disk, so that what Spindle
//! acknowledged survives `kill -9`, a reboot, or a restart while the peer is down.
//!
//! Layout (one directory per exporter): segment files `<id>.seg` holding [`record`]s back to back,
//! and `marks` ([`marks`]: how far records are settled and handed out). A push appends one record
//! to the newest segment and hands back a [`Durable`] that completes once a flush of the
//! [`flush`] thread covers it (group commit); the receiver answers its sender only then. A pop
//! reads records back (checking each record's checksum), an acknowledgement settles them, and a
//! segment whose records are all settled is deleted. Nothing is ever deleted that was not
//! delivered or dropped for good and counted: closing keeps everything, and the next start
//! resumes from the marks.
//!
//! Delivery is at least once: records handed to the sender before a crash and not yet settled are
//! sent again after it, and counted as re-sent ([`Batch::resent`]).
//!
//! Bounded: records not yet settled hold at most `capacity` bytes (a single record larger than
//! that is admitted into an empty queue); the disk holds them plus at most one segment of settled
//! records (segments are `capacity / 16`). A full queue refuses with [`PushError::Full`], a failed
//! write (disk full, I/O error) with [`PushError::Unwritable`]: both are "overloaded" to senders,
//! and nothing is dropped silently.
//!
//! Recovery ([`DiskQueue::open`]): every segment is read through; a record whose checksum fails
//! is skipped up to the next intact record (found again by its magic and checksum, so good
//! records after corruption are kept), a torn tail (a crash mid-write) is truncated, and both are
//! counted and logged once.

pub mod flush;
pub mod marks;
pub mod record;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use self::flush::Flusher;
use self::marks::{Marks, MarksFile};
use self::record::{HEADER, Header};
use super::error::PushError;
use super::queue::{Batch, Payload, Persist, Queue, Ticket};
use super::stats::QueueEvents;
use crate::model::Durable;

/// Segments per queue bound: a segment is `capacity / SEGMENTS_PER_BOUND` (at least
/// [`MIN_SEGMENT`]).
const SEGMENTS_PER_BOUND: u64 = 16;
/// The smallest segment size.
const MIN_SEGMENT: u64 = 64 * 1024;

/// What opening a queue found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Records not yet settled, now queued again.
    pub records: u64,
    /// Items they carry.
    pub items: u64,
    /// Items among them that had been handed to the sender before (sent again: at least once).
    pub resent_items: u64,
    /// Corrupt stretches skipped (each up to the next intact record) or truncated (a torn tail).
    pub corrupt: u64,
    /// Bytes those stretches held.
    pub corrupt_bytes: u64,
}

/// Where one queued record lives.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u64,
    items: u64,
    /// Handed to the sender before the last restart.
    resent: bool,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    len: u64,
    /// The highest sequence number in it (0: none).
    last_seq: u64,
    /// No more records go into it (rolled, or a write to it failed).
    sealed: bool,
}

/// The log, under one lock.
#[derive(Debug)]
struct Log {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    next_segment: u64,
    segment_max: u64,
    queued: VecDeque<Entry>,
    /// Batches handed out, by their ticket's `seq`.
    inflight: HashMap<u64, Vec<Entry>>,
    /// Records pushed and not yet settled.
    unsettled: BTreeSet<u64>,
    next_seq: u64,
    marks: MarksFile,
    /// Bytes of records not yet settled.
    live: u64,
    queued_items: u64,
    closed: bool,
    scratch: Vec<u8>,
}

/// A durable queue in a directory. See the module docs.
pub struct DiskQueue<S> {
    log: Mutex<Log>,
    capacity: u64,
    pushed: Notify,
    flusher: Flusher,
    events: Arc<QueueEvents>,
    name: String,
    sidecar: PhantomData<fn() -> S>,
    /// Tests: every write fails as if the disk were full (after writing the header).
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
}

impl<S> std::fmt::Debug for DiskQueue<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.log.lock();
        f.debug_struct("DiskQueue")
            .field("dir", &log.dir)
            .field("capacity", &self.capacity)
            .field("live", &log.live)
            .field("queued", &log.queued.len())
            .field("closed", &log.closed)
            .finish()
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn open_segment(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create_new(create).open(path)
}

impl<S: Persist + Send + 'static> DiskQueue<S> {
    /// Opens the queue in `dir` (created if missing), bounded at `capacity` bytes of unsettled
    /// records, and recovers what a previous run left: see the module docs. `name` names it in
    /// logs and its flush thread.
    ///
    /// # Errors
    /// When the directory cannot be created, read or written (a start-up error).
    pub fn open(dir: &Path, capacity: u64, name: &str, events: Arc<QueueEvents>) -> io::Result<(Self, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let marks = MarksFile::open(&dir.join("marks"))?;
        let m = marks.get();
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut rec = Recovered::default();
        let mut segments = BTreeMap::new();
        let mut queued = VecDeque::new();
        let mut unsettled = BTreeSet::new();
        let (mut live, mut queued_items, mut max_seq) = (0, 0, m.acked);
        let mut buf = Vec::new();
        for id in &ids {
            let path = segment_path(dir, *id);
            let file = open_segment(&path, false)?;
            let len = file.metadata()?.len();
            buf.clear();
            buf.resize(len as usize, 0);
            file.read_exact_at(&mut buf, 0)?;
            let mut at = 0usize;
            let mut last_seq = 0;
            let mut good_end = 0usize;
            while at < buf.len() {
                let whole = record::decode_header(&buf[at..]).and_then(|h| {
                    let end = at.checked_add(h.len as usize)?;
                    (end <= buf.len()).then_some(())?;
                    record::check(&buf[at..end])
                });
                let Some(h) = whole else {
                    // Corrupt from here: skip to the next intact record, or truncate the tail.
                    rec.corrupt += 1;
                    match record::resync(&buf, at + 1) {
                        Some(next) => {
                            rec.corrupt_bytes += (next - at) as u64;
                            at = next;
                            continue;
                        }
                        None => {
                            rec.corrupt_bytes += (buf.len() - at) as u64;
                            break;
                        }
                    }
                };
                let end = at + h.len as usize;
                last_seq = last_seq.max(h.seq);
                max_seq = max_seq.max(h.seq);
                if h.seq > m.acked && unsettled.insert(h.seq) {
                    let resent = h.seq <= m.popped;
                    queued.push_back(Entry {
                        seq: h.seq,
                        segment: *id,
                        offset: at as u64,
                        len: h.len,
                        items: h.items,
                        resent,
                    });
                    live += h.len;
                    queued_items += h.items;
                    rec.records += 1;
                    rec.items += h.items;
                    if resent {
                        rec.resent_items += h.items;
                    }
                }
                at = end;
                good_end = end;
            }
            if good_end < buf.len() {
                // Cut what no intact record follows: the next write starts clean.
                file.set_len(good_end as u64)?;
            }
            segments.insert(
                *id,
                Segment {
                    file: Arc::new(file),
                    len: good_end as u64,
                    last_seq,
                    sealed: true,
                },
            );
        }
        drop(buf);
        // Segments are read in id order and records appended in seq order; sorting only guards
        // against a segment copied back by hand.
        queued.make_contiguous().sort_by_key(|e| e.seq);
        let flusher = {
            let events = events.clone();
            let name = name.to_string();
            Flusher::start(dir.to_path_buf(), max_seq, &name.clone(), move |e| {
                events.io_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(queue = %name, error = %e, "disk queue: a flush to disk failed; the requests it covered are refused as overloaded and their senders retry");
            })?
        };
        let segment_max = (capacity / SEGMENTS_PER_BOUND).max(MIN_SEGMENT);
        let mut log = Log {
            dir: dir.to_path_buf(),
            next_segment: ids.last().map_or(1, |l| l + 1),
            segments,
            segment_max,
            queued,
            inflight: HashMap::new(),
            unsettled,
            next_seq: max_seq + 1,
            marks,
            live,
            queued_items,
            closed: false,
            scratch: Vec::new(),
        };
        log.collect_garbage();
        if rec.corrupt > 0 {
            events.corrupt.fetch_add(rec.corrupt, Ordering::Relaxed);
            tracing::warn!(
                queue = name,
                stretches = rec.corrupt,
                bytes = rec.corrupt_bytes,
                "disk queue: skipped corrupt or torn records found at start (a crash mid-write leaves a torn tail); the intact records around them are kept"
            );
        }
        if rec.records > 0 {
            tracing::info!(
                queue = name,
                records = rec.records,
                items = rec.items,
                resent = rec.resent_items,
                "disk queue: resuming delivery of what the last run left"
            );
        }
        Ok((
            Self {
                log: Mutex::new(log),
                capacity,
                pushed: Notify::new(),
                flusher,
                events,
                name: name.to_string(),
                sidecar: PhantomData,
                #[cfg(test)]
                fail_writes: Default::default(),
            },
            rec,
        ))
    }

    /// Reads a record back, checked.
    fn read(&self, file: &File, e: &Entry) -> Option<(Header, Bytes)> {
        let mut buf = vec![0; e.len as usize];
        if let Err(err) = file.read_exact_at(&mut buf, e.offset) {
            tracing::error!(queue = %self.name, error = %err, "disk queue: cannot read a record back");
            return None;
        }
        let h = record::check(&buf).filter(|h| h.seq == e.seq)?;
        Some((h, Bytes::from(buf)))
    }

    fn io_error(&self, what: &str, err: &io::Error) {
        self.events.io_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(queue = %self.name, error = %err, "disk queue: {what} failed");
    }
}

impl Log {
    /// Settles `seq`: it no longer counts, and its segment may go.
    fn settle(&mut self, e: &Entry) {
        if self.unsettled.remove(&e.seq) {
            self.live = self.live.saturating_sub(e.len);
        }
    }

    /// The marks now: everything below the oldest unsettled record is settled.
    fn marks(&self, popped: u64) -> Marks {
        let acked = self.unsettled.first().map_or(self.next_seq - 1, |s| s - 1);
        Marks {
            acked,
            popped: popped.max(self.marks.get().popped).max(acked),
        }
    }

    /// Deletes sealed segments whose records are all settled, oldest first.
    fn collect_garbage(&mut self) {
        let floor = self.unsettled.first().copied().unwrap_or(self.next_seq);
        while let Some((&id, seg)) = self.segments.first_key_value() {
            if seg.last_seq >= floor || !seg.sealed {
                break;
            }
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, id))
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "disk queue: cannot delete a delivered segment; it is retried later");
                break;
            }
            self.segments.remove(&id);
        }
    }

    /// The segment the next record of `len` bytes goes to: the newest one, or a new one when it
    /// is sealed or would grow past the segment size. Returns its id and whether it was created.
    fn writable(&mut self, len: u64, roll: bool) -> io::Result<(u64, bool)> {
        if let Some((&id, seg)) = self.segments.iter_mut().next_back()
            && !seg.sealed
            && !roll
            && (seg.len == 0 || seg.len + len <= self.segment_max)
        {
            return Ok((id, false));
        }
        if let Some((_, seg)) = self.segments.iter_mut().next_back() {
            seg.sealed = true;
        }
        let id = self.next_segment;
        let file = open_segment(&segment_path(&self.dir, id), true)?;
        self.next_segment += 1;
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                len: 0,
                last_seq: 0,
                sealed: false,
            },
        );
        Ok((id, true))
    }

    fn save_marks(&mut self, popped: u64) -> io::Result<()> {
        let m = self.marks(popped);
        self.marks.set(m)
    }
}

impl<S: Persist + Send + 'static> Queue<S> for DiskQueue<S> {
    fn push(&self, payload: Payload<S>) -> Result<Option<Durable>, PushError> {
        let mut log = self.log.lock();
        if log.closed {
            return Err(PushError::Closed);
        }
        let mut head = std::mem::take(&mut log.scratch);
        head.clear();
        head.resize(HEADER, 0);
        payload.sidecar.persist(&mut head);
        let len = (head.len() + payload.body.len()) as u64;
        if len > u64::from(u32::MAX) {
            log.scratch = head;
            return Err(PushError::Full);
        }
        if !log.unsettled.is_empty() && log.live + len > self.capacity {
            log.scratch = head;
            return Err(PushError::Full);
        }
        let seq = log.next_seq;
        {
            let (h, rest) = head.split_at_mut(HEADER);
            record::encode_header(h, seq, payload.items, rest, &payload.body);
        }
        let roll = self.flusher.take_failure();
        #[cfg(test)]
        let fail = self.fail_writes.load(Ordering::Relaxed);
        let written = log.writable(len, roll).and_then(|(id, created)| {
            let seg = log
                .segments
                .get(&id)
                .ok_or_else(|| io::Error::other("segment vanished"))?;
            let at = seg.len;
            let res = seg.file.write_all_at(&head, at).and_then(|()| {
                #[cfg(test)]
                if fail {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
                seg.file.write_all_at(&payload.body, at + head.len() as u64)
            });
            if let Err(e) = res {
                if created {
                    // A segment made for this record only: gone again, so that failing writes on
                    // a full disk do not pile up empty files (and descriptors).
                    log.segments.remove(&id);
                    let _ = std::fs::remove_file(segment_path(&log.dir, id));
                } else {
                    // Cut the partial record; nothing more goes to this segment either way.
                    let _ = seg.file.set_len(at);
                    if let Some(seg) = log.segments.get_mut(&id) {
                        seg.sealed = true;
                    }
                }
                return Err(e);
            }
            Ok((id, at, created))
        });
        log.scratch = head;
        let (id, offset, created) = match written {
            Ok(w) => w,
            Err(e) => {
                drop(log);
                self.io_error("writing a record", &e);
                return Err(PushError::Unwritable);
            }
        };
        let Some(seg) = log.segments.get_mut(&id) else {
            return Err(PushError::Unwritable);
        };
        seg.len += len;
        seg.last_seq = seq;
        let file = seg.file.clone();
        log.next_seq += 1;
        log.live += len;
        log.queued_items += payload.items;
        log.unsettled.insert(seq);
        log.queued.push_back(Entry {
            seq,
            segment: id,
            offset,
            len,
            items: payload.items,
            resent: false,
        });
        // Under the lock, so the flusher learns of writes in their order.
        self.flusher.written(seq, &file, created);
        drop(log);
        drop(payload);
        self.pushed.notify_one();
        Ok(Some(self.flusher.durable(seq)))
    }

    fn make_room(&self, bytes: u64, evictable: &dyn Fn(&S) -> bool) -> u64 {
        let mut evicted = 0;
        loop {
            let (e, file) = {
                let log = self.log.lock();
                if log.unsettled.is_empty() || log.live + bytes <= self.capacity {
                    break;
                }
                let Some(e) = log.queued.front().copied() else { break };
                let Some(file) = log.segments.get(&e.segment).map(|s| s.file.clone()) else {
                    break;
                };
                (e, file)
            };
            let sidecar = self
                .read(&file, &e)
                .and_then(|(h, rec)| S::restore(&record::split(rec, &h).0));
            if sidecar.as_ref().is_some_and(|s| !evictable(s)) {
                break;
            }
            let mut log = self.log.lock();
            // Still the front (a pop may have taken it meanwhile)?
            if log.queued.front().is_none_or(|f| f.seq != e.seq) {
                continue;
            }
            log.queued.pop_front();
            log.queued_items = log.queued_items.saturating_sub(e.items);
            log.settle(&e);
            evicted += e.items;
            log.collect_garbage();
            if let Err(err) = log.save_marks(0) {
                drop(log);
                self.io_error("updating the marks", &err);
            }
        }
        evicted
    }

    fn pop(&self, max_items: u64) -> Option<Batch<S>> {
        loop {
            let (entries, files, popped) = {
                let mut log = self.log.lock();
                let mut entries = Vec::new();
                let mut items = 0u64;
                while let Some(e) = log.queued.front() {
                    if !entries.is_empty() && items + e.items > max_items {
                        break;
                    }
                    items += e.items;
                    entries.extend(log.queued.pop_front());
                }
                let last = entries.last()?.seq;
                log.queued_items = log.queued_items.saturating_sub(items);
                let files: Vec<Option<Arc<File>>> = entries
                    .iter()
                    .map(|e| log.segments.get(&e.segment).map(|s| s.file.clone()))
                    .collect();
                log.inflight.insert(last, entries.clone());
                if let Err(err) = log.save_marks(last) {
                    drop(log);
                    self.io_error("updating the marks", &err);
                }
                (entries, files, last)
            };
            // Read outside the lock: pushes go on meanwhile.
            let mut payloads = Vec::with_capacity(entries.len());
            let mut kept = Vec::with_capacity(entries.len());
            let mut corrupt = Vec::new();
            for (e, f) in entries.iter().zip(&files) {
                let restored = f.as_deref().and_then(|f| self.read(f, e)).and_then(|(h, rec)| {
                    let (sidecar, body) = record::split(rec, &h);
                    Some((S::restore(&sidecar)?, body))
                });
                match restored {
                    Some((sidecar, body)) => {
                        payloads.push(Payload {
                            body,
                            items: e.items,
                            sidecar,
                            sidecar_bytes: 0,
                        });
                        kept.push(*e);
                    }
                    None => corrupt.push(*e),
                }
            }
            if !corrupt.is_empty() {
                let lost: u64 = corrupt.iter().map(|e| e.items).sum();
                self.events.corrupt.fetch_add(corrupt.len() as u64, Ordering::Relaxed);
                tracing::error!(
                    queue = %self.name,
                    records = corrupt.len(),
                    items = lost,
                    "disk queue: records failed their checksum when read back; they are skipped"
                );
                let mut log = self.log.lock();
                for e in &corrupt {
                    log.settle(e);
                }
                log.inflight.remove(&popped);
                if !kept.is_empty() {
                    log.inflight.insert(popped, kept.clone());
                }
                log.collect_garbage();
            }
            if payloads.is_empty() {
                continue;
            }
            let items = kept.iter().map(|e| e.items).sum();
            let bytes = kept.iter().map(|e| e.len).sum();
            let resent = kept.iter().filter(|e| e.resent).map(|e| e.items).sum();
            return Some(Batch {
                payloads,
                ticket: Ticket {
                    seq: popped,
                    bytes,
                    items,
                },
                resent,
            });
        }
    }

    fn ack(&self, ticket: Ticket) {
        let mut log = self.log.lock();
        let Some(entries) = log.inflight.remove(&ticket.seq) else {
            return;
        };
        for e in &entries {
            log.settle(e);
        }
        log.collect_garbage();
        if let Err(err) = log.save_marks(0) {
            drop(log);
            self.io_error("updating the marks", &err);
        }
    }

    fn nack(&self, batch: Batch<S>) {
        let mut log = self.log.lock();
        let Some(entries) = log.inflight.remove(&batch.ticket.seq) else {
            return;
        };
        for e in entries.into_iter().rev() {
            log.queued_items += e.items;
            log.queued.push_front(e);
        }
    }

    fn close(&self) -> u64 {
        let mut log = self.log.lock();
        log.closed = true;
        if let Err(err) = log.save_marks(0) {
            drop(log);
            self.io_error("updating the marks", &err);
        }
        // Everything stays on disk for the next start.
        0
    }

    fn bytes(&self) -> u64 {
        self.log.lock().live
    }

    fn queued_items(&self) -> u64 {
        self.log.lock().queued_items
    }

    fn is_empty(&self) -> bool {
        self.log.lock().queued.is_empty()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn pushed(&self) -> &Notify {
        &self.pushed
    }
}

#[cfg(test)]
mod tests;
