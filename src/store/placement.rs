//! Placement: which shard of a member owns which keys.
//!
//! A file belongs to the shard chosen by hashing its parent directory's path
//! (FNV-1a 64, modulo the shard count), so all the files of one directory
//! live together: listing a directory, or writing a new instance under an
//! existing application directory, touches one shard. Directories themselves
//! (the skeleton of the tree) are kept by every shard, and change only by
//! member-wide operations. The function is part of the on-disk format: a
//! data dir keeps the shard count it was created with.

/// Where one shard sits among a member's shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub shard: usize,
    pub shards: usize,
}

impl Placement {
    pub fn single() -> Placement {
        Placement {
            shard: 0,
            shards: 1,
        }
    }

    /// The shard that owns the files of directory `dir` (`/` for the root).
    pub fn of_dir(&self, dir: &[u8]) -> usize {
        if self.shards <= 1 {
            return 0;
        }
        (fnv1a(dir) % self.shards as u64) as usize
    }

    /// The shard that owns the file at `key` (by its parent directory).
    pub fn of_key(&self, key: &[u8]) -> usize {
        self.of_dir(parent(key))
    }

    /// True when this shard owns the files of `dir`.
    pub fn owns_dir(&self, dir: &[u8]) -> bool {
        self.of_dir(dir) == self.shard
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

    #[test]
    fn parents() {
        assert_eq!(parent(b"/a"), b"/");
        assert_eq!(parent(b"/a/b"), b"/a");
        assert_eq!(parent(b"/"), b"/");
    }

    #[test]
    fn spreads_directories() {
        let p = Placement {
            shard: 0,
            shards: 4,
        };
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[p.of_dir(format!("/apps/{i}").as_bytes())] += 1;
        }
        assert!(seen.iter().all(|&n| n > 180), "{seen:?}");
        assert_eq!(p.of_key(b"/apps/7/x"), p.of_dir(b"/apps/7"));
    }
}
