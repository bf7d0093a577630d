//! The v2 auth API (`/v2/auth/...`, etcd's `client_auth.go`) and the
//! permission checks the keys and members endpoints make.
//!
//! A request's identity comes from its `Authorization` header through the
//! executor's [`Verifier`](crate::auth::Verifier); a password not yet
//! verified sends the request back to the HTTP layer as
//! [`Handled::Again`] with [`Pending::Verify`], which checks it off the
//! executor and handles the request again. Reads of users and roles are
//! answered from the published [`State`]; changes become `Op::Auth*`
//! commands proposed to shard 0 and are answered once applied and
//! durable ([`complete`]), with etcd's status codes and messages.

use std::sync::Arc;

use super::keys::{write_error, Pending};
use super::{method_not_allowed, Api};
use crate::auth::model::{auth_err, http_err, Perms};
use crate::auth::{hash_password, AuthError, Role, State, User, Who, ROOT_ROLE};
use crate::etcd::error::{V2Error, KEY_NOT_FOUND, NODE_EXIST, UNAUTHORIZED};
use crate::http::response::{Response, JSON};
use crate::http::{Handled, Method, Request};
use crate::raft::wall_nanos;
use crate::shard::Answer;
use crate::store::{Command, Op};

type Out = Handled<Pending, super::keys::Watch>;

/// An auth change waiting for its turn on the connection.
pub struct PendingAuth {
    change: Change,
    http11: bool,
}

