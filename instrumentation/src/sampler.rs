//! Consistent probability sampling with the threshold recorded in the W3C `tracestate`.
//!
//! What comes in: the sampler configuration (`OTEL_TRACES_SAMPLER`/`_ARG` or code) and, per span,
//! the parent context and trace id. What goes out: the SDK sampling decision plus a `tracestate`
//! whose `ot` entry carries `th:<hex>` — the rejection threshold of the OpenTelemetry
//! "TraceState: Probability Sampling" specification — so that anything downstream (Spindle's span
//! metrics) can weight a span by its adjusted count `2^56 / (2^56 - T)`.
//!
//! The randomness `R` is the 56 least-significant bits of the trace id (W3C Trace Context Level 2),
//! or the explicit `ot=rv:` value when the parent carries one. A span is kept when `R >= T`.

use std::fmt;

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

use crate::error::InitError;

/// `2^56`: the number of distinct randomness values; thresholds are in `[0, 2^56)`.
pub const MAX_THRESHOLD: u64 = 1 << 56;

/// Default number of significant hex digits of an encoded threshold (the specification recommends
/// 4: ratio 1/3 encodes as `th:aaab`, 0.1 as `th:e666`).
pub const DEFAULT_THRESHOLD_PRECISION: u8 = 4;

/// Largest supported precision (the specification's float-based algorithm is exact up to 12).
pub const MAX_THRESHOLD_PRECISION: u8 = 12;

const RANDOMNESS_MASK: u64 = MAX_THRESHOLD - 1;

/// A sampling threshold: a span is kept when its randomness `R >= T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Threshold(u64);

impl Threshold {
    /// Keeps every span (`th:0`).
    pub const ALWAYS: Threshold = Threshold(0);

    /// The threshold for sampling `ratio` of the traces, rounded to `precision` significant hex
    /// digits as in the specification's "Converting floating-point probability to threshold
    /// value". `None` for ratios below `2^-56` (never sampled — not probability sampling) and for
    /// NaN.
    pub fn from_ratio(ratio: f64, precision: u8) -> Option<Threshold> {
        if ratio.is_nan() || ratio < 1.0 / MAX_THRESHOLD as f64 {
            return None;
        }
        if ratio >= 1.0 {
            return Some(Threshold::ALWAYS);
        }
        // Raise the precision by the number of leading `f` digits (the base-2 exponent / 4).
        let exp = frexp_exponent(ratio);
        let precision = (i32::from(precision.max(1)) + (-exp).div_euclid(4)).clamp(1, 12) as u32;
        // 2 - ratio lies in [1, 2): its 52-bit mantissa is the rejection probability in 13 hex
        // digits. Add half a unit of the last kept digit, then truncate.
        let rejection = (2.0 - ratio) + f64::powi(2.0, -(4 * precision as i32) - 1);
        let mantissa = if rejection >= 2.0 {
            (1u64 << 52) - 1
        } else {
            rejection.to_bits() & ((1u64 << 52) - 1)
        };
        let kept = mantissa >> (4 * (13 - precision));
        // 13 hex digits are 52 bits; a threshold has 56 bits (14 digits).
        Some(Threshold((kept << (4 * (13 - precision))) << 4))
    }

    /// Parses a `th` value: 1 to 14 hex digits, implicitly padded with trailing zeros.
    pub fn parse(th: &str) -> Option<Threshold> {
        if th.is_empty() || th.len() > 14 || !th.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let value = u64::from_str_radix(th, 16).ok()?;
        Some(Threshold(value << (4 * (14 - th.len()))))
    }

    /// The 56-bit integer value.
    pub fn value(self) -> u64 {
        self.0
    }

    /// The `th` encoding: hex without trailing zeros, `0` for [`Threshold::ALWAYS`].
    pub fn encode(self) -> String {
        if self.0 == 0 {
            return "0".to_owned();
        }
        let hex = format!("{:014x}", self.0);
        hex.trim_end_matches('0').to_owned()
    }

    /// Whether a span with randomness `r` is kept.
    pub fn keeps(self, r: u64) -> bool {
        r >= self.0
    }

    /// The sampling probability this threshold stands for.
    pub fn probability(self) -> f64 {
        (MAX_THRESHOLD - self.0) as f64 / MAX_THRESHOLD as f64
    }

