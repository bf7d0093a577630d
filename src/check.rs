//! `kardia check DATA_DIR`: offline verification of a data dir.
//!
//! Reads the data dir's identity, then for every shard verifies its LMDB
//! store record by record ([`crate::store::check`]) and reads its WAL back
//! ([`crate::storage::wal::Wal::recover`]); prints what it found, one line
//! per finding, and says whether the data dir is sound. It never writes:
//! stop the member (or work on a copy) for a consistent picture.

use std::path::Path;

use crate::storage::wal::Wal;
use crate::store::check::verify;

/// Check `data_dir`, printing a report to stdout. `Ok(true)`: sound.
pub fn run(data_dir: &Path) -> Result<bool, String> {
    if !data_dir.is_dir() {
        return Err(format!("{}: no such data dir", data_dir.display()));
    }
    // One store (a shard's `lmdb` folder, or a snapshot file's folder).
    if data_dir.join("data.mdb").is_file() {
        return Ok(report_store("store", data_dir));
    }
    let mut shards: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(data_dir)
        .map_err(|e| format!("{}: {e}", data_dir.display()))?
        .filter_map(|e| {
            let e = e.ok()?;
            let i = e
                .file_name()
                .to_str()?
                .strip_prefix("shard-")?
                .parse()
                .ok()?;
            Some((i, e.path()))
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(format!(
            "{}: not a kardia data dir (no shard-N folders)",
            data_dir.display()
        ));
    }
    println!("data dir {}: {} shard(s)", data_dir.display(), shards.len());
    let mut sound = true;
    for (i, dir) in shards {
        sound &= report_store(&format!("shard {i}: store"), &dir.join("lmdb"));
        let wal = dir.join("wal");
        if !wal.is_dir() {
            println!("shard {i}: wal: missing ({})", wal.display());
            sound = false;
            continue;
        }
        match Wal::recover(&wal) {
            Ok((rec, segments)) => {
                let first = rec.entries.first().map_or(0, |e| e.index);
                let last = rec.entries.last().map_or(0, |e| e.index);
                println!(
                    "shard {i}: wal: {} segment(s), {} entries (index {first}..={last})",
                    segments.len(),
                    rec.entries.len()
                );
            }
            Err(e) => {
                println!("shard {i}: wal: DAMAGED: {e}");
                sound = false;
            }
        }
    }
    println!(
        "{}",
        if sound {
            "result: sound"
        } else {
            "result: DAMAGED (see above; restore from a backup, or remove this member and add it back so it catches up)"
        }
    );
    Ok(sound)
}

/// Verify one store and print what was found under `label`; true if sound.
fn report_store(label: &str, dir: &Path) -> bool {
    match verify(dir) {
        Ok(r) => {
            println!(
                "{label}: {} dirs, {} files, {} TTLs, applied raft index {} (term {}), etcd index {}",
                r.dirs, r.files, r.ttls, r.applied.0, r.applied.1, r.index
            );
            for p in &r.problems {
                println!("{label}: DAMAGED: {p}");
            }
            if r.problem_count > r.problems.len() as u64 {
                println!(
                    "{label}: … {} more problems",
                    r.problem_count - r.problems.len() as u64
                );
            }
            r.is_clean()
        }
        Err(e) => {
            println!("{label}: UNREADABLE: {e}");
            false
        }
    }
}
