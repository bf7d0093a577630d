//! The store's writes: etcd's set, create, update, compare-and-swap,
//! delete and compare-and-delete, and the event JSON each one renders.
//! A decoded [`Command`] enters from `Store::apply_one` with the batch's
//! LMDB write transaction; it leaves as node records put and deleted in
//! that transaction and an [`Outcome`]: the event (queued for history and
//! watchers once the batch commits) or etcd's error, which changes nothing.

use super::*;

impl Store {
    pub(super) fn set(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        let mut missing_in = None;
        let found = match self.locate_in(txn, c.key, &mut missing_in)? {
            Ok(f) => Some(f),
            Err(e) if e.code == KEY_NOT_FOUND && !c.refresh => None,
            Err(e) => return Ok(Err(e)),
        };
        let mut value = c.value;
        let mut old_value = Vec::new();
        if c.refresh {
            let f = found.as_ref().unwrap();
            if !f.meta.dir && !f.lkey.is_empty() {
                old_value.extend_from_slice(rec(&f.lkey, self.record(txn, f)?)?.value);
            }
            value = &old_value;
        }
        let known = match (&found, missing_in) {
            (Some(f), _) if !f.meta.dir => {
                self.render_prev(txn, c.key, f, c.now)?;
                Known::File(f)
            }
            (None, Some((dir, from))) if c.key.get(from..).is_some_and(|n| !n.contains(&b'/')) => {
                Known::MissingIn(dir)
            }
            (None, Some((dir, from))) => Known::MissingBelow(dir, from),
            _ => Known::Nothing,
        };
        self.internal_create(txn, c, c.key, value, true, Action::Set, known)
    }

    pub(super) fn create(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        let (create, none) = (Action::Create, Known::Nothing);
        if c.op == Op::CreateUnique {
            let path = placement::unique_path(c.key, self.index + 1);
            return self.internal_create(txn, c, &path, c.value, false, create, none);
        }
        self.internal_create(txn, c, c.key, c.value, false, create, none)
    }

    /// etcd's internalCreate: make missing parents, then the node. `known`
    /// is what this transaction's lookup of `path` has just found.
    #[allow(clippy::too_many_arguments)]
    fn internal_create(
        &mut self,
        txn: &mut RwTxn,
        c: &Command,
        path: &[u8],
        value: &[u8],
        replace: bool,
        action: Action,
        known: Known,
    ) -> Result<Outcome> {
        let has_prev = matches!(known, Known::File(_));
        let next = self.index + 1;
        if path == b"/" {
            return Ok(Err(V2Error::new(ROOT_RONLY, "/", self.index)));
        }
        let expire = c.expire.filter(|&t| t >= MIN_EXPIRE);
        if self.local_only() && self.placement.in_unit(path) && !self.placement.owns(path) {
            // A POST just above the unit depth lands in any shard's unit.
            return Ok(Err(escalate(0)));
        }
        let mut kbuf = std::mem::take(&mut self.kbuf);
        let mut vbuf = std::mem::take(&mut self.vbuf);
        let name = &path[path.iter().rposition(|&b| b == b'/').unwrap_or(0) + 1..];
        // When the lookup found the node or its directory, its parents
        // exist: no walk (a member-wide write always walks).
        let r = match known {
            Known::File(f) if !self.global => {
                let old = f.meta.expire;
                self.write_node(txn, c, path, name, value, expire, old, &f.lkey, &mut vbuf)
            }
            Known::MissingIn(dir) if !self.global => {
                child_key(&mut kbuf, dir.dir_id, name);
                self.write_node(txn, c, path, name, value, expire, None, &kbuf, &mut vbuf)
            }
            Known::MissingBelow(dir, from) if !self.global => {
                let bufs = (&mut kbuf, &mut vbuf);
                let below = Some((dir, from));
                self.create_nodes(txn, c, path, value, replace, expire, below, bufs)
            }
            _ => {
                let bufs = (&mut kbuf, &mut vbuf);
                self.create_nodes(txn, c, path, value, replace, expire, None, bufs)
            }
        };
        self.kbuf = kbuf;
        self.vbuf = vbuf;
        if let Err(e) = r? {
            return Ok(Err(e));
        }
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
        Ok(Ok(self.event(kind, &node, Removed::default())))
    }