enum Change {
    PutUser(User),
    DeleteUser(String),
    PutRole(Role),
    DeleteRole(String),
    Enable(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Users,
    Roles,
}

/// What a permission check decided.
enum Access<'s> {
    Allowed,
    Denied,
    /// As this user.
    As(&'s User),
    Verify(crate::auth::Verification),
}

/// The published state, when auth is on.
fn enabled_state(api: &Api) -> Option<Arc<State>> {
    let auth = &api.shard.shared.auth;
    auth.enabled().then(|| auth.state())
}

fn identify<'s>(api: &Api, st: &'s State, req: &Request<'_>) -> Access<'s> {
    match api
        .verifier
        .borrow()
        .identify(st, req.head.authorization, req.client_names)
    {
        Who::Guest => Access::Allowed,
        Who::User(u) => Access::As(u),
        Who::Refused => Access::Denied,
        Who::Verify(v) => Access::Verify(v),
    }
}

/// etcd's `hasKeyPrefixAccess` for a keys request on `key` (the path after
/// `/v2/keys`, as sent). `None`: go on; otherwise the request's answer
/// (a 401 is written) or a password to verify first.
pub fn check_key(
    api: &Api,
    req: &Request<'_>,
    key: &[u8],
    recursive: bool,
    out: &mut Vec<u8>,
) -> Option<Out> {
    let st = enabled_state(api)?;
    let write = !matches!(req.head.method, Method::Get | Method::Head);
    let allowed = match identify(api, &st, req) {
        Access::Allowed => st.guest_may(key, write),
        Access::As(u) => st.user_may(u, key, recursive, write),
        Access::Denied => false,
        Access::Verify(v) => return Some(Handled::Again(Pending::Verify(v))),
    };
    if allowed {
        return None;
    }
    let e = V2Error::new(UNAUTHORIZED, "Insufficient credentials", 0);
    write_error(
        api,
        req.head.http11,
        &e,
        req.head.method == Method::Head,
        out,
    );
    Some(Handled::Done)
}

/// etcd's `hasRootAccess` (`write_only`: `hasWriteRootAccess`, which lets
/// GET and HEAD through). `None`: go on.
pub fn check_root(
    api: &Api,
    req: &Request<'_>,
    write_only: bool,
    out: &mut Vec<u8>,
) -> Option<Out> {
    if write_only && matches!(req.head.method, Method::Get | Method::Head) {
        return None;
    }
    let st = enabled_state(api)?;
    let root = match identify(api, &st, req) {
        Access::As(u) => u.is_root(),
        Access::Allowed | Access::Denied => false,
        Access::Verify(v) => return Some(Handled::Again(Pending::Verify(v))),
    };
    if root {
        return None;
    }
    let e = http_err(401, "Insufficient credentials");
    send_error(api, req.head.http11, &e, false, out);
    Some(Handled::Done)
}

/// An auth API error: `{"message":...}` without a newline, as etcd's
/// `HTTPError` writes it (with the cluster id once the handler set it).
fn send_error(api: &Api, http11: bool, e: &AuthError, cluster_id: bool, out: &mut Vec<u8>) {
    let mut body = b"{\"message\":".to_vec();
    crate::etcd::json::write_str(&mut body, e.message.as_bytes());
    body.push(b'}');
    let mut r = Response::start(out, http11, e.status);
    r.header("Content-Type", JSON);
    if cluster_id {
        r.header("X-Etcd-Cluster-Id", &api.cluster_id_hex);
    }
    r.body(&body, false);
}

/// A success: JSON `body` (with its newline, as Go's encoder ends it), or
/// no body at all.
fn send_ok(api: &Api, http11: bool, status: u16, body: &[u8], out: &mut Vec<u8>) {
    let mut r = Response::start(out, http11, status);
    r.header("Content-Type", JSON)
        .header("X-Etcd-Cluster-Id", &api.cluster_id_hex);
    r.body(body, false);
}

/// A user with its roles spelled out (etcd's `userWithRoles`); roles that
/// do not exist are left out, or fail the read (`strict`).
fn write_user_with_roles(
    st: &State,
    u: &User,
    strict: bool,
    out: &mut Vec<u8>,
) -> Result<(), AuthError> {
    out.extend_from_slice(b"{\"user\":");
    crate::etcd::json::write_str(out, u.user.as_bytes());
    let mut first = true;
    for name in u.roles.iter().flatten() {
        let Some(role) = st.role(name) else {
            if strict {
                return Err(auth_err(404, format_args!("Role {name} does not exist.")));
            }
            continue;
        };
        out.extend_from_slice(if first { b",\"roles\":[" } else { b"," });
        first = false;
        role.write(out);
    }
    if !first {
        out.push(b']');
    }
    out.push(b'}');
    Ok(())
}

/// The users etcd lists: names starting with `_` are hidden nodes of its
/// store, left out of listings.
fn listed(name: &str) -> bool {
    !name.starts_with('_')
}

/// `/v2/auth/<rest>`.
pub fn handle(api: &Api, req: &Request<'_>, rest: &[u8], out: &mut Vec<u8>) -> Out {
    let http11 = req.head.http11;
    let m = req.head.method;
    // Go's ServeMux: exact "enable", "users", "roles"; subtrees "users/",
    // "roles/" (the handler cleans the path: a trailing slash goes).
    let (kind, name) = match rest {
        b"enable" => return enable(api, req, out),
        b"users" | b"users/" => (Kind::Users, None),
        b"roles" | b"roles/" => (Kind::Roles, None),
        _ => {
            let (kind, tail) = if let Some(t) = rest.strip_prefix(b"users/") {
                (Kind::Users, t)
            } else if let Some(t) = rest.strip_prefix(b"roles/") {
                (Kind::Roles, t)
            } else {
                super::not_found(req, out);
                return Handled::Done;
            };
            let tail = tail.strip_suffix(b"/").unwrap_or(tail);
            if tail.contains(&b'/') {
                send_error(api, http11, &http_err(400, "Invalid path"), false, out);
                return Handled::Done;
            }
            (kind, Some(String::from_utf8_lossy(tail).into_owned()))
        }
    };
    let allowed: &[u8] = if name.is_some() {
        b"GET,PUT,DELETE"
    } else {
        b"GET"
    };
    let ok_method = match name {
        Some(_) => matches!(m, Method::Get | Method::Put | Method::Delete),
        None => m == Method::Get,
    };
    if !ok_method {
        method_not_allowed(req, allowed, out);
        return Handled::Done;
    }
    if let Some(h) = check_root(api, req, false, out) {
        return h;
    }
    let st = api.shard.shared.auth.state();
    let mut body = Vec::new();
    let r = match (kind, name, m) {
        (Kind::Users, None, _) => {
            body.extend_from_slice(b"{\"users\":");
            let users: Vec<&User> = st
                .users
                .iter()
                .filter(|(n, _)| listed(n))
                .map(|(_, u)| u)
                .collect();
            if users.is_empty() {
                body.extend_from_slice(b"null");
            } else {
                body.push(b'[');
                for (i, u) in users.into_iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    let _ = write_user_with_roles(&st, u, false, &mut body);
                }
                body.push(b']');
            }
            body.extend_from_slice(b"}\n");
            Ok(())
        }
        (Kind::Roles, None, _) => {
            body.extend_from_slice(b"{\"roles\":[");
            let names = st.role_names();
            for (i, n) in names.iter().filter(|n| listed(n)).enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                if let Some(r) = st.role(n) {
                    r.write(&mut body);
                }
            }
            body.extend_from_slice(b"]}\n");
            Ok(())
        }
        (Kind::Users, Some(name), Method::Get) => match st.users.get(&name) {
            None => Err(auth_err(404, format_args!("User {name} does not exist."))),
            Some(u) => write_user_with_roles(&st, u, true, &mut body).map(|()| body.push(b'\n')),
        },
        (Kind::Roles, Some(name), Method::Get) => match st.role(&name) {
            None => Err(auth_err(404, format_args!("Role {name} does not exist."))),
            Some(r) => {
                r.write(&mut body);
                body.push(b'\n');
                Ok(())
            }
        },
        (kind, Some(name), Method::Put) => {
            return match parse_put(kind, &name, req.body) {
                Ok(change) => Handled::Pending(Pending::Auth(PendingAuth { change, http11 })),
                Err(e) => {
                    send_error(api, http11, &e, true, out);
                    Handled::Done
                }
            };
        }
        (kind, Some(name), _) => {
            let change = if kind == Kind::Users {
                Change::DeleteUser(name)
            } else {
                Change::DeleteRole(name)
            };
            return Handled::Pending(Pending::Auth(PendingAuth { change, http11 }));
        }
    };
    match r {
        Ok(()) => send_ok(api, http11, 200, &body, out),
        Err(e) => send_error(api, http11, &e, true, out),
    }
    Handled::Done
}

