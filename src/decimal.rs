//! Plain decimal numbers (`12`, `12.5`, `.5`, `5.`) read into `f64`, correctly rounded: the
//! same value `str::parse::<f64>` gives for them, without linking the standard library's
//! general float parser (its tables and slow paths are about 17 KB of the MIPS binary, and
//! nothing here reads exponents, signs, `inf` or `nan`).

/// `s` as an `f64` when it is ASCII digits with at most one `.` and at least one digit; at
/// most 38 significant digits and 38 digits after the point (trailing zeros not counted),
/// which bounds the exact integer arithmetic. Anything else is `None`.
pub fn parse(s: &str) -> Option<f64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    // The value is m / 10^k, both exact integers.
    let frac = frac.trim_end_matches('0');
    let mut m: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        m = m.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
    }
    let k = u32::try_from(frac.len()).ok().filter(|&k| k <= 38)?;
    if m == 0 {
        return Some(0.0);
    }
    let d = 10u128.pow(k);
    // Long division to at least 65 significant bits; what is left over only matters as
    // "something more", kept in the lowest bit (a sticky bit): with 65 bits that bit lies
    // below the rounding bit of a 53-bit mantissa, so the correctly rounded conversion of
    // `q` is the correctly rounded value of m / d.
    let (mut q, mut r) = (m / d, m % d);
    let mut shift = 0i32;
    while q < 1 << 64 {
        // r < d <= 10^38 < 2^127: no overflow.
        r <<= 1;
        q <<= 1;
        if r >= d {
            r -= d;
            q |= 1;
        }
        shift += 1;
    }
    if r != 0 {
        q |= 1;
    }
    // 1e-38 <= m / d < 2^128: the power of two and the product are normal, the product exact.
    let scale = f64::from_bits(((1023 - shift) as u64) << 52);
    Some(q as f64 * scale)
}

#[cfg(test)]
mod tests {
    use super::parse;
    use proptest::prelude::*;

    fn std_parse(s: &str) -> f64 {
        s.parse().unwrap()
    }

    #[test]
    fn edge_cases_match_the_standard_parser() {
        for s in [
            "0",
            "0.0",
            "000",
            ".5",
            "5.",
            "12.5",
            "0.1",
            "0.3",
            "100000",
            "9007199254740992",
            "9007199254740993",
            "9007199254740995",
            "18446744073709551615",
            "18446744073709551616.5",
            "123456789012345678901234567890.12",
            "0.00000000000000000000000000000001",
            "2.2250738585072014",
            "1.7976931348623157",
            "99999999999999999999999999999999999999",
            "0.99999999999999999999999999999999999999",
            "4.35",
            "0.000001",
            "1000.0000000000000000000000000001",
        ] {
            assert_eq!(
                parse(s).map(f64::to_bits),
                Some(std_parse(s).to_bits()),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_plain_decimal() {
        for s in [
            "", ".", "-1", "+1", "1e3", "1E3", "inf", "NaN", "1.2.3", " 1", "1 ", "0x10", "١",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
        // beyond the exact integer arithmetic
        assert_eq!(parse(&"9".repeat(39)), None);
        assert_eq!(parse(&format!("0.{}1", "0".repeat(38))), None);
    }

    proptest! {
        #[test]
        fn same_as_the_standard_parser(
            int in "[0-9]{0,20}",
            frac in "[0-9]{0,18}",
            point in any::<bool>(),
        ) {
            let s = if point { format!("{int}.{frac}") } else { format!("{int}{frac}") };
            prop_assume!(s != "." && !s.is_empty());
            prop_assert_eq!(parse(&s).map(f64::to_bits), Some(std_parse(&s).to_bits()), "{}", s);
        }

        #[test]
        fn long_mantissas_round_like_the_standard_parser(
            lead in "[1-9][0-9]{15,25}",
            pos in 0usize..26,
        ) {
            let pos = pos.min(lead.len());
            let s = format!("{}.{}", &lead[..pos], &lead[pos..]);
            prop_assert_eq!(parse(&s).map(f64::to_bits), Some(std_parse(&s).to_bits()), "{}", s);
        }
    }
}