    /// The writes of [`Store::internal_create`]: missing parents, then the
    /// node at `path` (its index is `self.index + 1`). `below`: this
    /// transaction's lookup found the deepest directory above `path` and
    /// the offset of the first component missing under it. In a
    /// member-wide operation a shard writes the skeleton and what it owns,
    /// and skips a placement unit another shard holds.
    #[allow(clippy::too_many_arguments)]
    fn create_nodes(
        &mut self,
        txn: &mut RwTxn,
        c: &Command,
        path: &[u8],
        value: &[u8],
        replace: bool,
        expire: Option<i64>,
        below: Option<(Meta, usize)>,
        (kbuf, vbuf): (&mut Vec<u8>, &mut Vec<u8>),
    ) -> Result<std::result::Result<(), V2Error>> {
        let next = self.index + 1;
        let split = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let name = &path[split + 1..];
        let foreign = self.global && self.placement.in_unit(path) && !self.placement.owns(path);
        // Walk the parents, creating missing directories: from the deepest
        // one the cache knows, except in a member-wide write (which checks
        // every component's placement).
        let mut parent = ROOT;
        let mut start = 1;
        let anc = Ancestors::of(path);
        let mut depth = 0;
        // Below a missing directory (or one made here, under a new id)
        // nothing exists: no search.
        let (mut fresh, shortcuts) = (false, self.dirs.shortcuts());
        if let Some((dir, from)) = below.filter(|_| shortcuts) {
            parent = dir;
            start = from;
            depth = path[..from].iter().filter(|&&b| b == b'/').count() - 1;
            fresh = true;
        } else if !self.global {
            if let Some((i, end, dir_id)) = self.dirs.deepest(path, &anc) {
                parent = Meta { dir_id, ..ROOT };
                (depth, start) = (i + 1, end + 1);
            }
        }
        while start <= split {
            let end = path[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |p| start + p);
            let (comp, here) = (&path[start..end], &path[..end]);
            if foreign && self.placement.in_unit(here) {
                return Ok(Ok(()));
            }
            child_key(kbuf, parent.dir_id, comp);
            let got = if fresh {
                None
            } else {
                self.nodes.get(txn, kbuf)?
            };
            match got {
                Some(v) => {
                    let m = decode_meta(kbuf, v)?;
                    if !m.dir {
                        return Ok(Err(V2Error::new(NOT_DIR, here, self.index)));
                    }
                    parent = m;
                    self.dirs.insert(path, &anc, depth, m.dir_id);
                }
                None if self.local_only() && self.skeleton(here) => {
                    return Ok(Err(escalate(0)));
                }
                None => {
                    let id = self.new_dir_id(here);
                    let rec = NodeRec {
                        dir: true,
                        created: next,
                        modified: next,
                        expire: None,
                        dir_id: id,
                        long_name: None,
                        value: b"",
                    };
                    rec.encode(kbuf, comp, vbuf);
                    self.nodes.put(txn, kbuf, vbuf)?;
                    parent = Meta {
                        dir: true,
                        created: next,
                        modified: next,
                        expire: None,
                        dir_id: id,
                    };
                    self.dirs.insert(path, &anc, depth, id);
                    fresh = shortcuts;
                }
            }
            depth += 1;
            start = end + 1;
        }
        if foreign {
            return Ok(Ok(()));
        }
        child_key(kbuf, parent.dir_id, name);
        let mut old_expire = None;
        let got = if fresh {
            None
        } else {
            self.nodes.get(txn, kbuf)?
        };
        if let Some(v) = got {
            let m = decode_meta(kbuf, v)?;
            if !replace {
                return Ok(Err(V2Error::new(NODE_EXIST, path, self.index)));
            }
            if m.dir {
                return Ok(Err(V2Error::new(NOT_FILE, path, self.index)));
            }
            old_expire = m.expire;
        }
        self.write_node(txn, c, path, name, value, expire, old_expire, kbuf, vbuf)
    }

