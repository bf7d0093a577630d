//! HTTP/1.1 wire format for the harness: request templates and the response reader.
//!
//! Requests are rendered once into a [`Template`] (method, path, headers and body
//! as finished bytes); the hot loop only copies a template into a connection's
//! write buffer and patches a fixed-width decimal slot (a key number) in place,
//! so building a request allocates nothing. Responses enter as raw bytes read from
//! a socket by [`ResponseReader::next`], are parsed with `httparse` (status line and
//! headers), de-chunked incrementally when the server uses chunked transfer
//! encoding (etcd does for bodies over 4 KiB and for watches), and leave as a
//! borrowed [`Resp`] (status, `X-Etcd-Index`, body) that lives until the next call.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Content type go-etcd sends with every PUT (with its quirky `param=value`).
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; param=value";

/// A pre-rendered request with an optional fixed-width decimal slot.
#[derive(Clone, Debug)]
pub struct Template {
    bytes: Vec<u8>,
    /// Byte range of the zero-padded decimal slot inside `bytes`.
    slot: Option<(usize, usize)>,
}

/// Marker inside a path or body that [`Template::new`] turns into a decimal slot.
pub const SLOT: &str = "{n}";

impl Template {
    /// Renders `METHOD path HTTP/1.1` with a Host header and, when `body` is given,
    /// a form content type and Content-Length. The first `{n}` in `path` becomes a
    /// slot of `width` digits, filled per request by [`Template::write`].
    pub fn new(method: &str, host: &str, path: &str, body: Option<&str>, width: usize) -> Self {
        let mut bytes = Vec::with_capacity(128 + path.len() + body.map_or(0, str::len));
        let (before, after) = match path.find(SLOT) {
            Some(i) => (&path[..i], Some(&path[i + SLOT.len()..])),
            None => (path, None),
        };
        bytes.extend_from_slice(method.as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(before.as_bytes());
        let slot = after.map(|rest| {
            let start = bytes.len();
            bytes.resize(start + width, b'0');
            bytes.extend_from_slice(rest.as_bytes());
            (start, start + width)
        });
        bytes.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        bytes.extend_from_slice(host.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            bytes.extend_from_slice(b"Content-Type: ");
            bytes.extend_from_slice(FORM_CONTENT_TYPE.as_bytes());
            bytes.extend_from_slice(b"\r\nContent-Length: ");
            bytes.extend_from_slice(body.len().to_string().as_bytes());
            bytes.extend_from_slice(b"\r\n\r\n");
            bytes.extend_from_slice(body.as_bytes());
        } else {
            bytes.extend_from_slice(b"\r\n");
        }
        Template { bytes, slot }
    }

    /// Appends the request to `out`, writing `n` zero-padded into the slot (the
    /// lowest digits win if `n` does not fit). Allocation-free once `out` has room.
    #[inline]
    pub fn write(&self, n: u64, out: &mut Vec<u8>) {
        let base = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some((s, e)) = self.slot {
            write_padded(n, &mut out[base + s..base + e]);
        }
    }

    /// The rendered bytes (slot holds zeros).
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Writes `n` as zero-padded decimal filling all of `dst`.
#[inline]
pub fn write_padded(mut n: u64, dst: &mut [u8]) {
    for b in dst.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Renders one ad-hoc request (setup paths, not the hot loop).
pub fn render(method: &str, host: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    Template::new(method, host, path, body, 0).bytes
}

/// Percent-encodes a form value the way Go's `url.Values.Encode` does.
pub fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One parsed response, valid until the next [`ResponseReader::next`] call.
#[derive(Debug)]
pub struct Resp<'a> {
    pub status: u16,
    pub etcd_index: Option<u64>,
    pub body: &'a [u8],
}

/// Why reading a response failed.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection.
    Closed,
    Io(io::Error),
    /// The bytes were not valid HTTP/1.1.
    Parse(&'static str),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => write!(f, "connection closed"),
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Parse(what) => write!(f, "bad HTTP: {what}"),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// A complete response: (status, X-Etcd-Index, body offset, body length).
type Done = (u16, Option<u64>, usize, usize);

enum State {
    Head,
    /// Body of known length; headers occupy `head` bytes from `start`.
    Fixed {
        status: u16,
        index: Option<u64>,
        head: usize,
        len: usize,
    },
    /// Chunked body being decoded into `body`; `left` is the unread part of the
    /// current chunk (`None` = a chunk-size line is next).
    Chunked {
        status: u16,
        index: Option<u64>,
        left: Option<usize>,
        crlf: bool,
    },
}

/// Incremental HTTP/1.1 response reader over a reusable buffer.
pub struct ResponseReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    body: Vec<u8>,
    state: State,
    /// Bytes of `buf` to drop before parsing the next response.
    pending: usize,
    chunked_body: bool,
    /// (status, index, body offset, body len, chunked) of the last response.
    last: Option<(u16, Option<u64>, usize, usize, bool)>,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    pub fn new() -> Self {
        ResponseReader {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            body: Vec::new(),
            state: State::Head,
            pending: 0,
            chunked_body: false,
            last: None,
        }
    }

    /// Reads until one whole response is buffered and returns it.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Resp<'_>, ReadError> {
        self.consume_last();
        loop {
            if let Some(done) = self.advance()? {
                return Ok(self.finish(done));
            }
            self.fill(r).await?;
        }
    }

    /// The next response if it is already buffered (no I/O).
    pub fn try_next(&mut self) -> Result<Option<Resp<'_>>, ReadError> {
        self.consume_last();
        match self.advance()? {
            Some(done) => Ok(Some(self.finish(done))),
            None => Ok(None),
        }
    }

