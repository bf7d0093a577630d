//! A shard: one slice of the keyspace owned by one executor — its store, its
//! raft group, the queue of proposals waiting to enter that group — plus the
//! executor's view of the member: its [`Orderer`] (event history and
//! watchers) and its end of the [`mesh`] to the other executors.
//!
//! Request handlers call [`Shard::propose`] or [`Shard::read`] for the shard
//! that owns a key ([`crate::store::Placement`]); when that is another
//! executor the request crosses the mesh and the answer comes back the same
//! way. Either way the caller awaits an [`Answer`] in a slab slot, so a
//! request allocates no channel. The raft loop ([`crate::raft::run`])
//! drains the queue, executes, logs, and answers once the batch is durable.
//! A read whose listing passes [`BULK_BYTES`] is a bulk read: rendered one
//! at a time per executor, after the small requests already waiting.

pub mod global;
pub mod mesh;
pub mod orderer;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use hdrhistogram::Histogram;
use slab::Slab;

use crate::etcd::error::{V2Error, RAFT_INTERNAL};
use crate::http::response::HEAD_ROOM;
use crate::store::{
    escalated_to, Event, Outcome, Placement, ReadAt, Slices, Store, MEMBER_WIDE, OVER_LIMIT,
};
pub use mesh::Msg;
pub use orderer::Orderer;

/// What a proposer gets back once its entry is durable.
#[derive(Debug)]
pub struct Reply {
    pub outcome: Outcome,
    pub raft_index: u64,
    pub raft_term: u64,
}

/// What a reader gets back: the rendered body and its `X-Etcd-Index`.
pub type ReadResult = Result<(Vec<u8>, u64), V2Error>;

/// The answer to a request sent to a shard.
#[derive(Debug)]
pub enum Answer {
    Write(Reply),
    Read(ReadResult),
}

/// Who waits for an answer: a slot on this executor or on another.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Local(usize),
    Remote { from: usize, slot: usize },
}

enum Slot {
    Waiting(Option<Waker>),
    Done(Answer),
    /// The requester went away; the slot is freed on completion.
    Abandoned,
}

/// A proposal waiting to enter the raft group.
pub struct Proposal {
    pub data: Vec<u8>,
    /// Who waits for it (`None` for internal proposals).
    pub target: Option<Target>,
}

#[derive(Default)]
struct Inbox {
    queue: Vec<Proposal>,
    /// Raft messages from peers (shard 0 of a replicated member).
    raft: Vec<raft::eraftpb::Message>,
    waker: Option<Waker>,
    slots: Slab<Slot>,
}

/// Facts every executor of the member shares (atomics only, no locks).
pub struct Shared {
    pub shards: usize,
    /// Depth of the placement units ([`Placement`]).
    pub unit_depth: usize,
    /// Member-wide sessions run (each parked every shard), and the jobs
    /// they carried.
    pub sessions: AtomicU64,
    pub session_jobs: AtomicU64,
    /// The member's Prometheus series (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The member-wide etcd index counter.
    pub counter: Arc<AtomicU64>,
    /// The node-wide closed index (see [`Orderer`]).
    pub closed: Arc<AtomicU64>,
    /// One etcd index across the groups of a sharded cluster.
    pub seq: crate::raft::Sequencer,
    /// Per-shard figures for stats and diagnostics.
    pub figures: Vec<Figures>,
    /// Open client connections, all executors together.
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    /// The v2 auth records shard 0 last published.
    pub auth: Arc<crate::auth::Shared>,
    /// Start-up only: member-wide operations found in any shard's log.
    pub recovery: std::sync::Mutex<std::collections::BTreeMap<u64, Vec<u8>>>,
}

/// One shard's published figures.
#[derive(Default)]
pub struct Figures {
    pub nodes: AtomicU64,
    pub index: AtomicU64,
    pub applied: AtomicU64,
    pub writes: AtomicU64,
    pub syncs: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub failed: AtomicU64,
    pub watchers: AtomicU64,
    /// Writes executed per second, over the last second or so.
    pub rate: AtomicU64,
    /// The live log: sealed segments kept, and bytes in the open one.
    pub wal_segments: AtomicU64,
    pub wal_offset: AtomicU64,
    /// Write requests waiting for the shard's next batch.
    pub queued: AtomicU64,
    /// `/v2/stats/store` counters, in [`crate::store::Stats`] field order.
    pub stats: [AtomicU64; 15],
}

