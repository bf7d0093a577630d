//! `kardia mirror --from URL --to URL [--prefix /p]`: copy a live etcd v2
//! keyspace into kardia and keep it in step until the operator cuts over;
//! `--verify` compares the two and prints every difference.
//!
//! Data enters from the source's v2 HTTP API only — one recursive GET,
//! then its watch from that GET's `X-Etcd-Index + 1`, one event at a time —
//! and leaves as ordinary v2 writes to the target (directories, files,
//! remaining TTLs). The source is never written. When the source has
//! cleared the watch's index (401), the mirror lists again and makes the
//! target equal (deleting what the source no longer has). etcd's indexes
//! cannot be carried over: the target numbers its own writes
//! (docs/operations.md, *Migrating from etcd*). Hidden keys (`_name`) are
//! not in listings or recursive watches, so they are not copied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use simd_json::prelude::*;

/// What a mirror run is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub from: String,
    pub to: String,
    pub prefix: String,
    /// Compare only.
    pub verify: bool,
    /// Stop after this long without a source event (None: run until killed).
    pub until_idle: Option<Duration>,
}

/// One node of a listing: a directory, or a file's value; and its TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    dir: bool,
    value: String,
    ttl: Option<i64>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// `/a b/c` → `/a%20b/c` (every path byte but `/` and unreserved ones escaped).
