//! JSON output exactly as etcd's Go `encoding/json` writes it.
//!
//! Bytes in, bytes out: callers append keys, values and timestamps to a
//! response buffer. Strings get Go's escaping (HTML-safe `<>&`, U+2028/2029,
//! invalid UTF-8 as `\ufffd`, raw UTF-8 otherwise); timestamps get Go's
//! RFC3339Nano with trailing zeros trimmed (spec 2.8).

use std::cell::Cell;

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
#[inline]
pub fn write_escaped(out: &mut Vec<u8>, s: &[u8]) {
    write_escaped_with(out, s, scan());
}

/// How [`write_valid`] scans, by what the CPU has: 32 bytes at a time
/// with AVX-512 ([`wide_blocks`]: masked loads and a byte expansion for
/// quotes) or with AVX2 ([`avx2_blocks`]), else 16 bytes at a time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scan {
    Narrow,
    Avx2,
    Avx512,
}

/// [`write_escaped`], scanning as `scan` says. Most names and values need
/// nothing but the 32-byte scan: it comes first, inline, and the rest of
/// the escape only from a block it stops at.
#[inline]
fn write_escaped_with(out: &mut Vec<u8>, s: &[u8], scan: Scan) {
    let body = out.len();
    if scan != Scan::Narrow {
        // SAFETY: `scan` says the CPU has the features (`scan()`).
        let i = unsafe { blocks(scan, out, s, 0, 0) };
        if i < s.len() {
            // The next 32-byte scan after the block this one stopped at.
            write_rest(out, s, body, i, i + 32, scan);
        }
        return;
    }
    write_rest(out, s, body, 0, usize::MAX, scan);
}

/// The escape of `s` into `out` (from `body` on) after its first `i`
/// bytes, already written, with the next 32-byte scan from `wide_from`
/// (`usize::MAX`: none).
fn write_rest(out: &mut Vec<u8>, s: &[u8], body: usize, i: usize, wide_from: usize, scan: Scan) {
    // Most keys and values are ASCII: one scan, no UTF-8 to validate.
    if write_valid::<true>(out, s, i, wide_from, scan) {
        return;
    }
    out.truncate(body);
    write_utf8(out, s, scan);
}

/// Escape `s`, which has bytes of 0x80 and above: each valid UTF-8 run by
/// [`write_valid`], each byte of an invalid sequence as `\ufffd`.
fn write_utf8(out: &mut Vec<u8>, s: &[u8], scan: Scan) {
    let wide_from = if scan == Scan::Narrow { usize::MAX } else { 0 };
    for chunk in s.utf8_chunks() {
        write_valid::<false>(out, chunk.valid().as_bytes(), 0, wide_from, scan);
        for _ in chunk.invalid() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
}

/// The best [`Scan`] this CPU runs (asked once, then kept).
#[inline]
fn scan() -> Scan {
    use std::sync::atomic::{AtomicU8, Ordering};
    static KEPT: AtomicU8 = AtomicU8::new(0);
    match KEPT.load(Ordering::Relaxed) {
        1 => Scan::Narrow,
        2 => Scan::Avx2,
        3 => Scan::Avx512,
        _ => {
            let s = detect();
            KEPT.store(s as u8 + 1, Ordering::Relaxed);
            s
        }
    }
}

/// Which [`Scan`] the CPU's features allow.
#[cold]
fn detect() -> Scan {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512vbmi2")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("bmi2")
            && has!("popcnt")
        {
            return Scan::Avx512;
        }
        if has!("avx2") && has!("ssse3") && has!("popcnt") {
            return Scan::Avx2;
        }
    }
    Scan::Narrow
}

/// The 32-byte scan `scan` names ([`wide_blocks`] or [`avx2_blocks`]),
/// with their contract.
///
/// # Safety
/// The CPU has the features `scan` needs ([`detect`] chose it).
#[inline]
unsafe fn blocks(scan: Scan, out: &mut Vec<u8>, s: &[u8], i: usize, start: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's.
    unsafe {
        match scan {
            Scan::Avx512 => return wide_blocks(out, s, i, start),
            Scan::Avx2 => return avx2_blocks(out, s, i, start),
            Scan::Narrow => {}
        }
    }
    let _ = (scan, out, s, i, start);
    unreachable!("a 32-byte scan on a CPU without one")
}

