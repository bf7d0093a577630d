//! Member-wide operations: the few requests one shard cannot answer alone.
//!
//! Every shard holds the whole directory skeleton and the files of its own
//! directories. A write that would change the skeleton (create, delete,
//! expire or re-TTL a directory), or that must look past an ancestor another
//! shard owns, and a recursive GET of a directory, are escalated here
//! ([`submit`]). Shard 0's executor runs the coordinator ([`coordinate`]),
//! which takes every queued job into one *session*:
//!
//! 1. **Park**: every shard's raft loop stops at a batch boundary (its last
//!    batch durable and published), so nothing is in flight anywhere.
//! 2. Each write is first **tried** on every shard (executed and rolled
//!    back); each reports what it would do. A shard that saw a blocking node
//!    has the real error (a shard sees only its own files), else the write
//!    is **applied** on every shard with the same index: each logs the same
//!    entry and changes its part. One round carries a write's apply and the
//!    next write's trial ([`SubOp::Batch`]). A recursive GET **collects** every shard's
//!    files and renders them into shard 0's skeleton: a consistent cut.
//!    Reads run first and are answered at once: they see what every shard
//!    had durably when it parked.
//! 3. **Flush**: one fsync per shard for the session's writes; then the one
//!    merged event per write (the owner's JSON, every shard's removed paths)
//!    is published and the answers leave.
//! 4. **Unpark**. Reads on a shard that applied waited until now.
//!
//! In a sharded cluster (issue #14) a write reaches the coordinator only
//! once every group of the member has applied up to it ([`arrived`]: it
//! was stamped and logged in every group), and is applied with its stamped
//! index, not logged again; a read first gates every group's apply at one
//! index ([`Msg::ApplyGate`]) so the park takes a cut there.
//!
//! Messages travel over the mesh ([`Msg`]); a parked raft loop carries out
//! the steps in `raft::park_session`. Crash safety: no shard logs anything
//! after a member-wide write until every shard has it, and each shard keeps
//! the last one it applied in its store, so start-up (`raft::roll_forward`)
//! completes on every shard what a crash left on some.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use super::mesh::{ReadOpts, ReadReq};
use super::{Answer, Msg as MeshMsg, ReadResult, Reply, Shard, Target};
use crate::etcd::error::{V2Error, KEY_NOT_FOUND, RAFT_INTERNAL};
use crate::http::response::HEAD_ROOM;
use crate::store::command::push_index;
use crate::store::{Command, Event, Op, Outcome, RemoteFiles, Removed, ESCALATE};

/// A member-wide request.
pub enum Job {
    /// An encoded command.
    Write(Vec<u8>),
    /// A recursive GET.
    Read(ReadReq),
    /// An online backup of every shard at one cut into a new data dir.
    Backup(std::path::PathBuf),
    /// A sharded cluster's member-wide write (issue #14): stamped by the
    /// sequencer, in every group's log, and reached by every group's apply
    /// on this member ([`arrived`]).
    Replicated(Vec<u8>),
}

/// One step a parked shard performs for the coordinator.
pub enum SubOp {
    Trial(Vec<u8>),
    Apply(Vec<u8>),
    /// Make the session's applied writes durable.
    Flush,
    /// A sharded cluster's member-wide write every shard refused: each
    /// group passes over it.
    Pass,
    /// Several steps, carried out in order; one report.
    Batch(Vec<SubOp>),
    Unpark,
}

impl SubOp {
    pub fn name(&self) -> &'static str {
        match self {
            SubOp::Trial(_) => "trial",
            SubOp::Apply(_) => "apply",
            SubOp::Flush => "flush",
            SubOp::Pass => "pass",
            SubOp::Unpark => "unpark",
            SubOp::Batch(_) => "batch",
        }
    }
}

/// A parked shard's report.
pub enum SubResult {
    Outcome(Option<Outcome>),
    Batch(Vec<SubResult>),
    Collected(RemoteFiles),
    /// A shard's backup copy is written: its size in bytes.
    Copied(u64),
    /// The largest etcd index a shard has applied (a sharded cluster's
    /// apply gate, [`Msg::ApplyGate`]).
    Index(u64),
    Failed(String),
}

