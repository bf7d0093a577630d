//! The raft log as raft-rs sees it: the in-memory log of recent entries
//! (rebuilt from the WAL at start), the hard and configuration state, plus
//! snapshots made from the store.
//!
//! Entries arrive by [`LogStore::append`] (the raft loop, after each
//! `Ready`) and leave by [`LogStore::compact`] once applied and no longer
//! needed by a follower; raft-rs reads them through [`Storage`]. The log is
//! a ring (`VecDeque`): raft-rs's `MemStorage` keeps a `Vec` and moves the
//! whole retained log (up to `--snapshot-count` entries) on every
//! compaction step.
//!
//! raft-rs asks [`Storage::snapshot`] when a follower needs entries the log
//! no longer holds. A snapshot is a consistent copy of the shard's LMDB
//! store, made off the executor: the first ask marks one wanted and answers
//! "temporarily unavailable"; the raft loop starts the copy
//! ([`crate::raft`]'s `prepare_snapshot`) and raft-rs asks again later.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError, NO_LIMIT};

/// Where the snapshot for lagging followers stands.
#[derive(Default)]
pub enum SnapSlot {
    #[default]
    Empty,
    /// raft-rs asked for one; the loop has not started it yet.
    Wanted,
    Preparing,
    Ready(Snapshot),
}

/// raft-rs's storage: the recent log in memory, snapshots from the store.
///
/// The same contract as raft-rs's `MemStorage` (which it replaces): the
/// log starts after the last snapshot applied, `term` answers for the
/// snapshot's own index, and compaction does not move that point.
pub struct LogStore {
    state: RaftState,
    /// The last snapshot applied: the log starts right after it.
    snap_meta: SnapshotMetadata,
    /// `entries[i]` has index `first_index() + i`.
    entries: VecDeque<Entry>,
    pub snap: Rc<RefCell<SnapSlot>>,
    /// What the entries weigh in memory (`entry_bytes`), in total: what
    /// compaction weighs against its byte budget.
    bytes: u64,
}

/// What one entry costs in memory, roughly.
fn entry_bytes(e: &Entry) -> u64 {
    (e.data.len() + e.context.len() + 64) as u64
}

impl LogStore {
    pub fn new() -> LogStore {
        LogStore {
            state: RaftState::default(),
            snap_meta: SnapshotMetadata::default(),
            entries: VecDeque::new(),
            snap: Rc::default(),
            bytes: 0,
        }
    }

    fn first(&self) -> u64 {
        match self.entries.front() {
            Some(e) => e.index,
            None => self.snap_meta.index + 1,
        }
    }

    fn last(&self) -> u64 {
        match self.entries.back() {
            Some(e) => e.index,
            None => self.snap_meta.index,
        }
    }

    pub fn set_hardstate(&mut self, hs: HardState) {
        self.state.hard_state = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.state.hard_state.commit = commit;
    }

    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.state.conf_state = cs;
    }

    /// Append `entries` to the in-memory log, replacing any it conflicts
    /// with (a new leader's). An entry below the log's start or a gap
    /// after its end is raft-rs breaking its own contract: an error, not a
    /// hole in the log.
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(from) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if from < self.first() || from > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Other(
                format!(
                    "append at {from} to a log of {}..={}",
                    self.first(),
                    self.last()
                )
                .into(),
            )));
        }
        while self.entries.back().is_some_and(|e| e.index >= from) {
            let e = self.entries.pop_back().expect("back");
            self.bytes -= entry_bytes(&e);
        }
        for e in entries {
            self.bytes += entry_bytes(e);
            self.entries.push_back(e.clone());
        }
        Ok(())
    }

    /// The log now starts after a snapshot: nothing before it is kept, the
    /// hard state commits to it and its configuration is the group's.
    pub fn restart_at_snapshot(&mut self, mut snap: Snapshot) -> raft::Result<()> {
        let mut meta = snap.take_metadata();
        if self.first() > meta.index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        let hs = &mut self.state.hard_state;
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.state.conf_state = meta.take_conf_state();
        self.snap_meta = meta;
        self.entries.clear();
        self.bytes = 0;
        Ok(())
    }

    /// Drop applied entries from memory: all below `applied - keep`, and
    /// older applied ones too while the log holds more than `max_bytes`
    /// (the applied entry itself stays); in steps of at least `step`
    /// entries (so memory stays flat and no compaction frees a huge log at
    /// once). Each dropped entry costs one pop: nothing else moves.
    pub fn compact(
        &mut self,
        applied: u64,
        keep: u64,
        max_bytes: u64,
        step: u64,
    ) -> raft::Result<()> {
        // The new first index: entries below it go.
        let mut upto = applied.saturating_sub(keep);
        if self.bytes <= max_bytes && upto < self.first() + step {
            return Ok(()); // (what the walk below would find, without it)
        }
        let mut bytes = self.bytes;
        for e in &self.entries {
            let n = entry_bytes(e);
            if e.index < upto {
                bytes -= n;
            } else if bytes > max_bytes && e.index < applied {
                upto = e.index + 1;
                bytes -= n;
            } else {
                break;
            }
        }
        if upto < self.first() + step {
            return Ok(());
        }
        while self.entries.front().is_some_and(|e| e.index < upto) {
            let e = self.entries.pop_front().expect("front");
            self.bytes -= entry_bytes(&e);
        }
        Ok(())
    }

    /// True when raft-rs wants a snapshot and none is being made.
    pub fn take_wanted(&self) -> bool {
        let mut s = self.snap.borrow_mut();
        if matches!(*s, SnapSlot::Wanted) {
            *s = SnapSlot::Preparing;
            true
        } else {
            false
        }
    }
}

