//! gzip for request bodies, with one deflate stream per thread kept from request to request.
//!
//! Setting a zlib stream up costs about as much as compressing 20 KiB at level 1 (its window and
//! hash tables are allocated and cleared); a batch of small requests paid that each time. Here the
//! stream is reset instead, and the gzip framing around it (RFC 1952: header, CRC-32, size) is
//! written directly.

use std::cell::RefCell;
use std::io::{self, Write};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

/// A gzip member header: deflate, no name or comment, no modification time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

thread_local! {
    /// The raw deflate stream of this thread, and its level.
    static STREAM: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// Writes `chunks`, compressed at `level` (1–9) as one gzip member, to `out`.
///
/// # Errors
/// `out`'s write errors, or the compressor's (which would be a bug).
pub fn write(level: u32, chunks: &[Bytes], out: &mut impl Write) -> io::Result<()> {
    STREAM.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stream = match &mut *slot {
            Some((l, s)) if *l == level => {
                s.reset();
                s
            }
            _ => {
                let (_, s) = slot.insert((level, Compress::new(Compression::new(level.min(9)), false)));
                s
            }
        };
        member(stream, chunks, out)
    })
}

fn member(stream: &mut Compress, chunks: &[Bytes], out: &mut impl Write) -> io::Result<()> {
    let mut buf = [0u8; 16 << 10];
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u32;
    out.write_all(&HEADER)?;
    for chunk in chunks {
        crc.update(chunk);
        size = size.wrapping_add(chunk.len() as u32);
        let mut input = &chunk[..];
        while !input.is_empty() {
            let (used, _) = step(stream, input, &mut buf, FlushCompress::None, out)?;
            input = &input[used..];
        }
    }
    while step(stream, &[], &mut buf, FlushCompress::Finish, out)?.1 != Status::StreamEnd {}
    out.write_all(&crc.finalize().to_le_bytes())?;
    out.write_all(&size.to_le_bytes())
}

/// One call of the compressor: writes what it produced, returns how much input it took.
fn step(
    stream: &mut Compress,
    input: &[u8],
    buf: &mut [u8],
    flush: FlushCompress,
    out: &mut impl Write,
) -> io::Result<(usize, Status)> {
    let (in0, out0) = (stream.total_in(), stream.total_out());
    let status = stream.compress(input, buf, flush).map_err(io::Error::other)?;
    let used = (stream.total_in() - in0) as usize;
    let made = (stream.total_out() - out0) as usize;
    out.write_all(&buf[..made])?;
    if used == 0 && made == 0 && status != Status::StreamEnd {
        return Err(io::Error::other("deflate made no progress"));
    }
    Ok((used, status))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).unwrap();
        raw
    }

    #[test]
    fn members_decode_with_their_crc_and_size_checked_also_when_the_stream_is_reused() {
        let mut x = 1u32;
        let big: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b"span-attribute "[(x >> 16) as usize % 15]
            })
            .collect();
        let cases: [Vec<Bytes>; 4] = [
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")],
            vec![],
            vec![Bytes::from(big.clone()), Bytes::from_static(b"tail")],
            vec![Bytes::from(big[..1000].to_vec())],
        ];
        // The same thread, so the second round and the level changes reuse or replace the stream.
        for level in [1, 1, 6, 9, 1] {
            for chunks in &cases {
                let mut gz = Vec::new();
                write(level, chunks, &mut gz).unwrap();
                let want: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                assert_eq!(gunzip(&gz), want, "level {level}");
            }
        }
        // Compressed, not stored.
        let text = b"GET /users/{id} 200 server.address=api.example.com ".repeat(5000);
        let mut gz = Vec::new();
        write(1, &[Bytes::from(text.clone())], &mut gz).unwrap();
        assert!(gz.len() < text.len() / 10, "{} of {}", gz.len(), text.len());
    }
}