    /// The adjusted count (`1 / probability`) a kept span represents.
    pub fn adjusted_count(self) -> f64 {
        MAX_THRESHOLD as f64 / (MAX_THRESHOLD - self.0) as f64
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// The base-2 exponent `e` with `x = m * 2^e`, `m` in `[0.5, 1)`, for positive normal `x`.
fn frexp_exponent(x: f64) -> i32 {
    let biased = ((x.to_bits() >> 52) & 0x7ff) as i32;
    biased - 1022
}

/// The randomness of a trace: the explicit `ot=rv:` value when present, otherwise the 56
/// least-significant bits of the trace id.
pub fn randomness(trace_id: TraceId, trace_state: &TraceState) -> u64 {
    if let Some(rv) = ot_subkey(trace_state, "rv")
        && rv.len() == 14
        && let Ok(v) = u64::from_str_radix(rv, 16)
    {
        return v;
    }
    u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or([0; 8])) & RANDOMNESS_MASK
}

/// The value of sub-key `key` in the `ot` tracestate entry (`ot=th:8;rv:…`).
pub fn ot_subkey<'a>(trace_state: &'a TraceState, key: &str) -> Option<&'a str> {
    trace_state.get("ot")?.split(';').find_map(|kv| {
        let (k, v) = kv.split_once(':')?;
        (k == key).then_some(v)
    })
}

