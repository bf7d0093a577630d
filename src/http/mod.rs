//! The HTTP/1.1 front end: accepting connections and running each one.
//!
//! Bytes arrive from a glommio `TcpStream`, or TLS over it on an https://
//! listener ([`crate::tls`]), into one buffer per connection;
//! heads are parsed in place ([`request`]), bodies are taken by
//! Content-Length or chunked framing, and each request is handed to a
//! [`Service`] as a borrowed [`Request`]. Responses are appended to one
//! output buffer and written once per batch of pipelined requests (a large
//! one in slices of [`WRITE_SLICE`], the executor's other work running
//! between them); a body the service renders part by part
//! ([`Service::next_part`]) is sent a part at a time as the client takes
//! it, for at most [`STREAM_PATIENCE`]. Requests
//! are handled one at a time, as etcd's Go server does: a request waiting on
//! raft is answered before the next one on its connection starts, so
//! pipelined requests take effect, and are answered, in request order.
//! Limits (head size, body size, connections, head deadline, idle time) are
//! enforced here; malformed input is answered with 400/413/431 and the
//! connection is closed.
//!
//! Memory per connection is bounded: once a connection's unsent output
//! passes [`OUTPUT_HIGH`], it stops handling its next requests until that
//! output is written (a client that pipelines and never reads holds at most
//! one response plus [`OUTPUT_HIGH`]); a write that makes no progress for
//! the idle timeout closes the connection; buffers grown by one large
//! request or response are given back afterwards. A connection that has
//! sent nothing is closed after the head timeout, not the idle timeout.

pub mod request;
pub mod response;

pub use response::Output;

use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tls::Stream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

use request::{decode_chunked, parse_head, HeadError};
pub use request::{Framing, Head, Method};
use response::plain_close;

/// Unsent output at which a connection stops handling pipelined requests
/// until the client has read it.
pub const OUTPUT_HIGH: usize = 1 << 20;

/// Buffer capacity a connection keeps between requests; anything larger
/// that one request or response needed is given back.
const KEEP_CAPACITY: usize = 64 << 10;
/// Largest single send: a bigger response is written in slices this size.
const WRITE_SLICE: usize = 1 << 20;

/// Explicit, configurable limits of the front end.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head: usize,
    pub max_body: usize,
    pub max_connections: usize,
    /// A request head must arrive completely within this time.
    pub head_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 1 << 20,
            max_body: 10 << 20,
            max_connections: 10_000,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// One request, borrowing the connection's buffers.
pub struct Request<'a> {
    pub head: Head<'a>,
    /// Percent-decoded path.
    pub path: &'a [u8],
    pub body: &'a [u8],
    /// Common names of the client's verified TLS certificates
    /// ([`Stream::client_names`]).
    pub client_names: &'a [String],
}

/// What a service did with a request.
pub enum Handled<P, W> {
    /// The response is in the output buffer.
    Done,
    /// The response is in the output buffer; close afterwards.
    Close,
    /// The response waits on `P` (a replicated write).
    Pending(P),
    /// Response headers are in the buffer; stream events from `W`.
    Watch(W),
    /// Nothing is written yet: settle `P` ([`Service::settle`], e.g. check
    /// a password off the executor), then handle the request again.
    Again(P),
}

/// What [`Service::next_part`] appended of a body sent as it is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A part; more follow.
    More,
    /// The last part, with the body's end.
    Last,
    /// The body cannot be finished: the connection closes after what was
    /// appended, so the client sees it cut short.
    Broken,
}

/// How long a body sent as it is rendered ([`Service::next_part`]) is
/// rendered at the client's pace: whatever is left after this is rendered
/// at once and waits in memory (a part may read from something the service
/// must not hold for long: a listing's LMDB read view keeps the pages it
/// sees from being reused).
pub const STREAM_PATIENCE: Duration = Duration::from_secs(1);

/// Times one request may be handled [`Handled::Again`] before it is
/// refused (a service that asks again must be making progress).
const MAX_AGAIN: usize = 4;

