//! Durable files of a shard: the raft write-ahead log ([`wal`]) and the
//! data-dir identity file ([`identity`]), and the free space they are
//! allocated from ([`disk`]); [`powercut`] simulates losing power to them
//! in tests.

pub mod disk;
pub mod identity;
pub mod powercut;
pub mod wal;
