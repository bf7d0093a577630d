//! Seeding a one-shard store with another server's tree, and walking a
//! subtree out of it, for `kardia import` (`crate::import` drives both).
//!
//! In: the nodes of an etcd v2 snapshot, parents first, with etcd's own
//! indexes and expiry times, written as they are ([`Store::seed`]), so
//! that etcd's later log entries, executed as commands, take the indexes
//! and compare the values etcd did. Out: every node below a path —
//! hidden ones included — parents first ([`Store::export`]).

use super::*;

/// One node to seed: its full path (`/1/apps/a`), and what etcd stored.
#[derive(Debug, Clone)]
pub struct Seed {
    pub path: Vec<u8>,
    pub value: Vec<u8>,
    pub dir: bool,
    pub created: u64,
    pub modified: u64,
    pub expire: Option<i64>,
}

/// One exported node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub path: Vec<u8>,
    pub value: Vec<u8>,
    pub dir: bool,
    pub expire: Option<i64>,
}

impl Store {
    /// Write `nodes` (parents before children) into this empty store and
    /// set its index to `index`.
    pub fn seed(&mut self, nodes: &[Seed], index: u64) -> Result<()> {
        self.batch(|st, txn| {
            let mut ids: HashMap<Vec<u8>, u64> = HashMap::new();
            ids.insert(Vec::new(), 0);
            let (mut key, mut val) = (Vec::new(), Vec::new());
            for n in nodes {
                let cut = n
                    .path
                    .iter()
                    .rposition(|&b| b == b'/')
                    .ok_or_else(corrupt)?;
                let (parent, name) = (&n.path[..cut], &n.path[cut + 1..]);
                let Some(&parent_id) = ids.get(parent) else {
                    return Err(Error::Corrupt(format!(
                        "import: {} comes before its directory",
                        String::from_utf8_lossy(&n.path)
                    )));
                };
                let dir_id = if n.dir {
                    let id = st.next_dir_id;
                    st.next_dir_id += 1;
                    ids.insert(n.path.clone(), id);
                    id
                } else {
                    0
                };
                child_key(&mut key, parent_id, name);
                NodeRec {
                    dir: n.dir,
                    created: n.created,
                    modified: n.modified,
                    expire: n.expire,
                    dir_id,
                    long_name: None,
                    value: &n.value,
                }
                .encode(&key, name, &mut val);
                st.nodes.put(txn, &key, &val)?;
                if let Some(t) = n.expire {
                    st.put_expiry(txn, t, &key, &n.path, n.dir)?;
                }
            }
            st.index = index;
            // A scratch store of its own: the counter restarts at etcd's.
            st.counter.store(index, Ordering::SeqCst);
            Ok(((), None))
        })
    }

    /// Every node below the directory `root` (not `root` itself), parents
    /// first, hidden ones included.
    pub fn export(&self, root: &[u8]) -> Result<Vec<Exported>> {
        let rtxn = self.env.read_txn()?;
        let mut kbuf = Vec::new();
        let top = match self.find(&rtxn, root, &mut kbuf)? {
            Ok(f) if f.meta.dir => f.meta.dir_id,
            _ => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        let mut todo = vec![(top, root.to_vec())];
        while let Some((id, parent)) = todo.pop() {
            for item in self.nodes.prefix_iter(&rtxn, &id.to_be_bytes())? {
                let (k, v) = item?;
                let r = rec(k, v)?;
                let mut path = parent.clone();
                path.push(b'/');
                path.extend_from_slice(r.name(k));
                if r.dir {
                    todo.push((r.dir_id, path.clone()));
                }
                out.push(Exported {
                    path,
                    value: r.value.to_vec(),
                    dir: r.dir,
                    expire: r.expire,
                });
            }
        }
        Ok(out)
    }
}
