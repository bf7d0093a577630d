//! How one v2 node is laid out in LMDB.
//!
//! A node lives under the key `parent_dir_id (8 bytes, big-endian) ++ name`,
//! so a directory's children form one contiguous key range and a path is
//! found by walking one lookup per component. Names too long for LMDB's
//! 511-byte key limit are stored under a truncated name plus a hash, with the
//! full name kept in the record. Records are decoded in place, without copying,
//! from the LMDB page.
//!
//! Every record ends with a CRC-32 of its LMDB key and the rest of the
//! record, checked on every decode: a flipped bit in a stored name, index or
//! value is reported as corruption (which stops the shard), never served.
//! The same seal protects the store's other values ([`seal`], [`unseal`]).

/// Longest name stored verbatim in a key (LMDB allows 511 bytes per key).
pub const MAX_INLINE_NAME: usize = 480;

const F_DIR: u8 = 1;
const F_EXPIRE: u8 = 2;
const F_LONG_NAME: u8 = 4;

/// Build the LMDB key of child `name` in directory `parent_id`.
pub fn child_key(out: &mut Vec<u8>, parent_id: u64, name: &[u8]) {
    out.clear();
    out.extend_from_slice(&parent_id.to_be_bytes());
    if name.len() <= MAX_INLINE_NAME {
        out.extend_from_slice(name);
    } else {
        out.extend_from_slice(&name[..MAX_INLINE_NAME]);
        out.push(0xff);
        out.extend_from_slice(&fnv1a(name).to_be_bytes());
    }
}

/// 64-bit FNV-1a, for the long-name suffix.
fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A decoded node record, borrowing the LMDB page.
#[derive(Debug, Clone, Copy)]
pub struct NodeRec<'a> {
    pub dir: bool,
    pub created: u64,
    pub modified: u64,
    pub expire: Option<i64>,
    /// For directories: the id its children are keyed under.
    pub dir_id: u64,
    /// Set when the name did not fit in the key.
    pub long_name: Option<&'a [u8]>,
    pub value: &'a [u8],
}

/// Bytes of the checksum that ends every stored value.
pub const CRC_LEN: usize = 4;

fn crc(key: &[u8], body: &[u8]) -> u32 {
    // A fresh hasher asks which CPU features it may use (1 % of a large
    // listing); a copy of one made once does not.
    thread_local! {
        static HASHER: crc32fast::Hasher = crc32fast::Hasher::new();
    }
    let mut h = HASHER.with(Clone::clone);
    // An LMDB leaf stores a value right behind its key: one run then.
    if key.as_ptr().wrapping_add(key.len()) == body.as_ptr() {
        // SAFETY: `body` starts where `key` ends, so the two are one run
        // of readable bytes (an LMDB page, which both borrow).
        let run = unsafe { std::slice::from_raw_parts(key.as_ptr(), key.len() + body.len()) };
        h.update(run);
    } else {
        h.update(key);
        h.update(body);
    }
    h.finalize()
}

/// Append the checksum of `key` and `out` (a value about to be stored under
/// `key`) to `out`.
pub fn seal(key: &[u8], out: &mut Vec<u8>) {
    let c = crc(key, out);
    out.extend_from_slice(&c.to_le_bytes());
}

/// `value` (stored under `key`) without its checksum, or `None` when the
/// checksum does not match.
pub fn unseal<'v>(key: &[u8], value: &'v [u8]) -> Option<&'v [u8]> {
    let n = value.len().checked_sub(CRC_LEN)?;
    let (body, tail) = value.split_at(n);
    (crc(key, body).to_le_bytes() == tail).then_some(body)
}

