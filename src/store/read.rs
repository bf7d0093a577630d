//! The store's reads: a GET of a node or a directory listing, rendered
//! straight from LMDB pages into the output buffer (no tree in between),
//! in slices of a pinned read view for large listings, and the collection
//! of other shards' files for a member-wide listing. A path, the read's
//! options and a read view enter; etcd's JSON (or etcd's error) leaves,
//! appended to the caller's buffer.

use super::*;

impl Store {
    /// GET: append `{"action":"get","node":..}\n` to `out`; or etcd's error
    /// (carrying `index`, the node-wide index read before this read began).
    ///
    /// On a sharded member a directory's files live in one shard: a listing
    /// elsewhere answers [`ESCALATE`] naming that shard, unless `remote`
    /// holds the other shards' files (a member-wide recursive GET).
    ///
    /// A listing that passes `limit` bytes is abandoned and answers
    /// [`OVER_LIMIT`] with `out` as it was (at most `limit` plus one node's
    /// worth of work wasted), so a caller can tell a large read from a
    /// small one before it commits to it.
    #[allow(clippy::too_many_arguments)]
    pub fn get(
        &mut self,
        index: u64,
        path: &[u8],
        recursive: bool,
        sorted: bool,
        now: i64,
        remote: Option<&RemoteFiles>,
        at: ReadAt,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<std::result::Result<u64, V2Error>> {
        let w = Walk {
            recursive,
            sorted,
            now,
            remote,
            limit: out.len().saturating_add(limit),
            pause_at: usize::MAX,
        };
        if at == ReadAt::Cut {
            let txn = self
                .cut
                .take()
                .ok_or_else(|| Error::Corrupt("no cut to read".into()))?;
            let r = self.get_in(&txn, index, path, &w, out);
            self.cut = Some(txn);
            return r;
        }
        let txn = self.read_txn_at(at)?;
        self.get_in(&txn, index, path, &w, out)
    }

    /// The read transaction a read at `at` (not the cut) sees: a view,
    /// shared — the newest one is the store as it is now (one is opened
    /// after every commit), so a read of the present needs no transaction
    /// of its own either — or, with no view, a fresh one. A stopped shard
    /// reads its views only.
    fn read_txn_at(&self, at: ReadAt) -> Result<Rc<RoTxn<'static, WithoutTls>>> {
        let view = match at {
            ReadAt::View => self.views.front(),
            ReadAt::Now if !self.frozen => self.views.back(),
            _ => None,
        };
        match view {
            Some((_, txn)) => Ok(txn.clone()),
            None if self.frozen || at == ReadAt::Cut => Err(Error::Corrupt(
                "stopped: no durable state left to read".into(),
            )),
            None => Ok(Rc::new(self.env.clone().static_read_txn()?)),
        }
    }

    /// Start a large read to be rendered in slices ([`Store::get_slice`]):
    /// it keeps the read transaction a [`Store::get`] at `at` would use (a
    /// view, shared), so its slices make one consistent read however the
    /// store moves on between them. Not for member-wide cuts.
    pub fn begin_slices(
        &mut self,
        index: u64,
        path: &[u8],
        recursive: bool,
        sorted: bool,
        now: i64,
        at: ReadAt,
    ) -> Result<Slices> {
        Ok(Slices {
            txn: self.read_txn_at(at)?,
            index,
            path: path.to_vec(),
            recursive,
            sorted,
            now,
            open: None,
        })
    }

    /// Render the next slice of `sl` into `out`: until the read is done
    /// (`Some`, as [`Store::get`] answers), or `out` has grown by about
    /// `slice` bytes (`None`: call again; the slices accumulate in `out`).
    pub fn get_slice(
        &mut self,
        sl: &mut Slices,
        slice: usize,
        out: &mut Vec<u8>,
    ) -> Result<Option<std::result::Result<u64, V2Error>>> {
        let w = Walk {
            recursive: sl.recursive,
            sorted: sl.sorted,
            now: sl.now,
            remote: None,
            limit: usize::MAX,
            pause_at: out.len().saturating_add(slice),
        };
        let txn = sl.txn.clone();
        if sl.open.is_none() {
            match self.get_head(&txn, sl.index, &sl.path, &w, out)? {
                Ok(o) => sl.open = Some(o),
                Err(e) => return Ok(Some(Err(e))),
            }
        }
        let open = sl.open.as_mut().expect("opened");
        self.get_rest(&txn, sl.index, open, &w, out)
    }

