//! Group commit: one thread per durable queue makes written records durable. Writers tell it how
//! far they have written and which files they touched; it flushes them all with one `fdatasync`
//! each (and the directory when a segment was created), then publishes how far the log is durable.
//! Every record written while a flush runs is covered by the next one, so concurrent requests
//! share a flush.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::model::{Durable, Synced};

/// What writers have handed over since the last flush began.
#[derive(Default)]
struct Pending {
    /// The highest sequence number written.
    written: u64,
    /// Files written since the last flush began.
    files: Vec<Arc<File>>,
    /// Whether a segment file was created (its directory entry must be flushed too).
    dir: bool,
    /// The queue is gone: flush what is pending, then stop.
    stop: bool,
}

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
    /// Set after a failed flush: the writer starts a new segment before its next write (pages
    /// whose write-back failed may be marked clean; nothing more goes to that file).
    failed: AtomicBool,
}

/// The handle writers hold; dropping it lets the thread finish its last flush and end.
pub struct Flusher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("synced", &*self.inner.synced.borrow())
            .finish()
    }
}

impl Flusher {
    /// Starts the flush thread for the log in `dir`, whose records up to `through` are already
    /// durable (recovered at open). `on_error` is called once per failed flush.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(
        dir: PathBuf,
        through: u64,
        name: &str,
        on_error: impl Fn(&std::io::Error) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (synced, _) = watch::channel(Synced { through, good_from: 0 });
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending {
                written: through,
                ..Pending::default()
            }),
            wake: Condvar::new(),
            synced,
            failed: AtomicBool::new(false),
        });
        let thread = inner.clone();
        std::thread::Builder::new()
            .name(format!("spindle-fsync-{name}"))
            .spawn(move || run(&thread, &dir, &on_error))?;
        Ok(Self { inner })
    }

    /// Records that everything up to `seq` has been written, to `file` (`created`: a new segment
    /// file whose directory entry must be flushed). Call it in the order records were written.
    pub fn written(&self, seq: u64, file: &Arc<File>, created: bool) {
        let mut p = self.inner.pending.lock();
        p.written = p.written.max(seq);
        if !p.files.iter().any(|f| Arc::ptr_eq(f, file)) {
            p.files.push(file.clone());
        }
        p.dir |= created;
        drop(p);
        self.inner.wake.notify_one();
    }

    /// The handle a sender awaits for record `seq`.
    pub fn durable(&self, seq: u64) -> Durable {
        Durable::new(self.inner.synced.subscribe(), seq)
    }

    /// Whether a flush failed since the last call (the writer then starts a new segment).
    pub fn take_failure(&self) -> bool {
        self.inner.failed.swap(false, Ordering::Relaxed)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.inner.pending.lock().stop = true;
        self.inner.wake.notify_one();
    }
}

fn run(inner: &Inner, dir: &std::path::Path, on_error: &dyn Fn(&std::io::Error)) {
    let mut through = inner.synced.borrow().through;
    loop {
        let (target, files, flush_dir) = {
            let mut p = inner.pending.lock();
            while p.written <= through && p.files.is_empty() && !p.stop {
                inner.wake.wait(&mut p);
            }
            if p.written <= through && p.files.is_empty() && p.stop {
                return;
            }
            (p.written, std::mem::take(&mut p.files), std::mem::take(&mut p.dir))
        };
        let res = files
            .iter()
            .try_for_each(|f| f.sync_data())
            .and_then(|()| if flush_dir { File::open(dir)?.sync_all() } else { Ok(()) });
        drop(files);
        through = target;
        match res {
            Ok(()) => inner.synced.send_modify(|s| s.through = target),
            Err(e) => {
                on_error(&e);
                inner.failed.store(true, Ordering::Relaxed);
                inner.synced.send_modify(|s| {
                    *s = Synced {
                        through: target,
                        good_from: target + 1,
                    }
                });
            }
        }
    }
}
