//! Events: the result of one applied write, rendered once as etcd's JSON.
//!
//! The store builds an [`Event`] while applying a command; the same bytes
//! answer the writer, wake the watchers and sit in the event history, so an
//! event is encoded exactly once. Node rendering helpers ([`NodeJson`]) are
//! shared with reads.

use crate::etcd::json::{write_i64, write_str, write_time, write_u64};

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

/// Every action, by its `as u8` value.
const ACTIONS: [Action; 8] = [
    Action::Get,
    Action::Set,
    Action::Create,
    Action::Update,
    Action::CompareAndSwap,
    Action::Delete,
    Action::CompareAndDelete,
    Action::Expire,
];

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
    /// A delete/expire whose prevNode was a directory (history prefix rule).
    pub prev_dir: bool,
    /// A refresh: kept in history, never delivered.
    pub refresh: bool,
    /// HTTP 201 (create, or set without prevNode).
    pub created: bool,
    /// Nodes a delete or expiry removed below `key` (their watchers hear it).
    pub removed: Removed,
    /// The JSON answer, then the key: one allocation per event
    /// ([`Event::json`], [`Event::key`]).
    buf: Vec<u8>,
    /// Where the key starts in `buf`.
    key_at: usize,
}

/// An event's flags: `(prev_dir, refresh, created)`.
pub type Flags = (bool, bool, bool);

impl Event {
    /// An event whose answer is `json` (`{"action":..,"node":..}\n`) and
    /// whose node key is `key`; the key is appended to `json`'s buffer
    /// (reserve room for it to keep this free of a reallocation).
    pub fn new(
        index: u64,
        action: Action,
        key: &[u8],
        (prev_dir, refresh, created): Flags,
        mut json: Vec<u8>,
        removed: Removed,
    ) -> Event {
        let key_at = json.len();
        json.extend_from_slice(key);
        Event {
            index,
            action,
            prev_dir,
            refresh,
            created,
            removed,
            buf: json,
            key_at,
        }
    }

    /// The event's node key (`/a/b`).
    pub fn key(&self) -> &[u8] {
        &self.buf[self.key_at..]
    }

    /// `{"action":..,"node":..,"prevNode":..}\n`
    pub fn json(&self) -> &[u8] {
        &self.buf[..self.key_at]
    }

    /// The same event with other removed nodes (a member-wide write's
    /// event, completed by the shards it touched).
    pub fn with_removed(&self, removed: Removed) -> Event {
        Event {
            index: self.index,
            action: self.action,
            prev_dir: self.prev_dir,
            refresh: self.refresh,
            created: self.created,
            removed,
            buf: self.buf.clone(),
            key_at: self.key_at,
        }
    }

    /// The record the store keeps of this event in its durable history:
    /// action, flags, key and JSON (not the removed nodes: history answers
    /// use etcd's prefix rule instead).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(self.action as u8);
        out.push(self.prev_dir as u8 | (self.refresh as u8) << 1 | (self.created as u8) << 2);
        out.extend_from_slice(&(self.key().len() as u32).to_le_bytes());
        out.extend_from_slice(self.key());
        out.extend_from_slice(self.json());
    }

    /// Inverse of [`Event::encode`]; `None` for a damaged record.
    pub fn decode(index: u64, b: &[u8]) -> Option<Event> {
        let action = *ACTIONS.get(*b.first()? as usize)?;
        let flags = *b.get(1)?;
        let len = u32::from_le_bytes(b.get(2..6)?.try_into().ok()?) as usize;
        let key = b.get(6..6usize.checked_add(len)?)?;
        let json = &b[6 + len..];
        let mut buf = Vec::with_capacity(json.len() + key.len());
        buf.extend_from_slice(json);
        Some(Event::new(
            index,
            action,
            key,
            (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0),
            buf,
            Removed::default(),
        ))
    }

    /// Whether this is [`Event::placeholder`].
    pub fn is_placeholder(&self) -> bool {
        self.key() == b"\0internal"
    }

    /// An event that matches no watch: it fills index `index` in history
    /// (etcd's internal bootstrap writes, or an index no write kept).
    pub fn placeholder(index: u64) -> Event {
        Event::new(
            index,
            Action::Set,
            b"\0internal",
            (false, false, false),
            Vec::new(),
            Removed::default(),
        )
    }

    pub fn is_delete(&self) -> bool {
        matches!(
            self.action,
            Action::Delete | Action::CompareAndDelete | Action::Expire
        )
    }
}

/// The nodes a delete or expiry removed below its event's key, as a tree of
/// names: each node records its parent and its name once, so a deep chain
/// or a wide directory costs its names, not its full paths (a 10,000-level
/// chain would otherwise hold 100 MB of paths). Built without recursion, read
/// without recursion.
#[derive(Debug, Default, Clone)]
pub struct Removed {
    names: Vec<u8>,
    nodes: Vec<RemovedNode>,
}

#[derive(Debug, Clone, Copy)]
struct RemovedNode {
    /// Position of the parent node, or [`Removed::TOP`] for a child of the
    /// event's key.
    parent: usize,
    start: usize,
    end: usize,
}

impl Removed {
    /// The parent of the event key's own children.
    pub const TOP: usize = usize::MAX;

    /// Record child `name` of `parent` (a position [`Removed::push`]
    /// returned, or [`Removed::TOP`]); returns its position.
    pub fn push(&mut self, parent: usize, name: &[u8]) -> usize {
        let start = self.names.len();
        self.names.extend_from_slice(name);
        self.nodes.push(RemovedNode {
            parent,
            start,
            end: self.names.len(),
        });
        self.nodes.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn name(&self, n: &RemovedNode) -> &[u8] {
        &self.names[n.start..n.end]
    }

    /// (parent, name) → position, for lookups by path.
    fn index(&self) -> std::collections::HashMap<(usize, &[u8]), usize> {
        let mut m = std::collections::HashMap::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            m.entry((n.parent, self.name(n))).or_insert(i);
        }
        m
    }

