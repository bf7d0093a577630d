//! Writing HTTP/1.1 responses into a connection's output buffer.
//!
//! Handlers append a status line and headers with [`Response`], then finish
//! with a body (sized with `Content-Length`) or switch to chunked framing for
//! watches. Everything is appended to one buffer, the connection's
//! [`Output`], so a batch of pipelined responses leaves in one write. A
//! large body goes into the executor's spare buffer
//! ([`crate::executor::reserve`]) rather than fresh memory; a body
//! rendered in place leaves room in front of it for its head
//! ([`HEAD_ROOM`], [`Response::length_only`]), and the unused part of that
//! room is never sent.

use crate::executor::reserve;

/// A connection's output: response bytes waiting to be sent. It derefs to
/// the byte buffer responses are appended to; a response rendered in place
/// may leave unused room at the front ([`Output::skip_front`]), which is
/// never sent.
#[derive(Debug, Default)]
pub struct Output {
    buf: Vec<u8>,
    skip: usize,
}

impl Output {
    pub fn with_capacity(n: usize) -> Output {
        Output {
            buf: Vec::with_capacity(n),
            skip: 0,
        }
    }

    /// The bytes to send.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.skip.min(self.buf.len())..]
    }

    /// Everything was sent.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.skip = 0;
    }

    /// The first `n` bytes are not part of the output (the room left in
    /// front of a response rendered in place). Only while they are all
    /// there is: a response in place starts an empty output.
    pub fn skip_front(&mut self, n: usize) {
        debug_assert!(self.skip == 0 && n <= self.buf.len());
        self.skip = n;
    }

    /// Take the buffer (to give it back), leaving an empty output.
    pub fn take(&mut self) -> Vec<u8> {
        self.skip = 0;
        std::mem::take(&mut self.buf)
    }
}