    fn get_in(
        &mut self,
        rtxn: &RoTxn,
        index: u64,
        path: &[u8],
        w: &Walk,
        out: &mut Vec<u8>,
    ) -> Result<std::result::Result<u64, V2Error>> {
        let mut open = match self.get_head(rtxn, index, path, w, out)? {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self
            .get_rest(rtxn, index, &mut open, w, out)?
            .unwrap_or_else(|| Err(V2Error::new(OVER_LIMIT, "", index))))
    }

    /// A read's node up to its children: looked up, checked (an escalated
    /// read answers here), and its head written.
    fn get_head(
        &mut self,
        rtxn: &RoTxn,
        index: u64,
        path: &[u8],
        w: &Walk,
        out: &mut Vec<u8>,
    ) -> Result<std::result::Result<Open, V2Error>> {
        let f = match self.lookup(rtxn, path)? {
            Ok(f) => f,
            // Another shard answers (and counts) an escalated read.
            Err(e) if e.code == ESCALATE => return Ok(Err(e)),
            Err(mut e) => {
                self.stats.gets_fail += 1;
                e.index = index;
                return Ok(Err(e));
            }
        };
        // A listing of a skeleton directory may need other shards' nodes:
        // those of its files, or (just above the unit depth, or recursive)
        // of every shard.
        if f.meta.dir && w.remote.is_none() && self.placement.shards > 1 && self.skeleton(path) {
            match self.placement.of_dir(path) {
                Some(owner) if !w.recursive && owner == self.placement.shard => {}
                Some(owner) if !w.recursive => return Ok(Err(escalate(owner))),
                _ => return Ok(Err(escalate(MEMBER_WIDE))),
            }
        }
        let start = out.len();
        out.extend_from_slice(b"{\"action\":\"get\",\"node\":");
        let value = if f.meta.dir {
            None
        } else {
            Some(rec(&f.lkey, self.record(rtxn, &f)?)?.value)
        };
        let node = NodeJson {
            key: key_field(path),
            value,
            dir: f.meta.dir,
            expire: f.meta.expire,
            now: w.now,
            modified: f.meta.modified,
            created: f.meta.created,
        };
        node.write_head(out);
        let dir = f.meta.dir.then(|| {
            let dir_path = if path == b"/" { &b""[..] } else { path };
            Resume::new(f.meta.dir_id, dir_path.to_vec())
        });
        Ok(Ok(Open {
            start,
            children_at: out.len(),
            dir,
            tail: (f.meta.modified, f.meta.created),
        }))
    }

    /// The rest of a read [`Store::get_head`] opened: its children (from
    /// where they paused), then its tail. `None`: paused at `w.pause_at`.
    fn get_rest(
        &mut self,
        rtxn: &RoTxn,
        index: u64,
        open: &mut Open,
        w: &Walk,
        out: &mut Vec<u8>,
    ) -> Result<Option<std::result::Result<u64, V2Error>>> {
        if let Some(at) = &mut open.dir {
            // Straight from LMDB when its order is the listing's, else
            // collected per directory (merged with other shards' files,
            // or sorted by full name when a name is over-long).
            let mut r = match w.remote {
                None => self.walk_children(rtxn, at, w, true, out)?,
                Some(_) => Listing::Unordered,
            };
            if r == Listing::Paused {
                return Ok(None);
            }
            if r == Listing::Unordered {
                out.truncate(open.children_at);
                let mut p = std::mem::take(&mut at.path);
                r = self.write_children(rtxn, at.dir_id, &mut p, w, false, out)?;
            }
            if r == Listing::OverLimit {
                out.truncate(open.start);
                return Ok(Some(Err(V2Error::new(OVER_LIMIT, "", index))));
            }
        }
        event::write_tail(out, open.tail.0, open.tail.1);
        out.extend_from_slice(b"}\n");
        self.stats.gets_success += 1;
        Ok(Some(Ok(index)))
    }

