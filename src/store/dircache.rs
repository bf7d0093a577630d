//! The write path's directory cache: the directory id of recently walked
//! directory paths, so a write to `/hm/v4/apps/actual/<app>/<instance>`
//! starts its walk at the deepest directory it knows instead of searching
//! LMDB once per path component.
//!
//! Entries enter from the walks of write transactions (`Store::find_in`
//! with the cache, `create_nodes`), and leave by being overwritten (one
//! slot per path hash, no allocation) or all at once by [`DirCache::clear`]:
//! whenever a directory may have been removed (a directory deleted or
//! expired, a transaction aborted, the store restored, imported or
//! resharded). A directory's id never changes while it exists, so an entry
//! is exact as long as no directory was removed since it was written. Only
//! write transactions use it: a read on an older view may see directories
//! the latest write transaction has replaced.

/// Slots (a power of two); 128 bytes each.
const SLOTS: usize = 4096;
/// Longest directory path a slot holds (longer ones are walked).
const MAX_PATH: usize = 110;
/// Ancestors of one path probed at most (the shallowest ones).
const MAX_DEPTH: usize = 24;

#[derive(Clone, Copy)]
struct Slot {
    /// Valid only in the cache's current generation.
    gen: u32,
    len: u16,
    dir_id: u64,
    path: [u8; MAX_PATH],
}

const EMPTY: Slot = Slot {
    gen: 0,
    len: 0,
    dir_id: 0,
    path: [0; MAX_PATH],
};

/// See the module text.
pub struct DirCache {
    slots: Box<[Slot]>,
    /// Starts at 1; slots of older generations are empty.
    gen: u32,
    /// Tests: never remember anything, and take no shortcut (the walk of
    /// every write from the root, searching every component, to compare
    /// with).
    #[cfg(test)]
    pub off: bool,
}

impl Default for DirCache {
    fn default() -> DirCache {
        DirCache {
            slots: Vec::new().into_boxed_slice(),
            gen: 1,
            #[cfg(test)]
            off: false,
        }
    }
}

/// The proper ancestors of a path (`/a` and `/a/b` of `/a/b/c`), each by
/// the end of its prefix and its hash, shallowest first.
pub struct Ancestors {
    ends: [(u16, u64); MAX_DEPTH],
    n: usize,
}

impl Ancestors {
    /// Hash every proper ancestor of `path` (an absolute key) in one pass.
    pub fn of(path: &[u8]) -> Ancestors {
        let mut a = Ancestors {
            ends: [(0, 0); MAX_DEPTH],
            n: 0,
        };
        if path.len() > u16::MAX as usize {
            return a;
        }
        let mut h = 0u64;
        let mut start = 1;
        while a.n < MAX_DEPTH {
            let Some(p) = memchr::memchr(b'/', &path[start.min(path.len())..]) else {
                break;
            };
            let end = start + p;
            h = mix(h, &path[start..end]);
            a.ends[a.n] = (end as u16, h);
            a.n += 1;
            start = end + 1;
        }
        a
    }
}