/// Messages of the protocol, over the mesh.
pub enum Msg {
    Submit {
        job: Job,
        target: Option<Target>,
    },
    /// Park at the next batch boundary; with `cut`, hold a snapshot of the
    /// store there for the session's reads.
    Park {
        cut: bool,
    },
    Parked {
        shard: usize,
    },
    Sub(SubOp),
    /// This shard's part of a member-wide read, from its cut (handled by the
    /// executor at once, whether its raft loop is parked or not).
    Collect {
        key: Vec<u8>,
        opts: ReadOpts,
    },
    /// The session's reads are done: release the cut.
    DropCut,
    /// Copy the store as of the cut into `dir` (the shard's folder of a
    /// backup), off the executor; report [`SubResult::Copied`].
    Backup {
        dir: std::path::PathBuf,
    },
    Result {
        shard: usize,
        result: SubResult,
    },
    /// A sharded cluster's group reached member-wide write `data` in its
    /// apply and waits there ([`arrived`]).
    Arrived {
        data: Vec<u8>,
    },
    /// A sharded cluster's shard applies nothing stamped above `at` until
    /// the gate is lifted (`None`); with a gate it reports the largest
    /// index it has applied ([`SubResult::Index`]).
    ApplyGate {
        at: Option<u64>,
    },
}

/// Per-executor state of the protocol.
#[derive(Default)]
pub struct State {
    park: Cell<bool>,
    /// The park asked for a cut ([`Msg::Park`]).
    cut: Cell<bool>,
    /// Applied a member-wide write not yet released: reads wait.
    applying: Cell<bool>,
    gate: RefCell<Vec<Waker>>,
    subops: RefCell<VecDeque<SubOp>>,
    subop_waker: RefCell<Option<Waker>>,
    // Coordinator (shard 0) only.
    jobs: RefCell<VecDeque<(Job, Option<Target>)>>,
    job_waker: RefCell<Option<Waker>>,
    parked: Cell<usize>,
    results: RefCell<Vec<Option<SubResult>>>,
    coord_waker: RefCell<Option<Waker>>,
    /// Directory expiries submitted and not yet done.
    pub expiring: RefCell<Vec<Vec<u8>>>,
    /// A sharded cluster's member-wide writes some groups reached, by
    /// sequence: how many groups, and the request's target (group 0's).
    arrivals: RefCell<std::collections::BTreeMap<u64, (usize, Option<Target>)>>,
    /// A sharded cluster's apply gate ([`Msg::ApplyGate`]).
    apply_gate: Cell<Option<u64>>,
}

impl State {
    pub fn park_requested(&self) -> bool {
        self.park.get()
    }

    /// The pending park asked for a cut (asked once).
    pub fn take_cut_request(&self) -> bool {
        self.cut.replace(false)
    }

    /// A member-wide write is applied here and not yet released.
    pub fn applying(&self) -> bool {
        self.applying.get()
    }

    /// A sharded cluster's shard applies nothing stamped above this.
    pub fn apply_gate(&self) -> Option<u64> {
        self.apply_gate.get()
    }
}

fn wake(w: &RefCell<Option<Waker>>) {
    if let Some(w) = w.borrow_mut().take() {
        w.wake();
    }
}

/// Hand a job to the coordinator (shard 0).
pub fn submit(shard: &Rc<Shard>, job: Job, target: impl Into<Option<Target>>) {
    tracing::debug!(shard = shard.id, "global job submitted");
    let target = target.into();
    if shard.shared.seq.enabled {
        if let Job::Write(mut data) = job {
            // A sharded cluster's member-wide write goes through group 0's
            // log; the sequencer stamps it and queues it for every group.
            strip_indexes(&mut data);
            set_gseq(&mut data, u64::MAX);
            let target = from_here(shard, target);
            if shard.id == 0 {
                shard.enqueue(super::Proposal { data, target });
            } else if let Some(Target::Remote { from, slot }) = target {
                shard.send(0, MeshMsg::Propose { from, slot, data });
            }
            return;
        }
        // Listings across shards and backups go to the coordinator, which
        // gates every group at one index first (`gate_cut`).
    }
    submit_to_coordinator(shard, job, target)
}

/// A target as executor 0 sees it.
fn from_here(shard: &Shard, target: Option<Target>) -> Option<Target> {
    target.map(|t| match t {
        Target::Local(slot) if shard.id != 0 => Target::Remote {
            from: shard.id,
            slot,
        },
        t => t,
    })
}

fn submit_to_coordinator(shard: &Rc<Shard>, job: Job, target: Option<Target>) {
    let target = from_here(shard, target);
    if shard.id == 0 {
        shard.global.jobs.borrow_mut().push_back((job, target));
        wake(&shard.global.job_waker);
    } else {
        shard.send(0, MeshMsg::Global(Msg::Submit { job, target }));
    }
}

