//! The etcd v2 store: a tree of files and directories kept in one LMDB
//! environment, plus its TTLs, event history and watchers.
//!
//! Commands enter through [`Store::apply_batch`], already ordered by raft; the
//! whole batch is one LMDB write transaction that also records the raft
//! applied index, so state and index can never disagree. Each applied command
//! yields an [`Event`] (or a deterministic [`V2Error`]) that goes back to the
//! writer and to the watchers. Reads ([`Store::get`]) and watch registration
//! ([`Store::watch`]) run on the owning executor against a read transaction.
//! LMDB failures are [`Error`]s: they stop the shard rather than diverge it.

pub mod command;
pub mod event;
pub mod node;
pub mod watch;

use std::path::Path;
use std::rc::Rc;

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, RoTxn, RwTxn};

pub use command::{Command, Op};
pub use event::{Action, Event, NodeJson};
use node::{child_key, expiry_prefix, expiry_time, NodeRec};
use watch::{EventHistory, WatchHandle, WatcherHub};

use crate::v2::error::*;

/// Most nodes one SYNC entry expires.
pub const MAX_EXPIRE_PER_SYNC: usize = 10_000;

/// Expiry times before 2000-01-01 mean "permanent" (etcd's minExpireTime).
pub const MIN_EXPIRE: i64 = 946_684_800_000_000_000;

/// Fatal store errors: the shard stops on these.
#[derive(Debug)]
pub enum Error {
    Lmdb(heed::Error),
    Corrupt(String),
}

impl From<heed::Error> for Error {
    fn from(e: heed::Error) -> Error {
        Error::Lmdb(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Lmdb(e) => write!(f, "lmdb: {e}"),
            Error::Corrupt(s) => write!(f, "corrupt store: {s}"),
        }
    }
}

impl std::error::Error for Error {}

type Result<T> = std::result::Result<T, Error>;
/// The outcome of one command: an event, or etcd's error for it.
pub type Outcome = std::result::Result<Rc<Event>, V2Error>;

/// Paths a delete or expiry removed (only gathered when watchers need them).
type RemovedPaths = Vec<Box<[u8]>>;

/// Counters reported by `/v2/stats/store`.
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub gets_success: u64,
    pub gets_fail: u64,
    pub sets_success: u64,
    pub sets_fail: u64,
    pub delete_success: u64,
    pub delete_fail: u64,
    pub update_success: u64,
    pub update_fail: u64,
    pub create_success: u64,
    pub create_fail: u64,
    pub cas_success: u64,
    pub cas_fail: u64,
    pub cad_success: u64,
    pub cad_fail: u64,
    pub expire_count: u64,
}

/// Small fixed facts about one node, copied out of its record.
#[derive(Debug, Clone, Copy)]
struct Meta {
    dir: bool,
    created: u64,
    modified: u64,
    expire: Option<i64>,
    dir_id: u64,
}

const ROOT: Meta = Meta {
    dir: true,
    created: 0,
    modified: 0,
    expire: None,
    dir_id: 0,
};

/// A located node: its record facts and the key it is stored under.
struct Found {
    meta: Meta,
    /// LMDB key (empty for the root).
    lkey: Vec<u8>,
}

const META_APPLIED: &[u8] = b"applied";
const META_INDEX: &[u8] = b"index";
const META_DIR_ID: &[u8] = b"next_dir_id";

/// Opening options for a store.
#[derive(Debug, Clone)]
pub struct Options {
    pub map_size: usize,
    pub history: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            map_size: 64 << 30,
            history: 1000,
        }
    }
}

/// The v2 store of one shard.
pub struct Store {
    env: Env,
    nodes: Database<Bytes, Bytes>,
    expiry: Database<Bytes, Bytes>,
    meta: Database<Bytes, Bytes>,
    /// The etcd index (`X-Etcd-Index`).
    index: u64,
    /// Raft (index, term) last applied.
    applied: (u64, u64),
    next_dir_id: u64,
    pub history: EventHistory,
    pub hub: WatcherHub,
    pub stats: Stats,
    /// Events of the batch being applied, with the paths each delete removed.
    pending: Vec<(Rc<Event>, RemovedPaths)>,
    kbuf: Vec<u8>,
    vbuf: Vec<u8>,
    prev: Vec<u8>,
}