impl Shared {
    /// How this member splits the keyspace (every member of a cluster must
    /// split it alike).
    pub fn layout(&self) -> crate::cluster::Layout {
        crate::cluster::Layout {
            shards: self.shards,
            unit_depth: Some(self.unit_depth),
        }
    }

    /// `sharded_cluster`: every shard is a raft group across members
    /// (issue #14), sequenced by [`crate::raft::Sequencer`].
    pub fn new(shards: usize, unit_depth: usize, sharded_cluster: bool) -> Shared {
        let counter = Arc::new(AtomicU64::new(0));
        Shared {
            shards,
            unit_depth,
            sessions: AtomicU64::new(0),
            session_jobs: AtomicU64::new(0),
            metrics: crate::metrics::Metrics::new(),
            seq: crate::raft::Sequencer::new(shards, sharded_cluster, counter.clone()),
            counter,
            closed: Arc::new(AtomicU64::new(0)),
            figures: (0..shards).map(|_| Figures::default()).collect(),
            open: Arc::default(),
            auth: Arc::default(),
            recovery: Default::default(),
        }
    }
}

/// One shard's state, shared by the executor's tasks.
pub struct Shard {
    pub id: usize,
    pub placement: Placement,
    pub store: RefCell<Store>,
    inbox: RefCell<Inbox>,
    pub orderer: RefCell<Orderer>,
    pub shared: Arc<Shared>,
    mesh: RefCell<Option<mesh::Mesh>>,
    pub global: global::State,
    /// Highest etcd index this shard has executed (durable or not).
    pub executed: Cell<u64>,
    /// What the shard's raft group says about itself (written by its loop
    /// only), and its link to the peers.
    pub raft: crate::raft::Status,
    /// Set to wake the raft loop for its own work (a persisted `Ready`).
    kick: Cell<bool>,
    /// The membership (shared with the v2 handlers).
    view: crate::cluster::View,
    /// Set when the shard hit an I/O or corruption error and stopped.
    pub failed: RefCell<Option<String>>,
    pub metrics: Metrics,
    /// This shard's series of `kardia_shard_batch_commands`.
    pub batch_commands: prometheus::Histogram,
    /// Held while a large listing renders ([`BULK_BYTES`]): one at a time
    /// per executor, so the tasks of small requests are never queued
    /// behind more than one of them.
    bulk: glommio::sync::Semaphore,
    /// The size of the last bulk read's body (the room the next one
    /// reserves).
    bulk_size: Cell<usize>,
}

/// A read whose response passes this many bytes is a bulk read: it is
/// abandoned and done again under [`Shard`]'s bulk gate. An executor runs
/// one task at a time, and a listing renders without a suspension point;
/// without the gate, 50 clients asking for a 10 MB listing at once would
/// queue 50 renders ahead of every small request that arrives after them.
pub const BULK_BYTES: usize = 64 << 10;

/// Counters of the write path, for diagnostics and benchmarks.
#[derive(Debug)]
pub struct Metrics {
    /// fdatasyncs of the WAL.
    pub syncs: Cell<u64>,
    /// Entries made durable by those syncs.
    pub synced_entries: Cell<u64>,
    /// Time spent writing and syncing the WAL.
    pub sync_nanos: Cell<u64>,
    /// Proposals handed to raft.
    pub proposals: Cell<u64>,
    /// WAL bytes written.
    pub wal_bytes: Cell<u64>,
    /// Duration of each WAL write + fdatasync, in microseconds.
    pub sync_micros: RefCell<Histogram<u64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            syncs: Cell::default(),
            synced_entries: Cell::default(),
            sync_nanos: Cell::default(),
            proposals: Cell::default(),
            wal_bytes: Cell::default(),
            sync_micros: RefCell::new(
                Histogram::new_with_bounds(1, 60_000_000, 2).expect("histogram bounds"),
            ),
        }
    }
}

impl Metrics {
    pub fn add(c: &Cell<u64>, v: u64) {
        c.set(c.get() + v);
    }

    /// One WAL write + fdatasync of `entries` entries and `bytes` bytes.
    pub fn record_sync(&self, took: std::time::Duration, entries: u64, bytes: u64) {
        Metrics::add(&self.sync_nanos, took.as_nanos() as u64);
        let _ = self
            .sync_micros
            .borrow_mut()
            .record(took.as_micros().max(1) as u64);
        Metrics::add(&self.syncs, 1);
        Metrics::add(&self.synced_entries, entries);
        Metrics::add(&self.wal_bytes, bytes);
    }
}

