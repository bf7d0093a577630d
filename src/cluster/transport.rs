//! The peer transport: raft messages between members over TCP.
//!
//! One outgoing connection per peer carries length-prefixed frames for all
//! shards; each peer has a bounded queue that drops messages when full
//! (raft retransmits), and a writer task that (re)connects with backoff.
//! Incoming connections are accepted on the peer listener; each opens with
//! a handshake naming the sender, then carries frames that are handed to a
//! [`Receiver`] (the raft side: `raft::join::Inbound`). The transport only
//! moves frames: it decides nothing about raft or membership. A connection
//! whose first frame is a join or lookup request (the 0.x `-peers` way) is
//! answered on the same connection with whatever the receiver replies; the
//! blocking client side of that exchange is [`super::bootstrap`].
//!
//! Frame: `u32 length` (of what follows), `u8 kind`, payload. Handshake:
//! `KRFT`, `u64 sender id`, `u64 cluster id`; a member's connection then
//! sends its shard layout ([`KIND_LAYOUT`]), and one from a member with
//! another layout is refused. The wire format is encoded and
//! decoded by the pure functions at the end of this file, which the async
//! reader and writer call and `tests/fuzz.rs` exercises.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::ToSocketAddrs;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use protobuf::Message as _;
use raft::eraftpb::Message;

use super::snapfile::{self, Descriptor, Incoming, KIND_SNAP_CHUNK};
use super::{Layout, View};
use crate::tls::Stream;

