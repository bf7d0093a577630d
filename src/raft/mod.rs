//! The raft loop of one shard: the only place raft-rs is driven.
//!
//! [`start`] replays the WAL into the store (each entry with the etcd
//! indexes it recorded) and rebuilds the raft group; [`roll_forward`]
//! completes member-wide operations a crash left on other shards only;
//! [`run`] then loops: wait for proposals, a tick or an expiry; park for a
//! member-wide operation if asked (`park_session`); **execute** the queued
//! commands in one store transaction, taking their indexes, and hand the
//! successful ones to the `RawNode`; handle each `Ready` in raft-rs's
//! documented order — send messages, apply a snapshot, check committed
//! entries (already executed), persist new entries and hard state (one
//! fdatasync for the batch), send persisted messages, `advance`, handle the
//! `LightReady`; then publish the batch's events and answer. Consensus
//! itself does no I/O; this loop does all of it.
//!
//! A group with one voter (a single member) executes commands *before*
//! logging them, taking their indexes at once (the fast path). A group with
//! several voters proposes commands as they are, and every member executes
//! them when they are **committed**, in log order, so every member takes
//! the same indexes ([`apply_entries`]); the member that proposed a command
//! answers from its own apply, as etcd does. Membership changes, quorum
//! read barriers (ReadIndex) and snapshots for lagging followers
//! ([`log::LogStore`]) are handled here too.

pub mod log;
pub mod persist;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{Config, RawNode, SnapshotStatus, StateRole, Storage};

use crate::cluster::{Cluster, Member};
use crate::shard::global::{self, Job, SubOp, SubResult};
use crate::shard::{Answer, Metrics, Proposal, Reply, Shard, Target};
use crate::storage::wal::Wal;
use crate::store::command::push_index;
use crate::store::{Command, Op, ESCALATE};
use crate::v2::error::{V2Error, RAFT_INTERNAL};

/// Timing and sizing of a raft group.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub member_id: u64,
    pub heartbeat: Duration,
    pub election_ticks: usize,
    pub checkpoint_interval: Duration,
    /// Size of a WAL segment.
    pub segment_bytes: u64,
    /// Voters of a group that has no recorded configuration yet: this
    /// member alone, every member of a static bootstrap, or none (a member
    /// that joins and waits for the leader).
    pub initial_voters: Vec<u64>,
    /// Applied entries kept in memory for lagging followers (etcd's
    /// `--snapshot-count`); older ones are sent as a snapshot.
    pub retain_entries: u64,
    /// How long a replicated write or quorum read may wait (etcd: 5 s +
    /// 2 x election timeout), then error 300.
    pub request_timeout: Duration,
    /// Where snapshots are made and received.
    pub snap_dir: PathBuf,
    /// `--force-new-cluster`: this member becomes a one-member cluster,
    /// keeping its data.
    pub force_new_cluster: bool,
    /// This member's name and client URLs, published to the cluster.
    pub name: String,
    pub client_urls: Vec<String>,
}

/// Metadata keys of the store kept for the cluster.
pub const META_MEMBERS: &[u8] = b"members";
const META_CONF: &[u8] = b"conf_state";

/// Internal requests queued like proposals (first byte; commands start
/// with their version, 2).
const REQ_CONF: u8 = 0xC0;
const REQ_READ: u8 = 0xC1;
/// A normal entry that publishes a member's attributes (its client URLs).
const ENTRY_ATTRS: u8 = 0xC2;

/// Fatal errors of the loop.
#[derive(Debug)]
pub enum Error {
    Wal(crate::storage::wal::Error),
    Store(crate::store::Error),
    Raft(raft::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Wal(e) => write!(f, "{e}"),
            Error::Store(e) => write!(f, "{e}"),
            Error::Raft(e) => write!(f, "raft: {e}"),
        }
    }
}

impl From<crate::storage::wal::Error> for Error {
    fn from(e: crate::storage::wal::Error) -> Error {
        Error::Wal(e)
    }
}
impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Error {
        Error::Store(e)
    }
}
impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Error {
        Error::Raft(e)
    }
}

/// A shard's raft group, ready to run.
pub struct Group {
    node: RawNode<log::LogStore>,
    persist: Rc<persist::Persister>,
    /// The highest `Ready` number reported persisted to raft-rs, and the
    /// messages of later ones that wait for their persistence.
    reported: u64,
    waiting: VecDeque<(u64, Vec<Message>)>,
    opts: RaftOptions,
    /// Requests of this member waiting for their entry's apply (several
    /// voters): by sequence number, with their deadline.
    pending: HashMap<u64, (Target, Instant)>,
    /// Quorum read barriers: waiting for a read state, then for the apply.
    reads: Vec<(u64, Target, Instant)>,
    barriers: Vec<(u64, Target)>,
    next_seq: u64,
    /// A replicated leader proposes its next SYNC no earlier than this
    /// (wall-clock nanoseconds).
    next_sync: i64,
    last_attrs: Option<Instant>,
    /// This member's attributes were applied since it started.
    attrs_done: bool,
    last_read_retry: Instant,
    /// This member was removed from the cluster.
    removed: bool,
    /// Proposals raft dropped (no leader known), to propose again.
    unsent: Vec<Entry>,
    /// Member-wide operations found in the log, by sequence (for
    /// [`roll_forward`] on the shards that missed them).
    pub global_ops: Vec<(u64, Vec<u8>)>,
}