impl Shard {
    pub fn new(
        store: Store,
        orderer: Orderer,
        shared: Arc<Shared>,
        view: crate::cluster::View,
    ) -> Shard {
        let placement = store.placement;
        let executed = store.index();
        let batch_commands = shared
            .metrics
            .batch_size
            .with_label_values(&[&placement.shard.to_string()]);
        Shard {
            batch_commands,
            id: placement.shard,
            placement,
            store: RefCell::new(store),
            inbox: RefCell::new(Inbox::default()),
            orderer: RefCell::new(orderer),
            shared,
            mesh: RefCell::new(None),
            global: global::State::default(),
            executed: Cell::new(executed),
            raft: crate::raft::Status::default(),
            kick: Cell::new(false),
            view,
            failed: RefCell::new(None),
            metrics: Metrics::default(),
            bulk: glommio::sync::Semaphore::new(1),
            bulk_size: Cell::new(0),
        }
    }

    /// One WAL write + fdatasync of `entries` entries and `bytes` bytes.
    pub fn record_sync(&self, took: std::time::Duration, entries: u64, bytes: u64) {
        self.metrics.record_sync(took, entries, bytes);
        self.shared.metrics.wal_fsync.observe(took.as_secs_f64());
    }

    /// Ready to serve (`/health`, and systemd's readiness): this shard
    /// knows a leader, this member's attributes are applied (etcd's
    /// ReadyNotify: clients that sync their endpoints from the member list
    /// see its URLs) and no shard of the member has stopped.
    pub fn healthy(&self) -> bool {
        self.failed.borrow().is_none()
            && self.raft.leader() != 0
            && self.raft.attrs_applied()
            && self
                .shared
                .figures
                .iter()
                .all(|f| f.failed.load(Ordering::Relaxed) == 0)
    }

    /// The membership.
    pub fn view(&self) -> &crate::cluster::View {
        &self.view
    }

    /// A raft message from a peer, for the raft loop.
    pub fn deliver(&self, m: raft::eraftpb::Message) {
        let mut inbox = self.inbox.borrow_mut();
        inbox.raft.push(m);
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
    }

    /// Take the raft messages received from peers (the raft loop).
    pub fn take_messages(&self, into: &mut Vec<raft::eraftpb::Message>) {
        into.append(&mut self.inbox.borrow_mut().raft);
    }

    /// Queue an internal request (a configuration change or a read
    /// barrier) for the raft loop; the future resolves with
    /// [`Answer::Read`].
    pub fn request(self: &Rc<Self>, data: Vec<u8>) -> AnswerFuture {
        let slot = self.new_slot();
        self.enqueue(Proposal {
            data,
            target: Some(Target::Local(slot)),
        });
        AnswerFuture {
            shard: self.clone(),
            slot: Some(slot),
        }
    }

    /// Connect this executor's end of the mesh (several shards only).
    pub fn attach(self: &Rc<Self>, m: mesh::Mesh) {
        *self.mesh.borrow_mut() = Some(m);
    }

    /// True once this executor's end of the mesh is connected.
    pub fn is_attached(&self) -> bool {
        self.mesh.borrow().is_some()
    }

    /// Send `msg` to executor `to` (this one: handled at once).
    pub fn send(self: &Rc<Self>, to: usize, msg: Msg) {
        if to == self.id {
            mesh::dispatch(self, msg);
        } else {
            self.send_peer(to, msg);
        }
    }

    /// Send `msg` to executor `to` over the mesh (not to this one).
    pub fn send_peer(&self, to: usize, msg: Msg) {
        if let Some(m) = self.mesh.borrow().as_ref() {
            m.send(to, msg);
        }
    }

    fn new_slot(&self) -> usize {
        self.inbox.borrow_mut().slots.insert(Slot::Waiting(None))
    }

    /// Propose an encoded command to the shard that owns it; the future
    /// resolves once it is durable (or failed).
    pub fn propose(self: &Rc<Self>, owner: usize, data: Vec<u8>) -> AnswerFuture {
        let slot = self.new_slot();
        if owner == self.id {
            self.enqueue(Proposal {
                data,
                target: Some(Target::Local(slot)),
            });
        } else {
            self.send(
                owner,
                Msg::Propose {
                    from: self.id,
                    slot,
                    data,
                },
            );
        }
        AnswerFuture {
            shard: self.clone(),
            slot: Some(slot),
        }
    }

