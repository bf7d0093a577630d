//! The v2 auth records in the store: applying `Op::Auth*` commands and
//! loading the records for publication.
//!
//! Records live in the `meta` database under `auth/` (`auth/users/<name>`,
//! `auth/roles/<name>`, `auth/enabled`), written in the batch transaction of
//! the command that changed them, so they are as durable as the keyspace
//! and replayed with it. etcd keeps them in its v2 store under `/2`, so
//! their changes take etcd indexes: the first change ever takes four more
//! (etcd creates `/2`, `/2/users`, `/2/roles` and `/2/enabled` first), and
//! each successful change one. Those indexes are published as placeholder
//! events (no watcher sees `/2`). After a durable batch that changed them,
//! [`Store::publish_auth`] loads the records into the member's
//! [`crate::auth::Shared`].

use std::sync::Arc;

use heed::RwTxn;

use super::{get_sealed, put_sealed, Command, Event, Op, Outcome, Result, Store};
use crate::auth::{Role, State, User, GUEST_ROLE};
use crate::etcd::error::{V2Error, KEY_NOT_FOUND, NODE_EXIST};

const PREFIX: &[u8] = b"auth/";
const ENABLED: &[u8] = b"auth/enabled";

impl Store {
    /// Take one etcd index for an auth store write, as a placeholder event.
    fn auth_index(&mut self) -> u64 {
        let i = self.reserve();
        self.index = i;
        self.pending.push(Arc::new(Event::placeholder(i)));
        i
    }

    /// Apply an auth command. Errors are etcd's store errors (105: the
    /// record exists, 100: it does not); the handler words them.
    pub(super) fn apply_auth(&mut self, txn: &mut RwTxn, c: &Command) -> Result<Outcome> {
        if get_sealed(&self.meta, txn, ENABLED)?.is_none() {
            // etcd's ensureAuthDirectories: /2, /2/users/, /2/roles/ and
            // /2/enabled (false).
            for _ in 0..4 {
                self.auth_index();
            }
            put_sealed(&self.meta, txn, ENABLED, b"false")?;
        }
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(c.key);
        let exists = get_sealed(&self.meta, txn, &key)?.is_some();
        let last = match c.op {
            Op::AuthCreate if exists => {
                return Ok(Err(V2Error::new(NODE_EXIST, c.key, self.index)));
            }
            Op::AuthUpdate | Op::AuthDelete if !exists => {
                return Ok(Err(V2Error::new(KEY_NOT_FOUND, c.key, self.index)));
            }
            Op::AuthCreate | Op::AuthUpdate => {
                put_sealed(&self.meta, txn, &key, c.value)?;
                self.auth_index()
            }
            Op::AuthDelete => {
                self.meta.delete(txn, &key)?;
                self.auth_index()
            }
            Op::AuthEnable => {
                let on = c.value == b"1";
                let guest = [PREFIX, b"roles/", GUEST_ROLE.as_bytes()].concat();
                if on && get_sealed(&self.meta, txn, &guest)?.is_none() {
                    put_sealed(&self.meta, txn, &guest, &Role::all(GUEST_ROLE).to_json())?;
                    self.auth_index();
                }
                let v: &[u8] = if on { b"true" } else { b"false" };
                put_sealed(&self.meta, txn, ENABLED, v)?;
                self.auth_index()
            }
            _ => return Err(super::Error::Corrupt("not an auth command".into())),
        };
        self.auth_changed = true;
        Ok(Ok(Arc::new(Event::placeholder(last))))
    }

    /// The auth records as stored now. A record that does not parse is
    /// damage the checksum missed: the shard stops.
    pub fn auth_state(&self) -> Result<State> {
        let rtxn = self.env.read_txn()?;
        let mut st = State::default();
        for item in self.meta.prefix_iter(&rtxn, PREFIX)? {
            let (k, _) = item?;
            let v = get_sealed(&self.meta, &rtxn, k)?.unwrap_or_default();
            let bad =
                || super::Error::Corrupt(format!("auth record {:?}", String::from_utf8_lossy(k)));
            let rest = &k[PREFIX.len()..];
            if rest == b"enabled" {
                st.enabled = v == b"true";
            } else if let Some(name) = rest.strip_prefix(b"users/") {
                let u = User::parse(v).map_err(|_| bad())?.with_root_role();
                st.users
                    .insert(String::from_utf8_lossy(name).into_owned(), u);
            } else if let Some(name) = rest.strip_prefix(b"roles/") {
                let r = Role::parse(v).map_err(|_| bad())?;
                st.roles
                    .insert(String::from_utf8_lossy(name).into_owned(), r);
            }
        }
        Ok(st)
    }

    /// Where this store publishes its auth records (shard 0 only).
    pub fn publish_auth_to(&mut self, to: Arc<crate::auth::Shared>) {
        self.auth_sink = Some(to);
        self.auth_changed = true;
    }

    /// Publish the auth records if a batch changed them (call once the
    /// batch is durable) or they were never published.
    pub fn publish_auth(&mut self) -> Result<()> {
        if !self.auth_changed {
            return Ok(());
        }
        if let Some(sink) = &self.auth_sink {
            sink.publish(self.auth_state()?);
        }
        self.auth_changed = false;
        Ok(())
    }

    /// Copy the auth records of `from` into `to` (a reshard's new shard 0).
    pub(super) fn copy_auth(from: &Store, to: &Store, txn: &mut RwTxn) -> Result<u64> {
        let rtxn = from.env.read_txn()?;
        let mut n = 0;
        for item in from.meta.prefix_iter(&rtxn, PREFIX)? {
            let (k, _) = item?;
            if let Some(v) = get_sealed(&from.meta, &rtxn, k)? {
                put_sealed(&to.meta, txn, k, v)?;
                n += 1;
            }
        }
        Ok(n)
    }
}
