//! The raft loop of one shard: the only place raft-rs is driven.
//!
//! [`start`] replays the WAL into the store (each entry with the etcd
//! indexes it recorded) and rebuilds the raft group; [`roll_forward`]
//! completes member-wide operations a crash left on other shards only;
//! [`run`] then loops: wait for proposals, peer messages, a tick or an
//! expiry; park for a member-wide operation if asked (`session`); step the
//! peers' messages; **execute** or propose the queued commands; handle each
//! `Ready` in raft-rs's documented order — send messages, apply a snapshot,
//! apply committed entries, persist new entries and hard state, send the
//! messages that waited for persistence, advance; then publish the batch's
//! events and answer. Consensus itself does no I/O; this loop does all of
//! it, and data leaves it only as answers, published events and peer
//! messages.
//!
//! A group with one voter (a single member) executes commands *before*
//! logging them, taking their indexes at once (the fast path), and persists
//! each `Ready` from the loop with one durable write. A group with several
//! voters proposes commands as they are, and every member executes them
//! when they are **committed**, in log order, so every member takes the
//! same indexes (`replica`); the member that proposed a command answers
//! from its own apply, as etcd does. Its `Ready`s are persisted off the loop
//! by the WAL writer (`persist`). Quorum read barriers and the apply of
//! committed entries live in `replica`, membership changes and what the
//! peer port hands in (`join::Inbound`) in `join`, snapshots for lagging
//! followers in `snapshot` and `log`, LMDB syncs and WAL release in
//! `checkpoint`. The group's published state (leader, role, commit index)
//! is its [`Status`], written only here.

mod checkpoint;
pub mod join;
pub mod log;
pub mod persist;
mod replica;
mod sequencer;
mod session;
mod snapshot;
mod status;

pub use join::{add_member, remove_member};
pub use replica::read_barrier;
use replica::*;
pub use sequencer::{closed_at_start, Sequencer};
pub use session::roll_forward;
use session::*;
use snapshot::*;
pub use status::Status;

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
use crate::etcd::error::{V2Error, RAFT_INTERNAL};
use crate::shard::global::{self, Job, SubOp, SubResult};
use crate::shard::{Answer, Metrics, Proposal, Reply, Shard, Target};
use crate::storage::wal::Wal;
use crate::store::command::push_index;
use crate::store::space::Space;
use crate::store::{Command, Op, ESCALATE};

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
pub const META_CONF: &[u8] = b"conf_state";