/// A PUT body, checked as etcd's handler checks it before the store.
fn parse_put(kind: Kind, name: &str, body: &[u8]) -> Result<Change, AuthError> {
    let bad = || http_err(400, "Invalid JSON in request body.");
    if kind == Kind::Users {
        let u = User::parse(body).map_err(|_| bad())?;
        if u.user != name {
            return Err(http_err(
                400,
                "User JSON name does not match the name in the URL",
            ));
        }
        let changes = u.grant.as_ref().is_some_and(|g| !g.is_empty())
            || u.revoke.as_ref().is_some_and(|r| !r.is_empty());
        if changes && u.roles.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(http_err(
                400,
                "User JSON contains both roles and grant/revoke",
            ));
        }
        return Ok(Change::PutUser(u));
    }
    let r = Role::parse(body).map_err(|_| bad())?;
    if r.role != name {
        return Err(http_err(
            400,
            "Role JSON name does not match the name in the URL",
        ));
    }
    let changes = !Perms::is_empty(&r.grant) || !Perms::is_empty(&r.revoke);
    if changes && !Perms::is_empty(&Some(r.perms.clone())) {
        return Err(http_err(
            400,
            "Role JSON contains both permissions and grant/revoke",
        ));
    }
    Ok(Change::PutRole(r))
}

/// `/v2/auth/enable`: GET for anyone, changes for root.
fn enable(api: &Api, req: &Request<'_>, out: &mut Vec<u8>) -> Out {
    let http11 = req.head.http11;
    let m = req.head.method;
    if !matches!(m, Method::Get | Method::Put | Method::Delete) {
        method_not_allowed(req, b"GET,PUT,DELETE", out);
        return Handled::Done;
    }
    if let Some(h) = check_root(api, req, true, out) {
        return h;
    }
    if m == Method::Get {
        let on = api.shard.shared.auth.enabled();
        let body: &[u8] = if on {
            b"{\"enabled\":true}\n"
        } else {
            b"{\"enabled\":false}\n"
        };
        send_ok(api, http11, 200, body, out);
        return Handled::Done;
    }
    Handled::Pending(Pending::Auth(PendingAuth {
        change: Change::Enable(m == Method::Put),
        http11,
    }))
}

