//! The queue's two positions, kept in a small file beside the segments: every record up to
//! `acked` is settled (delivered or dropped for good), and every record up to `popped` has been
//! handed to the sender at least once (so after a crash, those between the two may reach the
//! peer a second time and are counted as re-sent).
//!
//! Two slots of 24 bytes (`magic u32 | crc u32 | acked u64 | popped u64`), written in turn, so a
//! torn write leaves the other slot, one step older, intact. They are written without `fsync`:
//! they survive a crash of the process (the page cache keeps them); after a crash of the machine
//! an older slot only means more records are sent again, never fewer.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: u32 = u32::from_le_bytes(*b"SPM1");
const SLOT: u64 = 24;

/// The queue's settled and handed-out positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Marks {
    /// Every record up to this sequence number is settled.
    pub acked: u64,
    /// Every record up to this sequence number was handed to the sender at least once.
    pub popped: u64,
}

/// The marks file, open for writing.
#[derive(Debug)]
pub struct MarksFile {
    file: File,
    next_slot: u64,
    last: Marks,
}

fn encode(m: Marks) -> [u8; SLOT as usize] {
    let mut b = [0; SLOT as usize];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&m.acked.to_le_bytes());
    b[16..24].copy_from_slice(&m.popped.to_le_bytes());
    let crc = crc32fast::hash(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<Marks> {
    let word = |r: std::ops::Range<usize>| {
        b.get(r)
            .map(|s| s.iter().rev().fold(0u64, |a, x| a << 8 | u64::from(*x)))
    };
    if word(0..4)? != u64::from(MAGIC) || word(4..8)? != u64::from(crc32fast::hash(b.get(8..24)?)) {
        return None;
    }
    Some(Marks {
        acked: word(8..16)?,
        popped: word(16..24)?,
    })
}

impl MarksFile {
    /// Opens (or creates) the marks file at `path` and reads the newest intact slot (zeros when
    /// there is none).
    ///
    /// # Errors
    /// When the file cannot be opened or read.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut buf = [0u8; 2 * SLOT as usize];
        let n = file.read_at(&mut buf, 0)?;
        let slots = [
            decode(&buf[..n.min(SLOT as usize)]),
            decode(buf.get(SLOT as usize..n).unwrap_or(&[])),
        ];
        // The newer slot is the one further along; write the other one next.
        let (last, next_slot) = match slots {
            [Some(a), Some(b)] if (b.acked, b.popped) > (a.acked, a.popped) => (b, 0),
            [Some(a), _] => (a, 1),
            [None, Some(b)] => (b, 0),
            [None, None] => (Marks::default(), 0),
        };
        Ok(Self { file, next_slot, last })
    }

    /// The positions last written (or read at open).
    pub fn get(&self) -> Marks {
        self.last
    }

    /// Writes `m` into the older slot, when it moved.
    ///
    /// # Errors
    /// When the write fails (the caller counts it; the old positions stay valid).
    pub fn set(&mut self, m: Marks) -> io::Result<()> {
        if m == self.last {
            return Ok(());
        }
        self.file.write_all_at(&encode(m), self.next_slot * SLOT)?;
        self.next_slot ^= 1;
        self.last = m;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_intact_slot_wins_and_a_torn_one_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("marks");
        let mut m = MarksFile::open(&p).unwrap();
        assert_eq!(m.get(), Marks::default());
        for i in 1..=5 {
            m.set(Marks {
                acked: i,
                popped: i + 1,
            })
            .unwrap();
        }
        drop(m);
        assert_eq!(MarksFile::open(&p).unwrap().get(), Marks { acked: 5, popped: 6 });
        // Tear the newest slot (slot 0 holds 5, written last): the older one, 4, is read.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0xff; 3], 10).unwrap();
        let mut m = MarksFile::open(&p).unwrap();
        assert_eq!(m.get(), Marks { acked: 4, popped: 5 });
        // And the next write goes to the torn slot, leaving 4 intact until it is done.
        m.set(Marks { acked: 6, popped: 6 }).unwrap();
        assert_eq!(MarksFile::open(&p).unwrap().get(), Marks { acked: 6, popped: 6 });
    }
}
