//! The exporters' queue: encoded payloads waiting to be sent, bounded in the bytes they hold.
//!
//! A [`Payload`] is what an exporter hands over: the encoded protobuf body of one request (a
//! `bytes::Bytes`, never decoded structs), how many items it carries (spans, samples) and a small
//! sidecar kept beside it (the trace exporter's exemplars, remote write's snapshot id). The sender
//! takes payloads out in a [`Batch`], keeps them counted while they are in flight, and then
//! acknowledges the batch ([`Queue::ack`]: delivered or dropped for good) or hands it back
//! ([`Queue::nack`]: to be sent again, e.g. at shutdown).
//!
//! [`Queue`] is the interface the sender and the exporters use; [`MemoryQueue`] is the in-memory
//! implementation, and `disk::DiskQueue` the durable one (`storage.path`): it stores the bodies
//! and their sidecars ([`Persist`]), hands back from [`Queue::push`] the write to await before
//! acknowledging, keeps unacknowledged batches across a restart, and returns 0 from
//! [`Queue::close`] (nothing it holds is lost).

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::error::PushError;
use crate::model::Durable;

/// One queued request: its encoded body, its item count and its sidecar.
#[derive(Debug)]
pub struct Payload<S> {
    /// The encoded request body, as it goes on the wire (before transport compression).
    pub body: Bytes,
    /// Items it carries (spans, samples): what is counted as sent or dropped.
    pub items: u64,
    /// Kept beside the body and handed back with it (never sent).
    pub sidecar: S,
    /// Bytes the sidecar (and the queue slot, if the exporter counts it) holds beyond the body.
    pub sidecar_bytes: u64,
}

impl<S> Payload<S> {
    /// The bytes this payload counts against the queue's bound: its body and its sidecar bytes.
    pub fn held_bytes(&self) -> u64 {
        self.body.len() as u64 + self.sidecar_bytes
    }
}

/// What a queue needs back to acknowledge a batch it handed out; the sender passes it back
/// unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The queue's sequence number of the batch's last payload (a disk queue's read position).
    pub seq: u64,
    /// Bytes the batch holds.
    pub bytes: u64,
    /// Items the batch carries.
    pub items: u64,
}

/// Payloads taken out of a queue together, in order, to be sent as one request.
#[derive(Debug)]
pub struct Batch<S> {
    /// The payloads, oldest first.
    pub payloads: Vec<Payload<S>>,
    /// What acknowledges them.
    pub ticket: Ticket,
    /// Items among them that were handed to a sender before a restart (a durable queue's
    /// at-least-once delivery): they may reach the peer a second time.
    pub resent: u64,
}

/// A sidecar a durable queue can store beside its body, and read back after a restart.
pub trait Persist: Sized {
    /// Appends its encoding to `out`.
    fn persist(&self, out: &mut Vec<u8>);
    /// Reads it back; `None` when the bytes are not an encoding of it.
    fn restore(bytes: &[u8]) -> Option<Self>;
}

impl<S> Batch<S> {
    /// Items the batch carries.
    pub fn items(&self) -> u64 {
        self.ticket.items
    }
}

/// A bounded queue of encoded payloads, shared by the producer (receivers, snapshots) and one
/// sender. Every method is cheap and never blocks on I/O of the peer.
pub trait Queue<S>: Send + Sync + fmt::Debug {
    /// Appends a payload. A durable queue hands back the write to await before the payload's
    /// sender may be told it was accepted; a memory queue hands back `None`.
    ///
    /// # Errors
    /// [`PushError::Full`] when it does not fit the bound, [`PushError::Closed`] once the queue is
    /// closed, [`PushError::Unwritable`] when a durable queue cannot write; nothing was queued.
    fn push(&self, payload: Payload<S>) -> Result<Option<Durable>, PushError>;

    /// For lossy producers: evicts the oldest queued payloads (never one in flight) whose sidecar
    /// is `evictable`, until `bytes` more would fit or none is left. Returns the items evicted.
    fn make_room(&self, bytes: u64, evictable: &dyn Fn(&S) -> bool) -> u64;

    /// Takes the oldest payloads, up to `max_items` items but always at least one; `None` when
    /// nothing is queued. They stay counted (in flight) until acknowledged.
    fn pop(&self, max_items: u64) -> Option<Batch<S>>;

    /// The batch is settled (delivered, or dropped for good): its bytes are released.
    fn ack(&self, ticket: Ticket);

    /// The batch was not delivered: its payloads go back to the front of the queue, in order.
    fn nack(&self, batch: Batch<S>);

    /// Refuses every later push. Returns the items this queue will never deliver: a memory queue
    /// discards everything it holds, queued and in flight; a durable queue keeps them and returns 0.
    /// Calling it again returns only what was held since (nothing, once closed).
    fn close(&self) -> u64;

    /// Bytes held, queued and in flight.
    fn bytes(&self) -> u64;

    /// Items queued (not in flight).
    fn queued_items(&self) -> u64;

