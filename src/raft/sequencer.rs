//! One etcd index across the raft groups of a sharded cluster (issue #14).
//!
//! Each shard of a replicated member with several shards is its own raft
//! group. The *sequencer* is the member that leads every group: only it
//! stamps commands with etcd indexes, taken from the member-wide counter in
//! the same step that appends them to the group's log (its own proposals
//! and those followers forward, intercepted before raft-rs appends them),
//! so within a group log order is index order. Every member executes each
//! committed entry with the indexes it carries ([`Store::execute_stamped`]).
//!
//! Leadership is co-located: group 0's leader is the candidate, and a
//! member leading another group transfers it there. A member becomes the
//! sequencer (a new *generation*) only once it leads every group and has
//! committed an entry of its own term in each: then every entry that can
//! still commit is in its logs, and its counter starts above every index
//! they hold. A group whose leadership or term changes ends the generation
//! at once; its loop stamps nothing until a new one begins.
//!
//! Gaps: an index stamped on an entry that never commits (a deposed
//! sequencer's) is never published by anyone, so each generation begins by
//! appending an *epoch* entry with its first index S to every group, before
//! any stamped entry. A member that has applied epoch S in every group has
//! applied every entry below S that can ever commit, and its orderer closes
//! up to S - 1 (`Orderer::close`), skipping the gaps. A member whose orderer
//! waits on a gap for long (a restart, a dropped proposal) asks for a fresh
//! epoch through group 0's log; the sequencer intercepts the request.
//!
//! Member-wide writes (the skeleton above the unit depth) are stamped once
//! in group 0 and queued for every other group, which appends them before
//! its next stamp; each group's apply stops at one ([`apply_in_order`])
//! until every group of the member has reached it, and the coordinator
//! runs it at that cut (`shard::global`). A listing across shards gates
//! every group's apply at one index instead (`global::gate_cut`). The
//! members API changes group 0; the other groups follow its voters
//! ([`follow_conf`]).
//!
//! Shared state (`Sequencer`, one per member, in `shard::Shared`) is
//! written by the groups' loops, each on its own executor; a mutex guards
//! the generation and the counter's stamping, taken once per batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::*;

/// An epoch entry: `ENTRY_EPOCH`, then the generation's first index (u64 LE).
pub(super) const ENTRY_EPOCH: u8 = 0xC3;
/// A request for a fresh epoch (no payload), proposed in group 0.
pub(super) const ENTRY_EPOCH_ASK: u8 = 0xC4;

/// The store's metadata key of the member's closed index as this shard
/// last recorded it (see [`record_closed`]).
pub const META_CLOSED: &[u8] = b"closed";
/// The store's metadata key of the last member-wide write this shard
/// resolved: its sequence (u64) and 1 if applied, 0 if passed over.
pub const META_RESOLVED: &[u8] = b"resolved";
/// How often a shard records the member's closed index.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// Indexes stamped on an auth change (etcd's first one also creates the
/// auth directories: four more).
const AUTH_STAMPS: u64 = 8;
/// Keys one SYNC may expire in a sharded cluster.
const SYNC_STAMPS: usize = 1024;
/// Forwarded or local commands held while no generation is running.
const MAX_HELD: usize = 65_536;
/// How long an orderer may wait on a gap before asking for an epoch.
pub(super) const GAP_PATIENCE: Duration = Duration::from_millis(200);

/// What one group publishes for the others.
#[derive(Default)]
struct GroupState {
    leader: AtomicU64,
    /// The term in which this member leads the group with an entry of that
    /// term committed; 0 otherwise.
    ready_term: AtomicU64,
    /// The largest etcd index (stamp or epoch) in the group's log when it
    /// became ready.
    log_max: AtomicU64,
    /// The member-wide writes in its log not applied yet then, by index.
    globals: Mutex<Vec<(u64, Vec<u8>)>>,
}

struct Generation {
    /// 0: none running (nobody stamps).
    id: u64,
    next_id: u64,
    /// The ready term of each group the generation was made with.
    terms: Vec<u64>,
    /// The newest epoch start each group must append before stamping.
    epoch: u64,
    /// Member-wide writes stamped in group 0, each group's to append before
    /// its next stamp (so its log stays in index order).
    globals: Vec<VecDeque<Vec<u8>>>,
}

