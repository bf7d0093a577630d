//! The etcd v2 API surface: error codes, JSON encoding, parameters and the
//! request handlers that turn HTTP requests into store reads and commands.

pub mod error;
pub mod json;