/// [`write_valid`]'s scan 32 bytes at a time, from `i` with the plain run
/// from `start` not yet written: a plain block is written as it is
/// scanned (the register it was loaded into is stored, so a short string
/// costs no copy call of its own), and a block whose only special bytes
/// are quotes and backslashes (JSON stored as a value) is written whole,
/// each of them behind a backslash, by one byte expansion. The last block
/// may be short (a masked load). Stops at a block with any other special
/// byte, or at the end, and answers where the scan is then (everything
/// before it written).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi2,bmi2,popcnt")]
fn wide_blocks(out: &mut Vec<u8>, s: &[u8], mut i: usize, start: usize) -> usize {
    use std::arch::x86_64::*;
    // The run before `i` first, so each block can be written as it goes.
    out.extend_from_slice(&s[start..i]);
    // Room for the rest copied plainly, and for one 32-byte store past it.
    out.reserve(s.len() - i + 32);
    while i < s.len() {
        let take = (s.len() - i).min(32);
        let lanes = u32::MAX >> (32 - take);
        // SAFETY: the masked load reads the `take` bytes of `s` from `i`
        // (the lanes beyond them are neither read nor faulted on).
        let v = unsafe { _mm256_maskz_loadu_epi8(lanes, s.as_ptr().add(i) as *const i8) };
        let eq = |c: u8| _mm256_cmpeq_epi8_mask(v, _mm256_set1_epi8(c as i8));
        let quotes = eq(b'"') | eq(b'\\');
        // A signed compare: controls, and bytes of 0x80 and above (the
        // unloaded lanes are zeros: masked off).
        let low = _mm256_cmplt_epi8_mask(v, _mm256_set1_epi8(0x20)) & lanes;
        let any = low | quotes | eq(b'<') | eq(b'>') | eq(b'&');
        if any == 0 {
            // SAFETY: room for the plain rest plus 32 bytes was reserved
            // above (escaped blocks reserve their own growth), and the
            // store's first `take` bytes are this block's.
            unsafe {
                _mm256_storeu_si256(out.as_mut_ptr().add(out.len()) as *mut __m256i, v);
                out.set_len(out.len() + take);
            }
            i += take;
            continue;
        }
        if any != quotes {
            break;
        }
        // Two bits per input byte, the byte's slot above a backslash's
        // slot that only a quote keeps: extracting the byte slots' bits
        // from the kept ones gives the output's layout (1: the next input
        // byte, 0: a backslash).
        const BYTE_SLOTS: u64 = 0xAAAA_AAAA_AAAA_AAAA;
        let kept = BYTE_SLOTS | _pdep_u64(quotes as u64, 0x5555_5555_5555_5555);
        let layout = _pext_u64(BYTE_SLOTS, kept);
        let bytes = _mm512_mask_expand_epi8(
            _mm512_set1_epi8(b'\\' as i8),
            layout,
            _mm512_castsi256_si512(v),
        );
        let n = take + quotes.count_ones() as usize;
        // The plain rest after this block, and the 64-byte store.
        out.reserve(s.len() - i + 64);
        // SAFETY: `reserve` left room for the 64-byte store behind the
        // length, and its first `n` bytes are the block, escaped.
        unsafe {
            _mm512_storeu_si512(out.as_mut_ptr().add(out.len()) as *mut __m512i, bytes);
            out.set_len(out.len() + n);
        }
        i += take;
    }
    i
}