    /// Append `,"nodes":[..]` for the visible children of `dir_id`, if any,
    /// merging in another shard's files of that directory from `w.remote`;
    /// with `w.recursive`, their children too. Iterative: a frame per open
    /// directory on the heap, so nesting depth costs no stack.
    ///
    /// With `scan`, each directory's children are read straight from an
    /// LMDB cursor as they are written (no list per directory); that is
    /// LMDB's key order, the listing's own unless `w.remote` is merged in
    /// or `w.sorted` meets an over-long name: then [`Listing::Unordered`],
    /// and the caller lists again without `scan`.
    fn write_children(
        &self,
        txn: &RoTxn,
        dir_id: u64,
        path: &mut Vec<u8>,
        w: &Walk,
        scan: bool,
        out: &mut Vec<u8>,
    ) -> Result<Listing> {
        let mut at = Resume::new(dir_id, std::mem::take(path));
        let r = self.walk_children(txn, &mut at, w, scan, out);
        *path = at.path;
        r
    }

    /// [`Self::write_children`] from where `at` says, until the listing is
    /// done or (scanning) `out` passes `w.pause_at` at a child boundary:
    /// then [`Listing::Paused`], with `at` saying where to go on from in the
    /// same read transaction.
    fn walk_children(
        &self,
        txn: &RoTxn,
        at: &mut Resume,
        w: &Walk,
        scan: bool,
        out: &mut Vec<u8>,
    ) -> Result<Listing> {
        /// One directory being listed: its remaining children, the LMDB key
        /// of the last one taken, whether `"nodes":[` is open, and the
        /// directory's own tail (indexes, and the escaped path's length
        /// before its name) to close it with.
        struct Frame<'t> {
            dir_id: u64,
            items: Items<'t>,
            last: Option<&'t [u8]>,
            /// Where a resumed directory went on from, until it takes a
            /// child of its own (`last`).
            resumed_after: Option<Vec<u8>>,
            any: bool,
            close: Option<(u64, u64, usize)>,
            later: Later,
        }
        // An unsorted recursive scan writes a directory's files as its
        // cursor meets them and its subdirectories after them, in the order
        // they were created (their ids): their children then lie in
        // ascending LMDB key order, read by a forward sweep instead of one
        // jump across the map per subdirectory (HM9000's apps/actual, 50,000
        // directories named by random GUIDs: 120 -> 84 ms).
        let defer = scan && w.recursive && !w.sorted;
        let items = |dir_id: u64, after: Option<&[u8]>| -> Result<Items> {
            Ok(if scan {
                let first = dir_id.to_be_bytes();
                let from = match after {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Included(&first[..]),
                };
                Items::Scan(self.nodes.range(txn, &(from, Bound::Unbounded))?, first)
            } else {
                Items::Listed(self.children(txn, dir_id, w)?.into_iter())
            })
        };
        // Deferred directories are written in ascending id order, so their
        // children are read by one shared cursor stepping on, not a new
        // cursor per directory seeking from the root (see `Sweep`).
        let mut sweep = Sweep::default();
        let mut stack = Vec::with_capacity(at.frames.len());
        for f in at.frames.drain(..) {
            stack.push(Frame {
                dir_id: f.dir_id,
                items: items(f.dir_id, f.after.as_deref())?,
                last: None,
                resumed_after: f.after,
                any: f.any,
                close: f.close,
                later: f.later,
            });
        }
        // Only the escaped path grows with the walk: it is what keys are
        // written from (the raw one stays the listed directory's).
        let epath = &mut at.epath;
        // The deferred directories not yet written, counted towards the
        // pause and the limit as the bytes they will write at least: a
        // directory of many subdirectories and few files pauses (or stops)
        // during its scan too, not after collecting them all. The pause
        // counts what this slice added.
        let mut promised: usize = stack.iter().map(|f| f.later.promised).sum();
        let pause_at = w.pause_at.saturating_add(promised);
        while let Some(top) = stack.last_mut() {
            let next = if top.later.next.is_some() {
                None
            } else {
                match &mut top.items {
                    Items::Listed(it) => it.next(),
                    Items::Scan(it, dir) => match it.next().transpose()? {
                        Some((k, v)) if k.starts_with(dir) => {
                            let r = rec(k, v)?;
                            if w.sorted && r.long_name.is_some() {
                                return Ok(Listing::Unordered);
                            }
                            Some((k, Child::Local(r)))
                        }
                        _ => None,
                    },
                    // Only unsorted listings defer: any name order is theirs.
                    Items::Swept(dir) => match sweep.next(dir)? {
                        Some((k, v)) => Some((k, Child::Local(rec(k, v)?))),
                        None => None,
                    },
                }
            };
            let later = match next {
                Some(_) => None,
                None => top.later.next_dir(),
            };
            if next.is_none() && later.is_none() {
                let done = stack.pop().expect("a frame");
                if done.any {
                    out.push(b']');
                }
                if let Some((modified, created, elen)) = done.close {
                    event::write_tail(out, modified, created);
                    epath.truncate(elen);
                }
                continue;
            }
            if out.len().saturating_add(promised) > w.limit {
                return Ok(Listing::OverLimit);
            }
            if scan && out.len().saturating_add(promised) > pause_at {
                // Go on from here next time: each open directory after the
                // child last taken from it (this one is not written yet).
                for f in stack.drain(..) {
                    at.frames.push(Resumed {
                        dir_id: f.dir_id,
                        after: f.last.map(<[u8]>::to_vec).or(f.resumed_after),
                        any: f.any,
                        close: f.close,
                        later: f.later,
                    });
                }
                return Ok(Listing::Paused);
            }
            let (rec, name, deferred) = match next {
                // A deferred subdirectory: written as a scanned one is.
                None => {
                    let i = later.expect("a deferred directory");
                    let (promise, rec, name) = top.later.take(i, epath.len());
                    promised = promised.saturating_sub(promise);
                    (rec, name, true)
                }
                Some((k, c)) => {
                    top.last = Some(k);
                    let rec = match c {
                        Child::Remote(name, json) => {
                            if name.first() == Some(&b'_') {
                                continue;
                            }
                            out.extend_from_slice(if top.any { b"," } else { b",\"nodes\":[" });
                            top.any = true;
                            out.extend_from_slice(json);
                            continue;
                        }
                        Child::Local(rec) => rec,
                    };
                    let name = rec.name(k);
                    if name.first() == Some(&b'_') {
                        continue;
                    }
                    if defer && rec.dir {
                        promised += top.later.defer(&rec, name, epath.len());
                        continue;
                    }
                    (rec, name, false)
                }
            };
            out.extend_from_slice(if top.any { b"," } else { b",\"nodes\":[" });
            top.any = true;
            // The key straight into `out` (the open directories' escaped
            // path, then the escaped name); only a directory about to be
            // walked adds its name to the path.
            out.extend_from_slice(b"{\"key\":\"");
            out.extend_from_slice(epath);
            out.push(b'/');
            let name_at = out.len();
            crate::etcd::json::write_escaped(out, name);
            let elen = epath.len();
            if rec.dir && w.recursive {
                epath.push(b'/');
                epath.extend_from_slice(&out[name_at..]);
            }
            out.push(b'"');
            NodeJson {
                key: &[],
                value: (!rec.dir).then_some(rec.value),
                dir: rec.dir,
                expire: rec.expire,
                now: w.now,
                modified: rec.modified,
                created: rec.created,
            }
            .write_fields(out, false);
            if rec.dir && w.recursive {
                let items = if deferred {
                    sweep.seek(&self.nodes, txn, rec.dir_id)?;
                    Items::Swept(rec.dir_id.to_be_bytes())
                } else {
                    items(rec.dir_id, None)?
                };
                stack.push(Frame {
                    dir_id: rec.dir_id,
                    items,
                    last: None,
                    resumed_after: None,
                    any: false,
                    close: Some((rec.modified, rec.created, elen)),
                    later: Later::default(),
                });
            } else {
                event::write_tail(out, rec.modified, rec.created);
            }
        }
        at.frames.clear();
        Ok(Listing::Done)
    }

    /// The children of `dir_id` in listing order: this shard's, merged with
    /// another shard's files of that directory from `w.remote`.
    fn children<'t>(&self, txn: &'t RoTxn, dir_id: u64, w: &Walk<'t>) -> Result<Children<'t>> {
        let remote = w.remote.and_then(|r| r.get(&dir_id));
        let mut items: Children = Vec::new();
        for item in self.nodes.prefix_iter(txn, &dir_id.to_be_bytes())? {
            let (k, v) = item?;
            items.push((k, Child::Local(rec(k, v)?)));
        }
        if let Some(r) = remote {
            // Each shard's part is in LMDB key order: a merge of sorted runs.
            items.extend(
                r.files()
                    .map(|(k, name, json)| (k, Child::Remote(name, json))),
            );
            items.sort_by(|a, b| a.0.cmp(b.0));
        }
        // LMDB order is name order except for over-long names.
        let name_of = |(k, c): &(&[u8], Child)| -> Vec<u8> {
            match c {
                Child::Local(r) => r.name(k).to_vec(),
                Child::Remote(name, _) => name.to_vec(),
            }
        };
        let long = items.iter().any(|(k, c)| match c {
            Child::Local(r) => r.long_name.is_some(),
            Child::Remote(name, _) => name.len() != k.len().saturating_sub(8),
        });
        if w.sorted && long {
            items.sort_by_key(|it| name_of(it));
        }
        Ok(items)
    }

    /// This shard's part of a member-wide listing of the skeleton directory
    /// `path`, read from the cut ([`Store::take_cut`]): its files there, and
    /// its placement units there whole (with their subtrees when
    /// `recursive`), each rendered as a node and keyed by its directory;
    /// with `recursive`, the same for every skeleton directory below.
    pub fn collect(
        &self,
        path: &[u8],
        recursive: bool,
        sorted: bool,
        now: i64,
    ) -> Result<RemoteFiles> {
        let Some(rtxn) = &self.cut else {
            return Err(Error::Corrupt("no cut to read".into()));
        };
        let mut out = RemoteFiles::new();
        let mut kbuf = Vec::new();
        let Ok(f) = self.find(rtxn, path, &mut kbuf)? else {
            return Ok(out);
        };
        if !f.meta.dir {
            return Ok(out);
        }
        let p = if path == b"/" {
            Vec::new()
        } else {
            path.to_vec()
        };
        let w = Walk {
            recursive,
            sorted,
            now,
            remote: None,
            limit: usize::MAX,
            pause_at: usize::MAX,
        };
        self.collect_dir(rtxn, f.meta.dir_id, p, &w, &mut out)?;
        Ok(out)
    }

    /// Render this shard's part below the skeleton directory `dir_id` (at
    /// `path`) into `out`. Iterative: directories still to visit wait on a
    /// heap stack with their paths.
    fn collect_dir(
        &self,
        txn: &RoTxn,
        dir_id: u64,
        path: Vec<u8>,
        w: &Walk,
        out: &mut RemoteFiles,
    ) -> Result<()> {
        let mut todo = vec![(dir_id, path)];
        while let Some((dir_id, mut path)) = todo.pop() {
            let dir = if path.is_empty() { &b"/"[..] } else { &path };
            let owned = self.placement.of_dir(dir) == Some(self.placement.shard);
            for item in self.nodes.prefix_iter(txn, &dir_id.to_be_bytes())? {
                let (k, v) = item?;
                let rec = rec(k, v)?;
                let name = rec.name(k);
                let len = path.len();
                path.push(b'/');
                path.extend_from_slice(name);
                let unit = self.placement.in_unit(&path);
                if rec.dir && !unit {
                    if w.recursive {
                        todo.push((rec.dir_id, path.clone()));
                    }
                } else if owned || unit {
                    let d = out.entry(dir_id).or_default();
                    let k0 = d.buf.len() as u32;
                    d.buf.extend_from_slice(k);
                    let n0 = d.buf.len() as u32;
                    d.buf.extend_from_slice(name);
                    let j0 = d.buf.len() as u32;
                    NodeJson {
                        key: &path,
                        value: (!rec.dir).then_some(rec.value),
                        dir: rec.dir,
                        expire: rec.expire,
                        now: w.now,
                        modified: rec.modified,
                        created: rec.created,
                    }
                    .write_head(&mut d.buf);
                    if rec.dir && w.recursive {
                        // A unit lives whole on this shard (no limit: whole;
                        // its names are ordered as the shard's own listing).
                        self.write_children(txn, rec.dir_id, &mut path, w, false, &mut d.buf)?;
                    }
                    event::write_tail(&mut d.buf, rec.modified, rec.created);
                    d.spans.push([k0, n0, j0, d.buf.len() as u32]);
                }
                path.truncate(len);
            }
        }
        Ok(())
    }
}