/// An application served over HTTP.
pub trait Service: 'static {
    type Pending;
    type Watch;
    /// A response body rendered part by part as the client takes it.
    type Body;
    /// One watch event's body bytes.
    type Event: AsRef<[u8]>;
    /// Handle a request: write the response, or return what to wait for.
    fn handle(&self, req: &Request<'_>, out: &mut Output) -> Handled<Self::Pending, Self::Watch>;
    /// Write the response of a pending request once it resolves; or its
    /// head and first part, and return the body to send the rest of
    /// ([`Service::next_part`]).
    fn complete(
        &self,
        p: Self::Pending,
        out: &mut Output,
    ) -> impl Future<Output = Option<Self::Body>>;
    /// Append the next part of `b` to `out` (with its framing).
    fn next_part(&self, b: &mut Self::Body, out: &mut Vec<u8>) -> impl Future<Output = Part>;
    /// Do what a [`Handled::Again`] asked for; writes nothing.
    fn settle(&self, p: Self::Pending) -> impl Future<Output = ()>;
    /// The next event body of a watch; `None` ends the watch.
    fn next_event(&self, w: &mut Self::Watch) -> impl Future<Output = Option<Self::Event>>;
    /// Whether the watch keeps streaming after one event.
    fn is_stream(&self, w: &Self::Watch) -> bool;
    /// The client went away: unregister the watch.
    fn cancel(&self, w: Self::Watch);
}

/// Accept connections on `listener` forever, one task each; with `tls`,
/// each connection is a TLS handshake first (within the head timeout).
pub async fn serve<S: Service>(
    listener: TcpListener,
    svc: Rc<S>,
    limits: Rc<Limits>,
    open: Arc<AtomicUsize>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(futures_rustls::TlsAcceptor::from);
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // The cap is member-wide: every executor counts in `open`.
        if open.fetch_add(1, Ordering::Relaxed) >= limits.max_connections {
            open.fetch_sub(1, Ordering::Relaxed);
            // Over the cap: refuse politely (in plain HTTP) and close.
            if acceptor.is_none() {
                let mut out = Vec::new();
                let mut s = stream;
                plain_close(&mut out, 503, "too many connections");
                let _ = s.write_all(&out).await;
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        // A client that stops reading cannot hold a response (and its
        // connection) forever.
        let _ = stream.set_write_timeout(Some(limits.idle_timeout));
        let (svc, limits, open) = (svc.clone(), limits.clone(), open.clone());
        let acceptor = acceptor.clone();
        glommio::spawn_local(async move {
            let stream = match acceptor {
                None => Some(Stream::Plain(stream)),
                Some(a) => {
                    let _ = stream.set_read_timeout(Some(limits.head_timeout));
                    match a.accept(stream).await {
                        Ok(s) => Some(Stream::Tls(Box::new(s))),
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            None
                        }
                    }
                }
            };
            if let Some(stream) = stream {
                Conn::new(stream).run(&*svc, &limits).await;
            }
            open.fetch_sub(1, Ordering::Relaxed);
        })
        .detach();
    }
}

struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Output,
    path: Vec<u8>,
    body: Vec<u8>,
    client_names: Vec<String>,
}

