//! Attributes as translation reads them, decoded (`KeyValue`) or borrowed from the encoded request
//! ([`WireAttr`]), and the checks of encoded `KeyValue`s and `AnyValue`s that the in-place readers
//! share (metrics here, spans in `span_metrics::wire`).

use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

use super::labels::write_any;
use crate::util::protobuf::{self, PlainValue, Wire, depth_ok, field, utf8};

/// Why bytes are not a valid request.
pub type WireError = &'static str;

/// An attribute as translation reads it.
pub(crate) trait Attr {
    /// The attribute key.
    fn attr_key(&self) -> &str;
    /// Whether `KeyValue.value` is present.
    fn has_value(&self) -> bool;
    /// Appends the value as a label value ([`write_any`]); nothing when absent.
    fn push_value(&self, out: &mut String);
}

impl Attr for KeyValue {
    fn attr_key(&self) -> &str {
        &self.key
    }
    fn has_value(&self) -> bool {
        self.value.is_some()
    }
    fn push_value(&self, out: &mut String) {
        if let Some(v) = &self.value {
            write_any(v, out);
        }
    }
}

impl Attr for WireAttr<'_> {
    fn attr_key(&self) -> &str {
        self.key
    }
    fn has_value(&self) -> bool {
        !matches!(self.value, WireValue::Absent)
    }
    fn push_value(&self, out: &mut String) {
        self.write_value(out);
    }
}

/// One attribute: its key, and its value as the check read it.
#[derive(Debug, Clone, Copy)]
pub struct WireAttr<'a> {
    /// The attribute key.
    pub key: &'a str,
    value: WireValue<'a>,
    /// The whole encoded `KeyValue`, for values that are decoded to be written.
    kv: &'a [u8],
}

/// An attribute value as [`key_value`] read it: the last oneof field of its one `AnyValue`
/// (as prost keeps it), or to be decoded (arrays, maps, several `value` fields merged).
#[derive(Debug, Clone, Copy)]
enum WireValue<'a> {
    /// No `value` field.
    Absent,
    /// An `AnyValue` with no value (or a dictionary reference, written as nothing).
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    Decode,
}

impl WireAttr<'_> {
    /// Appends the value as a label value, exactly as translation renders the decoded `AnyValue`;
    /// returns false when the attribute has no value (`KeyValue.value` absent).
    pub fn write_value(&self, out: &mut String) -> bool {
        use std::fmt::Write;
        match self.value {
            WireValue::Absent => return false,
            WireValue::Empty => {}
            WireValue::Str(s) => out.push_str(s),
            WireValue::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            WireValue::Int(i) => {
                let _ = write!(out, "{i}");
            }
            WireValue::Double(d) => {
                let _ = write!(out, "{d}");
            }
            WireValue::Bytes(b) => crate::util::hex::push_str(b, out),
            // Arrays and maps (rare as labels), and merged values: as prost decodes them.
            WireValue::Decode => {
                if let Ok(KeyValue { value: Some(v), .. }) = KeyValue::decode(self.kv) {
                    write_any(&v, out);
                }
            }
        }
        true
    }
}

/// Reads an encoded `KeyValue` nested `depth` messages deep, checking it as prost would.
pub(crate) fn key_value(kv: &[u8], depth: u32) -> Result<WireAttr<'_>, WireError> {
    depth_ok(depth)?;
    match plain_key_value(kv, depth) {
        Some(a) => Ok(a),
        None => any_key_value(kv, depth),
    }
}

/// [`key_value`] of any shape.
fn any_key_value(kv: &[u8], depth: u32) -> Result<WireAttr<'_>, WireError> {
    let mut a = WireAttr {
        key: "",
        value: WireValue::Absent,
        kv,
    };
    let mut buf = kv;
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Len(k)) => a.key = utf8(k)?,
            (2, Wire::Len(v)) => {
                let read = any_value(v, depth + 1)?;
                // Several value messages merge in prost: decoded when written.
                a.value = match a.value {
                    WireValue::Absent => read,
                    _ => WireValue::Decode,
                };
            }
            (3, Wire::Varint(_)) => {}
            (1..=3, _) => return Err("invalid wire type in KeyValue"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(a)
}

/// The usual `KeyValue`, read without the general loop: its key, then one `AnyValue` holding a
/// string, an int, a bool, a double or nothing, each length in one byte. `None` for any other
/// shape (also for bytes that are not valid), which [`key_value`] then reads in full.
#[inline]
fn plain_key_value(kv: &[u8], depth: u32) -> Option<WireAttr<'_>> {
    let (key, value) = protobuf::plain_key_value(kv)?;
    depth_ok(depth + 1).ok()?;
    let value = match value {
        PlainValue::Empty => WireValue::Empty,
        PlainValue::Str(s) => WireValue::Str(utf8(s).ok()?),
        PlainValue::Bool(b) => WireValue::Bool(b),
        PlainValue::Int(i) => WireValue::Int(i),
        PlainValue::Double(d) => WireValue::Double(d),
    };
    Some(WireAttr {
        key: utf8(key).ok()?,
        value,
        kv,
    })
}

