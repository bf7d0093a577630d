//! Response validation: what each request expects, and the error kinds counted.
//!
//! Every request carries an [`Expect`] (the etcd v2 outcome the model predicts);
//! [`check`] takes a parsed response and returns either an [`Outcome`] (success,
//! or an anticipated "not found"/"conflict") or an [`ErrorKind`]. It reads only
//! the status, the `action` field and `errorCode` with byte searches, so it is cheap
//! enough for every response. The value check ([`check_node`]) parses the JSON with
//! serde_json and is applied to a sample of responses by the callers.

use crate::http::Resp;
use serde::Serialize;
use std::fmt;

/// What the workload model predicts for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// PUT: 201 (created) or 200 (replaced), action `set`.
    Set,
    /// PUT ?prevExist=false: 201 `create`, or 412 errorCode 105 (someone holds it).
    Create,
    /// PUT ?prevValue=: 200 `compareAndSwap`.
    Cas,
    /// PUT ?prevValue= by a lock contender: 412 errorCode 101 (compare failed).
    CasFail,
    /// GET: 200 `get`.
    Get,
    /// GET that may legitimately find nothing: 200 `get` or 404 errorCode 100.
    GetOrMissing,
    /// DELETE: 200 `delete`.
    Delete,
    /// DELETE that may find nothing: 200 `delete` or 404 errorCode 100.
    DeleteOrMissing,
    /// Long-poll watch: 200 with a write action (`set`, `create`, ...).
    Watch,
}

/// A response that passed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An anticipated 404 (errorCode 100).
    Missing,
    /// An anticipated 412 (errorCode 101 or 105).
    Conflict,
}

/// Why a request counts as an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ErrorKind {
    /// TCP connect failed.
    Connect,
    /// The server closed the connection with requests outstanding.
    Closed,
    /// Socket error while reading or writing.
    Io,
    /// No response within `--timeout`.
    Timeout,
    /// Bytes that were not HTTP/1.1.
    Parse,
    /// Unexpected HTTP status.
    Status(u16),
    /// Right status, wrong etcd `action`.
    Action,
    /// Error JSON with an unexpected etcd errorCode.
    EtcdCode(u32),
    /// Sampled body did not hold the expected key/value/leaf count.
    Value,
    /// A watch lost events (errorCode 401, event index cleared).
    HistoryCleared,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => write!(f, "connect failed"),
            ErrorKind::Closed => write!(f, "connection closed"),
            ErrorKind::Io => write!(f, "socket error"),
            ErrorKind::Timeout => write!(f, "timeout"),
            ErrorKind::Parse => write!(f, "bad HTTP"),
            ErrorKind::Status(s) => write!(f, "HTTP {s}"),
            ErrorKind::Action => write!(f, "wrong action"),
            ErrorKind::EtcdCode(c) => write!(f, "etcd errorCode {c}"),
            ErrorKind::Value => write!(f, "value mismatch"),
            ErrorKind::HistoryCleared => write!(f, "watch history cleared (401)"),
        }
    }
}

/// The `action` field of an etcd v2 response body, if any.
pub fn action_of(body: &[u8]) -> Option<&[u8]> {
    const NEEDLE: &[u8] = b"\"action\":\"";
    let at = memchr::memmem::find(body, NEEDLE)? + NEEDLE.len();
    let len = memchr::memchr(b'"', &body[at..])?;
    Some(&body[at..at + len])
}