/// Rebuild the raft group of `shard` from its store and the WAL in `wal_dir`.
pub async fn start(shard: &Shard, wal_dir: &Path, opts: RaftOptions) -> Result<Group, Error> {
    let (recovered, segments) = Wal::recover(wal_dir)?;
    let (applied, _) = shard.store.borrow().applied();
    let id = opts.member_id;
    // The group's configuration: recorded with the last applied change,
    // else the bootstrap one (recorded now, so a restart with other flags
    // keeps it).
    let mut recorded = shard.store.borrow().meta_get(META_CONF)?;
    if opts.force_new_cluster && recorded.is_some() {
        // etcd's --force-new-cluster: keep the data, forget the other
        // members (recorded, so later starts without the flag agree).
        let mut view = shard.view().write().expect("membership");
        let me = view.local().clone();
        let others: Vec<u64> = view
            .members
            .iter()
            .map(|m| m.id)
            .filter(|&m| m != me.id)
            .collect();
        for o in others {
            view.remove(o);
        }
        let members = view.encode();
        drop(view);
        shard.store.borrow_mut().batch(|st, txn| {
            st.meta_put(txn, META_MEMBERS, &members)?;
            Ok(((), None))
        })?;
        recorded = None;
        tracing::warn!(
            "--force-new-cluster: this member now forms a one-member cluster with its data"
        );
    }
    let conf = match recorded {
        Some(b) => ConfState::parse_from_bytes(&b)
            .map_err(|e| Error::Store(crate::store::Error::Corrupt(format!("conf state: {e}"))))?,
        None => {
            let voters = if opts.force_new_cluster {
                vec![id]
            } else {
                opts.initial_voters.clone()
            };
            let cs = ConfState::from((voters, vec![]));
            let bytes = cs.write_to_bytes().unwrap_or_default();
            shard.store.borrow_mut().batch(|st, txn| {
                st.meta_put(txn, META_CONF, &bytes)?;
                Ok(((), None))
            })?;
            cs
        }
    };
    let single = conf.voters == [id] && conf.learners.is_empty();
    let global_ops: Vec<(u64, Vec<u8>)> = recovered
        .entries
        .iter()
        .filter_map(|e| Command::decode(&e.data).map(|c| (c.gseq, e.data.to_vec())))
        .filter(|(g, _)| *g != 0)
        .collect();
    let entries: Vec<Entry> = recovered
        .entries
        .into_iter()
        .filter(|e| e.index > applied)
        .collect();
    if let Some(first) = entries.first() {
        if first.index != applied + 1 {
            return Err(Error::Wal(crate::storage::wal::Error::Corrupt(format!(
                "log starts at {} but the store has applied only {}",
                first.index, applied
            ))));
        }
    }
    let storage = log::LogStore::new();
    let mut hs = recovered.hard_state.unwrap_or_default();
    if single {
        // One voter: everything logged was executed before it was logged;
        // replay it all (each entry with the indexes it recorded).
        if !entries.is_empty() {
            let mut out = Vec::new();
            shard.store.borrow_mut().apply_batch(
                entries.iter().map(|e| {
                    let data: &[u8] =
                        if e.get_entry_type() == EntryType::EntryNormal && !is_internal(&e.data) {
                            &e.data
                        } else {
                            &[]
                        };
                    (e.index, e.term, data)
                }),
                &mut out,
            )?;
            let mut events = Vec::new();
            shard.store.borrow_mut().take_events(&mut events);
        }
    }
    let (applied, applied_term) = shard.store.borrow().applied();
    if applied > 0 {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = applied;
        snap.mut_metadata().term = applied_term;
        snap.mut_metadata().set_conf_state(conf.clone());
        storage.mem.wl().apply_snapshot(snap)?;
    } else {
        storage.mem.wl().set_conf_state(conf.clone());
    }
    if single {
        hs.commit = applied;
    } else {
        // Several voters: the log beyond the applied index stays in raft's
        // hands; committed entries come back in the first `Ready`.
        if !entries.is_empty() {
            storage.mem.wl().append(&entries)?;
        }
        let last = storage.mem.last_index()?;
        hs.commit = hs.commit.clamp(applied, last.max(applied));
    }
    hs.term = hs.term.max(applied_term);
    storage.mem.wl().set_hardstate(hs);
    let cfg = Config {
        id,
        election_tick: opts.election_ticks,
        heartbeat_tick: 1,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        max_committed_size_per_ready: 16 << 20,
        ..Default::default()
    };
    cfg.validate()?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut node = RawNode::new(&cfg, storage, &logger)?;
    // A group whose only voter is this member elects itself at once.
    if single {
        node.campaign()?;
        shard.is_leader.set(node.raft.state == StateRole::Leader);
        shard.leader_id.set(node.raft.leader_id);
    }
    let wal = Wal::open(wal_dir, segments, opts.segment_bytes).await?;
    let now = Instant::now();
    Ok(Group {
        node,
        persist: persist::Persister::new(wal),
        reported: 0,
        waiting: VecDeque::new(),
        opts,
        pending: HashMap::new(),
        reads: Vec::new(),
        barriers: Vec::new(),
        next_seq: wall_nanos() as u64,
        next_sync: 0,
        last_attrs: None,
        attrs_done: false,
        last_read_retry: now,
        removed: false,
        unsent: Vec::new(),
        global_ops,
    })
}

/// True for an entry that carries no store command.
fn is_internal(data: &[u8]) -> bool {
    data.first() == Some(&ENTRY_ATTRS)
}

/// After a crash in the middle of a member-wide operation, some shards may
/// have logged it and others not (each fsyncs its own log). No shard logs
/// anything after such an operation until every shard has it, so a shard
/// that missed one appends it now, in order, from another shard's log:
/// the operation ends up applied everywhere, never half.
pub async fn roll_forward(
    shard: &Rc<Shard>,
    g: &mut Group,
    ops: &[(u64, Vec<u8>)],
) -> Result<usize, Error> {
    let mine = shard.store.borrow().gseq();
    let mut n = 0;
    for (gseq, data) in ops {
        if *gseq > mine {
            apply_global(shard, g, data.clone())?;
            n += 1;
        }
    }
    if n > 0 {
        flush_global(shard, g).await?;
        tracing::warn!(
            shard = shard.id,
            operations = n,
            "completed member-wide operations a crash interrupted"
        );
    }
    Ok(n)
}

/// Drive the group until a fatal error (which stops the shard).
pub async fn run(shard: Rc<Shard>, mut g: Group) {
    if let Err(e) = run_inner(&shard, &mut g).await {
        // Indexes of this shard's last batch will never be published: send
        // placeholders, so the other shards' events are not held behind them.
        let mut events = Vec::new();
        shard.store.borrow_mut().take_events(&mut events);
        let mut holes: Vec<_> = events
            .iter()
            .map(|e| std::sync::Arc::new(crate::store::Event::placeholder(e.index)))
            .collect();
        shard.publish(&mut holes);
        shard.fail(e.to_string());
    }
}