impl std::ops::Deref for Output {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for Output {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

/// Room left in front of a body rendered in place for its status line and
/// headers ([`Response::length_only`]).
pub const HEAD_ROOM: usize = 1024;

/// The reason phrase Go's net/http uses for each status.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

pub const JSON: &[u8] = b"application/json";
const CORS: &[u8] = b"Access-Control-Allow-Headers: accept, content-type, authorization\r\nAccess-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\nAccess-Control-Allow-Origin: *\r\n";
pub const TEXT: &[u8] = b"text/plain; charset=utf-8";

/// A response being written into `out`.
pub struct Response<'o> {
    out: &'o mut Vec<u8>,
}

impl<'o> Response<'o> {
    /// Start with the status line and the CORS headers etcd 3.4 sends on
    /// every response (its `--cors` default is `*`).
    pub fn start(out: &'o mut Vec<u8>, http11: bool, status: u16) -> Response<'o> {
        let r = Response::start_bare(out, http11, status);
        r.out.extend_from_slice(CORS);
        r
    }

    /// Start with the status line only.
    pub fn start_bare(out: &'o mut Vec<u8>, http11: bool, status: u16) -> Response<'o> {
        out.extend_from_slice(if http11 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        Response { out }
    }

    pub fn header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn header_u64(&mut self, name: &str, v: u64) -> &mut Self {
        self.header(name, itoa::Buffer::new().format(v).as_bytes())
    }

    /// Close the head with `Content-Length` and append `body` (unless this
    /// answers a HEAD request, which gets the length but no body).
    pub fn body(self, body: &[u8], head_only: bool) {
        if !head_only && body.len() > 4096 {
            reserve(self.out, body.len() + 40);
        }
        self.out.extend_from_slice(b"Content-Length: ");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        if !head_only {
            self.out.extend_from_slice(body);
        }
    }

    /// Close the head with `Content-Length: len`, for a body that is
    /// already in place after it.
    pub fn length_only(self, len: usize) {
        self.out.extend_from_slice(b"Content-Length: ");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
    }

    /// Close the head for a chunked body (watches).
    pub fn chunked(self) {
        self.out
            .extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    }

    /// Close the head of a body that runs until the connection closes
    /// (HTTP/1.0 watches).
    pub fn until_close(self) {
        self.out.extend_from_slice(b"Connection: close\r\n\r\n");
    }
}

/// Append one chunk of a chunked body.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Room for a chunk's size line in front of data not yet rendered
/// ([`open_chunk`]): eight hex digits (leading zeros are allowed) and CRLF.
const CHUNK_ROOM: &[u8] = b"00000000\r\n";

/// Open a chunk whose data is rendered straight after it: returns where
/// its size line starts, for [`close_chunk`].
pub fn open_chunk(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(CHUNK_ROOM);
    out.len() - CHUNK_ROOM.len()
}

/// Close the chunk opened at `at`: write its size, or take it away if
/// nothing was rendered into it (an empty chunk would end the body).
pub fn close_chunk(out: &mut Vec<u8>, at: usize) {
    let n = out.len() - at - CHUNK_ROOM.len();
    if n == 0 {
        out.truncate(at);
        return;
    }
    write_size(&mut out[at..at + 8], n);
    out.extend_from_slice(b"\r\n");
}

/// Append the size line of a chunk of `n` bytes whose data is elsewhere
/// (eight hex digits, as [`open_chunk`] leaves room for).
pub fn chunk_size(out: &mut Vec<u8>, n: usize) {
    let at = out.len();
    out.extend_from_slice(CHUNK_ROOM);
    write_size(&mut out[at..at + 8], n);
}

/// `n` as eight hex digits, leading zeros included.
fn write_size(digits: &mut [u8], n: usize) {
    debug_assert!(n <= u32::MAX as usize, "a chunk under 4 GiB");
    for (i, d) in digits.iter_mut().rev().enumerate() {
        *d = b"0123456789abcdef"[(n >> (4 * i)) & 0xf];
    }
}

/// Append the last chunk.
pub fn last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

/// A plain-text error with `Connection: close` (malformed requests).
pub fn plain_close(out: &mut Vec<u8>, status: u16, msg: &str) {
    let body = format!("{status} {}: {msg}", reason(status));
    let mut r = Response::start(out, true, status);
    r.header("Content-Type", TEXT)
        .header("Connection", b"close");
    r.body(body.as_bytes(), false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks rendered in place (size line first, filled in after) and
    /// one whose size line is written ahead of data kept elsewhere decode,
    /// with the front end's own chunk decoder, to the data; a chunk nothing
    /// was rendered into is taken away (an empty chunk would end the body).
    #[test]
    fn chunks_rendered_in_place_decode_to_their_data() {
        let parts: [&[u8]; 4] = [b"{\"action\":", b"", &[b'x'; 4099], b"}\n"];
        let mut out = Vec::new();
        for p in parts {
            let at = open_chunk(&mut out);
            out.extend_from_slice(p);
            close_chunk(&mut out, at);
        }
        let elsewhere = [b'y'; 300];
        chunk_size(&mut out, elsewhere.len());
        out.extend_from_slice(&elsewhere);
        out.extend_from_slice(b"\r\n");
        last_chunk(&mut out);
        assert!(out.starts_with(b"0000000a\r\n{\"action\":\r\n00001003\r\n"));
        let mut body = Vec::new();
        let n = crate::http::request::decode_chunked(&out, &mut body, 1 << 20);
        assert_eq!(n.ok().flatten(), Some(out.len()));
        let want: Vec<u8> = parts.concat().into_iter().chain(elsewhere).collect();
        assert_eq!(body, want);
    }

    /// A body rendered in place behind room for its head is sent as the
    /// same bytes as one written after its head; the room in front never
    /// leaves, and an emptied output starts from nothing again.
    #[test]
    fn a_body_in_place_is_sent_as_if_written_after_its_head() {
        let body = b"{\"action\":\"get\"}\n";
        let mut usual = Vec::new();
        let mut r = Response::start(&mut usual, true, 200);
        r.header("Content-Type", JSON);
        r.body(body, false);

        let mut out = Output::with_capacity(16);
        out.resize(HEAD_ROOM, 0);
        out.extend_from_slice(body);
        let mut head = Vec::new();
        let mut r = Response::start(&mut head, true, 200);
        r.header("Content-Type", JSON);
        r.length_only(body.len());
        out[HEAD_ROOM - head.len()..HEAD_ROOM].copy_from_slice(&head);
        out.skip_front(HEAD_ROOM - head.len());
        assert_eq!(out.pending(), &usual[..]);
        // Pipelined responses after it follow it.
        out.extend_from_slice(b"next");
        assert!(out.pending().ends_with(b"next") && out.pending().starts_with(b"HTTP/1.1 200"));
        out.clear();
        assert!(out.pending().is_empty());
        out.extend_from_slice(b"HTTP");
        assert_eq!(out.pending(), b"HTTP");
    }
}
