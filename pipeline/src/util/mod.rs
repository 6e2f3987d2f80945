//! Small shared helpers below every component: gzip framing, hex encoding, globs, label-name sanitizing and
//! label-value escaping, the protobuf wire primitives the in-place readers share, redaction of secrets, and bearer token files. Every module may import from here; this module imports from none of them.

pub mod glob;
pub mod gzip;
pub mod hex;
pub mod labels;
pub mod pem;
pub mod protobuf;
pub mod redact;
pub mod tokens;
