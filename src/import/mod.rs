//! `kardia import --etcd-data-dir DIR --to URL [--prefix /p]`: copy the v2
//! keyspace of a stopped etcd 3.4/3.5 member into a running kardia.
//!
//! Data enters from the etcd data dir ([`etcd::read`]): the newest v2
//! snapshot seeds a scratch one-shard store with etcd's own tree and
//! indexes (`store::import`), and every committed log entry after it is
//! executed there as the command etcd applied — so conditional writes,
//! in-order keys, recursive deletes and expiries come out as they did in
//! etcd, membership writes (`/0`) and auth writes (`/2`) included, which
//! keeps the index sequence etcd's. Then the keys (`/1`, hidden ones
//! included) leave as ordinary v2 writes to the target — directories,
//! files, remaining TTLs — and each is read back to verify it. The etcd
//! data dir is only read. Keys that had expired by now are not copied.
//! etcd's indexes cannot be carried over (docs/operations.md, *Migrating
//! from etcd*).

pub mod etcd;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use simd_json::prelude::*;

use crate::store::import::{Exported, Seed};
use crate::store::{Command, Op, Placement, Store};
use etcd::{Change, V2Request};

/// What an import is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub etcd_dir: PathBuf,
    pub to: String,
    /// Only keys at or below this path (`/` for all).
    pub prefix: String,
}

/// etcd's store keeps the keyspace under `/1`.
const KEYS: &[u8] = b"/1";

/// The nodes of etcd's v2 store JSON (`store.Save()`), parents first, and
/// its `CurrentIndex`.
fn parse_snapshot(json: &[u8]) -> Result<(u64, Vec<Seed>), String> {
    let mut buf = json.to_vec();
    let v = simd_json::to_owned_value(&mut buf).map_err(|e| format!("v2 snapshot JSON: {e}"))?;
    let index = v
        .get("CurrentIndex")
        .and_then(|i| i.as_u64())
        .ok_or("v2 snapshot JSON: no CurrentIndex (not an etcd v2 store)")?;
    let root = v.get("Root").ok_or("v2 snapshot JSON: no Root")?;
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(n) = todo.pop() {
        let path = n.get("Path").and_then(|p| p.as_str()).unwrap_or("");
        let children = n.get("Children").and_then(|c| c.as_object());
        if path != "/" {
            let expire = n
                .get("ExpireTime")
                .and_then(|t| t.as_str())
                .and_then(parse_go_time)
                .filter(|&t| t > 0);
            out.push(Seed {
                path: path.as_bytes().to_vec(),
                value: n
                    .get("Value")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .as_bytes()
                    .to_vec(),
                dir: children.is_some(),
                created: n.get("CreatedIndex").and_then(|i| i.as_u64()).unwrap_or(0),
                modified: n.get("ModifiedIndex").and_then(|i| i.as_u64()).unwrap_or(0),
                expire,
            });
        }
        if let Some(c) = children {
            // Sorted, so the seed (and the copy) goes in key order.
            let mut kids: Vec<_> = c.iter().collect();
            kids.sort_by(|a, b| b.0.cmp(a.0));
            todo.extend(kids.into_iter().map(|(_, v)| v));
        }
    }
    Ok((index, out))
}

