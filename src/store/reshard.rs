//! Re-placement of a member's nodes over another set of shards, for the
//! offline `kardia reshard` (`crate::reshard` drives it).
//!
//! In: the old shards' stores, each brought up to date with its log. Out:
//! new, empty stores (one per new shard, each opened with its new
//! [`Placement`]) filled in one write transaction each. Every node keeps
//! its value, indexes and TTL; the skeleton directories of the new
//! placement go to every new shard with the same ids, a placement unit or a
//! file to its owner only. The member's index, its event history, its
//! membership and raft configuration come along.

use super::*;

/// What a copy moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub dirs: u64,
    pub files: u64,
    pub events: u64,
    pub index: u64,
}

/// Copy every node of `from` into `to` (`to[j]` is new shard `j`, empty),
/// and the values of old shard 0's metadata under `carry` (membership, raft
/// configuration) to every new shard.
pub fn copy_all(from: &[Store], to: &mut [Store], carry: &[&[u8]]) -> Result<Copied> {
    let n = to.len();
    let p = to[0].placement;
    let envs: Vec<Env> = to.iter().map(|s| s.env.clone()).collect();
    let mut txns = envs
        .iter()
        .map(|e| e.write_txn())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut copied = Copied::default();
    let mut next_skeleton = 1u64;
    let mut next_unit = vec![UNIT_IDS; n];
    // New directory ids by path, per new shard (`u64::MAX`: not there).
    let mut dirs: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    dirs.insert(Vec::new(), vec![0; n]);
    let (mut key, mut val) = (Vec::new(), Vec::new());
    for old in from {
        let rtxn = old.env.read_txn()?;
        let mut todo: Vec<(u64, Vec<u8>)> = vec![(0, Vec::new())];
        while let Some((old_id, parent)) = todo.pop() {
            let parent_ids = dirs.get(&parent).cloned().ok_or_else(corrupt)?;
            for item in old.nodes.prefix_iter(&rtxn, &old_id.to_be_bytes())? {
                let (k, v) = item?;
                let r = rec(k, v)?;
                let name = r.name(k);
                let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
                path.extend_from_slice(&parent);
                path.push(b'/');
                path.extend_from_slice(name);
                let targets: Vec<usize> = if r.dir && !p.in_unit(&path) {
                    (0..n).collect()
                } else {
                    vec![p.of_key(&path)]
                };
                let ids = if r.dir {
                    todo.push((r.dir_id, path.clone()));
                    if dirs.contains_key(&path) {
                        // Seen in an earlier old shard (every old shard
                        // holds the old skeleton): its children merge here.
                        continue;
                    }
                    let mut ids = vec![u64::MAX; n];
                    if targets.len() == n {
                        ids.fill(next_skeleton);
                        next_skeleton += 1;
                    } else {
                        ids[targets[0]] = next_unit[targets[0]];
                        next_unit[targets[0]] += 1;
                    }
                    dirs.insert(path.clone(), ids.clone());
                    copied.dirs += 1;
                    ids
                } else {
                    copied.files += 1;
                    vec![0; n]
                };
                for t in targets {
                    let parent_id = parent_ids[t];
                    if parent_id == u64::MAX {
                        return Err(Error::Corrupt(format!(
                            "reshard: no parent for {} on shard {t}",
                            String::from_utf8_lossy(&path)
                        )));
                    }
                    child_key(&mut key, parent_id, name);
                    NodeRec {
                        dir_id: ids[t],
                        ..r
                    }
                    .encode(&key, name, &mut val);
                    to[t].nodes.put(&mut txns[t], &key, &val)?;
                    if let Some(e) = r.expire {
                        to[t].put_expiry(&mut txns[t], e, &key, &path, r.dir)?;
                    }
                }
            }
        }
        // The member's event history: all of it to shard 0 (start-up merges
        // every shard's).
        for item in old.history.iter(&rtxn)? {
            let (k, v) = item?;
            to[0].history.put(&mut txns[0], k, v)?;
            copied.events += 1;
        }
        copied.index = copied.index.max(old.index);
    }
    let mut carried = Vec::new();
    for &k in carry {
        if let Some(v) = from[0].meta_get(k)? {
            carried.push((k, v));
        }
    }
    for (t, txn) in txns.iter_mut().enumerate() {
        let meta = &to[t].meta;
        put_sealed(meta, txn, META_INDEX, &copied.index.to_le_bytes())?;
        put_sealed(meta, txn, META_DIR_ID, &next_skeleton.to_le_bytes())?;
        put_sealed(meta, txn, META_UNIT_ID, &next_unit[t].to_le_bytes())?;
        // A one-voter group starting from its store (raft index 1).
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&1u64.to_le_bytes());
        a[8..].copy_from_slice(&1u64.to_le_bytes());
        put_sealed(meta, txn, META_APPLIED, &a)?;
        for (k, v) in &carried {
            put_sealed(meta, txn, k, v)?;
        }
    }
    // The v2 auth records: shard 0 holds them.
    Store::copy_auth(&from[0], &to[0], &mut txns[0])?;
    for txn in txns {
        txn.commit()?;
    }
    Ok(copied)
}
