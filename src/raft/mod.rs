//! The raft loop of one shard: the only place raft-rs is driven.
//!
//! [`start`] rebuilds the raft group from the store's applied index and the
//! WAL; [`run`] then loops: wait for proposals or a tick, hand proposals to
//! the `RawNode`, and handle each `Ready` in raft-rs's documented order —
//! send messages, apply a snapshot, apply committed entries, persist new
//! entries and hard state (one fdatasync for the batch), send persisted
//! messages, `advance`, and handle the `LightReady`. Consensus itself does
//! no I/O; this loop does all of it. Applied results go back to proposers
//! through the shard's reply slots.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, EntryType, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole, Storage};

use crate::shard::{Metrics, Reply, Shard};
use crate::storage::wal::Wal;
use crate::store::{Command, Op};
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
}

/// Rebuild the raft group of `shard` from its store and the WAL in `wal_dir`.
pub async fn start(shard: &Shard, wal_dir: &Path, opts: RaftOptions) -> Result<Group, Error> {
    let (recovered, segments) = Wal::recover(wal_dir)?;
    let (applied, applied_term) = shard.store.borrow().applied();
    let id = opts.member_id;
    let storage = if applied > 0 {
        let s = MemStorage::new();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = applied;
        snap.mut_metadata().term = applied_term;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![id], vec![])));
        s.wl().apply_snapshot(snap)?;
        s
    } else {
        MemStorage::new_with_conf_state(ConfState::from((vec![id], vec![])))
    };
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
    let last = entries.last().map_or(applied, |e| e.index);
    storage.wl().append(&entries)?;
    let mut hs = recovered.hard_state.unwrap_or_default();
    hs.commit = hs.commit.clamp(applied, last);
    hs.term = hs
        .term
        .max(applied_term)
        .max(entries.last().map_or(0, |e| e.term));
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
    }
    let wal = Wal::open(wal_dir, segments, opts.segment_bytes).await?;
    Ok(Group { node, wal, opts })
}

/// Drive the group until a fatal error (which stops the shard).
pub async fn run(shard: Rc<Shard>, mut g: Group) {
    if let Err(e) = run_inner(&shard, &mut g).await {
        shard.fail(e.to_string());
    }
}

async fn run_inner(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    let mut proposals = Vec::new();
    // Raft index of each waiting proposal, in log order.
    let mut waiting: VecDeque<(u64, usize)> = VecDeque::new();
    let mut next_tick = Instant::now() + g.opts.heartbeat;
    let mut last_checkpoint = Instant::now();
    // Filled by the checkpoint task with the applied index it made durable.
    let checkpoint_done: Rc<RefCell<Option<Result<u64, String>>>> = Rc::default();
    let mut checkpointing = false;
    let mut checkpointed = shard.store.borrow().applied().0;
    let mut sync_in_flight: Option<u64> = None;
    let mut next_expiry: Option<i64> = shard.store.borrow().next_expiry()?;
    let mut results = Vec::new();
    loop {
        // Wait for proposals, the next tick or the next expiry.
        let now = Instant::now();
        let mut wake = next_tick;
        if let (Some(t), None) = (next_expiry, sync_in_flight) {
            let d = Duration::from_nanos((t - wall_nanos()).max(0) as u64);
            wake = wake.min(now + d);
        }
        if wake > now && !g.node.has_ready() {
            let sleep = glommio::timer::sleep(wake - now);
            futures_lite::future::or(shard.proposals_ready(), sleep).await;
        }

        shard.take_proposals(&mut proposals);
        Metrics::add(&shard.metrics.proposals, proposals.len() as u64);
        for p in proposals.drain(..) {
            match g.node.propose(Vec::new(), p.data) {
                Ok(()) => {
                    if let Some(slot) = p.slot {
                        waiting.push_back((g.node.raft.raft_log.last_index(), slot));
                    }
                }
                Err(e) => {
                    if let Some(slot) = p.slot {
                        shard.complete(slot, error_reply(&format!("etcdserver: {e}")));
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= next_tick {
            g.node.tick();
            next_tick = now + g.opts.heartbeat;
        }
        // Expiry: the leader proposes one SYNC at a time, stamped with its clock.
        if let (Some(t), None, true) = (next_expiry, sync_in_flight, shard.is_leader.get()) {
            let wall = wall_nanos();
            if t <= wall {
                let mut data = Vec::with_capacity(40);
                Command::new(Op::Sync, b"/", wall).encode(&mut data);
                if g.node.propose(Vec::new(), data).is_ok() {
                    sync_in_flight = Some(g.node.raft.raft_log.last_index());
                }
            }
        }

        if g.node.has_ready() {
            handle_ready(shard, g, &mut waiting, &mut results).await?;
            if let Some(i) = sync_in_flight {
                if shard.store.borrow().applied().0 >= i {
                    sync_in_flight = None;
                }
            }
            next_expiry = shard.store.borrow().next_expiry()?;
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

/// One `Ready`, in the order raft-rs documents.
async fn handle_ready(
    shard: &Rc<Shard>,
    g: &mut Group,
    waiting: &mut VecDeque<(u64, usize)>,
    results: &mut Vec<(u64, crate::store::Outcome)>,
) -> Result<(), Error> {
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
    // 3. Entries committed earlier.
    apply(shard, g, rd.take_committed_entries(), waiting, results)?;
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
    apply(shard, g, light.take_committed_entries(), waiting, results)?;
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

/// Apply committed entries to the store and answer their proposers.
fn apply(
    shard: &Rc<Shard>,
    g: &mut Group,
    entries: Vec<Entry>,
    waiting: &mut VecDeque<(u64, usize)>,
    results: &mut Vec<(u64, crate::store::Outcome)>,
) -> Result<(), Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let last = entries.last().map_or(0, |e| e.index);
    results.clear();
    shard.store.borrow_mut().apply_batch(
        entries.iter().map(|e| {
            let data: &[u8] = if e.get_entry_type() == EntryType::EntryNormal {
                &e.data
            } else {
                &[]
            };
            (e.index, e.term, data)
        }),
        results,
    )?;
    let raft_index = g.node.raft.raft_log.committed.max(last);
    let raft_term = g.node.raft.term;
    let mut results = results.drain(..).peekable();
    while let Some(&(idx, slot)) = waiting.front() {
        if idx > last {
            break;
        }
        waiting.pop_front();
        // Results are in log order; a proposal without one was dropped.
        while results.peek().is_some_and(|r| r.0 < idx) {
            results.next();
        }
        let reply = match results.peek() {
            Some(r) if r.0 == idx => {
                let (_, outcome) = results.next().unwrap();
                Reply {
                    outcome,
                    raft_index,
                    raft_term,
                }
            }
            _ => error_reply("etcdserver: request cancelled"),
        };
        shard.complete(slot, reply);
    }
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
