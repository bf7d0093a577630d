//! The etcd v2 store of one shard: a tree of files and directories kept in
//! one LMDB environment, plus its TTL index.
//!
//! Commands enter through [`Store::execute`] inside [`Store::batch`] (new
//! commands, which take their etcd indexes from the member-wide counter) or
//! [`Store::apply_batch`] (replayed entries, which reuse the indexes they
//! recorded). A batch is one LMDB write transaction that also records the
//! raft applied index, so state and index can never disagree. Each command
//! yields an [`Event`] (or a deterministic [`V2Error`]); events wait in the
//! store until the raft loop takes them for publication. On a sharded member
//! a command that needs other shards answers [`ESCALATE`] before changing
//! anything. Reads ([`Store::get`], [`Store::collect`]) run on the
//! owning executor against a read transaction. LMDB failures are [`Error`]s:
//! they stop the shard rather than diverge it.
//!
//! By job: this file opens the environment, runs batches and their read
//! views, looks paths up and copies the store (snapshots, backups);
//! `write.rs` holds the commands, `expiry.rs` the TTL index and expiry,
//! `read.rs` GETs and listings; `node.rs` is the record codec.

pub mod auth;
pub mod check;
pub mod command;
mod dircache;
pub mod event;
mod expiry;
pub mod import;
pub mod node;
pub mod placement;
mod read;
pub use read::{RemoteDir, RemoteFiles, Slices};
pub mod reshard;
pub mod space;
pub mod watch;
mod write;

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{Database, EnvFlags, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

/// A shard's LMDB environment. Read transactions do not use thread-local
/// slots, so the shard can hold several (its read views) at once.
pub type Env = heed::Env<WithoutTls>;

pub use command::{Command, Op};
use dircache::{Ancestors, DirCache};
pub use event::{Action, Event, NodeJson, Removed};
use node::{child_key, expiry_prefix, expiry_time, seal, unseal, NodeRec};
pub use placement::Placement;

use crate::etcd::error::*;

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
pub type Outcome = std::result::Result<Arc<Event>, V2Error>;

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

/// A node's LMDB key as a lookup found it.
type LKey = smallvec::SmallVec<[u8; 64]>;

/// A located node: its record facts and the key it is stored under.
struct Found {
    meta: Meta,
    /// LMDB key (empty for the root): kept inline up to 64 bytes (a
    /// directory id and a name of up to 56), so a lookup allocates nothing.
    lkey: LKey,
    /// The lookup kept a copy of the node's stored record in the store's
    /// `fval` ([`Store::locate`] does, for records up to [`KEEP_MAX`]):
    /// [`Store::record`] reads it from there instead of searching the tree
    /// again. Valid until the next lookup.
    kept: bool,
}

/// What a write's own lookup of its path found, so the write need not
/// walk the path again ([`Store::internal_create`]).
enum Known<'f> {
    Nothing,
    /// A file, which the write replaces.
    File(&'f Found),
    /// No node, but every directory above it: this one holds it.
    MissingIn(Meta),
    /// No node: this directory is the deepest above it, and the component
    /// that starts at this offset of the path is missing.
    MissingBelow(Meta, usize),
}

const META_APPLIED: &[u8] = b"applied";
/// Kinds of expiry index entries (first byte of the value, then the path).
const EXP_FILE: u8 = b'f';
const EXP_DIR: u8 = b'd';

/// The error code of "this needs the member-wide path" (never sent to a
/// client); its `index` names the shard to ask, for reads.
pub const ESCALATE: u16 = 0;

/// [`ESCALATE`] target of a read that needs every shard.
pub const MEMBER_WIDE: usize = usize::MAX;

fn escalate(shard: usize) -> V2Error {
    V2Error::new(ESCALATE, "", shard as u64)
}

/// The shard an escalated request goes to next ([`MEMBER_WIDE`]: every
/// shard), or `None` for an ordinary error.
pub fn escalated_to(e: &V2Error) -> Option<usize> {
    (e.code == ESCALATE).then(|| usize::try_from(e.index).unwrap_or(MEMBER_WIDE))
}

/// The error code of "this listing passed the read's byte limit" (never
/// sent to a client): the caller reads it again as a bulk read
/// ([`Store::get`]'s `limit`).
pub const OVER_LIMIT: u16 = 1;
/// What a store copy ([`Store::copy_to`]) holds.
#[derive(Debug)]
pub struct SnapshotInfo {
    pub applied: (u64, u64),
    pub conf: Option<Vec<u8>>,
}

/// Store `value` under `key`, sealed with its checksum.
fn put_sealed(
    db: &Database<Bytes, Bytes>,
    txn: &mut RwTxn,
    key: &[u8],
    value: &[u8],
) -> Result<()> {
    let mut v = Vec::with_capacity(value.len() + node::CRC_LEN);
    v.extend_from_slice(value);
    seal(key, &mut v);
    Ok(db.put(txn, key, &v)?)
}

/// The value under `key`, its checksum checked.
fn get_sealed<'t>(
    db: &Database<Bytes, Bytes>,
    txn: &'t RoTxn,
    key: &[u8],
) -> Result<Option<&'t [u8]>> {
    match db.get(txn, key)? {
        None => Ok(None),
        Some(v) => Ok(Some(
            unseal(key, v).ok_or_else(|| bad_checksum("meta", key))?,
        )),
    }
}

/// A stored value failed its checksum: the shard stops rather than serve it.
fn bad_checksum(what: &str, key: &[u8]) -> Error {
    Error::Corrupt(format!(
        "{what} record {:?} fails its checksum (damaged data file; run `kardia check`)",
        String::from_utf8_lossy(key)
    ))
}

/// A `u64` the store keeps in `meta`.
fn meta_u64(meta: &Database<Bytes, Bytes>, txn: &RoTxn, k: &[u8]) -> Result<Option<u64>> {
    Ok(match get_sealed(meta, txn, k)? {
        Some(v) if v.len() >= 8 => Some(u64::from_le_bytes(v[..8].try_into().unwrap())),
        Some(_) => return Err(Error::Corrupt("short meta value".into())),
        None => None,
    })
}

/// The positions a store records in `meta` (read at open and after a
/// snapshot replaced its contents).
struct Recorded {
    index: u64,
    applied: (u64, u64),
    next_dir_id: u64,
    next_unit_id: u64,
    gseq: u64,
}

impl Recorded {
    fn read(meta: &Database<Bytes, Bytes>, txn: &RoTxn) -> Result<Recorded> {
        Ok(Recorded {
            index: meta_u64(meta, txn, META_INDEX)?.unwrap_or(3),
            applied: read_applied(get_sealed(meta, txn, META_APPLIED)?)?,
            next_dir_id: meta_u64(meta, txn, META_DIR_ID)?.unwrap_or(1),
            next_unit_id: meta_u64(meta, txn, META_UNIT_ID)?.unwrap_or(UNIT_IDS),
            gseq: meta_u64(meta, txn, META_GSEQ)?.unwrap_or(0),
        })
    }
}

fn read_applied(v: Option<&[u8]>) -> Result<(u64, u64)> {
    match v {
        Some(v) if v.len() == 16 => Ok((
            u64::from_le_bytes(v[..8].try_into().unwrap()),
            u64::from_le_bytes(v[8..].try_into().unwrap()),
        )),
        Some(_) => Err(Error::Corrupt("bad applied index".into())),
        None => Ok((0, 0)),
    }
}

/// Open a store copy (read and written by this process only).
fn open_env(dir: &Path, map_size: usize) -> Result<Env> {
    let mut eo = EnvOpenOptions::new().read_txn_without_tls();
    eo.map_size(map_size).max_dbs(4);
    // SAFETY: each copy directory is opened once, by this process only.
    Ok(unsafe { eo.open(dir)? })
}

