//! Protobuf wire primitives for the readers that walk encoded OTLP in place
//! (`receive::size`, `process::span_metrics::wire`): varints and length-delimited slices, with
//! prost's messages and nesting limit, so that what they refuse prost would refuse too.

/// How deep messages may nest; prost refuses deeper messages with the same limit.
pub const MAX_DEPTH: u32 = 100;

/// Reads a varint (at most 10 bytes) off the front of `buf`.
///
/// # Errors
/// `truncated varint` or `invalid varint`, as prost says.
#[inline(always)]
pub fn varint(buf: &mut &[u8]) -> Result<u64, &'static str> {
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
    {
        *buf = rest;
        return Ok(u64::from(b));
    }
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err("invalid varint")
}

/// Takes `n` bytes off the front of `buf`.
///
/// # Errors
/// `buffer underflow` when fewer are left.
#[inline(always)]
pub fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], &'static str> {
    let n = usize::try_from(n).map_err(|_| "length overflow")?;
    if buf.len() < n {
        return Err("buffer underflow");
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_slices_read_as_prost_writes_them() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut enc = Vec::new();
            prost::encoding::encode_varint(v, &mut enc);
            enc.extend_from_slice(b"rest");
            let mut buf = &enc[..];
            assert_eq!(varint(&mut buf), Ok(v));
            assert_eq!(take(&mut buf, 4), Ok(&b"rest"[..]));
            assert!(buf.is_empty());
        }
        assert_eq!(varint(&mut &[0x80u8][..]), Err("truncated varint"));
        assert_eq!(varint(&mut &[0xffu8; 11][..]), Err("invalid varint"));
        assert_eq!(take(&mut &b"ab"[..], 3), Err("buffer underflow"));
    }
}