async fn run_inner(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    let mut proposals = Vec::new();
    let mut messages = Vec::new();
    // Executed proposals waiting for their entries to be durable.
    let mut answers: Vec<(Target, Answer)> = Vec::new();
    let mut events = Vec::new();
    let mut next_tick = Instant::now() + g.opts.heartbeat;
    let mut last_checkpoint = Instant::now();
    // Filled by the checkpoint task with the applied index it made durable.
    let checkpoint_done: Rc<RefCell<Option<Result<u64, String>>>> = Rc::default();
    let mut checkpointing = false;
    let mut release_at: Option<u64> = None;
    let mut checkpointed = shard.store.borrow().applied().0;
    glommio::spawn_local(persist::run(g.persist.clone(), shard.clone())).detach();
    let mut next_expiry: Option<i64> = shard.store.borrow().next_expiry()?;
    let (mut rate_since, mut rate_count) = (Instant::now(), 0u64);
    loop {
        // Wait for proposals, peer messages, the next tick or the next expiry.
        let now = Instant::now();
        let mut wake = next_tick;
        // Only the leader expires keys (the others apply its SYNC entries).
        let expiry = next_expiry
            .filter(|_| shard.is_leader.get())
            .map(|t| t.max(g.next_sync));
        if let Some(t) = expiry {
            let d = Duration::from_nanos((t - wall_nanos()).max(0) as u64);
            wake = wake.min(now + d);
        }
        if wake > now && !g.node.has_ready() {
            let sleep = glommio::timer::sleep(wake - now);
            futures_lite::future::or(shard.proposals_ready(), sleep).await;
        } else {
            // Due work: still let the executor's other tasks (the
            // coordinator, connections) run between batches.
            futures_lite::future::yield_now().await;
        }
        // Member-wide operations run while every shard is parked here, at
        // a batch boundary.
        if shard.global.park_requested() {
            park_session(shard, g).await?;
            next_expiry = shard.store.borrow().next_expiry()?;
        }

        shard.take_messages(&mut messages);
        let transport = shard.transport.borrow().clone();
        for m in messages.drain(..) {
            if let Some(t) = &transport {
                t.observe(m.from, false, &m);
            }
            // Messages from unknown or removed peers are refused by raft.
            let _ = g.node.step(m);
        }
        retry_unsent(g);
        shard.take_proposals(&mut proposals);
        let now = Instant::now();
        if now >= next_tick {
            g.node.tick();
            next_tick = now + g.opts.heartbeat;
            expire_requests(g, now, &mut answers);
            publish_attributes(shard, g, now);
            // Diagnostics: the write rate and the live log, about once a second.
            let elapsed = now.duration_since(rate_since);
            if elapsed >= Duration::from_secs(1) {
                let done = shard.metrics.proposals.get();
                let f = &shard.shared.figures[shard.id];
                let per_sec = (done - rate_count) as f64 / elapsed.as_secs_f64();
                f.rate.store(per_sec.round() as u64, Ordering::Relaxed);
                g.persist.with_wal(|w| {
                    f.wal_segments
                        .store(w.sealed_segments() as u64, Ordering::Relaxed);
                    f.wal_offset.store(w.offset(), Ordering::Relaxed);
                });
                (rate_since, rate_count) = (now, done);
            }
        }
        // Expiry: the leader executes one SYNC per batch, stamped with its clock.
        let expire_now = match expiry {
            Some(t) if t <= wall_nanos() => Some(wall_nanos()),
            _ => None,
        };
        if !proposals.is_empty() || expire_now.is_some() {
            Metrics::add(&shard.metrics.proposals, proposals.len() as u64);
            execute(shard, g, &mut proposals, expire_now, &mut answers)?;
            shard.executed.set(shard.store.borrow().index());
            next_expiry = shard.store.borrow().next_expiry()?;
            if expire_now.is_some() && shard.id == 0 && shard.shared.shards > 1 {
                expire_dirs(shard)?;
                // A directory expiry in progress is the coordinator's now:
                // look again shortly rather than spin on it.
                if !shard.global.expiring.borrow().is_empty() {
                    let soon = wall_nanos() + 2_000_000;
                    next_expiry = next_expiry.map(|t| t.max(soon));
                }
            }
        }

        if let Some(e) = g.persist.failed.borrow().clone() {
            return Err(Error::Store(crate::store::Error::Corrupt(format!(
                "wal: {e}"
            ))));
        }
        if g.node.has_ready()
            || !answers.is_empty()
            || shard.store.borrow().has_events()
            || g.persist.persisted() > g.reported
        {
            if replicated(shard, g) || !g.persist.idle() || !g.waiting.is_empty() {
                handle_ready_async(shard, g, &mut answers).await?;
            } else {
                handle_ready(shard, g, &mut answers).await?;
            }
            // The batch is durable: deliver its events, then answer.
            shard.store.borrow_mut().take_events(&mut events);
            shard.publish(&mut events);
            shard.publish_figures();
            shard.executed.set(shard.store.borrow().index());
            if replicated(shard, g) {
                // Applied entries may have expired or set TTLs.
                next_expiry = shard.store.borrow().next_expiry()?;
            }
            let (ri, rt) = (g.node.raft.raft_log.committed, g.node.raft.term);
            for (target, mut a) in answers.drain(..) {
                if let Answer::Write(reply) = &mut a {
                    reply.raft_index = ri;
                    reply.raft_term = rt;
                }
                shard.answer(target, a);
            }
            if g.removed {
                tracing::warn!("this member was removed from the cluster; stopping");
                glommio::timer::sleep(Duration::from_millis(200)).await;
                std::process::exit(0);
            }
        }
        if g.node.store().take_wanted() {
            prepare_snapshot(shard, g);
        }

        // Checkpoint: sync LMDB off the executor, then drop covered log.
        let finished = checkpoint_done.borrow_mut().take();
        if let Some(done) = finished {
            checkpointing = false;
            match done {
                Ok(durable) => release_at = Some(durable),
                Err(e) => {
                    return Err(Error::Store(crate::store::Error::Corrupt(format!(
                        "checkpoint: {e}"
                    ))))
                }
            }
        }
        // Drop log segments the checkpoint covers (while the writer is idle).
        if let Some(durable) = release_at {
            if g.persist.idle() {
                release_at = None;
                let mut wal = g.persist.take_wal();
                let r = wal.release(durable).await;
                g.persist.put_wal(wal);
                r?;
            }
        }
        // Checkpoint when a WAL segment has filled (to free it) or, with
        // progress, after the interval. Each checkpoint's writeback delays
        // the WAL syncs around it, so they are kept rare: about once per
        // 64 MiB of log. Segments roll only when full.
        let applied = shard.store.borrow().applied().0;
        let sealed = g.persist.with_wal(|w| w.sealed_segments()).unwrap_or(0);
        let due = applied > checkpointed
            && (sealed > 0 || last_checkpoint.elapsed() >= g.opts.checkpoint_interval);
        if !checkpointing && due {
            last_checkpoint = Instant::now();
            checkpointed = applied;
            let env = shard.store.borrow().env().clone();
            let done = checkpoint_done.clone();
            checkpointing = true;
            glommio::spawn_local(async move {
                let r = glommio::executor()
                    .spawn_blocking(move || {
                        env.force_sync().map(|_| applied).map_err(|e| e.to_string())
                    })
                    .await;
                *done.borrow_mut() = Some(r);
            })
            .detach();
        }
        // Applied entries need not stay in memory beyond what followers may
        // still ask for (none for a single voter): drop them in small
        // steps, so memory stays flat and no compaction frees a huge log.
        let keep = if replicated(shard, g) {
            g.opts.retain_entries
        } else {
            0
        };
        let upto = applied.saturating_sub(keep);
        let store = &mut g.node.mut_store().mem;
        if upto >= store.first_index()? + COMPACT_EVERY.min(keep.max(1)) {
            store.wl().compact(upto)?;
        }
    }
}

