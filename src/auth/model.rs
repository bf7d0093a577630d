//! etcd's v2 auth records — users, roles and their key permissions — as
//! JSON in and out, and etcd's rules for changing them.
//!
//! Records enter from request bodies and from the store (both Go-style JSON,
//! parsed by [`User::parse`] / [`Role::parse`]) and leave as the JSON etcd
//! 3.4 writes ([`User::write`], [`Role::write`]). A list keeps the
//! difference between `null` and `[]`, because etcd's answers (and its
//! "not updated" test, a deep comparison) do. The merges return etcd's
//! error texts and status codes.

use simd_json::prelude::*;
use simd_json::OwnedValue;

use crate::etcd::json::write_str;

/// A list of names or key patterns; `None` is Go's nil slice (`null`).
pub type List = Option<Vec<String>>;

/// The built-in role of every root user: everything, and the auth API.
pub const ROOT_ROLE: &str = "root";
/// The role of requests without credentials.
pub const GUEST_ROLE: &str = "guest";

/// An auth API refusal: an HTTP status and etcd's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub status: u16,
    pub message: String,
}

/// etcd's `authErr`: the message gets the `auth: ` prefix.
pub fn auth_err(status: u16, message: impl std::fmt::Display) -> AuthError {
    AuthError {
        status,
        message: format!("auth: {message}"),
    }
}

/// A refusal whose message has no prefix (the HTTP handler's own checks).
pub fn http_err(status: u16, message: &str) -> AuthError {
    AuthError {
        status,
        message: message.to_string(),
    }
}

/// Read and write key patterns of a role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Perms {
    pub read: List,
    pub write: List,
}

/// A role (`/v2/auth/roles/<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    pub role: String,
    pub perms: Perms,
    pub grant: Option<Perms>,
    pub revoke: Option<Perms>,
}

/// A user (`/v2/auth/users/<name>`); `password` is a bcrypt hash once
/// stored, the clear text in a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub user: String,
    pub password: String,
    pub roles: List,
    pub grant: List,
    pub revoke: List,
}

/// Why a body is not a record: Go's decoder failed.
#[derive(Debug)]
pub struct BadJson;

/// Look a field up the way Go's decoder does: an exact match, else a
/// case-insensitive one.
fn field<'v>(o: &'v simd_json::owned::Object, name: &str) -> Option<&'v OwnedValue> {
    o.get(name).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn is_null(v: &OwnedValue) -> bool {
    v.is_null()
}

fn string_of(v: Option<&OwnedValue>) -> Result<String, BadJson> {
    match v {
        None => Ok(String::new()),
        Some(v) if is_null(v) => Ok(String::new()),
        Some(v) => v.as_str().map(str::to_string).ok_or(BadJson),
    }
}

fn list_of(v: Option<&OwnedValue>) -> Result<List, BadJson> {
    match v {
        None => Ok(None),
        Some(v) if is_null(v) => Ok(None),
        Some(v) => {
            let a = v.as_array().ok_or(BadJson)?;
            let mut out = Vec::with_capacity(a.len());
            for s in a.iter() {
                out.push(s.as_str().ok_or(BadJson)?.to_string());
            }
            Ok(Some(out))
        }
    }
}

fn object_of(v: Option<&OwnedValue>) -> Result<Option<&simd_json::owned::Object>, BadJson> {
    match v {
        None => Ok(None),
        Some(v) if is_null(v) => Ok(None),
        Some(v) => v.as_object().map(Some).ok_or(BadJson),
    }
}

/// `{"kv":{"read":[..],"write":[..]}}`; `None` for an absent or null one.
fn perms_of(v: Option<&OwnedValue>) -> Result<Option<Perms>, BadJson> {
    let Some(o) = object_of(v)? else {
        return Ok(None);
    };
    let mut p = Perms::default();
    if let Some(kv) = object_of(field(o, "kv"))? {
        p.read = list_of(field(kv, "read"))?;
        p.write = list_of(field(kv, "write"))?;
    }
    Ok(Some(p))
}