/// `trace_state` with the `ot` entry's `th` sub-key set to `th` (or removed when `None`), other
/// `ot` sub-keys and other entries kept. The `ot` entry moves first, as W3C requires of a
/// modified entry; an `ot` entry left empty is removed.
pub fn with_threshold(trace_state: &TraceState, th: Option<Threshold>) -> TraceState {
    if th.is_none() && trace_state.get("ot").is_none() {
        // Nothing to remove (the usual not-sampled case): no allocation.
        return trace_state.clone();
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(th) = th {
        parts.push(format!("th:{}", th.encode()));
    }
    if let Some(ot) = trace_state.get("ot") {
        parts.extend(
            ot.split(';')
                .filter(|kv| !kv.is_empty() && !kv.starts_with("th:"))
                .map(str::to_owned),
        );
    }
    if parts.is_empty() {
        return trace_state.delete("ot").unwrap_or_else(|_| trace_state.clone());
    }
    // A value the W3C rules reject (it came from a malformed parent) is dropped, never propagated.
    trace_state
        .insert("ot", parts.join(";"))
        .or_else(|_| TraceState::default().insert("ot", format!("th:{}", th.unwrap_or(Threshold::ALWAYS))))
        .unwrap_or_default()
}

/// Which spans to keep: the `OTEL_TRACES_SAMPLER` values, as a configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum SamplerConfig {
    /// `always_on`: keep every span (root spans record `th:0`).
    AlwaysOn,
    /// `always_off`: keep none.
    AlwaysOff,
    /// `traceidratio`: keep this ratio of traces, independently of the parent.
    TraceIdRatio(f64),
    /// `parentbased_always_on`: roots always, children as their parent (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: roots never, children as their parent.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: roots by ratio, children as their parent.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerConfig {
    /// Parses `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (the ratio, `1.0` when absent).
    ///
    /// # Errors
    /// [`InitError::InvalidEnv`] for an unknown sampler name, or an argument that is not a number
    /// in `[0, 1]`.
    pub fn parse(name: &str, arg: Option<&str>) -> Result<SamplerConfig, InitError> {
        let ratio = || -> Result<f64, InitError> {
            let Some(arg) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
                return Ok(1.0);
            };
            match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(InitError::invalid_env(
                    crate::OTEL_TRACES_SAMPLER_ARG,
                    arg,
                    "expected a sampling ratio between 0 and 1, such as 0.25",
                )),
            }
        };
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "always_on" => SamplerConfig::AlwaysOn,
            "always_off" => SamplerConfig::AlwaysOff,
            "traceidratio" => SamplerConfig::TraceIdRatio(ratio()?),
            "parentbased_always_on" => SamplerConfig::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerConfig::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerConfig::ParentBasedTraceIdRatio(ratio()?),
            _ => {
                return Err(InitError::invalid_env(
                    crate::OTEL_TRACES_SAMPLER,
                    name,
                    "expected one of always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio",
                ));
            }
        })
    }

    /// The SDK sampler for this configuration, thresholds rounded to `precision` hex digits.
    pub fn into_sampler(self, precision: u8) -> ConsistentSampler {
        let root = |ratio: f64| match Threshold::from_ratio(ratio, precision) {
            Some(t) => Root::threshold(t),
            None => Root::Never,
        };
        let (root, parent_based) = match self {
            SamplerConfig::AlwaysOn => (Root::threshold(Threshold::ALWAYS), false),
            SamplerConfig::AlwaysOff => (Root::Never, false),
            SamplerConfig::TraceIdRatio(r) => (root(r), false),
            SamplerConfig::ParentBasedAlwaysOn => (Root::threshold(Threshold::ALWAYS), true),
            SamplerConfig::ParentBasedAlwaysOff => (Root::Never, true),
            SamplerConfig::ParentBasedTraceIdRatio(r) => (root(r), true),
        };
        ConsistentSampler { root, parent_based }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Root {
    Never,
    /// The threshold and the tracestate of a root span without incoming state (`ot=th:…`),
    /// built once.
    Threshold(Threshold, TraceState),
}

impl Root {
    fn threshold(t: Threshold) -> Root {
        Root::Threshold(t, with_threshold(&TraceState::default(), Some(t)))
    }
}

/// An SDK sampler ([`ShouldSample`]) that decides with `R >= T` and records `ot=th:` in the
/// span's `tracestate`; parent-based variants follow a valid parent's sampled flag and propagate
/// its threshold, erasing it when it is inconsistent with the decision (as the specification
/// requires).
#[derive(Debug, Clone)]
pub struct ConsistentSampler {
    root: Root,
    parent_based: bool,
}

impl ConsistentSampler {
    /// Decides for one span from its parent's span context (if any) and trace id.
    fn decide(&self, parent: Option<&Context>, trace_id: TraceId) -> (SamplingDecision, TraceState) {
        let parent_span = parent.map(|cx| cx.span());
        let parent_sc = parent_span.as_ref().map(|s| s.span_context());
        let parent_sc = parent_sc.filter(|sc| sc.is_valid());
        let parent_state = parent_sc.map(|sc| sc.trace_state().clone()).unwrap_or_default();

        if self.parent_based
            && let Some(sc) = parent_sc
        {
            if !sc.is_sampled() {
                return (SamplingDecision::Drop, with_threshold(&parent_state, None));
            }
            // Keep the parent's threshold only when it is consistent with its decision.
            let th = ot_subkey(&parent_state, "th").and_then(Threshold::parse);
            let consistent = th.is_some_and(|t| t.keeps(randomness(trace_id, &parent_state)));
            let state = if consistent || th.is_none() {
                parent_state
            } else {
                with_threshold(&parent_state, None)
            };
            return (SamplingDecision::RecordAndSample, state);
        }

        match self.root {
            Root::Never => (SamplingDecision::Drop, with_threshold(&parent_state, None)),
            Root::Threshold(t, ref root_state) => {
                if t.keeps(randomness(trace_id, &parent_state)) {
                    let state = if parent_state == TraceState::default() || parent_state.header().is_empty() {
                        root_state.clone()
                    } else {
                        with_threshold(&parent_state, Some(t))
                    };
                    (SamplingDecision::RecordAndSample, state)
                } else {
                    (SamplingDecision::Drop, with_threshold(&parent_state, None))
                }
            }
        }
    }
}

impl ShouldSample for ConsistentSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let (decision, trace_state) = self.decide(parent_context, trace_id);
        SamplingResult {
            decision,
            attributes: Vec::new(),
            trace_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags};

    use super::*;

    fn th(ratio: f64, precision: u8) -> String {
        Threshold::from_ratio(ratio, precision).expect("valid ratio").encode()
    }

    #[test]
    fn encodes_the_specification_table() {
        // specification/trace/tracestate-probability-sampling.md, "Converting floating-point
        // probability to threshold value": 1-in-N at precision 3, 4 and 5.
        let table: &[(f64, [&str; 3])] = &[
            (1.0, ["0", "0", "0"]),
            (0.5, ["8", "8", "8"]),
            (1.0 / 3.0, ["aab", "aaab", "aaaab"]),
            (0.25, ["c", "c", "c"]),
            (0.2, ["ccd", "cccd", "ccccd"]),
            (0.125, ["e", "e", "e"]),
            (0.1, ["e66", "e666", "e6666"]),
            (0.0625, ["f", "f", "f"]),
            (0.01, ["fd71", "fd70a", "fd70a4"]),
            (0.001, ["ffbe7", "ffbe77", "ffbe76d"]),
            (0.0001, ["fff972", "fff9724", "fff97247"]),
            (0.00001, ["ffff584", "ffff583a", "ffff583a5"]),
            (0.000001, ["ffffef4", "ffffef39", "ffffef391"]),
        ];
        for (ratio, expected) in table {
            for (precision, want) in [3u8, 4, 5].into_iter().zip(expected) {
                assert_eq!(th(*ratio, precision), *want, "ratio {ratio} precision {precision}");
            }
        }
    }

    #[test]
    fn default_precision_and_limits() {
        assert_eq!(th(0.1, DEFAULT_THRESHOLD_PRECISION), "e666");
        assert_eq!(th(1.0 / 3.0, DEFAULT_THRESHOLD_PRECISION), "aaab");
        // Full precision: 0.9 = 0x0.e666…; at 12 significant digits the next hex digit (6) is
        // below half (8), so it rounds down.
        assert_eq!(th(0.1, MAX_THRESHOLD_PRECISION), "e66666666666");
        assert_eq!(th(1.0 / 3.0, MAX_THRESHOLD_PRECISION), "aaaaaaaaaaab");
        assert_eq!(th(0.99999999, 4), "0", "rounds to always");
        assert_eq!(Threshold::from_ratio(0.0, 4), None);
        assert_eq!(Threshold::from_ratio(f64::NAN, 4), None);
        assert_eq!(Threshold::from_ratio(1e-18, 4), None, "below 2^-56");
        assert_eq!(Threshold::parse("8").map(Threshold::value), Some(1 << 55));
        assert_eq!(Threshold::parse("c").map(Threshold::probability), Some(0.25));
        assert_eq!(Threshold::parse("c").map(Threshold::adjusted_count), Some(4.0));
        assert_eq!(Threshold::parse("0"), Some(Threshold::ALWAYS));
        assert_eq!(Threshold::parse("123456789abcdef"), None, "15 digits");
        assert_eq!(Threshold::parse("x"), None);
        for ratio in [0.5, 0.25, 0.1, 1.0 / 3.0, 0.01] {
            let t = Threshold::from_ratio(ratio, 4).expect("valid");
            assert_eq!(Threshold::parse(&t.encode()), Some(t), "round trip {ratio}");
        }
    }

    fn trace_id_with_randomness(r: u64) -> TraceId {
        let mut bytes = [0xabu8; 16];
        bytes[8..].copy_from_slice(&r.to_be_bytes());
        TraceId::from_bytes(bytes)
    }

    fn root(sampler: &ConsistentSampler, r: u64) -> (SamplingDecision, TraceState) {
        sampler.decide(Some(&Context::new()), trace_id_with_randomness(r))
    }

    #[test]
    fn ratio_sampler_keeps_randomness_at_or_above_threshold() {
        let sampler = SamplerConfig::ParentBasedTraceIdRatio(0.25).into_sampler(4);
        let t = 0xc0_0000_0000_0000u64;
        let (d, state) = root(&sampler, t);
        assert_eq!(d, SamplingDecision::RecordAndSample);
        assert_eq!(state.header(), "ot=th:c");
        let (d, state) = root(&sampler, t - 1);
        assert_eq!(d, SamplingDecision::Drop);
        assert_eq!(state.header(), "");
        // The top byte of the trace id is not randomness.
        let (d, _) = root(&sampler, 0xff00_0000_0000_0000 | (t - 1));
        assert_eq!(d, SamplingDecision::Drop);

        // About a quarter of random trace ids are kept.
        let mut kept = 0;
        for i in 0..4096u64 {
            let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & RANDOMNESS_MASK;
            kept += usize::from(root(&sampler, r).0 == SamplingDecision::RecordAndSample);
        }
        assert!((900..1150).contains(&kept), "kept {kept} of 4096");
    }

    #[test]
    fn always_on_records_th_0_and_always_off_drops() {
        let (d, state) = root(&SamplerConfig::ParentBasedAlwaysOn.into_sampler(4), 0);
        assert_eq!(
            (d, state.header()),
            (SamplingDecision::RecordAndSample, "ot=th:0".into())
        );
        let (d, _) = root(&SamplerConfig::AlwaysOff.into_sampler(4), RANDOMNESS_MASK);
        assert_eq!(d, SamplingDecision::Drop);
        let (d, _) = root(&SamplerConfig::TraceIdRatio(0.0).into_sampler(4), RANDOMNESS_MASK);
        assert_eq!(d, SamplingDecision::Drop);
    }

    fn remote_parent(r: u64, sampled: bool, state: &str) -> Context {
        let state = TraceState::from_key_value(
            state
                .split(',')
                .filter(|e| !e.is_empty())
                .filter_map(|e| e.split_once('=')),
        )
        .expect("valid tracestate");
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let sc = SpanContext::new(
            trace_id_with_randomness(r),
            SpanId::from_bytes([1; 8]),
            flags,
            true,
            state,
        );
        Context::new().with_remote_span_context(sc)
    }

    #[test]
    fn parent_based_follows_parent_and_keeps_consistent_threshold() {
        let sampler = SamplerConfig::ParentBasedTraceIdRatio(0.25).into_sampler(4);
        let r = 0x10_0000_0000_0000; // below every threshold but 0
        // A sampled parent is followed even though the child's own ratio would drop it.
        let cx = remote_parent(r, true, "ot=th:0;rv:ffffffffffffff,vendor=x");
        let (d, state) = sampler.decide(Some(&cx), trace_id_with_randomness(r));
        assert_eq!(d, SamplingDecision::RecordAndSample);
        assert_eq!(state.header(), "ot=th:0;rv:ffffffffffffff,vendor=x");
        // Inconsistent threshold (R < T yet sampled) is erased, other subkeys and entries kept.
        let cx = remote_parent(r, true, "vendor=x,ot=th:8;foo:bar");
        let (d, state) = sampler.decide(Some(&cx), trace_id_with_randomness(r));
        assert_eq!(d, SamplingDecision::RecordAndSample);
        assert_eq!(state.header(), "ot=foo:bar,vendor=x");
        // An unsampled parent drops the child.
        let cx = remote_parent(RANDOMNESS_MASK, false, "");
        let (d, _) = sampler.decide(Some(&cx), trace_id_with_randomness(RANDOMNESS_MASK));
        assert_eq!(d, SamplingDecision::Drop);
    }

    #[test]
    fn explicit_randomness_overrides_trace_id_and_threshold_merges() {
        let sampler = SamplerConfig::TraceIdRatio(0.5).into_sampler(4);
        // Not parent-based: decides itself; rv says "keep" although the trace id says "drop".
        let cx = remote_parent(0, false, "ot=rv:f0000000000000;x:y,a=b");
        let (d, state) = sampler.decide(Some(&cx), trace_id_with_randomness(0));
        assert_eq!(d, SamplingDecision::RecordAndSample);
        assert_eq!(state.header(), "ot=th:8;rv:f0000000000000;x:y,a=b");
    }

    #[test]
    fn parses_env_values_and_rejects_bad_ones() {
        assert_eq!(
            SamplerConfig::parse("parentbased_traceidratio", Some("0.1")).ok(),
            Some(SamplerConfig::ParentBasedTraceIdRatio(0.1))
        );
        assert_eq!(
            SamplerConfig::parse("TraceIdRatio", None).ok(),
            Some(SamplerConfig::TraceIdRatio(1.0))
        );
        assert!(SamplerConfig::parse("traceidratio", Some("1.5")).is_err());
        assert!(SamplerConfig::parse("traceidratio", Some("half")).is_err());
        let err = SamplerConfig::parse("sometimes", None).expect_err("unknown sampler");
        assert!(err.to_string().contains("OTEL_TRACES_SAMPLER"), "{err}");
    }
}
