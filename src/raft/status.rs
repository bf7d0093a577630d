//! What a shard's raft group says about itself, and its link to the peers.
//!
//! The raft loop ([`super::run`]) is the only writer: it records the commit
//! index, term, leader and role after each `Ready`, and whether this
//! member's attributes are applied. Everyone else — the v2 handlers'
//! headers and stats, `/health`, the coordinator — reads. The peer side
//! writes only the two notices it receives ([`super::join::Inbound`]): a
//! peer's stream ended, or a member said this one was removed; the loop
//! takes them on its next pass. The transport handle is set once at start
//! ([`super::connect`]) and used by the loop to send, and by the stats
//! endpoints to read the per-peer figures.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::cluster::transport::Transport;

/// One raft group's published state (see the module text).
#[derive(Default)]
pub struct Status {
    index: Cell<u64>,
    term: Cell<u64>,
    leader: Cell<u64>,
    is_leader: Cell<bool>,
    attrs_applied: Cell<bool>,
    removed_notice: Cell<bool>,
    lost_peer: Cell<u64>,
    transfer_to: Cell<u64>,
    transport: RefCell<Option<Rc<Transport>>>,
}

impl Status {
    /// The group's commit index (`X-Raft-Index`).
    pub fn raft_index(&self) -> u64 {
        self.index.get()
    }

    /// The group's term (`X-Raft-Term`).
    pub fn raft_term(&self) -> u64 {
        self.term.get()
    }

    /// The leader this member knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.leader.get()
    }

    /// This member leads the group.
    pub fn is_leader(&self) -> bool {
        self.is_leader.get()
    }

    /// This member's attributes (name, client URLs) are applied since it
    /// started, so every member lists them.
    pub fn attrs_applied(&self) -> bool {
        self.attrs_applied.get()
    }

    /// The peer transport (replicated members only).
    pub fn transport(&self) -> Option<Rc<Transport>> {
        self.transport.borrow().clone()
    }

    pub(super) fn set_position(&self, index: u64, term: u64) {
        self.index.set(index);
        self.term.set(term);
    }

    pub(super) fn set_role(&self, is_leader: bool) {
        self.is_leader.set(is_leader);
    }

    /// Record the leader; the previous one is returned.
    pub(super) fn set_leader(&self, leader: u64) -> u64 {
        self.leader.replace(leader)
    }

    pub(super) fn set_attrs_applied(&self) {
        self.attrs_applied.set(true);
    }

    pub(super) fn set_transport(&self, t: Rc<Transport>) {
        *self.transport.borrow_mut() = Some(t);
    }

    /// An operator asked this group's leadership to move to member `to`
    /// (`POST /debug/kardia/transfer`); the loop takes it on its next pass.
    pub fn ask_transfer(&self, to: u64) {
        self.transfer_to.set(to);
    }

    pub(super) fn take_transfer(&self) -> u64 {
        self.transfer_to.replace(0)
    }

    pub(super) fn note_removed(&self) {
        self.removed_notice.set(true);
    }

    pub(super) fn removed_noticed(&self) -> bool {
        self.removed_notice.get()
    }

    pub(super) fn note_lost_peer(&self, id: u64) {
        self.lost_peer.set(id);
    }

    /// The peer whose stream ended since the last call (0: none).
    pub(super) fn take_lost_peer(&self) -> u64 {
        self.lost_peer.replace(0)
    }
}