/// [`wide_blocks`] for CPUs with AVX2 but not AVX-512 (AMD's Zen 3, for
/// one): whole 32-byte blocks the same way, a block of plain bytes and
/// quotes written by 8-byte spreads ([`spread32`]). AVX2 has no masked
/// byte load, so the last, short block is read as two overlapping loads
/// of 16, 8 or 4 bytes, or as three bytes under 4 (a plain one is written
/// the same way); one with quotes goes to [`avx2_quoted_tail`], and one
/// with any other special byte is left to the caller.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,ssse3,popcnt")]
fn avx2_blocks(out: &mut Vec<u8>, s: &[u8], mut i: usize, start: usize) -> usize {
    use std::arch::x86_64::*;
    out.extend_from_slice(&s[start..i]);
    // Room for the rest copied plainly, and for one 32-byte store past it.
    out.reserve(s.len() - i + 32);
    while i + 32 <= s.len() {
        // SAFETY: the loop's test: 32 bytes of `s` from `i`.
        let v = unsafe { _mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i) };
        let (any, quotes) = masks32(v);
        if any == 0 {
            // SAFETY: room for the plain rest plus 32 bytes is reserved
            // (above, and before each spread block beyond what it writes).
            unsafe {
                _mm256_storeu_si256(out.as_mut_ptr().add(out.len()) as *mut __m256i, v);
                out.set_len(out.len() + 32);
            }
            i += 32;
            continue;
        }
        if any != quotes {
            return i;
        }
        // What is left after the spread block is room for the plain rest
        // plus 32 bytes again.
        out.reserve(s.len() - i + 64);
        spread32(out, v, quotes, 32);
        i += 32;
    }
    let (take, src) = (s.len() - i, s[i..].as_ptr());
    // SAFETY (every block below): the loads read bytes of `s[i..]` (each
    // `take` checked against its width), and the stores write within the
    // `take + 32` bytes reserved behind `out`'s length.
    unsafe {
        let dst = out.as_mut_ptr().add(out.len());
        if take >= 16 {
            let a = _mm_loadu_si128(src as *const __m128i);
            let b = _mm_loadu_si128(src.add(take - 16) as *const __m128i);
            if masks16(a).0 | masks16(b).0 != 0 {
                return avx2_quoted_tail(out, s, i);
            }
            _mm_storeu_si128(dst as *mut __m128i, a);
            _mm_storeu_si128(dst.add(take - 16) as *mut __m128i, b);
        } else if take >= 8 {
            let a = (src as *const u64).read_unaligned();
            let b = (src.add(take - 8) as *const u64).read_unaligned();
            if masks16(_mm_set_epi64x(b as i64, a as i64)).0 != 0 {
                return avx2_quoted_tail(out, s, i);
            }
            (dst as *mut u64).write_unaligned(a);
            (dst.add(take - 8) as *mut u64).write_unaligned(b);
        } else if take >= 4 {
            let a = (src as *const u32).read_unaligned();
            let b = (src.add(take - 4) as *const u32).read_unaligned();
            if may_need_escape(u64::from(b) << 32 | u64::from(a)) {
                return avx2_quoted_tail(out, s, i);
            }
            (dst as *mut u32).write_unaligned(a);
            (dst.add(take - 4) as *mut u32).write_unaligned(b);
        } else if take > 0 {
            let (a, b, c) = (*src, *src.add(take / 2), *src.add(take - 1));
            if may_need_escape(u64::from_le_bytes([a, b, c, a, a, a, a, a])) {
                return avx2_quoted_tail(out, s, i);
            }
            *dst = a;
            *dst.add(take / 2) = b;
            *dst.add(take - 1) = c;
        }
        out.set_len(out.len() + take);
    }
    s.len()
}

/// The masks of [`attention16`] over 32 loaded bytes: those that need
/// attention, and the quotes and backslashes among them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn masks32(v: std::arch::x86_64::__m256i) -> (u32, u32) {
    use std::arch::x86_64::*;
    let eq = |c: u8| _mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8));
    let quote = _mm256_or_si256(eq(b'"'), eq(b'\\'));
    // A signed compare: controls, and bytes of 0x80 and above.
    let low = _mm256_cmpgt_epi8(_mm256_set1_epi8(0x20), v);
    let html = _mm256_or_si256(eq(b'<'), _mm256_or_si256(eq(b'>'), eq(b'&')));
    let any = _mm256_movemask_epi8(_mm256_or_si256(_mm256_or_si256(low, quote), html));
    (any as u32, _mm256_movemask_epi8(quote) as u32)
}