impl Default for LogStore {
    fn default() -> LogStore {
        LogStore::new()
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.state.clone())
    }

    /// Entries `low..high`, cut (as raft-rs's `limit_size` does) after the
    /// first one whose encoded size takes the total past `max_size`; only
    /// what is returned is cloned.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first();
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(NO_LIMIT);
        let range = self
            .entries
            .range((low - first) as usize..(high - first) as usize);
        let mut out = Vec::with_capacity(range.len());
        let mut size = 0u64;
        for e in range {
            if max != NO_LIMIT {
                size += u64::from(e.compute_size());
                if !out.is_empty() && size > max {
                    break;
                }
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_meta.index {
            return Ok(self.snap_meta.term);
        }
        let first = self.first();
        if idx < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - first) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let first = self.first();
        let mut slot = self.snap.borrow_mut();
        match &*slot {
            SnapSlot::Ready(s)
                if s.get_metadata().index >= request_index
                    && s.get_metadata().index + 1 >= first =>
            {
                return Ok(s.clone());
            }
            SnapSlot::Wanted | SnapSlot::Preparing => {}
            _ => *slot = SnapSlot::Wanted,
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(from: u64, to: u64, term: u64, bytes: usize) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                index: i,
                term,
                data: vec![0u8; bytes].into(),
                ..Default::default()
            })
            .collect()
    }

    /// Applied entries go by count (`keep`) and, past the byte budget, by
    /// size, never beyond the applied index; replaced entries leave the
    /// accounting with the log.
    #[test]
    fn compaction_keeps_a_count_within_a_byte_budget() {
        let mut s = LogStore::new();
        s.append(&entries(1, 100, 1, 960)).unwrap();
        assert_eq!(s.bytes, 100 * 1024);
        // By count: 100 applied, keep 30 (the log starts at 70).
        s.compact(100, 30, u64::MAX, 1).unwrap();
        assert_eq!(s.first(), 70);
        assert_eq!(s.bytes, 31 * 1024);
        // By size: at most 10 entries' worth, whatever the count allows.
        s.compact(100, 1000, 10 * 1024, 1).unwrap();
        assert_eq!(s.first(), 91);
        assert_eq!(s.bytes, 10 * 1024);
        // Never past the applied entry.
        s.append(&entries(101, 120, 1, 960)).unwrap();
        s.compact(100, 0, 0, 1).unwrap();
        assert_eq!(s.first(), 100);
        assert_eq!(s.bytes, 21 * 1024);
        // A new leader's entries replace the tail from 111 on.
        s.append(&entries(111, 112, 2, 448)).unwrap();
        assert_eq!(s.last(), 112);
        assert_eq!(s.bytes, 11 * 1024 + 2 * 512);
    }

    /// One step of the differential test below.
    #[derive(Debug, Clone)]
    enum Op {
        /// Append `n` entries of `term` from `first + at % (len + 1)`.
        Append {
            at: u64,
            n: u64,
            term: u64,
            bytes: usize,
        },
        /// Compact with everything up to `first + at % (len + 1)` applied.
        Compact { at: u64, keep: u64, max_bytes: u64 },
        /// Restart at a snapshot `ahead` past the last entry.
        Snapshot { ahead: u64, term: u64 },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..64, 1u64..12, 1u64..4, 0usize..300)
                .prop_map(|(at, n, term, bytes)| Op::Append { at, n, term, bytes }),
            2 => (0u64..64, 0u64..50, 0u64..20_000)
                .prop_map(|(at, keep, max_bytes)| Op::Compact { at, keep, max_bytes }),
            1 => (0u64..5, 1u64..4).prop_map(|(ahead, term)| Op::Snapshot { ahead, term }),
        ]
    }

    proptest::proptest! {
        /// The ring answers raft-rs exactly as raft-rs's own `MemStorage`
        /// does (the storage it replaced) after any mix of appends (with
        /// conflicting tails), compactions and snapshots: first and last
        /// index, every term (compacted, present and past the end), and
        /// entries in every range under size limits.
        #[test]
        fn the_ring_answers_as_raft_rs_memstorage(ops in proptest::collection::vec(op(), 1..30)) {
            use raft::storage::MemStorage;
            let (mut ring, mem) = (LogStore::new(), MemStorage::new());
            let mut term = 1;
            for op in ops {
                let (first, last) = (ring.first(), ring.last());
                match op {
                    Op::Append { at, n, term: t, bytes } => {
                        term = term.max(t);
                        let from = first + at % (last + 2 - first);
                        let es = entries(from, from + n - 1, term, bytes);
                        ring.append(&es).unwrap();
                        mem.wl().append(&es).unwrap();
                    }
                    Op::Compact { at, keep, max_bytes } => {
                        let applied = (first + at % (last + 2 - first)).min(last);
                        ring.compact(applied, keep, max_bytes, 1).unwrap();
                        mem.wl().compact(ring.first()).unwrap();
                    }
                    Op::Snapshot { ahead, term: t } => {
                        term = term.max(t);
                        let mut snap = Snapshot::default();
                        snap.mut_metadata().index = last + ahead;
                        snap.mut_metadata().term = term;
                        proptest::prop_assert_eq!(
                            format!("{:?}", ring.restart_at_snapshot(snap.clone())),
                            format!("{:?}", mem.wl().apply_snapshot(snap))
                        );
                    }
                }
                let (first, last) = (ring.first(), ring.last());
                proptest::prop_assert_eq!(first, mem.first_index().unwrap());
                proptest::prop_assert_eq!(last, mem.last_index().unwrap());
                proptest::prop_assert_eq!(ring.bytes, ring.entries.iter().map(entry_bytes).sum::<u64>());
                proptest::prop_assert_eq!(
                    ring.initial_state().unwrap().hard_state,
                    mem.initial_state().unwrap().hard_state
                );
                for i in first.saturating_sub(2)..=last + 2 {
                    proptest::prop_assert_eq!(ring.term(i), mem.term(i));
                }
                if ring.entries.is_empty() {
                    // (`MemStorage` indexes its empty log here and panics.)
                    let ctx = GetEntriesContext::empty(false);
                    proptest::prop_assert!(ring.entries(first, first, None, ctx).unwrap().is_empty());
                    continue;
                }
                for lo in first.saturating_sub(1)..=last + 1 {
                    for hi in [lo, lo + 1, lo + 3, last, last + 1] {
                        if hi < lo || hi > last + 1 {
                            continue;
                        }
                        for max in [0, 700, NO_LIMIT] {
                            let ctx = || GetEntriesContext::empty(false);
                            proptest::prop_assert_eq!(
                                ring.entries(lo, hi, max, ctx()),
                                mem.entries(lo, hi, max, ctx())
                            );
                        }
                    }
                }
            }
        }
    }

    /// What raft-rs's `MemStorage` would panic on is an error here.
    #[test]
    fn an_append_off_the_log_is_an_error_not_a_panic() {
        let mut s = LogStore::new();
        s.append(&entries(1, 10, 1, 8)).unwrap();
        s.compact(10, 5, u64::MAX, 1).unwrap();
        assert_eq!(s.first(), 5);
        assert!(s.append(&entries(3, 4, 1, 8)).is_err());
        assert!(s.append(&entries(12, 12, 1, 8)).is_err());
        let ctx = GetEntriesContext::empty(false);
        assert!(s.entries(5, 12, None, ctx).is_err());
        assert_eq!((s.first(), s.last()), (5, 10));
    }
}
