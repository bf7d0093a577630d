//! Form parameters with Go's `Request.ParseForm` semantics (spec 2.4).
//!
//! The url-encoded body (PUT/POST with the form content type) is read
//! before the query string and the first value of each parameter wins.
//! Only the parameters the keys API knows are kept; their decoded values
//! live in one reusable buffer, so parsing allocates nothing once warm.

/// A parameter value that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// The keys API's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Field {
    Value,
    PrevValue,
    PrevIndex,
    PrevExist,
    Ttl,
    Dir,
    Recursive,
    Sorted,
    Wait,
    WaitIndex,
    Quorum,
    Stream,
    NoValueOnSuccess,
    Refresh,
}

const FIELDS: usize = 14;

impl Field {
    fn from_name(n: &[u8]) -> Option<Field> {
        Some(match n {
            b"value" => Field::Value,
            b"prevValue" => Field::PrevValue,
            b"prevIndex" => Field::PrevIndex,
            b"prevExist" => Field::PrevExist,
            b"ttl" => Field::Ttl,
            b"dir" => Field::Dir,
            b"recursive" => Field::Recursive,
            b"sorted" => Field::Sorted,
            b"wait" => Field::Wait,
            b"waitIndex" => Field::WaitIndex,
            b"quorum" => Field::Quorum,
            b"stream" => Field::Stream,
            b"noValueOnSuccess" => Field::NoValueOnSuccess,
            b"refresh" => Field::Refresh,
            _ => return None,
        })
    }
}

/// Decoded parameters of one request.
#[derive(Default)]
pub struct Form {
    buf: Vec<u8>,
    fields: [Option<(u32, u32)>; FIELDS],
    key: Vec<u8>,
}

/// The most a url-encoded body may hold (Go's 10 MB form limit).
pub const MAX_FORM: usize = 10 << 20;