/// Append the first `take` bytes of the block `v`, a backslash before
/// each whose bit is set in `quotes`: each 8 bytes spread straight into
/// `out` by [`spread8`] (up to 64 bytes, the last 16-byte store starting
/// at most 48 in; needs 64 bytes of room).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,ssse3,popcnt")]
#[inline]
fn spread32(out: &mut Vec<u8>, v: std::arch::x86_64::__m256i, quotes: u32, take: usize) {
    use std::arch::x86_64::*;
    assert!(out.capacity() - out.len() >= 64 && take <= 32);
    let q = quotes as usize;
    // SAFETY: the stores write within the 64 bytes of room checked above,
    // and the length then covers the `take` bytes spread.
    unsafe {
        let (a, b) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let len = out.len();
        let dst = out.as_mut_ptr().add(len);
        let mut n = spread8(dst, a, q & 0xff, 0);
        if take > 8 {
            n += spread8(dst.add(n), a, q >> 8 & 0xff, 8);
        }
        if take > 16 {
            n += spread8(dst.add(n), b, q >> 16 & 0xff, 0);
        }
        if take > 24 {
            spread8(dst.add(n), b, q >> 24, 8);
        }
        out.set_len(len + take + quotes.count_ones() as usize);
    }
}

/// [`avx2_blocks`]' short last block (`s[i..]`, under 32 bytes) when it
/// has special bytes: if they are only quotes and backslashes (stored
/// JSON's last bytes), it is spread as a whole block is, from a copy
/// padded with spaces. Answers where the scan is then.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,ssse3,popcnt")]
fn avx2_quoted_tail(out: &mut Vec<u8>, s: &[u8], i: usize) -> usize {
    use std::arch::x86_64::*;
    let take = s.len() - i;
    let mut block = [b' '; 32];
    block[..take].copy_from_slice(&s[i..]);
    // SAFETY: the load reads one whole 32-byte array.
    let v = unsafe { _mm256_loadu_si256(block.as_ptr() as *const __m256i) };
    let (any, quotes) = masks32(v);
    if any != quotes {
        return i;
    }
    out.reserve(64);
    spread32(out, v, quotes, take);
    s.len()
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
        masks16(unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) })
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

/// [`attention16`]'s masks of 16 loaded bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
fn masks16(v: std::arch::x86_64::__m128i) -> (u32, u32) {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe {
        let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        // A signed compare: controls, and bytes of 0x80 and above (negative
        // as i8), are below 0x20.
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

/// Append the 16 bytes of `b`, a backslash before each byte whose bit is
/// set in `quotes` (the quotes and backslashes of [`attention16`]).
#[inline]
fn escape_quotes16(out: &mut Vec<u8>, b: &[u8], quotes: u32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3 (checked just above; std caches it).
        unsafe { escape_quotes16_ssse3(out, b, quotes) };
        return;
    }
    escape_quotes16_bytes(out, b, quotes);
}

/// [`escape_quotes16`] one run of plain bytes at a time.
fn escape_quotes16_bytes(out: &mut Vec<u8>, b: &[u8], quotes: u32) {
    let mut start = 0;
    let mut bits = quotes;
    while bits != 0 {
        let at = bits.trailing_zeros() as usize;
        out.extend_from_slice(&b[start..at]);
        out.push(b'\\');
        start = at;
        bits &= bits - 1;
    }
    out.extend_from_slice(&b[start..16]);
}

/// For each mask of the quotes among 8 bytes: a `pshufb` control that
/// spreads the 8 bytes out with an empty slot (0x80) before each quote.
/// The slots become backslashes.
#[cfg(target_arch = "x86_64")]
static SPREAD: [[u8; 16]; 256] = {
    let mut t = [[0x80u8; 16]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut j) = (0, 0);
        while j < 8 {
            if m >> j & 1 == 1 {
                k += 1;
            }
            t[m][k] = j as u8;
            k += 1;
            j += 1;
        }
        m += 1;
    }
    t
};