    /// A lookup table over this set; build it once per event.
    pub fn lookup(&self) -> RemovedLookup<'_> {
        RemovedLookup(self.index())
    }

    /// Add every node of `other` that this set lacks (the parts of one
    /// member-wide delete that several shards removed). Parents always come
    /// before their children, in both sets.
    pub fn merge(&mut self, other: &Removed) {
        let mut known: std::collections::HashMap<(usize, Vec<u8>), usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| ((n.parent, self.name(n).to_vec()), i))
            .collect();
        let mut map = Vec::with_capacity(other.nodes.len());
        for n in &other.nodes {
            let parent = if n.parent == Self::TOP {
                Self::TOP
            } else {
                map[n.parent]
            };
            let name = other.name(n);
            let at = match known.get(&(parent, name.to_vec())) {
                Some(&i) => i,
                None => {
                    let i = self.push(parent, name);
                    known.insert((parent, name.to_vec()), i);
                    i
                }
            };
            map.push(at);
        }
    }

    /// Every removed path below `key`, in the order recorded (tests and
    /// diagnostics; a deep chain's paths are large).
    pub fn paths(&self, key: &[u8]) -> Vec<Vec<u8>> {
        let mut full: Vec<Vec<u8>> = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let mut p = if n.parent == Self::TOP {
                key.to_vec()
            } else {
                full[n.parent].clone()
            };
            p.push(b'/');
            p.extend_from_slice(self.name(n));
            full.push(p);
        }
        full
    }
}

/// Path lookups in a [`Removed`] set.
pub struct RemovedLookup<'a>(std::collections::HashMap<(usize, &'a [u8]), usize>);

impl RemovedLookup<'_> {
    /// Whether `rel` (a path below the event key, starting with `/`) was
    /// removed.
    pub fn contains(&self, rel: &[u8]) -> bool {
        let Some(rest) = rel.strip_prefix(b"/") else {
            return false;
        };
        let mut at = Removed::TOP;
        for name in rest.split(|&b| b == b'/') {
            match self.0.get(&(at, name)) {
                Some(&i) => at = i,
                None => return false,
            }
        }
        true
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
        let first = self.key.is_empty();
        if !first {
            out.extend_from_slice(b"\"key\":");
            write_str(out, self.key);
        }
        self.write_fields(out, first);
    }

    /// The fields after the key (`self.key` is not read); `first`: nothing
    /// written yet. Listings write the key themselves, from the escaped
    /// path they keep.
    pub fn write_fields(&self, out: &mut Vec<u8>, mut first: bool) {
        let mut sep = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
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
    let mut digits = itoa::Buffer::new();
    let modified_digits = digits.format(modified).as_bytes();
    if modified != 0 {
        out.extend_from_slice(b",\"modifiedIndex\":");
        out.extend_from_slice(modified_digits);
    }
    if created != 0 {
        out.extend_from_slice(b",\"createdIndex\":");
        // A node never modified since its creation (most listed ones):
        // its digits once, written twice.
        if created == modified {
            out.extend_from_slice(modified_digits);
        } else {
            write_u64(out, created);
        }
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
    fn event_record_round_trip() {
        for (i, &action) in ACTIONS.iter().enumerate() {
            assert_eq!(action as usize, i);
            let e = Event::new(
                7,
                action,
                b"/a/b",
                (i % 2 == 0, i % 3 == 0, i % 5 == 0),
                b"{\"action\":\"x\"}\n".to_vec(),
                Removed::default(),
            );
            assert_eq!(
                (e.key(), e.json()),
                (&b"/a/b"[..], &b"{\"action\":\"x\"}\n"[..])
            );
            let mut buf = Vec::new();
            e.encode(&mut buf);
            let d = Event::decode(7, &buf).unwrap();
            assert_eq!(
                (
                    d.action,
                    d.key(),
                    d.prev_dir,
                    d.refresh,
                    d.created,
                    d.json()
                ),
                (
                    e.action,
                    e.key(),
                    e.prev_dir,
                    e.refresh,
                    e.created,
                    e.json()
                )
            );
            assert!(Event::decode(7, &buf[..3]).is_none());
        }
    }

    #[test]
    fn removed_tree_lookup_and_merge() {
        let mut a = Removed::default();
        let x = a.push(Removed::TOP, b"x");
        a.push(x, b"f");
        let mut b = Removed::default();
        let x2 = b.push(Removed::TOP, b"x");
        b.push(x2, b"g");
        b.push(Removed::TOP, b"y");
        a.merge(&b);
        assert_eq!(a.len(), 4);
        let l = a.lookup();
        for p in ["/x", "/x/f", "/x/g", "/y"] {
            assert!(l.contains(p.as_bytes()), "{p}");
        }
        for p in ["/z", "/x/h", "/y/f", "", "/"] {
            assert!(!l.contains(p.as_bytes()), "{p}");
        }
        assert_eq!(a.paths(b"/d")[3], b"/d/y");
    }

    #[test]
    fn removed_deep_chain_is_linear() {
        let mut r = Removed::default();
        let mut at = Removed::TOP;
        for _ in 0..100_000 {
            at = r.push(at, b"a");
        }
        assert!(r.names.len() == 100_000);
        let deep = "/a".repeat(100_000);
        assert!(r.lookup().contains(deep.as_bytes()));
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
