//! Parsing one HTTP/1.1 request head in place with httparse, and the URL
//! rules Go's `net/http` applies before etcd sees a request.
//!
//! Bytes enter as the connection's read buffer; a [`Head`] borrowing that
//! buffer leaves, together with the framing of its body. Malformed heads map
//! to a status (400 or 431) and the connection is closed.

/// The request method, for the methods etcd's handlers distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Options,
    Other,
}

impl Method {
    fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head<'a> {
    pub method: Method,
    /// Raw (still percent-encoded) path, without the query.
    pub raw_path: &'a [u8],
    pub query: &'a [u8],
    pub content_type: Option<&'a [u8]>,
    /// The first `Authorization` header (Go's `Header.Get`).
    pub authorization: Option<&'a [u8]>,
    pub framing: Framing,
    pub keep_alive: bool,
    pub http11: bool,
    pub expect_continue: bool,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400, with a short reason.
    Bad(&'static str),
    /// 431.
    TooLarge,
    /// 501: a Transfer-Encoding other than chunked (as Go answers).
    Unsupported,
}

pub const MAX_HEADERS: usize = 64;

/// Try to parse a head from `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head<'_>>, HeadError> {
    // Left uninitialised: httparse writes the ones it fills in (2 KiB of
    // zeroing per request otherwise).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed request")),
    };
    // httparse tolerates bare LF line ends; HTTP/1.1 servers must not.
    let head = &buf[..len];
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return Err(HeadError::Bad("bare LF in request head"));
    }
    let method = Method::parse(req.method.unwrap_or(""));
    let http11 = req.version == Some(1);
    let target = req.path.unwrap_or("").as_bytes();
    let target = origin_form(target).ok_or(HeadError::Bad("bad request target"))?;
    let (raw_path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &b""[..]),
    };
    let mut content_type = None;
    let mut authorization = None;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut keep_alive = http11;
    let mut expect_continue = false;
    let mut host = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host {
                return Err(HeadError::Bad("too many Host headers"));
            }
            host = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let v =
                std::str::from_utf8(h.value).map_err(|_| HeadError::Bad("bad Content-Length"))?;
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| HeadError::Bad("bad Content-Length"))?;
            if v.trim().starts_with('+') {
                return Err(HeadError::Bad("bad Content-Length"));
            }
            if length.is_some_and(|l| l != n) || length.is_some() {
                return Err(HeadError::Bad("duplicate Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te_seen {
                return Err(HeadError::Bad("repeated Transfer-Encoding"));
            }
            if !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Unsupported);
            }
            te_seen = true;
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(h.value);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = authorization.or(Some(h.value));
        } else if name.eq_ignore_ascii_case("connection") {
            for tok in h.value.split(|&b| b == b',') {
                let tok = trim(tok);
                if tok.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect")
            && h.value.eq_ignore_ascii_case(b"100-continue")
        {
            expect_continue = true;
        }
    }
    if http11 && !host {
        return Err(HeadError::Bad("missing required Host header"));
    }
    if chunked && length.is_some() {
        return Err(HeadError::Bad("both Content-Length and Transfer-Encoding"));
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    Ok(Some(Head {
        method,
        raw_path,
        query,
        content_type,
        authorization,
        framing,
        keep_alive,
        http11,
        expect_continue,
        len,
    }))
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e]
}

/// Reduce an absolute-form target (`http://host/path`) to its path.
fn origin_form(t: &[u8]) -> Option<&[u8]> {
    if t.first() == Some(&b'/') {
        return Some(t);
    }
    for scheme in [&b"http://"[..], b"https://"] {
        if t.len() > scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            return Some(match rest.iter().position(|&b| b == b'/' || b == b'?') {
                Some(i) if rest[i] == b'/' => &rest[i..],
                _ => b"/",
            });
        }
    }
    None
}

/// Decode a chunked body that is complete in `buf`. Returns the bytes
/// consumed, or `Ok(None)` if more are needed. Trailers are skipped.
pub fn decode_chunked(
    buf: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<Option<usize>, HeadError> {
    out.clear();
    let mut at = 0;
    loop {
        match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete((n, size))) => {
                at += n;
                // A chunk size is up to 16 hex digits: keep the sums below
                // from overflowing (`out` never grows past `max`).
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size == 0 {
                    // Trailer section: lines until an empty one.
                    loop {
                        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                            return Ok(None);
                        };
                        at += eol + 2;
                        if eol == 0 {
                            return Ok(Some(at));
                        }
                    }
                }
                if size > max.saturating_sub(out.len()) {
                    return Err(HeadError::TooLarge);
                }
                if buf.len() - at < size.saturating_add(2) {
                    return Ok(None);
                }
                out.extend_from_slice(&buf[at..at + size]);
                at += size;
                if &buf[at..at + 2] != b"\r\n" {
                    return Err(HeadError::Bad("bad chunk"));
                }
                at += 2;
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(HeadError::Bad("bad chunk size")),
        }
    }
}

/// Percent-decode a URL path (Go's `unescape(s, encodePath)`: `+` stays).
pub fn decode_path(raw: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).and_then(|&c| hex(c)),
                    raw.get(i + 2).and_then(|&c| hex(c)),
                ) else {
                    return false;
                };
                out.push(h << 4 | l);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    true
}