enum Step {
    Continue,
    Close,
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn {
            client_names: stream.client_names(),
            stream,
            buf: vec![0; 16 << 10],
            start: 0,
            end: 0,
            out: Output::with_capacity(16 << 10),
            path: Vec::new(),
            body: Vec::new(),
        }
    }

    async fn run<S: Service>(mut self, svc: &S, limits: &Limits) {
        // The request waiting on raft, if any (one at a time per connection).
        let mut pending: VecDeque<S::Pending> = VecDeque::new();
        // When the current request's first byte arrived; a new connection
        // counts as a request under way (a silent one gets the head timeout).
        let mut head_started: Option<Instant> = Some(Instant::now());
        let mut silent = true;
        loop {
            // Handle the complete requests in the buffer, until the output
            // waiting for the client passes its bound.
            let mut backlog = false;
            loop {
                if self.start == self.end {
                    if !silent {
                        head_started = None;
                    }
                    break;
                }
                silent = false;
                head_started.get_or_insert_with(Instant::now);
                match self.step(svc, limits, &mut pending).await {
                    Ok(Some(Step::Continue)) => {
                        head_started = None;
                        if self.out.len() >= OUTPUT_HIGH {
                            backlog = self.start != self.end;
                            break;
                        }
                    }
                    Ok(Some(Step::Close)) => {
                        if self.drain(svc, &mut pending).await.is_ok() {
                            let _ = self.flush().await;
                        }
                        return;
                    }
                    Ok(None) => break,
                    Err(()) => return,
                }
            }
            if self.drain(svc, &mut pending).await.is_err() || self.flush().await.is_err() {
                return;
            }
            self.shrink();
            if backlog {
                // Requests are still buffered: answer them before reading.
                continue;
            }
            // Read more.
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                // Give back the memory of an unusually large request.
                if self.buf.len() > 64 << 10 {
                    self.buf.truncate(16 << 10);
                    self.buf.shrink_to_fit();
                }
            } else if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let cap = limits.max_head + limits.max_body + 64;
                if self.buf.len() >= cap {
                    plain_close(&mut self.out, 431, "request too large");
                    let _ = self.flush().await;
                    return;
                }
                let n = (self.buf.len() * 2).min(cap);
                self.buf.resize(n, 0);
            }
            let timeout = match head_started {
                Some(t) => match limits.head_timeout.checked_sub(t.elapsed()) {
                    Some(d) if !d.is_zero() => d,
                    _ => {
                        if !(silent && self.end == 0) {
                            plain_close(&mut self.out, 408, "request head timeout");
                            let _ = self.flush().await;
                        }
                        return;
                    }
                },
                None => limits.idle_timeout,
            };
            let _ = self.stream.tcp().set_read_timeout(Some(timeout));
            match self.stream.read(&mut self.buf[self.end..]).await {
                Ok(0) => return,
                Ok(n) => self.end += n,
                Err(_) => {
                    // A connection that never sent a byte is closed
                    // without an answer, as Go's server does.
                    if head_started.is_some() && !(silent && self.end == 0) {
                        plain_close(&mut self.out, 408, "request head timeout");
                        let _ = self.flush().await;
                    }
                    return;
                }
            }
        }
    }

    /// Give back the memory a large response or chunked body needed (a
    /// large output buffer becomes the executor's spare).
    fn shrink(&mut self) {
        if self.out.capacity() > KEEP_CAPACITY && self.out.is_empty() {
            crate::executor::give_back(self.out.take());
        }
        if self.body.capacity() > KEEP_CAPACITY && self.body.is_empty() {
            self.body = Vec::new();
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let r = write_out(&mut self.stream, self.out.pending()).await;
            self.out.clear();
            r?;
        }
        Ok(())
    }

    /// Send a body the service renders part by part as the client takes
    /// it: the next part is rendered once the last one is with the kernel,
    /// so a client that keeps reading costs one part of memory however
    /// large the body. After [`STREAM_PATIENCE`] the rest is rendered at
    /// once (while a send still waits for the client, if it does) and sent
    /// from memory, as any response. `Err`: the client is gone or the body
    /// broke off (the connection closes).
    async fn stream_body<S: Service>(&mut self, svc: &S, mut b: S::Body) -> Result<(), ()> {
        let deadline = Instant::now() + STREAM_PATIENCE;
        loop {
            let mut rest = None;
            let sent = {
                let mut send = std::pin::pin!(write_out(&mut self.stream, self.out.pending()));
                let wait = deadline.saturating_duration_since(Instant::now());
                let late = async {
                    glommio::timer::sleep(wait).await;
                    None
                };
                match futures_lite::future::or(async { Some((&mut send).await) }, late).await {
                    Some(r) => r,
                    None => {
                        // (In the executor's spare buffer, if it keeps one.)
                        let mut buf = Vec::new();
                        crate::executor::reserve(&mut buf, 1);
                        rest = Some((render_rest(svc, &mut b, &mut buf).await, buf));
                        send.await
                    }
                }
            };
            self.out.clear();
            sent.map_err(drop)?;
            let part = match rest {
                Some((part, buf)) => {
                    crate::executor::give_back(std::mem::replace(&mut *self.out, buf));
                    part
                }
                None if Instant::now() >= deadline => render_rest(svc, &mut b, &mut self.out).await,
                None => svc.next_part(&mut b, &mut self.out).await,
            };
            match part {
                Part::More => {}
                Part::Last => return Ok(()),
                Part::Broken => {
                    let _ = self.flush().await;
                    return Err(());
                }
            }
        }
    }

    /// Answer queued requests, in order, writing the output out whenever it
    /// passes [`OUTPUT_HIGH`] (so a queue of large reads holds one at a
    /// time). `Err`: the client is gone.
    async fn drain<S: Service>(
        &mut self,
        svc: &S,
        pending: &mut VecDeque<S::Pending>,
    ) -> Result<(), ()> {
        while let Some(p) = pending.pop_front() {
            if let Some(b) = svc.complete(p, &mut self.out).await {
                self.stream_body(svc, b).await?;
            }
            if self.out.len() >= OUTPUT_HIGH {
                self.flush().await.map_err(|_| ())?;
            }
        }
        Ok(())
    }

    /// Parse and handle one request. `Ok(None)`: need more bytes.
    async fn step<S: Service>(
        &mut self,
        svc: &S,
        limits: &Limits,
        pending: &mut VecDeque<S::Pending>,
    ) -> Result<Option<Step>, ()> {
        // One request at a time, as etcd's Go server handles a connection:
        // a pipelined request starts once the one before it is answered, so
        // a read sees the writes sent before it and pipelined writes take
        // their indexes in request order (writes to different shards, or
        // one that becomes member-wide, could otherwise overtake each other).
        if !pending.is_empty() {
            self.drain(svc, pending).await?;
        }
        // Go accepts raw bytes >= 0x80 in the request target; httparse does
        // not. Percent-encode them in place (they are decoded again with the
        // path), a slow path only such requests take.
        if matches!(
            parse_head(&self.buf[self.start..self.end]),
            Err(HeadError::Bad(_))
        ) {
            self.escape_high_bytes_in_target();
        }
        let avail = &self.buf[self.start..self.end];
        let head = match parse_head(avail) {
            Ok(Some(h)) => h,
            Ok(None) => {
                if avail.len() > limits.max_head {
                    return self
                        .refuse(svc, pending, 431, "request head too large")
                        .await;
                }
                return Ok(None);
            }
            Err(HeadError::TooLarge) => {
                return self.refuse(svc, pending, 431, "too many headers").await
            }
            Err(HeadError::Unsupported) => {
                return self
                    .refuse(svc, pending, 501, "unsupported transfer encoding")
                    .await
            }
            Err(HeadError::Bad(why)) => return self.refuse(svc, pending, 400, why).await,
        };
        if head.len > limits.max_head {
            return self
                .refuse(svc, pending, 431, "request head too large")
                .await;
        }
        let head_len = head.len;
        let keep_alive = head.keep_alive;
        let http11 = head.http11;
        // Body.
        let (body_range, consumed) = match head.framing {
            Framing::None => ((0, 0), head_len),
            Framing::Length(n) => {
                if n > limits.max_body {
                    return self
                        .refuse(svc, pending, 413, "request body too large")
                        .await;
                }
                if avail.len() < head_len + n {
                    if head.expect_continue && avail.len() == head_len {
                        self.drain(svc, pending).await?;
                        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        self.flush().await.map_err(|_| ())?;
                    }
                    return Ok(None);
                }
                ((head_len, head_len + n), head_len + n)
            }
            Framing::Chunked => {
                match decode_chunked(&avail[head_len..], &mut self.body, limits.max_body) {
                    Ok(Some(n)) => ((usize::MAX, 0), head_len + n),
                    Ok(None) => {
                        if head.expect_continue && avail.len() == head_len {
                            self.drain(svc, pending).await?;
                            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            self.flush().await.map_err(|_| ())?;
                        }
                        return Ok(None);
                    }
                    Err(HeadError::TooLarge) => {
                        return self
                            .refuse(svc, pending, 413, "request body too large")
                            .await
                    }
                    Err(HeadError::Bad(why)) => return self.refuse(svc, pending, 400, why).await,
                    Err(HeadError::Unsupported) => unreachable!("chunk decoding"),
                }
            }
        };
        if !request::decode_path(head.raw_path, &mut self.path) {
            return self
                .refuse(svc, pending, 400, "invalid URL escape in path")
                .await;
        }
        let body: &[u8] = if body_range.0 == usize::MAX {
            &self.body
        } else {
            &avail[body_range.0..body_range.1]
        };
        let req = Request {
            head,
            path: &self.path,
            body,
            client_names: &self.client_names,
        };
        // Nothing is pending here (drained above): the answer goes straight
        // into the output, in request order.
        let mut handled = svc.handle(&req, &mut self.out);
        let mut rounds = 0;
        while let Handled::Again(p) = handled {
            rounds += 1;
            svc.settle(p).await;
            handled = if rounds < MAX_AGAIN {
                svc.handle(&req, &mut self.out)
            } else {
                plain_close(&mut self.out, 503, "request could not be settled");
                Handled::Close
            };
        }
        self.start += consumed;
        let step = match handled {
            Handled::Pending(p) => {
                pending.push_back(p);
                Step::Continue
            }
            Handled::Done => Step::Continue,
            Handled::Close | Handled::Again(_) => Step::Close,
            Handled::Watch(w) => {
                if !self.watch(svc, w, http11).await {
                    return Err(());
                }
                Step::Continue
            }
        };
        if !keep_alive {
            return Ok(Some(Step::Close));
        }
        Ok(Some(step))
    }

    /// Percent-encode bytes >= 0x80 in the request line's target.
    fn escape_high_bytes_in_target(&mut self) {
        let line_end = match self.buf[self.start..self.end]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(i) => self.start + i,
            None => return,
        };
        let line = &self.buf[self.start..line_end];
        let Some(sp1) = line.iter().position(|&b| b == b' ') else {
            return;
        };
        let Some(sp2) = line.iter().rposition(|&b| b == b' ') else {
            return;
        };
        if sp2 <= sp1 || !line[sp1..sp2].iter().any(|&b| b >= 0x80) {
            return;
        }
        let (t0, t1) = (self.start + sp1 + 1, self.start + sp2);
        let mut target = Vec::with_capacity((t1 - t0) * 3);
        for &b in &self.buf[t0..t1] {
            if b >= 0x80 {
                target.extend_from_slice(format!("%{b:02X}").as_bytes());
            } else {
                target.push(b);
            }
        }
        let grow = target.len() - (t1 - t0);
        let mut rest = self.buf[t1..self.end].to_vec();
        self.buf.truncate(t0);
        self.buf.extend_from_slice(&target);
        self.buf.append(&mut rest);
        self.end += grow;
        let len = self.buf.len().max(16 << 10);
        self.buf.resize(len, 0);
    }

    async fn refuse<S: Service>(
        &mut self,
        svc: &S,
        pending: &mut VecDeque<S::Pending>,
        status: u16,
        why: &str,
    ) -> Result<Option<Step>, ()> {
        self.drain(svc, pending).await?;
        plain_close(&mut self.out, status, why);
        let _ = self.flush().await;
        Err(())
    }

    /// Stream a watch: flush its headers, then send each event (as a chunk
    /// on HTTP/1.1) until the watch ends, or after one event for a one-shot
    /// watch. Returns false when the connection is gone or must close.
    async fn watch<S: Service>(&mut self, svc: &S, mut w: S::Watch, http11: bool) -> bool {
        if self.flush().await.is_err() {
            svc.cancel(w);
            return false;
        }
        let stream = svc.is_stream(&w);
        let _ = self.stream.tcp().set_read_timeout(None);
        loop {
            // Watch the socket too, so a client that leaves frees its watcher.
            if self.end == self.buf.len() {
                if self.end > 1 << 20 {
                    svc.cancel(w);
                    return false;
                }
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
            let wake = {
                let next = async { Wake::Event(svc.next_event(&mut w).await) };
                let read = async {
                    match self.stream.read(&mut self.buf[self.end..]).await {
                        Ok(0) | Err(_) => Wake::Closed,
                        Ok(n) => {
                            self.end += n;
                            Wake::Data
                        }
                    }
                };
                futures_lite::future::or(next, read).await
            };
            match wake {
                Wake::Closed => {
                    svc.cancel(w);
                    return false;
                }
                // Bytes of a later request: keep them, keep waiting.
                Wake::Data => {}
                Wake::Event(Some(body)) => {
                    if http11 {
                        response::chunk(&mut self.out, body.as_ref());
                    } else {
                        self.out.extend_from_slice(body.as_ref());
                    }
                    if !stream {
                        if http11 {
                            response::last_chunk(&mut self.out);
                        }
                        svc.cancel(w);
                        return self.flush().await.is_ok() && http11;
                    }
                    if self.flush().await.is_err() {
                        svc.cancel(w);
                        return false;
                    }
                }
                // The watcher was dropped (overflow or shutdown): end the body.
                Wake::Event(None) => {
                    if http11 {
                        response::last_chunk(&mut self.out);
                    }
                    svc.cancel(w);
                    return self.flush().await.is_ok() && http11;
                }
            }
        }
    }
}

/// Write `pending` to `stream`. A large output goes out a slice at a time,
/// with the executor's other work between slices: one send of tens of
/// megabytes to a client that keeps reading is one system call that holds
/// the executor until the last byte is out.
async fn write_out(stream: &mut Stream, pending: &[u8]) -> std::io::Result<()> {
    for (i, slice) in pending.chunks(WRITE_SLICE).enumerate() {
        if i > 0 {
            crate::executor::after_next_poll().await;
        }
        stream.write_all(slice).await?;
    }
    if stream.needs_flush() {
        // TLS records may wait in the session until flushed.
        stream.flush().await?;
    }
    Ok(())
}

/// Render every part of `b` left into `out`; the last one says how the
/// body ended ([`Part::Last`] or [`Part::Broken`]).
async fn render_rest<S: Service>(svc: &S, b: &mut S::Body, out: &mut Vec<u8>) -> Part {
    loop {
        match svc.next_part(b, out).await {
            Part::More => {}
            end => return end,
        }
    }
}

enum Wake<E> {
    Event(Option<E>),
    Data,
    Closed,
}
