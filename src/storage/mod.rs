//! Durable files of a shard: the raft write-ahead log ([`wal`]) and the
//! data-dir identity file ([`identity`]).

pub mod identity;
pub mod wal;