/// A member's sequencing state (see the module text).
pub struct Sequencer {
    /// This member is in a sharded cluster (stamped indexes).
    pub enabled: bool,
    /// Group 0's voters as its loop last saw them: the configuration every
    /// other group follows.
    voters0: Mutex<Vec<u64>>,
    /// The last member-wide write any shard of this member had resolved
    /// when it started (sequence, applied): a crash in the middle of a
    /// session leaves it resolved on some shards only, and the others
    /// resolve it alike without a session.
    resolved: Mutex<(u64, bool)>,
    groups: Vec<GroupState>,
    generation: Mutex<Generation>,
    counter: Arc<AtomicU64>,
}

impl Sequencer {
    pub fn new(shards: usize, enabled: bool, counter: Arc<AtomicU64>) -> Sequencer {
        Sequencer {
            enabled,
            voters0: Mutex::default(),
            resolved: Mutex::default(),
            groups: (0..shards).map(|_| GroupState::default()).collect(),
            generation: Mutex::new(Generation {
                id: 0,
                next_id: 1,
                terms: vec![0; shards],
                epoch: 0,
                globals: (0..shards).map(|_| VecDeque::new()).collect(),
            }),
            counter,
        }
    }

    /// The leader of group `g` as its loop last published it (0: none).
    pub fn leader(&self, g: usize) -> u64 {
        self.groups
            .get(g)
            .map_or(0, |s| s.leader.load(Ordering::Acquire))
    }

