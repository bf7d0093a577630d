//! The orderer: one executor's view of the member-wide event sequence.
//!
//! Every shard publishes the events of each durable batch to the orderer of
//! every executor (its own directly, the others over the mesh). Shards take
//! indexes from one counter and publish in their own index order, so events
//! from different shards can arrive out of order; the orderer holds an early
//! event until every smaller index has arrived, then delivers in index order
//! to this executor's event history and watcher hub. An index that no event
//! kept still arrives, as a placeholder, so delivery never waits on a gap.
//!
//! In a sharded cluster (issue #14) an index stamped on an entry that never
//! committed arrives from nobody; there each shard reports the *epochs* it
//! applies ([`Orderer::close`]): once every shard has applied epoch S, no
//! event below S is still to come, and the orderer delivers up to S - 1,
//! skipping the gaps.
//!
//! `delivered` is the closed index: every event at or below it is durable
//! and delivered here. The node-wide `closed` counter is the largest closed
//! index of any executor; responses report it as `X-Etcd-Index`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use crate::etcd::error::V2Error;
use crate::store::watch::{EventHistory, WatchHandle, WatcherHub};
use crate::store::Event;

pub struct Orderer {
    history: EventHistory,
    pub hub: WatcherHub,
    /// Events that arrived before a smaller index.
    early: BTreeMap<u64, Arc<Event>>,
    delivered: u64,
    closed: Arc<AtomicU64>,
    /// Tasks waiting for `delivered` to reach an index.
    waiters: Vec<(u64, Waker)>,
    /// The newest epoch each shard applied (a sharded cluster's).
    floors: Vec<u64>,
    /// Since when an event has waited on a smaller index (or, after a
    /// start that must close by epoch, since the start).
    waiting_since: Option<std::time::Instant>,
}

/// How a watch begins.
pub enum WatchStart {
    /// Found in history: deliver this one event.
    Past(Arc<Event>),
    /// Registered: wait on the handle.
    Waiting(WatchHandle),
}

impl Orderer {
    /// An orderer whose sequence continues after `index`, its history
    /// rebuilt from the shards' stored events (`past`, in index order,
    /// complete from `complete_from`; see [`EventHistory::restore`]). A
    /// fresh member's history holds etcd's three bootstrap writes as
    /// placeholders.
    pub fn new(
        capacity: usize,
        index: u64,
        past: &[Arc<Event>],
        complete_from: u64,
        closed: Arc<AtomicU64>,
    ) -> Orderer {
        let history = EventHistory::restore(capacity, index, past, complete_from);
        closed.fetch_max(index, Ordering::SeqCst);
        Orderer {
            history,
            hub: WatcherHub::default(),
            early: BTreeMap::new(),
            delivered: index,
            closed,
            waiters: Vec::new(),
            floors: Vec::new(),
            waiting_since: None,
        }
    }

    /// Close by epochs from `shards` shards (a sharded cluster); `stuck`:
    /// the member started below what its shards applied and waits for an
    /// epoch before anything above `index` is delivered.
    pub fn close_by_epochs(&mut self, shards: usize, stuck: bool) {
        self.floors = vec![0; shards];
        if stuck {
            self.waiting_since = Some(std::time::Instant::now());
        }
    }

    /// Shard `shard` applied epoch `start`: with every shard past it,
    /// deliver every held event below the lowest epoch and close up to it.
    pub fn close(&mut self, shard: usize, start: u64) {
        let Some(f) = self.floors.get_mut(shard) else {
            return;
        };
        *f = (*f).max(start);
        let upto = self
            .floors
            .iter()
            .min()
            .copied()
            .unwrap_or(0)
            .saturating_sub(1);
        if upto <= self.delivered {
            return;
        }
        while let Some(next) = self.early.first_entry() {
            if *next.key() > upto {
                break;
            }
            let e = next.remove();
            self.deliver(e);
        }
        self.delivered = upto;
        self.closed.fetch_max(upto, Ordering::SeqCst);
        self.deliver_in_order();
        self.after_delivery();
    }

    /// Deliver the held events that now follow `delivered` without a gap.
    fn deliver_in_order(&mut self) {
        while let Some(next) = self.early.first_entry() {
            if *next.key() != self.delivered + 1 {
                break;
            }
            let e = next.remove();
            self.deliver(e);
        }
    }

    /// An event has waited on a smaller index for at least `patience`.
    pub fn stuck_since(&self, now: std::time::Instant, patience: std::time::Duration) -> bool {
        self.waiting_since
            .is_some_and(|t| now.duration_since(t) >= patience)
    }

