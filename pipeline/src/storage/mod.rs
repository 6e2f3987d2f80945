//! Durable storage under `storage.path`: the directory Spindle keeps to itself, locked for one
//! process at a time. The exporters' disk queues live in `queues/<exporter>/`
//! (`export::sender::disk`); the metric state snapshotted at shutdown in `state/` ([`snapshot`]).
//!
//! In: [`StorageConfig`]. Out: the directories the components write, and the lock that keeps a
//! second Spindle from writing them at the same time.

pub mod config;
pub mod snapshot;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use config::StorageConfig;

/// The open storage directory, locked while this value lives.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    queue_max_bytes: u64,
    /// Holds the exclusive lock on `root/lock` (released when the process ends, even by
    /// `kill -9`).
    _lock: File,
}

/// Why the storage directory cannot be used (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The directory cannot be created or its lock file opened.
    #[error("cannot use storage.path `{0}`: {1}")]
    Io(PathBuf, std::io::Error),
    /// Another process holds the lock.
    #[error(
        "storage.path `{0}` is in use by another Spindle process (its lock file is held); give each process its own directory"
    )]
    Locked(PathBuf),
}

impl Storage {
    /// Creates (if needed) and locks the directory of `config.path`; `None` without one.
    ///
    /// # Errors
    /// [`StorageError`] when the directory cannot be used or another process holds it.
    pub fn open(config: &StorageConfig) -> Result<Option<Self>, StorageError> {
        let Some(root) = &config.path else { return Ok(None) };
        let io = |e| StorageError::Io(root.clone(), e);
        std::fs::create_dir_all(root).map_err(io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .map_err(io)?;
        lock_exclusive(&lock).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => StorageError::Locked(root.clone()),
            _ => io(e),
        })?;
        Ok(Some(Self {
            root: root.clone(),
            queue_max_bytes: config.queue_max_bytes.0,
            _lock: lock,
        }))
    }

    /// The directory of exporter `name`'s queue.
    pub fn queue_dir(&self, name: &str) -> PathBuf {
        self.root.join("queues").join(name)
    }

    /// The bound of each disk queue.
    pub fn queue_max_bytes(&self) -> u64 {
        self.queue_max_bytes
    }

    /// The directory of the metric state snapshot.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(unix)]
fn lock_exclusive(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open file descriptor for the duration of the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn lock_exclusive(_: &File) -> std::io::Result<()> {
    Err(std::io::Error::other("durable storage needs a Unix system"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let c = StorageConfig {
            path: Some(dir.path().join("spindle")),
            queue_max_bytes: ByteSize(1 << 20),
        };
        let first = Storage::open(&c).unwrap().unwrap();
        let second = Storage::open(&c).unwrap_err();
        assert!(matches!(second, StorageError::Locked(_)), "{second}");
        assert!(second.to_string().contains("in use by another Spindle"), "{second}");
        drop(first);
        assert!(Storage::open(&c).unwrap().is_some());
        assert!(Storage::open(&StorageConfig::default()).unwrap().is_none());
    }
}