impl<'a> NodeRec<'a> {
    /// Encode into `out` the record of child `name`, stored under `key`.
    pub fn encode(&self, key: &[u8], name: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let long = name.len() > MAX_INLINE_NAME;
        let mut flags = 0;
        if self.dir {
            flags |= F_DIR;
        }
        if self.expire.is_some() {
            flags |= F_EXPIRE;
        }
        if long {
            flags |= F_LONG_NAME;
        }
        out.push(flags);
        out.extend_from_slice(&self.created.to_le_bytes());
        out.extend_from_slice(&self.modified.to_le_bytes());
        if let Some(e) = self.expire {
            out.extend_from_slice(&e.to_le_bytes());
        }
        if self.dir {
            out.extend_from_slice(&self.dir_id.to_le_bytes());
        }
        if long {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name);
        }
        if !self.dir {
            out.extend_from_slice(self.value);
        }
        seal(key, out);
    }

    /// Decode the record stored under `key`; `None` means it is corrupt
    /// (its checksum does not match, or it does not parse).
    #[inline]
    pub fn decode(key: &[u8], b: &'a [u8]) -> Option<NodeRec<'a>> {
        let b = unseal(key, b)?;
        let flags = *b.first()?;
        let u = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let created = u(1)?;
        let modified = u(9)?;
        let mut at = 17;
        let expire = if flags & F_EXPIRE != 0 {
            at += 8;
            Some(u(at - 8)? as i64)
        } else {
            None
        };
        let dir = flags & F_DIR != 0;
        let dir_id = if dir {
            at += 8;
            u(at - 8)?
        } else {
            0
        };
        let long_name = if flags & F_LONG_NAME != 0 {
            let len = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
            let n = b.get(at + 4..at + 4 + len)?;
            at += 4 + len;
            Some(n)
        } else {
            None
        };
        Some(NodeRec {
            dir,
            created,
            modified,
            expire,
            dir_id,
            long_name,
            value: b.get(at..)?,
        })
    }

    /// The child's name, from the record or from its key.
    pub fn name<'k>(&self, key: &'k [u8]) -> &'k [u8]
    where
        'a: 'k,
    {
        match self.long_name {
            Some(n) => n,
            None => &key[8..],
        }
    }
}

/// The sortable 8-byte form of an expiry time (sign bit flipped, big-endian).
pub fn expiry_prefix(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`expiry_prefix`].
pub fn expiry_time(b: &[u8]) -> i64 {
    (u64::from_be_bytes(b[..8].try_into().unwrap()) ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let long = vec![b'x'; 2000];
        for name in [&b"abc"[..], &long[..]] {
            let rec = NodeRec {
                dir: false,
                created: 3,
                modified: 9,
                expire: Some(-77),
                dir_id: 0,
                long_name: None,
                value: b"hello",
            };
            let mut key = Vec::new();
            child_key(&mut key, 5, name);
            assert!(key.len() <= 511);
            let mut buf = Vec::new();
            rec.encode(&key, name, &mut buf);
            let d = NodeRec::decode(&key, &buf).unwrap();
            assert_eq!(
                (d.created, d.modified, d.expire, d.value),
                (3, 9, Some(-77), &b"hello"[..])
            );
            assert_eq!(d.name(&key), name);
        }
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let rec = NodeRec {
            dir: false,
            created: 3,
            modified: 9,
            expire: None,
            dir_id: 0,
            long_name: None,
            value: b"hello",
        };
        let mut key = Vec::new();
        child_key(&mut key, 5, b"name");
        let mut buf = Vec::new();
        rec.encode(&key, b"name", &mut buf);
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(NodeRec::decode(&key, &bad).is_none(), "bit {i}");
        }
        for i in 0..key.len() * 8 {
            let mut bad = key.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(NodeRec::decode(&bad, &buf).is_none(), "key bit {i}");
        }
        assert!(NodeRec::decode(&key, &buf[..3]).is_none());
    }

    #[test]
    fn expiry_prefix_sorts() {
        assert!(expiry_prefix(-5) < expiry_prefix(3));
        assert_eq!(expiry_time(&expiry_prefix(-5)), -5);
    }
}
