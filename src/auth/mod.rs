//! v2 auth (etcd's `v2auth`): who a request is, and what it may touch.
//!
//! The records ([`model`]) live in shard 0's store, written by replicated
//! commands (`Op::Auth*`, see `store::auth`). After each durable batch
//! that changed them, shard 0 loads them into a [`State`] and publishes it
//! in [`Shared`], which every executor reads without a lock. A request's
//! credentials enter as its `Authorization` header; [`Verifier`] (one per
//! executor) answers from a bounded cache of verified headers, so a bcrypt
//! comparison — run on a blocking thread, never on an executor — happens
//! once per user and password, not per request.

pub mod model;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use arc_swap::ArcSwap;
use base64::Engine as _;

pub use model::{AuthError, Role, User, GUEST_ROLE, ROOT_ROLE};

/// bcrypt cost of new password hashes (Go's `bcrypt.DefaultCost`).
pub const BCRYPT_COST: u32 = 10;

/// Verified credentials an executor remembers at most.
const CACHE_MAX: usize = 4096;

/// bcrypt comparisons one executor runs at once; more wait their turn (a
/// flood of distinct wrong passwords cannot take every core).
pub const CHECKS_AT_ONCE: u64 = 2;

/// The auth records as of one durable batch.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub enabled: bool,
    /// By name; the user named root always holds the root role.
    pub users: BTreeMap<String, User>,
    /// Stored roles by name (the built-in root role is not among them).
    pub roles: BTreeMap<String, Role>,
}

impl State {
    /// etcd's `GetRole`: the built-in root role, or a stored one.
    pub fn role(&self, name: &str) -> Option<Role> {
        if name == ROOT_ROLE {
            return Some(Role::root());
        }
        self.roles.get(name).cloned()
    }

    /// Every role name, root included, sorted (etcd's `AllRoles`).
    pub fn role_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.roles.keys().cloned().collect();
        v.push(ROOT_ROLE.to_string());
        v.sort();
        v
    }

    /// etcd's `hasKeyPrefixAccess` for a known user.
    pub fn user_may(&self, user: &User, key: &[u8], recursive: bool, write: bool) -> bool {
        user.roles.iter().flatten().any(|name| {
            name == ROOT_ROLE
                || self.roles.get(name).is_some_and(|role| {
                    if recursive {
                        role.has_recursive_access(key, write)
                    } else {
                        role.has_key_access(key, write)
                    }
                })
        })
    }

    /// etcd's `hasGuestAccess` (never recursive access: etcd checks the
    /// guest role's key access even for recursive requests).
    pub fn guest_may(&self, key: &[u8], write: bool) -> bool {
        self.roles
            .get(GUEST_ROLE)
            .is_some_and(|r| r.has_key_access(key, write))
    }
}

/// The published auth state, shared by every executor of the member.
#[derive(Default)]
pub struct Shared {
    enabled: AtomicBool,
    state: ArcSwap<State>,
}

impl Shared {
    /// Whether auth is on (one atomic load: the request path's only cost
    /// while it is off).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Make `s` the state every executor sees from now on.
    pub fn publish(&self, s: State) {
        let on = s.enabled;
        self.state.store(Arc::new(s));
        self.enabled.store(on, Ordering::Release);
    }
}

/// Who a request is.
#[derive(Debug)]
pub enum Who<'s> {
    /// No credentials (no or an empty `Authorization` header).
    Guest,
    /// A user whose password checked out.
    User(&'s User),
    /// Credentials that name no user, fail their password, or are not
    /// HTTP basic auth: never a guest.
    Refused,
    /// The password must be checked against its bcrypt hash first.
    Verify(Verification),
}

/// A bcrypt comparison to run before the request is handled again.
#[derive(Debug)]
pub struct Verification {
    key: [u8; 32],
    user: String,
    password: String,
    hash: String,
}

/// What a verified header resolved to, and against which hash.
struct Verdict {
    user: String,
    hash: String,
    ok: bool,
}

/// One executor's cache of verified `Authorization` headers, keyed by
/// their SHA-256 (the clear text is not kept). An entry stands only while
/// the user's stored hash is the one it was checked against, so a changed
/// password or a deleted user takes effect at once. Wrong passwords are
/// remembered too: repeating one costs no bcrypt.
pub struct Verifier {
    cache: HashMap<[u8; 32], Verdict>,
    /// Comparisons under way, by header: requests with the same header
    /// wait for that one instead of starting their own (64 connections
    /// opening with one password cost one bcrypt, not 64).
    inflight: HashMap<[u8; 32], Rc<Flight>>,
    /// Bounds the comparisons under way ([`CHECKS_AT_ONCE`]).
    pub slots: Rc<glommio::sync::Semaphore>,
}

