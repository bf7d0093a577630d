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
}

impl LogStore {
    pub fn new() -> LogStore {
        LogStore {
            mem: MemStorage::new(),
            snap: Rc::default(),
        }
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
