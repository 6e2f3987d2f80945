//! `storage`: where Spindle keeps what must outlive the process.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::types::{ByteSize, Problem};

/// `storage`. Without `path` (the default) every exporter queue is in memory and metric state
/// starts from zero at each start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `storage.path`: a directory of Spindle's own. Each exporter's queue lives on disk under it
    /// (`queues/traces`, `queues/remote_write`), and the metric state is snapshotted there at
    /// shutdown (`state/`) and restored at start.
    pub path: Option<PathBuf>,
    /// `storage.queue_max_bytes`: the bound of each exporter's disk queue (records not yet
    /// delivered). When it is full, receivers answer "overloaded".
    pub queue_max_bytes: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: None,
            queue_max_bytes: ByteSize(1 << 30),
        }
    }
}

/// The smallest disk queue bound accepted.
const MIN_QUEUE_BYTES: u64 = 1 << 20;

impl StorageConfig {
    /// Its problems: a path that cannot be used (checked on the file system, so `spindle
    /// validate` reports it), a bound too small.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(p) = &self.path
            && let Err(why) = usable(p)
        {
            out.push(Problem {
                path: "storage.path".into(),
                message: format!("`{}` cannot be used: {why}", p.display()),
                hint: "give Spindle a directory of its own that it can create and write (a persistent volume, or systemd's StateDirectory)".into(),
            });
        }
        if self.queue_max_bytes.0 < MIN_QUEUE_BYTES {
            out.push(Problem {
                path: "storage.queue_max_bytes".into(),
                message: format!("{} is below the minimum of 1MiB", self.queue_max_bytes),
                hint: "size it for the longest backend outage to ride out (see README, Durability)".into(),
            });
        }
        out
    }
}

/// Whether `path` is, or can be created as, a directory Spindle can write.
fn usable(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("the path is empty".into());
    }
    // The path itself, or the nearest ancestor that exists (where it would be created).
    let mut at = path;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => return writable(at),
            Ok(_) => return Err(format!("`{}` is not a directory", at.display())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    _ => return Ok(()),
                }
            }
            Err(e) => return Err(format!("`{}`: {e}", at.display())),
        }
    }
}

#[cfg(unix)]
fn writable(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not writable: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(not(unix))]
fn writable(_: &Path) -> Result<(), String> {
    Err("durable storage needs a Unix system".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_path_is_a_problem_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let ok = |p: PathBuf| {
            StorageConfig {
                path: Some(p),
                ..Default::default()
            }
            .validate()
        };
        assert_eq!(ok(dir.path().to_path_buf()), vec![]);
        assert_eq!(ok(dir.path().join("new/deeper")), vec![], "created at start");
        let p = ok(file.join("below"));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "storage.path");
        assert!(p[0].message.contains("is not a directory"), "{}", p[0].message);
        let small = StorageConfig {
            queue_max_bytes: ByteSize(1000),
            ..Default::default()
        };
        assert_eq!(small.validate()[0].path, "storage.queue_max_bytes");
    }
}
