//! Lower-case hex, the one encoder for trace and span ids, hashes and bytes attributes.

/// Lower-case hex digits for every byte value.
static PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// The two lower-case hex digits of `b`.
#[inline]
pub fn pair(b: u8) -> [u8; 2] {
    PAIRS[b as usize]
}

/// Appends `bytes` in lower-case hex to `out`.
pub fn push(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&PAIRS[b as usize]);
    }
}

/// Appends `bytes` in lower-case hex to `out`.
pub fn push_str(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        let [hi, lo] = PAIRS[b as usize];
        out.push(hi as char);
        out.push(lo as char);
    }
}

/// `bytes` in lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_str(bytes, &mut s);
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_value_encodes_as_format_does() {
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::encode(&all), want);
        let mut v = b"x".to_vec();
        super::push(&all, &mut v);
        assert_eq!(&v[1..], want.as_bytes());
        assert_eq!(super::pair(0xa5), *b"a5");
    }
}