    fn after_delivery(&mut self) {
        if self.early.is_empty() {
            self.waiting_since = None;
        } else if self.waiting_since.is_none() {
            self.waiting_since = Some(std::time::Instant::now());
        }
        if !self.waiters.is_empty() {
            let d = self.delivered;
            self.waiters.retain(|(i, w)| {
                if *i <= d {
                    w.wake_by_ref();
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Every event at or below this index is delivered here.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The node-wide closed index (`X-Etcd-Index` of reads).
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::SeqCst)
    }

    /// Events held back waiting for a smaller index.
    pub fn held(&self) -> usize {
        self.early.len()
    }

    /// Accept one published event (any order); deliver what is now in order.
    pub fn offer(&mut self, e: Arc<Event>) {
        if e.index <= self.delivered {
            return;
        }
        if e.index == self.delivered + 1 {
            self.deliver(e);
            self.deliver_in_order();
        } else {
            tracing::debug!(index = e.index, delivered = self.delivered, "event held");
            self.early.insert(e.index, e);
        }
        self.after_delivery();
    }

    fn deliver(&mut self, e: Arc<Event>) {
        self.delivered = e.index;
        self.hub.notify(&e);
        self.history.push(e);
        self.closed.fetch_max(self.delivered, Ordering::SeqCst);
    }

    /// A snapshot replaced the store up to `index`, with its stored events
    /// `past` (complete from `complete_from`): the history is rebuilt from
    /// them, and the watchers hear the events they missed, in order — or,
    /// when the snapshot's history does not reach back to what they last
    /// heard, their watches end (they watch again and get 401 from history,
    /// never a silent gap).
    pub fn skip_to(&mut self, index: u64, past: &[Arc<Event>], complete_from: u64) {
        if index <= self.delivered {
            return;
        }
        self.early.retain(|i, _| *i > index);
        let capacity = self.history.capacity();
        self.history = EventHistory::restore(capacity, index, past, complete_from);
        if self.history.start_index() <= self.delivered + 1 {
            let missed: Vec<Arc<Event>> = self.history.after(self.delivered).cloned().collect();
            for e in &missed {
                self.hub.notify_restored(e);
            }
        } else {
            self.hub.clear();
        }
        self.delivered = index;
        self.closed.fetch_max(index, Ordering::SeqCst);
        self.waiters.retain(|(i, w)| {
            if *i <= index {
                w.wake_by_ref();
                false
            } else {
                true
            }
        });
    }

    /// Register `waker` to be woken once `index` is delivered. False when it
    /// already is.
    pub fn wait_for(&mut self, index: u64, waker: &Waker) -> bool {
        if index <= self.delivered {
            return false;
        }
        self.waiters.push((index, waker.clone()));
        true
    }

    /// Register a watch (etcd's store.Watch). A watch without an index
    /// starts after the node-wide closed index.
    pub fn watch(
        &mut self,
        key: &[u8],
        recursive: bool,
        stream: bool,
        since: u64,
    ) -> Result<(WatchStart, u64), V2Error> {
        let index = self.closed();
        let since = if since == 0 { index + 1 } else { since };
        match self.history.scan(key, recursive, since) {
            Err(mut e) => {
                e.index = index;
                Err(e)
            }
            Ok(Some(e)) => Ok((WatchStart::Past(e), index)),
            Ok(None) => Ok((
                WatchStart::Waiting(self.hub.add(key, recursive, stream, since)),
                index,
            )),
        }
    }
}

/// Resolves once the executor's orderer has delivered `index`.
pub struct Delivered<'a> {
    pub orderer: &'a std::cell::RefCell<Orderer>,
    pub index: u64,
}

impl std::future::Future for Delivered<'_> {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.orderer.borrow_mut().wait_for(self.index, cx.waker()) {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_index_order() {
        let closed = Arc::new(AtomicU64::new(0));
        let mut o = Orderer::new(100, 3, &[], 0, closed.clone());
        o.offer(Arc::new(Event::placeholder(5)));
        assert_eq!(o.delivered(), 3);
        o.offer(Arc::new(Event::placeholder(4)));
        assert_eq!(o.delivered(), 5);
        assert_eq!(closed.load(Ordering::SeqCst), 5);
        o.offer(Arc::new(Event::placeholder(4)));
        assert_eq!(o.delivered(), 5);
        assert_eq!(o.held(), 0);
    }

    #[test]
    fn epochs_from_every_shard_close_over_gaps() {
        let closed = Arc::new(AtomicU64::new(0));
        let mut o = Orderer::new(100, 3, &[], 0, closed.clone());
        o.close_by_epochs(2, false);
        // 4 was stamped on an entry that never committed.
        o.offer(Arc::new(Event::placeholder(5)));
        o.offer(Arc::new(Event::placeholder(7)));
        assert_eq!((o.delivered(), o.held()), (3, 2));
        o.close(0, 6);
        assert_eq!(o.delivered(), 3, "one shard's epoch closes nothing");
        o.close(1, 6);
        // Up to 5 by the epoch, skipping 4; 6 is still to come.
        assert_eq!((o.delivered(), o.held()), (5, 1));
        o.offer(Arc::new(Event::placeholder(6)));
        assert_eq!((o.delivered(), o.held()), (7, 0));
        assert_eq!(closed.load(Ordering::SeqCst), 7);
        o.close(1, 9);
        assert_eq!(o.delivered(), 7, "the lowest epoch bounds the close");
    }
}