/// Compact the in-memory raft log once this many applied entries pile up.
const COMPACT_EVERY: u64 = 1024;

/// The group has other voters (or is changing): commands go through the
/// log before they are executed.
fn replicated(shard: &Shard, g: &Group) -> bool {
    let voters = g.node.raft.prs().conf().voters().ids();
    if voters.len() != 1 || !voters.contains(g.opts.member_id) {
        return true;
    }
    // One voter: the fast path is safe unless the log holds entries the
    // store has not applied (a configuration change, or commands proposed
    // while there were other voters); a new leader's empty entry is none.
    let applied = shard.store.borrow().applied().0;
    let log = &g.node.raft.raft_log;
    if log.last_index() <= applied {
        return false;
    }
    match log.entries(applied + 1, None, raft::GetEntriesContext::empty(false)) {
        Ok(es) => es.iter().any(|e| !e.data.is_empty()),
        Err(_) => true,
    }
}

/// Execute a batch of proposals (and an expiry) in one store transaction,
/// before their entries are logged: each command takes its member-wide etcd
/// indexes now, in this shard's log order, and its entry records them, so a
/// replay repeats them exactly. Successful commands enter the raft log;
/// failed ones change nothing and are not logged. Every answer waits in
/// `answers` until the batch is durable. With several voters, commands are
/// only proposed ([`propose_replicated`]).
fn execute(
    shard: &Rc<Shard>,
    g: &mut Group,
    proposals: &mut Vec<Proposal>,
    expire_now: Option<i64>,
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    if proposals.iter().any(|p| p.data.first() == Some(&REQ_CONF)) || replicated(shard, g) {
        return propose_replicated(shard, g, proposals, expire_now);
    }
    if !shard.is_leader.get() {
        for p in proposals.drain(..) {
            if let Some(t) = p.target {
                shard.answer(t, error_reply("etcdserver: no leader"));
            }
        }
        return Ok(());
    }
    let node = &mut g.node;
    let mut escalated = Vec::new();
    shard.store.borrow_mut().batch(|st, txn| {
        for p in proposals.drain(..) {
            if p.data.first() == Some(&REQ_READ) {
                // One voter that leads: the local store is linearizable.
                if let Some(t) = p.target {
                    answers.push((t, Answer::Read(Ok((Vec::new(), 0)))));
                }
                continue;
            }
            let mut data = p.data;
            let outcome = st.execute(txn, &data)?;
            match &outcome {
                Some(Ok(_)) => {
                    for &i in st.taken() {
                        push_index(&mut data, i);
                    }
                    node.propose(Vec::new(), data).map_err(raft_fatal)?;
                }
                Some(Err(e)) if e.code == ESCALATE => {
                    escalated.push((data, p.target));
                    continue;
                }
                _ => {}
            }
            if let (Some(t), Some(outcome)) = (p.target, outcome) {
                answers.push((
                    t,
                    Answer::Write(Reply {
                        outcome,
                        raft_index: 0,
                        raft_term: 0,
                    }),
                ));
            }
        }
        if let Some(now) = expire_now {
            let mut data = Vec::with_capacity(48);
            Command::new(Op::Sync, b"/", now).encode(&mut data);
            st.execute(txn, &data)?;
            if !st.taken().is_empty() {
                for &i in st.taken() {
                    push_index(&mut data, i);
                }
                node.propose(Vec::new(), data).map_err(raft_fatal)?;
            }
        }
        let last = node.raft.raft_log.last_index();
        let term = node.raft.raft_log.term(last).unwrap_or(node.raft.term);
        Ok(((), Some((last, term))))
    })?;
    for (data, target) in escalated {
        global::submit(shard, Job::Write(data), target);
    }
    Ok(())
}

/// Several voters: hand each request to raft (a follower's raft forwards
/// it to the leader) tagged with this member's id and a sequence number;
/// the answer comes from this member's apply of the committed entry, or
/// error 300 at the deadline.
fn propose_replicated(
    shard: &Rc<Shard>,
    g: &mut Group,
    proposals: &mut Vec<Proposal>,
    expire_now: Option<i64>,
) -> Result<(), Error> {
    let deadline = Instant::now() + g.opts.request_timeout;
    let mut batch: Vec<Entry> = Vec::new();
    for p in proposals.drain(..) {
        g.next_seq += 1;
        let seq = g.next_seq;
        let ctx = request_context(g.opts.member_id, seq);
        match p.data.first() {
            Some(&REQ_READ) => {
                g.node.read_index(ctx);
                if let Some(t) = p.target {
                    g.reads.push((seq, t, deadline));
                }
                continue;
            }
            Some(&REQ_CONF) => {
                let r = ConfChange::parse_from_bytes(&p.data[1..])
                    .map_err(|e| raft::Error::ConfChangeError(e.to_string()))
                    .and_then(|cc| g.node.propose_conf_change(ctx, cc));
                if let Err(e) = r {
                    if let Some(t) = p.target {
                        shard.answer(
                            t,
                            Answer::Read(Err(V2Error::new(
                                RAFT_INTERNAL,
                                format!("etcdserver: {e}").as_str(),
                                0,
                            ))),
                        );
                    }
                    continue;
                }
            }
            _ => {
                batch.push(Entry {
                    data: p.data.into(),
                    context: ctx.into(),
                    ..Default::default()
                });
            }
        }
        if let Some(t) = p.target {
            g.pending.insert(seq, (t, deadline));
        }
    }
    if !batch.is_empty() {
        // One message for the batch (a follower forwards it to the leader
        // whole). A dropped proposal (no leader known) times out like a
        // lost one: the client sees etcd's 300 either way.
        propose_batch(g, batch);
    }
    if expire_now.is_some() && shard.is_leader.get() {
        // One SYNC per 500 ms at most: it must commit before the keys go.
        g.next_sync = wall_nanos() + 500_000_000;
        let mut data = Vec::with_capacity(48);
        Command::new(Op::Sync, b"/", wall_nanos()).encode(&mut data);
        let _ = g.node.propose(Vec::new(), data);
    }
    Ok(())
}