    /// Drops the previously returned response from the buffers.
    fn consume_last(&mut self) {
        if self.last.take().is_some() {
            self.start += self.pending;
            self.pending = 0;
            self.body.clear();
        }
    }

    /// Feeds bytes directly (tests): returns a response if one is complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Resp<'_>>, ReadError> {
        self.consume_last();
        self.make_room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
        match self.advance()? {
            Some(done) => Ok(Some(self.finish(done))),
            None => Ok(None),
        }
    }

    fn finish(&mut self, done: Done) -> Resp<'_> {
        let (status, etcd_index, off, len) = done;
        self.state = State::Head;
        let chunked = std::mem::take(&mut self.chunked_body);
        if !chunked {
            self.pending = off + len - self.start;
        }
        self.last = Some((status, etcd_index, off, len, chunked));
        self.last()
    }

    /// The response most recently returned by [`ResponseReader::next`] again.
    ///
    /// # Panics
    /// If no response has been read yet.
    pub fn last(&self) -> Resp<'_> {
        let (status, etcd_index, off, len, chunked) = self.last.expect("a response was read");
        let body = if chunked {
            &self.body[..]
        } else {
            &self.buf[off..off + len]
        };
        Resp {
            status,
            etcd_index,
            body,
        }
    }

    fn make_room(&mut self, want: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            let new_len = (self.end + want).max(self.buf.len() * 2);
            self.buf.resize(new_len, 0);
        }
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), ReadError> {
        let want = match self.state {
            State::Fixed { head, len, .. } => (self.start + head + len)
                .saturating_sub(self.end)
                .max(16 * 1024),
            _ => 16 * 1024,
        };
        self.make_room(want);
        let n = r.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        self.end += n;
        Ok(())
    }

    /// Advances the state machine over buffered bytes. Returns
    /// `(status, index, body offset, body len)` when a response is complete; for
    /// chunked bodies the offset/len are unused (the body is in `self.body`).
    fn advance(&mut self) -> Result<Option<Done>, ReadError> {
        loop {
            match self.state {
                State::Head => {
                    let avail = &self.buf[self.start..self.end];
                    if avail.is_empty() {
                        return Ok(None);
                    }
                    let mut headers = [httparse::EMPTY_HEADER; 24];
                    let mut resp = httparse::Response::new(&mut headers);
                    let head = match resp.parse(avail) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => {
                            if avail.len() > 64 * 1024 {
                                return Err(ReadError::Parse("response head over 64 KiB"));
                            }
                            return Ok(None);
                        }
                        Err(_) => return Err(ReadError::Parse("malformed response head")),
                    };
                    let status = resp.code.unwrap_or(0);
                    let mut len = None;
                    let mut chunked = false;
                    let mut index = None;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            len = parse_u64(h.value).map(|v| v as usize);
                            if len.is_none() {
                                return Err(ReadError::Parse("bad Content-Length"));
                            }
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = memchr::memmem::find(h.value, b"chunked").is_some();
                        } else if h.name.eq_ignore_ascii_case("x-etcd-index") {
                            index = parse_u64(h.value);
                        }
                    }
                    if chunked {
                        self.start += head;
                        self.chunked_body = true;
                        self.state = State::Chunked {
                            status,
                            index,
                            left: None,
                            crlf: false,
                        };
                    } else {
                        // 1xx/204/304 carry no body; otherwise no length means
                        // read-to-close, which a keep-alive server never sends.
                        let len = match (len, status) {
                            (Some(l), _) => l,
                            (None, 100..=199 | 204 | 304) => 0,
                            (None, _) => return Err(ReadError::Parse("response without length")),
                        };
                        self.state = State::Fixed {
                            status,
                            index,
                            head,
                            len,
                        };
                    }
                }
                State::Fixed {
                    status,
                    index,
                    head,
                    len,
                } => {
                    if self.end - self.start >= head + len {
                        return Ok(Some((status, index, self.start + head, len)));
                    }
                    return Ok(None);
                }
                State::Chunked {
                    status,
                    index,
                    left,
                    crlf,
                } => {
                    let avail = &self.buf[self.start..self.end];
                    if crlf {
                        if avail.len() < 2 {
                            return Ok(None);
                        }
                        if &avail[..2] != b"\r\n" {
                            return Err(ReadError::Parse("missing CRLF after chunk"));
                        }
                        self.start += 2;
                        self.state = State::Chunked {
                            status,
                            index,
                            left: None,
                            crlf: false,
                        };
                        continue;
                    }
                    match left {
                        None => match httparse::parse_chunk_size(avail) {
                            Ok(httparse::Status::Complete((used, 0))) => {
                                // Last chunk: no trailers expected, just CRLF; skip any trailers.
                                let rest = &avail[used..];
                                if rest.len() >= 2 && &rest[..2] == b"\r\n" {
                                    self.start += used + 2;
                                    return Ok(Some((status, index, 0, 0)));
                                }
                                match memchr::memmem::find(rest, b"\r\n\r\n") {
                                    Some(p) => {
                                        self.start += used + p + 4;
                                        return Ok(Some((status, index, 0, 0)));
                                    }
                                    None => return Ok(None),
                                }
                            }
                            Ok(httparse::Status::Complete((used, size))) => {
                                self.start += used;
                                self.state = State::Chunked {
                                    status,
                                    index,
                                    left: Some(size as usize),
                                    crlf: false,
                                };
                            }
                            Ok(httparse::Status::Partial) => return Ok(None),
                            Err(_) => return Err(ReadError::Parse("bad chunk size")),
                        },
                        Some(n) => {
                            if avail.is_empty() {
                                return Ok(None);
                            }
                            let take = n.min(avail.len());
                            self.body.extend_from_slice(&avail[..take]);
                            self.start += take;
                            let left = n - take;
                            self.state = if left == 0 {
                                State::Chunked {
                                    status,
                                    index,
                                    left: None,
                                    crlf: true,
                                }
                            } else {
                                State::Chunked {
                                    status,
                                    index,
                                    left: Some(left),
                                    crlf: false,
                                }
                            };
                        }
                    }
                }
            }
        }
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_slot_is_patched_in_place() {
        let t = Template::new("PUT", "h", "/v2/keys/a/k{n}", Some("value=x&ttl=30"), 6);
        let mut out = Vec::new();
        t.write(42, &mut out);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(
            s.starts_with("PUT /v2/keys/a/k000042 HTTP/1.1\r\nHost: h\r\n"),
            "{s}"
        );
        assert!(s.ends_with("Content-Length: 14\r\n\r\nvalue=x&ttl=30"));
        t.write(1_234_567, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("/k234567 "), "lowest digits win: {s}");
    }

    #[test]
    fn get_template_has_no_body() {
        let t = Template::new("GET", "h:1", "/v2/keys/x?recursive=true", None, 0);
        assert_eq!(
            t.bytes(),
            b"GET /v2/keys/x?recursive=true HTTP/1.1\r\nHost: h:1\r\n\r\n"
        );
    }

    #[test]
    fn form_escape_matches_go() {
        assert_eq!(form_escape("0,RUNNING,1.0,a-b"), "0%2CRUNNING%2C1.0%2Ca-b");
        assert_eq!(form_escape("{\"t\":1}"), "%7B%22t%22%3A1%7D");
    }

    #[test]
    fn reads_fixed_and_pipelined() {
        let mut r = ResponseReader::new();
        let one = b"HTTP/1.1 201 Created\r\nX-Etcd-Index: 7\r\nContent-Length: 2\r\n\r\n{}";
        let mut both = one.to_vec();
        both.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        let resp = r.feed(&both[..10]).unwrap();
        assert!(resp.is_none());
        let resp = r.feed(&both[10..]).unwrap().unwrap();
        assert_eq!(
            (resp.status, resp.etcd_index, resp.body),
            (201, Some(7), &b"{}"[..])
        );
        let resp = r.feed(b"").unwrap().unwrap();
        assert_eq!((resp.status, resp.body), (200, &b"abc"[..]));
    }

    #[test]
    fn reads_chunked_split_anywhere() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        for split in 1..wire.len() {
            let mut r = ResponseReader::new();
            let mut fed_all = false;
            let first = r
                .feed(&wire[..split])
                .unwrap()
                .map(|x| (x.status, x.body.to_vec()));
            let (status, body) = match first {
                Some(x) => x,
                None => {
                    fed_all = true;
                    let x = r.feed(&wire[split..]).unwrap().unwrap();
                    (x.status, x.body.to_vec())
                }
            };
            assert_eq!(
                (status, &body[..]),
                (200, &b"hello world"[..]),
                "split {split}"
            );
            // The 404 follows, either already buffered or in the rest of the wire.
            let rest: &[u8] = if fed_all { b"" } else { &wire[split..] };
            let second = r.feed(rest).unwrap().expect("second response");
            assert_eq!(second.status, 404, "split {split}");
        }
    }

    #[test]
    fn rejects_garbage() {
        let mut r = ResponseReader::new();
        assert!(matches!(
            r.feed(b"NOT HTTP AT ALL\r\n\r\n"),
            Err(ReadError::Parse(_))
        ));
    }
}