/// Where the transport hands what it receives from peers.
pub trait Receiver {
    /// A raft message for the group of shard `shard`.
    fn raft(&self, shard: u16, m: Message);
    /// A member said this one was removed from the cluster.
    fn removed(&self);
    /// The stream from peer `id` ended (its process most likely died).
    fn lost(&self, id: u64);
    /// A join ([`KIND_JOIN`], a member line) or lookup ([`KIND_LOOKUP`])
    /// request: the encoded cluster, or why not.
    fn request(
        &self,
        kind: u8,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>>>>;
}

const MAGIC: &[u8; 4] = b"KRFT";
/// A raft message: `u16 shard`, then the protobuf message.
pub const KIND_RAFT: u8 = 1;
/// A join request: a member line (see [`Member::encode`]).
pub const KIND_JOIN: u8 = 2;
/// A join reply: `u8 ok`, then the encoded cluster (ok) or a message.
pub const KIND_JOIN_REPLY: u8 = 3;
/// A membership lookup (no payload), answered like a join: a member added
/// through the members API asks before its first start.
pub const KIND_LOOKUP: u8 = 4;
/// "You were removed from the cluster" (no payload): sent to a removed
/// member, which may not have learnt it from the log.
pub const KIND_REMOVED: u8 = 5;
/// The sender's shard layout, right after the handshake: a [`Layout`]
/// line. A member whose layout differs refuses the connection, so members
/// that would place keys in different groups never exchange raft messages
/// (a statically bootstrapped member started with other `--shards` or
/// `--unit-depth` stays cut off, and says why).
/// (Kinds 6 and 7 are the snapshot file's, [`super::snapfile`].)
pub const KIND_LAYOUT: u8 = 8;
/// Queue bounds per peer: beyond these, messages are dropped.
const MAX_QUEUED: usize = 4096;
const MAX_QUEUED_BYTES: usize = 256 << 20;
/// Frames larger than this are refused (the largest raft message: a batch
/// of entries, one of which may be a 10 MiB value; snapshots travel as
/// 1 MiB chunks, see [`super::snapfile`]).
const MAX_FRAME: usize = 64 << 20;

/// One peer's outgoing queue.
struct Peer {
    /// Bytes written to it (`etcd_network_peer_sent_bytes_total`).
    sent: prometheus::IntCounter,
    queue: RefCell<VecDeque<Vec<u8>>>,
    bytes: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

impl Peer {
    /// Queue a frame for the writer and wake it.
    fn push(&self, frame: Vec<u8>) {
        self.bytes.set(self.bytes.get() + frame.len());
        self.queue.borrow_mut().push_back(frame);
        let waker = self.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Figures per peer, for `/v2/stats/leader`: messages the transport
/// dropped, append responses (accepted, rejected), and
/// heartbeat round trips in milliseconds.
#[derive(Default, Clone, Copy)]
pub struct PeerStats {
    pub dropped: u64,
    pub appends_ok: u64,
    pub appends_rejected: u64,
    /// When the heartbeat now awaiting its response was sent.
    pub heartbeat_at: Option<std::time::Instant>,
    pub rtt_count: u64,
    pub rtt_current: f64,
    pub rtt_mean: f64,
    /// Welford's running sum of squared deviations.
    pub rtt_m2: f64,
    pub rtt_min: f64,
    pub rtt_max: f64,
}

impl PeerStats {
    /// Record one heartbeat round trip.
    pub fn round_trip(&mut self, ms: f64) {
        self.rtt_count += 1;
        self.rtt_current = ms;
        let d = ms - self.rtt_mean;
        self.rtt_mean += d / self.rtt_count as f64;
        self.rtt_m2 += d * (ms - self.rtt_mean);
        self.rtt_min = if self.rtt_count == 1 {
            ms
        } else {
            self.rtt_min.min(ms)
        };
        self.rtt_max = self.rtt_max.max(ms);
    }

    pub fn rtt_stddev(&self) -> f64 {
        if self.rtt_count < 2 {
            0.0
        } else {
            (self.rtt_m2 / self.rtt_count as f64).sqrt()
        }
    }
}

/// This member's end of the peer transport (lives on shard 0's executor).
pub struct Transport {
    me: u64,
    cluster_id: u64,
    /// This member's layout (sent after the handshake, checked on receipt).
    layout: Layout,
    view: View,
    /// Where snapshot files from the leader are received (`incoming/`).
    snap_dir: std::path::PathBuf,
    peers: RefCell<HashMap<u64, Rc<Peer>>>,
    pub stats: RefCell<HashMap<u64, PeerStats>>,
    /// Append messages received and sent (`/v2/stats/self`).
    pub appends_received: Cell<u64>,
    pub appends_sent: Cell<u64>,
    /// The member's byte counters by peer (`/metrics`).
    bytes_sent: prometheus::IntCounterVec,
    bytes_received: prometheus::IntCounterVec,
    /// Peer TLS (`--peer-cert-file`): dial and accept through these.
    connector: Option<futures_rustls::TlsConnector>,
    acceptor: Option<futures_rustls::TlsAcceptor>,
}

impl Transport {
    /// Note what a raft message to or from a peer says about it.
    pub fn observe(&self, peer: u64, outgoing: bool, m: &Message) {
        use raft::eraftpb::MessageType as T;
        let mut stats = self.stats.borrow_mut();
        let st = stats.entry(peer).or_default();
        match (outgoing, m.get_msg_type()) {
            (true, T::MsgAppend) => self.appends_sent.set(self.appends_sent.get() + 1),
            (false, T::MsgAppend) => self.appends_received.set(self.appends_received.get() + 1),
            (true, T::MsgHeartbeat) if st.heartbeat_at.is_none() => {
                st.heartbeat_at = Some(std::time::Instant::now());
            }
            (false, T::MsgHeartbeatResponse) => {
                if let Some(t) = st.heartbeat_at.take() {
                    st.round_trip(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            (false, T::MsgAppendResponse) if m.reject => st.appends_rejected += 1,
            (false, T::MsgAppendResponse) => st.appends_ok += 1,
            _ => {}
        }
    }

    pub fn new(
        me: u64,
        cluster_id: u64,
        layout: Layout,
        view: View,
        snap_dir: std::path::PathBuf,
        metrics: &crate::metrics::Metrics,
        tls: Option<&crate::tls::PeerConfigs>,
    ) -> Rc<Transport> {
        // Files a crash left half received.
        let _ = std::fs::remove_dir_all(snap_dir.join("incoming"));
        Rc::new(Transport {
            me,
            cluster_id,
            layout: layout.normalized(),
            view,
            snap_dir,
            peers: RefCell::default(),
            stats: RefCell::default(),
            appends_received: Cell::new(0),
            appends_sent: Cell::new(0),
            bytes_sent: metrics.peer_sent.clone(),
            bytes_received: metrics.peer_received.clone(),
            connector: tls.map(|c| futures_rustls::TlsConnector::from(c.client.clone())),
            acceptor: tls.map(|c| futures_rustls::TlsAcceptor::from(c.server.clone())),
        })
    }

    /// Queue raft message `m` for its recipient; never blocks. False when
    /// the message was dropped (queue full).
    pub fn send(self: &Rc<Self>, shard: u16, m: &Message) -> bool {
        let peer = self.peer(m.to);
        let size = m.compute_size() as usize;
        if peer.queue.borrow().len() >= MAX_QUEUED || peer.bytes.get() + size + 7 > MAX_QUEUED_BYTES
        {
            self.stats.borrow_mut().entry(m.to).or_default().dropped += 1;
            return false;
        }
        let Some(frame) = encode_raft(shard, m, size) else {
            return false;
        };
        // A snapshot's file goes ahead of its message, streamed in chunks.
        if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            if let Some(d) = Descriptor::decode(m.get_snapshot().get_data()) {
                peer.push(snapfile::file_frame(&d));
            }
        }
        peer.push(frame);
        true
    }

    /// Tell member `to` that it was removed from the cluster.
    pub fn send_removed(self: &Rc<Self>, to: u64) {
        let mut frame = Vec::with_capacity(5);
        frame.extend_from_slice(&1u32.to_le_bytes());
        frame.push(KIND_REMOVED);
        self.peer(to).push(frame);
    }

    fn peer(self: &Rc<Self>, id: u64) -> Rc<Peer> {
        if let Some(p) = self.peers.borrow().get(&id) {
            return p.clone();
        }
        let p = Rc::new(Peer {
            sent: self.bytes_sent.with_label_values(&[&format!("{id:x}")]),
            queue: RefCell::default(),
            bytes: Cell::new(0),
            waker: RefCell::default(),
        });
        self.peers.borrow_mut().insert(id, p.clone());
        glommio::spawn_local(writer(self.clone(), id, p.clone())).detach();
        p
    }

    /// Where peer `id` listens, and the host name its certificate carries.
    fn peer_addr(&self, id: u64) -> Option<(std::net::SocketAddr, String)> {
        let view = self.view.read().ok()?;
        let m = view.get(id)?;
        let url = m.peer_urls.first()?;
        let hp = host_port(url);
        let host = hp.rsplit_once(':').map_or(hp, |(h, _)| h).to_string();
        Some((hp.to_socket_addrs().ok()?.next()?, host))
    }
}

/// `http://host:port/...` → `host:port`.
pub fn host_port(url: &str) -> &str {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// Keep a connection to peer `id` up and drain its queue into it.
async fn writer(t: Rc<Transport>, id: u64, p: Rc<Peer>) {
    let mut backoff = Duration::from_millis(20);
    let mut buf = Vec::new();
    loop {
        // A removed peer gets what is queued (the notice of its removal),
        // then nothing more.
        let removed = t
            .view
            .read()
            .map(|v| v.removed.contains(&id))
            .unwrap_or(false);
        if removed && p.queue.borrow().is_empty() {
            return;
        }
        let Some((addr, host)) = t.peer_addr(id) else {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let conn = glommio::net::TcpStream::connect_timeout(addr, Duration::from_millis(500)).await;
        let s = match conn {
            Ok(s) => s,
            Err(_) => {
                // While the peer is unreachable, keep only the newest messages.
                drop_old(&p, 64);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        user_timeout(&s);
        let mut s = match &t.connector {
            None => Stream::Plain(s),
            Some(c) => match dial_tls(c, &host, s).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(peer = %format!("{id:x}"), error = %e, "peer TLS handshake failed");
                    drop_old(&p, 64);
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let mut hello = encode_hello(t.me, t.cluster_id).to_vec();
        hello.extend_from_slice(&encode_layout(&t.layout));
        if s.write_all(&hello).await.is_err() || s.flush().await.is_err() {
            glommio::timer::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(20);
        tracing::debug!(peer = %format!("{id:x}"), "peer connected");
        loop {
            crate::shard::until_queued(&p.queue, &p.waker).await;
            buf.clear();
            let mut file = None;
            {
                let mut q = p.queue.borrow_mut();
                while let Some(f) = q.pop_front() {
                    if let Some(stream) = snapfile::decode_file_frame(&f) {
                        p.bytes.set(p.bytes.get().saturating_sub(f.len()));
                        file = Some(stream);
                        break;
                    }
                    buf.extend_from_slice(&f);
                    if buf.len() > 4 << 20 {
                        break;
                    }
                }
            }
            p.bytes.set(p.bytes.get().saturating_sub(buf.len()));
            if s.write_all(&buf).await.is_err() {
                break;
            }
            p.sent.inc_by(buf.len() as u64);
            if let Some((len, path)) = file {
                if let Err(e) = snapfile::send_file(&mut s, &path, len).await {
                    tracing::warn!(peer = %format!("{id:x}"), error = %e, "snapshot not sent");
                    break;
                }
            }
            if s.flush().await.is_err() {
                break;
            }
        }
    }
}

/// Data unacknowledged this long breaks a peer connection.
const PEER_USER_TIMEOUT_MS: u32 = 3000;

/// Make a stalled peer connection fail instead of waiting for TCP's
/// retransmissions (which back off to minutes through a partition): the
/// writer then reconnects, so a member cut off for a long time is reached
/// again within about a second of the network healing.
fn user_timeout(s: &glommio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let ms = PEER_USER_TIMEOUT_MS;
    // SAFETY: a valid socket descriptor and a u32 option value of its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_USER_TIMEOUT not set");
    }
}

fn drop_old(p: &Peer, keep: usize) {
    let mut q = p.queue.borrow_mut();
    while q.len() > keep {
        if let Some(f) = q.pop_front() {
            p.bytes.set(p.bytes.get().saturating_sub(f.len()));
        }
    }
}

/// Accept peer connections on `l` and hand their frames to `rx`.
pub async fn serve(l: glommio::net::TcpListener, t: Rc<Transport>, rx: Rc<dyn Receiver>) {
    loop {
        match l.accept().await {
            Ok(s) => {
                glommio::spawn_local(reader(s, t.clone(), rx.clone())).detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A peer connection read through a buffer: one receive brings many frames.
type PeerReader = futures_lite::io::BufReader<Stream>;

/// How long a peer TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(3);

/// A TLS session to a peer at `host` over `s`, within [`HANDSHAKE`].
async fn dial_tls(
    c: &futures_rustls::TlsConnector,
    host: &str,
    s: glommio::net::TcpStream,
) -> Result<Stream, String> {
    let name = crate::tls::server_name(host)?;
    let s = within_handshake(c.connect(name, s)).await?;
    Ok(Stream::TlsClient(Box::new(s)))
}

/// `handshake`'s result, or an error once [`HANDSHAKE`] has passed.
async fn within_handshake<T>(
    handshake: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    let done = async { handshake.await.map_err(|e| e.to_string()) };
    let late = async {
        glommio::timer::sleep(HANDSHAKE).await;
        Err("timed out".to_string())
    };
    futures_lite::future::or(done, late).await
}

async fn read_frame(s: &mut PeerReader, buf: &mut Vec<u8>) -> Option<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let len = frame_len(len)?;
    buf.resize(len, 0);
    s.read_exact(buf).await.ok()?;
    Some(buf[0])
}

async fn reader(s: glommio::net::TcpStream, t: Rc<Transport>, rx: Rc<dyn Receiver>) {
    let _ = s.set_nodelay(true);
    user_timeout(&s);
    let s = match &t.acceptor {
        None => Stream::Plain(s),
        Some(a) => match within_handshake(a.accept(s)).await {
            Ok(s) => Stream::Tls(Box::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, "peer TLS handshake refused");
                return;
            }
        },
    };
    let mut s = futures_lite::io::BufReader::with_capacity(256 << 10, s);
    let mut hello = [0u8; 20];
    if s.read_exact(&mut hello).await.is_err() {
        return;
    }
    let Some((from, cid)) = decode_hello(&hello) else {
        return;
    };
    if cid != 0 && cid != t.cluster_id {
        tracing::warn!(
            from = %format!("{from:x}"),
            cluster = %format!("{cid:x}"),
            "peer connection from another cluster refused"
        );
        return;
    }
    let mut buf = Vec::new();
    let mut told = false;
    let mut incoming = Incoming::default();
    let received = t.bytes_received.with_label_values(&[&format!("{from:x}")]);
    while let Some(kind) = read_frame(&mut s, &mut buf).await {
        received.inc_by(4 + buf.len() as u64);
        match kind {
            KIND_SNAP_CHUNK => {
                if let Err(e) = incoming.chunk(&t.snap_dir.join("incoming"), &buf).await {
                    tracing::warn!(from = %format!("{from:x}"), error = %e, "snapshot not received");
                    break;
                }
            }
            KIND_RAFT if buf.len() >= 3 => {
                let removed = t
                    .view
                    .read()
                    .map(|v| v.removed.contains(&from))
                    .unwrap_or(false);
                if removed {
                    // A removed member still talks: tell it, once per
                    // connection, and ignore it.
                    if !told {
                        told = true;
                        t.send_removed(from);
                    }
                    continue;
                }
                match decode_raft(&buf) {
                    Some((shard, mut m)) => {
                        if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                            // Its file arrived ahead of it: check it, and
                            // hand raft the file's place here.
                            let Some(sent) = Descriptor::decode(m.get_snapshot().get_data()) else {
                                tracing::warn!("snapshot message without a file descriptor");
                                continue;
                            };
                            match incoming.finish(&sent).await {
                                Ok(here) => m.mut_snapshot().set_data(here.encode().into()),
                                Err(e) => {
                                    tracing::warn!(from = %format!("{from:x}"), error = %e, "snapshot dropped");
                                    continue;
                                }
                            }
                        }
                        rx.raft(shard, m)
                    }
                    None => {
                        incoming.discard().await;
                        return;
                    }
                }
            }
            KIND_LAYOUT => {
                let theirs = Layout::find(&buf[1..]).map(Layout::normalized);
                if theirs != Some(t.layout) {
                    tracing::error!(
                        from = %format!("{from:x}"),
                        theirs = %String::from_utf8_lossy(&buf[1..]).trim(),
                        ours = %t.layout.line().trim(),
                        "peer runs another shard layout (--shards, --unit-depth): connection refused; every member of a cluster must run the same"
                    );
                    return;
                }
            }
            KIND_REMOVED => {
                let member = t
                    .view
                    .read()
                    .map(|v| v.get(from).is_some())
                    .unwrap_or(false);
                if member {
                    rx.removed();
                }
            }
            KIND_JOIN | KIND_LOOKUP => {
                let reply = rx.request(kind, buf[1..].to_vec()).await;
                let out = encode_join_reply(reply.map_err(String::into_bytes));
                let _ = s.get_mut().write_all(&out).await;
                let _ = s.get_mut().flush().await;
                return;
            }
            _ => break,
        }
    }
    incoming.discard().await;
    // The stream from `from` ended: if it was the leader's, it has most
    // likely died (a killed process's sockets are closed by the kernel).
    if from != 0 {
        rx.lost(from);
    }
}

// ---- the wire format, as pure functions (the async code above and
// tests/fuzz.rs use these) ------------------------------------------------

/// The 20-byte handshake that opens a connection: `KRFT`, sender id,
/// cluster id (0 and 0 for a join or lookup).
pub fn encode_hello(me: u64, cluster_id: u64) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(MAGIC);
    h[4..12].copy_from_slice(&me.to_le_bytes());
    h[12..].copy_from_slice(&cluster_id.to_le_bytes());
    h
}

/// `(sender id, cluster id)` of a handshake; `None` when it is not one.
pub fn decode_hello(h: &[u8]) -> Option<(u64, u64)> {
    if h.len() != 20 || &h[..4] != MAGIC {
        return None;
    }
    let from = u64::from_le_bytes(h[4..12].try_into().ok()?);
    let cid = u64::from_le_bytes(h[12..20].try_into().ok()?);
    Some((from, cid))
}

/// The [`KIND_LAYOUT`] frame (prefix included) for `layout`.
pub fn encode_layout(layout: &Layout) -> Vec<u8> {
    let line = layout.line();
    let mut frame = Vec::with_capacity(5 + line.len());
    frame.extend_from_slice(&(1 + line.len() as u32).to_le_bytes());
    frame.push(KIND_LAYOUT);
    frame.extend_from_slice(line.as_bytes());
    frame
}

/// The length a frame's 4-byte prefix announces (kind + payload); `None`
/// for an empty or oversized frame, which ends the connection.
pub fn frame_len(prefix: [u8; 4]) -> Option<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    (1..=MAX_FRAME).contains(&len).then_some(len)
}

/// A whole raft frame (prefix included) for message `m`, whose encoded
/// size is `size`; `None` if the message does not encode to that size.
pub fn encode_raft(shard: u16, m: &Message, size: usize) -> Option<Vec<u8>> {
    // The frame is the message encoded after its header: one buffer.
    let mut frame = Vec::with_capacity(7 + size);
    frame.extend_from_slice(&u32::try_from(3 + size).ok()?.to_le_bytes());
    frame.push(KIND_RAFT);
    frame.extend_from_slice(&shard.to_le_bytes());
    if m.write_to_vec(&mut frame).is_err() || frame.len() != 7 + size {
        return None;
    }
    Some(frame)
}

/// Decode a raft frame's body (`kind`, `u16 shard`, message: what follows
/// the length prefix); `None` when it is not one.
pub fn decode_raft(body: &[u8]) -> Option<(u16, Message)> {
    if body.len() < 3 || body[0] != KIND_RAFT {
        return None;
    }
    let shard = u16::from_le_bytes([body[1], body[2]]);
    let m = Message::parse_from_bytes(&body[3..]).ok()?;
    Some((shard, m))
}

/// A whole join reply frame: the encoded cluster, or an error message.
pub fn encode_join_reply(reply: Result<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let (ok, body) = match reply {
        Ok(b) => (1u8, b),
        Err(e) => (0u8, e),
    };
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&((2 + body.len()) as u32).to_le_bytes());
    out.push(KIND_JOIN_REPLY);
    out.push(ok);
    out.extend_from_slice(&body);
    out
}

/// Decode a join reply frame's body (what follows the length prefix): the
/// encoded cluster, or the refusal's message; `None` when it is not one.
pub fn decode_join_reply(body: &[u8]) -> Option<Result<&[u8], String>> {
    if body.len() < 2 || body[0] != KIND_JOIN_REPLY {
        return None;
    }
    Some(if body[1] == 1 {
        Ok(&body[2..])
    } else {
        Err(String::from_utf8_lossy(&body[2..]).into_owned())
    })
}