    /// The last member-wide write a shard of this member resolved
    /// (sequence, applied); see `resolved`.
    fn last_resolved(&self) -> (u64, bool) {
        *self.resolved.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Generation> {
        self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At start: shard's last resolved member-wide write (see `resolved`).
    pub fn note_resolved(&self, store: &crate::store::Store) -> Result<(), crate::store::Error> {
        let Some(b) = store.meta_get(META_RESOLVED)? else {
            return Ok(());
        };
        if b.len() == 9 {
            let gseq = u64::from_le_bytes(b[..8].try_into().unwrap());
            let mut r = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            if gseq > r.0 {
                *r = (gseq, b[8] == 1);
            }
        }
        Ok(())
    }

    /// Group `g`'s loop reports its leader and readiness; a change of
    /// either ends the running generation if it counted on this group.
    fn publish(&self, g: usize, leader: u64, ready_term: u64, log: (u64, Vec<(u64, Vec<u8>)>)) {
        let s = &self.groups[g];
        s.leader.store(leader, Ordering::Release);
        if ready_term != 0 {
            s.log_max.store(log.0, Ordering::Release);
            *s.globals.lock().unwrap_or_else(|e| e.into_inner()) = log.1;
        }
        let before = s.ready_term.swap(ready_term, Ordering::AcqRel);
        if before != ready_term {
            let mut gn = self.lock();
            if gn.id != 0 && gn.terms[g] != ready_term {
                tracing::info!(group = g, generation = gn.id, "sequencing stops");
                gn.id = 0;
                // What some groups did not append yet, the next generation
                // finds in the logs.
                gn.globals.iter_mut().for_each(VecDeque::clear);
            }
        }
    }

    /// Group 0's loop, on a member leading every group with its own term
    /// committed in each: begin a generation. Returns its first index.
    fn try_begin(&self, me: u64) -> Option<u64> {
        let mut gn = self.lock();
        if gn.id != 0 {
            return None;
        }
        let mut terms = Vec::with_capacity(self.groups.len());
        let mut max = self.counter.load(Ordering::SeqCst);
        let mut globals = std::collections::BTreeMap::new();
        for s in &self.groups {
            let t = s.ready_term.load(Ordering::Acquire);
            if t == 0 || s.leader.load(Ordering::Acquire) != me {
                return None;
            }
            terms.push(t);
            max = max.max(s.log_max.load(Ordering::Acquire));
            for (i, d) in s.globals.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                globals.insert(*i, d.clone());
            }
        }
        // A member-wide write the last sequencer stamped and queued may be
        // in some groups' logs only: a group whose log ends below it lacks
        // it (each group appends them in order, before any later stamp),
        // and appends it first now.
        for (g, s) in self.groups.iter().enumerate() {
            let top = s.log_max.load(Ordering::Acquire);
            gn.globals[g] = globals.range(top + 1..).map(|(_, d)| d.clone()).collect();
            if !gn.globals[g].is_empty() {
                tracing::warn!(
                    group = g,
                    operations = gn.globals[g].len(),
                    "completing member-wide writes the last sequencer left in some groups only"
                );
            }
        }
        let start = max + 1;
        self.counter.fetch_max(max, Ordering::SeqCst);
        gn.id = gn.next_id;
        gn.next_id += 1;
        gn.terms = terms;
        gn.epoch = start;
        tracing::info!(
            generation = gn.id,
            start,
            "this member sequences every group"
        );
        Some(start)
    }

    /// A fresh epoch for every group (a gap some member waits on).
    fn renew_epoch(&self) {
        let mut gn = self.lock();
        if gn.id != 0 {
            gn.epoch = self.counter.load(Ordering::SeqCst) + 1;
        }
    }
}

/// One group loop's sequencing state.
#[derive(Default)]
pub(super) struct Local {
    /// Last published (leader, ready term).
    published: (u64, u64),
    /// The last epoch this group appended.
    epoch_done: u64,
    /// Commands waiting for a generation, with their deadlines.
    held: VecDeque<(Entry, Instant)>,
    /// When this group last tried to move its leadership.
    last_move: Option<Instant>,
    /// When this member last asked for an epoch.
    last_ask: Option<Instant>,
    /// The closed index last recorded in the store, and when.
    recorded: (u64, Option<Instant>),
    /// Stopped at a member-wide write (the stash's first entry) until the
    /// coordinator has run it.
    at_global: bool,
    /// Committed entries held from that write on, in log order.
    stash: VecDeque<Entry>,
}

impl Local {
    /// A snapshot replaced this group's store: nothing it held is left.
    pub(super) fn after_snapshot(&mut self) {
        self.at_global = false;
        self.stash.clear();
    }
}

/// After each `Ready`: publish this group's leadership and readiness; on
/// group 0, begin a generation when this member qualifies.
pub(super) fn publish_state(shard: &Shard, g: &mut Group) {
    let seq = &shard.shared.seq;
    let raft = &g.node.raft;
    let leader = raft.leader_id;
    let ready = raft.state == StateRole::Leader && raft.commit_to_current_term();
    let ready_term = if ready { raft.term } else { 0 };
    if (leader, ready_term) != g.seq.published {
        let log = if ready {
            log_max(shard, g)
        } else {
            (0, Vec::new())
        };
        seq.publish(shard.id, leader, ready_term, log);
        g.seq.published = (leader, ready_term);
    }
    if shard.id == 0 && ready && seq.try_begin(g.opts.member_id).is_some() {
        // Every other group owes the generation's epoch: at once.
        for other in 1..shard.shared.shards {
            shard.send_peer(other, crate::shard::mesh::Msg::Wake);
        }
    }
}

/// The largest etcd index in this group — applied (the store's) or in the
/// log beyond it (stamps and epochs of entries not applied yet) — and the
/// member-wide writes among the latter.
fn log_max(shard: &Shard, g: &Group) -> (u64, Vec<(u64, Vec<u8>)>) {
    let mut max = shard.store.borrow().index();
    let mut globals = Vec::new();
    let log = &g.node.raft.raft_log;
    let from = (shard.store.borrow().applied().0 + 1).min(log.applied + 1);
    if from <= log.last_index() {
        if let Ok(es) = log.entries(from, None, raft::GetEntriesContext::empty(false)) {
            for e in &es {
                max = max.max(entry_max(&e.data));
                if let Some(c) = Command::decode(&e.data).filter(|c| c.gseq != 0) {
                    globals.push((c.gseq, e.data.to_vec()));
                }
            }
        }
    }
    (max, globals)
}

/// The largest etcd index an entry's data names (0: none).
fn entry_max(data: &[u8]) -> u64 {
    if let Some(s) = epoch_of(data) {
        return s;
    }
    Command::decode(data)
        .and_then(|c| c.recorded().max())
        .unwrap_or(0)
}

/// The start of an epoch entry.
pub(super) fn epoch_of(data: &[u8]) -> Option<u64> {
    (data.len() == 9 && data[0] == ENTRY_EPOCH)
        .then(|| u64::from_le_bytes(data[1..].try_into().unwrap()))
}

/// On a tick: keep leadership with group 0's leader. A member leading
/// another group hands it over; with no leader in a group, group 0's
/// leader campaigns for it.
pub(super) fn colocate(shard: &Shard, g: &mut Group, now: Instant) {
    if shard.id == 0 {
        return;
    }
    let want = shard.shared.seq.leader(0);
    let me = g.opts.member_id;
    if want == 0
        || g.seq
            .last_move
            .is_some_and(|t| now.duration_since(t) < g.opts.heartbeat * 5)
    {
        return;
    }
    let raft = &g.node.raft;
    if raft.state == StateRole::Leader && want != me {
        if raft.lead_transferee.is_none() && raft.prs().conf().voters().contains(want) {
            g.seq.last_move = Some(now);
            tracing::info!(group = shard.id, to = %format!("{want:x}"), "handing group leadership to group 0's leader");
            g.node.transfer_leader(want);
        }
    } else if raft.leader_id == 0 && want == me && raft.state != StateRole::Leader {
        g.seq.last_move = Some(now);
        let _ = g.node.campaign();
    }
}

/// Propose `batch` (commands, member attributes) in a sharded cluster: a
/// follower forwards it as it is; the leader stamps every command while a
/// generation runs — after appending the generation's epoch if this group
/// has not yet — and holds the batch otherwise.
pub(super) fn propose(shard: &Shard, g: &mut Group, batch: Vec<Entry>) -> Result<(), Error> {
    if g.node.raft.state != StateRole::Leader {
        propose_batch(g, batch);
        return Ok(());
    }
    let deadline = Instant::now() + g.opts.request_timeout;
    let seq = &shard.shared.seq;
    let mut gn = seq.lock();
    let running = gn.id != 0 && gn.terms[shard.id] == g.node.raft.term;
    let (epoch_before, mut queued) = (gn.epoch, false);
    let mut out = Vec::with_capacity(batch.len());
    for mut e in batch {
        if e.data.first() == Some(&ENTRY_EPOCH_ASK) {
            if running {
                gn.epoch = seq.counter.load(Ordering::SeqCst) + 1;
            }
            continue;
        }
        // Not a command (member attributes, a configuration change): as it is.
        let Some(c) = Command::decode(&e.data) else {
            out.push(e);
            continue;
        };
        if !running || g.node.raft.lead_transferee.is_some() {
            g.seq.held.push_back((e, deadline));
            continue;
        }
        // A member-wide write (group 0's) takes one index, which is also
        // its sequence; a SYNC as many as keys are due.
        let global = c.gseq != 0;
        let n = match c.op {
            _ if global => 1,
            Op::Sync => shard.store.borrow().count_due(c.now, SYNC_STAMPS)? as u64,
            op if op.is_auth() => AUTH_STAMPS,
            _ => 1,
        };
        if n == 0 {
            // A SYNC with nothing due: nothing to propose.
            continue;
        }
        let first = seq.counter.fetch_add(n, Ordering::SeqCst) + 1;
        // (No copy when this member's own proposal holds the only reference.)
        let mut data = Vec::from(std::mem::take(&mut e.data));
        if global {
            crate::shard::global::set_gseq(&mut data, first);
        }
        for i in first..first + n {
            push_index(&mut data, i);
        }
        if global {
            for (g, q) in gn.globals.iter_mut().enumerate() {
                if g != shard.id {
                    q.push_back(data.clone());
                    queued = true;
                }
            }
        }
        e.data = data.into();
        out.push(e);
    }
    // First the generation's epoch, then the member-wide writes stamped
    // in group 0 (lower indexes than this batch's), then the batch.
    let mut first = Vec::new();
    if running && gn.epoch > g.seq.epoch_done && g.node.raft.lead_transferee.is_none() {
        let mut data = Vec::with_capacity(9);
        data.push(ENTRY_EPOCH);
        data.extend_from_slice(&gn.epoch.to_le_bytes());
        first.push(Entry {
            data: data.into(),
            ..Default::default()
        });
        g.seq.epoch_done = gn.epoch;
    }
    if running && g.node.raft.lead_transferee.is_none() {
        first.extend(gn.globals[shard.id].drain(..).map(|d| Entry {
            data: d.into(),
            ..Default::default()
        }));
    }
    if !first.is_empty() {
        first.append(&mut out);
        out = first;
    }
    while g.seq.held.len() > MAX_HELD {
        g.seq.held.pop_front();
    }
    if !out.is_empty() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = g.opts.member_id;
        m.set_entries(out.into());
        if g.node.step(m).is_err() {
            // Dropped: its stamps are gaps nobody will publish; close them.
            gn.epoch = seq.counter.load(Ordering::SeqCst) + 1;
            tracing::debug!(
                group = shard.id,
                "stamped proposal dropped; a new epoch follows"
            );
        }
    }
    // The other groups' loops take what they now owe at once, not on their
    // next tick.
    let wake = queued || gn.epoch != epoch_before;
    drop(gn);
    if wake {
        for other in (0..shard.shared.shards).filter(|&o| o != shard.id) {
            shard.send_peer(other, crate::shard::mesh::Msg::Wake);
        }
    }
    Ok(())
}