impl Form {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.fields = [None; FIELDS];
    }

    /// Parse `body` (when `use_body`) then `query`. The error is Go's text
    /// (the cause of etcd's 210), body errors first.
    pub fn parse(&mut self, body: Option<&[u8]>, query: &[u8]) -> Result<(), String> {
        self.clear();
        let mut err = None;
        if let Some(b) = body {
            if b.len() > MAX_FORM {
                err = Some("http: POST too large".to_string());
            } else if let Err(e) = self.parse_query(b) {
                err = Some(e);
            }
        }
        if let Err(e) = self.parse_query(query) {
            err.get_or_insert(e);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn parse_query(&mut self, q: &[u8]) -> Result<(), String> {
        let mut err = None;
        for pair in q.split(|&b| b == b'&') {
            if pair.contains(&b';') {
                err = Some("invalid semicolon separator in query".to_string());
                continue;
            }
            if pair.is_empty() {
                continue;
            }
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let mut key = std::mem::take(&mut self.key);
            let r = unescape(k, &mut key);
            if let Err(e) = r {
                err.get_or_insert(e);
                self.key = key;
                continue;
            }
            let field = Field::from_name(&key);
            self.key = key;
            let start = self.buf.len();
            if let Err(e) = unescape_into(v, &mut self.buf) {
                self.buf.truncate(start);
                err.get_or_insert(e);
                continue;
            }
            match field {
                Some(f) if self.fields[f as usize].is_none() => {
                    self.fields[f as usize] = Some((start as u32, self.buf.len() as u32));
                }
                _ => self.buf.truncate(start),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The first value, if the parameter was given.
    pub fn get(&self, f: Field) -> Option<&[u8]> {
        self.fields[f as usize].map(|(s, e)| &self.buf[s as usize..e as usize])
    }

    /// `FormValue`: the first value or "".
    pub fn value(&self, f: Field) -> &[u8] {
        self.get(f).unwrap_or(b"")
    }

    /// Go's `strconv.ParseBool`; absent = false.
    pub fn bool(&self, f: Field) -> Result<bool, Invalid> {
        match self.get(f) {
            None => Ok(false),
            Some(v) => parse_bool(v),
        }
    }

    /// Go's `strconv.ParseUint(v, 10, 64)`; absent = 0.
    pub fn u64(&self, f: Field) -> Result<u64, Invalid> {
        match self.get(f) {
            None => Ok(0),
            Some(v) => parse_u64(v),
        }
    }
}

pub fn parse_bool(v: &[u8]) -> Result<bool, Invalid> {
    match v {
        b"1" | b"t" | b"T" | b"TRUE" | b"true" | b"True" => Ok(true),
        b"0" | b"f" | b"F" | b"FALSE" | b"false" | b"False" => Ok(false),
        _ => Err(Invalid),
    }
}

pub fn parse_u64(v: &[u8]) -> Result<u64, Invalid> {
    if v.is_empty() {
        return Err(Invalid);
    }
    let mut n: u64 = 0;
    for &c in v {
        if !c.is_ascii_digit() {
            return Err(Invalid);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((c - b'0') as u64))
            .ok_or(Invalid)?;
    }
    Ok(n)
}

/// Go's `url.QueryUnescape` of `s` into `out` (cleared first).
pub fn unescape(s: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    unescape_into(s, out)
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte.
fn unescape_into(s: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let h = s.get(i + 1).and_then(|&c| crate::http::request::hex(c));
                let l = s.get(i + 2).and_then(|&c| crate::http::request::hex(c));
                match (h, l) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => {
                        let bad = &s[i..(i + 3).min(s.len())];
                        return Err(format!("invalid URL escape {}", go_quote(bad)));
                    }
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(())
}

/// Go's `strconv.Quote` for the short strings in error causes (at most
/// three bytes): `\n`-style escapes, `\xNN` for other controls and for each
/// byte of invalid UTF-8, `\u00NN` for the non-printable Latin-1 characters
/// (other non-printable characters are rare enough to be copied as they are).
fn go_quote(b: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                '\u{80}'..='\u{a0}' | '\u{ad}' => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// The url-encoded form type, the one body kind the keys API reads.
pub const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// Whether a Content-Type names the form type, or Go's error text. Clients
/// send that type, go-etcd (HM9000's client) with a `; param=value` after
/// it: a UTF-8 header is checked in place, no allocation; only invalid
/// UTF-8 takes the copy of Go's full parse ([`media_type`]).
pub fn is_form(ct: &[u8]) -> Result<bool, String> {
    if ct.eq_ignore_ascii_case(FORM_TYPE.as_bytes()) {
        return Ok(true);
    }
    match std::str::from_utf8(ct) {
        Ok(s) => parse_media_type(s)
            .map(|mt| mt.eq_ignore_ascii_case(FORM_TYPE))
            .map_err(String::from),
        Err(_) => media_type(ct).map(|mt| mt == FORM_TYPE),
    }
}

/// Check a Content-Type with Go's `mime.ParseMediaType` and return the
/// lower-cased media type, or Go's error text.
pub fn media_type(ct: &[u8]) -> Result<String, String> {
    let s = String::from_utf8_lossy(ct);
    parse_media_type(&s)
        .map(str::to_ascii_lowercase)
        .map_err(String::from)
}

/// Go's `isTokenChar`: printable ASCII but for the separators
/// `()<>@,;:\"/[]?=`.
fn is_token_byte(b: u8) -> bool {
    matches!(b, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z' | b'^'..=b'~')
}

/// The checks of Go's `mime.ParseMediaType` on a decoded header: the
/// trimmed media type as written (not lower-cased), or Go's error text.
fn parse_media_type(s: &str) -> Result<&str, &'static str> {
    let mut parts = s.split(';');
    let mt = parts.next().unwrap_or("").trim();
    if mt.is_empty() {
        return Err("mime: no media type");
    }
    let is_token = |t: &str| !t.is_empty() && t.bytes().all(is_token_byte);
    match mt.split_once('/') {
        None if !is_token(mt) => return Err("mime: expected token after slash"),
        None => return Err("mime: expected slash after first token"),
        Some((a, b)) => {
            if !is_token(a) {
                return Err("mime: expected token after slash");
            }
            if !is_token(b) {
                return Err("mime: unexpected content after media subtype");
            }
        }
    }
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        match p.split_once('=') {
            Some((k, _)) if is_token(k.trim()) => {}
            _ => return Err("mime: invalid media parameter"),
        }
    }
    Ok(mt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_wins_and_first_value_wins() {
        let mut f = Form::default();
        f.parse(Some(b"value=b"), b"value=q&ttl=5&ttl=6").unwrap();
        assert_eq!(f.value(Field::Value), b"b");
        assert_eq!(f.u64(Field::Ttl), Ok(5));
        f.parse(None, b"value=1&value=2&val%75e=3").unwrap();
        assert_eq!(f.value(Field::Value), b"1");
        f.parse(None, b"value=a+b%21").unwrap();
        assert_eq!(f.value(Field::Value), b"a b!");
    }

    #[test]
    fn go_errors() {
        let mut f = Form::default();
        assert_eq!(
            f.parse(None, b"value=%zz").unwrap_err(),
            "invalid URL escape \"%zz\""
        );
        assert_eq!(
            f.parse(None, b"value=%z").unwrap_err(),
            "invalid URL escape \"%z\""
        );
        assert_eq!(media_type(b";;;").unwrap_err(), "mime: no media type");
        assert_eq!(is_form(b"APPLICATION/x-www-form-urlencoded"), Ok(true));
        assert_eq!(
            is_form(b"application/x-www-form-urlencoded; charset=utf-8"),
            Ok(true)
        );
        assert_eq!(is_form(b"application/json"), Ok(false));
        // Valid UTF-8 beyond ASCII is checked in place, as Go's parse does.
        for ct in [
            "application/x-www-form-urlencoded; é=1",
            "application/x-www-form-urlencoded;\u{a0}p=v",
            "\u{2003}application/x-www-form-urlencoded\u{2003}",
            "applicätion/x-www-form-urlencoded",
        ] {
            let full = media_type(ct.as_bytes()).map(|mt| mt == FORM_TYPE);
            assert_eq!(is_form(ct.as_bytes()), full, "{ct}");
        }
        // go-etcd's header, and a parameter that is not a token.
        assert_eq!(
            is_form(b"application/x-www-form-urlencoded; param=value"),
            Ok(true)
        );
        assert_eq!(
            is_form(b"application/x-www-form-urlencoded; p@r=value").unwrap_err(),
            "mime: invalid media parameter"
        );
        assert!(is_form(b"text/").is_err());
        assert_eq!(
            media_type(b"Application/X-WWW-Form-Urlencoded; charset=utf-8").unwrap(),
            "application/x-www-form-urlencoded"
        );
    }

    #[test]
    fn token_bytes_are_gos() {
        for b in 0..=255u8 {
            let go = b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b);
            assert_eq!(is_token_byte(b), go, "byte {b:#x}");
        }
    }

    #[test]
    fn go_parse_bool_and_uint() {
        assert_eq!(parse_bool(b"True"), Ok(true));
        assert_eq!(parse_bool(b"yes"), Err(Invalid));
        assert_eq!(parse_bool(b""), Err(Invalid));
        assert_eq!(parse_u64(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), Err(Invalid));
        assert_eq!(parse_u64(b"-1"), Err(Invalid));
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    #[test]
    fn random_forms_and_content_types_never_panic() {
        let mut x: u64 = 7;
        let alphabet = b"%+=&;aZ09\xff\x00 /";
        let mut f = Form::default();
        for _ in 0..30_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 40) as usize;
            let s: Vec<u8> = (0..n)
                .map(|i| alphabet[((x >> (i % 50)) as usize + i) % alphabet.len()])
                .collect();
            let _ = f.parse(Some(&s), &s);
            let _ = f.bool(Field::Dir);
            let _ = f.u64(Field::Ttl);
            // The in-place check and Go's full parse agree.
            assert_eq!(is_form(&s), media_type(&s).map(|mt| mt == FORM_TYPE));
        }
    }
}