    /// The last write of [`Store::internal_create`]: the node at `path`
    /// under the LMDB key `key`, replacing a file whose expiry entry (if
    /// any) is at `old_expire`, or where nothing is.
    #[allow(clippy::too_many_arguments)]
    fn write_node(
        &mut self,
        txn: &mut RwTxn,
        c: &Command,
        path: &[u8],
        name: &[u8],
        value: &[u8],
        expire: Option<i64>,
        old_expire: Option<i64>,
        key: &[u8],
        vbuf: &mut Vec<u8>,
    ) -> Result<std::result::Result<(), V2Error>> {
        // Escalated before anything is written: the member-wide retry
        // finds the replaced file's expiry entry still in place.
        if c.dir && self.local_only() && self.skeleton(path) {
            return Ok(Err(escalate(0)));
        }
        let lazy = self.lazy_entry(c.dir, old_expire, expire);
        if let Some(t) = old_expire.filter(|_| !lazy) {
            self.del_expiry(txn, t, key)?;
        }
        // In a member-wide operation a file is written by its owner only.
        if self.global && !self.placement.holds(path, c.dir) {
            return Ok(Ok(()));
        }
        let next = self.index + 1;
        let dir_id = if c.dir { self.new_dir_id(path) } else { 0 };
        let rec = NodeRec {
            dir: c.dir,
            created: next,
            modified: next,
            expire,
            dir_id,
            long_name: None,
            value,
        };
        rec.encode(key, name, vbuf);
        self.nodes.put(txn, key, vbuf)?;
        if let Some(t) = expire.filter(|_| !lazy) {
            self.put_expiry(txn, t, key, path, c.dir)?;
        }
        Ok(Ok(()))
    }

    /// The node an update, a compare-and-swap or a delete works on, or
    /// etcd's error: the root is read-only, a missing path not found.
    fn existing(&mut self, txn: &RwTxn, key: &[u8]) -> Result<std::result::Result<Found, V2Error>> {
        if key == b"/" {
            return Ok(Err(V2Error::new(ROOT_RONLY, "/", self.index)));
        }
        self.locate(txn, key)
    }