/// How a GET walks the tree.
struct Walk<'a> {
    recursive: bool,
    sorted: bool,
    now: i64,
    remote: Option<&'a RemoteFiles>,
    /// `out`'s length past which a listing stops ([`OVER_LIMIT`]).
    limit: usize,
    /// `out`'s length past which a scanning listing pauses
    /// ([`Listing::Paused`]).
    pause_at: usize,
}

/// A directory's children while listing: LMDB key and child, in order.
type Children<'t> = Vec<(&'t [u8], Child<'t>)>;

/// A directory's children still to be written: listed ahead, or read from
/// an LMDB cursor as they are written (until the key leaves the
/// directory's 8-byte prefix).
enum Items<'t> {
    Listed(std::vec::IntoIter<(&'t [u8], Child<'t>)>),
    Scan(heed::RoRange<'t, Bytes, Bytes>, [u8; 8]),
    /// From the walk's [`Sweep`], positioned at the directory's children.
    Swept([u8; 8]),
}

/// One forward LMDB cursor shared by the deferred directories of a walk.
/// They are written in ascending id order, so one's children usually
/// start where the previous one's ended, or a few keys on; the cursor
/// steps there instead of a new cursor seeking down from the root per
/// directory (13 % of HM9000's `apps/actual` listing was those seeks).
///
/// It reads one entry ahead and asks for that entry's cache lines while
/// the current one is written: a large listing's records are mostly not
/// in the CPU's caches, and the first to touch each one (the record
/// checksum) waited for memory — 12 % of HM9000's listing, 5 % with the
/// lines asked for ahead. (A directory's own cursor does not read ahead:
/// on a 10,000-key listing, which stays cached, the hints showed no gain.)
///
/// Only the directory on top of the walk's stack reads from it, and a
/// directory's children are all read before its own deferred directories
/// are written, so no directory's read is interleaved with another's.
#[derive(Default)]
struct Sweep<'t> {
    range: Option<heed::RoRange<'t, Bytes, Bytes>>,
    /// The next entry, read ahead: the first at or after the children of
    /// directory `from`, among those of directories not listed yet.
    peeked: Option<(&'t [u8], &'t [u8])>,
    from: u64,
}