/// Each pass: propose again the commands held for want of a generation
/// (forgetting those past their deadline), or an epoch a generation still
/// owes this group.
pub(super) fn retry_held(shard: &Shard, g: &mut Group) -> Result<(), Error> {
    if g.node.raft.state != StateRole::Leader {
        // Deposed: the new leader stamps them (raft forwards).
        let now = Instant::now();
        g.seq.held.retain(|(_, d)| *d > now);
        if !g.seq.held.is_empty() && g.node.raft.leader_id != 0 {
            let batch: Vec<Entry> = g.seq.held.drain(..).map(|(e, _)| e).collect();
            propose_batch(g, batch);
        }
        return Ok(());
    }
    let (running, owed) = {
        let gn = shard.shared.seq.lock();
        let running = gn.id != 0 && gn.terms[shard.id] == g.node.raft.term;
        let owed = gn.epoch > g.seq.epoch_done || !gn.globals[shard.id].is_empty();
        (running, running && owed)
    };
    if g.seq.held.is_empty() && !owed {
        return Ok(());
    }
    if !running {
        let now = Instant::now();
        g.seq.held.retain(|(_, d)| *d > now);
        return Ok(());
    }
    let batch: Vec<Entry> = g.seq.held.drain(..).map(|(e, _)| e).collect();
    propose(shard, g, batch)
}