    pub(super) fn update(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        let f = match self.existing(txn, c.key)? {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        if f.meta.dir && !c.value.is_empty() {
            return Ok(Err(V2Error::new(NOT_FILE, c.key, self.index)));
        }
        if f.meta.dir && self.local_only() && self.skeleton(c.key) {
            return Ok(Err(escalate(0)));
        }
        self.rewrite(txn, c, f, Action::Update)
    }

    pub(super) fn cas(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        let f = match self.existing(txn, c.key)? {
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
        let cur = rec(&f.lkey, self.record(txn, f)?)?.value;
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
            let rec = rec(&f.lkey, self.record(txn, &f)?)?;
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
            new.encode(&f.lkey, name, &mut vbuf);
        }
        self.nodes.put(txn, &f.lkey, &vbuf)?;
        self.vbuf = vbuf;
        if f.meta.expire != expire && !self.lazy_entry(f.meta.dir, f.meta.expire, expire) {
            if let Some(t) = f.meta.expire {
                self.del_expiry(txn, t, &f.lkey)?;
            }
            if let Some(t) = expire {
                self.put_expiry(txn, t, &f.lkey, c.key, f.meta.dir)?;
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
        Ok(Ok(self.event(kind, &node, Removed::default())))
    }

    pub(super) fn delete(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        let dir = c.dir || c.recursive;
        let f = match self.existing(txn, c.key)? {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        if f.meta.dir {
            if !dir {
                return Ok(Err(V2Error::new(NOT_FILE, c.key, self.index)));
            }
            if self.local_only() && self.skeleton(c.key) {
                return Ok(Err(escalate(0)));
            }
            if !c.recursive && self.has_children(txn, f.meta.dir_id)? {
                return Ok(Err(V2Error::new(DIR_NOT_EMPTY, c.key, self.index)));
            }
        }
        self.remove_node(txn, c, f, Action::Delete, c.now).map(Ok)
    }

    pub(super) fn cad(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
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
    pub(super) fn remove_node(
        &mut self,
        txn: &mut RwTxn,
        c: &Command,
        f: Found,
        action: Action,
        now: i64,
    ) -> Result<Arc<Event>> {
        let next = self.index + 1;
        self.render_prev(txn, c.key, &f, now)?;
        let mut removed = Removed::default();
        if f.meta.dir {
            // The cache may hold this directory or one below it.
            self.dirs.clear();
            self.remove_subtree(txn, f.meta.dir_id, &mut removed)?;
        }
        if let Some(t) = f.meta.expire {
            self.del_expiry(txn, t, &f.lkey)?;
        }
        self.nodes.delete(txn, &f.lkey)?;
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

    /// Delete every descendant of directory `dir_id`, recording each in
    /// `removed`. Iterative: the depth of a tree costs heap, never stack.
    fn remove_subtree(
        &mut self,
        txn: &mut RwTxn,
        dir_id: u64,
        removed: &mut Removed,
    ) -> Result<()> {
        // Directories whose children are still to delete: (id, position in
        // `removed`). A directory's own record is deleted when it is found;
        // its children stay keyed by its id until their turn.
        let mut todo = vec![(dir_id, Removed::TOP)];
        let mut children = Vec::new();
        while let Some((id, at)) = todo.pop() {
            children.clear();
            for item in self.nodes.prefix_iter(txn, &id.to_be_bytes())? {
                let (k, v) = item?;
                let rec = rec(k, v)?;
                let pos = removed.push(at, rec.name(k));
                children.push((k.to_vec(), rec.dir.then_some(rec.dir_id), rec.expire, pos));
            }
            for (k, dir, expire, pos) in children.drain(..) {
                if let Some(t) = expire {
                    self.del_expiry(txn, t, &k)?;
                }
                self.nodes.delete(txn, &k)?;
                if let Some(d) = dir {
                    todo.push((d, pos));
                }
            }
        }
        Ok(())
    }

    /// Render the event JSON (`self.prev` holds the prevNode when `has_prev`)
    /// and queue it for history and watchers after commit.
    fn event(&mut self, kind: EventKind, node: &NodeJson, removed: Removed) -> Arc<Event> {
        let EventKind {
            action,
            has_prev,
            prev_dir,
            refresh,
            created,
        } = kind;
        let key = node.key;
        // Room for the JSON (the fixed fields, the key and value escaped
        // with some slack, the rendered previous node) and, after it, the
        // raw key (`Event::new`): one allocation.
        let value = node.value.map_or(0, |v| v.len() + v.len() / 8);
        let prev = if has_prev { self.prev.len() } else { 0 };
        let mut json = Vec::with_capacity(192 + node.key.len() * 3 + value + prev);
        json.extend_from_slice(b"{\"action\":\"");
        json.extend_from_slice(action.as_str().as_bytes());
        json.extend_from_slice(b"\",\"node\":");
        node.write(&mut json);
        if has_prev {
            json.extend_from_slice(b",\"prevNode\":");
            json.extend_from_slice(&self.prev);
        }
        json.extend_from_slice(b"}\n");
        let flags = (prev_dir, refresh, created);
        let e = Arc::new(Event::new(self.index, action, key, flags, json, removed));
        self.pending.push(e.clone());
        e
    }
}