/// Go's `time.Time` JSON (RFC 3339 with nanoseconds, any offset) as Unix
/// nanoseconds; the zero time (year 1) is before 1970 and reads as `None`.
fn parse_go_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        let digits = frac.len().min(9);
        nanos = frac[..digits].parse::<i64>().ok()? * 10i64.pow((9 - digits) as u32);
    }
    let offset = match b.get(i) {
        Some(b'Z') => 0,
        Some(&c @ (b'+' | b'-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = (oh * 60 + om) * 60;
            if c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    if secs < 0 {
        return None;
    }
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// The command etcd's v2 applier runs for `r` (`apply_v2.go`); `None` for
/// reads.
fn command(r: &V2Request) -> Option<Vec<u8>> {
    let op = match r.method.as_str() {
        "POST" => Op::CreateUnique,
        "DELETE" if r.prev_index > 0 || !r.prev_value.is_empty() => Op::CompareAndDelete,
        "DELETE" => Op::Delete,
        "SYNC" => Op::Sync,
        "PUT" => match r.prev_exist {
            Some(true) if r.prev_index == 0 && r.prev_value.is_empty() => Op::Update,
            Some(true) => Op::CompareAndSwap,
            Some(false) => Op::Create,
            None if r.prev_index > 0 || !r.prev_value.is_empty() => Op::CompareAndSwap,
            None => Op::Set,
        },
        _ => return None,
    };
    let mut c = Command::new(op, &r.path, r.time);
    if op != Op::Delete && op != Op::CompareAndDelete && op != Op::Sync {
        c.value = &r.val;
        c.expire = (r.expiration != 0).then_some(r.expiration);
        c.refresh = r.refresh == Some(true) && op != Op::Create && op != Op::CreateUnique;
    }
    c.dir = r.dir;
    c.recursive = r.recursive;
    c.prev_value = &r.prev_value;
    c.prev_index = r.prev_index;
    let mut data = Vec::new();
    c.encode(&mut data);
    Some(data)
}

/// A membership command on etcd's `/0` tree (its `membership` package
/// writes these to the v2 store, taking indexes).
fn member_command(op: Op, key: &[u8], recursive: bool) -> Vec<u8> {
    let mut c = Command::new(op, key, 0);
    c.recursive = recursive;
    c.dir = recursive;
    let mut d = Vec::new();
    c.encode(&mut d);
    d
}

/// Replay the member's changes into `st`, one batch each. A SYNC runs
/// until nothing due at its time is left (etcd expires every due key at
/// once; one kardia SYNC expires at most `MAX_EXPIRE_PER_SYNC`).
fn replay(st: &mut Store, changes: &[Change]) -> Result<(), String> {
    let mut events = Vec::new();
    let mut one = |st: &mut Store, data: &[u8]| -> Result<bool, String> {
        let r = st
            .batch(|st, txn| Ok((st.execute(txn, data)?, None)))
            .map_err(|e| e.to_string())?;
        st.take_events(&mut events);
        events.clear();
        Ok(!matches!(r, Some(Err(_))))
    };
    for ch in changes {
        match ch {
            Change::Request(r) => {
                let Some(data) = command(r) else { continue };
                one(st, &data)?;
                if r.method == "SYNC" {
                    while st
                        .next_expiry()
                        .map_err(|e| e.to_string())?
                        .is_some_and(|t| t <= r.time)
                    {
                        one(st, &data)?;
                    }
                }
            }
            // A promotion (an added member that exists) is an update.
            Change::AddMember(id) => {
                let key = format!("/0/members/{id:x}/raftAttributes");
                if !one(st, &member_command(Op::Create, key.as_bytes(), false))? {
                    one(st, &member_command(Op::Update, key.as_bytes(), false))?;
                }
            }
            Change::UpdateMember(id) => {
                let key = format!("/0/members/{id:x}/raftAttributes");
                one(st, &member_command(Op::Update, key.as_bytes(), false))?;
            }
            // etcd records a removal only for a member it had.
            Change::RemoveMember(id) => {
                let dir = format!("/0/members/{id:x}");
                if one(st, &member_command(Op::Delete, dir.as_bytes(), true))? {
                    let gone = format!("/0/removed_members/{id:x}");
                    one(st, &member_command(Op::Create, gone.as_bytes(), false))?;
                }
            }
        }
    }
    Ok(())
}

/// `/a b/c` → `/a%20b/c`, byte by byte.
fn escape_path(key: &[u8]) -> String {
    let mut s = String::new();
    for &b in key {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn escape_form(v: &[u8]) -> String {
    let mut s = escape_path(v);
    s = s.replace('/', "%2F");
    s
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Write one node to the target, then read it back.
fn copy(a: &ureq::Agent, base: &str, key: &[u8], n: &Exported, now: i64) -> Result<(), String> {
    let url = format!("{base}/v2/keys{}", escape_path(key));
    let mut body = if n.dir {
        "dir=true".to_string()
    } else {
        format!("value={}", escape_form(&n.value))
    };
    if let Some(t) = n.expire {
        // Remaining seconds, rounded up (etcd reports TTLs the same way).
        let ttl = (t - now + 999_999_999) / 1_000_000_000;
        body.push_str(&format!("&ttl={}", ttl.max(1)));
    }
    let r = a
        .put(&url)
        .content_type("application/x-www-form-urlencoded")
        .send(&body)
        .map_err(|e| format!("PUT {url}: {e}"))?;
    let status = r.status().as_u16();
    // An existing directory stays (a PUT dir=true on one is 403): its TTL
    // is set with prevExist=true.
    if status == 403 && n.dir {
        let again = format!("{body}&prevExist=true");
        let r = a
            .put(&url)
            .content_type("application/x-www-form-urlencoded")
            .send(&again)
            .map_err(|e| format!("PUT {url}: {e}"))?;
        if !matches!(r.status().as_u16(), 200 | 201) {
            return Err(format!("PUT {url}: {}", r.status().as_u16()));
        }
    } else if !matches!(status, 200 | 201) {
        return Err(format!("PUT {url}: {status}"));
    }
    // Verify.
    let mut r = a.get(&url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let mut got = r
        .body_mut()
        .read_to_vec()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let v = simd_json::to_owned_value(&mut got).map_err(|e| format!("GET {url}: {e}"))?;
    let node = v.get("node").ok_or_else(|| format!("GET {url}: no node"))?;
    let dir = node.get("dir").and_then(|d| d.as_bool()).unwrap_or(false);
    let value = node.get("value").and_then(|v| v.as_str()).unwrap_or("");
    let want = String::from_utf8_lossy(&n.value);
    if dir != n.dir || (!dir && value != want) {
        return Err(format!("{url}: read back differs after the copy"));
    }
    Ok(())
}

/// The scratch store's directory, removed when the import ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let d = std::env::temp_dir().join(format!(
            "kardia-import-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        Ok(Scratch(d))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run an import, printing what was read and copied.
pub fn run(o: &Options) -> Result<(), String> {
    let m = etcd::read(&o.etcd_dir)?;
    for n in &m.notes {
        eprintln!("{n}");
    }
    let (index, seeds) = match &m.snapshot {
        Some((_, json)) => parse_snapshot(json)?,
        None => (0, Vec::new()),
    };
    let scratch = Scratch::new()?;
    let counter = Arc::new(AtomicU64::new(0));
    let opts = crate::store::Options {
        map_size: 1 << 36,
        history: 1,
    };
    let placement = Placement {
        shard: 0,
        shards: 1,
        unit_depth: 0,
    };
    let mut st = Store::open(&scratch.0, &opts, placement, counter)
        .map_err(|e| format!("scratch store: {e}"))?;
    st.seed(&seeds, index).map_err(|e| e.to_string())?;
    replay(&mut st, &m.changes)?;
    eprintln!(
        "etcd's v2 store rebuilt: index {} ({} node(s) from the snapshot, {} change(s) replayed)",
        st.index(),
        seeds.len(),
        m.changes.len()
    );
    let auth = st.export(b"/2/users").map_err(|e| e.to_string())?;
    if !auth.is_empty() {
        eprintln!(
            "note: etcd's v2 auth records ({} user(s)) are not imported: create users and roles on kardia again (docs/operations.md, v2 auth)",
            auth.len()
        );
    }
    let prefix = if o.prefix == "/" {
        KEYS.to_vec()
    } else {
        [KEYS, o.prefix.as_bytes()].concat()
    };
    let all = st.export(KEYS).map_err(|e| e.to_string())?;
    let now = now_nanos();
    let a: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let (mut dirs, mut files, mut expired) = (0u64, 0u64, 0u64);
    for n in &all {
        let under = prefix == KEYS
            || n.path == prefix
            || (n.path.starts_with(&prefix) && n.path.get(prefix.len()) == Some(&b'/'));
        if !under {
            continue;
        }
        if n.expire.is_some_and(|t| t <= now) {
            expired += 1;
            continue;
        }
        copy(&a, &o.to, &n.path[KEYS.len()..], n, now)?;
        if n.dir {
            dirs += 1;
        } else {
            files += 1;
        }
    }
    eprintln!(
        "copied to {}: {dirs} director(ies) and {files} file(s), each read back and equal; {expired} already expired, not copied",
        o.to
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_times_parse_to_unix_nanoseconds() {
        assert_eq!(parse_go_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_go_time("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(
            parse_go_time("2026-12-05T23:41:29.5+01:00"),
            Some(1_796_510_489_500_000_000)
        );
        assert_eq!(
            parse_go_time("2026-12-05T22:41:29.123456789Z"),
            Some(1_796_510_489_123_456_789)
        );
    }
}