/// A protocol message from another executor.
pub fn on_message(shard: &Rc<Shard>, m: Msg) {
    let g = &shard.global;
    match m {
        Msg::Submit { job, target } => {
            g.jobs.borrow_mut().push_back((job, target));
            wake(&g.job_waker);
        }
        Msg::Park { cut } => request_park(shard, cut),
        Msg::Arrived { data } => note_arrival(shard, &data, None),
        Msg::Parked { .. } => {
            g.parked.set(g.parked.get() + 1);
            wake(&g.coord_waker);
        }
        Msg::Sub(op) => {
            g.subops.borrow_mut().push_back(op);
            wake(&g.subop_waker);
        }
        Msg::Collect { key, opts } => {
            let failed = shard.failed.borrow().clone();
            let result = match failed {
                Some(m) => SubResult::Failed(m),
                None => {
                    let r =
                        shard
                            .store
                            .borrow()
                            .collect(&key, opts.recursive, opts.sorted, opts.now);
                    match r {
                        Ok(files) => SubResult::Collected(files),
                        Err(e) => SubResult::Failed(e.to_string()),
                    }
                }
            };
            report(shard, result);
        }
        Msg::DropCut => shard.store.borrow_mut().drop_cut(),
        Msg::ApplyGate { at } => set_apply_gate(shard, at),
        Msg::Backup { dir } => start_backup(shard, dir),
        Msg::Result {
            shard: from,
            result,
        } => {
            if let Some(slot) = g.results.borrow_mut().get_mut(from) {
                *slot = Some(result);
            }
            wake(&g.coord_waker);
        }
    }
}

fn request_park(shard: &Rc<Shard>, cut: bool) {
    if shard.failed.borrow().is_some() {
        // No raft loop any more: the stopped shard parks at once (and
        // fails the session's reads: it takes no cut).
        report_parked(shard);
        return;
    }
    shard.global.cut.set(cut);
    shard.global.park.set(true);
    shard.wake_loop();
}

/// A sharded cluster's group reached member-wide write `data` in its apply
/// (group 0's carries the request's `target` on the member that took it):
/// once every group of this member has, the coordinator runs it as a
/// session at that cut.
pub fn arrived(shard: &Rc<Shard>, data: Vec<u8>, target: Option<Target>) {
    if shard.id == 0 {
        note_arrival(shard, &data, target);
    } else {
        shard.send(0, MeshMsg::Global(Msg::Arrived { data }));
    }
}

fn note_arrival(shard: &Rc<Shard>, data: &[u8], target: Option<Target>) {
    let Some(gseq) = Command::decode(data).map(|c| c.gseq) else {
        return;
    };
    let n = shard.shared.shards;
    let g = &shard.global;
    let done = {
        let mut arrivals = g.arrivals.borrow_mut();
        let a = arrivals.entry(gseq).or_insert((0, None));
        a.0 += 1;
        if target.is_some() {
            a.1 = target;
        }
        if a.0 >= n {
            arrivals.remove(&gseq)
        } else {
            None
        }
    };
    if let Some((_, target)) = done {
        g.jobs
            .borrow_mut()
            .push_back((Job::Replicated(data.to_vec()), target));
        wake(&g.job_waker);
    }
}

/// Set or lift this shard's apply gate; with a gate, report the largest
/// index applied so far (the gate holds nothing already applied).
fn set_apply_gate(shard: &Rc<Shard>, at: Option<u64>) {
    shard.global.apply_gate.set(at);
    if at.is_some() {
        report(shard, SubResult::Index(shard.store.borrow().index()));
    } else {
        shard.wake_loop();
    }
}