/// Step one `MsgPropose` carrying `batch`. Raft drops it when no leader
/// is known; such entries never entered any log, so they wait in
/// `g.unsent` and are proposed again once a leader is known (until their
/// requests time out).
fn propose_batch(g: &mut Group, batch: Vec<Entry>) {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgPropose);
    m.from = g.opts.member_id;
    m.set_entries(batch.clone().into());
    if let Err(raft::Error::ProposalDropped) = g.node.step(m) {
        g.unsent.extend(batch);
    }
}

/// Propose again the entries dropped for want of a leader, once one is
/// known; those whose requests timed out are forgotten.
fn retry_unsent(g: &mut Group) {
    if g.unsent.is_empty() || g.node.raft.leader_id == 0 {
        return;
    }
    let me = g.opts.member_id;
    let batch: Vec<Entry> = std::mem::take(&mut g.unsent)
        .into_iter()
        .filter(|e| own_request(me, &e.context).is_some_and(|s| g.pending.contains_key(&s)))
        .collect();
    if !batch.is_empty() {
        propose_batch(g, batch);
    }
}

fn request_context(member: u64, seq: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&member.to_le_bytes());
    c.extend_from_slice(&seq.to_le_bytes());
    c
}

/// The sequence number of a request of member `me` carried in `ctx`.
fn own_request(me: u64, ctx: &[u8]) -> Option<u64> {
    (ctx.len() == 16 && ctx[..8] == me.to_le_bytes())
        .then(|| u64::from_le_bytes(ctx[8..].try_into().unwrap()))
}

/// Answer 300 to requests past their deadline; re-ask unresolved quorum
/// reads now and then (a read barrier is dropped while there is no leader).
fn expire_requests(g: &mut Group, now: Instant, answers: &mut Vec<(Target, Answer)>) {
    let timed_out = || V2Error::new(RAFT_INTERNAL, "etcdserver: request timed out", 0);
    let mut expired = Vec::new();
    g.pending.retain(|_, (t, d)| {
        if *d <= now {
            expired.push(*t);
            false
        } else {
            true
        }
    });
    let mut reads = Vec::new();
    g.reads.retain(|(_, t, d)| {
        if *d <= now {
            reads.push(*t);
            false
        } else {
            true
        }
    });
    if !expired.is_empty() || !reads.is_empty() {
        tracing::debug!(
            writes = expired.len(),
            reads = reads.len(),
            "requests timed out"
        );
    }
    for t in expired {
        answers.push((
            t,
            Answer::Write(Reply {
                outcome: Err(timed_out()),
                raft_index: 0,
                raft_term: 0,
            }),
        ));
    }
    for t in reads {
        answers.push((t, Answer::Read(Err(timed_out()))));
    }
    let retry = g.opts.heartbeat * (g.opts.election_ticks as u32 / 2).max(1);
    if !g.reads.is_empty() && now.duration_since(g.last_read_retry) >= retry {
        g.last_read_retry = now;
        let me = g.opts.member_id;
        for (seq, _, _) in &g.reads {
            g.node.read_index(request_context(me, *seq));
        }
    }
}

/// Each member publishes its name and client URLs through the log once
/// per start (etcd's member attributes), retrying until applied.
fn publish_attributes(shard: &Shard, g: &mut Group, now: Instant) {
    if g.attrs_done || shard.leader_id.get() == 0 {
        return;
    }
    if !replicated(shard, g) {
        g.attrs_done = true;
        return;
    }
    let me = {
        let v = shard.view().read().expect("membership");
        match v.get(g.opts.member_id) {
            Some(m) => m.clone(),
            None => return,
        }
    };
    if g.last_attrs
        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(2))
    {
        return;
    }
    g.last_attrs = Some(now);
    let m = Member {
        client_urls: g.opts.client_urls.clone(),
        name: g.opts.name.clone(),
        ..me
    };
    let mut data = vec![ENTRY_ATTRS];
    data.extend_from_slice(m.encode().as_bytes());
    let _ = g.node.propose(Vec::new(), data);
}

/// Add member `m` through a raft configuration change; the answer carries
/// the encoded membership once the change is applied here.
pub async fn add_member(shard: &Rc<Shard>, m: Member) -> Answer {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = m.id;
    cc.context = m.encode().into_bytes().into();
    conf_change(shard, cc).await
}

/// Remove member `id` through a raft configuration change.
pub async fn remove_member(shard: &Rc<Shard>, id: u64) -> Answer {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::RemoveNode);
    cc.node_id = id;
    conf_change(shard, cc).await
}

/// Change a member's peer URLs (an update of its record, no voter change).
pub async fn update_member(shard: &Rc<Shard>, m: Member) -> Answer {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = m.id;
    cc.context = m.encode().into_bytes().into();
    conf_change(shard, cc).await
}

async fn conf_change(shard: &Rc<Shard>, cc: ConfChange) -> Answer {
    let mut data = vec![REQ_CONF];
    data.extend_from_slice(&cc.write_to_bytes().unwrap_or_default());
    match shard.request(data).await {
        Answer::Write(Reply {
            outcome: Err(e), ..
        }) => Answer::Read(Err(e)),
        a => a,
    }
}

/// Wait until this member has applied everything the leader had committed
/// when asked (ReadIndex): a read after this is linearizable.
pub async fn read_barrier(shard: &Rc<Shard>) -> Result<(), V2Error> {
    match shard.request(vec![REQ_READ]).await {
        Answer::Read(Ok(_)) => Ok(()),
        Answer::Read(Err(e))
        | Answer::Write(Reply {
            outcome: Err(e), ..
        }) => Err(e),
        Answer::Write(_) => Err(V2Error::new(RAFT_INTERNAL, "etcdserver: internal error", 0)),
    }
}

fn raft_fatal(e: raft::Error) -> crate::store::Error {
    crate::store::Error::Corrupt(format!("raft: {e}"))
}

