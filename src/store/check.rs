//! Offline verification of one shard's LMDB store (`kardia check`).
//!
//! Opens the environment read-only, reads every record of the three
//! databases and checks what a running shard relies on: each value's
//! checksum, that node records decode, that every node's parent directory
//! exists (no orphans), that the TTL index and the event history are
//! intact, and that the store's own positions are readable. Nothing is written; what it finds
//! leaves as a [`Report`].

use std::collections::HashSet;
use std::path::Path;

use heed::types::Bytes;
use heed::{Database, EnvFlags, EnvOpenOptions};

use super::node::{unseal, NodeRec};
use super::Event;
use super::{Error, Result, META_APPLIED, META_FORMAT, META_INDEX};

/// Problems listed one by one; beyond this many only the count grows.
const MAX_LISTED: usize = 50;

/// What [`verify`] found in one store.
#[derive(Debug, Default)]
pub struct Report {
    pub dirs: u64,
    pub files: u64,
    pub ttls: u64,
    /// Raft (index, term) the store has applied, and its last etcd index.
    pub applied: (u64, u64),
    pub index: u64,
    /// Damaged or inconsistent records, described (at most [`MAX_LISTED`]).
    pub problems: Vec<String>,
    /// How many problems there were in all.
    pub problem_count: u64,
}

impl Report {
    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(what);
        }
    }

    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }
}

fn show(k: &[u8]) -> String {
    let mut s = String::new();
    for &b in k.iter().take(64) {
        if b.is_ascii_graphic() {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if k.len() > 64 {
        s.push('…');
    }
    s
}

/// Verify the store in `dir` (a shard's `lmdb` folder) without changing it.
pub fn verify(dir: &Path) -> Result<Report> {
    if !dir.join("data.mdb").exists() {
        return Err(Error::Corrupt(format!("{}: no data.mdb", dir.display())));
    }
    let mut eo = EnvOpenOptions::new();
    eo.map_size(1 << 40).max_dbs(4);
    // SAFETY: opened read-only, once, in a process of its own.
    let env = unsafe {
        eo.flags(EnvFlags::READ_ONLY);
        eo.open(dir)?
    };
    let rtxn = env.read_txn()?;
    let mut r = Report::default();
    let open = |name: &str| -> Result<Database<Bytes, Bytes>> {
        env.open_database(&rtxn, Some(name))?
            .ok_or_else(|| Error::Corrupt(format!("no {name} database")))
    };
    let (nodes, expiry, meta) = (open("nodes")?, open("expiry")?, open("meta")?);

    for item in meta.iter(&rtxn)? {
        let (k, v) = item?;
        match unseal(k, v) {
            None => r.problem(format!("meta {}: checksum mismatch", show(k))),
            Some(v) if k == META_APPLIED && v.len() == 16 => {
                let u = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
                r.applied = (u(&v[..8]), u(&v[8..]));
            }
            Some(v) if k == META_INDEX && v.len() == 8 => {
                r.index = u64::from_le_bytes(v.try_into().unwrap_or_default());
            }
            Some(_) => {}
        }
    }
    if meta.get(&rtxn, META_FORMAT)?.is_none() {
        r.problem("meta: no format record (written by an earlier kardia?)".into());
    }

    // Directory ids that exist (0 is the root); parents seen on records.
    let mut dir_ids: HashSet<u64> = HashSet::from([0]);
    let mut parents: Vec<(u64, Vec<u8>)> = Vec::new();
    for item in nodes.iter(&rtxn)? {
        let (k, v) = item?;
        let Some(rec) = NodeRec::decode(k, v) else {
            r.problem(format!("node {}: checksum mismatch or bad record", show(k)));
            continue;
        };
        if k.len() < 8 {
            r.problem(format!("node {}: short key", show(k)));
            continue;
        }
        if rec.dir {
            r.dirs += 1;
            if !dir_ids.insert(rec.dir_id) {
                r.problem(format!(
                    "node {}: directory id {} reused",
                    show(k),
                    rec.dir_id
                ));
            }
        } else {
            r.files += 1;
        }
        let parent = u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
        if parents.last().is_none_or(|(p, _)| *p != parent) {
            parents.push((parent, k.to_vec()));
        }
    }
    for (p, k) in parents {
        if !dir_ids.contains(&p) {
            r.problem(format!(
                "node {}: its directory (id {p}) does not exist (orphan)",
                show(&k)
            ));
        }
    }

    for item in expiry.iter(&rtxn)? {
        let (k, v) = item?;
        r.ttls += 1;
        if k.len() < 8 || unseal(k, v).is_none() {
            r.problem(format!("ttl index {}: checksum mismatch", show(k)));
        }
    }
    if let Some(history) = env.open_database::<Bytes, Bytes>(&rtxn, Some("history"))? {
        for item in history.iter(&rtxn)? {
            let (k, v) = item?;
            let index = <[u8; 8]>::try_from(k).map(u64::from_be_bytes).unwrap_or(0);
            if unseal(k, v).and_then(|v| Event::decode(index, v)).is_none() {
                r.problem(format!("event history {index}: checksum mismatch"));
            }
        }
    }
    Ok(r)
}

/// Verify the store in `dir` by running `exe check DIR` (the kardia binary)
/// in a child process: `Ok` when it reports the store sound, else what it
/// said (or the signal that killed it). Blocking: call it off the executor.
pub fn verify_in_child(exe: &Path, dir: &Path) -> std::result::Result<(), String> {
    let out = std::process::Command::new(exe)
        .arg("check")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} check: {e}", exe.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stdout);
    let why = said
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|l| l.contains("DAMAGED") || l.contains("UNREADABLE") || l.contains("check:"))
        .take(5)
        .collect::<Vec<_>>()
        .join("; ");
    Err(format!("{} ({})", out.status, why))
}