/// Fatal errors of the loop.
#[derive(Debug)]
pub enum Error {
    Wal(crate::storage::wal::Error),
    Store(crate::store::Error),
    Raft(raft::Error),
    /// The disk has no room for what the store must write next.
    Space(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Wal(e) => write!(f, "{e}"),
            Error::Store(e) => write!(f, "{e}"),
            Error::Raft(e) => write!(f, "raft: {e}"),
            Error::Space(e) => write!(f, "{e}"),
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
    /// When to campaign after the leader's connection ended.
    campaign_at: Option<Instant>,
    /// Member-wide operations found in the log, by sequence (for
    /// [`roll_forward`] on the shards that missed them).
    pub global_ops: Vec<(u64, Vec<u8>)>,
    /// The etcd indexes taken by the batch being executed.
    reserved: Vec<u64>,
    /// The store's map, allocated ahead of LMDB's writes.
    space: Space,
    /// Sequencing in a sharded cluster.
    seq: sequencer::Local,
    /// Epochs applied in the current `Ready`, published after its events.
    epochs: Vec<u64>,
}

/// Give `shard`'s group the peer transport `t`; returns what the transport
/// hands received frames to.
pub fn connect(
    shard: &Rc<Shard>,
    t: Rc<crate::cluster::transport::Transport>,
) -> Rc<dyn crate::cluster::transport::Receiver> {
    shard.raft.set_transport(t);
    Rc::new(join::Inbound(shard.clone()))
}

/// Rebuild the raft group of `shard` from its store and the WAL in `wal_dir`.
pub async fn start(shard: &Shard, wal_dir: &Path, opts: RaftOptions) -> Result<Group, Error> {
    if !wal_dir.exists() && shard.store.borrow().applied().0 > 0 {
        tracing::warn!(
            dir = %wal_dir.display(),
            "no wal folder: starting from the store alone (a restore from a store copy)"
        );
    }
    let (recovered, segments) = Wal::recover(wal_dir)?;
    let log_end = recovered.end;
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
            // A group bootstrapped here starts from a snapshot at index 1
            // holding its configuration (as raft-rs's
            // `initialize_with_conf_state` does): the log never holds the
            // initial voters, so a member added later must catch up from a
            // snapshot, which carries them. A joining member has no voters
            // and waits for the leader.
            let bootstrap = !voters.is_empty() && shard.store.borrow().applied().0 == 0;
            let cs = ConfState::from((voters, vec![]));
            let bytes = cs.write_to_bytes().unwrap_or_default();
            shard.store.borrow_mut().batch(|st, txn| {
                st.meta_put(txn, META_CONF, &bytes)?;
                Ok(((), bootstrap.then_some((1, 1))))
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
                "{}: the log starts at entry {} but the store has applied only {}: the entries \
                 in between (acknowledged writes) are gone. This member does not start: restore \
                 the data dir from a backup (docs/operations.md), or in a cluster remove this \
                 member and add it back with an empty data dir",
                wal_dir.display(),
                first.index,
                applied
            ))));
        }
    }
    let mut storage = log::LogStore::new();
    let mut hs = recovered.hard_state.unwrap_or_default();
    let env = shard.store.borrow().env().clone();
    let space = Space::open(&env, opts.segment_bytes)
        .await
        .map_err(|e| Error::Space(format!("{}: {e}", env.path().display())))?;
    if single {
        // Replaying writes into the store: its map must have room first.
        let need = entries.iter().map(|e| write_need(e.data.len())).sum();
        space.room(need).await.map_err(Error::Space)?;
        // One voter: everything logged was executed before it was logged;
        // replay it all (each entry with the indexes it recorded).
        replay(&mut shard.store.borrow_mut(), entries.iter())?;
    }
    let (applied, applied_term) = shard.store.borrow().applied();
    if applied > 0 {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = applied;
        snap.mut_metadata().term = applied_term;
        snap.mut_metadata().set_conf_state(conf.clone());
        storage.restart_at_snapshot(snap)?;
    } else {
        storage.set_conf_state(conf.clone());
    }
    if single {
        hs.commit = applied;
    } else {
        // Several voters: the log beyond the applied index stays in raft's
        // hands; committed entries come back in the first `Ready`.
        storage.append(&entries)?;
        let last = storage.last_index()?;
        hs.commit = hs.commit.clamp(applied, last.max(applied));
    }
    hs.term = hs.term.max(applied_term);
    storage.set_hardstate(hs);
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
        shard.raft.set_role(node.raft.state == StateRole::Leader);
        note_leader(shard, node.raft.leader_id);
    }
    let wal = Wal::open(wal_dir, segments, log_end, opts.segment_bytes).await?;
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
        campaign_at: None,
        global_ops,
        reserved: Vec::new(),
        space,
        seq: sequencer::Local::default(),
        epochs: Vec::new(),
    })
}

/// Drive the group until a fatal error (which stops the shard). Every
/// request the loop held then — taken from the queue, executed and waiting
/// for its sync, waiting for its apply or for a read barrier — is answered
/// at once with the error, like the ones queued after it.
pub async fn run(shard: Rc<Shard>, mut g: Group) {
    let mut proposals = Vec::new();
    // Executed proposals waiting for their entries to be durable.
    let mut answers: Vec<(Target, Answer)> = Vec::new();
    if let Err(e) = run_inner(&shard, &mut g, &mut proposals, &mut answers).await {
        // Indexes of this shard's last batch will never be published: send
        // placeholders, so the other shards' events are not held behind them.
        let mut events = Vec::new();
        shard.store.borrow_mut().take_events(&mut events);
        let mut holes: Vec<_> = events
            .iter()
            .map(|e| std::sync::Arc::new(crate::store::Event::placeholder(e.index)))
            .collect();
        shard.publish(&mut holes);
        let msg = match &e {
            Error::Store(crate::store::Error::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull))) => {
                format!("{e}: the store is full; restart with a larger --map-size")
            }
            _ => e.to_string(),
        };
        // Reads see nothing of the batches that will never be durable.
        if let Some(first) = holes.first().map(|e| e.index) {
            shard.store.borrow_mut().freeze_views(first);
        }
        shard.fail(msg.clone());
        glommio::spawn_local(global::serve_stopped(shard.clone(), msg.clone())).detach();
        let stopped = || {
            V2Error::new(
                RAFT_INTERNAL,
                format!("etcdserver: server stopped ({msg})"),
                0,
            )
        };
        let writes = answers
            .drain(..)
            .map(|(t, _)| t)
            .chain(proposals.drain(..).filter_map(|p| p.target))
            .chain(g.pending.drain().map(|(_, (t, _))| t));
        for t in writes.collect::<Vec<_>>() {
            let reply = Reply {
                outcome: Err(stopped()),
                raft_index: 0,
                raft_term: 0,
            };
            shard.answer(t, Answer::Write(reply));
        }
        let reads = g.reads.drain(..).map(|(_, t, _)| t);
        for t in reads
            .chain(g.barriers.drain(..).map(|(_, t)| t))
            .collect::<Vec<_>>()
        {
            shard.answer(t, Answer::Read(Err(stopped())));
        }
    }
}