    /// Queue a proposal for this shard's raft loop.
    pub fn enqueue(&self, p: Proposal) {
        if let Some(msg) = self.failed.borrow().as_ref() {
            if let Some(t) = p.target {
                self.answer(t, stopped_reply(msg));
            }
            return;
        }
        let mut inbox = self.inbox.borrow_mut();
        inbox.queue.push(p);
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
    }

    /// Wake the raft loop for work of its own (its WAL writer finished).
    pub fn kick_loop(&self) {
        self.kick.set(true);
        self.wake_loop();
    }

    /// Wake the raft loop (a park request, or new work).
    pub fn wake_loop(&self) {
        if let Some(w) = self.inbox.borrow_mut().waker.take() {
            w.wake();
        }
    }

    /// Read `key` on the shard that owns it (or member-wide).
    /// An online backup of the member into `dir` (see `global::Job::Backup`).
    pub async fn backup(self: &Rc<Self>, dir: std::path::PathBuf) -> ReadResult {
        let slot = self.new_slot();
        global::submit(self, global::Job::Backup(dir), Target::Local(slot));
        self.read_answer(slot).await
    }

    /// This executor's turn for a bulk read ([`BULK_BYTES`]): wait for the
    /// gate, then for the next I/O poll, so the small requests that arrived
    /// meanwhile go first. The turn lasts while the permit is held; at most
    /// one bulk read renders at a time per executor.
    pub async fn bulk_turn(&self) -> Option<glommio::sync::Permit<'_>> {
        let permit = self.bulk.acquire_permit(1).await.ok();
        crate::executor::after_next_poll().await;
        permit
    }

    /// The answer of a read waiting in `slot`.
    async fn read_answer(self: &Rc<Self>, slot: usize) -> ReadResult {
        let fut = AnswerFuture {
            shard: self.clone(),
            slot: Some(slot),
        };
        match fut.await {
            Answer::Read(r) => r,
            Answer::Write(_) => Err(V2Error::new(RAFT_INTERNAL, "etcdserver: internal error", 0)),
        }
    }

    pub async fn read(self: &Rc<Self>, owner: usize, req: mesh::ReadReq) -> ReadResult {
        let slot = self.new_slot();
        if owner == self.id {
            serve_read(self.clone(), req, Target::Local(slot)).await;
        } else if owner == MEMBER_WIDE {
            global::submit(self, global::Job::Read(req), Target::Local(slot));
        } else {
            self.send(
                owner,
                Msg::Read {
                    from: self.id,
                    slot,
                    req,
                },
            );
        }
        self.read_answer(slot).await
    }

    /// Take everything queued (the raft loop).
    pub fn take_proposals(&self, into: &mut Vec<Proposal>) {
        into.append(&mut self.inbox.borrow_mut().queue);
    }

    /// Resolve when proposals are queued or a park is requested.
    pub fn proposals_ready(&self) -> ProposalsReady<'_> {
        ProposalsReady { shard: self }
    }

    /// Deliver an answer to whoever waits for it.
    pub fn answer(&self, target: Target, a: impl Into<Answer>) {
        let a = a.into();
        if let Answer::Write(Reply {
            outcome: Err(e), ..
        }) = &a
        {
            if e.code == RAFT_INTERNAL {
                self.shared.metrics.proposals_failed.inc();
            }
        }
        match target {
            Target::Local(slot) => self.complete(slot, a),
            Target::Remote { from, slot } if from == self.id => self.complete(slot, a),
            Target::Remote { from, slot } => self.send_peer(from, Msg::Answer { slot, answer: a }),
        }
    }

    /// Complete a local requester's wait.
    pub fn complete(&self, slot: usize, a: Answer) {
        let mut inbox = self.inbox.borrow_mut();
        let Some(s) = inbox.slots.get_mut(slot) else {
            return;
        };
        match std::mem::replace(s, Slot::Done(a)) {
            Slot::Waiting(w) => {
                if let Some(w) = w {
                    w.wake();
                }
            }
            Slot::Abandoned => {
                inbox.slots.remove(slot);
            }
            Slot::Done(_) => {}
        }
    }

    /// This shard applied epoch `start` (a sharded cluster's), after
    /// publishing every event below it: tell every executor's orderer.
    /// `lost`: see [`Msg::Epoch`].
    pub fn publish_epoch(&self, start: u64, lost: bool) {
        for peer in 0..self.shared.shards {
            if peer != self.id {
                self.send_peer(
                    peer,
                    Msg::Epoch {
                        shard: self.id,
                        start,
                        lost,
                    },
                );
            }
        }
        self.close_epoch(self.id, start, lost);
    }

    /// Shard `from` applied epoch `start` (see [`Msg::Epoch`]): close this
    /// executor's orderer over it.
    pub fn close_epoch(&self, from: usize, start: u64, lost: bool) {
        let mut o = self.orderer.borrow_mut();
        if lost {
            o.hub.clear();
        }
        o.close(from, start);
        drop(o);
        self.note_watchers();
    }

    /// Hand the events of a durable batch, in index order, to every
    /// executor's orderer (this one's directly).
    pub fn publish(&self, events: &mut Vec<Arc<Event>>) {
        if events.is_empty() {
            return;
        }
        for peer in 0..self.shared.shards {
            if peer != self.id {
                self.send_peer(peer, Msg::Events(events.clone()));
            }
        }
        let mut o = self.orderer.borrow_mut();
        for e in events.drain(..) {
            o.offer(e);
        }
        drop(o);
        self.note_watchers();
    }

    /// Publish this executor's watcher count (after watchers come or go).
    pub fn note_watchers(&self) {
        let n = self.orderer.borrow().hub.count() as u64;
        self.shared.figures[self.id]
            .watchers
            .store(n, Ordering::Relaxed);
    }

    /// Publish this shard's figures for the other executors.
    pub fn publish_figures(&self) {
        let f = &self.shared.figures[self.id];
        let st = self.store.borrow();
        f.index.store(st.index(), Ordering::Relaxed);
        f.nodes
            .store(st.node_count().unwrap_or(0), Ordering::Relaxed);
        f.applied.store(st.applied().0, Ordering::Relaxed);
        f.syncs.store(self.metrics.syncs.get(), Ordering::Relaxed);
        f.wal_bytes
            .store(self.metrics.wal_bytes.get(), Ordering::Relaxed);
        f.writes
            .store(self.metrics.proposals.get(), Ordering::Relaxed);
        f.queued
            .store(self.inbox.borrow().queue.len() as u64, Ordering::Relaxed);
        f.watchers
            .store(self.orderer.borrow().hub.count() as u64, Ordering::Relaxed);
        let s = st.stats;
        let v = [
            s.gets_success,
            s.gets_fail,
            s.sets_success,
            s.sets_fail,
            s.delete_success,
            s.delete_fail,
            s.update_success,
            s.update_fail,
            s.create_success,
            s.create_fail,
            s.cas_success,
            s.cas_fail,
            s.cad_success,
            s.cad_fail,
            s.expire_count,
        ];
        for (a, v) in f.stats.iter().zip(v) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Fail every waiting proposer and refuse new ones (fatal shard error).
    pub fn fail(&self, msg: String) {
        tracing::error!(shard = self.id, error = %msg, "shard stopped");
        *self.failed.borrow_mut() = Some(msg.clone());
        self.shared.figures[self.id]
            .failed
            .store(1, Ordering::Relaxed);
        let queued = std::mem::take(&mut self.inbox.borrow_mut().queue);
        for p in queued {
            if let Some(t) = p.target {
                self.answer(t, stopped_reply(&msg));
            }
        }
    }
}

