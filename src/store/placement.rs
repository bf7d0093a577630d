//! Placement: which shard of a member owns which nodes.
//!
//! A member may record a *unit depth* `k` in its data dir (`kardia.id`, set
//! when the data dir is created). Every node at depth `k` or deeper — a
//! directory or a file — belongs to the *placement unit* named by its first
//! `k` path components, and a unit lives whole on the shard chosen by
//! hashing that prefix (FNV-1a 64, modulo the shard count). So everything
//! below `/hm/v4/apps/actual/<app>` (`k` = 5) — the application directory an
//! HM9000 instance PUT creates, its instances, its delete — is one shard's
//! business, committed in that shard's normal batch.
//!
//! Above depth `k` (and everywhere when no depth is recorded, `k` = 0) the
//! older rule holds: directories form the *skeleton* every shard keeps and
//! that changes only by member-wide operations, and a file belongs to the
//! shard chosen by hashing its parent directory's path, so all the files of
//! one directory live together. The function is part of the on-disk
//! format: a data dir keeps the shard count and unit depth it was created
//! with.

/// Where one shard sits among a member's shards, and the member's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub shard: usize,
    pub shards: usize,
    /// Depth of the placement units (0: none).
    pub unit_depth: usize,
}

impl Placement {
    pub fn single() -> Placement {
        Placement {
            shard: 0,
            shards: 1,
            unit_depth: 0,
        }
    }

    /// The placement unit `path` belongs to (its first `k` components), if
    /// it is at depth `k` or deeper on a sharded member.
    fn unit_of<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        if self.unit_depth == 0 || self.shards <= 1 || path.len() < 2 {
            return None;
        }
        let mut seen = 0;
        for (i, &b) in path.iter().enumerate().skip(1) {
            if b == b'/' {
                seen += 1;
                if seen == self.unit_depth {
                    return Some(&path[..i]);
                }
            }
        }
        (seen + 1 == self.unit_depth).then_some(path)
    }

    /// True when the node at `path` lives in a placement unit: on one
    /// shard, even when it is a directory.
    pub fn in_unit(&self, path: &[u8]) -> bool {
        self.unit_of(path).is_some()
    }

    /// The shard that owns the node at `path`: its unit's, else (a file
    /// above the units) its parent directory's.
    pub fn of_key(&self, path: &[u8]) -> usize {
        if self.shards <= 1 {
            return 0;
        }
        let h = match self.unit_of(path) {
            Some(unit) => fnv1a(unit),
            None => fnv1a(parent(path)),
        };
        (h % self.shards as u64) as usize
    }

    /// The shard holding every child of directory `dir` (`/` for the
    /// root), or `None` when its children are units spread over the shards
    /// (a directory just above the unit depth).
    pub fn of_dir(&self, dir: &[u8]) -> Option<usize> {
        if self.shards <= 1 {
            return Some(0);
        }
        if let Some(unit) = self.unit_of(dir) {
            return Some((fnv1a(unit) % self.shards as u64) as usize);
        }
        if self.unit_depth > 0 && depth(dir) + 1 == self.unit_depth {
            return None;
        }
        Some((fnv1a(dir) % self.shards as u64) as usize)
    }

    /// The shard owning what a POST to `dir` creates with etcd index `index`.
    pub fn of_created(&self, dir: &[u8], index: u64) -> usize {
        self.of_dir(dir)
            .unwrap_or_else(|| self.of_key(&unique_path(dir, index)))
    }

    /// True when this shard owns the node at `path`.
    pub fn owns(&self, path: &[u8]) -> bool {
        self.of_key(path) == self.shard
    }

    /// True when this shard must hold the node at `path` (a directory of
    /// the skeleton is held by every shard).
    pub fn holds(&self, path: &[u8], dir: bool) -> bool {
        (dir && !self.in_unit(path)) || self.owns(path)
    }
}

/// The key a POST to `dir` creates with etcd index `index`.
pub fn unique_path(dir: &[u8], index: u64) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 21);
    if dir != b"/" {
        path.extend_from_slice(dir);
    }
    path.extend_from_slice(format!("/{index:020}").as_bytes());
    path
}

/// The number of components of a cleaned path (`/` has none).
pub fn depth(path: &[u8]) -> usize {
    if path == b"/" {
        0
    } else {
        path.iter().filter(|&&b| b == b'/').count()
    }
}

/// The parent directory of a cleaned key (`/a/b` → `/a`, `/a` → `/`).
pub fn parent(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &key[..i],
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in b {
        h ^= c as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn four(unit_depth: usize) -> Placement {
        Placement {
            shard: 0,
            shards: 4,
            unit_depth,
        }
    }

    #[test]
    fn parents() {
        assert_eq!(parent(b"/a"), b"/");
        assert_eq!(parent(b"/a/b"), b"/a");
        assert_eq!(parent(b"/"), b"/");
        assert_eq!(depth(b"/"), 0);
        assert_eq!(depth(b"/a"), 1);
        assert_eq!(depth(b"/a/b"), 2);
    }

    #[test]
    fn spreads_directories() {
        let p = four(0);
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[p.of_dir(format!("/apps/{i}").as_bytes()).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 180), "{seen:?}");
        assert_eq!(Some(p.of_key(b"/apps/7/x")), p.of_dir(b"/apps/7"));
        assert!(!p.in_unit(b"/a/b/c/d/e/f/g"));
    }

    #[test]
    fn units_hold_everything_below_their_prefix() {
        let p = four(2);
        assert_eq!(p.unit_of(b"/a"), None);
        assert_eq!(p.unit_of(b"/a/b"), Some(&b"/a/b"[..]));
        assert_eq!(p.unit_of(b"/a/b/c/d"), Some(&b"/a/b"[..]));
        assert!(!p.in_unit(b"/"));
        // Files above the units keep the parent rule.
        assert_eq!(p.of_key(b"/k"), p.of_dir(b"/").unwrap());
        assert_eq!(p.of_key(b"/a/b/c"), p.of_key(b"/a/b"));
        assert_eq!(p.of_dir(b"/a/b/c"), Some(p.of_key(b"/a/b")));
        // The children of a directory just above the units are spread.
        assert_eq!(p.of_dir(b"/a"), None);
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[p.of_key(format!("/apps/{i}/x/y").as_bytes())] += 1;
        }
        assert!(seen.iter().all(|&n| n > 180), "{seen:?}");
        assert_eq!(p.of_created(b"/a", 7), p.of_key(b"/a/00000000000000000007"));
        assert!(p.holds(b"/a", true) && !p.holds(b"/a/b", true) || p.owns(b"/a/b"));
        // One shard: no units.
        assert!(!Placement { shards: 1, ..p }.in_unit(b"/a/b"));
    }
}
