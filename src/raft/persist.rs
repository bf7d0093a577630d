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
//! only while the writer is idle.

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
    /// Set when a write or sync failed (the shard stops).
    pub failed: RefCell<Option<String>>,
}

impl Persister {
    pub fn new(wal: Wal) -> Rc<Persister> {
        Rc::new(Persister {
            wal: RefCell::new(Some(wal)),
            queue: RefCell::default(),
            queued: Cell::new(0),
            persisted: Cell::new(0),
            busy: Cell::new(false),
            waker: RefCell::default(),
            failed: RefCell::default(),
        })
    }

    /// Queue `Ready` number `number` (possibly with nothing to write: it
    /// then completes once everything before it is durable).
    pub fn queue(&self, number: u64, entries: &[Entry], hs: Option<&HardState>) {
        self.queue.borrow_mut().push_back(Batch {
            number,
            entries: entries.to_vec(),
            hs: hs.cloned(),
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
        *self.wal.borrow_mut() = Some(wal);
    }

    /// Read the WAL (diagnostics), if no one is writing it.
    pub fn with_wal<R>(&self, f: impl FnOnce(&Wal) -> R) -> Option<R> {
        self.wal.borrow().as_ref().map(f)
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

/// The writer task: persist queued batches in order, one sync per round.
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
                    *p.failed.borrow_mut() = Some(e.to_string());
                    p.put_wal(wal);
                    p.busy.set(false);
                    shard.kick_loop();
                    return;
                }
            }
        }
        p.put_wal(wal);
        p.persisted.set(last);
        p.busy.set(false);
        shard.kick_loop();
    }
}