/// [`escape_quotes16`] without a branch per quote: each half of the block
/// is spread by one byte shuffle from [`SPREAD`], the slots filled with
/// backslashes, and stored straight into `out` (one 222-byte HM9000
/// record: 138 → 93 ns against one run at a time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
fn escape_quotes16_ssse3(out: &mut Vec<u8>, b: &[u8], quotes: u32) {
    use std::arch::x86_64::*;
    let block: &[u8; 16] = b[..16].try_into().expect("16 bytes");
    // Room for both halves' 16-byte stores: the second starts at most 16
    // bytes in.
    out.reserve(32);
    let (lo, hi) = ((quotes & 0xff) as usize, (quotes >> 8 & 0xff) as usize);
    // SAFETY: the load reads one whole 16-byte array; the stores write
    // within the 32 bytes reserved behind `out`'s length, and the length
    // then covers what the two halves hold.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr() as *const __m128i);
        let len = out.len();
        let dst = out.as_mut_ptr().add(len);
        let n = spread8(dst, v, lo, 0);
        let m = spread8(dst.add(n), v, hi, 8);
        out.set_len(len + n + m);
    }
}

/// Store the 8 bytes of `v` from lane `from` at `dst`, an empty slot
/// (then a backslash) before each one whose bit is set in `quotes` (a
/// [`SPREAD`] index); 16 bytes are stored. Answers how many are in use.
///
/// # Safety
/// 16 bytes from `dst` are writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
#[inline]
unsafe fn spread8(dst: *mut u8, v: std::arch::x86_64::__m128i, quotes: usize, from: i8) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: the load reads one whole 16-byte array; the store is the
    // caller's.
    unsafe {
        let ctl = _mm_loadu_si128(SPREAD[quotes].as_ptr() as *const __m128i);
        // An empty slot (0x80) stays negative.
        let ctl = _mm_add_epi8(ctl, _mm_set1_epi8(from));
        let slots = _mm_cmplt_epi8(ctl, _mm_setzero_si128());
        let bytes = _mm_shuffle_epi8(v, ctl);
        let bytes = _mm_or_si128(bytes, _mm_and_si128(slots, _mm_set1_epi8(b'\\' as i8)));
        _mm_storeu_si128(dst as *mut __m128i, bytes);
    }
    8 + quotes.count_ones() as usize
}