impl From<Reply> for Answer {
    fn from(r: Reply) -> Answer {
        Answer::Write(r)
    }
}

/// Answer a read on this shard: once every event this shard has executed
/// is durable and delivered, read at the node-wide closed index (so the
/// reported index never goes backwards and never runs ahead of the data).
/// A read this shard cannot answer goes on to the shard that can.
pub async fn serve_read(shard: Rc<Shard>, mut req: mesh::ReadReq, target: Target) {
    let mut body = Vec::new();
    let r = loop {
        let _turn = match req.opts.bulk {
            true => Some(shard.bulk_turn().await),
            false => None,
        };
        let index = readable(&shard, req.opts.at_least).await;
        // Behind room for the HTTP answer's head (`ReadReq`).
        body.clear();
        body.resize(HEAD_ROOM, 0);
        if req.opts.bulk {
            break read_bulk(&shard, index, &req.key, req.opts, ReadAt::View, &mut body).await;
        }
        match read_at(
            &shard,
            index,
            &req.key,
            req.opts,
            None,
            ReadAt::View,
            &mut body,
        ) {
            Err(e) if e.code == OVER_LIMIT => req.opts.bulk = true,
            r => break r,
        }
    };
    let next = match r {
        Ok(i) => return shard.answer(target, Answer::Read(Ok((body, i)))),
        Err(e) => match escalated_to(&e) {
            Some(next) => next,
            None => return shard.answer(target, Answer::Read(Err(e))),
        },
    };
    if next == MEMBER_WIDE {
        global::submit(&shard, global::Job::Read(req), target);
    } else if next == shard.id {
        let e = V2Error::new(RAFT_INTERNAL, "etcdserver: read loop", 0);
        shard.answer(target, Answer::Read(Err(e)));
    } else {
        let (from, slot) = match target {
            Target::Local(slot) => (shard.id, slot),
            Target::Remote { from, slot } => (from, slot),
        };
        shard.send(next, Msg::Read { from, slot, req });
    }
}

