//! `kardia reshard --data-dir DIR --shards N [--unit-depth K]`: change a
//! stopped member's shard count or placement-unit depth, offline.
//!
//! Holds the data dir's lock (a running member holds it too), brings every
//! old shard's store up to date with its log (the replay and member-wide
//! roll-forward a start would do), copies every node into new stores placed
//! by the new rule ([`crate::store::reshard`]), syncs them, and swaps them
//! in: old shards and identity move to `DIR/reshard.old` (kept as a backup
//! for the operator to remove), the new ones in. Each step of the swap is a
//! rename recorded by a marker file, so a crash in the middle is completed
//! by running the command again; a start in between refuses the data dir
//! (no identity file) rather than serve half of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::storage::identity::{self, Identity};
use crate::store::{self, Options, Placement, Store};

const NEW: &str = "reshard.new";
const OLD: &str = "reshard.old";
/// In `reshard.new`: the new stores are complete and synced.
const COMPLETE: &str = "complete";
/// In `reshard.new`: every old shard has moved to `reshard.old`.
const OLD_MOVED: &str = "old-moved";

/// Reshard `dir` to `shards` shards (and `unit_depth`, else the recorded
/// depth), printing what was done.
pub fn run(dir: &Path, shards: usize, unit_depth: Option<usize>) -> Result<(), String> {
    let new = dir.join(NEW);
    if !dir.join(identity::FILE).exists() && new.join(COMPLETE).exists() {
        println!("completing an interrupted reshard of {}", dir.display());
        return swap(dir);
    }
    let _lock = identity::lock(dir)?;
    let id = identity::read(dir)?;
    let old_depth = id.unit_depth.unwrap_or(0);
    let depth = unit_depth.unwrap_or(old_depth);
    if id.shards == shards && old_depth == depth {
        println!(
            "{}: already {shards} shard(s) at unit depth {depth}; nothing to do",
            dir.display()
        );
        return Ok(());
    }
    if dir.join(OLD).exists() {
        return Err(format!(
            "{} holds an earlier reshard's backup: remove it first",
            dir.join(OLD).display()
        ));
    }
    if new.exists() {
        std::fs::remove_dir_all(&new).map_err(|e| format!("{}: {e}", new.display()))?;
    }
    let counter = Arc::new(AtomicU64::new(0));
    let opts = Options::default();
    // 1. The old shards, up to date.
    let mut old = Vec::with_capacity(id.shards);
    let mut global_ops = BTreeMap::new();
    for i in 0..id.shards {
        let sdir = dir.join(format!("shard-{i}"));
        let placement = Placement {
            shard: i,
            shards: id.shards,
            unit_depth: old_depth,
        };
        let mut s = Store::open(&sdir.join("lmdb"), &opts, placement, counter.clone())
            .map_err(|e| format!("shard {i}: {e}"))?;
        let ops = crate::raft::replay_offline(&mut s, &sdir.join("wal"))
            .map_err(|e| format!("shard {i}: {e}"))?;
        global_ops.extend(ops);
        old.push(s);
    }
    let ops: Vec<(u64, Vec<u8>)> = global_ops.into_iter().collect();
    for (i, s) in old.iter_mut().enumerate() {
        let n =
            crate::raft::roll_forward_offline(s, &ops).map_err(|e| format!("shard {i}: {e}"))?;
        if n > 0 {
            println!("shard {i}: completed {n} member-wide operation(s) a crash interrupted");
        }
    }
    // 2. The new shards, filled and synced.
    let mut fresh = Vec::with_capacity(shards);
    for j in 0..shards {
        let sdir = new.join(format!("shard-{j}"));
        std::fs::create_dir_all(sdir.join("wal"))
            .map_err(|e| format!("{}: {e}", sdir.display()))?;
        let placement = Placement {
            shard: j,
            shards,
            unit_depth: depth,
        };
        let s = Store::open(&sdir.join("lmdb"), &opts, placement, counter.clone())
            .map_err(|e| format!("new shard {j}: {e}"))?;
        fresh.push(s);
    }
    let carry = [crate::raft::META_MEMBERS, crate::raft::META_CONF];
    let copied = store::reshard::copy_all(&old, &mut fresh, &carry).map_err(|e| e.to_string())?;
    for s in &fresh {
        store::checkpoint(s.env())().map_err(|e| e.to_string())?;
    }
    drop(fresh);
    drop(old);
    identity::write(
        &new,
        &Identity {
            shards,
            unit_depth: Some(depth),
            ..id.clone()
        },
    )?;
    mark(&new, COMPLETE)?;
    println!(
        "copied {} directories, {} files and {} history events at index {}",
        copied.dirs, copied.files, copied.events, copied.index
    );
    // 3. The swap.
    swap(dir)?;
    println!(
        "{}: {} shard(s) at unit depth {old_depth} -> {shards} shard(s) at unit depth {depth}; \
         the old shards are kept in {} (remove it once the member runs)",
        dir.display(),
        id.shards,
        dir.join(OLD).display()
    );
    Ok(())
}

/// Move the old shards and identity to `reshard.old`, then the complete new
/// ones in. Safe to run again after a crash at any point.
fn swap(dir: &Path) -> Result<(), String> {
    let (new, old) = (dir.join(NEW), dir.join(OLD));
    if !new.join(OLD_MOVED).exists() {
        std::fs::create_dir_all(&old).map_err(|e| format!("{}: {e}", old.display()))?;
        for name in shard_dirs(dir)?
            .into_iter()
            .chain([PathBuf::from(identity::FILE)])
        {
            let from = dir.join(&name);
            if from.exists() {
                rename(&from, &old.join(&name))?;
            }
        }
        sync_dir(&old)?;
        sync_dir(dir)?;
        mark(&new, OLD_MOVED)?;
    }
    // The identity last: it makes the data dir usable again.
    for name in shard_dirs(&new)? {
        rename(&new.join(&name), &dir.join(&name))?;
    }
    sync_dir(dir)?;
    rename(&new.join(identity::FILE), &dir.join(identity::FILE))?;
    sync_dir(dir)?;
    std::fs::remove_dir_all(&new).map_err(|e| format!("{}: {e}", new.display()))?;
    sync_dir(dir)
}

/// The `shard-N` folders of `dir`.
fn shard_dirs(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name();
        if name.to_str().is_some_and(|n| n.starts_with("shard-")) {
            out.push(PathBuf::from(name));
        }
    }
    Ok(out)
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to)
        .map_err(|e| format!("cannot move {} to {}: {e}", from.display(), to.display()))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn mark(dir: &Path, name: &str) -> Result<(), String> {
    let p = dir.join(name);
    std::fs::write(&p, b"").map_err(|e| format!("{}: {e}", p.display()))?;
    sync_dir(dir)
}
