//! gzip for request bodies, both ways, with one deflate and one inflate stream per thread kept
//! from request to request.
//!
//! Setting a zlib stream up costs about as much as compressing 20 KiB at level 1 (its window and
//! hash tables are allocated and cleared), and an inflate stream's set-up about as much as
//! inflating a small request; a stream of small requests paid that each time. Here the streams are
//! reset instead, and the gzip framing around them (RFC 1952: header, CRC-32, size) is written and
//! read directly. Decompressed bytes go straight into the output's spare capacity (nothing zeroes
//! it first).

use std::cell::RefCell;
use std::io::{self, Write};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// A gzip member header: deflate, no name or comment, no modification time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

thread_local! {
    /// The raw deflate stream of this thread, and its level.
    static STREAM: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    /// The raw inflate stream of this thread.
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
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

/// Why a gzip body could not be decompressed.
#[derive(Debug, PartialEq, Eq)]
pub enum GunzipError {
    /// It decompresses to more than the limit.
    TooLarge,
    /// It is not a well-formed gzip member.
    Corrupt(String),
}

/// Decompresses the gzip member at the start of `body` (bytes after it are ignored) into a buffer
/// of `hint` bytes reserved up front, growing as needed, but refusing output of more than `limit`
/// bytes. The member's CRC-32 and size are checked.
///
/// # Errors
/// [`GunzipError::TooLarge`] past `limit`; [`GunzipError::Corrupt`] for a bad header, deflate
/// stream or trailer, or a truncated body.
pub fn decompress(body: &[u8], hint: usize, limit: u64) -> Result<Vec<u8>, GunzipError> {
    let data = skip_header(body).map_err(|e| GunzipError::Corrupt(e.to_owned()))?;
    let (out, rest) = INFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stream = match &mut *slot {
            Some(s) => {
                s.reset(false);
                s
            }
            None => slot.insert(Decompress::new(false)),
        };
        inflate(stream, data, hint, limit)
    })?;
    let trailer: [u8; 8] = rest
        .get(..8)
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| GunzipError::Corrupt("truncated gzip trailer".to_owned()))?;
    let (crc, size) = trailer.split_at(4);
    if crc32fast::hash(&out).to_le_bytes() != crc {
        return Err(GunzipError::Corrupt("gzip checksum does not match the data".to_owned()));
    }
    if (out.len() as u32).to_le_bytes() != size {
        return Err(GunzipError::Corrupt("gzip size does not match the data".to_owned()));
    }
    Ok(out)
}

/// The bytes after a gzip member's header (RFC 1952 section 2.3), with its optional fields
/// skipped and its header CRC checked when it has one.
fn skip_header(body: &[u8]) -> Result<&[u8], &'static str> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let truncated = "truncated gzip header";
    let fixed = body.get(..10).ok_or(truncated)?;
    if fixed[..3] != [0x1f, 0x8b, 8] {
        return Err("invalid gzip header");
    }
    let flags = fixed[3];
    if flags & 0xe0 != 0 {
        return Err("invalid gzip header: reserved flags set");
    }
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let len = body.get(at..at + 2).ok_or(truncated)?;
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = body
                .get(at..)
                .ok_or(truncated)?
                .iter()
                .position(|b| *b == 0)
                .ok_or(truncated)?;
            at += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        let stored = body.get(at..at + 2).ok_or(truncated)?;
        let crc = crc32fast::hash(&body[..at]) as u16;
        if crc.to_le_bytes() != stored {
            return Err("gzip header checksum does not match");
        }
        at += 2;
    }
    body.get(at..).ok_or(truncated)
}