/// Ask for the cache lines of `v` ahead of reading them.
fn prefetch(v: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of x86_64, and a prefetch reads nothing
        // (it is a hint that cannot fault).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
}

/// How many entries [`Sweep::seek`] steps over before it seeks instead.
const SWEEP_STEPS: usize = 16;

impl<'t> Sweep<'t> {
    /// Position at the children of `dir_id`: by stepping on when they are
    /// ahead and near, else by a new cursor.
    fn seek(&mut self, nodes: &Database<Bytes, Bytes>, txn: &'t RoTxn, dir_id: u64) -> Result<()> {
        let first = dir_id.to_be_bytes();
        if self.range.is_some() && dir_id >= self.from {
            for _ in 0..SWEEP_STEPS {
                match self.peeked {
                    Some((k, _)) if k < &first[..] => self.step()?,
                    _ => {
                        self.from = dir_id;
                        return Ok(());
                    }
                }
            }
        }
        let range = nodes.range(txn, &(Bound::Included(&first[..]), Bound::Unbounded))?;
        self.range = Some(range);
        self.from = dir_id;
        self.step()
    }

    fn step(&mut self) -> Result<()> {
        let range = self.range.as_mut().expect("a positioned sweep");
        self.peeked = range.next().transpose()?;
        if let Some((k, v)) = self.peeked {
            prefetch(k);
            prefetch(v);
        }
        Ok(())
    }

