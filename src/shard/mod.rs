//! A shard: one slice of the keyspace owned by one executor — its store, its
//! raft group and the queue of proposals waiting to enter that group.
//!
//! Request handlers on the same executor call [`Shard::propose`] with an
//! encoded command and await the [`Reply`]; reads borrow the store directly
//! (never across an `.await`). The raft loop ([`crate::raft::run`]) drains
//! the queue into the raft group and completes the replies after apply.
//! Waiting replies live in a slab, so a write allocates no channel.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use hdrhistogram::Histogram;
use slab::Slab;

use crate::store::{Outcome, Store};
use crate::v2::error::{V2Error, RAFT_INTERNAL};

/// What a proposer gets back once its entry is applied.
#[derive(Debug)]
pub struct Reply {
    pub outcome: Outcome,
    pub raft_index: u64,
    pub raft_term: u64,
}

enum Slot {
    Waiting(Option<Waker>),
    Done(Reply),
    /// The proposer went away; the loop frees the slot on completion.
    Abandoned,
}

/// A proposal waiting to enter the raft group.
pub struct Proposal {
    pub data: Vec<u8>,
    /// Slab slot of the waiting proposer (`None` for internal proposals).
    pub slot: Option<usize>,
}

#[derive(Default)]
struct Inbox {
    queue: Vec<Proposal>,
    waker: Option<Waker>,
    slots: Slab<Slot>,
}

/// One shard's state, shared by the executor's tasks.
pub struct Shard {
    pub id: usize,
    pub store: RefCell<Store>,
    inbox: RefCell<Inbox>,
    pub raft_index: Cell<u64>,
    pub raft_term: Cell<u64>,
    pub is_leader: Cell<bool>,
    /// Set when the shard hit an I/O or corruption error and stopped.
    pub failed: RefCell<Option<String>>,
    pub metrics: Metrics,
}

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
}

impl Shard {
    pub fn new(id: usize, store: Store) -> Shard {
        Shard {
            id,
            store: RefCell::new(store),
            inbox: RefCell::new(Inbox::default()),
            raft_index: Cell::new(0),
            raft_term: Cell::new(0),
            is_leader: Cell::new(false),
            failed: RefCell::new(None),
            metrics: Metrics::default(),
        }
    }

    /// Queue an encoded command; the future resolves after it is applied.
    pub fn propose(self: &Rc<Self>, data: Vec<u8>) -> ReplyFuture {
        if let Some(msg) = self.failed.borrow().as_ref() {
            return ReplyFuture {
                shard: self.clone(),
                slot: None,
                early: Some(stopped_reply(msg)),
            };
        }
        let mut inbox = self.inbox.borrow_mut();
        let slot = inbox.slots.insert(Slot::Waiting(None));
        inbox.queue.push(Proposal {
            data,
            slot: Some(slot),
        });
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
        ReplyFuture {
            shard: self.clone(),
            slot: Some(slot),
            early: None,
        }
    }

    /// Queue an internal proposal nobody waits for (expiry sync).
    pub fn propose_internal(&self, data: Vec<u8>) {
        let mut inbox = self.inbox.borrow_mut();
        inbox.queue.push(Proposal { data, slot: None });
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
    }

    /// Take everything queued (the raft loop).
    pub fn take_proposals(&self, into: &mut Vec<Proposal>) {
        into.append(&mut self.inbox.borrow_mut().queue);
    }

    /// Resolve when proposals are queued (the raft loop's wait).
    pub fn proposals_ready(&self) -> ProposalsReady<'_> {
        ProposalsReady { shard: self }
    }

    /// Complete a proposer's wait.
    pub fn complete(&self, slot: usize, reply: Reply) {
        let mut inbox = self.inbox.borrow_mut();
        let Some(s) = inbox.slots.get_mut(slot) else {
            return;
        };
        match std::mem::replace(s, Slot::Done(reply)) {
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

    /// Fail every waiting proposer and refuse new ones (fatal shard error).
    pub fn fail(&self, msg: String) {
        tracing::error!(shard = self.id, error = %msg, "shard stopped");
        *self.failed.borrow_mut() = Some(msg.clone());
        let waiting: Vec<usize> = {
            let mut inbox = self.inbox.borrow_mut();
            let q = std::mem::take(&mut inbox.queue);
            drop(q);
            inbox
                .slots
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Waiting(_)))
                .map(|(k, _)| k)
                .collect()
        };
        for k in waiting {
            self.complete(k, stopped_reply(&msg));
        }
    }
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
        if inbox.queue.is_empty() {
            inbox.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// A proposer's wait for its reply.
pub struct ReplyFuture {
    shard: Rc<Shard>,
    slot: Option<usize>,
    early: Option<Reply>,
}

impl Future for ReplyFuture {
    type Output = Reply;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        if let Some(r) = self.early.take() {
            return Poll::Ready(r);
        }
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

impl Drop for ReplyFuture {
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
