//! Events: the result of one applied write, rendered once as etcd's JSON.
//!
//! The store builds an [`Event`] while applying a command; the same bytes
//! answer the writer, wake the watchers and sit in the event history, so an
//! event is encoded exactly once. Node rendering helpers ([`NodeJson`]) are
//! shared with reads.

use crate::v2::json::{write_i64, write_str, write_time, write_u64};

/// What happened (etcd's `action` strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Get,
    Set,
    Create,
    Update,
    CompareAndSwap,
    Delete,
    CompareAndDelete,
    Expire,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Set => "set",
            Action::Create => "create",
            Action::Update => "update",
            Action::CompareAndSwap => "compareAndSwap",
            Action::Delete => "delete",
            Action::CompareAndDelete => "compareAndDelete",
            Action::Expire => "expire",
        }
    }
}

/// One applied change, as clients and watchers see it.
#[derive(Debug)]
pub struct Event {
    /// The store index this event received (= node.modifiedIndex).
    pub index: u64,
    pub action: Action,
    /// The event's node key (`/a/b`).
    pub key: Box<[u8]>,
    /// A delete/expire whose prevNode was a directory (history prefix rule).
    pub prev_dir: bool,
    /// A refresh: kept in history, never delivered.
    pub refresh: bool,
    /// HTTP 201 (create, or set without prevNode).
    pub created: bool,
    /// `{"action":..,"node":..,"prevNode":..}\n`
    pub json: Vec<u8>,
    /// Paths a delete or expiry removed below `key` (their watchers hear it).
    pub removed: Vec<Box<[u8]>>,
}

impl Event {
    /// An event that matches no watch: it fills index `index` in history
    /// (etcd's internal bootstrap writes, or an index no write kept).
    pub fn placeholder(index: u64) -> Event {
        Event {
            index,
            action: Action::Set,
            key: (*b"\0internal").into(),
            prev_dir: false,
            refresh: false,
            created: false,
            json: Vec::new(),
            removed: Vec::new(),
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(
            self.action,
            Action::Delete | Action::CompareAndDelete | Action::Expire
        )
    }
}

/// The fields of one rendered node (etcd's NodeExtern, minus `nodes`).
pub struct NodeJson<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub dir: bool,
    pub expire: Option<i64>,
    /// Clock used for `ttl`.
    pub now: i64,
    pub modified: u64,
    pub created: u64,
}

impl NodeJson<'_> {
    /// Everything up to where `nodes` would go: `{"key":..,..,"ttl":..`
    pub fn write_head(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
        if !self.key.is_empty() {
            sep(out);
            out.extend_from_slice(b"\"key\":");
            write_str(out, self.key);
        }
        if let Some(v) = self.value {
            sep(out);
            out.extend_from_slice(b"\"value\":");
            write_str(out, v);
        }
        if self.dir {
            sep(out);
            out.extend_from_slice(b"\"dir\":true");
        }
        if let Some(t) = self.expire {
            sep(out);
            out.extend_from_slice(b"\"expiration\":");
            write_time(out, t);
            let ttl = ttl_seconds(t, self.now);
            if ttl != 0 {
                out.extend_from_slice(b",\"ttl\":");
                write_i64(out, ttl);
            }
        }
        debug_assert!(!first, "a node always has a key or is a dir");
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        self.write_head(out);
        write_tail(out, self.modified, self.created);
    }
}

/// `,"modifiedIndex":..,"createdIndex":..}` closing a node (indexes are
/// omitted when 0, as for the root).
pub fn write_tail(out: &mut Vec<u8>, modified: u64, created: u64) {
    if modified != 0 {
        out.extend_from_slice(b",\"modifiedIndex\":");
        write_u64(out, modified);
    }
    if created != 0 {
        out.extend_from_slice(b",\"createdIndex\":");
        write_u64(out, created);
    }
    out.push(b'}');
}

/// etcd's reported TTL: whole seconds left, rounded up (Go's
/// `ttl = d / s; if d % s > 0 { ttl++ }`).
pub fn ttl_seconds(expire: i64, now: i64) -> i64 {
    let d = expire.saturating_sub(now);
    let mut t = d / 1_000_000_000;
    if d % 1_000_000_000 > 0 {
        t += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_json_field_order() {
        let mut out = Vec::new();
        NodeJson {
            key: b"/a",
            value: Some(b""),
            dir: false,
            expire: None,
            now: 0,
            modified: 5,
            created: 4,
        }
        .write(&mut out);
        assert_eq!(
            out,
            br#"{"key":"/a","value":"","modifiedIndex":5,"createdIndex":4}"#
        );
        out.clear();
        NodeJson {
            key: b"",
            value: None,
            dir: true,
            expire: None,
            now: 0,
            modified: 0,
            created: 0,
        }
        .write(&mut out);
        assert_eq!(out, br#"{"dir":true}"#);
    }

    #[test]
    fn ttl_is_a_ceiling() {
        let s = 1_000_000_000;
        assert_eq!(ttl_seconds(10 * s, 5 * s), 5);
        assert_eq!(ttl_seconds(10 * s, 5 * s + 1), 5);
        assert_eq!(ttl_seconds(10 * s, 10 * s), 0);
        assert_eq!(ttl_seconds(10 * s, 12 * s - 1), -1);
    }
}