impl Default for Verifier {
    fn default() -> Verifier {
        Verifier {
            cache: HashMap::new(),
            inflight: HashMap::new(),
            slots: Rc::new(glommio::sync::Semaphore::new(CHECKS_AT_ONCE)),
        }
    }
}

/// One comparison under way, which other requests can wait for.
#[derive(Default)]
pub struct Flight {
    done: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Flight {
    /// Resolves once the comparison's verdict is remembered.
    pub async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.done.get() {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn finish(&self) {
        self.done.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// Go's `Request.BasicAuth`: `Basic <base64(user:password)>`.
pub fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    const PREFIX: &[u8] = b"Basic ";
    if header.len() < PREFIX.len() || !header[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&header[PREFIX.len()..])
        .ok()?;
    let s = String::from_utf8_lossy(&raw);
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

impl Verifier {
    /// Who the request with this `Authorization` header (if any) is; with
    /// no header, the first of `cert_names` (common names of its verified
    /// client certificates) that names a user, as etcd does under
    /// `--client-cert-auth`.
    pub fn identify<'s>(
        &self,
        state: &'s State,
        header: Option<&[u8]>,
        cert_names: &[String],
    ) -> Who<'s> {
        let header = match header {
            None | Some(b"") => {
                return cert_names
                    .iter()
                    .find_map(|n| state.users.get(n))
                    .map_or(Who::Guest, Who::User)
            }
            Some(h) => h,
        };
        let key = sha256(header);
        if let Some(v) = self.cache.get(&key) {
            if let Some(u) = state.users.get(&v.user) {
                if u.password == v.hash {
                    return if v.ok { Who::User(u) } else { Who::Refused };
                }
            }
        }
        let Some((name, password)) = parse_basic(header) else {
            return Who::Refused;
        };
        let Some(u) = state.users.get(&name) else {
            return Who::Refused;
        };
        Who::Verify(Verification {
            key,
            user: name,
            password,
            hash: u.password.clone(),
        })
    }

    /// The comparison under way for `v`'s header, if any; otherwise `v`'s
    /// own, registered so later requests wait for it.
    pub fn join(&mut self, v: &Verification) -> (Rc<Flight>, bool) {
        match self.inflight.get(&v.key) {
            Some(f) => (f.clone(), false),
            None => {
                let f = Rc::new(Flight::default());
                self.inflight.insert(v.key, f.clone());
                (f, true)
            }
        }
    }

    /// A comparison that will not finish (its task went away): release its
    /// waiters, which then ask again.
    pub fn abandon(&mut self, key: &[u8; 32]) {
        if let Some(f) = self.inflight.remove(key) {
            f.finish();
        }
    }

    /// Remember the verdict of a comparison and release its waiters.
    pub fn remember(&mut self, c: Checked) {
        if self.cache.len() >= CACHE_MAX {
            // Make room by one (an arbitrary entry): a flood of wrong
            // passwords cannot flush every good credential at once.
            if let Some(k) = self.cache.keys().next().copied() {
                self.cache.remove(&k);
            }
        }
        if let Some(f) = self.inflight.remove(&c.key) {
            f.finish();
        }
        self.cache.insert(c.key, c.verdict);
    }
}

/// A finished comparison, for [`Verifier::remember`].
pub struct Checked {
    key: [u8; 32],
    verdict: Verdict,
}

impl Checked {
    /// Whether the password matched.
    pub fn ok(&self) -> bool {
        self.verdict.ok
    }
}

impl Verification {
    /// The cache key: the SHA-256 of the `Authorization` header.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// Run the bcrypt comparison on a blocking thread.
    pub async fn run(self) -> Checked {
        let Verification {
            key,
            user,
            password,
            hash,
        } = self;
        let h = hash.clone();
        let ok = glommio::executor()
            .spawn_blocking(move || bcrypt::verify(password, &h).unwrap_or(false))
            .await;
        Checked {
            key,
            verdict: Verdict { user, hash, ok },
        }
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

/// Hash a new password off the executor (bcrypt, cost [`BCRYPT_COST`]).
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    glommio::executor()
        .spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST))
        .await
        .map_err(|e| model::http_err(500, &format!("auth: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_parsed_as_go_does() {
        assert_eq!(
            parse_basic(b"Basic cm9vdDpyb290cHc="),
            Some(("root".into(), "rootpw".into()))
        );
        assert_eq!(
            parse_basic(b"basic cm9vdDpyb290cHc="),
            Some(("root".into(), "rootpw".into()))
        );
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
        // No colon: not credentials.
        assert_eq!(parse_basic(b"Basic YWxpY2U="), None);
        // A colon in the password stays in it.
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u:a:b")
        );
        assert_eq!(parse_basic(h.as_bytes()), Some(("u".into(), "a:b".into())));
    }
}