/// This member's orderer has waited on a gap for a while: ask the
/// sequencer (through group 0's log) for a fresh epoch. Group 0's loop.
pub(super) fn ask_epoch_if_stuck(shard: &Shard, g: &mut Group, now: Instant) -> Result<(), Error> {
    if shard.id != 0
        || g.seq
            .last_ask
            .is_some_and(|t| now.duration_since(t) < GAP_PATIENCE)
    {
        return Ok(());
    }
    if !shard.orderer.borrow().stuck_since(now, GAP_PATIENCE) {
        return Ok(());
    }
    g.seq.last_ask = Some(now);
    if g.node.raft.state == StateRole::Leader {
        shard.shared.seq.renew_epoch();
        return Ok(());
    }
    if g.node.raft.leader_id != 0 {
        let e = Entry {
            data: vec![ENTRY_EPOCH_ASK].into(),
            ..Default::default()
        };
        propose_batch(g, vec![e]);
    }
    Ok(())
}

/// Execute a committed command of a sharded cluster's group with the
/// indexes its entry carries. A command that would span shards (the
/// coordinator's, on a single member) and one that no sequencer stamped
/// fail the same way on every member.
pub(super) fn apply(
    st: &mut crate::store::Store,
    txn: &mut heed::RwTxn,
    data: &[u8],
) -> Result<Option<crate::store::Outcome>, crate::store::Error> {
    match Command::decode(data) {
        None => return Err(crate::store::Error::Corrupt("undecodable command".into())),
        Some(c) if c.indexes.is_empty() => {
            tracing::warn!("a command entry without stamped indexes; not executed");
            return Ok(Some(Err(V2Error::new(
                RAFT_INTERNAL,
                "etcdserver: the command was not sequenced",
                st.index(),
            ))));
        }
        Some(_) => {}
    }
    // A command that turns out to span shards leaves its index as a
    // placeholder; the member that took it proposes it again as a
    // member-wide write (`replica::apply_run`).
    st.execute_stamped(txn, data)
}