/// Wait until this shard can read at the node-wide closed index (no
/// member-wide operation applying, every event up to `at_least` delivered)
/// and select the newest read view whose writes are all delivered: never
/// a batch still in its fsync (which the raft loop may execute while this
/// task waits to run), and no wait for it either. Returns the index the
/// read reports; the caller reads at [`ReadAt::View`] without a suspension
/// point in between.
pub async fn readable(shard: &Shard, at_least: u64) -> u64 {
    global::read_gate(shard).await;
    if at_least > shard.orderer.borrow().delivered() {
        orderer::Delivered {
            orderer: &shard.orderer,
            index: at_least,
        }
        .await;
    }
    loop {
        let delivered = shard.orderer.borrow().delivered();
        let chosen = shard.store.borrow_mut().select_view(delivered);
        match chosen {
            Ok(()) => break,
            Err(index) => {
                orderer::Delivered {
                    orderer: &shard.orderer,
                    index,
                }
                .await
            }
        }
    }
    shard.orderer.borrow().closed()
}

/// How much output a bulk read renders between two turns of the executor
/// (about a millisecond of work; smaller slices measured no better).
pub const SLICE_BYTES: usize = 1 << 20;

/// A bulk read ([`BULK_BYTES`]) of this shard at `index`, rendered in
/// slices of [`SLICE_BYTES`] after what `body` holds (in the executor's
/// spare buffer if it is as large as the last bulk read's body): between slices the executor polls
/// for I/O and runs the requests that arrived, so a listing of hundreds of
/// thousands of nodes holds up a small request for one slice, not for the
/// whole listing. Every slice reads the same transaction (the one `at`
/// selects when the read starts), so the result is one consistent read.
/// The caller holds the executor's bulk turn. A store failure stops the
/// shard.
pub async fn read_bulk(
    shard: &Shard,
    index: u64,
    key: &[u8],
    opts: mesh::ReadOpts,
    at: ReadAt,
    body: &mut Vec<u8>,
) -> Result<u64, V2Error> {
    let mut sl = begin_bulk(shard, index, key, opts, at)?;
    let (start, hint) = (body.len(), shard.bulk_size.get());
    crate::executor::reserve(body, hint + hint / 8);
    loop {
        match bulk_slice(shard, &mut sl, body) {
            Some(r) => {
                shard.bulk_size.set(body.len() - start);
                return r;
            }
            None => crate::executor::after_next_poll().await,
        }
    }
}

/// Start a bulk read of this shard at `index` ([`Store::begin_slices`]);
/// its slices come from [`bulk_slice`], each under the executor's bulk
/// turn. A store failure stops the shard.
pub fn begin_bulk(
    shard: &Shard,
    index: u64,
    key: &[u8],
    opts: mesh::ReadOpts,
    at: ReadAt,
) -> Result<Slices, V2Error> {
    let begun = shard.store.borrow_mut().begin_slices(
        index,
        key,
        opts.recursive,
        opts.sorted,
        opts.now,
        at,
    );
    begun.map_err(|e| stop_on(shard, e))
}

