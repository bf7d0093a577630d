//! The raft log as raft-rs sees it: the in-memory log of recent entries
//! ([`MemStorage`], rebuilt from the WAL at start) plus snapshots made from
//! the store.
//!
//! raft-rs asks [`Storage::snapshot`] when a follower needs entries the log
//! no longer holds. A snapshot is a consistent copy of the shard's LMDB
//! store, made off the executor: the first ask marks one wanted and answers
//! "temporarily unavailable"; the raft loop starts the copy
//! ([`crate::raft`]'s `prepare_snapshot`) and raft-rs asks again later.

use std::cell::RefCell;
use std::rc::Rc;

use raft::eraftpb::{Entry, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

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
pub struct LogStore {
    pub mem: MemStorage,
    pub snap: Rc<RefCell<SnapSlot>>,
    /// The index and size of each entry in `mem`, oldest first, and their
    /// total: what compaction weighs against its byte budget.
    sizes: std::collections::VecDeque<(u64, u64)>,
    bytes: u64,
}

/// What one entry costs in memory, roughly.
fn entry_bytes(e: &Entry) -> u64 {
    (e.data.len() + e.context.len() + 64) as u64
}

impl LogStore {
    pub fn new() -> LogStore {
        LogStore {
            mem: MemStorage::new(),
            snap: Rc::default(),
            sizes: Default::default(),
            bytes: 0,
        }
    }

    /// Append `entries` to the in-memory log (replacing any it conflicts
    /// with, as raft-rs's `MemStorage` does).
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.mem.wl().append(entries)?;
        while self.sizes.back().is_some_and(|&(i, _)| i >= first.index) {
            let (_, n) = self.sizes.pop_back().expect("back");
            self.bytes -= n;
        }
        for e in entries {
            let n = entry_bytes(e);
            self.sizes.push_back((e.index, n));
            self.bytes += n;
        }
        Ok(())
    }

    /// The log now starts after a snapshot: nothing before it is kept.
    pub fn restart_at_snapshot(&mut self, snap: Snapshot) -> raft::Result<()> {
        self.mem.wl().apply_snapshot(snap)?;
        self.sizes.clear();
        self.bytes = 0;
        Ok(())
    }

    /// Drop applied entries from memory: all below `applied - keep`, and
    /// older applied ones too while the log holds more than `max_bytes`
    /// (the applied entry itself stays); in steps of at least `step`
    /// entries (so memory stays flat and no compaction frees a huge log at
    /// once).
    pub fn compact(
        &mut self,
        applied: u64,
        keep: u64,
        max_bytes: u64,
        step: u64,
    ) -> raft::Result<()> {
        // The new first index: entries below it go.
        let mut upto = applied.saturating_sub(keep);
        let mut bytes = self.bytes;
        for &(i, n) in &self.sizes {
            if i < upto {
                bytes -= n;
            } else if bytes > max_bytes && i < applied {
                upto = i + 1;
                bytes -= n;
            } else {
                break;
            }
        }
        if upto < self.mem.first_index()? + step {
            return Ok(());
        }
        self.mem.wl().compact(upto)?;
        while self.sizes.front().is_some_and(|&(i, _)| i < upto) {
            let (_, n) = self.sizes.pop_front().expect("front");
            self.bytes -= n;
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
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let first = self.mem.first_index()?;
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
        assert_eq!(s.mem.first_index().unwrap(), 70);
        assert_eq!(s.bytes, 31 * 1024);
        // By size: at most 10 entries' worth, whatever the count allows.
        s.compact(100, 1000, 10 * 1024, 1).unwrap();
        assert_eq!(s.mem.first_index().unwrap(), 91);
        assert_eq!(s.bytes, 10 * 1024);
        // Never past the applied entry.
        s.append(&entries(101, 120, 1, 960)).unwrap();
        s.compact(100, 0, 0, 1).unwrap();
        assert_eq!(s.mem.first_index().unwrap(), 100);
        assert_eq!(s.bytes, 21 * 1024);
        // A new leader's entries replace the tail from 111 on.
        s.append(&entries(111, 112, 2, 448)).unwrap();
        assert_eq!(s.mem.last_index().unwrap(), 112);
        assert_eq!(s.bytes, 11 * 1024 + 2 * 512);
    }
}