    /// The next child of the directory whose key prefix is `dir` (the one
    /// last sought), if any.
    #[inline]
    fn next(&mut self, dir: &[u8; 8]) -> Result<Option<(&'t [u8], &'t [u8])>> {
        match self.peeked {
            Some((k, v)) if k.starts_with(dir) => {
                self.step()?;
                Ok(Some((k, v)))
            }
            _ => {
                // Listed: the peeked entry is the first after its children.
                self.from = u64::from_be_bytes(*dir).saturating_add(1);
                Ok(None)
            }
        }
    }
}

/// How a listing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Done,
    /// The output passed the walk's limit.
    OverLimit,
    /// LMDB's order is not the listing's: list again without a scan.
    Unordered,
    /// The output passed the walk's pause mark: go on in the next slice.
    Paused,
}

/// A large read rendered in slices ([`Store::begin_slices`],
/// [`Store::get_slice`]): the read transaction it keeps, what it reads, and
/// where it stands.
pub struct Slices {
    txn: Rc<RoTxn<'static, WithoutTls>>,
    index: u64,
    path: Vec<u8>,
    recursive: bool,
    sorted: bool,
    now: i64,
    open: Option<Open>,
}

/// A read whose node is written up to its children: where its output
/// started, where the children start, the listing of its children when it
/// is a directory (where it stands), and its tail (modified and created
/// index).
struct Open {
    start: usize,
    children_at: usize,
    dir: Option<Resume>,
    tail: (u64, u64),
}