const META_INDEX: &[u8] = b"index";
/// The layout version of the store's records (2: every value sealed with a
/// checksum; 3: a file's expiry entry may come due before the file, see
/// `expiry.rs` — a format-2 store is a valid format-3 one and is marked so
/// when opened, so that an earlier kardia, which would drop such entries
/// as stale and never expire their files, refuses it).
const META_FORMAT: &[u8] = b"format";
const FORMAT: u64 = 3;
/// The largest record a lookup copies for its caller ([`Found::kept`]):
/// a copy is cheaper than a second search only for small ones.
const KEEP_MAX: usize = 4096;
const META_DIR_ID: &[u8] = b"next_dir_id";
/// The next id of a directory inside a placement unit. Those ids come from
/// their own range, so the skeleton's ids (taken in the same order by every
/// shard) stay equal on every shard: a member-wide listing matches
/// directories across shards by id.
const META_UNIT_ID: &[u8] = b"next_unit_id";
const UNIT_IDS: u64 = 1 << 62;
/// The last member-wide operation applied (its index).
const META_GSEQ: &[u8] = b"gseq";
/// That operation's entry: a crash between its apply and its fsync leaves
/// it here only, and start-up completes it on every shard from here.
const META_LAST_GLOBAL: &[u8] = b"last_global";

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
    /// This shard's last `history_cap` events, by index (etcd's event
    /// history, kept durable so watches resume after a restart).
    history: Database<Bytes, Bytes>,
    history_cap: usize,
    /// Indexes of events this shard applied for a member-wide operation
    /// another shard owns (that shard keeps them in its history).
    not_mine: Vec<u64>,
    /// The last etcd index this shard used (the node-wide index is the
    /// largest over all shards).
    index: u64,
    /// The member-wide counter new indexes are taken from.
    counter: Arc<AtomicU64>,
    /// Indexes recorded in the entry being replayed, in the order taken.
    replay: Vec<u64>,
    /// Indexes taken by the command being executed.
    taken: Vec<u64>,
    /// Created in this run (no earlier data).
    fresh: bool,
    /// Raft (index, term) last applied.
    applied: (u64, u64),
    next_dir_id: u64,
    /// The next id of a directory inside a placement unit.
    next_unit_id: u64,
    /// The last member-wide operation this shard applied.
    gseq: u64,
    /// Which keys this shard owns.
    pub placement: Placement,
    /// Executing a member-wide operation (every shard applies it).
    global: bool,
    /// Executing a trial (rolled back; the counter is left alone).
    trial: bool,
    /// Executing an entry whose indexes a sequencer stamped ([`Store::execute_stamped`]).
    stamped: bool,
    /// Every node's expiry entry at its exact time (a sharded cluster's:
    /// its sequencer stamps a SYNC with one index per due entry); else a
    /// file's entry may come due early (the rule in `expiry.rs`).
    pub exact_expiry: bool,
    /// A stamped entry needed more indexes than it carried.
    starved: bool,
    pub stats: Stats,
    /// Events of the batch being applied, in index order.
    pending: Vec<Arc<Event>>,
    kbuf: Vec<u8>,
    /// Scratch key and value of the expiry index (no allocation per TTL).
    xkey: Vec<u8>,
    xval: Vec<u8>,
    vbuf: Vec<u8>,
    /// The stored record a lookup found ([`Found::kept`]).
    fval: Vec<u8>,
    prev: Vec<u8>,
    /// Read views: a read transaction opened right after each commit, with
    /// the index the store had reached then, oldest first (at most
    /// [`MAX_VIEWS`]). A read that must not see writes still in their fsync
    /// uses the newest view whose index is delivered ([`Store::select_view`]).
    views: VecDeque<(u64, Rc<RoTxn<'static, WithoutTls>>)>,
    /// The snapshot a member-wide read renders from: taken while every
    /// shard is parked (a cut of the whole member), read after they resume
    /// ([`Store::take_cut`]).
    cut: Option<RoTxn<'static, WithoutTls>>,
    /// Where the duration of each commit goes (`/metrics`).
    commit_time: Option<prometheus::Histogram>,
    /// The shard stopped: no view is added any more ([`Store::freeze_views`]).
    frozen: bool,
    /// A batch changed the auth records since they were last published.
    auth_changed: bool,
    /// Directory ids of recently walked paths, for write transactions.
    dirs: DirCache,
    /// Where the auth records are published (shard 0 only).
    auth_sink: Option<Arc<crate::auth::Shared>>,
}

/// A checkpoint of `env`, to run on a blocking thread: `force_sync`. The
/// power-cut simulation (tests) copies the store now, between
/// transactions, and keeps the copy once the sync has returned.
pub fn checkpoint(env: &Env) -> impl FnOnce() -> heed::Result<()> + Send + 'static {
    let image = crate::storage::powercut::checkpoint_begin(env.path(), || space::used(env));
    let env = env.clone();
    move || {
        env.force_sync()?;
        crate::storage::powercut::checkpoint_done(image);
        Ok(())
    }
}

/// Read views kept at most (each pins the pages of its snapshot).
const MAX_VIEWS: usize = 16;

/// Which state a read sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// The store as it is now (the caller knows nothing is in flight, or
    /// every shard is parked).
    Now,
    /// The view chosen by the last [`Store::select_view`].
    View,
    /// The member-wide cut ([`Store::take_cut`]).
    Cut,
}