/// Render the next slice ([`SLICE_BYTES`]) of the bulk read `sl` after
/// what `body` holds: `None` while more follows, the read's answer once it
/// is done. A store failure stops the shard.
pub fn bulk_slice(
    shard: &Shard,
    sl: &mut Slices,
    body: &mut Vec<u8>,
) -> Option<Result<u64, V2Error>> {
    let r = shard.store.borrow_mut().get_slice(sl, SLICE_BYTES, body);
    match r {
        Err(e) => Some(Err(stop_on(shard, e))),
        Ok(None) => None,
        Ok(Some(r)) => {
            publish_get_stats(shard);
            Some(r)
        }
    }
}

/// Publish this shard's GET counters (several shards: `/v2/stats/store`
/// sums every shard's figures).
fn publish_get_stats(shard: &Shard) {
    if shard.shared.shards > 1 {
        let st = shard.store.borrow().stats;
        let f = &shard.shared.figures[shard.id];
        f.stats[0].store(st.gets_success, Ordering::Relaxed);
        f.stats[1].store(st.gets_fail, Ordering::Relaxed);
    }
}

/// Run a read against this shard's store now, reporting `index`, with the
/// body in `body`; `remote` holds other shards' files (a member-wide GET).
/// Unless `opts.bulk`, a listing past [`BULK_BYTES`] answers
/// [`OVER_LIMIT`] (read it again as a bulk read). A store failure stops
/// the shard.
pub fn read_at(
    shard: &Shard,
    index: u64,
    key: &[u8],
    opts: mesh::ReadOpts,
    remote: Option<&crate::store::RemoteFiles>,
    at: ReadAt,
    body: &mut Vec<u8>,
) -> Result<u64, V2Error> {
    let r = shard.store.borrow_mut().get(
        index,
        key,
        opts.recursive,
        opts.sorted,
        opts.now,
        remote,
        at,
        if opts.bulk { usize::MAX } else { BULK_BYTES },
        body,
    );
    // Only the GET counters change on a read.
    publish_get_stats(shard);
    r.unwrap_or_else(|e| Err(stop_on(shard, e)))
}

/// A store failure during a read: the shard stops, the read gets 300.
fn stop_on(shard: &Shard, e: crate::store::Error) -> V2Error {
    shard.fail(e.to_string());
    V2Error::new(RAFT_INTERNAL, "etcdserver: server stopped", 0)
}

fn stopped_reply(msg: &str) -> Reply {
    Reply {
        outcome: Err(V2Error::new(
            RAFT_INTERNAL,
            format!("etcdserver: server stopped ({msg})"),
            0,
        )),
        raft_index: 0,
        raft_term: 0,
    }
}

/// The raft loop's wait for work.
pub struct ProposalsReady<'a> {
    shard: &'a Shard,
}

impl Future for ProposalsReady<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inbox = self.shard.inbox.borrow_mut();
        if inbox.queue.is_empty()
            && inbox.raft.is_empty()
            && !self.shard.kick.replace(false)
            && !self.shard.global.park_requested()
        {
            inbox.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// Wait until `queue` holds something; whoever pushes wakes `waker`.
pub async fn until_queued<T>(
    queue: &RefCell<std::collections::VecDeque<T>>,
    waker: &RefCell<Option<Waker>>,
) {
    std::future::poll_fn(|cx| {
        if queue.borrow().is_empty() {
            *waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}

/// A requester's wait for its answer.
pub struct AnswerFuture {
    shard: Rc<Shard>,
    slot: Option<usize>,
}

impl Future for AnswerFuture {
    type Output = Answer;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let slot = self.slot.expect("polled after completion");
        let mut inbox = self.shard.inbox.borrow_mut();
        let s = inbox.slots.get_mut(slot).expect("slot");
        match s {
            Slot::Done(_) => {
                let Slot::Done(r) = inbox.slots.remove(slot) else {
                    unreachable!()
                };
                drop(inbox);
                self.slot = None;
                Poll::Ready(r)
            }
            Slot::Waiting(w) => {
                *w = Some(cx.waker().clone());
                Poll::Pending
            }
            Slot::Abandoned => unreachable!("abandoned slot polled"),
        }
    }
}

impl Drop for AnswerFuture {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            let mut inbox = self.shard.inbox.borrow_mut();
            if let Some(s) = inbox.slots.get_mut(slot) {
                if matches!(s, Slot::Done(_)) {
                    inbox.slots.remove(slot);
                } else {
                    *s = Slot::Abandoned;
                }
            }
        }
    }
}