async fn run_inner(
    shard: &Rc<Shard>,
    g: &mut Group,
    proposals: &mut Vec<Proposal>,
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    let mut messages = Vec::new();
    let mut events = Vec::new();
    let mut next_tick = Instant::now() + g.opts.heartbeat;
    let applied = shard.store.borrow().applied().0;
    let mut checkpoints = checkpoint::Checkpointer::new(g.opts.checkpoint_interval, applied);
    glommio::spawn_local(persist::run(g.persist.clone(), shard.clone())).detach();
    let mut next_expiry: Option<i64> = shard.store.borrow().next_expiry()?;
    let mut rates = Rates::default();
    loop {
        // 1. Wait for proposals, peer messages, the next tick or the next
        // expiry (only the leader expires keys; the others apply its SYNC
        // entries).
        let expiry = next_expiry
            .filter(|_| shard.raft.is_leader())
            .map(|t| t.max(g.next_sync));
        wait(shard, g, next_tick, expiry).await;
        // Member-wide operations run while every shard is parked here, at
        // a batch boundary.
        if shard.global.park_requested() {
            g.space.room(SESSION_NEED).await.map_err(Error::Space)?;
            park_session(shard, g).await?;
            next_expiry = shard.store.borrow().next_expiry()?;
        }
        if shard.shared.seq.enabled {
            sequencer::drain_stash(shard, g, answers)?;
        }

        // 2. Step the peers' messages.
        step(shard, g, &mut messages);
        if shard.raft.removed_noticed() {
            stop_removed(shard, g).await?;
        }
        leader_lost(shard, g);
        transfer_asked(shard, g);
        retry_unsent(shard, g)?;
        if shard.shared.seq.enabled {
            sequencer::retry_held(shard, g)?;
        }
        shard.take_proposals(proposals);

        // 3. Tick: raft's clock, request deadlines, this member's attributes.
        let now = Instant::now();
        if now >= next_tick {
            g.node.tick();
            next_tick = now + g.opts.heartbeat;
            expire_requests(g, now, answers);
            publish_attributes(shard, g, now);
            rates.publish(shard, &g.persist, now);
            if shard.shared.seq.enabled {
                sequencer::colocate(shard, g, now);
                sequencer::ask_epoch_if_stuck(shard, g, now)?;
                sequencer::record_closed(shard, g, now)?;
                sequencer::follow_conf(shard, g);
            }
        }

        // 4. Execute (one voter) or propose (several) the queued commands,
        // with one SYNC stamped with the leader's clock when keys are due.
        let expire_now = match expiry {
            Some(t) if t <= wall_nanos() => Some(wall_nanos()),
            _ => None,
        };
        if !proposals.is_empty() || expire_now.is_some() {
            next_expiry = execute_batch(shard, g, proposals, expire_now, answers).await?;
        }

        // 5. The `Ready`: send, apply, persist, advance (raft-rs's order).
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
            if replicated(shard, g) {
                // Committed entries are applied in the `Ready`.
                g.space.room(READY_NEED).await.map_err(Error::Space)?;
            }
            if replicated(shard, g) || !g.persist.idle() || !g.waiting.is_empty() {
                handle_ready_async(shard, g, answers).await?;
            } else {
                handle_ready(shard, g, answers).await?;
            }
            // 6. Publish and answer: the batch is durable.
            if let Some(t) = publish_and_answer(shard, g, &mut events, answers)? {
                next_expiry = t;
            }
            if g.removed {
                stop_removed(shard, g).await?;
            }
        }
        if shard.shared.seq.enabled {
            sequencer::publish_state(shard, g);
        }

        // 7. Housekeeping: a snapshot for a lagging follower, checkpoints,
        // the in-memory log.
        if g.node.store().take_wanted() {
            prepare_snapshot(shard, g);
        }
        checkpoints.poll(shard, &g.persist).await?;
        compact_log(shard, g)?;
    }
}