/// Inflates the raw deflate stream at the start of `input`; returns the output and the bytes after
/// the stream's end.
fn inflate<'a>(
    stream: &mut Decompress,
    mut input: &'a [u8],
    hint: usize,
    limit: u64,
) -> Result<(Vec<u8>, &'a [u8]), GunzipError> {
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    // One byte past the hint: inflate reports the stream's end from a call that still has room to
    // write, so an exact hint would otherwise grow (and copy) the buffer just to learn it is done.
    let mut out = Vec::with_capacity(hint.saturating_add(1).min(cap));
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap {
                return Err(GunzipError::TooLarge);
            }
            // Grows like a `Vec` would, but never past the byte that detects going over the limit.
            out.reserve_exact(out.capacity().max(8 << 10).min(cap - out.len()));
        }
        let (in0, len0) = (stream.total_in(), out.len());
        let status = stream
            .decompress_vec(input, &mut out, FlushDecompress::Finish)
            .map_err(|e| GunzipError::Corrupt(e.to_string()))?;
        input = &input[(stream.total_in() - in0) as usize..];
        if out.len() as u64 > limit {
            return Err(GunzipError::TooLarge);
        }
        if status == Status::StreamEnd {
            return Ok((out, input));
        }
        if stream.total_in() == in0 && out.len() == len0 {
            // Room to write and nothing taken or made: the stream ends before its end.
            return Err(GunzipError::Corrupt("truncated deflate stream".to_owned()));
        }
    }
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

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = Vec::new();
        write(6, &[Bytes::from(data.to_vec())], &mut gz).unwrap();
        gz
    }

    #[test]
    fn decompression_reads_every_header_form_and_reuses_its_stream() {
        let data = b"span name=GET /users/{id} http.response.status_code=200 ".repeat(3000);
        let mut with_fields = Vec::new();
        let mut e = flate2::GzBuilder::new()
            .filename("batch.pb")
            .comment("from a test")
            .extra(vec![1, 2, 3])
            .write(&mut with_fields, Compression::fast());
        e.write_all(&data).unwrap();
        e.finish().unwrap();
        // A header with FHCRC, written by hand: the CRC-32 of the header's bytes, low 16 bits.
        let mut hcrc = vec![0x1f, 0x8b, 8, 2, 0, 0, 0, 0, 0, 0xff];
        let crc = (crc32fast::hash(&hcrc) as u16).to_le_bytes();
        hcrc.extend(crc);
        hcrc.extend(&gzip(&data)[10..]);
        // Twice each, on one thread: the second round reuses the inflate stream; hints too small,
        // exact and absent.
        for _ in 0..2 {
            for body in [gzip(&data), with_fields.clone(), hcrc.clone(), gzip(b"")] {
                let want: &[u8] = if body.len() < 40 { b"" } else { &data };
                for hint in [0, 100, want.len()] {
                    assert_eq!(decompress(&body, hint, 1 << 20).unwrap(), want);
                }
            }
        }
        // Bytes after the member are ignored.
        let mut trailing = gzip(&data);
        trailing.extend(b"junk");
        assert_eq!(decompress(&trailing, 0, 1 << 20).unwrap(), data);
    }

    #[test]
    fn decompression_refuses_output_past_the_limit_and_broken_members() {
        let data = vec![7u8; 100_000];
        let gz = gzip(&data);
        assert_eq!(decompress(&gz, 0, 100_000).unwrap(), data);
        assert_eq!(decompress(&gz, 0, 99_999), Err(GunzipError::TooLarge));
        // A hint past the limit is not trusted either.
        assert_eq!(decompress(&gz, 1 << 20, 99_999), Err(GunzipError::TooLarge));
        let corrupt = |body: &[u8]| match decompress(body, 0, 1 << 20) {
            Err(GunzipError::Corrupt(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(corrupt(b"not gzip at all"), "invalid gzip header");
        assert_eq!(corrupt(&gz[..5]), "truncated gzip header");
        assert_eq!(corrupt(&gz[..gz.len() / 2]), "truncated deflate stream");
        assert_eq!(corrupt(&gz[..gz.len() - 3]), "truncated gzip trailer");
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert_eq!(corrupt(&bad_crc), "gzip checksum does not match the data");
        let mut bad_size = gz.clone();
        bad_size[n - 1] ^= 1;
        assert_eq!(corrupt(&bad_size), "gzip size does not match the data");
        let mut bad_hcrc = vec![0x1f, 0x8b, 8, 2, 0, 0, 0, 0, 0, 0xff, 0, 0];
        bad_hcrc.extend(&gz[10..]);
        assert_eq!(corrupt(&bad_hcrc), "gzip header checksum does not match");
        let mut bad_stream = gz.clone();
        bad_stream[10] = 0xff;
        assert!(!corrupt(&bad_stream).is_empty());
        // A corrupt body leaves the thread's stream usable for the next.
        assert_eq!(decompress(&gz, 0, 1 << 20).unwrap(), data);
    }
}