/// The `errorCode` field of an etcd error body, if any.
pub fn error_code_of(body: &[u8]) -> Option<u32> {
    const NEEDLE: &[u8] = b"\"errorCode\":";
    let mut at = memchr::memmem::find(body, NEEDLE)? + NEEDLE.len();
    while at < body.len() && body[at] == b' ' {
        at += 1;
    }
    let mut n: u32 = 0;
    let mut digits = 0;
    while at < body.len() && body[at].is_ascii_digit() && digits < 9 {
        n = n * 10 + u32::from(body[at] - b'0');
        at += 1;
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// Checks status, action and errorCode against the expectation. With `lenient`
/// (the null server) any 2xx passes.
pub fn check(expect: Expect, resp: &Resp<'_>, lenient: bool) -> Result<Outcome, ErrorKind> {
    if lenient {
        return if (200..300).contains(&resp.status) {
            Ok(Outcome::Ok)
        } else {
            Err(ErrorKind::Status(resp.status))
        };
    }
    let want_action = |actions: &[&[u8]]| -> Result<Outcome, ErrorKind> {
        match action_of(resp.body) {
            Some(a) if actions.contains(&a) => Ok(Outcome::Ok),
            _ => Err(ErrorKind::Action),
        }
    };
    let want_code = |status: u16, code: u32, outcome: Outcome| -> Result<Outcome, ErrorKind> {
        match error_code_of(resp.body) {
            Some(c) if c == code && resp.status == status => Ok(outcome),
            Some(c) => Err(ErrorKind::EtcdCode(c)),
            None => Err(ErrorKind::Status(resp.status)),
        }
    };
    match (expect, resp.status) {
        (Expect::Set, 200 | 201) => want_action(&[b"set"]),
        (Expect::Create, 201) => want_action(&[b"create"]),
        (Expect::Create, 412) => want_code(412, 105, Outcome::Conflict),
        (Expect::Cas, 200) => want_action(&[b"compareAndSwap"]),
        (Expect::CasFail, 412) => want_code(412, 101, Outcome::Conflict),
        (Expect::Get | Expect::GetOrMissing, 200) => want_action(&[b"get"]),
        (Expect::GetOrMissing | Expect::DeleteOrMissing, 404) => {
            want_code(404, 100, Outcome::Missing)
        }
        (Expect::Delete | Expect::DeleteOrMissing, 200) => want_action(&[b"delete"]),
        (Expect::Watch, 200) => want_action(&[b"set", b"create", b"update", b"compareAndSwap"]),
        (Expect::Watch, 400) if error_code_of(resp.body) == Some(401) => {
            Err(ErrorKind::HistoryCleared)
        }
        (_, status) => match error_code_of(resp.body) {
            Some(c) => Err(ErrorKind::EtcdCode(c)),
            None => Err(ErrorKind::Status(status)),
        },
    }
}

/// What a sampled body must contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeCheck {
    /// `node.key` and (if given) `node.value`.
    KeyValue { key: String, value: Option<String> },
    /// A directory `node.key` whose subtree holds leaves in `min..=max`.
    Leaves { key: String, min: u64, max: u64 },
}

/// Checks the node of a sampled response. Key/value checks parse the JSON;
/// leaf counts scan the bytes (a recursive GET can be megabytes).
pub fn check_node(body: &[u8], want: &NodeCheck) -> Result<(), ErrorKind> {
    if let NodeCheck::Leaves { key, min, max } = want {
        return check_leaves(body, key, *min, *max);
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| ErrorKind::Value)?;
    let node = v.get("node").ok_or(ErrorKind::Value)?;
    match want {
        NodeCheck::KeyValue { key, value } => {
            if node.get("key").and_then(|k| k.as_str()) != Some(key) {
                return Err(ErrorKind::Value);
            }
            if let Some(value) = value {
                if node.get("value").and_then(|x| x.as_str()) != Some(value) {
                    return Err(ErrorKind::Value);
                }
            }
            Ok(())
        }
        NodeCheck::Leaves { .. } => unreachable!("handled above"),
    }
}

/// The first `"key":"…"` must be `key` (the listed directory), and the number of
/// `"value":` fields (one per leaf; an escaped quote inside a value cannot match)
/// must lie in `min..=max`.
fn check_leaves(body: &[u8], key: &str, min: u64, max: u64) -> Result<(), ErrorKind> {
    const KEY: &[u8] = b"\"key\":\"";
    let at = memchr::memmem::find(body, KEY).ok_or(ErrorKind::Value)? + KEY.len();
    if !body[at..].starts_with(key.as_bytes()) || body.get(at + key.len()) != Some(&b'"') {
        return Err(ErrorKind::Value);
    }
    let n = memchr::memmem::find_iter(body, b"\"value\":").count() as u64;
    if n < min || n > max {
        return Err(ErrorKind::Value);
    }
    Ok(())
}

/// Number of non-directory nodes below (and including) `node`.
#[cfg(test)]
pub fn count_leaves(node: &serde_json::Value) -> u64 {
    match node.get("nodes").and_then(|n| n.as_array()) {
        Some(children) => children.iter().map(count_leaves).sum(),
        None if node.get("dir").and_then(|d| d.as_bool()) == Some(true) => 0,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> Resp<'_> {
        Resp {
            status,
            etcd_index: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn finds_action_and_error_code() {
        assert_eq!(
            action_of(br#"{"action":"set","node":{}}"#),
            Some(&b"set"[..])
        );
        assert_eq!(action_of(b"{}"), None);
        assert_eq!(
            error_code_of(br#"{"errorCode":101,"message":"Compare failed"}"#),
            Some(101)
        );
        assert_eq!(error_code_of(br#"{"errorCode": 7}"#), Some(7));
    }

    #[test]
    fn expectations() {
        let set = r#"{"action":"set","node":{"key":"/a","value":"1"}}"#;
        assert_eq!(check(Expect::Set, &resp(201, set), false), Ok(Outcome::Ok));
        assert_eq!(check(Expect::Set, &resp(200, set), false), Ok(Outcome::Ok));
        assert_eq!(
            check(Expect::Get, &resp(200, set), false),
            Err(ErrorKind::Action)
        );
        let missing = r#"{"errorCode":100,"message":"Key not found","cause":"/a","index":3}"#;
        assert_eq!(
            check(Expect::GetOrMissing, &resp(404, missing), false),
            Ok(Outcome::Missing)
        );
        assert_eq!(
            check(Expect::Get, &resp(404, missing), false),
            Err(ErrorKind::EtcdCode(100))
        );
        let cmp = r#"{"errorCode":101,"message":"Compare failed"}"#;
        assert_eq!(
            check(Expect::CasFail, &resp(412, cmp), false),
            Ok(Outcome::Conflict)
        );
        assert_eq!(
            check(Expect::Cas, &resp(412, cmp), false),
            Err(ErrorKind::EtcdCode(101))
        );
        assert_eq!(
            check(Expect::Create, &resp(412, r#"{"errorCode":105}"#), false),
            Ok(Outcome::Conflict)
        );
        assert_eq!(
            check(Expect::Set, &resp(500, "oops"), false),
            Err(ErrorKind::Status(500))
        );
        assert_eq!(
            check(Expect::Watch, &resp(400, r#"{"errorCode":401}"#), false),
            Err(ErrorKind::HistoryCleared)
        );
        assert_eq!(check(Expect::Cas, &resp(200, set), true), Ok(Outcome::Ok));
    }

    #[test]
    fn node_checks() {
        let body = br#"{"action":"get","node":{"key":"/d","dir":true,"nodes":[
            {"key":"/d/a","value":"1"},{"key":"/d/b","dir":true,"nodes":[{"key":"/d/b/c","value":"2"}]},
            {"key":"/d/e","dir":true}]}}"#;
        let leaves = |min, max| NodeCheck::Leaves {
            key: "/d".into(),
            min,
            max,
        };
        assert_eq!(check_node(body, &leaves(2, 2)), Ok(()));
        assert_eq!(check_node(body, &leaves(3, 9)), Err(ErrorKind::Value));
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(count_leaves(&parsed["node"]), 2);
        let tricky = br#"{"action":"get","node":{"key":"/d","dir":true,"nodes":[{"key":"/d/a","value":"x\"value\":y"}]}}"#;
        assert_eq!(check_node(tricky, &leaves(1, 1)), Ok(()));
        let other = br#"{"action":"get","node":{"key":"/dx","dir":true}}"#;
        assert_eq!(check_node(other, &leaves(0, 0)), Err(ErrorKind::Value));
        let kv = br#"{"action":"set","node":{"key":"/k","value":"v"}}"#;
        let want = |v: &str| NodeCheck::KeyValue {
            key: "/k".into(),
            value: Some(v.into()),
        };
        assert_eq!(check_node(kv, &want("v")), Ok(()));
        assert_eq!(check_node(kv, &want("w")), Err(ErrorKind::Value));
    }
}