/// Sleep until there is work: proposals or peer messages queued, a park
/// requested, the next tick, the next expiry (`expiry`, wall-clock
/// nanoseconds) or an early campaign. With work already due, only yield,
/// so the executor's other tasks (the coordinator, connections) still run
/// between batches.
async fn wait(shard: &Shard, g: &Group, next_tick: Instant, expiry: Option<i64>) {
    let now = Instant::now();
    let mut wake = next_tick;
    if let Some(t) = expiry {
        let d = Duration::from_nanos((t - wall_nanos()).max(0) as u64);
        wake = wake.min(now + d);
    }
    if let Some(t) = g.campaign_at {
        wake = wake.min(t);
    }
    if wake > now && !g.node.has_ready() {
        let sleep = glommio::timer::sleep(wake - now);
        futures_lite::future::or(shard.proposals_ready(), sleep).await;
    } else {
        futures_lite::future::yield_now().await;
    }
}

/// Hand the peers' messages to raft (messages from unknown or removed
/// peers are refused by raft).
fn step(shard: &Shard, g: &mut Group, messages: &mut Vec<Message>) {
    shard.take_messages(messages);
    if messages.is_empty() {
        return;
    }
    let transport = shard.raft.transport();
    for mut m in messages.drain(..) {
        if let Some(t) = &transport {
            t.observe(m.from, false, &m);
        }
        if shard.shared.seq.enabled
            && m.get_msg_type() == MessageType::MsgPropose
            && g.node.raft.state == StateRole::Leader
        {
            // A follower's forwarded commands: stamped before they enter
            // the log (or held while no generation runs).
            let entries = m.take_entries().into();
            if let Err(e) = sequencer::propose(shard, g, entries) {
                tracing::warn!(group = shard.id, "cannot stamp forwarded proposals: {e}");
            }
            continue;
        }
        let _ = g.node.step(m);
    }
}

/// Execute or propose one batch; returns the store's next expiry.
async fn execute_batch(
    shard: &Rc<Shard>,
    g: &mut Group,
    proposals: &mut Vec<Proposal>,
    expire_now: Option<i64>,
    answers: &mut Vec<(Target, Answer)>,
) -> Result<Option<i64>, Error> {
    // What the batch can write must be allocated before LMDB touches it
    // (two loads and a compare when it is).
    let need = proposals
        .iter()
        .map(|p| write_need(p.data.len()))
        .sum::<u64>()
        + expire_now.map_or(0, |_| SYNC_NEED);
    g.space.room(need).await.map_err(Error::Space)?;
    Metrics::add(&shard.metrics.proposals, proposals.len() as u64);
    execute(shard, g, proposals, expire_now, answers)?;
    shard.executed.set(shard.store.borrow().index());
    let mut next_expiry = shard.store.borrow().next_expiry()?;
    if expire_now.is_some() && shard.id == 0 && shard.shared.shards > 1 {
        expire_dirs(shard)?;
        if shard.shared.seq.enabled {
            // A sharded cluster's expiry goes through group 0's log and may
            // be lost with a leader: no memory of it here (at most one
            // SYNC per 500 ms proposes it again; a late copy is refused).
            shard.global.expiring.borrow_mut().clear();
        }
        // A directory expiry in progress is the coordinator's now: look
        // again shortly rather than spin on it.
        if !shard.global.expiring.borrow().is_empty() {
            let soon = wall_nanos() + 2_000_000;
            next_expiry = next_expiry.map(|t| t.max(soon));
        }
    }
    Ok(next_expiry)
}

