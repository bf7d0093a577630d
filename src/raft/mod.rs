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

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, EntryType, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole, Storage};

use crate::shard::global::{self, Job, SubOp, SubResult};
use crate::shard::{Metrics, Proposal, Reply, Shard, Target};
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
}

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
    node: RawNode<MemStorage>,
    wal: Wal,
    opts: RaftOptions,
    /// Member-wide operations found in the log, by sequence (for
    /// [`roll_forward`] on the shards that missed them).
    pub global_ops: Vec<(u64, Vec<u8>)>,
}

/// Rebuild the raft group of `shard` from its store and the WAL in `wal_dir`.
pub async fn start(shard: &Shard, wal_dir: &Path, opts: RaftOptions) -> Result<Group, Error> {
    let (recovered, segments) = Wal::recover(wal_dir)?;
    let (applied, _) = shard.store.borrow().applied();
    let id = opts.member_id;
    // Replay the logged entries the store has not applied: each carries the
    // indexes it took when first executed, so replay repeats them exactly.
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
    if !entries.is_empty() {
        let mut out = Vec::new();
        shard.store.borrow_mut().apply_batch(
            entries.iter().map(|e| {
                let data: &[u8] = if e.get_entry_type() == EntryType::EntryNormal {
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
    let (applied, applied_term) = shard.store.borrow().applied();
    let storage = MemStorage::new();
    if applied > 0 {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = applied;
        snap.mut_metadata().term = applied_term;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![id], vec![])));
        storage.wl().apply_snapshot(snap)?;
    } else {
        storage
            .wl()
            .set_conf_state(ConfState::from((vec![id], vec![])));
    }
    let mut hs = recovered.hard_state.unwrap_or_default();
    hs.commit = applied;
    hs.term = hs.term.max(applied_term);
    storage.wl().set_hardstate(hs);
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
    if node.raft.prs().conf().voters().ids().len() == 1 {
        node.campaign()?;
        shard.is_leader.set(node.raft.state == StateRole::Leader);
    }
    let wal = Wal::open(wal_dir, segments, opts.segment_bytes).await?;
    Ok(Group {
        node,
        wal,
        opts,
        global_ops,
    })
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
    // Executed proposals waiting for their entries to be durable.
    let mut answers: Vec<(Target, Reply)> = Vec::new();
    let mut events = Vec::new();
    let mut next_tick = Instant::now() + g.opts.heartbeat;
    let mut last_checkpoint = Instant::now();
    // Filled by the checkpoint task with the applied index it made durable.
    let checkpoint_done: Rc<RefCell<Option<Result<u64, String>>>> = Rc::default();
    let mut checkpointing = false;
    let mut checkpointed = shard.store.borrow().applied().0;
    let mut next_expiry: Option<i64> = shard.store.borrow().next_expiry()?;
    let (mut rate_since, mut rate_count) = (Instant::now(), 0u64);
    loop {
        // Wait for proposals, the next tick or the next expiry.
        let now = Instant::now();
        let mut wake = next_tick;
        if let Some(t) = next_expiry {
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

        shard.take_proposals(&mut proposals);
        let now = Instant::now();
        if now >= next_tick {
            g.node.tick();
            next_tick = now + g.opts.heartbeat;
            // Diagnostics: the write rate and the live log, about once a second.
            let elapsed = now.duration_since(rate_since);
            if elapsed >= Duration::from_secs(1) {
                let done = shard.metrics.proposals.get();
                let f = &shard.shared.figures[shard.id];
                let per_sec = (done - rate_count) as f64 / elapsed.as_secs_f64();
                f.rate.store(per_sec.round() as u64, Ordering::Relaxed);
                f.wal_segments
                    .store(g.wal.sealed_segments() as u64, Ordering::Relaxed);
                f.wal_offset.store(g.wal.offset(), Ordering::Relaxed);
                (rate_since, rate_count) = (now, done);
            }
        }
        // Expiry: the leader executes one SYNC per batch, stamped with its clock.
        let expire_now = match next_expiry {
            Some(t) if shard.is_leader.get() && t <= wall_nanos() => Some(wall_nanos()),
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

        if g.node.has_ready() || !answers.is_empty() || shard.store.borrow().has_events() {
            handle_ready(shard, g).await?;
            // The batch is durable: deliver its events, then answer.
            shard.store.borrow_mut().take_events(&mut events);
            shard.publish(&mut events);
            shard.publish_figures();
            let (ri, rt) = (g.node.raft.raft_log.committed, g.node.raft.term);
            for (target, mut reply) in answers.drain(..) {
                reply.raft_index = ri;
                reply.raft_term = rt;
                shard.answer(target, reply);
            }
        }

        // Checkpoint: sync LMDB off the executor, then drop covered log.
        let finished = checkpoint_done.borrow_mut().take();
        if let Some(done) = finished {
            checkpointing = false;
            match done {
                Ok(durable) => g.wal.release(durable).await?,
                Err(e) => {
                    return Err(Error::Store(crate::store::Error::Corrupt(format!(
                        "checkpoint: {e}"
                    ))))
                }
            }
        }
        // Checkpoint when a WAL segment has filled (to free it) or, with
        // progress, after the interval. Each checkpoint's writeback delays
        // the WAL syncs around it, so they are kept rare: about once per
        // 64 MiB of log. Segments roll only when full.
        let applied = shard.store.borrow().applied().0;
        let due = applied > checkpointed
            && (g.wal.sealed_segments() > 0
                || last_checkpoint.elapsed() >= g.opts.checkpoint_interval);
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
        // Applied entries need not stay in memory (a one-member group has no
        // follower to send them to): drop them in small steps, so memory
        // stays flat and no single compaction frees a huge log at once.
        let store = g.node.mut_store();
        if applied >= store.first_index()? + COMPACT_EVERY {
            store.wl().compact(applied)?;
        }
    }
}

/// Compact the in-memory raft log once this many applied entries pile up.
const COMPACT_EVERY: u64 = 1024;

/// Execute a batch of proposals (and an expiry) in one store transaction,
/// before their entries are logged: each command takes its member-wide etcd
/// indexes now, in this shard's log order, and its entry records them, so a
/// replay repeats them exactly. Successful commands enter the raft log;
/// failed ones change nothing and are not logged. Every answer waits in
/// `answers` until the batch is durable.
fn execute(
    shard: &Rc<Shard>,
    g: &mut Group,
    proposals: &mut Vec<Proposal>,
    expire_now: Option<i64>,
    answers: &mut Vec<(Target, Reply)>,
) -> Result<(), Error> {
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
                    Reply {
                        outcome,
                        raft_index: 0,
                        raft_term: 0,
                    },
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
    handle_ready(shard, g).await?;
    // The coordinator publishes each write's one merged event; only
    // placeholders (indexes no write kept) are this shard's to publish.
    let mut events = Vec::new();
    shard.store.borrow_mut().take_events(&mut events);
    events.retain(|e| e.json.is_empty());
    shard.publish(&mut events);
    shard.publish_figures();
    Ok(())
}

/// One `Ready`, in the order raft-rs documents.
async fn handle_ready(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    if !g.node.has_ready() {
        return Ok(());
    }
    let mut rd = g.node.ready();
    if let Some(ss) = rd.ss() {
        let leader = ss.raft_state == StateRole::Leader;
        shard.is_leader.set(leader);
        tracing::info!(shard = shard.id, leader = ss.leader_id, role = ?ss.raft_state, "raft state");
    }
    // 1. Messages to peers (none while the group has one voter).
    let _ = rd.take_messages();
    // 2. A snapshot from the leader (multi-member groups only).
    if !rd.snapshot().is_empty() {
        unimplemented_snapshot()?;
    }
    // 3. Entries committed earlier: the store executed them before they
    //    were logged (a one-member group commits what it logs).
    check_applied(shard, &rd.take_committed_entries())?;
    // 4. Persist new entries and hard state: one write, one fdatasync.
    if !rd.entries().is_empty() {
        g.wal.append_entries(rd.entries());
        g.node.mut_store().wl().append(rd.entries())?;
    }
    if let Some(hs) = rd.hs() {
        g.wal.append_hard_state(hs);
        g.node.mut_store().wl().set_hardstate(hs.clone());
    }
    let entries = rd.entries().len() as u64;
    if g.wal.has_pending() {
        let m = &shard.metrics;
        let t = Instant::now();
        let bytes = g.wal.sync().await?;
        let took = t.elapsed();
        Metrics::add(&m.sync_nanos, took.as_nanos() as u64);
        let _ = m
            .sync_micros
            .borrow_mut()
            .record(took.as_micros().max(1) as u64);
        Metrics::add(&m.syncs, 1);
        Metrics::add(&m.synced_entries, entries);
        Metrics::add(&m.wal_bytes, bytes);
    }
    // 5. Messages that had to wait for persistence.
    let _ = rd.take_persisted_messages();
    // 6. Advance, then the light ready.
    let mut light = g.node.advance(rd);
    if let Some(commit) = light.commit_index() {
        g.node.mut_store().wl().mut_hard_state().set_commit(commit);
    }
    let _ = light.take_messages();
    check_applied(shard, &light.take_committed_entries())?;
    g.node.advance_apply();
    shard.raft_index.set(g.node.raft.raft_log.committed);
    shard.raft_term.set(g.node.raft.term);
    Ok(())
}

fn unimplemented_snapshot() -> Result<(), Error> {
    Err(Error::Store(crate::store::Error::Corrupt(
        "received a raft snapshot, which a single-member group never sends".into(),
    )))
}

/// Committed entries must already be in the store (executed before logging).
fn check_applied(shard: &Shard, entries: &[Entry]) -> Result<(), Error> {
    // Raft's own empty entries (a new leader's) need no execution.
    let applied = shard.store.borrow().applied().0;
    match entries
        .iter()
        .find(|e| e.index > applied && !e.data.is_empty())
    {
        Some(e) => Err(Error::Store(crate::store::Error::Corrupt(format!(
            "raft committed entry {} that the store has not executed (applied {applied})",
            e.index
        )))),
        None => Ok(()),
    }
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
