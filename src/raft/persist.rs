//! The WAL writer of a raft group: owns the [`Wal`] and, for a group with
//! several voters, persists `Ready`s in order *off* the raft loop.
//!
//! The loop hands each `Ready`'s entries and hard state to [`Persister::queue`]
//! (after putting them in raft's in-memory log) and goes on stepping
//! messages; the writer task ([`run`]) writes every queued batch and syncs
//! once, records the highest `Ready` number now durable, and kicks the loop,
//! which then tells raft-rs (`on_persist_ready`) and sends the messages that
//! had to wait for persistence. A one-voter group writes synchronously from
//! the loop instead (its answers wait for the sync anyway), borrowing the WAL
//! only while the writer is idle. Sealed segments a checkpoint covers are
//! released at once while the writer is idle, else by the writer after its
//! round ([`Persister::release_after`]), so a busy writer never postpones a
//! release.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use raft::eraftpb::{Entry, HardState};

use crate::shard::Shard;
use crate::storage::wal::Wal;

/// One `Ready`'s worth of log to persist.
struct Batch {
    number: u64,
    entries: Vec<Entry>,
    hs: Option<HardState>,
}

/// A group's WAL and its background writer's state.
pub struct Persister {
    /// The WAL, taken out by whoever is writing it (never both).
    wal: RefCell<Option<Wal>>,
    queue: RefCell<VecDeque<Batch>>,
    /// Highest `Ready` number queued, and highest made durable.
    queued: Cell<u64>,
    persisted: Cell<u64>,
    busy: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// Who waits for the writer to become idle ([`Persister::until_idle`]).
    idle_waker: RefCell<Option<Waker>>,
    /// Sealed segments up to this applied index may go ([`Persister::release_after`]).
    release_at: Cell<Option<u64>>,
    /// The WAL's sealed segments and open-segment offset when it was last
    /// given back (readable while the writer holds it).
    sealed: Cell<usize>,
    offset: Cell<u64>,
    /// Set when a write or sync failed (the shard stops).
    pub failed: RefCell<Option<String>>,
}

impl Persister {
    pub fn new(wal: Wal) -> Rc<Persister> {
        let (sealed, offset) = (wal.sealed_segments(), wal.offset());
        Rc::new(Persister {
            wal: RefCell::new(Some(wal)),
            queue: RefCell::default(),
            queued: Cell::new(0),
            persisted: Cell::new(0),
            busy: Cell::new(false),
            waker: RefCell::default(),
            idle_waker: RefCell::default(),
            release_at: Cell::new(None),
            sealed: Cell::new(sealed),
            offset: Cell::new(offset),
            failed: RefCell::default(),
        })
    }

    /// Queue `Ready` number `number` (possibly with nothing to write: it
    /// then completes once everything before it is durable).
    pub fn queue(&self, number: u64, entries: Vec<Entry>, hs: Option<HardState>) {
        self.queue.borrow_mut().push_back(Batch {
            number,
            entries,
            hs,
        });
        self.queued.set(number);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Take the WAL to write it from the loop; only while [`Persister::idle`].
    pub fn take_wal(&self) -> Wal {
        self.wal
            .borrow_mut()
            .take()
            .expect("the WAL is taken only while its writer is idle")
    }

    /// Give the WAL back after [`Persister::take_wal`].
    pub fn put_wal(&self, wal: Wal) {
        self.sealed.set(wal.sealed_segments());
        self.offset.set(wal.offset());
        *self.wal.borrow_mut() = Some(wal);
    }

    /// Sealed WAL segments, as of the last time the WAL was given back.
    pub fn sealed_segments(&self) -> usize {
        self.sealed.get()
    }

    /// Bytes in the open WAL segment, as of the last time it was given back.
    pub fn wal_offset(&self) -> u64 {
        self.offset.get()
    }

    /// Release the sealed segments a checkpoint at applied index `durable`
    /// covers: now if the writer is idle, else by the writer after its
    /// current round.
    pub async fn release_after(&self, durable: u64) -> Result<(), crate::storage::wal::Error> {
        if !self.idle() {
            self.release_at.set(Some(durable));
            return Ok(());
        }
        let mut wal = self.take_wal();
        let r = wal.release(durable).await;
        self.put_wal(wal);
        r
    }

    /// The writer's round ended (the WAL is back): wake whoever waits for
    /// it to be idle.
    fn round_over(&self) {
        self.busy.set(false);
        if let Some(w) = self.idle_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Wait until the writer is idle, or has failed.
    pub async fn until_idle(&self) {
        std::future::poll_fn(|cx| {
            if self.idle() || self.failed.borrow().is_some() {
                std::task::Poll::Ready(())
            } else {
                *self.idle_waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// The highest `Ready` number that is durable.
    pub fn persisted(&self) -> u64 {
        self.persisted.get()
    }

    /// Nothing queued or being written: the loop may use the WAL directly.
    pub fn idle(&self) -> bool {
        !self.busy.get()
            && self.queue.borrow().is_empty()
            && self.persisted.get() >= self.queued.get()
    }
}

/// The writer task: persist queued batches in order, one sync per round;
/// then release what a checkpoint asked for while it was busy.
pub async fn run(p: Rc<Persister>, shard: Rc<Shard>) {
    loop {
        crate::shard::until_queued(&p.queue, &p.waker).await;
        let batches: Vec<Batch> = p.queue.borrow_mut().drain(..).collect();
        let Some(last) = batches.last().map(|b| b.number) else {
            continue;
        };
        p.busy.set(true);
        let mut wal = p.take_wal();
        let mut entries = 0u64;
        for b in &batches {
            wal.append_entries(&b.entries);
            if let Some(hs) = &b.hs {
                wal.append_hard_state(hs);
            }
            entries += b.entries.len() as u64;
        }
        if wal.has_pending() {
            let t = Instant::now();
            match wal.sync().await {
                Ok(bytes) => shard.record_sync(t.elapsed(), entries, bytes),
                Err(e) => {
                    fail(&p, &shard, wal, e);
                    return;
                }
            }
        }
        p.persisted.set(last);
        shard.kick_loop();
        if let Some(durable) = p.release_at.take() {
            if let Err(e) = wal.release(durable).await {
                fail(&p, &shard, wal, e);
                return;
            }
        }
        p.put_wal(wal);
        p.round_over();
    }
}

/// A write, sync or release failed: record it (the shard stops) and wake
/// whoever waits on the writer.
fn fail(p: &Persister, shard: &Shard, wal: Wal, e: crate::storage::wal::Error) {
    *p.failed.borrow_mut() = Some(e.to_string());
    p.put_wal(wal);
    p.round_over();
    shard.kick_loop();
}