/// The batch is durable: deliver its events and auth changes to every
/// executor, then answer its requests. Returns the store's next expiry
/// when applied entries may have changed it (several voters).
fn publish_and_answer(
    shard: &Rc<Shard>,
    g: &mut Group,
    events: &mut Vec<std::sync::Arc<crate::store::Event>>,
    answers: &mut Vec<(Target, Answer)>,
) -> Result<Option<Option<i64>>, Error> {
    shard.store.borrow_mut().take_events(events);
    shard.publish(events);
    for start in g.epochs.drain(..) {
        shard.publish_epoch(start, false);
    }
    shard.store.borrow_mut().publish_auth()?;
    shard.publish_figures();
    let delivered = shard.orderer.borrow().delivered();
    shard.store.borrow_mut().prune_views(delivered);
    shard.executed.set(shard.store.borrow().index());
    let next_expiry = match replicated(shard, g) {
        true => Some(shard.store.borrow().next_expiry()?),
        false => None,
    };
    let (ri, rt) = (g.node.raft.raft_log.committed, g.node.raft.term);
    for (target, mut a) in answers.drain(..) {
        if let Answer::Write(reply) = &mut a {
            reply.raft_index = ri;
            reply.raft_term = rt;
        }
        shard.answer(target, a);
    }
    Ok(next_expiry)
}

/// Diagnostics: the write rate and the live log, published about once a
/// second (`/debug/kardia/shards`).
struct Rates {
    since: Instant,
    count: u64,
}

impl Default for Rates {
    fn default() -> Rates {
        Rates {
            since: Instant::now(),
            count: 0,
        }
    }
}

impl Rates {
    fn publish(&mut self, shard: &Shard, persist: &persist::Persister, now: Instant) {
        let elapsed = now.duration_since(self.since);
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let done = shard.metrics.proposals.get();
        let f = &shard.shared.figures[shard.id];
        let per_sec = (done - self.count) as f64 / elapsed.as_secs_f64();
        f.rate.store(per_sec.round() as u64, Ordering::Relaxed);
        f.wal_segments
            .store(persist.sealed_segments() as u64, Ordering::Relaxed);
        f.wal_offset.store(persist.wal_offset(), Ordering::Relaxed);
        (self.since, self.count) = (now, done);
    }
}

/// Applied entries need not stay in raft's in-memory log beyond what
/// followers may still ask for (none for a single voter): drop them in
/// small steps, so memory stays flat and no compaction frees a huge log.
fn compact_log(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    let applied = shard.store.borrow().applied().0;
    let keep = if replicated(shard, g) {
        g.opts.retain_entries
    } else {
        0
    };
    let step = COMPACT_EVERY.min(keep.max(1));
    g.node
        .mut_store()
        .compact(applied, keep, RETAIN_BYTES, step)?;
    Ok(())
}

/// Move this group's leadership to the member an operator named, if this
/// member leads it and the other is a voter (raft-rs's leadership
/// transfer; in a sharded cluster group 0's leader takes the groups back).
fn transfer_asked(shard: &Shard, g: &mut Group) {
    let to = shard.raft.take_transfer();
    let raft = &g.node.raft;
    if to == 0
        || to == g.opts.member_id
        || raft.state != StateRole::Leader
        || !raft.prs().conf().voters().contains(to)
    {
        return;
    }
    tracing::info!(shard = shard.id, to = %format!("{to:x}"), "leadership transfer asked");
    g.node.transfer_leader(to);
}

