//! The replicated command: what a raft entry carries into the store.
//!
//! The HTTP layer encodes a validated keys request into bytes with
//! [`Command::encode`]; the bytes travel through the raft log; the apply
//! loop decodes them back, borrowing from the entry, with [`Command::decode`].
//! Times are Unix nanoseconds stamped by the member that received the
//! request, so every replica computes the same TTLs and expiries.
//!
//! The shard that executes a command appends the member-wide etcd indexes it
//! took ([`push_index`]) before the entry enters the log, so replaying the
//! log after a crash gives every event the index its client was told.

/// One state-machine operation of the v2 store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    pub op: Op,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub prev_value: &'a [u8],
    pub prev_index: u64,
    /// Absolute expiry time; `None` = permanent.
    pub expire: Option<i64>,
    pub dir: bool,
    pub recursive: bool,
    pub refresh: bool,
    /// The proposing member's clock when the request arrived.
    pub now: i64,
    /// Sequence number of a member-wide (all-shard) operation; 0 = local.
    pub gseq: u64,
    /// etcd indexes taken when the command was executed (little-endian
    /// u64s); empty until then.
    pub indexes: &'a [u8],
}

/// The store operations (spec 4.2, 4.4, 4.5, 4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Set = 1,
    Create = 2,
    /// POST: create an in-order key under `key`.
    CreateUnique = 3,
    Update = 4,
    CompareAndSwap = 5,
    Delete = 6,
    CompareAndDelete = 7,
    /// Expire every node whose time is at or before `now`.
    Sync = 8,
    /// v2 auth (`store::auth`): create the record `key` (`users/<name>`,
    /// `roles/<name>`) with the JSON `value`; fails if it exists.
    AuthCreate = 9,
    /// Replace the existing record `key`; fails if it is missing.
    AuthUpdate = 10,
    /// Delete the existing record `key`; fails if it is missing.
    AuthDelete = 11,
    /// Turn auth on (`value` 1) or off (0); turning it on creates the
    /// guest role when there is none.
    AuthEnable = 12,
}

impl Op {
    /// A change of the v2 auth records, not of the keyspace.
    pub fn is_auth(self) -> bool {
        matches!(
            self,
            Op::AuthCreate | Op::AuthUpdate | Op::AuthDelete | Op::AuthEnable
        )
    }

    fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Set,
            2 => Op::Create,
            3 => Op::CreateUnique,
            4 => Op::Update,
            5 => Op::CompareAndSwap,
            6 => Op::Delete,
            7 => Op::CompareAndDelete,
            8 => Op::Sync,
            9 => Op::AuthCreate,
            10 => Op::AuthUpdate,
            11 => Op::AuthDelete,
            12 => Op::AuthEnable,
            _ => return None,
        })
    }
}

const F_DIR: u8 = 1;
const F_RECURSIVE: u8 = 2;
const F_REFRESH: u8 = 4;
const F_EXPIRE: u8 = 8;
const VERSION: u8 = 2;
const HEADER: usize = 35;

impl<'a> Command<'a> {
    pub fn new(op: Op, key: &'a [u8], now: i64) -> Command<'a> {
        Command {
            op,
            key,
            value: b"",
            prev_value: b"",
            prev_index: 0,
            expire: None,
            dir: false,
            recursive: false,
            refresh: false,
            now,
            gseq: 0,
            indexes: b"",
        }
    }

    /// The recorded indexes, in the order they were taken.
    pub fn recorded(&self) -> impl Iterator<Item = u64> + 'a {
        self.indexes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
    }

    /// Append the encoded command to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.dir {
            flags |= F_DIR;
        }
        if self.recursive {
            flags |= F_RECURSIVE;
        }
        if self.refresh {
            flags |= F_REFRESH;
        }
        if self.expire.is_some() {
            flags |= F_EXPIRE;
        }
        // The header, three lengths, the fields, and room for the indexes
        // the executing shard appends (`push_index`): one allocation.
        out.reserve(
            HEADER
                + 12
                + self.key.len()
                + self.value.len()
                + self.prev_value.len()
                + self.indexes.len()
                + 16,
        );
        out.push(VERSION);
        out.push(self.op as u8);
        out.push(flags);
        out.extend_from_slice(&self.now.to_le_bytes());
        out.extend_from_slice(&self.expire.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.prev_index.to_le_bytes());
        out.extend_from_slice(&self.gseq.to_le_bytes());
        for s in [self.key, self.prev_value, self.value] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s);
        }
        out.extend_from_slice(self.indexes);
    }

    /// Decode a command, borrowing from `b`. `None` means the entry is
    /// corrupt or from an unknown version.
    pub fn decode(b: &'a [u8]) -> Option<Command<'a>> {
        if b.len() < HEADER || b[0] != VERSION {
            return None;
        }
        let op = Op::from_u8(b[1])?;
        let flags = b[2];
        let rd = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let now = rd(3) as i64;
        let expire = rd(11) as i64;
        let prev_index = rd(19);
        let gseq = rd(27);
        let mut at = HEADER;
        let mut take = || -> Option<&'a [u8]> {
            let len = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
            let s = b.get(at + 4..at + 4 + len)?;
            at += 4 + len;
            Some(s)
        };
        let key = take()?;
        let prev_value = take()?;
        let value = take()?;
        let indexes = &b[at..];
        if !indexes.len().is_multiple_of(8) {
            return None;
        }
        Some(Command {
            op,
            key,
            value,
            prev_value,
            prev_index,
            expire: (flags & F_EXPIRE != 0).then_some(expire),
            dir: flags & F_DIR != 0,
            recursive: flags & F_RECURSIVE != 0,
            refresh: flags & F_REFRESH != 0,
            now,
            gseq,
            indexes,
        })
    }
}

/// Record an etcd index taken for the command encoded in `data`.
pub fn push_index(data: &mut Vec<u8>, index: u64) {
    data.extend_from_slice(&index.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut c = Command::new(Op::CompareAndSwap, b"/a/b", 1234);
        c.value = b"v\x00al";
        c.prev_value = b"old";
        c.prev_index = 77;
        c.expire = Some(-5);
        c.refresh = true;
        c.gseq = 9;
        let mut buf = Vec::new();
        c.encode(&mut buf);
        assert_eq!(Command::decode(&buf), Some(c.clone()));
        push_index(&mut buf, 41);
        push_index(&mut buf, 43);
        let d = Command::decode(&buf).unwrap();
        assert_eq!(d.recorded().collect::<Vec<_>>(), vec![41, 43]);
        assert_eq!(d.value, c.value);
        assert_eq!(Command::decode(&buf[..10]), None);
    }
}
