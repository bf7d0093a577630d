//! TTLs: the expiry index (one entry per node with a TTL, keyed by its
//! expiry time then its LMDB key) and the expiry a SYNC entry drives.
//! Writes add and remove entries as nodes gain, change and lose TTLs; a
//! SYNC entry (the leader's clock) deletes every node due by then, each
//! with its own event and index, a bounded number per entry.

use super::*;

impl Store {
    /// Expire every node whose time is at or before `now` (etcd's
    /// DeleteExpiredKeys driven by a SYNC entry): one event and one index each.
    pub(super) fn expire_until(&mut self, txn: &mut RwTxn, now: i64) -> Result<()> {
        // Bounded per entry, so a backlog (say, after a long downtime) is
        // expired over several small batches instead of one huge one; the
        // leader proposes the next SYNC at once while keys are still due.
        // Skeleton directories of a sharded member are left to shard 0.
        let skip_dirs = self.local_only();
        let mut due = Vec::new();
        for item in self.expiry.iter(txn)? {
            let (k, v) = item?;
            let v = unseal(k, v).ok_or_else(|| bad_checksum("expiry", k))?;
            if expiry_time(k) > now || due.len() >= MAX_EXPIRE_PER_SYNC {
                break;
            }
            if skip_dirs && v.first() == Some(&EXP_DIR) && self.skeleton(&v[1..]) {
                continue;
            }
            due.push((k.to_vec(), v.get(1..).unwrap_or_default().to_vec()));
        }
        for (ek, path) in due {
            if self.stamped && self.replay.is_empty() {
                // The rest waits for the next SYNC's indexes.
                break;
            }
            self.expire_one(txn, &ek, &path, now)?;
        }
        Ok(())
    }

    /// Expire the node indexed by expiry key `ek` at `path`, or drop a
    /// stale index entry.
    fn expire_one(&mut self, txn: &mut RwTxn, ek: &[u8], path: &[u8], now: i64) -> Result<bool> {
        let t = expiry_time(ek);
        match self.locate(txn, path)? {
            Ok(f) if f.meta.expire == Some(t) && ek[8..] == f.lkey[..] => {
                self.reserve();
                let mut c = Command::new(Op::Delete, path, now);
                c.recursive = true;
                self.remove_node(txn, &c, f, Action::Expire, now)?;
                if !self.global || self.placement.of_key(path) == self.placement.shard {
                    self.stats.expire_count += 1;
                }
                Ok(true)
            }
            _ => {
                self.expiry.delete(txn, ek)?;
                Ok(false)
            }
        }
    }

    /// A member-wide expiry of the directory `c.key` (due at or before
    /// `c.now`): every shard removes its part; one event.
    pub(super) fn expire_dir(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        let found = self.locate(txn, c.key)?;
        let f = match found {
            Ok(f) if f.meta.dir && f.meta.expire.is_some_and(|t| t <= c.now) => f,
            _ => return Ok(Err(V2Error::new(KEY_NOT_FOUND, c.key, self.index))),
        };
        let mut ek = Vec::with_capacity(8 + f.lkey.len());
        ek.extend_from_slice(&expiry_prefix(f.meta.expire.unwrap_or(0)));
        ek.extend_from_slice(&f.lkey);
        if !self.expire_one(txn, &ek, c.key, c.now)? {
            return Ok(Err(V2Error::new(KEY_NOT_FOUND, c.key, self.index)));
        }
        Ok(Ok(self.pending.last().cloned().ok_or_else(corrupt)?))
    }

    pub(super) fn put_expiry(
        &mut self,
        txn: &mut RwTxn,
        t: i64,
        lkey: &[u8],
        path: &[u8],
        dir: bool,
    ) -> Result<()> {
        let (k, v) = (&mut self.xkey, &mut self.xval);
        k.clear();
        k.extend_from_slice(&expiry_prefix(t));
        k.extend_from_slice(lkey);
        v.clear();
        v.push(if dir { EXP_DIR } else { EXP_FILE });
        v.extend_from_slice(path);
        seal(k, v);
        self.expiry.put(txn, k, v)?;
        Ok(())
    }

    pub(super) fn del_expiry(&mut self, txn: &mut RwTxn, t: i64, lkey: &[u8]) -> Result<()> {
        let k = &mut self.xkey;
        k.clear();
        k.extend_from_slice(&expiry_prefix(t));
        k.extend_from_slice(lkey);
        self.expiry.delete(txn, k)?;
        Ok(())
    }
}
