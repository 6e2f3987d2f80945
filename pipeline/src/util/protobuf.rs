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
            // A tenth byte may only carry the top bit of a u64; prost refuses more.
            if i == 9 && b >= 2 {
                return Err("invalid varint");
            }
            return Ok(v);
        }
    }
    Err("invalid varint")
}

/// One field's payload, as [`field`] reads it.
#[derive(Debug, Clone, Copy)]
pub enum Wire<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1 (little-endian).
    Fixed64(u64),
    /// Wire type 5 (its value is never read by the readers).
    Fixed32,
    /// Wire type 2: the delimited bytes.
    Len(&'a [u8]),
}

impl Wire<'_> {
    /// Unknown fields are skipped (their bytes were already consumed).
    ///
    /// # Errors
    /// Never; a `Result` so that match arms read alike.
    pub fn skip_unknown(self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// Reads one field off the front of `buf`: its number and payload.
///
/// # Errors
/// What prost refuses in a key (number 0, a key past `u32`, an unknown wire type) and truncated
/// payloads; groups are refused too (prost skips them; the readers leave such bytes to prost).
#[inline(always)]
pub fn field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Wire<'a>), &'static str> {
    let key = varint(buf)?;
    field_with_key(key, buf)
}

/// [`field`] whose key was already read off `buf` (by a reader that matches on keys).
///
/// # Errors
/// As [`field`].
#[inline(always)]
pub fn field_with_key<'a>(key: u64, buf: &mut &'a [u8]) -> Result<(u32, Wire<'a>), &'static str> {
    if key > u64::from(u32::MAX) {
        return Err("invalid key value");
    }
    let number = (key >> 3) as u32;
    if number == 0 {
        return Err("invalid field number 0");
    }
    let w = match key & 7 {
        0 => Wire::Varint(varint(buf)?),
        1 => Wire::Fixed64(u64::from_le_bytes(take(buf, 8)?.try_into().map_err(|_| "truncated")?)),
        5 => {
            take(buf, 4)?;
            Wire::Fixed32
        }
        2 => {
            let len = varint(buf)?;
            Wire::Len(take(buf, len)?)
        }
        3 | 4 => return Err("groups are not supported"),
        _ => return Err("invalid wire type"),
    };
    Ok((number, w))
}

/// `b` as a string field, checked as prost checks it.
///
/// # Errors
/// When `b` is not UTF-8.
#[inline]
pub fn utf8(b: &[u8]) -> Result<&str, &'static str> {
    // Nearly every OTLP string is ASCII (names, keys, values): a word-at-a-time check of that is
    // a fraction of the general validation's cost on short strings.
    if b.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(b) });
    }
    std::str::from_utf8(b).map_err(|_| "invalid string value: data is not UTF-8 encoded")
}

/// Whether a message nested `depth` levels below the request may still be decoded (prost's
/// recursion limit, [`MAX_DEPTH`]).
///
/// # Errors
/// `recursion limit reached` past it.
pub fn depth_ok(depth: u32) -> Result<(), &'static str> {
    if depth > MAX_DEPTH {
        Err("recursion limit reached")
    } else {
        Ok(())
    }
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

/// The value of a [`plain_key_value`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlainValue<'a> {
    /// An `AnyValue` with no field.
    Empty,
    /// `string_value`, not yet checked as UTF-8.
    Str(&'a [u8]),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
}

/// The usual encoded `KeyValue`, read without a general field loop: its key field, then one
/// `AnyValue` holding a string, bool, int or double field or nothing, every length in one byte and
/// nothing after. Returns the key's bytes (not yet checked as UTF-8) and the value; `None` for any
/// other shape, which the in-place readers then read in full. The value is one message deeper than
/// the `KeyValue`: callers check that depth.
#[inline]
pub fn plain_key_value(kv: &[u8]) -> Option<(&[u8], PlainValue<'_>)> {
    let [0x0a, key_len, rest @ ..] = kv else { return None };
    if *key_len >= 0x80 {
        return None;
    }
    let (key, rest) = rest.split_at_checked(usize::from(*key_len))?;
    let [0x12, value_len, value @ ..] = rest else {
        return None;
    };
    if *value_len >= 0x80 || usize::from(*value_len) != value.len() {
        return None;
    }
    let value = match value {
        [] => PlainValue::Empty,
        [0x0a, len, s @ ..] if *len < 0x80 && usize::from(*len) == s.len() => PlainValue::Str(s),
        [tag @ (0x10 | 0x18), int @ ..] => {
            let mut rest = int;
            let v = varint(&mut rest).ok()?;
            if !rest.is_empty() {
                return None;
            }
            if *tag == 0x10 {
                PlainValue::Bool(v != 0)
            } else {
                PlainValue::Int(v as i64)
            }
        }
        [0x21, double @ ..] => PlainValue::Double(f64::from_le_bytes(double.try_into().ok()?)),
        _ => return None,
    };
    Some((key, value))
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
        // A tenth byte past the top bit of a u64: prost refuses it, and so does the reader.
        let over = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(prost::encoding::decode_varint(&mut &over[..]).is_err());
        assert_eq!(varint(&mut &over[..]), Err("invalid varint"));
        // A key past u32: prost refuses it.
        let mut key = Vec::new();
        prost::encoding::encode_varint(1 << 33, &mut key);
        key.push(0);
        assert!(prost::encoding::decode_key(&mut &key[..]).is_err());
        assert!(field(&mut &key[..]).is_err());
    }

    #[test]
    fn strings_are_checked_as_utf8_whether_ascii_or_not() {
        assert_eq!(utf8(b""), Ok(""));
        assert_eq!(utf8(b"http.route"), Ok("http.route"));
        assert_eq!(utf8("résumé ✓ 🦀".as_bytes()), Ok("résumé ✓ 🦀"));
        let bad = "invalid string value: data is not UTF-8 encoded";
        for b in [
            &b"\xff"[..],
            b"ascii then \xc3",
            b"\xed\xa0\x80 surrogate",
            b"0123456789abcdef\x80",
        ] {
            assert_eq!(utf8(b), Err(bad), "{b:?}");
        }
    }
}