/// Where the listing of directory `dir_id` stands (see
/// [`Store::get_slice`]): its open directories, outermost first, the
/// listed directory's path, and the key path the walk is at, escaped as
/// JSON (what keys are written from).
#[derive(Debug, Default)]
struct Resume {
    dir_id: u64,
    frames: Vec<Resumed>,
    path: Vec<u8>,
    epath: Vec<u8>,
}

/// One open directory of a paused listing: the LMDB key of the last child
/// taken from it, whether `"nodes":[` is open, and its tail (see
/// `walk_children`).
#[derive(Debug)]
struct Resumed {
    dir_id: u64,
    after: Option<Vec<u8>>,
    any: bool,
    close: Option<(u64, u64, usize)>,
    later: Later,
}

/// The subdirectories an unsorted recursive scan defers until their
/// directory's files are written (see `walk_children`): their heads, and
/// their names in one buffer. Nothing is allocated for a directory
/// without subdirectories.
#[derive(Debug, Default)]
struct Later {
    dirs: Vec<LaterDir>,
    names: Vec<u8>,
    /// The next to write, once the directory's scan is over (sorted then).
    next: Option<usize>,
    /// What those not yet written will write at least (`LATER_DIR_BYTES`
    /// each, beyond their path).
    promised: usize,
}

/// The least a deferred directory writes besides its parent's path and
/// its name (with both empty:
/// `,{"key":"/","dir":true,"modifiedIndex":1,"createdIndex":1}`).
const LATER_DIR_BYTES: usize = 58;