/// Fold one path component into a prefix hash (8 bytes at a time).
fn mix(mut h: u64, comp: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunks = comp.chunks_exact(8);
    for c in chunks.by_ref() {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    let w = u64::from_le_bytes(tail) ^ ((comp.len() as u64) << 56);
    (h ^ w).wrapping_mul(K).rotate_left(29) ^ 0x2F
}

fn slot_of(hash: u64) -> usize {
    (hash.wrapping_mul(0x2545_F491_4F6C_DD1D) >> (64 - SLOTS.trailing_zeros())) as usize
}

impl DirCache {
    /// The deepest cached proper ancestor of `path`: its position in
    /// `anc`, the end of its prefix and its directory id.
    pub fn deepest(&self, path: &[u8], anc: &Ancestors) -> Option<(usize, usize, u64)> {
        if self.slots.is_empty() {
            return None;
        }
        for (i, &(end, h)) in anc.ends[..anc.n].iter().enumerate().rev() {
            let end = end as usize;
            let s = &self.slots[slot_of(h)];
            if s.gen == self.gen && s.len as usize == end && s.path[..end] == path[..end] {
                return Some((i, end, s.dir_id));
            }
        }
        None
    }

    /// Remember that the directory `path[..end]` (the `i`th ancestor in
    /// `anc`) has id `dir_id`.
    pub fn insert(&mut self, path: &[u8], anc: &Ancestors, i: usize, dir_id: u64) {
        let Some(&(end, h)) = anc.ends[..anc.n].get(i) else {
            return;
        };
        #[cfg(test)]
        if self.off {
            return;
        }
        let end = end as usize;
        if end > MAX_PATH {
            return;
        }
        if self.slots.is_empty() {
            self.slots = vec![EMPTY; SLOTS].into_boxed_slice();
        }
        let s = &mut self.slots[slot_of(h)];
        s.gen = self.gen;
        s.len = end as u16;
        s.dir_id = dir_id;
        s.path[..end].copy_from_slice(&path[..end]);
    }

    /// A write may skip searches the walk's own findings make needless
    /// (below a missing or new directory nothing exists).
    pub fn shortcuts(&self) -> bool {
        #[cfg(test)]
        if self.off {
            return false;
        }
        true
    }

    /// Forget every entry (a directory may have been removed).
    pub fn clear(&mut self) {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.slots.fill(EMPTY);
            self.gen = 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_known_ancestor_is_found_and_a_clear_forgets_all() {
        let p = b"/hm/v4/apps/actual/app-1/inst-1";
        let a = Ancestors::of(p);
        let ends: Vec<usize> = a.ends[..a.n].iter().map(|e| e.0 as usize).collect();
        assert_eq!(ends, [3, 6, 11, 18, 24]);
        let mut c = DirCache::default();
        assert_eq!(c.deepest(p, &a), None);
        c.insert(p, &a, 1, 7);
        c.insert(p, &a, 3, 9);
        assert_eq!(c.deepest(p, &a), Some((3, 18, 9)));
        // A sibling path shares the cached ancestors, not the parent.
        let q = b"/hm/v4/apps/desired/app-1";
        assert_eq!(c.deepest(q, &Ancestors::of(q)), Some((1, 6, 7)));
        // Same length and hash slot are not enough: the bytes must match.
        let r = b"/hm/v4/apps/actuaX/app-1/inst-1";
        assert_eq!(c.deepest(r, &Ancestors::of(r)), Some((1, 6, 7)));
        c.clear();
        assert_eq!(c.deepest(p, &a), None);
    }

    /// Random batches of writes (files, directories, TTL directories and
    /// their expiry, recursive deletes, POSTs, aborted trials) on a few
    /// short paths, applied to a store with the cache and one without:
    /// every outcome and the final tree are the same. Directories are
    /// removed and made again under new ids all the time here, so a cached
    /// id kept past a removal (or past an aborted transaction) would put a
    /// write under the wrong directory.
    mod same_as_without {
        use crate::store::{Command, Op, Options, Placement, ReadAt, Store, MIN_EXPIRE};
        use proptest::prelude::*;
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;

        #[derive(Debug, Clone)]
        enum W {
            File(String),
            Dir(String, bool),
            Post(String),
            Delete(String),
            Expire,
            Trial(String),
        }

        fn path() -> impl Strategy<Value = String> {
            proptest::collection::vec(prop_oneof!["a", "b"], 1..5)
                .prop_map(|c| format!("/{}", c.join("/")))
        }

        fn write() -> impl Strategy<Value = W> {
            prop_oneof![
                4 => path().prop_map(W::File),
                2 => (path(), any::<bool>()).prop_map(|(p, t)| W::Dir(p, t)),
                1 => path().prop_map(W::Post),
                3 => path().prop_map(W::Delete),
                1 => Just(W::Expire),
                1 => path().prop_map(W::Trial),
            ]
        }

        fn encode(w: &W, n: usize) -> Vec<u8> {
            let now = MIN_EXPIRE + 1_000_000_000 * n as i64;
            let value = format!("v{n}");
            let mut c = match w {
                W::File(p) | W::Trial(p) => Command::new(Op::Set, p.as_bytes(), now),
                W::Dir(p, _) => Command::new(Op::Set, p.as_bytes(), now),
                W::Post(p) => Command::new(Op::CreateUnique, p.as_bytes(), now),
                W::Delete(p) => Command::new(Op::Delete, p.as_bytes(), now),
                W::Expire => Command::new(Op::Sync, b"/", now),
            };
            match w {
                W::Dir(_, ttl) => {
                    c.dir = true;
                    // Due at the next expiry or two later.
                    c.expire = ttl.then_some(now + 1_500_000_000);
                }
                W::Delete(_) => (c.dir, c.recursive) = (true, true),
                _ => c.value = value.as_bytes(),
            }
            let mut data = Vec::new();
            c.encode(&mut data);
            data
        }

        fn open(dir: &std::path::Path, off: bool) -> Store {
            let opts = Options {
                map_size: 1 << 26,
                history: 10,
            };
            let counter = Arc::new(AtomicU64::new(0));
            let mut s = Store::open(dir, &opts, Placement::single(), counter).unwrap();
            s.dirs.off = off;
            s
        }

        fn outcome(o: &crate::store::Outcome) -> String {
            match o {
                Ok(e) => String::from_utf8_lossy(e.json()).into_owned(),
                Err(e) => format!("{} {}", e.code, String::from_utf8_lossy(&e.cause)),
            }
        }

        fn tree(s: &mut Store) -> String {
            let mut out = Vec::new();
            let r = s.get(
                0,
                b"/",
                true,
                true,
                0,
                None,
                ReadAt::Now,
                usize::MAX,
                &mut out,
            );
            r.unwrap().unwrap();
            String::from_utf8(out).unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn writes_walk_the_same_with_and_without_the_directory_cache(
                batches in proptest::collection::vec(proptest::collection::vec(write(), 1..10), 1..15)
            ) {
                let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
                let mut stores = [open(d1.path(), false), open(d2.path(), true)];
                let (mut raft, mut n) = (0u64, 0usize);
                for batch in &batches {
                    let mut got = Vec::new();
                    for s in stores.iter_mut() {
                        let mut seen = Vec::new();
                        let mut data = Vec::new();
                        for (i, w) in batch.iter().enumerate() {
                            if let W::Trial(_) = w {
                                let o = s.trial(&encode(w, n + i)).unwrap();
                                seen.push(o.as_ref().map(outcome).unwrap_or_default());
                            } else {
                                data.push(encode(w, n + i));
                            }
                        }
                        let mut out = Vec::new();
                        let entries = data.iter().enumerate();
                        let entries = entries.map(|(i, d)| (raft + 1 + i as u64, 1, &d[..]));
                        s.apply_batch(entries, &mut out).unwrap();
                        seen.extend(out.iter().map(|(_, o)| outcome(o)));
                        got.push(seen);
                    }
                    raft += batch.len() as u64;
                    n += batch.len();
                    prop_assert_eq!(&got[0], &got[1]);
                }
                let [a, b] = &mut stores;
                prop_assert_eq!(tree(a), tree(b));
            }
        }
    }

    #[test]
    fn paths_without_ancestors_or_too_long_are_not_cached() {
        let a = Ancestors::of(b"/top");
        assert_eq!(a.n, 0);
        let long = format!("/{}/x", "d".repeat(200));
        let a = Ancestors::of(long.as_bytes());
        let mut c = DirCache::default();
        c.insert(long.as_bytes(), &a, 0, 5);
        assert_eq!(c.deepest(long.as_bytes(), &a), None);
    }
}
