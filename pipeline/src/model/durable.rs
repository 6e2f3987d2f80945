//! A write that becomes durable later: the handle a durable queue hands back for each record it
//! appends, which a receiver awaits before it acknowledges the request (group commit: one
//! `fsync` covers every record written before it began).

use std::fmt;

use tokio::sync::watch;

/// How far a log is known to be on stable storage, published after each flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Synced {
    /// Every record up to this sequence number has been settled by a flush.
    pub through: u64,
    /// Records below this sequence number may have been lost by a failed flush: their waiters are
    /// refused (the sender retries). Records from here on were flushed successfully.
    pub good_from: u64,
}

/// The record a push wrote, to be awaited before acknowledging it to its sender.
#[derive(Clone)]
pub struct Durable {
    synced: watch::Receiver<Synced>,
    seq: u64,
}

/// A write that could not be made durable (the flush failed, or the log shut down first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the data could not be made durable on disk")]
pub struct NotDurable;

impl Durable {
    /// A handle for record `seq` of the log whose flushes `synced` publishes.
    pub fn new(synced: watch::Receiver<Synced>, seq: u64) -> Self {
        Self { synced, seq }
    }

    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Completes once the record is on stable storage.
    ///
    /// # Errors
    /// [`NotDurable`] when the flush that covered it failed or the log stopped flushing.
    pub async fn wait(mut self) -> Result<(), NotDurable> {
        let seq = self.seq;
        let s = *self
            .synced
            .wait_for(|s| s.through >= seq)
            .await
            .map_err(|_| NotDurable)?;
        if seq >= s.good_from { Ok(()) } else { Err(NotDurable) }
    }
}

impl fmt::Debug for Durable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Durable").field("seq", &self.seq).finish()
    }
}

/// Two handles are equal when they name the same record.
impl PartialEq for Durable {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Durable {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_record_is_durable_once_a_good_flush_covers_it_and_refused_after_a_bad_one() {
        let (tx, rx) = watch::channel(Synced {
            through: 0,
            good_from: 0,
        });
        let waiter = tokio::spawn(Durable::new(rx.clone(), 3).wait());
        tx.send_modify(|s| s.through = 2);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "record 3 is not flushed yet");
        tx.send_modify(|s| s.through = 5);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // A failed flush of 6..=8: their waiters are refused; later records are fine again.
        tx.send_modify(|s| {
            *s = Synced {
                through: 8,
                good_from: 9,
            }
        });
        assert_eq!(Durable::new(rx.clone(), 7).wait().await, Err(NotDurable));
        tx.send_modify(|s| s.through = 10);
        assert_eq!(Durable::new(rx.clone(), 10).wait().await, Ok(()));
        drop(tx);
        assert_eq!(
            Durable::new(rx, 11).wait().await,
            Err(NotDurable),
            "the flusher is gone"
        );
    }
}
