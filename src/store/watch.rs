//! Watches: the event history window and the hub of waiting watchers.
//!
//! Applied events enter through [`EventHistory::push`] and
//! [`WatcherHub::notify`]; a watch request enters through
//! [`EventHistory::scan`] (answered at once from history) or
//! [`WatcherHub::add`] (parked until a matching event). Events leave towards
//! the HTTP layer through bounded local channels, one per watcher; a watcher
//! whose channel fills is dropped, which ends its stream (etcd's behaviour).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::event::Event;
use crate::etcd::error::{V2Error, EVENT_INDEX_CLEARED};

/// Events buffered per watcher before it is dropped (etcd: 100).
pub const WATCHER_BUFFER: usize = 100;

/// The last `capacity` events, oldest first (etcd's EventHistory).
pub struct EventHistory {
    queue: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Index of the oldest event still answerable.
    start_index: u64,
    last_index: u64,
}

impl EventHistory {
    /// `start_index`/`last_index` describe an empty window that begins after
    /// `last_index` (e.g. after a restart).
    pub fn new(capacity: usize, start_index: u64, last_index: u64) -> EventHistory {
        EventHistory {
            queue: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            start_index,
            last_index,
        }
    }

    /// The window ending at `last_index` rebuilt from stored events (in
    /// index order; an index without one is a placeholder), answerable from
    /// `complete_from` on (the oldest index whose events are all known; 0
    /// for all) and for at most `capacity` events.
    pub fn restore(
        capacity: usize,
        last_index: u64,
        events: &[Arc<Event>],
        complete_from: u64,
    ) -> EventHistory {
        let capacity = capacity.max(1);
        let start = (last_index + 1)
            .saturating_sub(capacity as u64)
            .max(complete_from)
            .max(1);
        let mut h = EventHistory::new(capacity, start, start - 1);
        let mut next = events.partition_point(|e| e.index < start);
        for i in start..=last_index {
            match events.get(next) {
                Some(e) if e.index == i => {
                    h.push(e.clone());
                    next += 1;
                }
                _ => h.push(Arc::new(Event::placeholder(i))),
            }
        }
        h
    }

    /// The events after `index`, oldest first.
    pub fn after(&self, index: u64) -> impl Iterator<Item = &Arc<Event>> {
        let first = self.queue.partition_point(|e| e.index <= index);
        self.queue.range(first..)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The oldest index this window can answer.
    pub fn start_index(&self) -> u64 {
        self.start_index
    }

    pub fn push(&mut self, e: Arc<Event>) {
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
        }
        self.last_index = e.index;
        self.queue.push_back(e);
        self.start_index = self.queue.front().map(|e| e.index).unwrap_or(0);
    }

    /// The first event at or after `since` that a watch on `key` would see,
    /// or `Ok(None)` to wait for the future. Mirrors etcd's `scan`, including
    /// its string-prefix rule for deleted directories (spec 5.3).
    pub fn scan(
        &self,
        key: &[u8],
        recursive: bool,
        since: u64,
    ) -> Result<Option<Arc<Event>>, V2Error> {
        if since < self.start_index {
            let cause = format!(
                "the requested history has been cleared [{}/{}]",
                self.start_index, since
            );
            return Err(V2Error::new(EVENT_INDEX_CLEARED, cause, 0));
        }
        if since > self.last_index {
            return Ok(None);
        }
        let first = self.queue.partition_point(|e| e.index < since);
        for e in self.queue.range(first..) {
            if e.refresh {
                continue;
            }
            let mut ok = e.key() == key;
            if recursive && !ok {
                ok = is_under(e.key(), key);
            }
            if !ok && e.prev_dir && e.is_delete() {
                ok = key.starts_with(e.key());
            }
            if ok {
                return Ok(Some(e.clone()));
            }
        }
        Ok(None)
    }
}

/// `key` lies strictly below `dir` (`dir` + `/` prefix; `/` covers all).
pub fn is_under(key: &[u8], dir: &[u8]) -> bool {
    if dir == b"/" {
        return key.len() > 1 && key[0] == b'/';
    }
    key.len() > dir.len() && key.starts_with(dir) && key[dir.len()] == b'/'
}

/// True when `key` has a hidden component (`_name`) below `watch` (etcd's
/// `isHidden`).
fn hidden_below(watch: &[u8], key: &[u8]) -> bool {
    if watch.len() > key.len() {
        return false;
    }
    let rest = &key[watch.len()..];
    rest.windows(2).any(|w| w == b"/_") || (watch.ends_with(b"/") && rest.first() == Some(&b'_'))
}

struct Watcher {
    id: u64,
    recursive: bool,
    stream: bool,
    since: u64,
    tx: LocalSender<Arc<Event>>,
    /// Last event index delivered, so one event reaches a watcher once.
    last: u64,
}

/// Waiting watchers, by watched key.
#[derive(Default)]
pub struct WatcherHub {
    by_key: BTreeMap<Box<[u8]>, Vec<Watcher>>,
    count: usize,
    next_id: u64,
}

/// A registered watcher, as the HTTP layer holds it.
pub struct WatchHandle {
    pub id: u64,
    pub key: Box<[u8]>,
    pub rx: LocalReceiver<Arc<Event>>,
}

impl WatcherHub {
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn add(&mut self, key: &[u8], recursive: bool, stream: bool, since: u64) -> WatchHandle {
        let (tx, rx) = local_channel::new_bounded(WATCHER_BUFFER);
        self.next_id += 1;
        let id = self.next_id;
        self.by_key.entry(key.into()).or_default().push(Watcher {
            id,
            recursive,
            stream,
            since,
            tx,
            last: 0,
        });
        self.count += 1;
        WatchHandle {
            id,
            key: key.into(),
            rx,
        }
    }