impl Store {
    /// Open (or create) the store in `dir`. A fresh store starts at index 3,
    /// as a fresh one-member etcd 3.4 does.
    pub fn open(dir: &Path, opts: &Options) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", dir.display())))?;
        let mut eo = EnvOpenOptions::new();
        eo.map_size(opts.map_size).max_dbs(4);
        // SAFETY: the environment is opened once per shard directory. NO_SYNC
        // is safe against process crashes (pages are in the OS cache);
        // durability comes from the raft log, and the shard checkpoints with
        // `force_sync` before trimming that log. WRITE_MAP makes a commit a
        // memory write instead of a pwrite per dirty page.
        let env = unsafe {
            eo.flags(EnvFlags::NO_SYNC | EnvFlags::WRITE_MAP | EnvFlags::NO_READ_AHEAD);
            eo.open(dir)?
        };
        let mut wtxn = env.write_txn()?;
        let nodes = env.create_database(&mut wtxn, Some("nodes"))?;
        let expiry = env.create_database(&mut wtxn, Some("expiry"))?;
        let meta: Database<Bytes, Bytes> = env.create_database(&mut wtxn, Some("meta"))?;
        let read_u64 = |txn: &RwTxn, k: &[u8]| -> Result<Option<u64>> {
            Ok(match meta.get(txn, k)? {
                Some(v) if v.len() >= 8 => Some(u64::from_le_bytes(v[..8].try_into().unwrap())),
                Some(_) => return Err(Error::Corrupt("short meta value".into())),
                None => None,
            })
        };
        let fresh = read_u64(&wtxn, META_INDEX)?.is_none();
        let (index, applied, next_dir_id, history) = if fresh {
            meta.put(&mut wtxn, META_INDEX, &3u64.to_le_bytes())?;
            // etcd's window holds its three internal bootstrap writes (1..=3);
            // placeholders that match no key take their slots.
            let mut h = EventHistory::new(opts.history, 1, 0);
            for i in 1..=3 {
                h.push(Rc::new(Event {
                    index: i,
                    action: Action::Set,
                    key: (*b"\0internal").into(),
                    prev_dir: false,
                    refresh: false,
                    created: false,
                    json: Vec::new(),
                }));
            }
            (3, (0, 0), 1, h)
        } else {
            let index = read_u64(&wtxn, META_INDEX)?.unwrap_or(3);
            let applied = match meta.get(&wtxn, META_APPLIED)? {
                Some(v) if v.len() == 16 => (
                    u64::from_le_bytes(v[..8].try_into().unwrap()),
                    u64::from_le_bytes(v[8..].try_into().unwrap()),
                ),
                Some(_) => return Err(Error::Corrupt("bad applied index".into())),
                None => (0, 0),
            };
            let next = read_u64(&wtxn, META_DIR_ID)?.unwrap_or(1);
            (
                index,
                applied,
                next,
                EventHistory::new(opts.history, index + 1, index),
            )
        };
        wtxn.commit()?;
        Ok(Store {
            env,
            nodes,
            expiry,
            meta,
            index,
            applied,
            next_dir_id,
            history,
            hub: WatcherHub::default(),
            stats: Stats::default(),
            pending: Vec::new(),
            kbuf: Vec::new(),
            vbuf: Vec::new(),
            prev: Vec::new(),
        })
    }

    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The etcd index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The raft (index, term) of the last applied entry.
    pub fn applied(&self) -> (u64, u64) {
        self.applied
    }

    /// The earliest expiry time in the store, if any key has a TTL.
    pub fn next_expiry(&self) -> Result<Option<i64>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.expiry.first(&rtxn)?.map(|(k, _)| expiry_time(k)))
    }

    /// Number of nodes (files and directories) stored.
    pub fn node_count(&self) -> Result<u64> {
        let rtxn = self.env.read_txn()?;
        Ok(self.nodes.len(&rtxn)?)
    }

    /// Apply raft entries `(index, term, data)` in one transaction. Results
    /// for entries that carry a command are pushed to `out` as
    /// `(raft index, outcome)`. Empty entries (leader no-ops) only advance
    /// the applied index.
    pub fn apply_batch<'d>(
        &mut self,
        entries: impl Iterator<Item = (u64, u64, &'d [u8])>,
        out: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        let index_before = self.index;
        let dir_id_before = self.next_dir_id;
        let stats_before = self.stats;
        let out_before = out.len();
        match self.apply_txn(entries, out) {
            Ok(Some(last)) => self.applied = last,
            Ok(None) => return Ok(()),
            Err(e) => {
                // The transaction was aborted: leave memory as LMDB has it.
                self.index = index_before;
                self.next_dir_id = dir_id_before;
                self.stats = stats_before;
                self.pending.clear();
                out.truncate(out_before);
                return Err(e);
            }
        }
        for (e, removed) in std::mem::take(&mut self.pending) {
            self.hub.notify(&e, &removed);
            self.history.push(e);
        }
        Ok(())
    }

    /// The transaction of [`Store::apply_batch`]: the last (index, term)
    /// applied, or `None` for an empty batch.
    fn apply_txn<'d>(
        &mut self,
        entries: impl Iterator<Item = (u64, u64, &'d [u8])>,
        out: &mut Vec<(u64, Outcome)>,
    ) -> Result<Option<(u64, u64)>> {
        let env = self.env.clone();
        let mut wtxn = env.write_txn()?;
        let index_before = self.index;
        let dir_id_before = self.next_dir_id;
        let mut last = None;
        for (ri, term, data) in entries {
            last = Some((ri, term));
            if data.is_empty() {
                continue;
            }
            let Some(cmd) = Command::decode(data) else {
                return Err(Error::Corrupt(format!(
                    "undecodable command at raft index {ri}"
                )));
            };
            if let Some(o) = self.apply_one(&mut wtxn, &cmd)? {
                out.push((ri, o));
            }
        }
        let Some(last) = last else {
            return Ok(None);
        };
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&last.0.to_le_bytes());
        a[8..].copy_from_slice(&last.1.to_le_bytes());
        self.meta.put(&mut wtxn, META_APPLIED, &a)?;
        if self.index != index_before {
            self.meta
                .put(&mut wtxn, META_INDEX, &self.index.to_le_bytes())?;
        }
        if self.next_dir_id != dir_id_before {
            self.meta
                .put(&mut wtxn, META_DIR_ID, &self.next_dir_id.to_le_bytes())?;
        }
        wtxn.commit()?;
        Ok(Some(last))
    }

    fn apply_one(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Option<Outcome>> {
        let r = match c.op {
            Op::Set => self.set(txn, c),
            Op::Create | Op::CreateUnique => self.create(txn, c),
            Op::Update => self.update(txn, c),
            Op::CompareAndSwap => self.cas(txn, c),
            Op::Delete => self.delete(txn, c),
            Op::CompareAndDelete => self.cad(txn, c),
            Op::Sync => {
                self.expire_until(txn, c.now)?;
                return Ok(None);
            }
        }?;
        let s = &mut self.stats;
        let (ok, fail) = match c.op {
            Op::Set => (&mut s.sets_success, &mut s.sets_fail),
            Op::Create | Op::CreateUnique => (&mut s.create_success, &mut s.create_fail),
            Op::Update => (&mut s.update_success, &mut s.update_fail),
            Op::CompareAndSwap => (&mut s.cas_success, &mut s.cas_fail),
            Op::Delete => (&mut s.delete_success, &mut s.delete_fail),
            Op::CompareAndDelete | Op::Sync => (&mut s.cad_success, &mut s.cad_fail),
        };
        *(if r.is_ok() { ok } else { fail }) += 1;
        Ok(Some(r))
    }

    // ---- lookups ----------------------------------------------------------

    /// Walk to `path` (etcd's internalGet). Errors: 100 with the path up to
    /// the first missing component, 104 with the file blocking the way.
    fn find(
        &self,
        txn: &RoTxn,
        path: &[u8],
        kbuf: &mut Vec<u8>,
    ) -> Result<std::result::Result<Found, V2Error>> {
        let mut meta = ROOT;
        let mut lkey = Vec::new();
        if path == b"/" {
            return Ok(Ok(Found { meta, lkey }));
        }
        let mut start = 1;
        loop {
            let end = path[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |p| start + p);
            let name = &path[start..end];
            if !meta.dir {
                let cause = &path[..start - 1];
                return Ok(Err(V2Error::new(NOT_DIR, cause, self.index)));
            }
            child_key(kbuf, meta.dir_id, name);
            match self.nodes.get(txn, kbuf)? {
                None => return Ok(Err(V2Error::new(KEY_NOT_FOUND, &path[..end], self.index))),
                Some(v) => meta = decode_meta(v)?,
            }
            if end == path.len() {
                lkey.extend_from_slice(kbuf);
                return Ok(Ok(Found { meta, lkey }));
            }
            start = end + 1;
        }
    }

    /// [`Store::find`] with the store's own key buffer.
    fn locate(&mut self, txn: &RoTxn, path: &[u8]) -> Result<std::result::Result<Found, V2Error>> {
        let mut kbuf = std::mem::take(&mut self.kbuf);
        let found = self.find(txn, path, &mut kbuf);
        self.kbuf = kbuf;
        found
    }

    /// Render `found` non-recursively into `self.prev` (a prevNode).
    fn render_prev(&mut self, txn: &RoTxn, path: &[u8], found: &Found, now: i64) -> Result<()> {
        self.prev.clear();
        let value = if found.meta.dir || found.lkey.is_empty() {
            None
        } else {
            match self.nodes.get(txn, &found.lkey)? {
                Some(v) => Some(NodeRec::decode(v).ok_or_else(corrupt)?.value),
                None => return Err(corrupt()),
            }
        };
        NodeJson {
            key: key_field(path),
            value,
            dir: found.meta.dir,
            expire: found.meta.expire,
            now,
            modified: found.meta.modified,
            created: found.meta.created,
        }
        .write(&mut self.prev);
        Ok(())
    }

    // ---- writes -----------------------------------------------------------

    fn set(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        let found = self.locate(txn, c.key)?;
        let found = match found {
            Ok(f) => Some(f),
            Err(e) if e.code == KEY_NOT_FOUND && !c.refresh => None,
            Err(e) => return Ok(Err(e)),
        };
        let mut value = c.value;
        let mut old_value = Vec::new();
        if c.refresh {
            let f = found.as_ref().unwrap();
            if !f.meta.dir && !f.lkey.is_empty() {
                if let Some(v) = self.nodes.get(txn, &f.lkey)? {
                    old_value.extend_from_slice(NodeRec::decode(v).ok_or_else(corrupt)?.value);
                }
            }
            value = &old_value;
        }
        let prev = match &found {
            Some(f) if !f.meta.dir => {
                self.render_prev(txn, c.key, f, c.now)?;
                true
            }
            _ => false,
        };
        self.internal_create(txn, c, c.key, value, true, Action::Set, prev)
    }

    fn create(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        if c.op == Op::CreateUnique {
            let mut path = Vec::with_capacity(c.key.len() + 21);
            if c.key != b"/" {
                path.extend_from_slice(c.key);
            }
            path.extend_from_slice(format!("/{:020}", self.index + 1).as_bytes());
            return self.internal_create(txn, c, &path, c.value, false, Action::Create, false);
        }
        self.internal_create(txn, c, c.key, c.value, false, Action::Create, false)
    }

    /// etcd's internalCreate: make missing parents, then the node.
    #[allow(clippy::too_many_arguments)]
    fn internal_create(
        &mut self,
        txn: &mut RwTxn,
        c: &Command,
        path: &[u8],
        value: &[u8],
        replace: bool,
        action: Action,
        has_prev: bool,
    ) -> Result<Outcome> {
        let next = self.index + 1;
        if path == b"/" {
            return Ok(Err(V2Error::new(ROOT_RONLY, "/", self.index)));
        }
        let expire = c.expire.filter(|&t| t >= MIN_EXPIRE);
        let split = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let name = &path[split + 1..];
        // Walk the parents, creating missing directories.
        let mut parent = ROOT;
        let mut start = 1;
        let mut kbuf = std::mem::take(&mut self.kbuf);
        let mut vbuf = std::mem::take(&mut self.vbuf);
        while start <= split {
            let end = path[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |p| start + p);
            let comp = &path[start..end];
            child_key(&mut kbuf, parent.dir_id, comp);
            match self.nodes.get(txn, &kbuf)? {
                Some(v) => {
                    let m = decode_meta(v)?;
                    if !m.dir {
                        self.kbuf = kbuf;
                        self.vbuf = vbuf;
                        return Ok(Err(V2Error::new(NOT_DIR, &path[..end], self.index)));
                    }
                    parent = m;
                }
                None => {
                    let id = self.next_dir_id;
                    self.next_dir_id += 1;
                    let rec = NodeRec {
                        dir: true,
                        created: next,
                        modified: next,
                        expire: None,
                        dir_id: id,
                        long_name: None,
                        value: b"",
                    };
                    rec.encode(comp, &mut vbuf);
                    self.nodes.put(txn, &kbuf, &vbuf)?;
                    parent = Meta {
                        dir: true,
                        created: next,
                        modified: next,
                        expire: None,
                        dir_id: id,
                    };
                }
            }
            start = end + 1;
        }
        child_key(&mut kbuf, parent.dir_id, name);
        if let Some(v) = self.nodes.get(txn, &kbuf)? {
            let m = decode_meta(v)?;
            if !replace {
                self.kbuf = kbuf;
                self.vbuf = vbuf;
                return Ok(Err(V2Error::new(NODE_EXIST, path, self.index)));
            }
            if m.dir {
                self.kbuf = kbuf;
                self.vbuf = vbuf;
                return Ok(Err(V2Error::new(NOT_FILE, path, self.index)));
            }
            if let Some(t) = m.expire {
                self.del_expiry(txn, t, &kbuf)?;
            }
        }
        let dir_id = if c.dir {
            self.next_dir_id += 1;
            self.next_dir_id - 1
        } else {
            0
        };
        let rec = NodeRec {
            dir: c.dir,
            created: next,
            modified: next,
            expire,
            dir_id,
            long_name: None,
            value,
        };
        rec.encode(name, &mut vbuf);
        self.nodes.put(txn, &kbuf, &vbuf)?;
        if let Some(t) = expire {
            self.put_expiry(txn, t, &kbuf, path)?;
        }
        self.kbuf = kbuf;
        self.vbuf = vbuf;
        self.index = next;
        let node = NodeJson {
            key: path,
            value: (!c.dir).then_some(value),
            dir: c.dir,
            expire,
            now: c.now,
            modified: next,
            created: next,
        };
        let created = action == Action::Create || !has_prev;
        let kind = EventKind {
            action,
            has_prev,
            prev_dir: false,
            refresh: c.refresh,
            created,
        };
        Ok(Ok(self.event(kind, &node, Vec::new())))
    }

    fn update(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        if c.key == b"/" {
            return Ok(Err(V2Error::new(ROOT_RONLY, "/", self.index)));
        }
        let found = self.locate(txn, c.key)?;
        let f = match found {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        if f.meta.dir && !c.value.is_empty() {
            return Ok(Err(V2Error::new(NOT_FILE, c.key, self.index)));
        }
        self.rewrite(txn, c, f, Action::Update)
    }

    fn cas(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        if c.key == b"/" {
            return Ok(Err(V2Error::new(ROOT_RONLY, "/", self.index)));
        }
        let found = self.locate(txn, c.key)?;
        let f = match found {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        if f.meta.dir {
            return Ok(Err(V2Error::new(NOT_FILE, c.key, self.index)));
        }
        if let Some(cause) = self.compare(txn, &f, c)? {
            return Ok(Err(V2Error::new(TEST_FAILED, cause, self.index)));
        }
        self.rewrite(txn, c, f, Action::CompareAndSwap)
    }

    /// etcd's Compare and getCompareFailCause: `None` when both checks pass.
    fn compare(&self, txn: &RoTxn, f: &Found, c: &Command) -> Result<Option<Vec<u8>>> {
        let v = self.nodes.get(txn, &f.lkey)?.ok_or_else(corrupt)?;
        let cur = NodeRec::decode(v).ok_or_else(corrupt)?.value;
        let index_ok = c.prev_index == 0 || c.prev_index == f.meta.modified;
        let value_ok = c.prev_value.is_empty() || c.prev_value == cur;
        if index_ok && value_ok {
            return Ok(None);
        }
        let mut cause = Vec::new();
        if !value_ok {
            cause.push(b'[');
            cause.extend_from_slice(c.prev_value);
            cause.extend_from_slice(b" != ");
            cause.extend_from_slice(cur);
            cause.push(b']');
        }
        if !index_ok {
            if !value_ok {
                cause.push(b' ');
            }
            cause
                .extend_from_slice(format!("[{} != {}]", c.prev_index, f.meta.modified).as_bytes());
        }
        Ok(Some(cause))
    }

    /// Update / CAS once checks pass: new value (files), new TTL, event.
    fn rewrite(
        &mut self,
        txn: &mut RwTxn,
        c: &Command,
        f: Found,
        action: Action,
    ) -> Result<Outcome> {
        let next = self.index + 1;
        self.render_prev(txn, c.key, &f, c.now)?;
        let expire = c.expire.filter(|&t| t >= MIN_EXPIRE);
        let mut vbuf = std::mem::take(&mut self.vbuf);
        let mut value_copy = Vec::new();
        {
            let v = self.nodes.get(txn, &f.lkey)?.ok_or_else(corrupt)?;
            let rec = NodeRec::decode(v).ok_or_else(corrupt)?;
            let name = rec.name(&f.lkey);
            let value = if c.refresh || f.meta.dir {
                rec.value
            } else {
                c.value
            };
            value_copy.extend_from_slice(value);
            let new = NodeRec {
                // A directory keeps its modifiedIndex (spec 4.2 quirk).
                modified: if f.meta.dir { rec.modified } else { next },
                expire,
                value: &value_copy,
                ..rec
            };
            new.encode(name, &mut vbuf);
        }
        self.nodes.put(txn, &f.lkey, &vbuf)?;
        self.vbuf = vbuf;
        if f.meta.expire != expire {
            if let Some(t) = f.meta.expire {
                self.del_expiry(txn, t, &f.lkey)?;
            }
            if let Some(t) = expire {
                self.put_expiry(txn, t, &f.lkey, c.key)?;
            }
        }
        self.index = next;
        let node = NodeJson {
            key: c.key,
            value: (!f.meta.dir).then_some(&value_copy[..]),
            dir: f.meta.dir,
            expire,
            now: c.now,
            modified: next,
            created: f.meta.created,
        };
        let kind = EventKind {
            action,
            has_prev: true,
            prev_dir: false,
            refresh: c.refresh,
            created: false,
        };
        Ok(Ok(self.event(kind, &node, Vec::new())))
    }

    fn delete(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        if c.key == b"/" {
            return Ok(Err(V2Error::new(ROOT_RONLY, "/", self.index)));
        }
        let dir = c.dir || c.recursive;
        let found = self.locate(txn, c.key)?;
        let f = match found {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        if f.meta.dir {
            if !dir {
                return Ok(Err(V2Error::new(NOT_FILE, c.key, self.index)));
            }
            if !c.recursive && self.has_children(txn, f.meta.dir_id)? {
                return Ok(Err(V2Error::new(DIR_NOT_EMPTY, c.key, self.index)));
            }
        }
        self.remove_node(txn, c, f, Action::Delete, c.now).map(Ok)
    }

    fn cad(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        let found = self.locate(txn, c.key)?;
        let f = match found {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        if f.meta.dir {
            return Ok(Err(V2Error::new(NOT_FILE, key_field(c.key), self.index)));
        }
        if let Some(cause) = self.compare(txn, &f, c)? {
            return Ok(Err(V2Error::new(TEST_FAILED, cause, self.index)));
        }
        self.remove_node(txn, c, f, Action::CompareAndDelete, c.now)
            .map(Ok)
    }

    /// Remove a node and its subtree as one event.
    fn remove_node(
        &mut self,
        txn: &mut RwTxn,
        c: &Command,
        f: Found,
        action: Action,
        now: i64,
    ) -> Result<Rc<Event>> {
        let next = self.index + 1;
        self.render_prev(txn, c.key, &f, now)?;
        let mut removed = Vec::new();
        let track = self.hub.has_at_or_under(c.key);
        if f.meta.dir {
            let mut path = c.key.to_vec();
            self.remove_subtree(txn, f.meta.dir_id, &mut path, track.then_some(&mut removed))?;
        }
        if let Some(t) = f.meta.expire {
            self.del_expiry(txn, t, &f.lkey)?;
        }
        self.nodes.delete(txn, &f.lkey)?;
        if track {
            removed.push(c.key.into());
        }
        self.index = next;
        let node = NodeJson {
            key: c.key,
            value: None,
            dir: f.meta.dir && action != Action::CompareAndDelete,
            expire: None,
            now,
            modified: next,
            created: f.meta.created,
        };
        let kind = EventKind {
            action,
            has_prev: true,
            prev_dir: f.meta.dir,
            refresh: false,
            created: false,
        };
        Ok(self.event(kind, &node, removed))
    }

    fn has_children(&self, txn: &RoTxn, dir_id: u64) -> Result<bool> {
        Ok(self
            .nodes
            .prefix_iter(txn, &dir_id.to_be_bytes())?
            .next()
            .transpose()?
            .is_some())
    }

    /// Delete every descendant of directory `dir_id` (whose path is `path`).
    fn remove_subtree(
        &mut self,
        txn: &mut RwTxn,
        dir_id: u64,
        path: &mut Vec<u8>,
        mut removed: Option<&mut Vec<Box<[u8]>>>,
    ) -> Result<()> {
        let mut children = Vec::new();
        for item in self.nodes.prefix_iter(txn, &dir_id.to_be_bytes())? {
            let (k, v) = item?;
            let rec = NodeRec::decode(v).ok_or_else(corrupt)?;
            let name = rec.name(k).to_vec();
            children.push((k.to_vec(), name, rec.dir, rec.dir_id, rec.expire));
        }
        for (k, name, dir, id, expire) in children {
            let len = path.len();
            path.push(b'/');
            path.extend_from_slice(&name);
            if dir {
                self.remove_subtree(txn, id, path, removed.as_deref_mut())?;
            }
            if let Some(r) = removed.as_deref_mut() {
                r.push(path.as_slice().into());
            }
            path.truncate(len);
            if let Some(t) = expire {
                self.del_expiry(txn, t, &k)?;
            }
            self.nodes.delete(txn, &k)?;
        }
        Ok(())
    }

    /// Expire every node whose time is at or before `now` (etcd's
    /// DeleteExpiredKeys driven by a SYNC entry): one event and one index each.
    fn expire_until(&mut self, txn: &mut RwTxn, now: i64) -> Result<()> {
        // Bounded per entry, so a backlog (say, after a long downtime) is
        // expired over several small batches instead of one huge one; the
        // leader proposes the next SYNC at once while keys are still due.
        for _ in 0..MAX_EXPIRE_PER_SYNC {
            let Some((k, v)) = self.expiry.first(txn)? else {
                return Ok(());
            };
            let t = expiry_time(k);
            if t > now {
                return Ok(());
            }
            let path = v.to_vec();
            let ek = k.to_vec();
            let found = self.locate(txn, &path)?;
            match found {
                Ok(f) if f.meta.expire == Some(t) && ek[8..] == f.lkey[..] => {
                    let mut c = Command::new(Op::Delete, &path, now);
                    c.recursive = true;
                    self.remove_node(txn, &c, f, Action::Expire, now)?;
                    self.stats.expire_count += 1;
                }
                _ => {
                    // A stale index entry: drop it.
                    self.expiry.delete(txn, &ek)?;
                }
            }
        }
        Ok(())
    }

    fn put_expiry(&mut self, txn: &mut RwTxn, t: i64, lkey: &[u8], path: &[u8]) -> Result<()> {
        let mut k = Vec::with_capacity(8 + lkey.len());
        k.extend_from_slice(&expiry_prefix(t));
        k.extend_from_slice(lkey);
        self.expiry.put(txn, &k, path)?;
        Ok(())
    }

    fn del_expiry(&mut self, txn: &mut RwTxn, t: i64, lkey: &[u8]) -> Result<()> {
        let mut k = Vec::with_capacity(8 + lkey.len());
        k.extend_from_slice(&expiry_prefix(t));
        k.extend_from_slice(lkey);
        self.expiry.delete(txn, &k)?;
        Ok(())
    }

    /// Render the event JSON (`self.prev` holds the prevNode when `has_prev`)
    /// and queue it for history and watchers after commit.
    fn event(&mut self, kind: EventKind, node: &NodeJson, removed: RemovedPaths) -> Rc<Event> {
        let EventKind {
            action,
            has_prev,
            prev_dir,
            refresh,
            created,
        } = kind;
        let key = node.key;
        let mut json = Vec::with_capacity(64 + node.key.len() * 2 + self.prev.len() * 2);
        json.extend_from_slice(b"{\"action\":\"");
        json.extend_from_slice(action.as_str().as_bytes());
        json.extend_from_slice(b"\",\"node\":");
        node.write(&mut json);
        if has_prev {
            json.extend_from_slice(b",\"prevNode\":");
            json.extend_from_slice(&self.prev);
        }
        json.extend_from_slice(b"}\n");
        let e = Rc::new(Event {
            index: self.index,
            action,
            key: key.into(),
            prev_dir,
            refresh,
            created,
            json,
        });
        self.pending.push((e.clone(), removed));
        e
    }

    // ---- reads ------------------------------------------------------------

    /// GET: append `{"action":"get","node":..}\n` to `out` and return the
    /// etcd index; or etcd's error.
    pub fn get(
        &mut self,
        path: &[u8],
        recursive: bool,
        sorted: bool,
        now: i64,
        out: &mut Vec<u8>,
    ) -> Result<std::result::Result<u64, V2Error>> {
        let rtxn = self.env.read_txn()?;
        let mut kbuf = std::mem::take(&mut self.kbuf);
        let found = self.find(&rtxn, path, &mut kbuf)?;
        self.kbuf = kbuf;
        let f = match found {
            Ok(f) => f,
            Err(e) => {
                self.stats.gets_fail += 1;
                return Ok(Err(e));
            }
        };
        self.stats.gets_success += 1;
        out.extend_from_slice(b"{\"action\":\"get\",\"node\":");
        let value = if f.meta.dir {
            None
        } else {
            let v = self.nodes.get(&rtxn, &f.lkey)?.ok_or_else(corrupt)?;
            Some(NodeRec::decode(v).ok_or_else(corrupt)?.value)
        };
        let node = NodeJson {
            key: key_field(path),
            value,
            dir: f.meta.dir,
            expire: f.meta.expire,
            now,
            modified: f.meta.modified,
            created: f.meta.created,
        };
        node.write_head(out);
        if f.meta.dir {
            let mut p = if path == b"/" {
                Vec::new()
            } else {
                path.to_vec()
            };
            self.write_children(&rtxn, f.meta.dir_id, &mut p, recursive, sorted, now, out, 0)?;
        }
        event::write_tail(out, f.meta.modified, f.meta.created);
        out.extend_from_slice(b"}\n");
        Ok(Ok(self.index))
    }

    /// Append `,"nodes":[..]` for the visible children of `dir_id`, if any.
    #[allow(clippy::too_many_arguments)]
    fn write_children(
        &self,
        txn: &RoTxn,
        dir_id: u64,
        path: &mut Vec<u8>,
        recursive: bool,
        sorted: bool,
        now: i64,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<()> {
        if depth > 10_000 {
            return Err(Error::Corrupt("directory nesting too deep".into()));
        }
        let iter = self.nodes.prefix_iter(txn, &dir_id.to_be_bytes())?;
        let mut any = false;
        let emit = |k: &[u8],
                    rec: NodeRec,
                    path: &mut Vec<u8>,
                    out: &mut Vec<u8>,
                    any: &mut bool|
         -> Result<()> {
            let name = rec.name(k);
            if name.first() == Some(&b'_') {
                return Ok(());
            }
            out.extend_from_slice(if *any { b"," } else { b",\"nodes\":[" });
            *any = true;
            let len = path.len();
            path.push(b'/');
            path.extend_from_slice(name);
            NodeJson {
                key: path,
                value: (!rec.dir).then_some(rec.value),
                dir: rec.dir,
                expire: rec.expire,
                now,
                modified: rec.modified,
                created: rec.created,
            }
            .write_head(out);
            if rec.dir && recursive {
                self.write_children(
                    txn,
                    rec.dir_id,
                    path,
                    recursive,
                    sorted,
                    now,
                    out,
                    depth + 1,
                )?;
            }
            event::write_tail(out, rec.modified, rec.created);
            path.truncate(len);
            Ok(())
        };
        if sorted {
            // LMDB order is name order except for over-long names.
            let mut items = Vec::new();
            for item in iter {
                let (k, v) = item?;
                items.push((k, NodeRec::decode(v).ok_or_else(corrupt)?));
            }
            if items.iter().any(|(_, r)| r.long_name.is_some()) {
                items.sort_by(|a, b| a.1.name(a.0).cmp(b.1.name(b.0)));
            }
            for (k, rec) in items {
                emit(k, rec, path, out, &mut any)?;
            }
        } else {
            for item in iter {
                let (k, v) = item?;
                emit(
                    k,
                    NodeRec::decode(v).ok_or_else(corrupt)?,
                    path,
                    out,
                    &mut any,
                )?;
            }
        }
        if any {
            out.push(b']');
        }
        Ok(())
    }

    /// Register a watch (store.Watch). `Ok((Some(event), idx))` is answered
    /// from history at once; `Ok((None, idx))` registered `handle`.
    pub fn watch(
        &mut self,
        key: &[u8],
        recursive: bool,
        stream: bool,
        since: u64,
    ) -> std::result::Result<(WatchStart, u64), V2Error> {
        let since = if since == 0 { self.index + 1 } else { since };
        match self.history.scan(key, recursive, since) {
            Err(mut e) => {
                e.index = self.index;
                Err(e)
            }
            Ok(Some(e)) => Ok((WatchStart::Past(e), self.index)),
            Ok(None) => Ok((
                WatchStart::Waiting(self.hub.add(key, recursive, stream, since)),
                self.index,
            )),
        }
    }
}

/// What kind of event [`Store::event`] renders.
struct EventKind {
    action: Action,
    /// `self.prev` holds a prevNode to include.
    has_prev: bool,
    /// A delete/expire of a directory (history prefix rule).
    prev_dir: bool,
    refresh: bool,
    /// Answered with 201.
    created: bool,
}

/// How a watch begins.
pub enum WatchStart {
    /// Found in history: deliver this one event.
    Past(Rc<Event>),
    /// Registered: wait on the handle.
    Waiting(WatchHandle),
}

fn corrupt() -> Error {
    Error::Corrupt("undecodable node record".into())
}

fn decode_meta(v: &[u8]) -> Result<Meta> {
    let r = NodeRec::decode(v).ok_or_else(corrupt)?;
    Ok(Meta {
        dir: r.dir,
        created: r.created,
        modified: r.modified,
        expire: r.expire,
        dir_id: r.dir_id,
    })
}

/// The `key` field of a node: empty for the root.
fn key_field(path: &[u8]) -> &[u8] {
    if path == b"/" {
        b""
    } else {
        path
    }
}