/// Check a password off the executor (a [`Handled::Again`]).
pub async fn verify(api: &Api, v: crate::auth::Verification) {
    let (flight, mine) = api.verifier.borrow_mut().join(&v);
    if !mine {
        // The same header is being checked for another request.
        flight.wait().await;
        return;
    }
    // Should this task go away mid-check, the waiters are released.
    struct Leave<'a>(&'a Api, [u8; 32]);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.verifier.borrow_mut().abandon(&self.1);
        }
    }
    let _leave = Leave(api, v.key());
    let slots = api.verifier.borrow().slots.clone();
    let permit = slots.acquire_permit(1).await;
    let checked = v.run().await;
    drop(permit);
    let result = if checked.ok() { "ok" } else { "refused" };
    let m = &api.shard.shared.metrics.password_checks;
    m.with_label_values(&[result]).inc();
    api.verifier.borrow_mut().remember(checked);
}

/// Carry out an auth change and answer it.
pub async fn complete(api: &Api, p: PendingAuth, out: &mut Vec<u8>) {
    match change(api, p.change).await {
        Ok((status, body)) => send_ok(api, p.http11, status, &body, out),
        Err(Failure::Auth(e)) => send_error(api, p.http11, &e, true, out),
        Err(Failure::Store(e)) => write_error(api, p.http11, &e, false, out),
    }
}

enum Failure {
    Auth(AuthError),
    /// Not a refusal: the change could not be made (timeout, stopped shard).
    Store(V2Error),
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Failure {
        Failure::Auth(e)
    }
}

/// Propose one auth command to shard 0 and wait until it is applied,
/// durable and delivered here. `Ok(false)`: the store refused it (105 for
/// a create, 100 for an update or delete).
async fn propose(api: &Api, op: Op, key: &[u8], value: &[u8]) -> Result<bool, Failure> {
    let mut c = Command::new(op, key, wall_nanos());
    c.value = value;
    let mut data = Vec::new();
    c.encode(&mut data);
    let reply = match api.shard.propose(0, data).await {
        Answer::Write(r) => r,
        Answer::Read(_) => {
            return Err(Failure::Store(V2Error::new(
                crate::etcd::error::RAFT_INTERNAL,
                "etcdserver: internal error",
                0,
            )))
        }
    };
    match reply.outcome {
        Ok(ev) => {
            if !super::keys::delivered(api, ev.index).await {
                return Err(Failure::Store(super::keys::timed_out(api)));
            }
            Ok(true)
        }
        Err(e) if e.code == NODE_EXIST || e.code == KEY_NOT_FOUND => Ok(false),
        Err(e) => Err(Failure::Store(e)),
    }
}