#[derive(Debug)]
struct LaterDir {
    dir_id: u64,
    modified: u64,
    created: u64,
    expire: Option<i64>,
    name: std::ops::Range<usize>,
}

impl Later {
    /// The least a directory named `name` in a directory whose escaped
    /// path is `parent` bytes long writes.
    fn promise(parent: usize, name: usize) -> usize {
        parent + name + LATER_DIR_BYTES
    }

    /// Defer directory `rec`, named `name`, of a directory whose escaped
    /// path is `parent` bytes long; returns its [`Later::promise`].
    fn defer(&mut self, rec: &NodeRec, name: &[u8], parent: usize) -> usize {
        let promise = Self::promise(parent, name.len());
        self.promised += promise;
        let at = self.names.len();
        self.names.extend_from_slice(name);
        self.dirs.push(LaterDir {
            dir_id: rec.dir_id,
            modified: rec.modified,
            created: rec.created,
            expire: rec.expire,
            name: at..self.names.len(),
        });
        promise
    }

    /// Take deferred directory `i` (of [`Later::next_dir`]) to write: its
    /// promise, its record (a directory's has no value) and its name.
    fn take(&mut self, i: usize, parent: usize) -> (usize, NodeRec<'static>, &[u8]) {
        self.next = Some(i + 1);
        let d = &self.dirs[i];
        let promise = Self::promise(parent, d.name.len());
        self.promised = self.promised.saturating_sub(promise);
        let rec = NodeRec {
            dir: true,
            created: d.created,
            modified: d.modified,
            expire: d.expire,
            dir_id: d.dir_id,
            long_name: None,
            value: &[],
        };
        (promise, rec, &self.names[d.name.clone()])
    }

    /// The deferred directory to write next (the scan is over), if any.
    fn next_dir(&mut self) -> Option<usize> {
        let i = *self.next.get_or_insert_with(|| {
            self.dirs.sort_unstable_by_key(|d| d.dir_id);
            0
        });
        (i < self.dirs.len()).then_some(i)
    }
}

impl Resume {
    /// A listing of directory `dir_id` at `path`.
    fn new(dir_id: u64, path: Vec<u8>) -> Resume {
        let mut epath = Vec::with_capacity(path.len() + 64);
        crate::etcd::json::write_escaped(&mut epath, &path);
        Resume {
            dir_id,
            frames: vec![Resumed {
                dir_id,
                after: None,
                any: false,
                close: None,
                later: Later::default(),
            }],
            path,
            epath,
        }
    }
}

/// One child while listing: from this shard's LMDB, or another shard's file
/// (its name and rendered JSON).
enum Child<'a> {
    Local(NodeRec<'a>),
    Remote(&'a [u8], &'a [u8]),
}

/// The nodes of one directory that another shard rendered for a
/// member-wide GET (files, and whole placement units), in LMDB key order:
/// keys, names and JSON in one buffer.
#[derive(Debug, Clone, Default)]
pub struct RemoteDir {
    buf: Vec<u8>,
    /// Per file: where its key, name and JSON start, and where the JSON ends.
    spans: Vec<[u32; 4]>,
}

impl RemoteDir {
    /// Add another shard's nodes of the same directory.
    pub fn append(&mut self, other: RemoteDir) {
        let base = self.buf.len() as u32;
        self.buf.extend_from_slice(&other.buf);
        self.spans
            .extend(other.spans.iter().map(|s| s.map(|x| x + base)));
    }

    /// (LMDB key, name, JSON) of each file.
    fn files(&self) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
        self.spans.iter().map(|&[k, n, j, e]| {
            let b = &self.buf;
            (
                &b[k as usize..n as usize],
                &b[n as usize..j as usize],
                &b[j as usize..e as usize],
            )
        })
    }
}

/// Other shards' nodes by the id of their skeleton directory (the skeleton's
/// ids are the same on every shard).
pub type RemoteFiles = HashMap<u64, RemoteDir>;