/// Escape valid UTF-8: a scan that skips 32 (with a 32-byte `scan`, see
/// [`blocks`]), 16, then 8 plain bytes at a time, then a table-driven
/// one, copying runs of plain bytes at once. With `ASCII`, it
/// stops at the first byte of 0x80 or above and answers false (`out` then
/// holds a partial copy). The scan starts at `i` (the bytes before it
/// written); `wide_from` is where the next 32-byte scan may start (after a
/// block it stopped at; `usize::MAX` with [`Scan::Narrow`]).
fn write_valid<const ASCII: bool>(
    out: &mut Vec<u8>,
    s: &[u8],
    mut i: usize,
    mut wide_from: usize,
    scan: Scan,
) -> bool {
    let mut start = i;
    while i < s.len() {
        if i >= wide_from {
            // SAFETY: a `wide_from` is only given with a 32-byte `scan`,
            // which the CPU has (`scan()`).
            i = unsafe { blocks(scan, out, s, i, start) };
            start = i;
            wide_from = i + 32;
            continue;
        }
        if i + 16 <= s.len() {
            // 16 bytes at a time; on a hit, go straight to its first byte.
            let (m, quotes) = attention16(&s[i..i + 16]);
            if m == 0 {
                i += 16;
                continue;
            }
            if m == quotes {
                // Only quotes and backslashes (JSON stored as a value): the
                // block is written whole, a backslash before each of them.
                if start < i {
                    out.extend_from_slice(&s[start..i]);
                }
                escape_quotes16(out, &s[i..i + 16], quotes);
                i += 16;
                start = i;
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
///
/// A listing's expiry times come in runs within one second (records
/// written one after another), so the date and clock part of the last
/// second written is kept per thread and only the fraction is formatted
/// on a repeat.
pub fn write_time(out: &mut Vec<u8>, unix_nanos: i64) {
    thread_local! {
        static LAST: Cell<(i64, [u8; 20])> = const { Cell::new((i64::MIN, [0; 20])) };
    }
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000) as u32;
    let head = LAST.with(|last| {
        let (s, head) = last.get();
        if s == secs {
            return head;
        }
        let head = second_head(secs);
        last.set((secs, head));
        head
    });
    // i64 nanoseconds span the years 1677 to 2262: always four digits, so
    // `"YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ"` is 32 bytes at most. The bytes
    // are reserved zeroed and written in place (building them on the
    // stack and copying stalled the copy's loads on the byte stores).
    let at = out.len();
    out.extend_from_slice(&[0; 32]);
    let t = &mut out[at..at + 32];
    t[..20].copy_from_slice(&head);
    let mut n = 20;
    if nanos != 0 {
        // Nine digits as a digit and four pairs, the pairs independent.
        let (hi, lo) = (nanos / 10_000, nanos % 10_000);
        t[20] = b'.';
        t[21] = b'0' + (hi / 10_000) as u8;
        t[22..24].copy_from_slice(&two_digits(hi / 100 % 100));
        t[24..26].copy_from_slice(&two_digits(hi % 100));
        t[26..28].copy_from_slice(&two_digits(lo / 100));
        t[28..30].copy_from_slice(&two_digits(lo % 100));
        n = 30;
        while t[n - 1] == b'0' {
            n -= 1;
        }
    }
    t[n..n + 2].copy_from_slice(b"Z\"");
    out.truncate(at + n + 2);
}

/// `"YYYY-MM-DDTHH:MM:SS` for a Unix second.
fn second_head(secs: i64) -> [u8; 20] {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let y = y as u32;
    let ([y1, y2], [y3, y4]) = (two_digits(y / 100), two_digits(y % 100));
    let ([m1, m2], [d1, d2]) = (two_digits(m), two_digits(d));
    let [h1, h2] = two_digits(sod / 3600);
    let [i1, i2] = two_digits(sod / 60 % 60);
    let [s1, s2] = two_digits(sod % 60);
    [
        b'"', y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2, b'T', h1, h2, b':', i1, i2, b':', s1, s2,
    ]
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
    fn every_quote_mask_of_a_block_escapes_like_one_run_at_a_time() {
        for quotes in 0..=0xffffu32 {
            let b: Vec<u8> = (0..16)
                .map(|j| {
                    if quotes >> j & 1 == 1 {
                        b'"'
                    } else {
                        b'a' + j as u8
                    }
                })
                .collect();
            let (mut want, mut got) = (b"x".to_vec(), b"x".to_vec());
            super::escape_quotes16_bytes(&mut want, &b, quotes);
            super::escape_quotes16(&mut got, &b, quotes);
            assert_eq!(got, want, "{quotes:016b}");
            assert_eq!(want.len(), 17 + quotes.count_ones() as usize);
        }
    }

    /// The 32-byte scans this CPU has (AVX-512 CPUs have AVX2 as well).
    fn wide_scans() -> Vec<Scan> {
        let scans = match detect() {
            Scan::Avx512 => vec![Scan::Avx2, Scan::Avx512],
            Scan::Avx2 => vec![Scan::Avx2],
            Scan::Narrow => vec![],
        };
        if scans.is_empty() {
            eprintln!("this CPU has no AVX2: only the 16-byte scan is used here");
        }
        scans
    }

    /// The 32-byte scans ([`wide_blocks`], [`avx2_blocks`]) write what the 16-byte one
    /// does: strings of every class of byte (plain, quotes, HTML, controls,
    /// U+2028, other UTF-8, invalid bytes) in runs, at every length up to
    /// a few blocks.
    #[test]
    fn the_wide_scan_escapes_like_the_narrow_one() {
        let scans = wide_scans();
        let pieces: [&[u8]; 10] = [
            b"plain",
            b"\"",
            b"\\",
            b"<&>",
            b"\n\x01",
            "\u{2028}".as_bytes(),
            "\u{e9}\u{20ac}".as_bytes(),
            b"\xff",
            b"0123456789abcdef0123456789abcdef",
            br#"{"a":"b"}"#,
        ];
        let mut x: u32 = 7;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..20_000 {
            let mut v = Vec::new();
            let want_len = next() as usize % 150;
            while v.len() < want_len {
                // Mostly plain and quotes, as stored JSON is.
                let r = next() as usize % 40;
                v.extend_from_slice(pieces[if r < 10 { r } else { r % 2 * 8 + 1 }]);
            }
            let mut narrow = b"x".to_vec();
            write_escaped_with(&mut narrow, &v, Scan::Narrow);
            for &scan in &scans {
                let mut wide = b"x".to_vec();
                write_escaped_with(&mut wide, &v, scan);
                assert_eq!(wide, narrow, "{scan:?} {v:?}");
            }
        }
    }

    /// Quotes in every position of a 32-byte block: each mask of up to
    /// three, and random denser ones; the same bytes as a short last block.
    #[test]
    fn every_sparse_quote_mask_of_a_wide_block_escapes_like_the_narrow_scan() {
        let scans = wide_scans();
        let mut masks = vec![0u32, u32::MAX];
        for a in 0..32 {
            for b in a..32 {
                for c in b..32 {
                    masks.push(1 << a | 1 << b | 1 << c);
                }
            }
        }
        let mut x: u32 = 99;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            masks.push(x);
        }
        for m in masks {
            let b: Vec<u8> = (0..40u32)
                .map(|j| match (j < 32 && m >> j & 1 == 1, j % 2) {
                    (true, 0) => b'"',
                    (true, _) => b'\\',
                    _ => b'a' + (j % 26) as u8,
                })
                .collect();
            // The block whole, and as a short last block: alone, and
            // behind a plain one.
            let short = &b[..1 + (m.count_ones() as usize * 7 + m as usize) % 31];
            let behind = [&[b'p'; 32][..], short].concat();
            for v in [&b[..], short, &behind] {
                let mut narrow = Vec::new();
                write_escaped_with(&mut narrow, v, Scan::Narrow);
                for &scan in &scans {
                    let mut wide = Vec::new();
                    write_escaped_with(&mut wide, v, scan);
                    assert_eq!(wide, narrow, "{scan:?} {m:032b} {v:?}");
                }
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
        out.clear();
        write_time(&mut out, i64::MIN);
        assert_eq!(out, b"\"1677-09-21T00:12:43.145224192Z\"");
        out.clear();
        write_time(&mut out, i64::MAX);
        assert_eq!(out, b"\"2262-04-11T23:47:16.854775807Z\"");
    }

    /// The kept second is only reused for the same second: times walking
    /// forwards and back across second boundaries (and 1970) format like
    /// each formatted on its own.
    #[test]
    fn a_kept_second_formats_like_a_fresh_one() {
        let mut out = Vec::new();
        let mut t: i64 = -3_000_000_000;
        let mut step: i64 = 7_919_113;
        for i in 0..20_000 {
            t += if i % 7 == 0 { -step / 3 } else { step };
            step = step * 31 % 1_000_000_007 + 1;
            out.clear();
            write_time(&mut out, t);
            let (secs, nanos) = (t.div_euclid(1_000_000_000), t.rem_euclid(1_000_000_000));
            let mut want = second_head(secs).to_vec();
            if nanos != 0 {
                let f = format!(".{nanos:09}");
                want.extend_from_slice(f.trim_end_matches('0').as_bytes());
            }
            want.extend_from_slice(b"Z\"");
            assert_eq!(out, want, "at {t}");
        }
    }
}
