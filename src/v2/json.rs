//! JSON output exactly as etcd's Go `encoding/json` writes it.
//!
//! Bytes in, bytes out: callers append keys, values and timestamps to a
//! response buffer. Strings get Go's escaping (HTML-safe `<>&`, U+2028/2029,
//! invalid UTF-8 as `\ufffd`, raw UTF-8 otherwise); timestamps get Go's
//! RFC3339Nano with trailing zeros trimmed (spec 2.8).

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Bytes [`write_valid`] must look at: controls, `"`, `\\`,
/// Go's HTML-escaped `<>&`, and 0xE2 (the lead byte of U+2028/U+2029).
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'&' as usize] = true;
    t[0xE2] = true;
    t
};

/// Append `s` as a JSON string literal, escaped the way Go 1.19 does: each
/// valid UTF-8 run is scanned by [`write_valid`]; each byte of an invalid
/// sequence becomes `\ufffd` (Go decodes invalid bytes one at a time).
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// Append what [`write_str`] puts between the quotes.
pub fn write_escaped(out: &mut Vec<u8>, s: &[u8]) {
    let body = out.len();
    // Most keys and values are ASCII: one scan, no UTF-8 to validate.
    if write_valid::<true>(out, s) {
        return;
    }
    out.truncate(body);
    for chunk in s.utf8_chunks() {
        write_valid::<false>(out, chunk.valid().as_bytes());
        for _ in chunk.invalid() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
}

/// Whether any of the 8 bytes in `v` may need [`write_valid`]'s attention:
/// a control, `"`, `\\`, `<`, `>`, `&`, or a byte of 0x80 and above (the
/// word-at-a-time tests of "Bit Twiddling Hacks", exact for "any byte").
#[inline]
fn may_need_escape(v: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let less_than_space = v.wrapping_sub(ONES * 0x20) & !v & HIGH;
    let any = less_than_space
        | zero(v ^ (ONES * b'"' as u64))
        | zero(v ^ (ONES * b'\\' as u64))
        | zero(v ^ (ONES * b'<' as u64))
        | zero(v ^ (ONES * b'>' as u64))
        | zero(v ^ (ONES * b'&' as u64))
        | (v & HIGH);
    any != 0
}

/// Two bit masks over the 16 bytes of `b`: the bytes that may need
/// [`write_valid`]'s attention (those of [`may_need_escape`]; 0 when none
/// does), and among them the quotes and backslashes.
#[inline]
fn attention16(b: &[u8]) -> (u32, u32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        assert!(b.len() >= 16);
        // SAFETY: SSE2 is part of the x86_64 baseline, and the unaligned
        // load reads the 16 bytes of `b` checked above.
        unsafe {
            let v = _mm_loadu_si128(b.as_ptr() as *const __m128i);
            let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            // A signed compare: controls, and bytes of 0x80 and above
            // (negative as i8), are below 0x20.
            let low = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
            let quote = _mm_or_si128(eq(b'"'), eq(b'\\'));
            let any = _mm_or_si128(
                _mm_or_si128(low, quote),
                _mm_or_si128(eq(b'<'), _mm_or_si128(eq(b'>'), eq(b'&'))),
            );
            (
                _mm_movemask_epi8(any) as u32,
                _mm_movemask_epi8(quote) as u32,
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let (mut m, mut q) = (0u32, 0u32);
        for (i, &c) in b[..16].iter().enumerate() {
            if c < 0x20 || c >= 0x80 || matches!(c, b'"' | b'\\' | b'<' | b'>' | b'&') {
                m |= 1 << i;
            }
            if matches!(c, b'"' | b'\\') {
                q |= 1 << i;
            }
        }
        (m, q)
    }
}

/// Escape valid UTF-8: a scan that skips 16 (then 8) plain bytes at a time, then a
/// table-driven one, copying runs of plain bytes at once. With `ASCII`, it
/// stops at the first byte of 0x80 or above and answers false (`out` then
/// holds a partial copy).
fn write_valid<const ASCII: bool>(out: &mut Vec<u8>, s: &[u8]) -> bool {
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        if i + 16 <= s.len() {
            // 16 bytes at a time; on a hit, go straight to its first byte.
            let (m, quotes) = attention16(&s[i..i + 16]);
            if m == 0 {
                i += 16;
                continue;
            }
            if m == quotes {
                // Only quotes and backslashes (JSON stored as a value): a
                // backslash before each, found from the mask, and the
                // block is done, not scanned again from each one.
                let mut bits = quotes;
                while bits != 0 {
                    let at = i + bits.trailing_zeros() as usize;
                    out.extend_from_slice(&s[start..at]);
                    out.push(b'\\');
                    start = at;
                    bits &= bits - 1;
                }
                i += 16;
                continue;
            }
            i += m.trailing_zeros() as usize;
        } else if let Some(word) = s.get(i..i + 8) {
            let v = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if !may_need_escape(v) {
                i += 8;
                continue;
            }
        }
        let b = s[i];
        if ASCII && b >= 0x80 {
            return false;
        }
        if !SPECIAL[b as usize] {
            i += 1;
            continue;
        }
        if b == 0xE2 {
            // Only U+2028 / U+2029 (E2 80 A8 / E2 80 A9) are escaped.
            if s.get(i + 1) == Some(&0x80) && matches!(s.get(i + 2), Some(0xA8 | 0xA9)) {
                out.extend_from_slice(&s[start..i]);
                out.extend_from_slice(if s[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                start = i;
            } else {
                i += 1;
            }
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&s[start..]);
    true
}

/// Append an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Append a signed integer.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Append a Unix-nanosecond time as Go's RFC3339Nano in UTC, quoted,
/// with trailing zeros of the fraction trimmed (and no fraction at all on
/// a whole second).
pub fn write_time(out: &mut Vec<u8>, unix_nanos: i64) {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        // Outside Go's four-digit years: rare enough for the formatter.
        use std::io::Write;
        let mut w = std::io::Cursor::new([0u8; 48]);
        let _ = write!(w, "\"{:04}-{:02}-{:02}T", y, m, d);
        let n = w.position() as usize;
        out.extend_from_slice(&w.get_ref()[..n]);
    } else {
        let y = y as u32;
        let ([y1, y2], [y3, y4]) = (two_digits(y / 100), two_digits(y % 100));
        let ([m1, m2], [d1, d2]) = (two_digits(m), two_digits(d));
        out.extend_from_slice(&[b'"', y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2, b'T']);
    }
    let [h1, h2] = two_digits(sod / 3600);
    let [i1, i2] = two_digits(sod / 60 % 60);
    let [s1, s2] = two_digits(sod % 60);
    out.extend_from_slice(&[h1, h2, b':', i1, i2, b':', s1, s2]);
    if nanos != 0 {
        let mut frac = [0u8; 10];
        frac[0] = b'.';
        let mut v = nanos;
        for i in (1..10).rev() {
            frac[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let mut end = 10;
        while frac[end - 1] == b'0' {
            end -= 1;
        }
        out.extend_from_slice(&frac[..end]);
    }
    out.extend_from_slice(b"Z\"");
}

/// The two decimal digits of `v` (below 100).
fn two_digits(v: u32) -> [u8; 2] {
    [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[u8]) -> String {
        let mut out = Vec::new();
        write_str(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    /// The word test flags a word exactly when one of its bytes is special
    /// to the byte scan (or not ASCII), in any position.
    #[test]
    fn the_word_test_matches_the_byte_table() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut w = *b"plain-ok";
                w[at] = b;
                let want =
                    SPECIAL[b as usize] || b >= 0x80 || w.iter().any(|&c| SPECIAL[c as usize]);
                assert_eq!(may_need_escape(u64::from_le_bytes(w)), want, "{w:?}");
            }
        }
    }

    /// The 16-byte test flags exactly the bytes the word test would, in
    /// every position.
    #[test]
    fn the_16_byte_test_matches_the_byte_table() {
        for b in 0..=255u8 {
            for at in 0..16 {
                let mut w = *b"plain-ok/plain-k";
                w[at] = b;
                let want = (SPECIAL[b as usize] || b >= 0x80) as u32;
                let quote = matches!(b, b'"' | b'\\') as u32;
                assert_eq!(attention16(&w), (want << at, quote << at), "{w:?}");
            }
        }
    }

    /// Escaping with special bytes at every offset of a long string (the
    /// 16-byte scan, the word scan and the byte scan all take part).
    #[test]
    fn escapes_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                for (c, esc) in [
                    (b'\\', "\\\\"),
                    (b'"', "\\\""),
                    (b'<', "\\u003c"),
                    (b'\n', "\\n"),
                    (0x01, "\\u0001"),
                ] {
                    let mut v = vec![b'x'; len];
                    v[at] = c;
                    let want = format!("\"{}{esc}{}\"", "x".repeat(at), "x".repeat(len - at - 1));
                    assert_eq!(s(&v), want);
                }
            }
        }
    }

    /// Strings dense with quotes and backslashes (JSON stored as a value)
    /// against a byte-at-a-time escape, at every length and mix.
    #[test]
    fn quote_dense_strings_escape_like_the_byte_scan() {
        let reference = |v: &[u8]| {
            let mut want = String::from("\"");
            for &c in v {
                match c {
                    b'"' => want.push_str("\\\""),
                    b'\\' => want.push_str("\\\\"),
                    b'<' => want.push_str("\\u003c"),
                    c => want.push(c as char),
                }
            }
            want.push('"');
            want
        };
        let mut x: u32 = 1;
        for len in 0..70 {
            for _ in 0..50 {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        b"\"\\ab:{}<"[(x % 8) as usize]
                    })
                    .collect();
                assert_eq!(s(&v), reference(&v), "{v:?}");
            }
        }
    }

    #[test]
    fn escapes_like_go() {
        assert_eq!(s(b"a<b>&c"), r#""a\u003cb\u003e\u0026c""#);
        assert_eq!(s("é\n\"\\".as_bytes()), "\"é\\n\\\"\\\\\"");
        assert_eq!(s(b"\x01\x7f"), "\"\\u0001\x7f\"");
        assert_eq!(s(b"\xff/x"), r#""\ufffd/x""#);
        assert_eq!(s("\u{2028}".as_bytes()), r#""\u2028""#);
    }

    #[test]
    fn invalid_utf8_is_one_replacement_per_byte_like_go() {
        // Go's encoder decodes an invalid byte as RuneError of size 1.
        assert_eq!(s(b"\xe2\x80"), r#""\ufffd\ufffd""#);
        assert_eq!(s(b"\xe2A<"), r#""\ufffdA\u003c""#);
        assert_eq!(
            s(b"\xf0\x9f\x98\xe2\x80\xa8"),
            r#""\ufffd\ufffd\ufffd\u2028""#
        );
        assert_eq!(s("\u{20ac}\u{2030}".as_bytes()), "\"\u{20ac}\u{2030}\"");
    }

    #[test]
    fn time_trims_trailing_zeros() {
        let mut out = Vec::new();
        // 2026-11-27T05:07:45.48852405Z
        write_time(&mut out, 1_795_756_065_488_524_050);
        assert_eq!(out, b"\"2026-11-27T05:07:45.48852405Z\"");
        out.clear();
        write_time(&mut out, 1_795_756_065_000_000_000);
        assert_eq!(out, b"\"2026-11-27T05:07:45Z\"");
        out.clear();
        write_time(&mut out, 7_000_001);
        assert_eq!(out, b"\"1970-01-01T00:00:00.007000001Z\"");
        out.clear();
        write_time(&mut out, -1);
        assert_eq!(out, b"\"1969-12-31T23:59:59.999999999Z\"");
    }
}