impl Store {
    /// Open (or create) the store in `dir`. A fresh store starts at index 3,
    /// as a fresh one-member etcd 3.4 does. `counter` is the member-wide
    /// index counter shared by all shards.
    pub fn open(
        dir: &Path,
        opts: &Options,
        placement: Placement,
        counter: Arc<AtomicU64>,
    ) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", dir.display())))?;
        let mut eo = EnvOpenOptions::new().read_txn_without_tls();
        // Reader slots: the read views, plus reads, snapshots and checks.
        eo.map_size(opts.map_size).max_dbs(4).max_readers(256);
        // SAFETY: the environment is opened once per shard directory. NO_SYNC
        // is safe against process crashes (pages are in the OS cache);
        // durability comes from the raft log, and the shard checkpoints with
        // `force_sync` before trimming that log. WRITE_MAP makes a commit a
        // memory write instead of a pwrite per dirty page.
        let env = unsafe {
            eo.flags(EnvFlags::NO_SYNC | EnvFlags::WRITE_MAP | EnvFlags::NO_READ_AHEAD);
            eo.open(dir)?
        };
        // Under WRITE_MAP a page written into a hole of a full disk is a
        // SIGBUS: allocate the map's used part and headroom first.
        space::prepare(dir, &env).map_err(heed::Error::Io)?;
        let mut wtxn = env.write_txn()?;
        let nodes = env.create_database(&mut wtxn, Some("nodes"))?;
        let expiry = env.create_database(&mut wtxn, Some("expiry"))?;
        let meta: Database<Bytes, Bytes> = env.create_database(&mut wtxn, Some("meta"))?;
        let history = env.create_database(&mut wtxn, Some("history"))?;
        let fresh = meta.get(&wtxn, META_INDEX)?.is_none();
        if fresh {
            put_sealed(&meta, &mut wtxn, META_INDEX, &3u64.to_le_bytes())?;
            put_sealed(&meta, &mut wtxn, META_FORMAT, &FORMAT.to_le_bytes())?;
        }
        match meta_u64(&meta, &wtxn, META_FORMAT)? {
            Some(FORMAT) => {}
            Some(2) => put_sealed(&meta, &mut wtxn, META_FORMAT, &FORMAT.to_le_bytes())?,
            Some(f) if f > FORMAT => {
                return Err(Error::Corrupt(format!(
                    "{} was written by a later kardia (store format {f}; this one reads {FORMAT} and earlier)",
                    dir.display(),
                )))
            }
            _ => {
                return Err(Error::Corrupt(format!(
                    "{} was written by an earlier kardia (records without checksums); \
                     start from an empty data dir and copy the keys over",
                    dir.display()
                )))
            }
        }
        let Recorded {
            index,
            applied,
            next_dir_id,
            next_unit_id,
            gseq,
        } = Recorded::read(&meta, &wtxn)?;
        wtxn.commit()?;
        counter.fetch_max(index, Ordering::SeqCst);
        Ok(Store {
            env,
            nodes,
            expiry,
            meta,
            history,
            history_cap: opts.history.max(1),
            not_mine: Vec::new(),
            index,
            counter,
            replay: Vec::new(),
            stamped: false,
            exact_expiry: false,
            starved: false,
            taken: Vec::new(),
            fresh,
            applied,
            next_dir_id,
            next_unit_id,
            gseq,
            placement,
            global: false,
            trial: false,
            stats: Stats::default(),
            pending: Vec::new(),
            kbuf: Vec::new(),
            xkey: Vec::new(),
            xval: Vec::new(),
            vbuf: Vec::new(),
            fval: Vec::new(),
            prev: Vec::new(),
            views: VecDeque::new(),
            cut: None,
            commit_time: None,
            frozen: false,
            auth_changed: false,
            dirs: DirCache::default(),
            auth_sink: None,
        })
    }

    pub fn env(&self) -> &Env {
        &self.env
    }

    /// Open a read view of the state just committed.
    fn push_view(&mut self) {
        if self.frozen {
            return;
        }
        if self.views.len() >= MAX_VIEWS {
            self.views.pop_front();
        }
        match self.env.clone().static_read_txn() {
            Ok(txn) => self.views.push_back((self.index, Rc::new(txn))),
            // No reader slot: no view may stand for the present any more
            // (reads open their own transaction, or wait for delivery).
            Err(e) => {
                tracing::warn!(error = %e, "no read view for this commit");
                self.views.clear();
            }
        }
    }

    /// Hold a snapshot of the store as it is now, for member-wide reads at
    /// this cut ([`ReadAt::Cut`], [`Store::collect`]); it replaces any
    /// earlier one.
    pub fn take_cut(&mut self) -> Result<()> {
        // Give the old one's reader slot back first.
        self.cut = None;
        self.cut = Some(self.env.clone().static_read_txn()?);
        Ok(())
    }

    /// Observe the duration of every later commit in `h`.
    pub fn observe_commits(&mut self, h: prometheus::Histogram) {
        self.commit_time = Some(h);
    }

    /// Release the snapshot of [`Store::take_cut`] (it pins pages).
    pub fn drop_cut(&mut self) {
        self.cut = None;
    }

    /// The shard stopped: writes from index `first` on will never be
    /// durable. Reads keep the views below it only; with none left they
    /// fail rather than show those writes.
    pub fn freeze_views(&mut self, first: u64) {
        self.views.retain(|(i, _)| *i < first);
        self.frozen = true;
    }

    /// Drop the views a read can no longer choose (a newer one is
    /// delivered), so LMDB may reuse their pages: called after every
    /// published batch.
    pub fn prune_views(&mut self, delivered: u64) {
        while self.views.len() >= 2 && self.views[1].0 <= delivered {
            self.views.pop_front();
        }
    }

    /// Choose the view a [`ReadAt::View`] read sees: the newest one whose
    /// index is at most `delivered` (so every write it shows is durable
    /// and published). `Err(i)`: none yet; wait until index `i` is
    /// delivered and ask again.
    pub fn select_view(&mut self, delivered: u64) -> std::result::Result<(), u64> {
        self.prune_views(delivered);
        match self.views.front() {
            _ if self.frozen => Ok(()),
            Some((i, _)) if *i <= delivered => Ok(()),
            Some((i, _)) => Err(*i),
            // No view (none committed since the start, or no reader slot
            // was free): the store as it is ([`Store::get`] opens a
            // transaction), once all of it is delivered.
            None if self.index <= delivered => Ok(()),
            None => Err(self.index),
        }
    }

    /// The last etcd index this shard used.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The last member-wide operation this shard applied.
    pub fn gseq(&self) -> u64 {
        self.gseq
    }

    /// The entry of the last member-wide operation this shard applied.
    pub fn last_global(&self) -> Result<Option<Vec<u8>>> {
        let rtxn = self.env.read_txn()?;
        Ok(get_sealed(&self.meta, &rtxn, META_LAST_GLOBAL)?.map(|v| v.to_vec()))
    }

    /// True when the store was created by this run.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The raft (index, term) of the last applied entry.
    pub fn applied(&self) -> (u64, u64) {
        self.applied
    }

    /// The earliest expiry time in the store, if any key has a TTL.
    pub fn next_expiry(&self) -> Result<Option<i64>> {
        let rtxn = self.env.read_txn()?;
        for item in self.expiry.iter(&rtxn)? {
            let (k, v) = item?;
            let v = unseal(k, v).ok_or_else(|| bad_checksum("expiry", k))?;
            if v.first() == Some(&EXP_DIR) && !self.expires_dirs() && self.skeleton(&v[1..]) {
                continue;
            }
            return Ok(Some(expiry_time(k)));
        }
        Ok(None)
    }

    /// The TTLs of skeleton directories are carried out by shard 0 alone,
    /// as member-wide operations (every shard holds them).
    fn expires_dirs(&self) -> bool {
        self.placement.shards == 1 || self.placement.shard == 0
    }

    /// True when the directory at `path` is part of the skeleton every
    /// shard holds (changed only by member-wide operations), not of a
    /// placement unit.
    fn skeleton(&self, path: &[u8]) -> bool {
        !self.placement.in_unit(path)
    }

    /// A fresh id for a directory created at `path`.
    fn new_dir_id(&mut self, path: &[u8]) -> u64 {
        let next = if self.skeleton(path) {
            &mut self.next_dir_id
        } else {
            &mut self.next_unit_id
        };
        *next += 1;
        *next - 1
    }

    /// Expiring skeleton directories due at or before `now` (shard 0 of a
    /// sharded member turns each into a member-wide expiry).
    pub fn due_dirs(&self, now: i64, max: usize) -> Result<Vec<Vec<u8>>> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for item in self.expiry.iter(&rtxn)? {
            let (k, v) = item?;
            let v = unseal(k, v).ok_or_else(|| bad_checksum("expiry", k))?;
            if expiry_time(k) > now || out.len() >= max {
                break;
            }
            if v.first() == Some(&EXP_DIR) && self.skeleton(&v[1..]) {
                out.push(v[1..].to_vec());
            }
        }
        Ok(out)
    }

    /// A command on one shard of several must not change the directory
    /// skeleton every shard holds, nor decide on an ancestor another shard
    /// owns, nor create a node another shard owns: it is escalated to a
    /// member-wide operation instead.
    fn local_only(&self) -> bool {
        self.placement.shards > 1 && !self.global
    }

    /// This shard owns the event of member-wide command `c`, which took
    /// etcd index `index`.
    fn is_primary(&self, c: &Command, index: u64) -> bool {
        let owner = if c.op == Op::CreateUnique {
            self.placement.of_created(c.key, index)
        } else {
            self.placement.of_key(c.key)
        };
        owner == self.placement.shard
    }

    /// A value of the store's own metadata (membership, raft configuration).
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let rtxn = self.env.read_txn()?;
        Ok(get_sealed(&self.meta, &rtxn, key)?.map(|v| v.to_vec()))
    }

    /// Set a metadata value inside [`Store::batch`].
    pub fn meta_put(&self, txn: &mut RwTxn, key: &[u8], value: &[u8]) -> Result<()> {
        put_sealed(&self.meta, txn, key, value)
    }

    /// A hash of every node (key, value, indexes, TTL): equal on members
    /// whose contents are equal.
    pub fn content_hash(&self) -> Result<u64> {
        let rtxn = self.env.read_txn()?;
        let mut h: u64 = 0xcbf29ce484222325;
        let mut eat = |b: &[u8]| {
            for &x in b {
                h ^= x as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
            h ^= 0xff;
            h = h.wrapping_mul(0x100000001b3);
        };
        for item in self.nodes.iter(&rtxn)? {
            let (k, v) = item?;
            eat(k);
            eat(v);
        }
        Ok(h)
    }

    /// Write a consistent copy of the store to `dir/data.mdb` (a snapshot
    /// for a lagging member). Runs off the executor. Returns the copy's
    /// applied raft (index, term) and the metadata value `conf_key`.
    pub fn copy_to(env: &Env, dir: &Path, conf_key: &[u8]) -> Result<SnapshotInfo> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| Error::Corrupt(format!("{e}")))?;
        env.copy_to_path(dir.join("data.mdb"), heed::CompactionOption::Enabled)?;
        let copy = open_env(dir, 1 << 40)?;
        let info = (|| -> Result<SnapshotInfo> {
            let rtxn = copy.read_txn()?;
            let meta: Database<Bytes, Bytes> = copy
                .open_database(&rtxn, Some("meta"))?
                .ok_or_else(|| Error::Corrupt("snapshot has no meta".into()))?;
            let applied = read_applied(get_sealed(&meta, &rtxn, META_APPLIED)?)?;
            let conf = get_sealed(&meta, &rtxn, conf_key)?.map(|v| v.to_vec());
            Ok(SnapshotInfo { applied, conf })
        })();
        copy.prepare_for_closing().wait();
        info
    }

    /// The store's databases by name, as a copy of it holds them too.
    fn databases(&self) -> [(&'static str, Database<Bytes, Bytes>); 4] {
        [
            ("nodes", self.nodes),
            ("expiry", self.expiry),
            ("meta", self.meta),
            ("history", self.history),
        ]
    }

    /// Hand over the cut ([`Store::take_cut`]) as a backup job: a closure,
    /// to run off the executor, that copies the store as of the cut into a
    /// new LMDB environment in `dir` (record by record, in key order, so the
    /// copy is compact), syncs it and returns its size in bytes. `None`
    /// without a cut.
    pub fn backup_job(&mut self, dir: PathBuf) -> Option<impl FnOnce() -> Result<u64> + Send> {
        let txn = self.cut.take()?;
        let dbs = self.databases();
        let map_size = self.env.info().map_size;
        Some(move || -> Result<u64> {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", dir.display())))?;
            let copy = open_env(&dir, map_size)?;
            let r = (|| -> Result<()> {
                let mut wtxn = copy.write_txn()?;
                for (name, src) in dbs {
                    let dst: Database<Bytes, Bytes> =
                        copy.create_database(&mut wtxn, Some(name))?;
                    for item in src.iter(&txn)? {
                        let (k, v) = item?;
                        dst.put_with_flags(&mut wtxn, heed::PutFlags::APPEND, k, v)?;
                    }
                }
                wtxn.commit()?;
                drop(txn);
                copy.force_sync()?;
                Ok(())
            })();
            copy.prepare_for_closing().wait();
            r?;
            let size = std::fs::metadata(dir.join("data.mdb"))
                .map(|m| m.len())
                .unwrap_or(0);
            Ok(size)
        })
    }

    /// Replace this store's contents with the copy in `dir` (a snapshot
    /// received from the leader), in one transaction.
    pub fn restore(&mut self, dir: &Path) -> Result<()> {
        let copy = open_env(dir, 1 << 40)?;
        let r = (|| -> Result<()> {
            let rtxn = copy.read_txn()?;
            let mut wtxn = self.env.write_txn()?;
            for (name, db) in self.databases() {
                db.clear(&mut wtxn)?;
                if let Some(src) = copy.open_database::<Bytes, Bytes>(&rtxn, Some(name))? {
                    for item in src.iter(&rtxn)? {
                        let (k, v) = item?;
                        db.put(&mut wtxn, k, v)?;
                    }
                }
            }
            // A copy made by an earlier build holds exact expiry entries
            // only: valid here, and from now on marked as this format.
            match meta_u64(&self.meta, &wtxn, META_FORMAT)? {
                Some(f) if f > FORMAT => {
                    return Err(Error::Corrupt(format!(
                    "the snapshot is of store format {f}; this kardia reads {FORMAT} and earlier"
                )))
                }
                _ => put_sealed(&self.meta, &mut wtxn, META_FORMAT, &FORMAT.to_le_bytes())?,
            }
            wtxn.commit()?;
            Ok(())
        })();
        copy.prepare_for_closing().wait();
        r?;
        let rtxn = self.env.read_txn()?;
        let rec = Recorded::read(&self.meta, &rtxn)?;
        drop(rtxn);
        (self.index, self.applied) = (rec.index, rec.applied);
        (self.next_dir_id, self.gseq) = (rec.next_dir_id, rec.gseq);
        self.next_unit_id = rec.next_unit_id;
        self.counter.fetch_max(self.index, Ordering::SeqCst);
        self.pending.clear();
        self.dirs.clear();
        self.fresh = false;
        self.auth_changed = true;
        self.views.clear();
        self.push_view();
        Ok(())
    }

    /// Number of nodes (files and directories) stored.
    pub fn node_count(&self) -> Result<u64> {
        let rtxn = self.env.read_txn()?;
        Ok(self.nodes.len(&rtxn)?)
    }

    /// Move the events of the last committed batch, in index order, to `out`.
    pub fn take_events(&mut self, out: &mut Vec<Arc<Event>>) {
        out.append(&mut self.pending);
    }

    /// Events wait to be published.
    pub fn has_events(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The indexes the last executed command took (to record in its entry).
    pub fn taken(&self) -> &[u64] {
        &self.taken
    }

    /// Replay raft entries `(index, term, data)` in one transaction: each
    /// command gets the indexes recorded in it. Results for entries that
    /// carry a command are pushed to `out` as `(raft index, outcome)`.
    /// Empty entries (leader no-ops) only advance the applied index.
    pub fn apply_batch<'d>(
        &mut self,
        entries: impl Iterator<Item = (u64, u64, &'d [u8])>,
        out: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        self.batch(|st, txn| {
            let mut last = None;
            for (ri, term, data) in entries {
                last = Some((ri, term));
                if data.is_empty() {
                    continue;
                }
                if let Some(o) = st.execute(txn, data)? {
                    out.push((ri, o));
                }
            }
            Ok(((), last))
        })
    }

    /// One write transaction around `f`, which executes commands with
    /// [`Store::execute`] and returns the raft position they reach (`None`:
    /// nothing to record). The applied position, the index and the
    /// directory counter are written in the same transaction. On error the
    /// transaction is aborted and memory is left as LMDB has it.
    pub fn batch<R>(
        &mut self,
        f: impl FnOnce(&mut Store, &mut RwTxn) -> Result<(R, Option<(u64, u64)>)>,
    ) -> Result<R> {
        let index_before = self.index;
        let dir_id_before = self.next_dir_id;
        let unit_id_before = self.next_unit_id;
        let gseq_before = self.gseq;
        let stats_before = self.stats;
        let pending_before = self.pending.len();
        let env = self.env.clone();
        let r = (|| {
            let mut wtxn = env.write_txn()?;
            let (r, last) = f(self, &mut wtxn)?;
            if let Some(last) = last {
                let mut a = [0u8; 16];
                a[..8].copy_from_slice(&last.0.to_le_bytes());
                a[8..].copy_from_slice(&last.1.to_le_bytes());
                put_sealed(&self.meta, &mut wtxn, META_APPLIED, &a)?;
            }
            if self.index != index_before {
                put_sealed(&self.meta, &mut wtxn, META_INDEX, &self.index.to_le_bytes())?;
            }
            if self.next_dir_id != dir_id_before {
                let id = self.next_dir_id.to_le_bytes();
                put_sealed(&self.meta, &mut wtxn, META_DIR_ID, &id)?;
            }
            if self.next_unit_id != unit_id_before {
                let id = self.next_unit_id.to_le_bytes();
                put_sealed(&self.meta, &mut wtxn, META_UNIT_ID, &id)?;
            }
            if self.gseq != gseq_before {
                put_sealed(&self.meta, &mut wtxn, META_GSEQ, &self.gseq.to_le_bytes())?;
            }
            self.keep_history(&mut wtxn, pending_before)?;
            let t = std::time::Instant::now();
            wtxn.commit()?;
            if let Some(h) = &self.commit_time {
                h.observe(t.elapsed().as_secs_f64());
            }
            Ok((r, last))
        })();
        match r {
            Ok((r, last)) => {
                if let Some(last) = last {
                    self.applied = last;
                }
                self.push_view();
                Ok(r)
            }
            Err(e) => {
                // Directories the aborted transaction made are gone.
                self.dirs.clear();
                self.index = index_before;
                self.next_dir_id = dir_id_before;
                self.next_unit_id = unit_id_before;
                self.gseq = gseq_before;
                self.stats = stats_before;
                self.pending.truncate(pending_before);
                Err(e)
            }
        }
    }

    /// Add the events of this batch to the durable history and trim it to
    /// its capacity, in the batch's transaction.
    fn keep_history(&mut self, txn: &mut RwTxn, from: usize) -> Result<()> {
        let mut buf = std::mem::take(&mut self.vbuf);
        let mut added = 0;
        for e in &self.pending[from..] {
            if e.is_placeholder() || self.not_mine.contains(&e.index) {
                continue;
            }
            let k = e.index.to_be_bytes();
            e.encode(&mut buf);
            seal(&k, &mut buf);
            append_or_put(&self.history, txn, &k, &buf)?;
            added += 1;
        }
        self.vbuf = buf;
        self.not_mine.clear();
        if added > 0 {
            let mut over = self
                .history
                .len(txn)?
                .saturating_sub(self.history_cap as u64);
            // The oldest go, through one cursor for the batch.
            let mut oldest = self.history.iter_mut(txn)?;
            while over > 0 {
                let Some((k, _)) = oldest.next().transpose()? else {
                    break;
                };
                if k.len() != 8 {
                    return Err(bad_checksum("history", k));
                }
                // SAFETY: nothing read through the cursor is kept past the
                // deletion.
                unsafe { oldest.del_current()? };
                over -= 1;
            }
        }
        Ok(())
    }

    /// This shard's durable event history, oldest first, and the first
    /// index from which it is complete (0: complete since the store began;
    /// older events of this shard were trimmed away otherwise).
    pub fn recent_events(&self) -> Result<(Vec<Arc<Event>>, u64)> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        let mut damaged = 0;
        for item in self.history.iter(&rtxn)? {
            let (k, v) = item?;
            let index = <[u8; 8]>::try_from(k)
                .map(u64::from_be_bytes)
                .map_err(|_| bad_checksum("history", k))?;
            match unseal(k, v).and_then(|v| Event::decode(index, v)) {
                Some(e) => out.push(Arc::new(e)),
                None => {
                    // History is not data: drop what came before the damage
                    // (watches from there get 401), keep serving the store.
                    tracing::warn!(
                        index,
                        "event history record fails its checksum; history starts after it"
                    );
                    out.clear();
                    damaged = index + 1;
                }
            }
        }
        let complete_from = if out.len() >= self.history_cap {
            out.first().map_or(0, |e| e.index)
        } else {
            0
        };
        Ok((out, complete_from.max(damaged)))
    }

    /// Execute one encoded command inside [`Store::batch`]. A command that
    /// carries recorded indexes (a replayed entry) reuses them and must
    /// succeed as it did the first time; a new one takes indexes from the
    /// member-wide counter, listed by [`Store::taken`] afterwards. A failed
    /// new command gives its index back (or, if another shard took one
    /// since, leaves a gap that a placeholder event fills). `None` for a
    /// command that answers no client (expiry).
    pub fn execute(&mut self, txn: &mut RwTxn, data: &[u8]) -> Result<Option<Outcome>> {
        let cmd = self.begin_command(data)?;
        let replaying = !self.replay.is_empty();
        let r = self.apply_one(txn, &cmd);
        self.global = false;
        let r = r?;
        if cmd.gseq != 0 && cmd.gseq > self.gseq {
            self.gseq = cmd.gseq;
            put_sealed(&self.meta, txn, META_LAST_GLOBAL, data)?;
        }
        // A failed auth change may have taken indexes (etcd's first one
        // creates the auth directories even when the change itself fails).
        let failed = matches!(r, Some(Err(_))) && !cmd.op.is_auth();
        if replaying && (failed || !self.replay.is_empty()) {
            return Err(Error::Corrupt(format!(
                "replayed command on {} did not repeat its outcome",
                String::from_utf8_lossy(cmd.key)
            )));
        }
        Ok(r)
    }

    /// Execute one command of a sharded cluster's group (issue #14): its
    /// entry carries the etcd indexes the sequencer stamped when it was
    /// proposed, and every member executes it with them. Unlike a replay,
    /// the command may fail (a lost compare-and-swap) or need fewer
    /// indexes than stamped (an expiry): every stamped index it leaves
    /// unused becomes a placeholder event, so each member publishes the
    /// same sequence.
    pub fn execute_stamped(&mut self, txn: &mut RwTxn, data: &[u8]) -> Result<Option<Outcome>> {
        let cmd = self.begin_command(data)?;
        self.stamped = true;
        self.starved = false;
        let r = self.apply_one(txn, &cmd);
        self.stamped = false;
        self.global = false;
        let r = r?;
        if self.starved {
            return Err(Error::Corrupt(format!(
                "a command on {} needed more etcd indexes than its entry carries",
                String::from_utf8_lossy(cmd.key)
            )));
        }
        while let Some(i) = self.replay.pop() {
            self.counter.fetch_max(i, Ordering::SeqCst);
            self.pending.push(Arc::new(Event::placeholder(i)));
            self.index = self.index.max(i);
        }
        Ok(r)
    }

    /// Decode a command to execute; its recorded indexes are the ones to
    /// use, in order.
    fn begin_command<'d>(&mut self, data: &'d [u8]) -> Result<Command<'d>> {
        let Some(cmd) = Command::decode(data) else {
            return Err(Error::Corrupt("undecodable command".into()));
        };
        self.taken.clear();
        self.replay.clear();
        self.replay.extend(cmd.recorded());
        self.replay.reverse();
        Ok(cmd)
    }

    /// How many keys an expiry at `now` would remove (at most `cap`; stale
    /// index entries count too): the indexes a sequencer stamps on a SYNC.
    pub fn count_due(&self, now: i64, cap: usize) -> Result<usize> {
        let rtxn = self.env.read_txn()?;
        let skip_dirs = self.local_only();
        let mut n = 0;
        for item in self.expiry.iter(&rtxn)? {
            let (k, v) = item?;
            if expiry_time(k) > now || n >= cap.min(MAX_EXPIRE_PER_SYNC) {
                break;
            }
            let v = unseal(k, v).ok_or_else(|| bad_checksum("expiry", k))?;
            if skip_dirs && v.first() == Some(&EXP_DIR) && self.skeleton(&v[1..]) {
                continue;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Take the next etcd index for an event about to happen.
    fn reserve(&mut self) -> u64 {
        let i = match self.replay.pop() {
            Some(i) => {
                if !self.trial {
                    self.counter.fetch_max(i, Ordering::SeqCst);
                }
                i
            }
            None if self.stamped => {
                // Never take from the counter here: members would differ.
                self.starved = true;
                self.index + 1
            }
            None => self.counter.fetch_add(1, Ordering::SeqCst) + 1,
        };
        self.taken.push(i);
        self.index = i - 1;
        i
    }

    /// Give back index `i` reserved by a command that failed.
    fn release(&mut self, i: u64) {
        self.taken.pop();
        if self.trial {
            self.index = i - 1;
            return;
        }
        if self.stamped {
            // Every member leaves the same gap.
            self.pending.push(Arc::new(Event::placeholder(i)));
            self.index = i;
            return;
        }
        if self
            .counter
            .compare_exchange(i, i - 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Another shard took a later index meanwhile: leave a gap, and
            // a placeholder so the member-wide ordering does not wait on it.
            self.pending.push(Arc::new(Event::placeholder(i)));
            self.index = i;
        }
    }

    fn apply_one(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Option<Outcome>> {
        self.global = c.gseq != 0;
        if c.op == Op::Sync {
            if self.global {
                let r = self.expire_dir(txn, c)?;
                if let (Ok(e), false) = (&r, self.is_primary(c, 0)) {
                    self.not_mine.push(e.index);
                }
                return Ok(Some(r));
            }
            self.expire_until(txn, c.now)?;
            return Ok(None);
        }
        if c.op.is_auth() {
            return Ok(Some(self.apply_auth(txn, c)?));
        }
        let i = self.reserve();
        let r = match c.op {
            Op::Set => self.set(txn, c),
            Op::Create | Op::CreateUnique => self.create(txn, c),
            Op::Update => self.update(txn, c),
            Op::CompareAndSwap => self.cas(txn, c),
            Op::Delete => self.delete(txn, c),
            Op::CompareAndDelete | Op::Sync => self.cad(txn, c),
            Op::AuthCreate | Op::AuthUpdate | Op::AuthDelete | Op::AuthEnable => {
                Err(Error::Corrupt("an auth command on the keys path".into()))
            }
        }?;
        let r = match r {
            Ok(e) => Ok(e),
            Err(e) if e.code == ESCALATE => {
                self.release(i);
                return Ok(Some(Err(e)));
            }
            Err(mut e) => {
                self.release(i);
                e.index = self.index;
                Err(e)
            }
        };
        // A member-wide write is counted (and kept in history) once, by the
        // shard that owns it.
        if self.global && !self.is_primary(c, i) {
            if let Ok(e) = &r {
                self.not_mine.push(e.index);
            }
            return Ok(Some(r));
        }
        let s = &mut self.stats;
        let (ok, fail) = match c.op {
            Op::Set => (&mut s.sets_success, &mut s.sets_fail),
            Op::Create | Op::CreateUnique => (&mut s.create_success, &mut s.create_fail),
            Op::Update => (&mut s.update_success, &mut s.update_fail),
            Op::CompareAndSwap => (&mut s.cas_success, &mut s.cas_fail),
            Op::Delete => (&mut s.delete_success, &mut s.delete_fail),
            Op::CompareAndDelete | Op::Sync => (&mut s.cad_success, &mut s.cad_fail),
            Op::AuthCreate | Op::AuthUpdate | Op::AuthDelete | Op::AuthEnable => {
                return Ok(Some(r))
            }
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
        self.find_in(txn, path, kbuf, &mut None, None, None)
    }

    /// [`Store::find`]; when `path` is missing, `missing_in` is set to the
    /// deepest directory above it and the offset of the first missing
    /// component (the last one's when only it is missing);
    /// with `keep`, the found node's stored record is copied there (one
    /// copy of a record just read, instead of a second search for it).
    fn find_in(
        &self,
        txn: &RoTxn,
        path: &[u8],
        kbuf: &mut Vec<u8>,
        missing_in: &mut Option<(Meta, usize)>,
        mut keep: Option<&mut Vec<u8>>,
        mut dirs: Option<&mut DirCache>,
    ) -> Result<std::result::Result<Found, V2Error>> {
        let mut meta = ROOT;
        let mut lkey = LKey::new();
        if path == b"/" {
            return Ok(Ok(Found {
                meta,
                lkey,
                kept: false,
            }));
        }
        let mut start = 1;
        // With the write path's cache: from the deepest directory it knows.
        let anc = dirs.as_ref().map(|_| Ancestors::of(path));
        let mut depth = 0;
        if let (Some(c), Some(anc)) = (&dirs, &anc) {
            if let Some((i, end, dir_id)) = c.deepest(path, anc) {
                meta = Meta { dir_id, ..ROOT };
                (depth, start) = (i + 1, end + 1);
            }
        }
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
                None if end != path.len()
                    && self.local_only()
                    && !self.placement.owns(&path[..end]) =>
                {
                    // A file of another shard may block the way.
                    return Ok(Err(escalate(self.placement.of_key(&path[..end]))));
                }
                None => {
                    *missing_in = Some((meta, start));
                    return Ok(Err(V2Error::new(KEY_NOT_FOUND, &path[..end], self.index)));
                }
                Some(v) => {
                    meta = decode_meta(kbuf, v)?;
                    if let (Some(c), Some(anc), true) = (&mut dirs, &anc, meta.dir) {
                        c.insert(path, anc, depth, meta.dir_id);
                    }
                    depth += 1;
                    if end == path.len() {
                        lkey.extend_from_slice(kbuf);
                        // (A large record is searched for again rather
                        // than copied.)
                        let kept = match keep.take().filter(|_| v.len() <= KEEP_MAX) {
                            Some(buf) => {
                                buf.clear();
                                buf.extend_from_slice(v);
                                true
                            }
                            None => false,
                        };
                        return Ok(Ok(Found { meta, lkey, kept }));
                    }
                }
            }
            start = end + 1;
        }
    }

    /// [`Store::find`] with the store's own key buffer.
    fn locate(&mut self, txn: &RwTxn, path: &[u8]) -> Result<std::result::Result<Found, V2Error>> {
        self.locate_in(txn, path, &mut None)
    }

    /// [`Store::find_in`] in a write transaction, with the store's own key
    /// buffer and its directory cache.
    fn locate_in(
        &mut self,
        txn: &RwTxn,
        path: &[u8],
        missing_in: &mut Option<(Meta, usize)>,
    ) -> Result<std::result::Result<Found, V2Error>> {
        let mut kbuf = std::mem::take(&mut self.kbuf);
        let mut fval = std::mem::take(&mut self.fval);
        let mut dirs = std::mem::take(&mut self.dirs);
        let found = self.find_in(
            txn,
            path,
            &mut kbuf,
            missing_in,
            Some(&mut fval),
            Some(&mut dirs),
        );
        (self.kbuf, self.fval, self.dirs) = (kbuf, fval, dirs);
        found
    }

    /// [`Store::find_in`] in a read transaction (a view: no cache), with
    /// the store's own key buffer.
    fn lookup(&mut self, txn: &RoTxn, path: &[u8]) -> Result<std::result::Result<Found, V2Error>> {
        let mut kbuf = std::mem::take(&mut self.kbuf);
        let mut fval = std::mem::take(&mut self.fval);
        let found = self.find_in(txn, path, &mut kbuf, &mut None, Some(&mut fval), None);
        (self.kbuf, self.fval) = (kbuf, fval);
        found
    }

    /// The stored record of `f`, a node just looked up: the copy its
    /// lookup kept, or read again.
    fn record<'a>(&'a self, txn: &'a RoTxn, f: &Found) -> Result<&'a [u8]> {
        if f.kept {
            Ok(&self.fval)
        } else {
            self.nodes.get(txn, &f.lkey)?.ok_or_else(corrupt)
        }
    }

    /// Render `found` non-recursively into `self.prev` (a prevNode).
    fn render_prev(&mut self, txn: &RoTxn, path: &[u8], found: &Found, now: i64) -> Result<()> {
        let mut prev = std::mem::take(&mut self.prev);
        prev.clear();
        let r = self.render_prev_into(txn, path, found, now, &mut prev);
        self.prev = prev;
        r
    }

    fn render_prev_into(
        &self,
        txn: &RoTxn,
        path: &[u8],
        found: &Found,
        now: i64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let value = if found.meta.dir || found.lkey.is_empty() {
            None
        } else {
            Some(rec(&found.lkey, self.record(txn, found)?)?.value)
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
        .write(out);
        Ok(())
    }

    /// Execute `data` in a transaction that is then aborted: the outcome a
    /// member-wide operation would have on this shard, changing nothing but
    /// the counter, which the coordinator restores (every shard is parked).
    pub fn trial(&mut self, data: &[u8]) -> Result<Option<Outcome>> {
        let Some(cmd) = Command::decode(data) else {
            return Err(Error::Corrupt("undecodable command".into()));
        };
        let saved = (self.index, self.next_dir_id, self.stats, self.pending.len());
        let unit_id = self.next_unit_id;
        let env = self.env.clone();
        let mut txn = env.write_txn()?;
        self.taken.clear();
        self.replay.clear();
        self.replay.extend(cmd.recorded());
        self.replay.reverse();
        self.trial = true;
        let r = self.apply_one(&mut txn, &cmd);
        self.trial = false;
        txn.abort();
        self.dirs.clear();
        self.global = false;
        (self.index, self.next_dir_id, self.stats) = (saved.0, saved.1, saved.2);
        self.next_unit_id = unit_id;
        self.pending.truncate(saved.3);
        r
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

fn corrupt() -> Error {
    Error::Corrupt("undecodable node record".into())
}

/// Decode the node record stored under `k`, its checksum checked.
#[inline]
fn rec<'v>(k: &[u8], v: &'v [u8]) -> Result<NodeRec<'v>> {
    NodeRec::decode(k, v).ok_or_else(|| bad_checksum("node", k))
}

fn decode_meta(k: &[u8], v: &[u8]) -> Result<Meta> {
    let r = rec(k, v)?;
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

/// Put `k` into `db` after its last record, as a history record (indexes
/// only grow) goes: LMDB then skips the search and fills pages instead of
/// splitting them in half (half the pages, fewer to copy per batch). A
/// key that does not sort last is refused with `KeyExist` and nothing
/// written, and is then put the usual way.
fn append_or_put(db: &Database<Bytes, Bytes>, txn: &mut RwTxn, k: &[u8], v: &[u8]) -> Result<()> {
    match db.put_with_flags(txn, heed::PutFlags::APPEND, k, v) {
        Err(heed::Error::Mdb(heed::MdbError::KeyExist)) => db.put(txn, k, v)?,
        r => r?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shard store in `dir` with a small map and history.
    fn open_store(dir: &Path) -> Store {
        let counter = Arc::new(AtomicU64::new(0));
        let opts = Options {
            map_size: 1 << 26,
            history: 10,
        };
        Store::open(dir, &opts, Placement::single(), counter).unwrap()
    }

    fn set(store: &mut Store, raft_index: u64, value: &str) {
        set_key(store, raft_index, b"/a", value);
    }

    fn set_key(store: &mut Store, raft_index: u64, key: &[u8], value: &str) {
        let mut c = Command::new(Op::Set, key, 1);
        c.value = value.as_bytes();
        apply_cmd(store, raft_index, &c);
    }

    /// Apply `c` alone as raft entry `raft_index`.
    fn apply_cmd(store: &mut Store, raft_index: u64, c: &Command) {
        let mut data = Vec::new();
        c.encode(&mut data);
        let mut out = Vec::new();
        store
            .apply_batch(std::iter::once((raft_index, 1, &data[..])), &mut out)
            .unwrap();
    }

    fn read(store: &mut Store, at: ReadAt) -> Result<String> {
        let mut out = Vec::new();
        store
            .get(0, b"/a", false, false, 1, None, at, usize::MAX, &mut out)?
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let v = text.split("\"value\":\"").nth(1).unwrap();
        Ok(v[..v.find('"').unwrap()].to_string())
    }

    /// History records are appended; one that does not sort last (or
    /// replaces one) still lands, and the transaction stays usable.
    #[test]
    fn history_records_out_of_order_are_put_the_usual_way() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_store(dir.path());
        let mut txn = s.env.write_txn().unwrap();
        for k in [1u64, 3, 2, 3, 4] {
            append_or_put(&s.history, &mut txn, &k.to_be_bytes(), &[k as u8]).unwrap();
        }
        txn.commit().unwrap();
        let rtxn = s.env.read_txn().unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>)> = s
            .history
            .iter(&rtxn)
            .unwrap()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = (1u64..=4)
            .map(|k| (k.to_be_bytes().to_vec(), vec![k as u8]))
            .collect();
        assert_eq!(got, want);
    }

    /// A file's expiry entry comes due no later than the file: a set that
    /// moves its time later leaves the entry; one that moves it earlier,
    /// or gives a TTL to a file without one, writes a new entry.
    #[test]
    fn a_set_over_a_file_keeps_an_entry_due_no_later_than_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        let t = |secs: i64| MIN_EXPIRE + secs * 1_000_000_000;
        let mut raft = 0;
        let mut put = |s: &mut Store, key: &[u8], expire: Option<i64>| {
            let mut c = Command::new(Op::Set, key, 1);
            c.value = b"v";
            c.expire = expire;
            raft += 1;
            apply_cmd(s, raft, &c);
        };
        let entries = |s: &Store| -> Vec<i64> {
            let txn = s.env.read_txn().unwrap();
            s.expiry
                .iter(&txn)
                .unwrap()
                .map(|e| expiry_time(e.unwrap().0))
                .collect()
        };
        put(&mut s, b"/d/e/a", Some(t(10)));
        put(&mut s, b"/d/e/a", Some(t(20)));
        put(&mut s, b"/d/e/b", Some(t(15)));
        assert_eq!(entries(&s), vec![t(10), t(15)], "a keeps its early entry");
        put(&mut s, b"/d/e/b", Some(t(5)));
        assert_eq!(
            entries(&s),
            vec![t(5), t(10)],
            "b's earlier time: a new entry"
        );
        put(&mut s, b"/d/e/a", None);
        put(&mut s, b"/d/e/c", None);
        put(&mut s, b"/d/e/c", Some(t(7)));
        assert_eq!(entries(&s), vec![t(5), t(7), t(10)]);
        assert_eq!(s.next_expiry().unwrap(), Some(t(5)));
    }

    /// A SYNC expires what is due by its clock, in the order of the files'
    /// times (etcd's) whatever the order of their entries, moves the
    /// entries of files refreshed since and drops those of files gone or
    /// without a TTL; nothing but an expiry takes an etcd index.
    #[test]
    fn a_sync_expires_by_the_files_times_and_moves_early_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        let t = |secs: i64| MIN_EXPIRE + secs * 1_000_000_000;
        let mut raft = 0;
        let mut apply = |s: &mut Store, c: &Command| -> Vec<(String, u64)> {
            raft += 1;
            apply_cmd(s, raft, c);
            let mut events = Vec::new();
            s.take_events(&mut events);
            events
                .iter()
                .map(|e| (String::from_utf8_lossy(e.key()).into_owned(), e.index))
                .collect()
        };
        let set = |key: &'static [u8], expire: Option<i64>| {
            let mut c = Command::new(Op::Set, key, 1);
            c.value = b"v";
            c.expire = expire;
            c
        };
        let sync = |now: i64| Command::new(Op::Sync, b"/", now);
        apply(&mut s, &set(b"/b", Some(t(8)))); // entry at 8
        apply(&mut s, &set(b"/b", Some(t(12)))); // still at 8
        apply(&mut s, &set(b"/a", Some(t(10))));
        apply(&mut s, &set(b"/c", Some(t(9))));
        apply(&mut s, &set(b"/c", None)); // its entry at 9 is stale
        apply(&mut s, &set(b"/h", Some(t(3))));
        apply(&mut s, &set(b"/h", Some(t(30)))); // refreshed: entry at 3
        apply(&mut s, &set(b"/gone", Some(t(4))));
        apply(&mut s, &Command::new(Op::Delete, b"/gone", 1));
        let index = s.index;
        // Due by 5: nothing expires; /h's entry moves to 30, /gone's goes.
        assert_eq!(apply(&mut s, &sync(t(5))), vec![]);
        assert_eq!(s.index, index, "no index taken");
        assert_eq!(s.next_expiry().unwrap(), Some(t(8)));
        // Due by 15: /a (10) before /b (12), though /b's entry (8) came
        // first; /c's entry (9) is stale.
        let got = apply(&mut s, &sync(t(15)));
        assert_eq!(
            got,
            vec![("/a".to_string(), index + 1), ("/b".to_string(), index + 2)]
        );
        assert_eq!(s.next_expiry().unwrap(), Some(t(30)));
        assert_eq!(apply(&mut s, &sync(t(29))), vec![]);
        let got = apply(&mut s, &sync(t(31)));
        assert_eq!(got, vec![("/h".to_string(), index + 3)]);
        assert_eq!(s.next_expiry().unwrap(), None);
    }

    /// A format-2 store (exact expiry entries) opens and is marked format
    /// 3 from then on; a later format is refused with its number.
    #[test]
    fn a_format_2_store_is_marked_3_and_a_later_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mark = |s: Store, f: u64| {
            let mut wtxn = s.env.write_txn().unwrap();
            put_sealed(&s.meta, &mut wtxn, META_FORMAT, &f.to_le_bytes()).unwrap();
            wtxn.commit().unwrap();
            let env = s.env.clone();
            drop(s);
            env.prepare_for_closing().wait();
        };
        let format = |s: &Store| {
            let rtxn = s.env.read_txn().unwrap();
            meta_u64(&s.meta, &rtxn, META_FORMAT).unwrap()
        };
        let mut s = open_store(dir.path());
        set(&mut s, 1, "one");
        mark(s, 2);
        let mut s = open_store(dir.path());
        assert_eq!(format(&s), Some(FORMAT));
        assert_eq!(read(&mut s, ReadAt::Now).unwrap(), "one");
        mark(s, FORMAT + 1);
        let counter = Arc::new(AtomicU64::new(0));
        let opts = Options {
            map_size: 1 << 26,
            history: 10,
        };
        let err = Store::open(dir.path(), &opts, Placement::single(), counter)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("later kardia"), "{err}");
    }

    /// A sharded cluster's store keeps every entry at its file's time.
    #[test]
    fn exact_entries_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        s.exact_expiry = true;
        let t = |secs: i64| MIN_EXPIRE + secs * 1_000_000_000;
        for (i, secs) in [10, 20].into_iter().enumerate() {
            let mut c = Command::new(Op::Set, b"/a", 1);
            c.expire = Some(t(secs));
            apply_cmd(&mut s, i as u64 + 1, &c);
        }
        assert_eq!(s.next_expiry().unwrap(), Some(t(20)));
    }

    /// Writes to one key in one transaction, with a sibling's in between:
    /// each `prevNode` (and each compare) sees the value the write before
    /// it left, never the copy an earlier lookup kept.
    #[test]
    fn writes_in_one_batch_see_each_others_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        let cmd = |op, key: &'static [u8], value: &'static [u8]| {
            let mut c = Command::new(op, key, 1);
            c.value = value;
            c
        };
        let mut cas = cmd(Op::CompareAndSwap, b"/d/a", b"3");
        cas.prev_value = b"2";
        let mut stale = cmd(Op::CompareAndSwap, b"/d/a", b"x");
        stale.prev_value = b"2";
        let mut cad = cmd(Op::CompareAndDelete, b"/d/a", b"");
        cad.prev_value = b"4";
        let batch = [
            cmd(Op::Set, b"/d/a", b"1"),
            cmd(Op::Set, b"/d/b", b"b1"),
            cmd(Op::Set, b"/d/a", b"2"),
            cas,
            cmd(Op::Set, b"/d/b", b"b2"),
            stale,
            cmd(Op::Update, b"/d/a", b"4"),
            cad,
            cmd(Op::Set, b"/d/a", b"5"),
        ];
        let data: Vec<Vec<u8>> = batch
            .iter()
            .map(|c| {
                let mut d = Vec::new();
                c.encode(&mut d);
                d
            })
            .collect();
        let mut out = Vec::new();
        s.apply_batch(
            data.iter()
                .enumerate()
                .map(|(i, d)| (i as u64 + 1, 1, &d[..])),
            &mut out,
        )
        .unwrap();
        let prev = |o: &Outcome| match o {
            Ok(e) => {
                let json = String::from_utf8(e.json().to_vec()).unwrap();
                json.split("\"prevNode\":")
                    .nth(1)
                    .map(|p| p.split("\"value\":\"").nth(1).unwrap()[..2].to_string())
                    .unwrap_or_default()
            }
            Err(e) => format!("error {}", e.code),
        };
        let got: Vec<String> = out.iter().map(|(_, o)| prev(o)).collect();
        let want = ["", "", "1\"", "2\"", "b1", "error 101", "3\"", "4\"", ""];
        assert_eq!(got, want);
    }

    /// A record too large to keep a copy of is read again: prevNode and
    /// GET still show it whole.
    #[test]
    fn a_large_record_is_read_again_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        let big = "b".repeat(KEEP_MAX + 100);
        set(&mut s, 1, &big);
        assert_eq!(read(&mut s, ReadAt::Now).unwrap(), big);
        let mut c = Command::new(Op::Set, b"/a", 1);
        c.value = b"small";
        apply_cmd(&mut s, 2, &c);
        let mut events = Vec::new();
        s.take_events(&mut events);
        let json = String::from_utf8(events.last().unwrap().json().to_vec()).unwrap();
        let prev = json.split("\"prevNode\":").nth(1).unwrap();
        assert!(prev.contains(&format!("\"value\":\"{big}\"")), "{prev}");
    }

    /// A read sees the newest view whose writes are delivered, waits when
    /// none is, and a stopped shard's reads never see its undurable batch.
    #[test]
    fn reads_see_delivered_views_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        set(&mut s, 1, "one"); // index 4
        set(&mut s, 2, "two"); // index 5
        assert_eq!(
            s.select_view(3),
            Err(4),
            "nothing delivered yet: wait for 4"
        );
        assert_eq!(s.select_view(4), Ok(()));
        assert_eq!(read(&mut s, ReadAt::View).unwrap(), "one");
        assert_eq!(read(&mut s, ReadAt::Now).unwrap(), "two");
        assert_eq!(s.select_view(5), Ok(()));
        assert_eq!(read(&mut s, ReadAt::View).unwrap(), "two");
        // Index 6 is executed, then the shard stops before it is durable.
        set(&mut s, 3, "three");
        s.freeze_views(6);
        assert_eq!(s.select_view(6), Ok(()));
        assert_eq!(read(&mut s, ReadAt::View).unwrap(), "two");
        assert!(
            read(&mut s, ReadAt::Now).is_err(),
            "a stopped shard reads views only"
        );
    }

    /// A listing past the read's limit answers OVER_LIMIT, leaves the
    /// output as it was and counts nothing; without a limit it is whole.
    #[test]
    fn a_listing_past_the_limit_is_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        let value = "v".repeat(100);
        for i in 0..20u64 {
            set_key(&mut s, i + 1, format!("/d/e/k{i:02}").as_bytes(), &value);
        }
        let mut get = |limit: usize, recursive: bool| {
            let mut out = b"kept".to_vec();
            let r = s
                .get(
                    0,
                    b"/d",
                    recursive,
                    false,
                    1,
                    None,
                    ReadAt::Now,
                    limit,
                    &mut out,
                )
                .unwrap();
            (r.map_err(|e| e.code), out, s.stats.gets_success)
        };
        // 20 values of 100 bytes do not fit in 1000 bytes.
        let (r, out, gets) = get(1000, true);
        assert_eq!(r, Err(OVER_LIMIT));
        assert_eq!(out, b"kept", "a partial listing was left in the output");
        assert_eq!(gets, 0);
        // Non-recursive, the listing is one small directory node.
        let (r, out, gets) = get(1000, false);
        assert!(r.is_ok(), "{r:?}");
        assert!(out.len() < 1000 && gets == 1);
        let (r, out, gets) = get(usize::MAX, true);
        assert!(r.is_ok(), "{r:?}");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches(&value).count(), 20, "{text}");
        assert_eq!(gets, 2);
    }

    /// `/d` listed at once (index 9, now 1).
    fn listing(s: &mut Store, recursive: bool, sorted: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let at = ReadAt::Now;
        let r = s.get(
            9,
            b"/d",
            recursive,
            sorted,
            1,
            None,
            at,
            usize::MAX,
            &mut out,
        );
        assert_eq!(r.unwrap().unwrap(), 9);
        out
    }

    /// A listing rendered in slices, of any size, is byte for byte the
    /// listing rendered at once — nested directories, hidden keys and
    /// over-long names in sorted listings included — and writes committed
    /// between its slices do not show in it.
    #[test]
    fn a_listing_in_slices_is_the_listing_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        let long = "n".repeat(700);
        let mut n = 0;
        let mut put = |s: &mut Store, key: String| {
            n += 1;
            set_key(s, n, key.as_bytes(), &format!("v<{n}>\"\u{e9}"));
        };
        // Directories created out of name order: an unsorted listing
        // writes them in creation order, after their directory's files.
        for a in [3, 0, 5, 1, 4, 2] {
            for b in [2, 0, 3, 1] {
                put(&mut s, format!("/d/a{a}/b{b}/leaf"));
                put(&mut s, format!("/d/a{a}/f{b}"));
            }
            put(&mut s, format!("/d/a{a}/_hidden"));
        }
        put(&mut s, format!("/d/a3/{long}"));
        put(&mut s, "/d/z".to_string());
        for (recursive, sorted) in [(true, false), (true, true), (false, false), (false, true)] {
            for slice in [1, 10, 100, 333, 4096, usize::MAX] {
                let whole = listing(&mut s, recursive, sorted);
                let mut sl = s
                    .begin_slices(9, b"/d", recursive, sorted, 1, ReadAt::Now)
                    .unwrap();
                let mut out = Vec::new();
                let mut slices = 0;
                let r = loop {
                    slices += 1;
                    assert!(
                        slices < 100_000,
                        "no progress: {}",
                        String::from_utf8_lossy(&out[out.len().saturating_sub(300)..])
                    );
                    if let Some(r) = s.get_slice(&mut sl, slice, &mut out).unwrap() {
                        break r;
                    }
                    // The store moves on between slices.
                    if slices <= 3 {
                        put(&mut s, format!("/d/a{}/new{slice}-{slices}", slices % 6));
                    }
                };
                assert_eq!(r.unwrap(), 9);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&whole),
                    "recursive={recursive} sorted={sorted} slice={slice} ({slices} slices)"
                );
                if slice == 1 && recursive {
                    assert!(slices > 40, "only {slices} slices");
                }
            }
        }
    }

    /// An unsorted recursive listing writes a directory's files first and
    /// then its subdirectories in the order they were created (their
    /// children's LMDB ranges in ascending order); a sorted one is in name
    /// order.
    #[test]
    fn an_unsorted_listing_writes_files_then_subdirectories_in_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        for (n, key) in ["/d/c/x", "/d/f2", "/d/a/x", "/d/b/x", "/d/f1"]
            .iter()
            .enumerate()
        {
            set_key(&mut s, n as u64 + 1, key.as_bytes(), "v");
        }
        let keys = |s: &mut Store, sorted| {
            let out = listing(s, true, sorted);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let mut keys = Vec::new();
            for c in v["node"]["nodes"].as_array().unwrap() {
                keys.push(c["key"].as_str().unwrap().to_string());
                for g in c["nodes"].as_array().into_iter().flatten() {
                    keys.push(g["key"].as_str().unwrap().to_string());
                }
            }
            keys
        };
        let unsorted = [
            "/d/f1", "/d/f2", "/d/c", "/d/c/x", "/d/a", "/d/a/x", "/d/b", "/d/b/x",
        ];
        assert_eq!(keys(&mut s, false), unsorted);
        let sorted = [
            "/d/a", "/d/a/x", "/d/b", "/d/b/x", "/d/c", "/d/c/x", "/d/f1", "/d/f2",
        ];
        assert_eq!(keys(&mut s, true), sorted);
    }

    /// Every node of the tree, flattened: key, value, indexes.
    fn flatten(v: &serde_json::Value, out: &mut Vec<String>) {
        for c in v["nodes"].as_array().into_iter().flatten() {
            out.push(format!(
                "{} {} {}",
                c["key"], c["value"], c["modifiedIndex"]
            ));
            flatten(c, out);
        }
    }

    /// An unsorted recursive listing reads deferred directories' children
    /// by one cursor stepping forwards: it holds every node of the sorted
    /// listing exactly once, whatever order the directories were created
    /// in — a subdirectory created after its parent's later siblings,
    /// empty directories, other directories' entries between theirs.
    #[test]
    fn an_unsorted_listing_holds_every_node_whatever_the_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        let mut n = 0;
        let mut next = |s: &mut Store, key: String, dir: bool| {
            n += 1;
            let mut c = Command::new(Op::Set, key.as_bytes(), 1);
            c.dir = dir;
            c.value = if dir { b"" } else { b"v" };
            apply_cmd(s, n, &c);
        };
        let mut x: u64 = 7;
        for i in 0..3000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b, c) = ((x >> 60) % 9, (x >> 50) % 7, (x >> 40) % 5);
            let key = match i % 6 {
                // Entries of a directory outside the listing, in between.
                0 => format!("/e/{:x}/{}", x >> 56, i),
                1 => format!("/d/{a}/{b}/{c}/f{i}"),
                2 => format!("/d/{a}/f{i}"),
                3 => format!("/d/{a}/{b}/f{i}"),
                4 => format!("/d/{a}/{b}/{c}/e{}", i % 11),
                _ => {
                    next(&mut s, format!("/d/{a}/{b}/empty{i}"), true);
                    continue;
                }
            };
            next(&mut s, key, false);
        }
        let nodes = |s: &mut Store, sorted| {
            let v: serde_json::Value = serde_json::from_slice(&listing(s, true, sorted)).unwrap();
            let mut all = Vec::new();
            flatten(&v["node"], &mut all);
            all
        };
        let (sorted, mut unsorted) = (nodes(&mut s, true), nodes(&mut s, false));
        assert!(sorted.len() > 2500, "{} nodes", sorted.len());
        assert_ne!(unsorted, sorted, "created out of order, listed in order");
        unsorted.sort();
        let mut want = sorted.clone();
        want.sort();
        assert_eq!(unsorted, want);
    }

    /// A directory of subdirectories only writes nothing while its scan
    /// defers them: the scan still pauses once a slice's worth is
    /// deferred, so it holds the executor no longer than a slice, and a
    /// limited read counts what they will write (a listing that fits its
    /// limit exactly is still whole).
    #[test]
    fn a_scan_of_subdirectories_pauses_like_a_slice_of_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        for i in 0..300u64 {
            let key = format!("/d/{:08x}/i", i.wrapping_mul(2654435761) % (1 << 32));
            set_key(&mut s, i + 1, key.as_bytes(), "v");
        }
        let whole = listing(&mut s, true, false);
        for (limit, fits) in [(whole.len(), true), (whole.len() / 2, false)] {
            let (mut out, at) = (Vec::new(), ReadAt::Now);
            let r = s.get(9, b"/d", true, false, 1, None, at, limit, &mut out);
            assert_eq!(r.unwrap().is_ok(), fits, "limit {limit} of {}", whole.len());
        }
        let mut sl = s
            .begin_slices(9, b"/d", true, false, 1, ReadAt::Now)
            .unwrap();
        let mut out = Vec::new();
        assert!(s.get_slice(&mut sl, 2000, &mut out).unwrap().is_none());
        let first = String::from_utf8_lossy(&out).to_string();
        assert!(
            !first.contains("\"nodes\""),
            "the first slice wrote {first}"
        );
        while s.get_slice(&mut sl, 2000, &mut out).unwrap().is_none() {}
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&whole)
        );
    }

    /// A sorted recursive listing is in name order when over-long names
    /// (kept under a hashed LMDB key) sit deep inside it, and an unsorted
    /// one holds the same nodes.
    #[test]
    fn sorted_listings_order_over_long_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_store(dir.path());
        let long = "n".repeat(700);
        let mut keys = vec!["/d/a".to_string(), "/d/z".to_string()];
        for tail in ["e", "b", "d", "a", "c"] {
            keys.push(format!("/d/s/{long}{tail}"));
        }
        for (i, k) in keys.iter().enumerate() {
            set_key(&mut s, i as u64 + 1, k.as_bytes(), "v");
        }
        let mut get = |sorted: bool| {
            let mut out = Vec::new();
            s.get(
                0,
                b"/d",
                true,
                sorted,
                1,
                None,
                ReadAt::Now,
                usize::MAX,
                &mut out,
            )
            .unwrap()
            .unwrap();
            let text = String::from_utf8(out).unwrap();
            let mut at: Vec<(usize, &String)> = keys
                .iter()
                .map(|k| (text.find(&format!("\"{k}\"")).unwrap(), k))
                .collect();
            at.sort();
            at.into_iter().map(|(_, k)| k.clone()).collect::<Vec<_>>()
        };
        let mut want = keys.clone();
        want.sort();
        assert_eq!(get(true), want);
        let mut unsorted = get(false);
        unsorted.sort();
        assert_eq!(unsorted, want);
    }
}