/// Parse one JSON object (a request body or a stored record).
fn object(bytes: &[u8]) -> Result<Option<simd_json::owned::Object>, BadJson> {
    let mut buf = bytes.to_vec();
    let v = simd_json::to_owned_value(&mut buf).map_err(|_| BadJson)?;
    if is_null(&v) {
        return Ok(None);
    }
    match v {
        OwnedValue::Object(o) => Ok(Some(*o)),
        _ => Err(BadJson),
    }
}

fn write_list(out: &mut Vec<u8>, l: &List) {
    match l {
        None => out.extend_from_slice(b"null"),
        Some(v) => {
            out.push(b'[');
            for (i, s) in v.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, s.as_bytes());
            }
            out.push(b']');
        }
    }
}

impl Perms {
    /// Empty: no patterns at all (etcd's `IsEmpty`).
    pub fn is_empty(p: &Option<Perms>) -> bool {
        p.as_ref().is_none_or(|p| {
            p.read.as_ref().is_none_or(Vec::is_empty) && p.write.as_ref().is_none_or(Vec::is_empty)
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"kv\":{\"read\":");
        write_list(out, &self.read);
        out.extend_from_slice(b",\"write\":");
        write_list(out, &self.write);
        out.extend_from_slice(b"}}");
    }

    /// etcd's `Grant`: a pattern granted twice is a 409.
    fn grant(&self, n: &Option<Perms>) -> Result<Perms, AuthError> {
        let Some(n) = n else {
            return Ok(self.clone());
        };
        Ok(Perms {
            read: Some(granted(&self.read, &n.read, "read")?),
            write: Some(granted(&self.write, &n.write, "write")?),
        })
    }

    /// etcd's `Revoke`: patterns not granted are skipped.
    fn revoke(&self, n: &Option<Perms>) -> Perms {
        let Some(n) = n else {
            return self.clone();
        };
        let mut read = set(&self.read);
        read.retain(|r| !n.read.iter().flatten().any(|x| x == r));
        let mut write = set(&self.write);
        write.retain(|w| !n.write.iter().flatten().any(|x| x == w));
        Perms {
            read: Some(read),
            write: Some(write),
        }
    }

    /// etcd's `HasAccess`: an exact pattern, or a prefix ending in `*`.
    pub fn has_access(&self, key: &[u8], write: bool) -> bool {
        let list = if write { &self.write } else { &self.read };
        list.iter().flatten().any(|p| match p.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix.as_bytes()),
            None => key == p.as_bytes(),
        })
    }

    /// etcd's `HasRecursiveAccess`: only prefix patterns cover a subtree.
    pub fn has_recursive_access(&self, key: &[u8], write: bool) -> bool {
        let list = if write { &self.write } else { &self.read };
        list.iter().flatten().any(|p| {
            p.strip_suffix('*')
                .is_some_and(|pre| key.starts_with(pre.as_bytes()))
        })
    }
}

/// `old` with `new` added (etcd's `RWPermission.Grant` for one list); a
/// pattern granted twice is a 409.
fn granted(old: &List, new: &List, kind: &str) -> Result<Vec<String>, AuthError> {
    let mut out = set(old);
    for p in new.iter().flatten() {
        if !add(&mut out, p) {
            return Err(auth_err(
                409,
                format_args!("Granting duplicate {kind} permission {p}"),
            ));
        }
    }
    Ok(out)
}

