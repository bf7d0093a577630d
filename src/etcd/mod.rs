//! What etcd's v2 store answers with, below every layer that produces it:
//! its error codes and their JSON ([`error`]), and JSON written exactly as
//! etcd's Go encoder writes it ([`json`]).
//!
//! Errors are deterministic results of commands and event JSON is rendered
//! when a command is applied, so the store, the shards and the raft loop
//! use these as much as the HTTP API does; they depend on nothing else in
//! the crate. Bytes and codes enter; JSON leaves, appended to the caller's
//! buffer.

pub mod error;
pub mod json;