    /// End every watch (their streams close; clients watch again and learn
    /// from history what they missed, or get 401).
    pub fn clear(&mut self) {
        self.by_key.clear();
        self.count = 0;
    }

    /// Deliver an event rebuilt from stored history (a snapshot install):
    /// it knows no removed nodes, so a directory delete reaches watchers by
    /// etcd's history rule instead (any watched key it is a prefix of).
    pub fn notify_restored(&mut self, e: &Arc<Event>) {
        if self.count == 0 || e.refresh || e.is_placeholder() {
            return;
        }
        if e.prev_dir && e.is_delete() {
            let below: Vec<Box<[u8]>> = self
                .by_key
                .range::<[u8], _>((
                    std::ops::Bound::Excluded(e.key()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(e.key()))
                .map(|(k, _)| k.clone())
                .collect();
            for k in below {
                self.notify_at(e, &k, true);
            }
        }
        self.notify(e);
    }

    /// Unregister (client went away). Dropping the sender ends the stream.
    pub fn remove(&mut self, key: &[u8], id: u64) {
        if let Some(list) = self.by_key.get_mut(key) {
            let before = list.len();
            list.retain(|w| w.id != id);
            self.count -= before - list.len();
            if list.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Any watcher on `key` or below it (then a delete must list removed paths).
    pub fn has_at_or_under(&self, key: &[u8]) -> bool {
        self.by_key
            .range::<[u8], _>((std::ops::Bound::Included(key), std::ops::Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| &**k == key || is_under(k, key))
    }

    /// Deliver `e` to every watcher it concerns (spec 5.2), including
    /// watchers on the paths a delete/expire removed below its key.
    pub fn notify(&mut self, e: &Arc<Event>) {
        if self.count == 0 || e.refresh {
            return;
        }
        if !e.removed.is_empty() {
            self.notify_removed(e);
        }
        // The key itself and each ancestor, root first.
        let key = e.key();
        self.notify_at(e, b"/", false);
        for (i, &b) in key.iter().enumerate().skip(1) {
            if b == b'/' {
                self.notify_at(e, &key[..i], false);
            }
        }
        if key != b"/" {
            self.notify_at(e, key, false);
        }
    }

    /// Watchers on nodes a delete/expire removed below its key hear it
    /// (etcd's per-node callback). Only watched paths are looked up, so the
    /// cost follows the watchers below the key, not the size of the subtree.
    fn notify_removed(&mut self, e: &Arc<Event>) {
        let key: &[u8] = e.key();
        let mut hi = key.to_vec();
        hi.push(b'/' + 1);
        let mut lo = key.to_vec();
        lo.push(b'/');
        let below: Vec<Box<[u8]>> = self
            .by_key
            .range::<[u8], _>((
                std::ops::Bound::Included(&lo[..]),
                std::ops::Bound::Excluded(&hi[..]),
            ))
            .map(|(k, _)| k.clone())
            .collect();
        if below.is_empty() {
            return;
        }
        let lookup = e.removed.lookup();
        for p in below {
            if lookup.contains(&p[key.len()..]) {
                self.notify_at(e, &p, true);
            }
        }
    }

    fn notify_at(&mut self, e: &Arc<Event>, path: &[u8], deleted: bool) {
        let Some(list) = self.by_key.get_mut(path) else {
            return;
        };
        let original = e.key() == path;
        if !original && hidden_below(path, e.key()) && !deleted {
            return;
        }
        let before = list.len();
        list.retain_mut(|w| {
            if !(w.recursive || original || deleted) || e.index < w.since || w.last == e.index {
                return true;
            }
            w.last = e.index;
            let sent = w.tx.try_send(e.clone()).is_ok();
            // A full or closed channel drops the watcher; a one-shot watcher
            // is done after its event.
            sent && w.stream
        });
        self.count -= before - list.len();
        if list.is_empty() {
            self.by_key.remove(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event::Action;

    fn ev(index: u64, action: Action, key: &str, prev_dir: bool) -> Arc<Event> {
        let flags = (prev_dir, false, false);
        let json = b"{}\n".to_vec();
        Arc::new(Event::new(
            index,
            action,
            key.as_bytes(),
            flags,
            json,
            Default::default(),
        ))
    }

    #[test]
    fn history_window_and_401() {
        let mut h = EventHistory::new(3, 1, 3);
        for i in 4..=8 {
            h.push(ev(i, Action::Set, "/a", false));
        }
        let err = h.scan(b"/a", false, 2).unwrap_err();
        assert_eq!(err.cause, b"the requested history has been cleared [6/2]");
        assert_eq!(h.scan(b"/a", false, 7).unwrap().unwrap().index, 7);
        assert!(h.scan(b"/a", false, 9).unwrap().is_none());
    }

    #[test]
    fn history_prefix_quirk() {
        let mut h = EventHistory::new(10, 1, 3);
        h.push(ev(4, Action::Delete, "/pfx", true));
        assert_eq!(h.scan(b"/pfxother", false, 4).unwrap().unwrap().index, 4);
        assert!(h.scan(b"/other", true, 4).unwrap().is_none());
        assert_eq!(h.scan(b"/", true, 4).unwrap().unwrap().index, 4);
    }

    #[test]
    fn hidden_rules() {
        assert!(hidden_below(b"/", b"/_x"));
        assert!(hidden_below(b"/a", b"/a/_x/y"));
        assert!(!hidden_below(b"/a/_x", b"/a/_x/y"));
        assert!(!hidden_below(b"/a", b"/a/b"));
    }
}