/// Checks an encoded `AnyValue` nested `depth` messages deep; returns its value (the last oneof
/// field wins, as in prost).
fn any_value(mut buf: &[u8], depth: u32) -> Result<WireValue<'_>, WireError> {
    depth_ok(depth)?;
    let mut v = WireValue::Empty;
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Len(s)) => v = WireValue::Str(utf8(s)?),
            (2, Wire::Varint(b)) => v = WireValue::Bool(b != 0),
            (3, Wire::Varint(i)) => v = WireValue::Int(i as i64),
            (4, Wire::Fixed64(d)) => v = WireValue::Double(f64::from_bits(d)),
            (7, Wire::Len(b)) => v = WireValue::Bytes(b),
            (8, Wire::Varint(_)) => v = WireValue::Empty,
            (5, Wire::Len(list)) => {
                repeated(list, depth + 1, "invalid wire type in ArrayValue", |item, d| {
                    any_value(item, d).map(drop)
                })?;
                v = WireValue::Decode;
            }
            (6, Wire::Len(list)) => {
                repeated(list, depth + 1, "invalid wire type in KeyValueList", |item, d| {
                    key_value(item, d).map(drop)
                })?;
                v = WireValue::Decode;
            }
            (1..=8, _) => return Err("invalid wire type in AnyValue"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(v)
}

/// `ArrayValue` or `KeyValueList`: field 1 repeated, each item checked by `item`.
fn repeated(
    mut list: &[u8],
    depth: u32,
    wrong_type: WireError,
    item: impl Fn(&[u8], u32) -> Result<(), WireError>,
) -> Result<(), WireError> {
    depth_ok(depth)?;
    while !list.is_empty() {
        match field(&mut list)? {
            (1, Wire::Len(i)) => item(i, depth + 1)?,
            (1, _) => return Err(wrong_type),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
}

/// `Resource`, nested `depth` messages deep: its attributes are collected; entity refs are checked.
pub(crate) fn resource_message<'a>(
    mut buf: &'a [u8],
    depth: u32,
    attrs: &mut Vec<WireAttr<'a>>,
) -> Result<(), WireError> {
    depth_ok(depth)?;
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Len(kv)) => attrs.push(key_value(kv, depth + 1)?),
            (2, Wire::Varint(_)) => {}
            (3, Wire::Len(e)) => check_entity_ref(e, depth + 1)?,
            (1..=3, _) => return Err("invalid wire type in Resource"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
}

fn check_entity_ref(mut buf: &[u8], depth: u32) -> Result<(), WireError> {
    depth_ok(depth)?;
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1..=4, Wire::Len(s)) => utf8(s).map(drop)?,
            (1..=4, _) => return Err("invalid wire type in EntityRef"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, any_value::Value};
    use prost::Message as _;

    use super::*;

    fn same(a: &WireAttr<'_>, b: &WireAttr<'_>) -> bool {
        let (mut x, mut y) = (String::new(), String::new());
        a.key == b.key && a.kv == b.kv && a.write_value(&mut x) == b.write_value(&mut y) && x == y
    }

    #[test]
    fn the_plain_reader_agrees_with_the_general_one() {
        let kv = |key: &str, value: Option<Value>| {
            KeyValue {
                key: key.into(),
                value: Some(AnyValue { value }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let long = "x".repeat(200);
        let mut cases = vec![
            kv("http.route", Some(Value::StringValue("/users/{id}".into()))),
            kv("n", Some(Value::IntValue(-5))),
            kv("n", Some(Value::IntValue(1 << 40))),
            kv("ok", Some(Value::BoolValue(true))),
            kv("ratio", Some(Value::DoubleValue(0.25))),
            kv("empty", None),
            kv("", Some(Value::StringValue(String::new()))),
            kv(&long, Some(Value::StringValue("v".into()))),
            kv("k", Some(Value::StringValue(long.clone()))),
            kv("b", Some(Value::BytesValue(vec![1, 2]))),
            kv("a", Some(Value::ArrayValue(ArrayValue::default()))),
            KeyValue::default().encode_to_vec(),
        ];
        // Two values (merged by prost), a value before the key, trailing unknown fields, bad UTF-8.
        let mut two = kv("k", Some(Value::IntValue(1)));
        two.extend([0x12, 0x02, 0x18, 0x02]);
        cases.push(two);
        cases.push([&[0x12, 0x02, 0x18, 0x07][..], &[0x0a, 0x01, b'k']].concat());
        let mut unknown = kv("k", Some(Value::IntValue(1)));
        unknown.extend([0x20, 0x01]);
        cases.push(unknown);
        cases.push(vec![0x0a, 0x01, 0xff, 0x12, 0x00]);
        cases.push(vec![0x0a, 0x01, b'k', 0x12, 0x03, 0x0a, 0x01, 0xff]);
        let mut plain = 0;
        for case in &cases {
            let general = any_key_value(case, 1);
            match plain_key_value(case, 1) {
                Some(a) => {
                    plain += 1;
                    assert!(same(&a, &general.unwrap()), "{case:?}");
                }
                None => assert_eq!(key_value(case, 1).map(|a| a.key), general.map(|a| a.key), "{case:?}"),
            }
        }
        // The six common shapes (an empty key is not written at all, so that one is not plain).
        assert_eq!(plain, 6, "the common shapes take the plain path");
        // Too deep for the value: the general reader's error.
        let deep = kv("k", Some(Value::IntValue(1)));
        assert!(plain_key_value(&deep, MAX).is_none());
        assert_eq!(key_value(&deep, MAX).err(), any_key_value(&deep, MAX).err());
    }

    const MAX: u32 = crate::util::protobuf::MAX_DEPTH;
}
