//! The one number formatter of every encoder: sample values, `le` and `quantile` label values,
//! exemplar values, in the OpenMetrics, text and remote-write encodings alike.
//!
//! Floats are written as Prometheus and OpenMetrics parse them: `NaN`, `+Inf`, `-Inf`, or the
//! shortest decimal that round-trips, with at least one fractional digit for integral values
//! (`1.0`, `0.25`, `0.00001`, `2.5e20`). Integers (counts) are written as integers (`7`).

/// Writes a float: `NaN`, `+Inf`, `-Inf`, or the shortest round-tripping decimal (`1.0`, `0.25`,
/// `1e-7`).
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Integral values are most of a scrape (counts, counters): integer formatting is several
        // times cheaper than shortest-float formatting and gives the same text (below 2^50 no
        // shorter decimal names the same double, so the shortest form has every digit).
        if v.is_sign_negative() {
            out.push(b'-');
        }
        write_u64(out, v.abs() as u64);
        out.extend_from_slice(b".0");
    } else {
        let mut b = ryu::Buffer::new();
        out.extend_from_slice(b.format_finite(v).as_bytes());
    }
}

/// Writes an integer.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

/// A float as [`write_f64`] writes it, for encoders that need a `String` (remote-write labels).
pub fn format_f64(v: f64) -> String {
    let mut out = Vec::with_capacity(24);
    write_f64(&mut out, v);
    // Every byte written above is ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn special_values_are_written_as_prometheus_parses_them() {
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(0.0), "0.0");
        assert_eq!(f(-0.0), "-0.0");
        assert_eq!(f(-3.0), "-3.0");
        assert_eq!(f(1e-5), "0.00001");
        assert_eq!(f(1e-7), "1e-7");
        assert_eq!(f(2.5e20), "2.5e20");
        assert_eq!(f(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_f64(0.25), "0.25");
        let mut out = Vec::new();
        write_u64(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }

    /// The integer shortcut writes exactly what shortest-float formatting writes.
    #[test]
    fn integral_shortcut_equals_shortest_formatting() {
        let mut b = ryu::Buffer::new();
        let mut v = 1.0f64;
        while v < 1e16 {
            for x in [v, v + 1.0, v - 1.0, -v, v * 3.0, (v * 7.0).floor()] {
                assert_eq!(f(x), b.format_finite(x), "{x}");
            }
            v *= 2.0;
        }
        for x in [999_999_999_999_999.0, 123_456_789_012_345.0, 1e15 - 1.0] {
            assert_eq!(f(x), b.format_finite(x), "{x}");
        }
    }

    proptest::proptest! {
        #[test]
        fn finite_floats_round_trip(v in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            let s = f(v);
            proptest::prop_assert_eq!(s.parse::<f64>().unwrap().to_bits(), v.to_bits(), "{}", s);
            let mut b = ryu::Buffer::new();
            proptest::prop_assert_eq!(s.as_str(), b.format_finite(v));
        }
    }
}