    /// Whether nothing is queued (in flight aside); payloads of no items count.
    fn is_empty(&self) -> bool;

    /// The bound, in bytes.
    fn capacity(&self) -> u64;

    /// Notified (`notify_one`) on every push, so the one sender can wait for work.
    fn pushed(&self) -> &Notify;
}

/// The in-memory [`Queue`]. A payload larger than the whole bound is admitted into an empty queue
/// (nothing queued or in flight) so that it can still be sent; memory is then that one payload.
pub struct MemoryQueue<S> {
    state: Mutex<State<S>>,
    capacity: u64,
    pushed: Notify,
}

struct State<S> {
    queued: VecDeque<Payload<S>>,
    queued_items: u64,
    inflight_items: u64,
    /// Queued and in flight.
    bytes: u64,
    /// Sequence number of the last payload pushed.
    seq: u64,
    closed: bool,
}

impl<S> fmt::Debug for MemoryQueue<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock();
        f.debug_struct("MemoryQueue")
            .field("capacity", &self.capacity)
            .field("bytes", &st.bytes)
            .field("queued", &st.queued.len())
            .field("closed", &st.closed)
            .finish()
    }
}

impl<S> MemoryQueue<S> {
    /// An empty queue bounded at `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self {
            state: Mutex::new(State {
                queued: VecDeque::new(),
                queued_items: 0,
                inflight_items: 0,
                bytes: 0,
                seq: 0,
                closed: false,
            }),
            capacity,
            pushed: Notify::new(),
        }
    }
}

impl<S> State<S> {
    fn fits(&self, n: u64, capacity: u64) -> bool {
        self.bytes == 0 || self.bytes.saturating_add(n) <= capacity
    }
}

impl<S: Send> Queue<S> for MemoryQueue<S> {
    fn push(&self, payload: Payload<S>) -> Result<Option<Durable>, PushError> {
        let n = payload.held_bytes();
        {
            let mut st = self.state.lock();
            if st.closed {
                return Err(PushError::Closed);
            }
            if !st.fits(n, self.capacity) {
                return Err(PushError::Full);
            }
            st.bytes += n;
            st.queued_items += payload.items;
            st.seq += 1;
            st.queued.push_back(payload);
        }
        self.pushed.notify_one();
        Ok(None)
    }

    fn make_room(&self, bytes: u64, evictable: &dyn Fn(&S) -> bool) -> u64 {
        let mut st = self.state.lock();
        let mut evicted = 0;
        while !st.fits(bytes, self.capacity) {
            if !st.queued.front().is_some_and(|p| evictable(&p.sidecar)) {
                break;
            }
            let Some(p) = st.queued.pop_front() else { break };
            st.bytes = st.bytes.saturating_sub(p.held_bytes());
            st.queued_items = st.queued_items.saturating_sub(p.items);
            evicted += p.items;
        }
        evicted
    }

    fn pop(&self, max_items: u64) -> Option<Batch<S>> {
        let mut st = self.state.lock();
        let mut payloads = Vec::new();
        let (mut items, mut bytes) = (0u64, 0u64);
        while let Some(p) = st.queued.front() {
            if !payloads.is_empty() && items + p.items > max_items {
                break;
            }
            items += p.items;
            bytes += p.held_bytes();
            payloads.extend(st.queued.pop_front());
        }
        if payloads.is_empty() {
            return None;
        }
        st.queued_items = st.queued_items.saturating_sub(items);
        st.inflight_items += items;
        // The sequence number of the last payload taken: those behind it are still queued.
        let seq = st.seq - st.queued.len() as u64;
        Some(Batch {
            payloads,
            ticket: Ticket { seq, bytes, items },
            resent: 0,
        })
    }

    fn ack(&self, ticket: Ticket) {
        let mut st = self.state.lock();
        st.bytes = st.bytes.saturating_sub(ticket.bytes);
        st.inflight_items = st.inflight_items.saturating_sub(ticket.items);
    }

    fn nack(&self, batch: Batch<S>) {
        let mut st = self.state.lock();
        st.inflight_items = st.inflight_items.saturating_sub(batch.ticket.items);
        if st.closed {
            // Closing already released (and counted) it.
            return;
        }
        st.queued_items += batch.ticket.items;
        for p in batch.payloads.into_iter().rev() {
            st.queued.push_front(p);
        }
    }

    fn close(&self) -> u64 {
        let (items, drained) = {
            let mut st = self.state.lock();
            st.closed = true;
            st.bytes = 0;
            let items = st.queued_items + st.inflight_items;
            st.queued_items = 0;
            st.inflight_items = 0;
            (items, std::mem::take(&mut st.queued))
        };
        // Freed outside the lock.
        drop(drained);
        items
    }

    fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    fn queued_items(&self) -> u64 {
        self.state.lock().queued_items
    }

    fn is_empty(&self) -> bool {
        self.state.lock().queued.is_empty()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn pushed(&self) -> &Notify {
        &self.pushed
    }
}