pub fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Go's `path.Clean`.
pub fn clean(p: &[u8]) -> Vec<u8> {
    let rooted = p.first() == Some(&b'/');
    let mut parts: Vec<&[u8]> = Vec::new();
    for seg in p.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if parts.last().is_some_and(|l| *l != b"..") {
                    parts.pop();
                } else if !rooted {
                    parts.push(seg);
                }
            }
            s => parts.push(s),
        }
    }
    let mut out = Vec::with_capacity(p.len());
    if rooted {
        out.push(b'/');
    }
    for (i, s) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(s);
    }
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// Go ServeMux's `cleanPath`: clean, keeping one trailing slash. `None` when
/// the path is already clean.
pub fn mux_clean(p: &[u8]) -> Option<Vec<u8>> {
    if p.is_empty() {
        return Some(b"/".to_vec());
    }
    // Fast path: nothing to clean.
    let dirty = p[0] != b'/'
        || p.windows(2).any(|w| w == b"//")
        || p.split(|&b| b == b'/').any(|s| s == b"." || s == b"..");
    if !dirty {
        return None;
    }
    let mut with_root = Vec::with_capacity(p.len() + 1);
    if p[0] != b'/' {
        with_root.push(b'/');
    }
    with_root.extend_from_slice(p);
    let mut np = clean(&with_root);
    if with_root.last() == Some(&b'/') && np != b"/" {
        np.push(b'/');
    }
    (np != p).then_some(np)
}

/// Escape a path as Go's `url.URL.EscapedPath` does.
pub fn escape_path(p: &[u8], out: &mut Vec<u8>) {
    const HEXU: &[u8; 16] = b"0123456789ABCDEF";
    for &c in p {
        let keep = c.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&c);
        if keep {
            out.push(c);
        } else {
            out.push(b'%');
            out.push(HEXU[(c >> 4) as usize]);
            out.push(HEXU[(c & 15) as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_put() {
        let raw = b"PUT /v2/keys/a?ttl=5 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nvalue=1";
        let h = parse_head(raw).unwrap().unwrap();
        assert_eq!(h.method, Method::Put);
        assert_eq!(h.raw_path, b"/v2/keys/a");
        assert_eq!(h.query, b"ttl=5");
        assert_eq!(h.framing, Framing::Length(7));
        assert!(h.keep_alive);
        assert_eq!(&raw[h.len..], b"value=1");
    }

    #[test]
    fn refuses_smuggling_shapes() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GE T / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ];
        for b in bad {
            assert!(parse_head(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nHost"), Ok(None)));
    }

    #[test]
    fn chunked_bodies() {
        let mut out = Vec::new();
        let b = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\nNEXT";
        assert_eq!(decode_chunked(b, &mut out, 100).unwrap(), Some(b.len() - 4));
        assert_eq!(out, b"helloabc");
        assert_eq!(decode_chunked(&b[..10], &mut out, 100).unwrap(), None);
        assert!(decode_chunked(b, &mut out, 4).is_err());
    }

    #[test]
    fn go_path_cleaning() {
        assert_eq!(
            mux_clean(b"/v2/keys//sp ace"),
            Some(b"/v2/keys/sp ace".to_vec())
        );
        assert_eq!(
            mux_clean(b"/v2/keys/x//y/"),
            Some(b"/v2/keys/x/y/".to_vec())
        );
        assert_eq!(
            mux_clean(b"/v2/keys/../v2/keys/a"),
            Some(b"/v2/v2/keys/a".to_vec())
        );
        assert_eq!(mux_clean(b"/v2/keys/a/"), None);
        assert_eq!(clean(b"/a/b/"), b"/a/b");
        let mut o = Vec::new();
        escape_path(b"/sp ace/\xc3\xa9", &mut o);
        assert_eq!(o, b"/sp%20ace/%C3%A9");
    }
}

#[cfg(test)]
mod robustness {
    //! Random and mutated inputs: the parsers answer or refuse, never panic.
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const SEED: &[u8] = b"PUT /v2/keys/a%20b?ttl=5&prevExist=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nvalue\r\n2\r\n=1\r\n0\r\n\r\n";

    #[test]
    fn mutated_requests_never_panic() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let alphabet = b"\r\n :%/?&=;\0\x7f\xff0aZ-";
        let mut body = Vec::new();
        let mut path = Vec::new();
        for _ in 0..50_000 {
            let mut b = SEED.to_vec();
            for _ in 0..1 + rng.below(6) {
                if b.is_empty() {
                    break;
                }
                let at = rng.below(b.len());
                match rng.below(4) {
                    0 => b[at] = alphabet[rng.below(alphabet.len())],
                    1 => {
                        b.remove(at);
                    }
                    2 => b.insert(at, alphabet[rng.below(alphabet.len())]),
                    _ => b.truncate(at),
                }
            }
            if let Ok(Some(h)) = parse_head(&b) {
                let _ = decode_path(h.raw_path, &mut path);
                let _ = mux_clean(&path);
                if h.framing == Framing::Chunked {
                    let _ = decode_chunked(&b[h.len..], &mut body, 1 << 20);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(42);
        let mut body = Vec::new();
        for _ in 0..20_000 {
            let n = rng.below(200);
            let b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let _ = parse_head(&b);
            let _ = decode_chunked(&b, &mut body, 64);
            let _ = clean(&b);
        }
    }
}
