//! The on-disk record: one queued payload, framed so that a torn or corrupt record is detected
//! and the next good one can be found again.
//!
//! ```text
//! magic u32 | len u32 | crc u32 | seq u64 | items u64 | sidecar_len u32 | sidecar | body
//! ```
//! All integers little-endian. `len` is the whole record, header included; `crc` is CRC-32 (IEEE)
//! of everything after itself. A record is good when its magic, length and checksum agree.

use bytes::Bytes;

/// Marks the start of a record ("SPQ1").
pub const MAGIC: u32 = u32::from_le_bytes(*b"SPQ1");
/// Bytes before the sidecar.
pub const HEADER: usize = 32;

/// A record's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The whole record's length, header included.
    pub len: u64,
    /// Its sequence number in the log.
    pub seq: u64,
    /// Items its payload carries.
    pub items: u64,
    /// Length of the sidecar that follows the header.
    pub sidecar_len: u64,
}

/// Writes the header of a record of `seq`, `items`, `sidecar` and `body` into `out[..HEADER]`
/// (which must hold `HEADER` bytes), with the checksum over the rest.
pub fn encode_header(out: &mut [u8], seq: u64, items: u64, sidecar: &[u8], body: &[u8]) {
    let len = (HEADER + sidecar.len() + body.len()) as u32;
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[12..20].copy_from_slice(&seq.to_le_bytes());
    out[20..28].copy_from_slice(&items.to_le_bytes());
    out[28..32].copy_from_slice(&(sidecar.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out[12..HEADER]);
    h.update(sidecar);
    h.update(body);
    out[8..12].copy_from_slice(&h.finalize().to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads a header from the first `HEADER` bytes of `b`: `None` when the magic or the lengths are
/// impossible (the checksum is checked by [`check`] once the whole record is read).
pub fn decode_header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER || u32_at(b, 0) != MAGIC {
        return None;
    }
    let len = u64::from(u32_at(b, 4));
    let sidecar_len = u64::from(u32_at(b, 28));
    if len < HEADER as u64 || sidecar_len > len - HEADER as u64 {
        return None;
    }
    Some(Header {
        len,
        seq: u64_at(b, 12),
        items: u64_at(b, 20),
        sidecar_len,
    })
}

/// Whether `record` (a whole record, as its header's `len` says) is intact.
pub fn check(record: &[u8]) -> Option<Header> {
    let h = decode_header(record)?;
    if record.len() as u64 != h.len {
        return None;
    }
    (crc32fast::hash(&record[12..]) == u32_at(record, 8)).then_some(h)
}

/// A whole record split into its sidecar bytes and its body (sharing `record`'s allocation).
pub fn split(record: Bytes, h: &Header) -> (Bytes, Bytes) {
    let s = HEADER + h.sidecar_len as usize;
    (record.slice(HEADER..s), record.slice(s..))
}

/// The offset of the first intact record in `b` at or after `from`, if any (used to find good
/// records again after a corrupt one).
pub fn resync(b: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut at = from;
    while at + HEADER <= b.len() {
        let i = b[at..].windows(4).position(|w| w == magic)?;
        let start = at + i;
        if let Some(h) = decode_header(&b[start..])
            && let Some(end) = start.checked_add(h.len as usize)
            && end <= b.len()
            && check(&b[start..end]).is_some()
        {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, sidecar: &[u8], body: &[u8]) -> Vec<u8> {
        let mut r = vec![0; HEADER];
        encode_header(&mut r, seq, 3, sidecar, body);
        r.extend_from_slice(sidecar);
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_detected() {
        let r = record(7, b"side", b"the body");
        let h = check(&r).unwrap();
        assert_eq!((h.seq, h.items, h.sidecar_len, h.len), (7, 3, 4, r.len() as u64));
        let (s, b) = split(Bytes::from(r.clone()), &h);
        assert_eq!((&s[..], &b[..]), (&b"side"[..], &b"the body"[..]));
        for bit in 0..r.len() * 8 {
            let mut bad = r.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let same_len = decode_header(&bad).is_some_and(|h| h.len == r.len() as u64);
            assert!(!same_len || check(&bad).is_none(), "bit {bit} flipped went unnoticed");
        }
    }

    #[test]
    fn resync_finds_the_next_intact_record_after_garbage() {
        let mut b = record(1, b"", b"first");
        let second_at = b.len() + 5;
        b.extend_from_slice(b"SPQ1x");
        b.extend(record(2, b"", b"second"));
        b[10] ^= 0xff; // the first record is corrupt
        assert!(check(&b[..HEADER + 5]).is_none());
        assert_eq!(resync(&b, 1), Some(second_at));
        assert_eq!(resync(&b, second_at + 1), None);
    }
}