/// An entry stamped above the apply gate.
fn gated(e: &Entry, gate: Option<u64>) -> bool {
    gate.is_some_and(|at| {
        Command::decode(&e.data)
            .and_then(|c| c.recorded().max())
            .is_some_and(|i| i > at)
    })
}

/// A member-wide write of a sharded cluster (an entry every group holds).
fn is_global(e: &Entry) -> bool {
    e.get_entry_type() == EntryType::EntryNormal
        && Command::decode(&e.data).is_some_and(|c| c.gseq != 0)
}

/// Apply committed entries in order up to the first member-wide write,
/// where this group stops (holding it and what follows) until every group
/// of this member has reached it: the coordinator then runs it at that
/// cut ([`crate::shard::global::arrived`]), and the group goes on
/// ([`drain_stash`]).
pub(super) fn apply_in_order(
    shard: &Rc<Shard>,
    g: &mut Group,
    entries: &[Entry],
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    let applied = shard.store.borrow().applied().0;
    if g.seq.at_global || !g.seq.stash.is_empty() {
        g.seq
            .stash
            .extend(entries.iter().filter(|e| e.index > applied).cloned());
        return Ok(());
    }
    // A listing's cut may gate the apply at an index (`global::gate_cut`).
    let gate = shard.global.apply_gate();
    let Some(p) = entries
        .iter()
        .position(|e| e.index > applied && (gated(e, gate) || is_global(e)))
    else {
        return apply_run(shard, g, entries, answers);
    };
    apply_run(shard, g, &entries[..p], answers)?;
    g.seq.stash.extend(entries[p..].iter().cloned());
    if gated(&g.seq.stash[0], gate) {
        return Ok(());
    }
    g.seq.at_global = true;
    let gseq = Command::decode(&g.seq.stash[0].data).map_or(0, |c| c.gseq);
    let done = shard.shared.seq.last_resolved();
    if gseq != 0 && gseq <= done.0 {
        // Resolved by another shard of this member before a crash: resolve
        // it here the same way, then go on.
        if gseq < done.0 {
            tracing::error!(
                group = shard.id,
                gseq,
                last = done.0,
                "a member-wide write older than the last resolved one; applying it"
            );
        }
        if gseq < done.0 || done.1 {
            apply_global(shard, g)?;
        } else {
            pass_global(shard, g)?;
        }
        tracing::warn!(
            group = shard.id,
            gseq,
            "resolved a member-wide write as this member's other shards did (a crash or a snapshot came between)"
        );
        let held: Vec<Entry> = g.seq.stash.drain(..).collect();
        return apply_in_order(shard, g, &held, answers);
    }
    let front = &g.seq.stash[0];
    let target = own_request(g.opts.member_id, &front.context)
        .and_then(|s| g.pending.remove(&s))
        .map(|(t, _)| t);
    tracing::debug!(
        group = shard.id,
        index = front.index,
        "at a member-wide write"
    );
    crate::shard::global::arrived(shard, front.data.to_vec(), target);
    Ok(())
}

/// Each pass: apply what this group held behind a member-wide write once
/// that write is done.
pub(super) fn drain_stash(
    shard: &Rc<Shard>,
    g: &mut Group,
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    if g.seq.at_global {
        // Another group of this member installed a snapshot past it.
        let gseq = g
            .seq
            .stash
            .front()
            .and_then(|e| Command::decode(&e.data))
            .map_or(0, |c| c.gseq);
        if gseq != 0 && gseq <= shard.shared.seq.last_resolved().0 {
            g.seq.at_global = false;
            let held: Vec<Entry> = g.seq.stash.drain(..).collect();
            return apply_in_order(shard, g, &held, answers);
        }
    }
    if g.seq.at_global
        || g.seq.stash.is_empty()
        || gated(&g.seq.stash[0], shard.global.apply_gate())
    {
        return Ok(());
    }
    let held: Vec<Entry> = g.seq.stash.drain(..).collect();
    apply_in_order(shard, g, &held, answers)
}