/// Gate every shard at one index M with everything at or below it applied
/// and nothing stamped above it: a cut of the member at M, without the
/// log. Returns M, or `None` when a member-wide write must run first (it
/// may be below M: it is requeued before the reads) or the wait times out.
async fn gate_cut(shard: &Rc<Shard>) -> Result<u64, Option<&'static str>> {
    let n = shard.shared.shards;
    let all: Vec<usize> = (0..n).collect();
    let mut at = shard
        .shared
        .counter
        .load(std::sync::atomic::Ordering::SeqCst);
    // A shard may have applied past the gate before it heard of it: raise
    // the gate to the largest index any reports, until none is past it.
    loop {
        let send = |p| {
            if p == shard.id {
                set_apply_gate(shard, Some(at));
            } else {
                shard.send(p, MeshMsg::Global(Msg::ApplyGate { at: Some(at) }));
            }
        };
        let reported = exchange(shard, &all, send).await;
        let top = reported
            .iter()
            .filter_map(|r| match r {
                Some(SubResult::Index(i)) => Some(*i),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        if top <= at {
            break;
        }
        at = top;
    }
    // Every entry at or below the gate applied everywhere (an epoch closes
    // gaps a deposed sequencer left).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    loop {
        if shard.orderer.borrow().delivered() >= at {
            return Ok(at);
        }
        if shard
            .global
            .jobs
            .borrow()
            .iter()
            .any(|(j, _)| matches!(j, Job::Replicated(_)))
        {
            return Err(None);
        }
        if std::time::Instant::now() > deadline {
            return Err(Some("etcdserver: request timed out"));
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

fn lift_apply_gates(shard: &Rc<Shard>) {
    for p in 0..shard.shared.shards {
        if p == shard.id {
            set_apply_gate(shard, None);
        } else {
            shard.send(p, MeshMsg::Global(Msg::ApplyGate { at: None }));
        }
    }
}

/// A stopped shard (its raft loop ended with a fatal error) still takes
/// part in member-wide sessions, so they end and release the other shards:
/// it parks at once ([`request_park`]) and fails every step, so no
/// member-wide write is accepted while it is stopped, and every job gets
/// an answer.
pub async fn serve_stopped(shard: Rc<Shard>, msg: String) {
    if shard.global.park.replace(false) {
        report_parked(&shard);
    }
    loop {
        let result = match next_subop(&shard).await {
            SubOp::Unpark => {
                set_applying(&shard, false);
                continue;
            }
            SubOp::Batch(ops) => {
                SubResult::Batch(ops.iter().map(|_| SubResult::Failed(msg.clone())).collect())
            }
            _ => SubResult::Failed(msg.clone()),
        };
        report(&shard, result);
    }
}

/// Called by a parked raft loop: tell the coordinator.
pub fn report_parked(shard: &Rc<Shard>) {
    tracing::debug!(shard = shard.id, "parked");
    shard.global.park.set(false);
    if shard.id == 0 {
        let g = &shard.global;
        g.parked.set(g.parked.get() + 1);
        wake(&g.coord_waker);
    } else {
        shard.send(0, MeshMsg::Global(Msg::Parked { shard: shard.id }));
    }
}

/// The next step for a parked shard.
pub async fn next_subop(shard: &Shard) -> SubOp {
    std::future::poll_fn(|cx| {
        let g = &shard.global;
        match g.subops.borrow_mut().pop_front() {
            Some(op) => std::task::Poll::Ready(op),
            None => {
                *g.subop_waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    })
    .await
}

/// Report a step's result to the coordinator.
pub fn report(shard: &Rc<Shard>, result: SubResult) {
    if shard.id == 0 {
        if let Some(slot) = shard.global.results.borrow_mut().get_mut(0) {
            *slot = Some(result);
        }
        wake(&shard.global.coord_waker);
    } else {
        shard.send(
            0,
            MeshMsg::Global(Msg::Result {
                shard: shard.id,
                result,
            }),
        );
    }
}

/// Mark this shard as holding a member-wide write until unparked.
pub fn set_applying(shard: &Shard, on: bool) {
    shard.global.applying.set(on);
    if !on {
        for w in shard.global.gate.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// Wait while this shard holds an unreleased member-wide write.
pub async fn read_gate(shard: &Shard) {
    std::future::poll_fn(|cx| {
        if shard.global.applying() {
            shard.global.gate.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await
}

/// Most jobs one parked session carries out.
const SESSION_JOBS: usize = 512;

/// The coordinator: shard 0 runs the queued jobs, a session at a time.
pub async fn coordinate(shard: Rc<Shard>) {
    let n = shard.shared.shards;
    loop {
        let first = std::future::poll_fn(|cx| {
            let g = &shard.global;
            match g.jobs.borrow_mut().pop_front() {
                Some(j) => std::task::Poll::Ready(j),
                None => {
                    *g.job_waker.borrow_mut() = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
        .await;
        let mut jobs = vec![first];
        {
            let mut q = shard.global.jobs.borrow_mut();
            while jobs.len() < SESSION_JOBS {
                match q.pop_front() {
                    Some(j) => jobs.push(j),
                    None => break,
                }
            }
        }
        let stats = &shard.shared;
        stats
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats
            .session_jobs
            .fetch_add(jobs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut reads = Vec::new();
        let mut writes = Vec::with_capacity(jobs.len());
        let mut backup = None;
        for (job, target) in jobs {
            match job {
                Job::Read(req) => reads.push((req, target)),
                Job::Write(data) => writes.push((data, target, false)),
                Job::Replicated(data) => writes.push((data, target, true)),
                Job::Backup(dir) if backup.is_none() => backup = Some((dir, target)),
                Job::Backup(_) => {
                    if let Some(t) = target {
                        let e = V2Error::new(RAFT_INTERNAL, "another backup is running", 0);
                        shard.answer(t, Answer::Read(Err(e)));
                    }
                }
            }
        }
        // A sharded cluster's reads and backups: every group gated at one
        // index first (its member-wide writes run before, in their own
        // session).
        let mut gated = None;
        if shard.shared.seq.enabled && (!reads.is_empty() || backup.is_some()) {
            let outcome = if writes.is_empty() {
                gate_cut(&shard).await
            } else {
                Err(None)
            };
            match outcome {
                Ok(at) => gated = Some(at),
                Err(why) => {
                    lift_apply_gates(&shard);
                    let mut q = shard.global.jobs.borrow_mut();
                    let backup = backup.take().map(|(dir, t)| (Job::Backup(dir), t));
                    let reads = reads.drain(..).map(|(req, t)| (Job::Read(req), t));
                    for (job, target) in backup.into_iter().chain(reads).rev() {
                        match why {
                            None => q.push_front((job, target)),
                            Some(m) => {
                                if let Some(t) = target {
                                    let e = V2Error::new(RAFT_INTERNAL, m, 0);
                                    shard.answer(t, Answer::Read(Err(e)));
                                }
                            }
                        }
                    }
                    if writes.is_empty() {
                        drop(q);
                        continue;
                    }
                }
            }
        }
        // 1. Park everyone; with reads or a backup, each shard holds a
        // snapshot where it parked: together a cut of the member at the
        // counter's value (a sharded cluster's: at the gate).
        let cut = !reads.is_empty() || backup.is_some();
        shard.global.parked.set(0);
        for peer in 1..n {
            shard.send(peer, MeshMsg::Global(Msg::Park { cut }));
        }
        request_park(&shard, cut);
        std::future::poll_fn(|cx| {
            if shard.global.parked.get() >= n {
                std::task::Poll::Ready(())
            } else {
                *shard.global.coord_waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
        let cut_index = match gated {
            Some(at) => {
                // The cuts are taken: the groups may apply on.
                lift_apply_gates(&shard);
                at
            }
            None => shard
                .shared
                .counter
                .load(std::sync::atomic::Ordering::SeqCst),
        };
        // 2. Run the writes in order; answers wait for durability.
        let mut answers: Vec<(Option<Target>, Answer)> = Vec::with_capacity(writes.len());
        let mut events: Vec<Arc<Event>> = Vec::new();
        let wrote = !writes.is_empty();
        run_writes(&shard, writes, &mut answers, &mut events).await;
        // 3. One fsync per shard for the session's writes.
        if wrote {
            let all: Vec<usize> = (0..n).collect();
            let flushed = round(&shard, &all, || SubOp::Flush).await;
            if let Some(m) = flushed.into_iter().find_map(|r| match r {
                Some(SubResult::Failed(m)) => Some(m),
                None => Some("a shard did not flush".into()),
                _ => None,
            }) {
                tracing::error!(error = %m, "member-wide writes not durable");
                events.clear();
                for (_, a) in answers.iter_mut() {
                    if let Answer::Write(r) = a {
                        r.outcome = Err(fail_answer(&m));
                    }
                }
            }
        }
        shard.publish(&mut events);
        let (ri, rt) = (shard.raft.raft_index(), shard.raft.raft_term());
        for (target, mut a) in answers {
            if let Answer::Write(r) = &mut a {
                r.raft_index = ri;
                r.raft_term = rt;
                if let Err(e) = &mut r.outcome {
                    e.index = e.index.max(shard.orderer.borrow().closed());
                }
            }
            if let Some(t) = target {
                shard.answer(t, a);
            }
        }
        // 4. Unpark.
        for peer in 0..n {
            send_sub(&shard, peer, SubOp::Unpark);
        }
        // 5. The reads, from the cut, while the shards run on: they see
        // what every shard had durably when it parked (before this
        // session's writes). Concurrent requests have no order among
        // themselves; a connection sends a read only after its earlier
        // writes are done.
        for (req, target) in reads {
            let a = Answer::Read(read(&shard, req, cut_index).await);
            if let Some(t) = target {
                shard.answer(t, a);
            }
        }
        // 6. A backup takes the cuts; else they are released.
        if let Some((dir, target)) = backup {
            let a = Answer::Read(run_backup(&shard, dir, cut_index).await);
            if let Some(t) = target {
                shard.answer(t, a);
            }
        } else if cut {
            release_cuts(&shard);
        }
    }
}

/// Every shard lets go of the session's cut (it pins LMDB pages).
fn release_cuts(shard: &Rc<Shard>) {
    for peer in 1..shard.shared.shards {
        shard.send(peer, MeshMsg::Global(Msg::DropCut));
    }
    shard.store.borrow_mut().drop_cut();
}

/// A shard's part of a backup: its store as of the cut, copied off the
/// executor into `dir`.
fn start_backup(shard: &Rc<Shard>, dir: std::path::PathBuf) {
    let job = shard.store.borrow_mut().backup_job(dir.join("lmdb"));
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let result = match job {
            None => SubResult::Failed(format!("shard {}: no snapshot to back up", shard.id)),
            Some(job) => match glommio::executor().spawn_blocking(job).await {
                Ok(bytes) => SubResult::Copied(bytes),
                Err(e) => SubResult::Failed(format!("shard {}: {e}", shard.id)),
            },
        };
        report(&shard, result);
    })
    .detach();
}

/// A backup at the session's cut (`index`): a new data dir in `dir` with
/// this member's identity, every shard's store as of the cut and empty
/// logs. Answers `{"dir":..,"index":..,"shards":..,"bytes":..}`.
async fn run_backup(shard: &Rc<Shard>, dir: std::path::PathBuf, index: u64) -> ReadResult {
    let n = shard.shared.shards;
    let fail = |m: String| {
        tracing::warn!(error = %m, "backup failed");
        V2Error::new(RAFT_INTERNAL, format!("backup: {m}"), index)
    };
    let id = {
        let view = shard.view().read().expect("membership");
        crate::storage::identity::Identity {
            name: view.local().name.clone(),
            member_id: view.local().id,
            cluster_id: view.id,
            shards: n,
            unit_depth: Some(shard.shared.unit_depth),
        }
    };
    let prepare = {
        let dir = dir.clone();
        move || -> Result<(), String> {
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for i in 0..n {
                let wal = dir.join(format!("shard-{i}")).join("wal");
                std::fs::create_dir_all(&wal).map_err(|e| format!("{}: {e}", wal.display()))?;
            }
            Ok(())
        }
    };
    let prepared = glommio::executor().spawn_blocking(prepare).await;
    if let Err(m) = prepared {
        release_cuts(shard);
        return Err(fail(m));
    }
    let all: Vec<usize> = (0..n).collect();
    let send = |p: usize| {
        let m = Msg::Backup {
            dir: dir.join(format!("shard-{p}")),
        };
        if p == shard.id {
            on_message(shard, m);
        } else {
            shard.send(p, MeshMsg::Global(m));
        }
    };
    let copied = exchange(shard, &all, send).await;
    let mut bytes = 0;
    for (i, r) in copied.into_iter().enumerate() {
        match r {
            Some(SubResult::Copied(b)) => bytes += b,
            Some(SubResult::Failed(m)) => return Err(fail(m)),
            _ => return Err(fail(format!("shard {i} did not copy its store"))),
        }
    }
    // The identity last: a backup without it is not a data dir.
    let finish = {
        let dir = dir.clone();
        move || crate::storage::identity::write(&dir, &id)
    };
    glommio::executor()
        .spawn_blocking(finish)
        .await
        .map_err(fail)?;
    let mut body = b"{\"dir\":".to_vec();
    crate::etcd::json::write_str(&mut body, dir.display().to_string().as_bytes());
    body.extend_from_slice(
        format!(",\"index\":{index},\"shards\":{n},\"bytes\":{bytes}}}\n").as_bytes(),
    );
    tracing::info!(dir = %dir.display(), index, bytes, "backup written");
    Ok((body, index))
}

fn send_sub(shard: &Rc<Shard>, to: usize, op: SubOp) {
    if to == shard.id {
        shard.global.subops.borrow_mut().push_back(op);
        wake(&shard.global.subop_waker);
    } else {
        shard.send(to, MeshMsg::Global(Msg::Sub(op)));
    }
}

/// Send `op()` to each of `peers` (parked) and wait for all their results.
async fn round(
    shard: &Rc<Shard>,
    peers: &[usize],
    op: impl Fn() -> SubOp,
) -> Vec<Option<SubResult>> {
    let send = |p| send_sub(shard, p, op());
    exchange(shard, peers, send).await
}

/// Send each of `peers` a request with `send` and wait for all their
/// results.
async fn exchange(
    shard: &Rc<Shard>,
    peers: &[usize],
    send: impl Fn(usize),
) -> Vec<Option<SubResult>> {
    let n = shard.shared.shards;
    *shard.global.results.borrow_mut() = (0..n).map(|_| None).collect();
    tracing::trace!(?peers, "round");
    for &p in peers {
        send(p);
    }
    std::future::poll_fn(|cx| {
        let done = {
            let r = shard.global.results.borrow();
            peers.iter().all(|&p| r[p].is_some())
        };
        if done {
            std::task::Poll::Ready(())
        } else {
            *shard.global.coord_waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    })
    .await;
    std::mem::take(&mut *shard.global.results.borrow_mut())
}

fn fail_answer(msg: &str) -> V2Error {
    V2Error::new(RAFT_INTERNAL, format!("etcdserver: {msg}"), 0)
}

/// Set the member-wide sequence number of an encoded command.
pub fn set_gseq(data: &mut [u8], gseq: u64) {
    data[27..35].copy_from_slice(&gseq.to_le_bytes());
}

/// Drop the etcd indexes recorded in an encoded command (they end it).
pub fn strip_indexes(data: &mut Vec<u8>) {
    let n = Command::decode(data).map_or(0, |c| c.indexes.len());
    data.truncate(data.len() - n);
}

/// A write every shard accepted in its trial, applied with the next round.
struct Accepted {
    data: Vec<u8>,
    primary: usize,
    /// Its place in the session's answers.
    answer: usize,
    expiring: Option<Vec<u8>>,
    /// A sharded cluster's write: the index its sequencer stamped, which
    /// becomes a placeholder if the write fails.
    stamped: Option<u64>,
}

/// The session's writes, in order. Each round carries, to every shard, the
/// apply of the write accepted in the previous round and the trial of the
/// next one (which then sees the first applied): one round per write.
async fn run_writes(
    shard: &Rc<Shard>,
    writes: Vec<(Vec<u8>, Option<Target>, bool)>,
    answers: &mut Vec<(Option<Target>, Answer)>,
    events: &mut Vec<Arc<Event>>,
) {
    let n = shard.shared.shards;
    let all: Vec<usize> = (0..n).collect();
    let mut next_index = shard
        .shared
        .counter
        .load(std::sync::atomic::Ordering::SeqCst)
        + 1;
    let mut accepted: Option<Accepted> = None;
    let mut queue = writes.into_iter();
    loop {
        let next = queue.next();
        if next.is_none() && accepted.is_none() {
            return;
        }
        // Prepare the next write's entry (its index follows the accepted one).
        let mut trial = None;
        if let Some((mut data, target, stamped)) = next {
            match Command::decode(&data) {
                None => {
                    answers.push((target, reply(Err(fail_answer("undecodable command")))));
                }
                Some(cmd) => {
                    // A sharded cluster's write carries the index its
                    // sequencer stamped (and as its sequence).
                    let index = if stamped { cmd.gseq } else { next_index };
                    let primary = if cmd.op == Op::CreateUnique {
                        shard.placement.of_created(cmd.key, index)
                    } else {
                        shard.placement.of_key(cmd.key)
                    };
                    let expiring = (cmd.op == Op::Sync).then(|| cmd.key.to_vec());
                    if !stamped {
                        set_gseq(&mut data, next_index);
                        push_index(&mut data, next_index);
                    }
                    answers.push((target, reply(Err(fail_answer("unanswered")))));
                    trial = Some(Accepted {
                        data,
                        primary,
                        answer: answers.len() - 1,
                        expiring,
                        stamped: stamped.then_some(index),
                    });
                }
            }
        }
        if trial.is_none() && accepted.is_none() {
            continue;
        }
        let ops = || {
            let mut v = Vec::with_capacity(2);
            if let Some(a) = &accepted {
                v.push(SubOp::Apply(a.data.clone()));
            }
            if let Some(t) = &trial {
                v.push(SubOp::Trial(t.data.clone()));
            }
            SubOp::Batch(v)
        };
        let results = round(shard, &all, ops).await;
        let mut applied = Vec::with_capacity(n);
        let mut tried = Vec::with_capacity(n);
        for r in results {
            let mut list = match r {
                Some(SubResult::Batch(list)) => list.into_iter(),
                Some(other) => vec![other].into_iter(),
                None => Vec::new().into_iter(),
            };
            if accepted.is_some() {
                applied.push(list.next());
            }
            tried.push(list.next());
        }
        if let Some(a) = accepted.take() {
            answers[a.answer].1 = finish_apply(shard, &a, applied, events);
            done_expiring(shard, &a.expiring);
        }
        if let Some(t) = trial {
            match decide(&t, tried) {
                Some(e) => {
                    answers[t.answer].1 = reply(Err(e));
                    done_expiring(shard, &t.expiring);
                    if let Some(i) = t.stamped {
                        // Every member decides alike and leaves this gap;
                        // the groups waiting at the write go on.
                        events.push(Arc::new(Event::placeholder(i)));
                        round(shard, &all, || SubOp::Pass).await;
                    }
                }
                None => {
                    if t.stamped.is_none() {
                        next_index += 1;
                    }
                    accepted = Some(t);
                }
            }
        }
    }
}

fn reply(outcome: Outcome) -> Answer {
    Answer::Write(Reply {
        outcome,
        raft_index: 0,
        raft_term: 0,
    })
}

fn done_expiring(shard: &Shard, expiring: &Option<Vec<u8>>) {
    if let Some(p) = expiring {
        shard.global.expiring.borrow_mut().retain(|x| x != p);
    }
}

/// The trial's verdict: an error, or `None` when every shard accepts.
///
/// A shard knows only its own files: "not found" may just mean another
/// shard holds the file in the way, so a shard that saw something (a file
/// blocking the path, a node that exists, a non-empty directory) has the
/// real answer. The directory skeleton is the same everywhere, so such
/// errors agree; the owner's is taken when there is a choice.
fn decide(t: &Accepted, tried: Vec<Option<SubResult>>) -> Option<V2Error> {
    let mut error: Option<V2Error> = None;
    let mut best = (false, false);
    for (i, r) in tried.into_iter().enumerate() {
        let e = match r {
            Some(SubResult::Outcome(Some(Err(e)))) if e.code != ESCALATE => e,
            Some(SubResult::Outcome(_)) => continue,
            Some(SubResult::Failed(m)) => fail_answer(&m),
            _ => fail_answer("member-wide operation lost a shard"),
        };
        let rank = (e.code != KEY_NOT_FOUND, i == t.primary);
        if error.is_none() || rank > best {
            best = rank;
            error = Some(e);
        }
    }
    error
}

/// Merge the shards' applies of one write into its one event.
fn finish_apply(
    shard: &Shard,
    a: &Accepted,
    applied: Vec<Option<SubResult>>,
    events: &mut Vec<Arc<Event>>,
) -> Answer {
    let mut main: Option<Arc<Event>> = None;
    let mut removed = Removed::default();
    let mut failure = None;
    for (i, r) in applied.into_iter().enumerate() {
        match r {
            Some(SubResult::Outcome(Some(Ok(e)))) => {
                removed.merge(&e.removed);
                if i == a.primary {
                    main = Some(e);
                }
            }
            Some(SubResult::Failed(m)) => failure = Some(m),
            _ => failure = Some(format!("shard {i} did not apply a member-wide write")),
        }
    }
    let (Some(e), None) = (main, failure.clone()) else {
        let m = failure.unwrap_or_else(|| "member-wide write lost its event".into());
        tracing::error!(shard = shard.id, error = %m, "member-wide write failed");
        return reply(Err(fail_answer(&m)));
    };
    let e = Arc::new(e.with_removed(removed));
    events.push(e.clone());
    // One raft entry on every shard, one proposal for the member.
    let m = &shard.shared.metrics;
    m.proposals_committed.inc();
    m.proposals_applied.inc();
    reply(Ok(e))
}

/// A member-wide read at the session's cut (`index`, the counter when
/// every shard had parked): every other shard's part, merged into shard
/// 0's.
async fn read(shard: &Rc<Shard>, req: ReadReq, index: u64) -> ReadResult {
    let n = shard.shared.shards;
    let others: Vec<usize> = (1..n).collect();
    let send = |p| {
        let m = Msg::Collect {
            key: req.key.clone(),
            opts: req.opts,
        };
        shard.send(p, MeshMsg::Global(m));
    };
    let collected = exchange(shard, &others, send).await;
    let mut remote = RemoteFiles::new();
    for (i, r) in collected.into_iter().enumerate().skip(1) {
        match r {
            Some(SubResult::Collected(files)) => {
                // Several shards hold nodes of a skeleton directory.
                for (dir, nodes) in files {
                    remote.entry(dir).or_default().append(nodes);
                }
            }
            // Never a partial listing.
            Some(SubResult::Failed(m)) => return Err(fail_answer(&m)),
            _ => return Err(fail_answer(&format!("shard {i} did not answer a read"))),
        }
    }
    // Behind room for the HTTP answer's head (`ReadReq`).
    let mut body = vec![0; HEAD_ROOM];
    match super::read_at(
        shard,
        index,
        &req.key,
        // A member-wide listing is read whole (other shards are parked).
        ReadOpts {
            bulk: true,
            ..req.opts
        },
        Some(&remote),
        crate::store::ReadAt::Cut,
        &mut body,
    ) {
        Ok(i) => Ok((body, i)),
        // The directory went away since its owner escalated the read.
        Err(e) if e.code == ESCALATE => Err(V2Error::new(KEY_NOT_FOUND, &req.key[..], index)),
        Err(e) => Err(e),
    }
}