fn user_key(name: &str) -> Vec<u8> {
    [b"users/", name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [b"roles/", name.as_bytes()].concat()
}

/// etcd's `store` methods behind each change: `(status, body)`.
async fn change(api: &Api, c: Change) -> Result<(u16, Vec<u8>), Failure> {
    // etcd reads the records a change depends on with a quorum read: on a
    // replicated member, pass a read barrier first (every change committed
    // before it is then applied, and published, here).
    if api.cluster.read().expect("membership").members.len() > 1 {
        crate::raft::read_barrier(&api.shard, 0)
            .await
            .map_err(Failure::Store)?;
    }
    let auth = api.shard.shared.auth.clone();
    let st = auth.state();
    match c {
        Change::PutUser(u) => {
            let changes = u.grant.as_ref().is_some_and(|g| !g.is_empty())
                || u.revoke.as_ref().is_some_and(|r| !r.is_empty());
            let (out, status) = if !changes && u.roles.as_ref().is_some_and(|r| !r.is_empty()) {
                (create_user(api, u).await?, 200)
            } else if !changes && !st.users.contains_key(&u.user) {
                (create_user(api, u).await?, 201)
            } else {
                (update_user(api, &st, u).await?, 200)
            };
            let mut body = Vec::new();
            out.write(&mut body, false);
            body.push(b'\n');
            Ok((status, body))
        }
        Change::DeleteUser(name) => {
            if auth.enabled() && name == ROOT_ROLE {
                return Err(auth_err(403, "Cannot delete root user while auth is enabled.").into());
            }
            if !propose(api, Op::AuthDelete, &user_key(&name), b"").await? {
                return Err(auth_err(404, format_args!("User {name} does not exist")).into());
            }
            Ok((200, Vec::new()))
        }
        Change::PutRole(r) => {
            if r.role == ROOT_ROLE {
                return Err(auth_err(
                    403,
                    format_args!("Cannot modify role {ROOT_ROLE}: is root role."),
                )
                .into());
            }
            let mut body = Vec::new();
            if Perms::is_empty(&r.grant) && Perms::is_empty(&r.revoke) {
                if !propose(api, Op::AuthCreate, &role_key(&r.role), &r.to_json()).await? {
                    return Err(
                        auth_err(409, format_args!("Role {} already exists.", r.role)).into(),
                    );
                }
                r.write(&mut body);
                body.push(b'\n');
                return Ok((201, body));
            }
            let Some(old) = st.role(&r.role) else {
                return Err(auth_err(404, format_args!("Role {} does not exist.", r.role)).into());
            };
            let new = old.merge(&r)?;
            if new == old {
                return Err(auth_err(
                    400,
                    "Role not updated. Use grant/revoke to update the role.",
                )
                .into());
            }
            if !propose(api, Op::AuthUpdate, &role_key(&r.role), &new.to_json()).await? {
                return Err(auth_err(404, format_args!("Role {} doesn't exist.", r.role)).into());
            }
            new.write(&mut body);
            body.push(b'\n');
            Ok((200, body))
        }
        Change::DeleteRole(name) => {
            if name == ROOT_ROLE {
                return Err(auth_err(
                    403,
                    format_args!("Cannot modify role {ROOT_ROLE}: is root role."),
                )
                .into());
            }
            if !propose(api, Op::AuthDelete, &role_key(&name), b"").await? {
                return Err(auth_err(404, format_args!("Role {name} doesn't exist.")).into());
            }
            Ok((200, Vec::new()))
        }
        Change::Enable(on) => {
            if on && auth.enabled() {
                return Err(auth_err(409, "already enabled").into());
            }
            if !on && !auth.enabled() {
                return Err(auth_err(409, "already disabled").into());
            }
            if on && !st.users.contains_key(ROOT_ROLE) {
                return Err(auth_err(409, "No root user available, please create one").into());
            }
            let v: &[u8] = if on { b"1" } else { b"0" };
            propose(api, Op::AuthEnable, b"enabled", v).await?;
            Ok((200, Vec::new()))
        }
    }
}

/// etcd's `CreateUser`: the root user gets the root role; the password is
/// hashed off the executor.
async fn create_user(api: &Api, u: User) -> Result<User, Failure> {
    let mut u = u.with_root_role();
    if u.password.is_empty() {
        return Err(auth_err(
            400,
            format_args!("Cannot create user {} with an empty password", u.user),
        )
        .into());
    }
    u.password = hash_password(std::mem::take(&mut u.password)).await?;
    if !propose(api, Op::AuthCreate, &user_key(&u.user), &u.to_json()).await? {
        return Err(auth_err(409, format_args!("User {} already exists.", u.user)).into());
    }
    Ok(u)
}

/// etcd's `UpdateUser`: merge grants and revokes (and a new password).
async fn update_user(api: &Api, st: &State, u: User) -> Result<User, Failure> {
    let Some(old) = st.users.get(&u.user) else {
        return Err(auth_err(404, format_args!("User {} does not exist.", u.user)).into());
    };
    let mut new = old.merge(&u, None)?;
    if !u.password.is_empty() {
        new.password = hash_password(u.password.clone()).await?;
    }
    if &new == old {
        return Err(auth_err(
            400,
            "User not updated. Use grant/revoke/password to update the user.",
        )
        .into());
    }
    if !propose(api, Op::AuthUpdate, &user_key(&u.user), &new.to_json()).await? {
        return Err(auth_err(404, format_args!("User {} doesn't exist.", u.user)).into());
    }
    Ok(new)
}