fn escape_path(key: &str) -> String {
    key.split('/')
        .map(|seg| {
            form_urlencoded::byte_serialize(seg.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// GET `url`: status, `X-Etcd-Index`, body.
fn get(a: &ureq::Agent, url: &str) -> Result<(u16, u64, Vec<u8>), String> {
    let mut r = a.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let index = r
        .headers()
        .get("X-Etcd-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = r
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok((r.status().as_u16(), index, body))
}

/// Every node below `prefix` (the prefix itself excluded), by key, and the
/// listing's index; an absent prefix is an empty keyspace.
fn list(
    a: &ureq::Agent,
    base: &str,
    prefix: &str,
) -> Result<(BTreeMap<String, Node>, u64), String> {
    let url = format!(
        "{base}/v2/keys{}?recursive=true&sorted=true",
        escape_path(prefix)
    );
    let (status, index, mut body) = get(a, &url)?;
    let mut out = BTreeMap::new();
    if status == 404 {
        return Ok((out, index));
    }
    if status != 200 {
        return Err(format!(
            "GET {url}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let v = simd_json::to_owned_value(&mut body).map_err(|e| format!("GET {url}: {e}"))?;
    let Some(root) = v.get("node") else {
        return Err(format!("GET {url}: no node"));
    };
    let mut todo = vec![root];
    while let Some(n) = todo.pop() {
        if let Some(children) = n.get("nodes").and_then(|c| c.as_array()) {
            todo.extend(children.iter());
        }
        let Some(key) = n.get("key").and_then(|k| k.as_str()) else {
            continue;
        };
        if key == prefix {
            continue;
        }
        out.insert(key.to_string(), node_of(n));
    }
    Ok((out, index))
}

fn node_of(n: &simd_json::OwnedValue) -> Node {
    Node {
        dir: n.get("dir").and_then(|d| d.as_bool()).unwrap_or(false),
        value: n
            .get("value")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        ttl: n.get("ttl").and_then(|t| t.as_i64()),
    }
}

/// Make `key` on the target what `n` says (parents are created by PUT).
fn put(a: &ureq::Agent, base: &str, key: &str, n: &Node) -> Result<(), String> {
    let ttl = n.ttl.map(|t| t.max(1).to_string());
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if n.dir {
        pairs.push(("dir", "true"));
    } else {
        pairs.push(("value", &n.value));
    }
    if let Some(t) = &ttl {
        pairs.push(("ttl", t));
    }
    let url = format!("{base}/v2/keys{}", escape_path(key));
    let r = a
        .put(&url)
        .content_type("application/x-www-form-urlencoded")
        .send(form(&pairs))
        .map_err(|e| format!("PUT {url}: {e}"))?;
    match r.status().as_u16() {
        200 | 201 => Ok(()),
        // An existing directory: set its TTL instead (or leave it).
        403 if n.dir => {
            let mut pairs = vec![("dir", "true"), ("prevExist", "true")];
            if let Some(t) = &ttl {
                pairs.push(("ttl", t));
            }
            let _ = a
                .put(&url)
                .content_type("application/x-www-form-urlencoded")
                .send(form(&pairs));
            Ok(())
        }
        s => Err(format!("PUT {url}: {s}")),
    }
}

fn delete(a: &ureq::Agent, base: &str, key: &str) -> Result<(), String> {
    let url = format!("{base}/v2/keys{}?recursive=true", escape_path(key));
    let r = a
        .delete(&url)
        .call()
        .map_err(|e| format!("DELETE {url}: {e}"))?;
    match r.status().as_u16() {
        200 | 404 => Ok(()),
        s => Err(format!("DELETE {url}: {s}")),
    }
}

/// Make the target's keyspace below the prefix equal the source's listing.
fn sync(o: &Options, a: &ureq::Agent) -> Result<(u64, usize), String> {
    let (src, index) = list(a, &o.from, &o.prefix)?;
    let (dst, _) = list(a, &o.to, &o.prefix)?;
    // Deletes first (deepest first), then writes in key order (parents
    // before children).
    for key in dst.keys().rev() {
        if !src.contains_key(key) {
            delete(a, &o.to, key)?;
        }
    }
    let mut n = 0;
    for (key, node) in &src {
        if dst.get(key) != Some(node) || node.ttl.is_some() {
            put(a, &o.to, key, node)?;
            n += 1;
        }
    }
    Ok((index, n))
}

/// Run a mirror (or a verification) as `o` says.
pub fn run(o: &Options) -> Result<(), String> {
    let a = agent();
    if o.verify {
        return verify(o, &a);
    }
    let (mut index, copied) = sync(o, &a)?;
    eprintln!("mirror: copied {copied} nodes at source index {index}");
    let mut applied = 0u64;
    let mut last_event = Instant::now();
    let mut last_report = Instant::now();
    let mut source_at = index;
    loop {
        if o.until_idle.is_some_and(|d| last_event.elapsed() >= d) {
            eprintln!(
                "mirror: idle; {applied} events applied, source index {index}, lag {} index(es)",
                source_at.saturating_sub(index)
            );
            return Ok(());
        }
        let url = format!(
            "{}/v2/keys{}?wait=true&recursive=true&waitIndex={}",
            o.from,
            escape_path(&o.prefix),
            index + 1
        );
        // A bounded long poll, so idleness and progress are noticed.
        let req = a
            .get(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(1)))
            .build();
        let mut r = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => continue,
            Err(e) => return Err(format!("GET {url}: {e}")),
        };
        let status = r.status().as_u16();
        // The source's index when the watch was answered: how far behind.
        if let Some(i) = r
            .headers()
            .get("X-Etcd-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            source_at = source_at.max(i);
        }
        // etcd answers a wait with its headers at once and the body when
        // the event comes: the bound may run out in either.
        let mut body = match r.body_mut().with_config().limit(u64::MAX).read_to_vec() {
            Ok(b) => b,
            Err(ureq::Error::Timeout(_)) => continue,
            Err(e) => return Err(format!("GET {url}: {e}")),
        };
        if status == 401 || status == 400 {
            // The source cleared that index from its history: list again.
            let (i, n) = sync(o, &a)?;
            eprintln!("mirror: source history cleared; listed again at {i}, {n} nodes written");
            index = i;
            continue;
        }
        if status != 200 {
            return Err(format!(
                "GET {url}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let ev = simd_json::to_owned_value(&mut body).map_err(|e| format!("event: {e}"))?;
        let action = ev.get("action").and_then(|v| v.as_str()).unwrap_or("");
        let Some(node) = ev.get("node") else {
            return Err("event without a node".into());
        };
        let key = node.get("key").and_then(|k| k.as_str()).unwrap_or("");
        let modified = node
            .get("modifiedIndex")
            .and_then(|i| i.as_u64())
            .unwrap_or(index + 1);
        match action {
            "delete" | "expire" | "compareAndDelete" => delete(&a, &o.to, key)?,
            _ => put(&a, &o.to, key, &node_of(node))?,
        }
        index = modified;
        applied += 1;
        last_event = Instant::now();
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "mirror: {applied} events applied, at source index {index}, lag {} index(es)",
                source_at.saturating_sub(index)
            );
            last_report = Instant::now();
        }
    }
}

/// Compare both keyspaces below the prefix: values, directories, and TTLs
/// within two seconds. Prints each difference; an error if there is any.
fn verify(o: &Options, a: &ureq::Agent) -> Result<(), String> {
    let (src, si) = list(a, &o.from, &o.prefix)?;
    let (dst, _) = list(a, &o.to, &o.prefix)?;
    let mut diffs = 0;
    for (key, s) in &src {
        let same = match dst.get(key) {
            Some(d) => {
                d.dir == s.dir
                    && d.value == s.value
                    && match (s.ttl, d.ttl) {
                        (None, None) => true,
                        (Some(x), Some(y)) => (x - y).abs() <= 2,
                        _ => false,
                    }
            }
            None => false,
        };
        if !same {
            diffs += 1;
            println!("differs: {key}: source {s:?}, target {:?}", dst.get(key));
        }
    }
    for key in dst.keys().filter(|k| !src.contains_key(*k)) {
        diffs += 1;
        println!("only in target: {key}");
    }
    println!(
        "verified {} nodes (source index {si}): {diffs} difference(s)",
        src.len()
    );
    if diffs == 0 {
        Ok(())
    } else {
        Err(format!("{diffs} difference(s)"))
    }
}