/// The leader's connection to this member ended — its process most likely
/// died (the kernel closes a killed process's sockets). Rather than wait a
/// whole election timeout, this follower stops counting on the leader's
/// lease and campaigns after a random fraction of the election timeout
/// (so the survivors do not split the vote). Pre-vote keeps this harmless
/// when the leader is in fact alive: members that still hear from it
/// refuse, and its next heartbeat makes this member a follower again.
fn leader_lost(shard: &Shard, g: &mut Group) {
    let lost = shard.raft.take_lost_peer();
    let raft = &mut g.node.raft;
    if lost != 0 && lost == raft.leader_id && raft.state == StateRole::Follower {
        raft.leader_id = 0;
        let window = g.opts.heartbeat.as_nanos() as u64 * g.opts.election_ticks as u64 / 4;
        let spread = (wall_nanos() as u64 ^ g.opts.member_id.rotate_left(17)) % window.max(1);
        g.campaign_at = Some(Instant::now() + Duration::from_nanos(spread));
        tracing::info!(leader = %format!("{lost:x}"), "the leader's connection ended; campaigning soon");
    }
    if let Some(t) = g.campaign_at {
        if Instant::now() >= t {
            g.campaign_at = None;
            let me = g.opts.member_id;
            let voter = g.node.raft.prs().conf().voters().contains(me);
            if g.node.raft.leader_id == 0 && voter {
                let _ = g.node.campaign();
            }
        }
    }
}

/// This member was removed from the cluster (it applied the change, or
/// another member said so): record it, so the data dir is refused at the
/// next start, and stop cleanly.
async fn stop_removed(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    let me = g.opts.member_id;
    let members = {
        let mut v = shard.view().write().expect("membership");
        v.remove(me);
        v.encode()
    };
    shard.store.borrow_mut().batch(|st, txn| {
        st.meta_put(txn, META_MEMBERS, &members)?;
        Ok(((), None))
    })?;
    let sync = crate::store::checkpoint(shard.store.borrow().env());
    let _ = glommio::executor().spawn_blocking(sync).await;
    tracing::warn!("this member was removed from the cluster; stopping");
    glommio::timer::sleep(Duration::from_millis(200)).await;
    std::process::exit(0);
}

/// What executing a command of `len` bytes can make LMDB write: the node
/// record and the event in the history (each about the command's size, and
/// the previous value rendered in the event), plus two leaf pages it copies
/// (the branch pages above them are shared by the batch and covered by
/// `space::MARGIN`).
fn write_need(len: usize) -> u64 {
    3 * len as u64 + (8 << 10)
}

/// An expiry entry (at most `MAX_EXPIRE_PER_SYNC` deletions, each a small
/// event in the history; emptied pages are reused within the transaction).
const SYNC_NEED: u64 = 4 << 20;
/// A member-wide session's operations on this shard.
const SESSION_NEED: u64 = 4 << 20;
/// A `Ready`'s committed entries (raft hands out at most 16 MiB at once;
/// each is stored about twice: node and event).
const READY_NEED: u64 = 2 * (16 << 20);

