//! kardia: a replicated key-value server that speaks the etcd v2 HTTP API.
//!
//! Requests enter through [`http`], are interpreted by [`v2`], ordered by
//! [`raft`] and applied to the LMDB-backed [`store`] of the owning shard
//! ([`shard`]). [`config`] turns flags into a [`config::Config`];
//! [`server`] wires it all together for the binary; [`check`] verifies a
//! data dir offline. [`etcd`] holds etcd's error codes and JSON, which
//! every layer from the store up writes.

pub mod auth;
pub mod check;
pub mod cluster;
pub mod config;
pub mod etcd;
pub mod executor;
pub mod http;
pub mod import;
pub mod metrics;
pub mod mirror;
pub mod raft;
pub mod reshard;
pub mod server;
pub mod shard;
pub mod storage;
pub mod store;
pub mod tls;
pub mod v2;