/// Shard 0 of a sharded member turns each due directory TTL into a
/// member-wide expiry.
fn expire_dirs(shard: &Rc<Shard>) -> Result<(), Error> {
    let due = shard.store.borrow().due_dirs(wall_nanos(), 64)?;
    for dir in due {
        if shard.global.expiring.borrow().contains(&dir) {
            continue;
        }
        shard.global.expiring.borrow_mut().push(dir.clone());
        let mut data = Vec::with_capacity(48 + dir.len());
        Command::new(Op::Sync, &dir, wall_nanos()).encode(&mut data);
        global::submit(shard, Job::Write(data), None);
    }
    Ok(())
}

/// Parked for a member-wide operation: carry out the coordinator's steps
/// until it releases the shard. The loop is at a batch boundary: nothing of
/// this shard is in flight.
async fn park_session(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    global::report_parked(shard);
    loop {
        let op = global::next_subop(shard).await;
        tracing::trace!(shard = shard.id, op = op.name(), "subop");
        match op {
            SubOp::Unpark => {
                global::set_applying(shard, false);
                return Ok(());
            }
            SubOp::Batch(ops) => {
                let mut results = Vec::with_capacity(ops.len());
                let mut failed = None;
                for op in ops {
                    match subop(shard, g, op).await {
                        Ok(r) => results.push(r),
                        Err(e) => {
                            results.push(SubResult::Failed(e.to_string()));
                            failed = Some(e);
                            break;
                        }
                    }
                }
                global::report(shard, SubResult::Batch(results));
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            op => match subop(shard, g, op).await {
                Ok(r) => global::report(shard, r),
                Err(e) => {
                    global::report(shard, SubResult::Failed(e.to_string()));
                    return Err(e);
                }
            },
        }
    }
}

/// Carry out one step of a member-wide session.
async fn subop(shard: &Rc<Shard>, g: &mut Group, op: SubOp) -> Result<SubResult, Error> {
    Ok(match op {
        SubOp::Trial(data) => SubResult::Outcome(shard.store.borrow_mut().trial(&data)?),
        SubOp::Collect { key, now } => {
            SubResult::Collected(shard.store.borrow().collect_files(&key, now)?)
        }
        SubOp::Flush => {
            flush_global(shard, g).await?;
            SubResult::Outcome(None)
        }
        SubOp::Apply(data) => {
            global::set_applying(shard, true);
            SubResult::Outcome(apply_global(shard, g, data)?)
        }
        SubOp::Unpark | SubOp::Batch(_) => {
            return Err(Error::Store(crate::store::Error::Corrupt(
                "unexpected step in a member-wide batch".into(),
            )))
        }
    })
}

/// Execute and log one member-wide write on this shard; the coordinator's
/// `Flush` step makes the session's writes durable with one fsync.
fn apply_global(
    shard: &Rc<Shard>,
    g: &mut Group,
    data: Vec<u8>,
) -> Result<Option<crate::store::Outcome>, Error> {
    let node = &mut g.node;
    let o = shard.store.borrow_mut().batch(|st, txn| {
        let o = st.execute(txn, &data)?;
        node.propose(Vec::new(), data.clone()).map_err(raft_fatal)?;
        let last = node.raft.raft_log.last_index();
        let term = node.raft.raft_log.term(last).unwrap_or(node.raft.term);
        Ok((o, Some((last, term))))
    })?;
    shard.executed.set(shard.store.borrow().index());
    Ok(o)
}

/// Make the member-wide writes of this session durable (one fsync).
async fn flush_global(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    handle_ready(shard, g, &mut Vec::new()).await?;
    // The coordinator publishes each write's one merged event; only
    // placeholders (indexes no write kept) are this shard's to publish.
    let mut events = Vec::new();
    shard.store.borrow_mut().take_events(&mut events);
    events.retain(|e| e.json.is_empty());
    shard.publish(&mut events);
    shard.publish_figures();
    Ok(())
}

/// One `Ready`, in the order raft-rs documents. Entries committed with
/// several voters are executed here ([`apply_entries`]); their answers
/// join `answers`.
async fn handle_ready(
    shard: &Rc<Shard>,
    g: &mut Group,
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    if !g.node.has_ready() {
        return Ok(());
    }
    let rd = g.node.ready();
    process_ready(shard, g, rd, answers).await
}

/// Steps 1-6 for one `Ready`, persisting it from the loop.
async fn process_ready(
    shard: &Rc<Shard>,
    g: &mut Group,
    mut rd: raft::Ready,
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    if let Some(ss) = rd.ss() {
        let leader = ss.raft_state == StateRole::Leader;
        shard.is_leader.set(leader);
        shard.leader_id.set(ss.leader_id);
        tracing::info!(shard = shard.id, leader = %format!("{:x}", ss.leader_id), role = ?ss.raft_state, "raft state");
    }
    // 1. Messages to peers (a leader sends before it persists).
    send_messages(shard, g, rd.take_messages());
    // 2. A snapshot from the leader: replace the store with it.
    if !rd.snapshot().is_empty() {
        apply_snapshot(shard, g, rd.snapshot().clone()).await?;
    }
    // 3. Entries committed earlier (with one voter the store executed
    //    them before they were logged, so there is nothing to do).
    apply_entries(shard, g, &rd.take_committed_entries(), answers)?;
    for rs in rd.take_read_states() {
        barrier_reached(g, &rs.request_ctx, rs.index);
    }
    // 4. Persist new entries and hard state: one write, one fdatasync (the
    //    WAL writer is idle: this path is taken only then).
    let mut wal = g.persist.take_wal();
    if !rd.entries().is_empty() {
        wal.append_entries(rd.entries());
        g.node.mut_store().mem.wl().append(rd.entries())?;
    }
    if let Some(hs) = rd.hs() {
        wal.append_hard_state(hs);
        g.node.mut_store().mem.wl().set_hardstate(hs.clone());
    }
    let entries = rd.entries().len() as u64;
    if wal.has_pending() {
        let m = &shard.metrics;
        let t = Instant::now();
        let synced = wal.sync().await;
        g.persist.put_wal(wal);
        let bytes = synced?;
        let took = t.elapsed();
        Metrics::add(&m.sync_nanos, took.as_nanos() as u64);
        let _ = m
            .sync_micros
            .borrow_mut()
            .record(took.as_micros().max(1) as u64);
        Metrics::add(&m.syncs, 1);
        Metrics::add(&m.synced_entries, entries);
        Metrics::add(&m.wal_bytes, bytes);
    } else {
        g.persist.put_wal(wal);
    }
    // 5. Messages that had to wait for persistence.
    send_messages(shard, g, rd.take_persisted_messages());
    // 6. Advance, then the light ready.
    let mut light = g.node.advance(rd);
    if let Some(commit) = light.commit_index() {
        g.node
            .mut_store()
            .mem
            .wl()
            .mut_hard_state()
            .set_commit(commit);
    }
    send_messages(shard, g, light.take_messages());
    apply_entries(shard, g, &light.take_committed_entries(), answers)?;
    g.node.advance_apply();
    // Quorum reads whose barrier is now applied.
    let applied = shard.store.borrow().applied().0;
    g.barriers.retain(|(index, t)| {
        if *index <= applied {
            answers.push((*t, Answer::Read(Ok((Vec::new(), *index)))));
            false
        } else {
            true
        }
    });
    shard.raft_index.set(g.node.raft.raft_log.committed);
    shard.raft_term.set(g.node.raft.term);
    Ok(())
}

/// One `Ready` of a group with several voters, persisted off the loop: the
/// same documented order, except that step 4 queues the entries and hard
/// state for the WAL writer ([`persist`]) and step 5's messages wait until
/// it reports them durable; raft-rs learns that through `on_persist_ready`
/// and then commits and hands out entries in later `Ready`s.
async fn handle_ready_async(
    shard: &Rc<Shard>,
    g: &mut Group,
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    // Readies the writer has made durable since the last look.
    let done = g.persist.persisted();
    if done > g.reported {
        g.reported = done;
        g.node.on_persist_ready(done);
        while g.waiting.front().is_some_and(|(n, _)| *n <= done) {
            let (_, msgs) = g.waiting.pop_front().expect("front");
            send_messages(shard, g, msgs);
        }
    }
    if !g.node.has_ready() {
        return Ok(());
    }
    let mut rd = g.node.ready();
    let number = rd.number();
    if !rd.snapshot().is_empty() {
        // A snapshot: after every earlier write is durable, the whole Ready
        // is persisted from the loop (the store is replaced and synced).
        while !g.persist.idle() {
            glommio::timer::sleep(Duration::from_micros(200)).await;
        }
        let done = g.persist.persisted();
        if done > g.reported {
            g.reported = done;
            g.node.on_persist_ready(done);
        }
        for (_, msgs) in std::mem::take(&mut g.waiting) {
            send_messages(shard, g, msgs);
        }
        return process_ready(shard, g, rd, answers).await;
    }
    if let Some(ss) = rd.ss() {
        let leader = ss.raft_state == StateRole::Leader;
        shard.is_leader.set(leader);
        shard.leader_id.set(ss.leader_id);
        tracing::info!(shard = shard.id, leader = %format!("{:x}", ss.leader_id), role = ?ss.raft_state, "raft state");
    }
    // 1. Messages to peers.
    send_messages(shard, g, rd.take_messages());
    // 3. Committed entries (all durable here): execute them.
    apply_entries(shard, g, &rd.take_committed_entries(), answers)?;
    for rs in rd.take_read_states() {
        barrier_reached(g, &rs.request_ctx, rs.index);
    }
    // 4. New entries and hard state: into raft's log now, to disk later.
    //    A hard state whose only change is the commit index need not be
    //    written (raft-rs's `must_sync`; the commit index is learnt again
    //    from the leader, and the store records what was applied).
    if !rd.entries().is_empty() {
        g.node.mut_store().mem.wl().append(rd.entries())?;
    }
    if let Some(hs) = rd.hs() {
        g.node.mut_store().mem.wl().set_hardstate(hs.clone());
    }
    let hs = if rd.must_sync() {
        rd.hs().cloned()
    } else {
        None
    };
    // 5. Messages that wait for this Ready's persistence. A follower's
    //    forwarded proposals and read requests promise nothing about its
    //    log: they go at once.
    let (now_msgs, persisted_msgs): (Vec<Message>, Vec<Message>) =
        rd.take_persisted_messages().into_iter().partition(|m| {
            matches!(
                m.get_msg_type(),
                MessageType::MsgPropose | MessageType::MsgReadIndex
            )
        });
    send_messages(shard, g, now_msgs);
    let nothing = rd.entries().is_empty() && hs.is_none();
    if nothing && g.persist.idle() && g.waiting.is_empty() {
        // Nothing to write and nothing being written: already durable.
        send_messages(shard, g, persisted_msgs);
        g.node.advance_append_async(rd);
        g.node.on_persist_ready(number);
        g.reported = g.reported.max(number);
    } else {
        g.persist.queue(number, rd.entries(), hs.as_ref());
        if !persisted_msgs.is_empty() {
            g.waiting.push_back((number, persisted_msgs));
        }
        // 6. Advance without waiting for the disk.
        g.node.advance_append_async(rd);
    }
    g.node.advance_apply();
    let applied = shard.store.borrow().applied().0;
    g.barriers.retain(|(index, t)| {
        if *index <= applied {
            answers.push((*t, Answer::Read(Ok((Vec::new(), *index)))));
            false
        } else {
            true
        }
    });
    shard.raft_index.set(g.node.raft.raft_log.committed);
    shard.raft_term.set(g.node.raft.term);
    Ok(())
}

/// A read state arrived: the barrier waits for that index to be applied.
fn barrier_reached(g: &mut Group, ctx: &[u8], index: u64) {
    let Some(seq) = own_request(g.opts.member_id, ctx) else {
        return;
    };
    if let Some(at) = g.reads.iter().position(|(s, _, _)| *s == seq) {
        let (_, t, _) = g.reads.swap_remove(at);
        g.barriers.push((index, t));
    }
}

/// Hand raft messages to the peer transport.
fn send_messages(shard: &Shard, g: &mut Group, msgs: Vec<Message>) {
    if msgs.is_empty() {
        return;
    }
    let Some(t) = shard.transport.borrow().clone() else {
        return;
    };
    for m in msgs {
        let to = m.to;
        let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        t.observe(to, true, &m);
        let sent = t.send(shard.id as u16, &m);
        if snapshot {
            // Sent (or dropped): free the copy; the next ask makes a fresh one.
            *g.node.store().snap.borrow_mut() = log::SnapSlot::Empty;
            let status = if sent {
                tracing::info!(to = %format!("{to:x}"), index = m.get_snapshot().get_metadata().index, "sent snapshot");
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            g.node.report_snapshot(to, status);
        }
        if !sent {
            g.node.report_unreachable(to);
        }
    }
}

/// Execute committed entries the store has not applied yet, in log order,
/// in one transaction: commands, configuration changes, member attributes.
/// Answers go to this member's requests among them.
fn apply_entries(
    shard: &Rc<Shard>,
    g: &mut Group,
    entries: &[Entry],
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    let applied = shard.store.borrow().applied().0;
    let todo: Vec<&Entry> = entries.iter().filter(|e| e.index > applied).collect();
    let Some(last) = todo.last() else {
        return Ok(());
    };
    let last = (last.index, last.term);
    let me = g.opts.member_id;
    let node = &mut g.node;
    let view = shard.view().clone();
    let mut outs: Vec<(u64, Answer)> = Vec::new();
    let mut confs = Vec::new();
    let mut removed = false;
    let mut attrs_done = false;
    shard.store.borrow_mut().batch(|st, txn| {
        for e in &todo {
            let seq = own_request(me, &e.context);
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal if e.data[0] == ENTRY_ATTRS => {
                    let m = std::str::from_utf8(&e.data[1..])
                        .ok()
                        .and_then(Member::decode);
                    if let Some(m) = m {
                        attrs_done |= m.id == me;
                        let mut v = view.write().expect("membership");
                        if let Some(x) = v.get(m.id).cloned() {
                            v.upsert(Member {
                                name: m.name,
                                client_urls: m.client_urls,
                                ..x
                            });
                            st.meta_put(txn, META_MEMBERS, &v.encode())?;
                        }
                    }
                }
                EntryType::EntryNormal => {
                    let o = st.execute(txn, &e.data)?;
                    if let (Some(seq), Some(o)) = (seq, o) {
                        outs.push((
                            seq,
                            Answer::Write(Reply {
                                outcome: o,
                                raft_index: 0,
                                raft_term: 0,
                            }),
                        ));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(|e| {
                        crate::store::Error::Corrupt(format!("conf change entry: {e}"))
                    })?;
                    let cs = node.apply_conf_change(&cc).map_err(raft_fatal)?;
                    let mut v = view.write().expect("membership");
                    match cc.get_change_type() {
                        ConfChangeType::RemoveNode => {
                            v.remove(cc.node_id);
                            removed |= cc.node_id == me;
                        }
                        _ => {
                            let m = std::str::from_utf8(&cc.context)
                                .ok()
                                .and_then(Member::decode);
                            if let Some(m) = m {
                                v.upsert(m);
                            }
                        }
                    }
                    st.meta_put(txn, META_MEMBERS, &v.encode())?;
                    st.meta_put(txn, META_CONF, &cs.write_to_bytes().unwrap_or_default())?;
                    tracing::info!(change = ?cc.get_change_type(), member = %format!("{:x}", cc.node_id), voters = ?cs.voters, "membership changed");
                    confs.push(cs);
                    if let Some(seq) = seq {
                        outs.push((seq, Answer::Read(Ok((v.encode(), 0)))));
                    }
                }
                EntryType::EntryConfChangeV2 => {}
            }
        }
        Ok(((), Some(last)))
    })?;
    if !confs.is_empty() {
        // A prepared snapshot describes the old configuration.
        let slot = &g.node.store().snap;
        if matches!(*slot.borrow(), log::SnapSlot::Ready(_)) {
            *slot.borrow_mut() = log::SnapSlot::Empty;
        }
    }
    for cs in confs {
        g.node.mut_store().mem.wl().set_conf_state(cs);
    }
    for (seq, a) in outs {
        if let Some((t, _)) = g.pending.remove(&seq) {
            answers.push((t, a));
        }
    }
    g.removed |= removed;
    g.attrs_done |= attrs_done;
    Ok(())
}

/// Make a snapshot for lagging followers: a consistent copy of the store,
/// off the executor.
fn prepare_snapshot(shard: &Rc<Shard>, g: &mut Group) {
    let env = shard.store.borrow().env().clone();
    let dir = g.opts.snap_dir.join("send");
    let slot = g.node.store().snap.clone();
    glommio::spawn_local(async move {
        let r = glommio::executor()
            .spawn_blocking(move || -> Result<Snapshot, String> {
                let info = crate::store::Store::copy_to(&env, &dir, META_CONF)
                    .map_err(|e| e.to_string())?;
                let data = std::fs::read(dir.join("data.mdb")).map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir_all(&dir);
                let mut snap = Snapshot {
                    data: data.into(),
                    ..Default::default()
                };
                let md = snap.mut_metadata();
                md.index = info.applied.0;
                md.term = info.applied.1;
                if let Some(c) = info.conf {
                    md.set_conf_state(ConfState::parse_from_bytes(&c).map_err(|e| e.to_string())?);
                }
                Ok(snap)
            })
            .await;
        *slot.borrow_mut() = match r {
            Ok(s) => {
                tracing::info!(
                    index = s.get_metadata().index,
                    bytes = s.data.len(),
                    "snapshot ready"
                );
                log::SnapSlot::Ready(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot make a snapshot");
                log::SnapSlot::Empty
            }
        };
    })
    .detach();
}

/// Replace the store with a snapshot from the leader, make it durable,
/// and continue the log after it.
async fn apply_snapshot(shard: &Rc<Shard>, g: &mut Group, snap: Snapshot) -> Result<(), Error> {
    let dir = g.opts.snap_dir.join("recv");
    let md = snap.get_metadata().clone();
    let corrupt = |e: String| Error::Store(crate::store::Error::Corrupt(e));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| corrupt(e.to_string()))?;
    std::fs::write(dir.join("data.mdb"), &snap.data).map_err(|e| corrupt(e.to_string()))?;
    shard.store.borrow_mut().restore(&dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    let env = shard.store.borrow().env().clone();
    glommio::executor()
        .spawn_blocking(move || env.force_sync())
        .await
        .map_err(|e| corrupt(format!("sync after snapshot: {e}")))?;
    g.node.mut_store().mem.wl().apply_snapshot(snap)?;
    if let Some(b) = shard.store.borrow().meta_get(META_MEMBERS)? {
        if let Some(c) = Cluster::decode(&b, g.opts.member_id) {
            *shard.view().write().expect("membership") = c;
        }
    }
    let index = shard.store.borrow().index();
    shard.orderer.borrow_mut().skip_to(index);
    shard.executed.set(index);
    tracing::info!(
        index = md.index,
        term = md.term,
        etcd_index = index,
        "applied snapshot from the leader"
    );
    Ok(())
}

fn error_reply(cause: &str) -> Reply {
    Reply {
        outcome: Err(V2Error::new(RAFT_INTERNAL, cause, 0)),
        raft_index: 0,
        raft_term: 0,
    }
}

/// The wall clock in Unix nanoseconds.
pub fn wall_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
