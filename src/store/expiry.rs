//! TTLs: the expiry index (entries keyed by an expiry time then a node's
//! LMDB key) and the expiry a SYNC entry drives. Writes add and remove
//! entries as nodes gain, change and lose TTLs; a SYNC entry (the leader's
//! clock) deletes every node due by then, in the order of their expiry
//! times (etcd's), each with its own event and index, a bounded number per
//! entry.
//!
//! A directory's entry is at its expiry time exactly. A file's need only
//! come due no later than the file ([`Store::lazy_entry`]): a write that
//! moves a file's time later (a heartbeat's refresh) leaves its entry
//! alone, and the SYNC that finds the entry early moves it to the file's
//! time instead of expiring it. Entries of nodes since deleted, replaced
//! or without a TTL are dropped when they come due. (Store format 3; a
//! sharded cluster, whose sequencer stamps a SYNC with one index per due
//! entry, keeps exact entries.)

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
        // Early entries move and stale ones go now; the nodes really due
        // expire in the order of their times, as etcd's would.
        let mut expire = Vec::with_capacity(due.len());
        for (ek, path) in due {
            if let Some(e) = self.resolve(txn, &ek, &path, now)? {
                expire.push((e, ek, path));
            }
        }
        expire.sort_unstable_by(|a, b| (a.0, &a.1[8..]).cmp(&(b.0, &b.1[8..])));
        for (_, ek, path) in expire {
            if self.stamped && self.replay.is_empty() {
                // The rest waits for the next SYNC's indexes.
                break;
            }
            self.expire_one(txn, &ek, &path, now)?;
        }
        Ok(())
    }

    /// The expiry time of the node a due entry `ek` (at `path`) stands
    /// for when that node is due by `now`; otherwise the entry is dealt
    /// with here: moved to its file's later time, or dropped as stale.
    fn resolve(
        &mut self,
        txn: &mut RwTxn,
        ek: &[u8],
        path: &[u8],
        now: i64,
    ) -> Result<Option<i64>> {
        let t = expiry_time(ek);
        // The node the entry was written for, by its LMDB key (one search,
        // not a walk of the path: a node gone, or moved to a directory made
        // again, is not there).
        let lkey = &ek[8..];
        let meta = match self.nodes.get(txn, lkey)? {
            Some(v) => Some(decode_meta(lkey, v)?),
            None => None,
        };
        match meta.and_then(|m| Some((m.dir, m.expire?))) {
            Some((dir, e)) if expires(t, dir, e, now) => Ok(Some(e)),
            Some((false, e)) if e > t => {
                // Refreshed since the entry was written: not due yet.
                self.expiry.delete(txn, ek)?;
                self.put_expiry(txn, e, lkey, path, false)?;
                Ok(None)
            }
            _ => {
                self.expiry.delete(txn, ek)?;
                Ok(None)
            }
        }
    }

    /// Expire the node indexed by expiry key `ek` at `path` (due by `now`),
    /// or drop a stale index entry.
    fn expire_one(&mut self, txn: &mut RwTxn, ek: &[u8], path: &[u8], now: i64) -> Result<bool> {
        let t = expiry_time(ek);
        match self.locate(txn, path)? {
            Ok(f)
                if ek[8..] == f.lkey[..]
                    && f.meta
                        .expire
                        .is_some_and(|e| expires(t, f.meta.dir, e, now)) =>
            {
                let exact = f.meta.expire == Some(t);
                self.reserve();
                let mut c = Command::new(Op::Delete, path, now);
                c.recursive = true;
                self.remove_node(txn, &c, f, Action::Expire, now)?;
                if !exact {
                    // (`remove_node` deleted the entry at the file's time.)
                    self.expiry.delete(txn, ek)?;
                }
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

    /// Whether a file that had a TTL of `old` and now gets `new` keeps its
    /// expiry entry as it is: the entry comes due no later than `old`, so
    /// no later than `new` when the time moves later (the module's rule).
    /// Not for directories, not in a member-wide operation, not in a
    /// sharded cluster ([`Store::exact_expiry`]).
    pub(super) fn lazy_entry(&self, dir: bool, old: Option<i64>, new: Option<i64>) -> bool {
        !dir && !self.global
            && !self.exact_expiry
            && matches!((old, new), (Some(o), Some(n)) if n >= o)
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

/// Whether an entry due at `t` expires its node (a directory if `dir`, due
/// at `e`) at `now`: an entry at the node's own time does; a file's early
/// entry does once the file itself is due.
fn expires(t: i64, dir: bool, e: i64, now: i64) -> bool {
    e == t || (!dir && e <= now)
}