/// A Go string set's values, sorted (what etcd's merges produce: never nil).
fn set(l: &List) -> Vec<String> {
    let mut v = l.clone().unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// Insert into a sorted set; false if it was there.
fn add(set: &mut Vec<String>, s: &str) -> bool {
    match set.binary_search_by(|x| x.as_str().cmp(s)) {
        Ok(_) => false,
        Err(i) => {
            set.insert(i, s.to_string());
            true
        }
    }
}

impl Role {
    /// The built-in root role (never stored).
    pub fn root() -> Role {
        Role::all(ROOT_ROLE)
    }

    /// A role granting read and write on every key.
    pub fn all(name: &str) -> Role {
        Role {
            role: name.to_string(),
            perms: Perms {
                read: Some(vec!["/*".into()]),
                write: Some(vec!["/*".into()]),
            },
            grant: None,
            revoke: None,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Role, BadJson> {
        let Some(o) = object(bytes)? else {
            return Ok(Role::default());
        };
        Ok(Role {
            role: string_of(field(&o, "role"))?,
            perms: perms_of(field(&o, "permissions"))?.unwrap_or_default(),
            grant: perms_of(field(&o, "grant"))?,
            revoke: perms_of(field(&o, "revoke"))?,
        })
    }

    /// The role as etcd encodes it (no newline).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"role\":");
        write_str(out, self.role.as_bytes());
        out.extend_from_slice(b",\"permissions\":");
        self.perms.write(out);
        if let Some(g) = &self.grant {
            out.extend_from_slice(b",\"grant\":");
            g.write(out);
        }
        if let Some(r) = &self.revoke {
            out.extend_from_slice(b",\"revoke\":");
            r.write(out);
        }
        out.push(b'}');
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write(&mut v);
        v
    }

    /// etcd's role merge: grants, then revokes, applied to `self`.
    pub fn merge(&self, n: &Role) -> Result<Role, AuthError> {
        if self.role != n.role {
            return Err(auth_err(
                409,
                format_args!(
                    "Merging role with conflicting names: {} {}",
                    self.role, n.role
                ),
            ));
        }
        let perms = self.perms.grant(&n.grant)?.revoke(&n.revoke);
        Ok(Role {
            role: self.role.clone(),
            perms,
            grant: None,
            revoke: None,
        })
    }

    pub fn has_key_access(&self, key: &[u8], write: bool) -> bool {
        self.role == ROOT_ROLE || self.perms.has_access(key, write)
    }

    pub fn has_recursive_access(&self, key: &[u8], write: bool) -> bool {
        self.role == ROOT_ROLE || self.perms.has_recursive_access(key, write)
    }
}

impl User {
    pub fn parse(bytes: &[u8]) -> Result<User, BadJson> {
        let Some(o) = object(bytes)? else {
            return Ok(User::default());
        };
        Ok(User {
            user: string_of(field(&o, "user"))?,
            password: string_of(field(&o, "password"))?,
            roles: list_of(field(&o, "roles"))?,
            grant: list_of(field(&o, "grant"))?,
            revoke: list_of(field(&o, "revoke"))?,
        })
    }

    /// The user as etcd encodes it (no newline); `with_password` false
    /// leaves the hash out (answers), true keeps it (the stored record).
    pub fn write(&self, out: &mut Vec<u8>, with_password: bool) {
        out.extend_from_slice(b"{\"user\":");
        write_str(out, self.user.as_bytes());
        if with_password && !self.password.is_empty() {
            out.extend_from_slice(b",\"password\":");
            write_str(out, self.password.as_bytes());
        }
        out.extend_from_slice(b",\"roles\":");
        write_list(out, &self.roles);
        for (name, l) in [("grant", &self.grant), ("revoke", &self.revoke)] {
            if l.as_ref().is_some_and(|l| !l.is_empty()) {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                write_list(out, l);
            }
        }
        out.push(b'}');
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write(&mut v, true);
        v
    }

    /// Whether the user holds the root role.
    pub fn is_root(&self) -> bool {
        self.roles.iter().flatten().any(|r| r == ROOT_ROLE)
    }

    /// etcd's `attachRootRole`: the user named root always has root.
    pub fn with_root_role(mut self) -> User {
        if self.user == ROOT_ROLE && !self.is_root() {
            self.roles
                .get_or_insert_with(Vec::new)
                .push(ROOT_ROLE.into());
        }
        self
    }

    /// etcd's user merge, given the new password's hash (if it has one):
    /// grants then revokes, sorted.
    pub fn merge(&self, n: &User, new_hash: Option<String>) -> Result<User, AuthError> {
        if self.user != n.user {
            return Err(auth_err(
                409,
                format_args!(
                    "Merging user data with conflicting usernames: {} {}",
                    self.user, n.user
                ),
            ));
        }
        let mut roles = set(&self.roles);
        for g in n.grant.iter().flatten() {
            if !add(&mut roles, g) {
                return Err(auth_err(
                    409,
                    format_args!("Granting duplicate role {g} for user {}", n.user),
                ));
            }
        }
        for r in n.revoke.iter().flatten() {
            match roles.binary_search(r) {
                Ok(i) => {
                    roles.remove(i);
                }
                Err(_) => {
                    return Err(auth_err(
                        409,
                        format_args!("Revoking ungranted role {r} for user {}", n.user),
                    ))
                }
            }
        }
        Ok(User {
            user: self.user.clone(),
            password: new_hash.unwrap_or_else(|| self.password.clone()),
            roles: Some(roles),
            grant: None,
            revoke: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_keeping_null_and_empty_lists() {
        let r = Role::parse(br#"{"Role":"r","permissions":{"KV":{"read":["/a/*"],"write":[]}}}"#)
            .unwrap();
        assert_eq!(r.role, "r");
        assert_eq!(
            r.to_json(),
            br#"{"role":"r","permissions":{"kv":{"read":["/a/*"],"write":[]}}}"#.to_vec()
        );
        let bare = Role::parse(br#"{"role":"x"}"#).unwrap();
        assert_eq!(
            bare.to_json(),
            br#"{"role":"x","permissions":{"kv":{"read":null,"write":null}}}"#.to_vec()
        );
        assert!(Role::parse(br#"{"role":5}"#).is_err());
        assert!(Role::parse(br#"{"role":"x""#).is_err());
    }

    #[test]
    fn merges_follow_etcd() {
        let r = Role::parse(br#"{"role":"r"}"#).unwrap();
        let g = Role::parse(br#"{"role":"r","grant":{"kv":{"read":["/b","/a/*"]}}}"#).unwrap();
        let m = r.merge(&g).unwrap();
        assert_eq!(m.perms.read, Some(vec!["/a/*".into(), "/b".into()]));
        assert_eq!(m.perms.write, Some(vec![]));
        assert_eq!(m.merge(&g).unwrap_err().status, 409);
        let u = User::parse(br#"{"user":"u","password":"p"}"#).unwrap();
        let grant = User::parse(br#"{"user":"u","grant":["b","a"]}"#).unwrap();
        let m = u.merge(&grant, None).unwrap();
        assert_eq!(m.roles, Some(vec!["a".into(), "b".into()]));
        let revoke = User::parse(br#"{"user":"u","revoke":["c"]}"#).unwrap();
        assert_eq!(
            m.merge(&revoke, None).unwrap_err().message,
            "auth: Revoking ungranted role c for user u"
        );
    }

    #[test]
    fn patterns_match_as_etcd_does() {
        let p = Perms {
            read: Some(vec!["/app/*".into(), "/one".into()]),
            write: None,
        };
        assert!(p.has_access(b"/app/x", false));
        assert!(p.has_access(b"/app/", false));
        assert!(!p.has_access(b"/app", false));
        assert!(p.has_access(b"/one", false));
        assert!(!p.has_access(b"/one/", false));
        assert!(!p.has_access(b"/app/x", true));
        assert!(p.has_recursive_access(b"/app/", false));
        assert!(!p.has_recursive_access(b"/one", false));
    }
}