/// The coordinator's apply of the member-wide write this group waits at:
/// executed with the index it carries, and recorded as applied at its
/// place in this group's log (it is logged already).
pub(super) fn apply_global(
    shard: &Rc<Shard>,
    g: &mut Group,
) -> Result<Option<crate::store::Outcome>, Error> {
    let Some(e) = g.seq.stash.pop_front().filter(|_| g.seq.at_global) else {
        return Err(Error::Store(crate::store::Error::Corrupt(
            "a member-wide write to apply, but this group is not at one".into(),
        )));
    };
    g.seq.at_global = false;
    let gseq = Command::decode(&e.data).map_or(0, |c| c.gseq);
    let o = shard.store.borrow_mut().batch(|st, txn| {
        let o = st.execute(txn, &e.data)?;
        st.meta_put(txn, META_RESOLVED, &resolved(gseq, true))?;
        Ok((o, Some((e.index, e.term))))
    })?;
    shard.executed.set(shard.store.borrow().index());
    Ok(o)
}

/// Released by the coordinator: a member-wide write it did not apply
/// (every member's trial refused it alike) is passed over.
pub(super) fn pass_global(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    if !g.seq.at_global {
        return Ok(());
    }
    g.seq.at_global = false;
    if let Some(e) = g.seq.stash.pop_front() {
        let gseq = Command::decode(&e.data).map_or(0, |c| c.gseq);
        shard.store.borrow_mut().batch(|st, txn| {
            st.meta_put(txn, META_RESOLVED, &resolved(gseq, false))?;
            Ok(((), Some((e.index, e.term))))
        })?;
    }
    Ok(())
}

fn resolved(gseq: u64, applied: bool) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[..8].copy_from_slice(&gseq.to_le_bytes());
    b[8] = applied as u8;
    b
}

/// On a tick, at most once a second: record in this shard's store the
/// index its executor has delivered. When it was recorded every shard had
/// applied every entry at or below it, and this shard's store holds its
/// part; so at a restart the member may close at once up to the lowest of
/// what its shards recorded (or applied), without waiting for an epoch — a
/// restarted member answers reads even without quorum.
pub(super) fn record_closed(shard: &Shard, g: &mut Group, now: Instant) -> Result<(), Error> {
    let delivered = shard.orderer.borrow().delivered();
    let (last, at) = g.seq.recorded;
    if delivered <= last || at.is_some_and(|t| now.duration_since(t) < RECORD_EVERY) {
        return Ok(());
    }
    shard.store.borrow_mut().batch(|st, txn| {
        st.meta_put(txn, META_CLOSED, &delivered.to_le_bytes())?;
        Ok(((), None))
    })?;
    g.seq.recorded = (delivered, Some(now));
    Ok(())
}

/// What this shard's store says the member may close up to at a start:
/// its own applied index, or the closed index it recorded, the larger.
pub fn closed_at_start(store: &crate::store::Store) -> Result<u64, crate::store::Error> {
    let recorded = store
        .meta_get(META_CLOSED)?
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    Ok(store.index().max(recorded))
}

/// On a tick: a sharded cluster's membership is group 0's; the leader of
/// every other group proposes, one at a time, the changes that bring its
/// group's voters to group 0's (a member added or removed through the
/// members API changes group 0 first). Group 0's loop publishes its voters.
pub(super) fn follow_conf(shard: &Shard, g: &mut Group) {
    let mut voters: Vec<u64> = g.node.raft.prs().conf().voters().ids().iter().collect();
    voters.sort_unstable();
    let seq = &shard.shared.seq;
    if shard.id == 0 {
        *seq.voters0.lock().unwrap_or_else(|e| e.into_inner()) = voters;
        return;
    }
    if g.node.raft.state != StateRole::Leader || g.node.raft.has_pending_conf() {
        return;
    }
    let want = seq
        .voters0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if want.is_empty() || want == voters {
        return;
    }
    let mut cc = ConfChange::default();
    if let Some(&add) = want.iter().find(|v| !voters.contains(v)) {
        let Some(m) = shard.view().read().ok().and_then(|v| v.get(add).cloned()) else {
            return;
        };
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = add;
        cc.context = m.encode().into_bytes().into();
    } else if let Some(&remove) = voters.iter().find(|v| !want.contains(v)) {
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = remove;
    } else {
        return;
    }
    tracing::info!(group = shard.id, change = ?cc.get_change_type(), member = %format!("{:x}", cc.node_id), "following group 0's membership");
    let _ = g.node.propose_conf_change(Vec::new(), cc);
}