/// Applied entries kept for lagging followers take at most this much
/// memory, whatever `--snapshot-count` allows.
const RETAIN_BYTES: u64 = 64 << 20;

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
    if !shard.raft.is_leader() {
        for p in proposals.drain(..) {
            if let Some(t) = p.target {
                shard.answer(t, error_reply("etcdserver: no leader"));
            }
        }
        return Ok(());
    }
    let node = &mut g.node;
    // Every etcd index the batch takes, in case it is lost (below).
    let reserved = &mut g.reserved;
    reserved.clear();
    let mut escalated: Vec<(Vec<u8>, Option<Target>)> = Vec::new();
    let batch = std::mem::take(proposals);
    shard.batch_commands.observe(batch.len() as f64);
    let mut logged = 0u64;
    let mut queue = batch.into_iter();
    let r = shard.store.borrow_mut().batch(|st, txn| {
        for p in queue.by_ref() {
            if p.data.first() == Some(&REQ_READ) {
                // One voter that leads: the local store is linearizable.
                if let Some(t) = p.target {
                    answers.push((t, Answer::Read(Ok((Vec::new(), 0)))));
                }
                continue;
            }
            let mut data = p.data;
            let r = st.execute(txn, &data);
            reserved.extend_from_slice(st.taken());
            let outcome = match r {
                Ok(o) => o,
                Err(e) => {
                    // The batch is lost: give this proposal back, so the
                    // shard's failure answers it with the rest, and keep
                    // the indexes of the events it had made.
                    proposals.push(Proposal {
                        data,
                        target: p.target,
                    });
                    let mut made = Vec::new();
                    st.take_events(&mut made);
                    reserved.extend(made.iter().map(|e| e.index));
                    return Err(e);
                }
            };
            match &outcome {
                Some(Ok(_)) => {
                    for &i in st.taken() {
                        push_index(&mut data, i);
                    }
                    node.propose(Vec::new(), data).map_err(raft_fatal)?;
                    logged += 1;
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
            let r = st.execute(txn, &data);
            reserved.extend_from_slice(st.taken());
            r?;
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
    });
    if let Err(e) = r {
        // Nothing of the batch was committed: the shard's failure answers
        // every request of it (those executed wait in `answers`), and the
        // indexes it took are published as placeholders, so the other
        // shards' writes are not held behind them.
        g.reserved.sort_unstable();
        g.reserved.dedup();
        let mut holes: Vec<_> = g
            .reserved
            .iter()
            .map(|&i| std::sync::Arc::new(crate::store::Event::placeholder(i)))
            .collect();
        shard.publish(&mut holes);
        proposals.extend(queue);
        proposals.extend(
            escalated
                .into_iter()
                .map(|(data, target)| Proposal { data, target }),
        );
        return Err(e.into());
    }
    // One voter: executed (applied) first, committed by the batch's sync.
    let m = &shard.shared.metrics;
    m.proposals_committed.inc_by(logged);
    m.proposals_applied.inc_by(logged);
    for (data, target) in escalated {
        global::submit(shard, Job::Write(data), target);
    }
    Ok(())
}

fn raft_fatal(e: raft::Error) -> crate::store::Error {
    crate::store::Error::Corrupt(format!("raft: {e}"))
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
        note_role(shard, ss);
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
    // 4. Persist new entries and hard state: one durable write (the
    //    WAL writer is idle: this path is taken only then).
    let mut wal = g.persist.take_wal();
    if !rd.entries().is_empty() {
        wal.append_entries(rd.entries());
        g.node.mut_store().append(rd.entries())?;
    }
    if let Some(hs) = rd.hs() {
        wal.append_hard_state(hs);
        g.node.mut_store().set_hardstate(hs.clone());
    }
    let entries = rd.entries().len() as u64;
    if wal.has_pending() {
        let t = Instant::now();
        let synced = wal.sync().await;
        g.persist.put_wal(wal);
        shard.record_sync(t.elapsed(), entries, synced?);
    } else {
        g.persist.put_wal(wal);
    }
    // 5. Messages that had to wait for persistence.
    send_messages(shard, g, rd.take_persisted_messages());
    // 6. Advance, then the light ready.
    let mut light = g.node.advance(rd);
    if let Some(commit) = light.commit_index() {
        g.node.mut_store().set_commit(commit);
    }
    send_messages(shard, g, light.take_messages());
    apply_entries(shard, g, &light.take_committed_entries(), answers)?;
    g.node.advance_apply();
    after_apply(shard, g, answers);
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
        g.persist.until_idle().await;
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
        note_role(shard, ss);
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
    g.node.mut_store().append(rd.entries())?;
    if let Some(hs) = rd.hs() {
        g.node.mut_store().set_hardstate(hs.clone());
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
        g.persist.queue(number, rd.take_entries(), hs);
        if !persisted_msgs.is_empty() {
            g.waiting.push_back((number, persisted_msgs));
        }
        // 6. Advance without waiting for the disk.
        g.node.advance_append_async(rd);
    }
    g.node.advance_apply();
    after_apply(shard, g, answers);
    Ok(())
}

/// After a `Ready`'s applies: answer the quorum reads whose barrier is now
/// applied, and publish the raft position.
fn after_apply(shard: &Shard, g: &mut Group, answers: &mut Vec<(Target, Answer)>) {
    let applied = shard.store.borrow().applied().0;
    g.barriers.retain(|(index, t)| {
        if *index <= applied {
            // A sharded cluster's read waits for this group's applied etcd
            // index to be delivered (see `read_barrier`).
            let at = if shard.shared.seq.enabled {
                shard.store.borrow().index()
            } else {
                *index
            };
            answers.push((*t, Answer::Read(Ok((Vec::new(), at)))));
            false
        } else {
            true
        }
    });
    shard
        .raft
        .set_position(g.node.raft.raft_log.committed, g.node.raft.term);
}

/// A change of role or leader.
fn note_role(shard: &Shard, ss: &raft::SoftState) {
    shard.raft.set_role(ss.raft_state == StateRole::Leader);
    note_leader(shard, ss.leader_id);
    tracing::info!(shard = shard.id, leader = %format!("{:x}", ss.leader_id), role = ?ss.raft_state, "raft state");
}

/// The leader this shard now knows of (0: none); shard 0's view is the
/// member's in `/metrics`.
fn note_leader(shard: &Shard, leader: u64) {
    let before = shard.raft.set_leader(leader);
    if shard.id == 0 {
        let m = &shard.shared.metrics;
        m.has_leader.set((leader != 0) as i64);
        if leader != 0 && leader != before {
            m.leader_changes.inc();
        }
    }
}

/// Hand raft messages to the peer transport.
fn send_messages(shard: &Shard, g: &mut Group, msgs: Vec<Message>) {
    if msgs.is_empty() {
        return;
    }
    let Some(t) = shard.raft.transport() else {
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

/// Offline (no executor, no raft node): bring the store of a one-voter
/// group up to date with its WAL in `wal_dir`, as a start would — every
/// logged entry the store has not applied is replayed with the indexes it
/// recorded. Returns the member-wide operations found in the log, by
/// sequence, for the roll-forward across shards (`kardia reshard`).
pub fn replay_offline(
    store: &mut crate::store::Store,
    wal_dir: &Path,
) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    if let Some(conf) = store.meta_get(META_CONF)? {
        let cs = ConfState::parse_from_bytes(&conf)
            .map_err(|e| Error::Store(crate::store::Error::Corrupt(format!("conf state: {e}"))))?;
        if cs.voters.len() > 1 || !cs.learners.is_empty() {
            return Err(Error::Store(crate::store::Error::Corrupt(
                "this data dir belongs to a member of a replicated cluster, which runs one shard"
                    .into(),
            )));
        }
    }
    if !wal_dir.exists() {
        return Ok(Vec::new());
    }
    let (recovered, _) = Wal::recover(wal_dir)?;
    if store.applied().0 == 0 && recovered.entries.first().is_some_and(|e| e.index == 2) {
        // A one-voter group starts from a snapshot at index 1 (see
        // `start`); a store never checkpointed since has not recorded it.
        store.batch(|_, _| Ok(((), Some((1, 1)))))?;
    }
    let applied = store.applied().0;
    let global_ops = recovered
        .entries
        .iter()
        .filter_map(|e| Command::decode(&e.data).map(|c| (c.gseq, e.data.to_vec())))
        .filter(|(g, _)| *g != 0)
        .collect();
    let entries: Vec<&Entry> = recovered
        .entries
        .iter()
        .filter(|e| e.index > applied)
        .collect();
    if let Some(first) = entries.first() {
        if first.index != applied + 1 {
            return Err(Error::Wal(crate::storage::wal::Error::Corrupt(format!(
                "{}: the log starts at entry {} but the store has applied only {}",
                wal_dir.display(),
                first.index,
                applied
            ))));
        }
    }
    replay(store, entries.into_iter())?;
    Ok(global_ops)
}

/// Replay logged entries of a one-voter group into `store`, each command
/// with the indexes it recorded (leader no-ops and member attributes only
/// advance the applied index); their events are dropped (nothing listens
/// yet).
fn replay<'e>(
    store: &mut crate::store::Store,
    entries: impl ExactSizeIterator<Item = &'e Entry>,
) -> Result<(), Error> {
    if entries.len() == 0 {
        return Ok(());
    }
    let mut out = Vec::new();
    store.apply_batch(
        entries.map(|e| {
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
    store.take_events(&mut events);
    Ok(())
}

/// Offline roll-forward (see [`roll_forward`]): apply to `store` the
/// member-wide operations of `ops` (by sequence) it has not applied.
pub fn roll_forward_offline(
    store: &mut crate::store::Store,
    ops: &[(u64, Vec<u8>)],
) -> Result<usize, Error> {
    let mut n = 0;
    for (gseq, data) in ops {
        if *gseq > store.gseq() {
            let (ri, term) = store.applied();
            let mut out = Vec::new();
            store.apply_batch(std::iter::once((ri + 1, term, &data[..])), &mut out)?;
            let mut events = Vec::new();
            store.take_events(&mut events);
            n += 1;
        }
    }
    Ok(n)
}
