//! Attributes as translation reads them, decoded (`KeyValue`) or borrowed from the encoded request
//! ([`WireAttr`]), and the checks of encoded `KeyValue`s and `AnyValue`s that the in-place readers
//! share (metrics here, spans in `span_metrics::wire`).

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;

use super::labels::write_any;
use crate::util::protobuf::{Wire, depth_ok, field, utf8};

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
        self.values > 0
    }
    fn push_value(&self, out: &mut String) {
        self.write_value(out);
    }
}

/// One attribute: its key, and where its value is.
#[derive(Debug, Clone, Copy)]
pub struct WireAttr<'a> {
    /// The attribute key.
    pub key: &'a str,
    /// The encoded `AnyValue` when the `KeyValue` has exactly one `value` field.
    value: &'a [u8],
    /// How many `value` fields the `KeyValue` has (prost merges repeated ones).
    values: u32,
    /// The whole encoded `KeyValue`, for the rare merged case.
    kv: &'a [u8],
}

impl WireAttr<'_> {
    /// Appends the value as a label value, exactly as translation renders the decoded `AnyValue`;
    /// returns false when the attribute has no value (`KeyValue.value` absent).
    pub fn write_value(&self, out: &mut String) -> bool {
        match self.values {
            0 => false,
            1 => {
                write_any_value(self.value, out);
                true
            }
            // Several value messages merge in prost: read them as prost does.
            _ => match KeyValue::decode(self.kv) {
                Ok(KeyValue { value: Some(v), .. }) => {
                    write_any(&v, out);
                    true
                }
                _ => false,
            },
        }
    }
}

/// Writes an encoded `AnyValue` as [`write_any`] writes it decoded: scalars are read from the
/// bytes (the last oneof field wins, as in prost); arrays and maps are decoded.
fn write_any_value(value: &[u8], out: &mut String) {
    use std::fmt::Write;
    let mut buf = value;
    let mut last = None;
    while !buf.is_empty() {
        let Ok((n, w)) = field(&mut buf) else { return };
        if (1..=8).contains(&n) {
            last = Some((n, w));
        }
    }
    match last {
        // No value, or a dictionary reference (written as nothing, as `write_any` does).
        None | Some((8, _)) => {}
        Some((1, Wire::Len(s))) => out.push_str(std::str::from_utf8(s).unwrap_or("")),
        Some((2, Wire::Varint(b))) => out.push_str(if b != 0 { "true" } else { "false" }),
        Some((3, Wire::Varint(i))) => {
            let _ = write!(out, "{}", i as i64);
        }
        Some((4, Wire::Fixed64(d))) => {
            let _ = write!(out, "{}", f64::from_bits(d));
        }
        Some((7, Wire::Len(b))) => crate::util::hex::push_str(b, out),
        // Arrays and maps (rare as dimensions), and anything merged: as prost decodes them.
        Some(_) => {
            if let Ok(v) = AnyValue::decode(value) {
                write_any(&v, out);
            }
        }
    }
}

/// Reads an encoded `KeyValue` nested `depth` messages deep, checking it as prost would.
pub(crate) fn key_value(kv: &[u8], depth: u32) -> Result<WireAttr<'_>, WireError> {
    depth_ok(depth)?;
    let mut a = WireAttr {
        key: "",
        value: &[],
        values: 0,
        kv,
    };
    let mut buf = kv;
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Len(k)) => a.key = utf8(k)?,
            (2, Wire::Len(v)) => {
                any_value(v, depth + 1)?;
                a.value = v;
                a.values += 1;
            }
            (3, Wire::Varint(_)) => {}
            (1..=3, _) => return Err("invalid wire type in KeyValue"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(a)
}

/// Checks an encoded `AnyValue` nested `depth` messages deep.
pub(crate) fn any_value(mut buf: &[u8], depth: u32) -> Result<(), WireError> {
    depth_ok(depth)?;
    while !buf.is_empty() {
        match field(&mut buf)? {
            (1, Wire::Len(s)) => utf8(s).map(drop)?,
            (2 | 3 | 8, Wire::Varint(_)) | (4, Wire::Fixed64(_)) | (7, Wire::Len(_)) => {}
            (5, Wire::Len(list)) => repeated(list, depth + 1, "invalid wire type in ArrayValue", |item, d| {
                any_value(item, d)
            })?,
            (6, Wire::Len(list)) => repeated(list, depth + 1, "invalid wire type in KeyValueList", |item, d| {
                key_value(item, d).map(drop)
            })?,
            (1..=8, _) => return Err("invalid wire type in AnyValue"),
            (_, w) => w.skip_unknown()?,
        }
    }
    Ok(())
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
