//! Sharding (`--shards N`) seen from outside: the real binary on loopback.
//!
//! * A fixed random sequence of keys-API requests answers byte for byte the
//!   same at one shard and at four (differential).
//! * Stream watchers on `/` and on subdirectories, started at several
//!   waitIndexes while four writers spread over many directories, see every
//!   acknowledged write under their prefix once, in index order.
//! * Parent-creating PUTs and recursive DELETEs (member-wide operations)
//!   survive SIGKILL: acknowledged ones are there (or gone), the tree has no
//!   orphans, and per-directory reads agree with the recursive listing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::json::Json;
use common::{json_u64, open_stream, request, BodyLimit, Conn, Response, Rng, Server};

// ---------------------------------------------------------------------------
// Helpers

/// What these tests read from etcd's node JSON.
trait NodeJson {
    fn str_of(&self, field: &str) -> Option<&str>;
    fn u64_of(&self, field: &str) -> Option<u64>;
    fn is_dir(&self) -> bool;
    fn nodes(&self) -> &[Json];
    /// Sorts every `nodes` array by key, recursively (for unsorted
    /// listings, whose order is unspecified).
    fn sort_nodes(&mut self);
}

impl NodeJson for Json {
    fn str_of(&self, field: &str) -> Option<&str> {
        self.get(field)?.as_str()
    }

    fn u64_of(&self, field: &str) -> Option<u64> {
        self.get(field)?.as_u64()
    }

    fn is_dir(&self) -> bool {
        matches!(self.get("dir"), Some(Json::Bool(true)))
    }

    fn nodes(&self) -> &[Json] {
        match self.get("nodes") {
            Some(Json::Arr(a)) => a,
            _ => &[],
        }
    }

    fn sort_nodes(&mut self) {
        match self {
            Json::Obj(fields) => {
                for (name, v) in fields.iter_mut() {
                    if let (true, Json::Arr(a)) = (name == "nodes", &mut *v) {
                        a.sort_by(|x, y| x.str_of("key").cmp(&y.str_of("key")));
                    }
                    v.sort_nodes();
                }
            }
            Json::Arr(a) => a.iter_mut().for_each(NodeJson::sort_nodes),
            _ => {}
        }
    }
}

fn index_header(r: &Response) -> Option<u64> {
    r.header("X-Etcd-Index")?.parse().ok()
}

fn describe(r: &Response) -> String {
    format!(
        "{} X-Etcd-Index={:?}\n    {}",
        r.code(),
        r.header("X-Etcd-Index"),
        r.body_str().trim_end()
    )
}

// ---------------------------------------------------------------------------
// 1. Differential: one shard vs four

struct Req {
    method: &'static str,
    target: String,
    form: Option<String>,
    /// A non-recursive, unsorted directory GET: listing order is free.
    unordered: bool,
}

impl std::fmt::Display for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.target)?;
        if let Some(form) = &self.form {
            write!(f, " form {form:?}")?;
        }
        Ok(())
    }
}

fn dir_path(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => "/".into(),
        1..=3 => format!("/d{}", rng.below(4)),
        _ => format!("/d{}/s{}", rng.below(4), rng.below(3)),
    }
}

fn file_path(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => format!("/k{}", rng.below(3)),
        1 | 2 => format!("/d{}/k{}", rng.below(4), rng.below(5)),
        _ => format!("/d{}/s{}/k{}", rng.below(4), rng.below(3), rng.below(5)),
    }
}

fn any_path(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=2 => dir_path(rng),
        // Below a path that may be a file: "Not a directory" and friends.
        3 => format!("{}/z", file_path(rng)),
        _ => file_path(rng),
    }
}

fn value(rng: &mut Rng) -> String {
    format!("v{}", rng.below(4))
}

fn gen_request(rng: &mut Rng, seen: &[u64]) -> Req {
    let some_index = |rng: &mut Rng| -> u64 {
        if seen.is_empty() || rng.below(4) == 0 {
            1 + rng.below(seen.last().copied().unwrap_or(10) + 2)
        } else {
            let from = seen.len().saturating_sub(12);
            seen[from + rng.below((seen.len() - from) as u64) as usize]
        }
    };
    let keys = |p: &str| format!("/v2/keys{p}");
    let mut req = Req {
        method: "GET",
        target: String::new(),
        form: None,
        unordered: false,
    };
    match rng.below(100) {
        // PUT
        0..=37 => {
            req.method = "PUT";
            let v = value(rng);
            match rng.below(10) {
                0..=3 => {
                    req.target = keys(&file_path(rng));
                    req.form = Some(format!("value={v}"));
                }
                4 => {
                    req.target = format!("{}?prevExist=true", keys(&file_path(rng)));
                    req.form = Some(format!("value={v}"));
                }
                5 => {
                    req.target = format!("{}?prevExist=false", keys(&any_path(rng)));
                    req.form = Some(format!("value={v}"));
                }
                6 => {
                    req.target = format!("{}?prevValue={}", keys(&file_path(rng)), value(rng));
                    req.form = Some(format!("value={v}"));
                }
                7 => {
                    let i = some_index(rng);
                    req.target = format!("{}?prevIndex={i}", keys(&file_path(rng)));
                    req.form = Some(format!("value={v}"));
                }
                8 => {
                    let extra = match rng.below(3) {
                        0 => "&prevExist=false",
                        1 => "&prevExist=true",
                        _ => "",
                    };
                    req.target = format!("{}?dir=true{extra}", keys(&any_path(rng)));
                }
                _ => {
                    // A value onto any path: directories answer 102, files
                    // below files 104, the root 107.
                    req.target = keys(&any_path(rng));
                    req.form = Some(format!("value={v}"));
                }
            }
        }
        // POST (in-order keys)
        38..=45 => {
            req.method = "POST";
            let p = if rng.below(6) == 0 {
                file_path(rng)
            } else {
                dir_path(rng)
            };
            req.target = keys(&p);
            req.form = Some(format!("value={}", value(rng)));
        }
        // DELETE
        46..=65 => {
            req.method = "DELETE";
            match rng.below(10) {
                0..=2 => req.target = keys(&any_path(rng)),
                3 | 4 => req.target = format!("{}?dir=true", keys(&any_path(rng))),
                5 | 6 => {
                    let p = if rng.below(5) == 0 {
                        any_path(rng)
                    } else {
                        format!("/d{}/s{}", rng.below(4), rng.below(3))
                    };
                    req.target = format!("{}?recursive=true", keys(&p));
                }
                7 | 8 => req.target = format!("{}?prevValue={}", keys(&any_path(rng)), value(rng)),
                _ => {
                    let i = some_index(rng);
                    req.target = format!("{}?prevIndex={i}", keys(&file_path(rng)));
                }
            }
        }
        // GET
        _ => match rng.below(8) {
            0..=2 => req.target = keys(&any_path(rng)),
            3 => {
                req.target = keys(&dir_path(rng));
                req.unordered = true;
            }
            4 => req.target = format!("{}?sorted=true", keys(&dir_path(rng))),
            _ => {
                let p = if rng.below(3) == 0 {
                    "/".to_string()
                } else {
                    dir_path(rng)
                };
                req.target = format!("{}?recursive=true&sorted=true", keys(&p));
            }
        },
    }
    req
}

fn send(port: u16, req: &Req) -> Response {
    request(port, req.method, &req.target, req.form.as_deref(), &[])
        .unwrap_or_else(|e| panic!("{req}: {e}"))
}

/// Whether two answers agree: status, X-Etcd-Index and body (an unordered
/// listing compared with its nodes sorted).
fn same_answer(req: &Req, a: &Response, b: &Response) -> bool {
    if a.code() != b.code() || a.header("X-Etcd-Index") != b.header("X-Etcd-Index") {
        return false;
    }
    if a.body == b.body {
        return true;
    }
    if !req.unordered {
        return false;
    }
    match (Json::parse(&a.body_str()), Json::parse(&b.body_str())) {
        (Ok(mut x), Ok(mut y)) => {
            x.sort_nodes();
            y.sort_nodes();
            x == y
        }
        _ => false,
    }
}

#[test]
fn random_operation_sequences_answer_the_same_at_one_and_four_shards() {
    same_answers_at_one_and_four_shards("0", 0x005E_ED0F_5A4D_2024);
}

/// Placement units at depth 1 (every top-level node is a unit: the root's
/// listing spans the shards) and 2 (`/dN/sN` and `/dN/kN` are units: their
/// creation, deletion and listing stay on one shard, `/dN` listings span
/// the shards).
#[test]
fn random_operation_sequences_answer_the_same_with_placement_units() {
    same_answers_at_one_and_four_shards("1", 0x0001_1A1D_5EED_0001);
    same_answers_at_one_and_four_shards("2", 0x0002_1A1D_5EED_0002);
}

fn same_answers_at_one_and_four_shards(unit_depth: &str, seed: u64) {
    const OPS: usize = 400;
    let one = Server::start_with(&["--shards", "1"]).expect("start kardia --shards 1");
    let four = Server::start_with(&["--shards", "4", "--unit-depth", unit_depth])
        .expect("start kardia --shards 4");
    let mut rng = Rng(seed);
    let mut seen: Vec<u64> = Vec::new();
    let mut log: Vec<String> = Vec::new();
    let mut codes: BTreeMap<(String, u16), usize> = BTreeMap::new();

    let check = |n: usize, req: &Req, log: &[String]| -> Response {
        let a = send(one.client_port, req);
        let b = send(four.client_port, req);
        if !same_answer(req, &a, &b) {
            let recent = log[log.len().saturating_sub(25)..].join("\n  ");
            panic!(
                "op {n}: {req}\n  --shards 1: {}\n  --shards 4: {}\n\
                 preceding requests (seed {seed:#x}):\n  {recent}",
                describe(&a),
                describe(&b)
            );
        }
        a
    };

    // The fresh state agrees too.
    let first = Req {
        method: "GET",
        target: "/v2/keys/?recursive=true&sorted=true".into(),
        form: None,
        unordered: false,
    };
    check(0, &first, &log);

    let t = Instant::now();
    for n in 1..=OPS {
        let req = gen_request(&mut rng, &seen);
        let a = check(n, &req, &log);
        let body = a.body_str();
        if let Some(i) = json_u64(&body, "modifiedIndex") {
            seen.push(i);
        }
        *codes.entry((req.method.to_string(), a.code())).or_default() += 1;
        log.push(format!("#{n} {req} -> {}", a.code()));
    }
    let last = Req {
        method: "GET",
        target: "/v2/keys/?recursive=true&sorted=true".into(),
        form: None,
        unordered: false,
    };
    let fin = check(OPS + 1, &last, &log);
    eprintln!(
        "{OPS} ops agreed at --unit-depth {unit_depth} in {:?}; final index {:?}; answers {codes:?}",
        t.elapsed(),
        fin.header("X-Etcd-Index")
    );
    // The sequence must have exercised both successes and failures.
    for m in ["PUT", "POST", "DELETE", "GET"] {
        let ok = codes
            .iter()
            .filter(|((mm, c), _)| mm == m && *c < 300)
            .count();
        assert!(ok > 0, "no successful {m} in the sequence: {codes:?}");
    }
    assert!(
        codes.keys().any(|(_, c)| *c >= 400),
        "no failing request in the sequence: {codes:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. Watch completeness across shards

fn current_index(port: u16) -> u64 {
    let r = request(port, "GET", "/v2/keys/", None, &[]).unwrap();
    index_header(&r).expect("X-Etcd-Index")
}

fn under(prefix: &str, recursive: bool, key: &str) -> bool {
    key == prefix || (recursive && (prefix == "/" || key.starts_with(&format!("{prefix}/"))))
}

#[test]
fn watchers_see_every_event_once_in_index_order_across_shards() {
    // Units at depth 2: `/w/aN` and everything below is one shard's; the
    // files `/xN/k` are units of their own.
    let s = Server::start_with(&["--shards", "4", "--unit-depth", "2"])
        .expect("start kardia --shards 4");
    let port = s.client_port;
    // (modifiedIndex, key, action) of every acknowledged write.
    let acked: Arc<Mutex<Vec<(u64, String, String)>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let base = current_index(port);

    // Watchers opened before any write.
    let mut watches: Vec<(String, bool, u64, Conn, Response)> = Vec::new();
    let mut open = |prefix: &str, recursive: bool, from: u64| {
        let t = format!(
            "/v2/keys{prefix}?wait=true&recursive={recursive}&stream=true&waitIndex={from}"
        );
        let (c, r) = open_stream(port, &t);
        watches.push((prefix.to_string(), recursive, from, c, r));
    };
    open("/", true, base + 1);
    open("/w", true, base + 1);

    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (acked, done) = (acked.clone(), done.clone());
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w + 1) * 0x1000_0001));
                for n in 0..150 {
                    let key = if rng.below(4) == 0 {
                        format!("/x{}/k", rng.below(4))
                    } else {
                        format!("/w/a{}/k{}", rng.below(8), rng.below(4))
                    };
                    let delete = rng.below(10) < 3;
                    let (method, form) = if delete {
                        ("DELETE", None)
                    } else {
                        ("PUT", Some(format!("value=w{w}n{n}")))
                    };
                    let r = request(
                        port,
                        method,
                        &format!("/v2/keys{key}"),
                        form.as_deref(),
                        &[],
                    )
                    .unwrap_or_else(|e| panic!("{method} {key}: {e}"));
                    let body = r.body_str();
                    match (delete, r.code()) {
                        (false, 200 | 201) | (true, 200) => {
                            let idx = json_u64(&body, "modifiedIndex").expect("index in ack");
                            let action = if delete { "delete" } else { "set" };
                            acked.lock().unwrap().push((idx, key, action.to_string()));
                        }
                        (true, 404) => {} // nothing to delete: no event
                        (_, c) => panic!("{method} {key}: unexpected {c} {body}"),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Watchers opened while the writes are under way: some from the index
    // of the moment, some from far back (history, then live events).
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while done.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
    };
    wait_for(120);
    let i1 = current_index(port);
    open("/w/a3", true, i1 + 1);
    open("/", true, base + 1);
    open("/x1", true, i1 + 1);
    open("/w/a5/k2", false, base + 1);
    wait_for(330);
    let i2 = current_index(port);
    open("/w", true, i2 + 1);
    open("/w/a3", true, base + 1);
    open("/", true, i1 + 1);
    open("/x2/k", false, i2 + 1);

    for w in writers {
        w.join().expect("writer");
    }
    let acked = {
        let mut a = acked.lock().unwrap().clone();
        a.sort();
        a
    };
    eprintln!(
        "{} acked writes, indexes {}..={} (base {base}, i1 {i1}, i2 {i2})",
        acked.len(),
        acked.first().map_or(0, |a| a.0),
        acked.last().map_or(0, |a| a.0)
    );
    assert!(acked.len() > 400, "only {} acked writes", acked.len());
    let distinct: BTreeSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "two writes acked with one index"
    );

    let mut failures = Vec::new();
    for (prefix, recursive, from, conn, resp) in watches.iter_mut() {
        let want: Vec<&(u64, String, String)> = acked
            .iter()
            .filter(|(i, k, _)| *i >= *from && under(prefix, *recursive, k))
            .collect();
        let name = format!("watch {prefix} recursive={recursive} from {from}");
        conn.read_body(
            resp,
            "GET",
            Instant::now() + Duration::from_secs(15),
            BodyLimit {
                lines: Some(want.len()),
                idle: None,
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Nothing more arrives (no duplicate, no stray event).
        conn.read_body(
            resp,
            "GET",
            Instant::now() + Duration::from_millis(300),
            BodyLimit::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let body = resp.body_str();
        let mut got = Vec::new();
        for line in body.lines() {
            let ev = Json::parse(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
            let node = ev.get("node").unwrap_or_else(|| panic!("{name}: {line}"));
            got.push((
                node.u64_of("modifiedIndex").unwrap(),
                node.str_of("key").unwrap().to_string(),
                ev.str_of("action").unwrap().to_string(),
            ));
        }
        let mut problems = Vec::new();
        for pair in got.windows(2) {
            if pair[1].0 <= pair[0].0 {
                problems.push(format!(
                    "out of order / duplicate: {:?} then {:?}",
                    pair[0], pair[1]
                ));
            }
        }
        for g in &got {
            if !under(prefix, *recursive, &g.1) {
                problems.push(format!("event outside the prefix: {g:?}"));
            }
            if g.0 < *from {
                problems.push(format!("event before waitIndex: {g:?}"));
            }
        }
        let got_set: BTreeSet<&(u64, String, String)> = got.iter().collect();
        let want_set: BTreeSet<&(u64, String, String)> = want.iter().copied().collect();
        let missing: Vec<_> = want_set.difference(&got_set).collect();
        let extra: Vec<_> = got_set.difference(&want_set).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} acknowledged writes missing, first {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
        if !extra.is_empty() {
            problems.push(format!(
                "{} events never acknowledged, first {:?}",
                extra.len(),
                &extra[..extra.len().min(5)]
            ));
        }
        if got.len() != want.len() {
            problems.push(format!("{} events, want {}", got.len(), want.len()));
        }
        eprintln!("{name}: {} events", got.len());
        if !problems.is_empty() {
            failures.push(format!("{name}:\n    {}", problems.join("\n    ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// 3. Crash safety of member-wide writes

#[derive(Default, Clone)]
struct Ledger {
    /// Acknowledged PUTs: key → (value, modifiedIndex). Each key is written once.
    puts: BTreeMap<String, (String, u64)>,
    /// PUTs cut off by the kill: key → value (maybe applied).
    maybe_puts: BTreeMap<String, String>,
    /// Acknowledged recursive deletes: dir → index.
    dels: BTreeMap<String, u64>,
    /// Recursive deletes cut off by the kill (maybe applied).
    maybe_dels: BTreeSet<String>,
    /// The largest index ever acknowledged.
    max_index: u64,
}

fn ancestors(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = key;
    while let Some(i) = at.rfind('/') {
        if i == 0 {
            break;
        }
        at = &at[..i];
        out.push(at.to_string());
    }
    out
}

/// One writer of a round: PUTs that create directories (and files in
/// directories it created before), recursive DELETEs of its directories.
fn crash_writer(
    port: u16,
    round: u32,
    t: u32,
    seed: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) -> Result<usize, String> {
    let mut rng = Rng(seed);
    let base = format!("/c/r{round}/t{t}");
    // Live directories: (n, next file number).
    let mut live: Vec<(u32, u32)> = Vec::new();
    let mut next_dir = 0;
    let mut ops = 0;
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        let pick = rng.below(10);
        if live.is_empty() || pick < 7 {
            let (n, j) = if live.is_empty() || pick < 4 {
                next_dir += 1;
                live.push((next_dir, 1));
                (next_dir, 0)
            } else {
                let at = rng.below(live.len() as u64) as usize;
                live[at].1 += 1;
                (live[at].0, live[at].1 - 1)
            };
            let key = format!("{base}/d{n}/k{j}");
            let value = format!("v{round}.{t}.{n}.{j}");
            let form = format!("value={value}");
            match request(port, "PUT", &format!("/v2/keys{key}"), Some(&form), &[]) {
                Ok(r) if r.code() == 201 => {
                    let idx = json_u64(&r.body_str(), "modifiedIndex").ok_or("no index")?;
                    if index_header(&r) != Some(idx) {
                        return Err(format!("PUT {key}: X-Etcd-Index differs: {}", describe(&r)));
                    }
                    let mut l = ledger.lock().unwrap();
                    l.puts.insert(key, (value, idx));
                    l.max_index = l.max_index.max(idx);
                }
                Ok(r) => return Err(format!("PUT {key}: {}", describe(&r))),
                Err(_) => {
                    ledger.lock().unwrap().maybe_puts.insert(key, value);
                    return Ok(ops);
                }
            }
        } else {
            let at = rng.below(live.len() as u64) as usize;
            let (n, _) = live.swap_remove(at);
            let dir = format!("{base}/d{n}");
            match request(
                port,
                "DELETE",
                &format!("/v2/keys{dir}?recursive=true"),
                None,
                &[],
            ) {
                Ok(r) if r.code() == 200 => {
                    let idx = json_u64(&r.body_str(), "modifiedIndex").ok_or("no index")?;
                    let mut l = ledger.lock().unwrap();
                    l.dels.insert(dir, idx);
                    l.max_index = l.max_index.max(idx);
                }
                Ok(r) => return Err(format!("DELETE {dir}?recursive=true: {}", describe(&r))),
                Err(_) => {
                    ledger.lock().unwrap().maybe_dels.insert(dir);
                    return Ok(ops);
                }
            }
        }
    }
    Ok(ops)
}

/// A node of the recursive listing, flattened.
#[derive(Debug, Clone)]
struct Listed {
    node: Json,
    dir: bool,
    /// Children's keys (directories only).
    children: Vec<String>,
}

/// Walks the recursive listing, checking its shape: every child's key is
/// its parent's key plus one name, children in sorted order, no key twice.
fn flatten(node: &Json, out: &mut BTreeMap<String, Listed>, problems: &mut Vec<String>) {
    let Some(key) = node.str_of("key").map(str::to_string) else {
        // The root has no key in etcd's JSON.
        let children = walk_children("/", node, out, problems);
        out.insert(
            "/".into(),
            Listed {
                node: node.clone(),
                dir: true,
                children,
            },
        );
        return;
    };
    let dir = node.is_dir();
    let children = if dir {
        walk_children(&key, node, out, problems)
    } else {
        if node.get("nodes").is_some() {
            problems.push(format!("file {key} has nodes"));
        }
        Vec::new()
    };
    if out
        .insert(
            key.clone(),
            Listed {
                node: node.clone(),
                dir,
                children,
            },
        )
        .is_some()
    {
        problems.push(format!("{key} listed twice"));
    }
}

fn walk_children(
    key: &str,
    node: &Json,
    out: &mut BTreeMap<String, Listed>,
    problems: &mut Vec<String>,
) -> Vec<String> {
    let prefix = if key == "/" {
        "/".to_string()
    } else {
        format!("{key}/")
    };
    let mut children = Vec::new();
    for child in node.nodes() {
        let Some(ck) = child.str_of("key") else {
            problems.push(format!("a child of {key} has no key"));
            continue;
        };
        match ck.strip_prefix(&prefix) {
            Some(name) if !name.is_empty() && !name.contains('/') => {}
            _ => problems.push(format!("{ck} listed under {key}: orphan or misplaced")),
        }
        if children
            .last()
            .is_some_and(|last: &String| last.as_str() >= ck)
        {
            problems.push(format!(
                "children of {key} not sorted: {ck} after {children:?}"
            ));
        }
        children.push(ck.to_string());
        flatten(child, out, problems);
    }
    children
}

/// The fields two renderings of one node must agree on (a directory's
/// children are compared separately).
fn node_summary(n: &Json) -> Vec<(String, Json)> {
    match n {
        Json::Obj(fields) => fields
            .iter()
            .filter(|(name, _)| name != "nodes")
            .cloned()
            .collect(),
        _ => Vec::new(),
    }
}

/// Checks the member after a restart against the ledger. Keys and
/// directories for which `direct` holds are also read one by one.
fn verify_after_restart(
    server: &Server,
    round: u32,
    l: &Ledger,
    last_new: u64,
    direct: &dyn Fn(&str) -> bool,
) -> u64 {
    let port = server.client_port;
    let mut problems = Vec::new();
    let r = request(
        port,
        "GET",
        "/v2/keys/?recursive=true&sorted=true",
        None,
        &[],
    )
    .unwrap();
    assert_eq!(
        r.code(),
        200,
        "round {round}: recursive GET /: {}",
        describe(&r)
    );
    let header = index_header(&r).expect("X-Etcd-Index");
    assert!(
        header >= l.max_index && header >= last_new,
        "round {round}: X-Etcd-Index {header} after restart, but index {} was acknowledged",
        l.max_index.max(last_new)
    );
    let root = Json::parse(&r.body_str()).unwrap_or_else(|e| panic!("round {round}: {e}"));
    let root_node = root.get("node").expect("node");
    let mut listed = BTreeMap::new();
    flatten(root_node, &mut listed, &mut problems);

    // Every directory's parent is listed (the walk guarantees it; say so
    // explicitly for keys), every listed thing under /c was written.
    let mut known_dirs: BTreeSet<String> = BTreeSet::new();
    for k in l.puts.keys().chain(l.maybe_puts.keys()) {
        known_dirs.extend(ancestors(k));
    }
    for (k, item) in &listed {
        if k == "/" {
            continue;
        }
        for a in ancestors(k) {
            if !listed.contains_key(&a) {
                problems.push(format!("{k} listed without its parent {a}"));
            }
        }
        if !k.starts_with("/c/") && k != "/c" {
            continue;
        }
        if item.dir {
            if !known_dirs.contains(k) {
                problems.push(format!("directory {k} was never created"));
            }
        } else if !l.puts.contains_key(k) && !l.maybe_puts.contains_key(k) {
            problems.push(format!("file {k} was never written"));
        }
    }

    let deleted_by = |k: &str, set: &mut dyn Iterator<Item = &String>| -> Option<String> {
        for d in set {
            if k == d.as_str() || k.starts_with(&format!("{d}/")) {
                return Some(d.clone());
            }
        }
        None
    };
    // Acknowledged deletes: gone with everything under them.
    for d in l.dels.keys() {
        if listed.contains_key(d) {
            problems.push(format!(
                "{d} is listed but its recursive delete was acknowledged"
            ));
        }
    }
    // Acknowledged PUTs: there with their value and index, unless deleted.
    for (k, (v, i)) in &l.puts {
        if let Some(d) = deleted_by(k, &mut l.dels.keys()) {
            if listed.contains_key(k) {
                problems.push(format!("{k} survived the acknowledged delete of {d}"));
            }
            continue;
        }
        if let Some(d) = deleted_by(k, &mut l.maybe_dels.iter()) {
            if !listed.contains_key(&d) {
                continue; // the cut-off delete was applied, whole
            }
        }
        match listed.get(k) {
            None => problems.push(format!("acknowledged {k}={v} (index {i}) is missing")),
            Some(item) => {
                let (lv, li) = (item.node.str_of("value"), item.node.u64_of("modifiedIndex"));
                if item.dir || lv != Some(v.as_str()) || li != Some(*i) {
                    problems.push(format!(
                        "{k}: acknowledged value {v} index {i}, listed {:?}",
                        item.node
                    ));
                }
            }
        }
    }
    // Cut-off PUTs: absent, or there with their value.
    for (k, v) in &l.maybe_puts {
        if let Some(item) = listed.get(k) {
            if item.node.str_of("value") != Some(v.as_str()) {
                problems.push(format!("{k}: cut-off PUT of {v}, listed {:?}", item.node));
            }
        }
    }

    // Direct reads agree with the listing: every key ever written (a file
    // present in a shard but missing from the tree would be an orphan), and
    // every listed directory, non-recursively.
    for k in l
        .puts
        .keys()
        .chain(l.maybe_puts.keys())
        .filter(|k| direct(k))
    {
        let r = request(port, "GET", &format!("/v2/keys{k}"), None, &[]).unwrap();
        match listed.get(k) {
            Some(item) => {
                let direct = Json::parse(&r.body_str())
                    .ok()
                    .and_then(|j| j.get("node").cloned());
                if r.code() != 200 || direct.as_ref() != Some(&item.node) {
                    problems.push(format!(
                        "GET {k} disagrees with the listing {:?}: {}",
                        item.node,
                        describe(&r)
                    ));
                }
            }
            None => {
                if r.code() != 404 {
                    problems.push(format!("GET {k}: not listed, but {}", describe(&r)));
                }
            }
        }
    }
    for d in l.dels.keys().filter(|d| direct(d)) {
        let r = request(port, "GET", &format!("/v2/keys{d}"), None, &[]).unwrap();
        if r.code() != 404 {
            problems.push(format!(
                "GET {d} after its acknowledged delete: {}",
                describe(&r)
            ));
        }
    }
    for (d, item) in listed.iter().filter(|(d, i)| i.dir && direct(d)) {
        let target = if d == "/" {
            "/v2/keys/?sorted=true".to_string()
        } else {
            format!("/v2/keys{d}?sorted=true")
        };
        let r = request(port, "GET", &target, None, &[]).unwrap();
        if r.code() != 200 {
            problems.push(format!(
                "GET {target} of a listed directory: {}",
                describe(&r)
            ));
            continue;
        }
        let Some(node) = Json::parse(&r.body_str())
            .ok()
            .and_then(|j| j.get("node").cloned())
        else {
            problems.push(format!("GET {target}: {}", describe(&r)));
            continue;
        };
        if node_summary(&node) != node_summary(&item.node) {
            problems.push(format!(
                "GET {target}: {:?}, listing has {:?}",
                node_summary(&node),
                node_summary(&item.node)
            ));
        }
        let direct: Vec<Vec<(String, Json)>> = node.nodes().iter().map(node_summary).collect();
        let want: Vec<Vec<(String, Json)>> = item
            .children
            .iter()
            .map(|c| node_summary(&listed[c].node))
            .collect();
        if direct != want {
            problems.push(format!(
                "GET {target} lists {:?}\n      recursive listing has {:?}",
                node.nodes()
                    .iter()
                    .map(|n| n.str_of("key").unwrap_or("?").to_string())
                    .collect::<Vec<_>>(),
                item.children
            ));
        }
    }

    assert!(
        problems.is_empty(),
        "round {round}: {} problems after restart:\n  {}\nserver log tail:\n{}",
        problems.len(),
        problems[..problems.len().min(40)].join("\n  "),
        server.log_tail(30)
    );
    eprintln!(
        "round {round}: {} acked PUTs, {} cut off; {} acked deletes, {} cut off; {} nodes listed",
        l.puts.len(),
        l.maybe_puts.len(),
        l.dels.len(),
        l.maybe_dels.len(),
        listed.len()
    );
    header
}

/// One round of crash writers: 4 threads write until `cut` (run after
/// `pause` ms) takes the member down and brings it back. Returns the
/// requests sent.
fn crash_round(
    server: &mut Server,
    round: u32,
    rng: &mut Rng,
    ledger: &Arc<Mutex<Ledger>>,
    pause: u64,
    cut: impl FnOnce(&mut Server),
) -> usize {
    let port = server.client_port;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u32)
        .map(|t| {
            let (stop, ledger) = (stop.clone(), ledger.clone());
            let s = rng.next() | 1;
            thread::spawn(move || crash_writer(port, round, t, s, stop, ledger))
        })
        .collect();
    thread::sleep(Duration::from_millis(pause));
    cut(server);
    stop.store(true, Ordering::Relaxed);
    let mut ops = 0;
    for w in writers {
        match w.join().expect("writer thread") {
            Ok(n) => ops += n,
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    ops
}

/// After a restart, a new write takes an index above everything
/// acknowledged and reported before. Returns it.
fn next_write_index(port: u16, round: u32, l: &Ledger, header: u64, last_new: u64) -> u64 {
    let r = request(port, "PUT", "/v2/keys/after", Some("value=x"), &[]).unwrap();
    assert!(r.code() == 200 || r.code() == 201, "{}", describe(&r));
    let idx = json_u64(&r.body_str(), "modifiedIndex").unwrap();
    assert!(
        idx > l.max_index && idx > header && idx > last_new,
        "round {round}: new PUT got index {idx}; acknowledged before the restart up to {}, \
         X-Etcd-Index after it {header}",
        l.max_index
    );
    idx
}

#[test]
fn cross_shard_writes_survive_sigkill_without_orphans() {
    // Units at depth 4: each writer's directories `/c/rR/tT/dN` are created
    // and deleted by their own shard, in its normal batches.
    let mut server = Server::start_with(&["--shards", "4", "--unit-depth", "4"])
        .expect("start kardia --shards 4");
    let mut rng = Rng(common::time_seed());
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let mut last_new = 0u64;
    for round in 0..5u32 {
        let pause = 100 + rng.below(501);
        let ops = crash_round(&mut server, round, &mut rng, &ledger, pause, |s| {
            s.restart().expect("restart after SIGKILL")
        });
        let l = ledger.lock().unwrap().clone();
        let header = verify_after_restart(&server, round, &l, last_new, &|_| true);
        last_new = next_write_index(server.client_port, round, &l, header, last_new);
        eprintln!("round {round}: killed after {pause} ms, {ops} requests sent");
    }
}

/// Power cuts (issue #11, point 4; docs/architecture.md, *The
/// crash-consistency model*): the member runs with the power-cut simulation,
/// which keeps an image of exactly what its fsyncs made durable (WAL ranges,
/// directory entries, LMDB checkpoints; every LMDB page written since the
/// last checkpoint is lost). Each round writes across 4 shards (PUTs that
/// create directories, recursive deletes: member-wide operations), cuts the
/// power at a random moment and boots from the image: `kardia check` passes
/// on it, every acknowledged write is there with its value and index,
/// nothing unwritten appears, the shards agree (direct reads match the
/// recursive listing) and the index never goes back. Checkpoints every
/// 40 ms and 256 KiB WAL segments put the cuts among checkpoints,
/// rotations and segment releases. `KARDIA_POWERCUT_ROUNDS` runs longer
/// (default 60).
#[test]
fn writes_survive_power_cuts_at_random_moments() {
    let rounds: u32 = std::env::var("KARDIA_POWERCUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut server = Server::start_power_cut(&[
        "--shards",
        "4",
        "--checkpoint-interval",
        "40",
        "--wal-segment-bytes",
        "262144",
    ])
    .expect("start kardia --shards 4 with the power-cut simulation");
    let seed = common::time_seed();
    let mut rng = Rng(seed);
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let mut last_new = 0u64;
    for round in 0..rounds {
        let pause = 20 + rng.below(281);
        let mut checked = String::new();
        let ops = crash_round(&mut server, round, &mut rng, &ledger, pause, |s| {
            s.power_cut(|dir| {
                let out = Command::new(env!("CARGO_BIN_EXE_kardia"))
                    .arg("check")
                    .arg(dir)
                    .output()
                    .expect("run kardia check");
                checked = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    out.status.success(),
                    "round {round} (seed {seed}): kardia check on the booted image:\n{checked}"
                );
            })
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): boot after the cut: {e}"))
        });
        let l = ledger.lock().unwrap().clone();
        let this_round = format!("/c/r{round}/");
        let header = verify_after_restart(&server, round, &l, last_new, &|k| {
            k.starts_with(&this_round) || !k.starts_with("/c/r")
        });
        last_new = next_write_index(server.client_port, round, &l, header, last_new);
        // What the cut left on disk: per shard, the checkpoint (applied
        // raft index) and the WAL range replayed on top of it.
        let booted: Vec<&str> = checked
            .lines()
            .filter(|l| l.contains("applied") || l.contains("wal:"))
            .map(|l| l.split(": ").last().unwrap_or(l))
            .collect();
        eprintln!(
            "round {round}: power cut after {pause} ms, {ops} requests sent; booted {booted:?}"
        );
    }
}

/// A new data dir gets one shard unless `--shards` says otherwise (issue #13:
/// one is faster on HM9000's workload until directory creation stops parking
/// every shard), on any number of cores.
#[test]
fn a_new_data_dir_has_one_shard_by_default() {
    let server = Server::start().expect("start kardia");
    let d = request(server.client_port, "GET", "/debug/kardia/shards", None, &[])
        .unwrap()
        .body_str();
    assert!(d.starts_with("{\"shards\":1,"), "{d}");
}

/// A data dir keeps the shard count it was created with: another explicit
/// `--shards` is refused with a message naming both, nothing is touched,
/// and the member starts again with its data at the recorded count.
#[test]
fn a_data_dir_keeps_its_shard_count() {
    let mut server = Server::start_with(&["--shards", "3"]).expect("start kardia");
    let port = server.client_port;
    let mut written = Vec::new();
    for i in 0..12 {
        let key = format!("/keep/d{i}/k");
        let r = request(port, "PUT", &format!("/v2/keys{key}"), Some("value=v"), &[]).unwrap();
        assert_eq!(r.code(), 201, "{}", r.body_str());
        written.push(key);
    }
    let dir = server.data_dir();
    server.kill();
    // The same member (name, peer URL, cluster) with another count.
    let peer = format!("http://127.0.0.1:{}", server.peer_port);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kardia"))
        .args([
            "--shards",
            "2",
            "--listen-client-urls",
            "http://127.0.0.1:1",
        ])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("has 3 shard(s)"), "{err}");
    assert!(err.contains("kardia reshard"), "{err}");
    server.restart().expect("restart at the recorded count");
    let port = server.client_port;
    for key in &written {
        let r = request(port, "GET", &format!("/v2/keys{key}"), None, &[]).unwrap();
        assert_eq!(r.code(), 200, "{key}: {}", r.body_str());
    }
    let d = request(port, "GET", "/debug/kardia/shards", None, &[])
        .unwrap()
        .body_str();
    assert!(d.starts_with("{\"shards\":3,"), "{d}");
}

/// Issue #13: a read never shows a write its `X-Etcd-Index` does not cover
/// (one that is executed but still in its fsync, not acknowledged), and a
/// connection's `X-Etcd-Index` never goes back. Writers PUT a few keys as
/// fast as they can while readers GET them on keep-alive connections; at 1
/// and 2 shards.
#[test]
fn reads_never_run_ahead_of_their_index() {
    for shards in ["1", "2"] {
        let server = Server::start_with(&["--shards", shards]).expect("start kardia");
        let port = server.client_port;
        let stop = Arc::new(AtomicBool::new(false));
        let keep_alive = move |rng: &mut Rng,
                               stop: &AtomicBool,
                               write: bool|
              -> Result<u64, String> {
            let deadline = Duration::from_secs(10);
            let mut conn = Conn::connect(port, deadline).map_err(|e| e.to_string())?;
            let (mut last_header, mut n) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/v2/keys/hot/k{}", rng.below(4));
                let form = write.then(|| format!("value={}", rng.next()));
                let method = if write { "PUT" } else { "GET" };
                let until = Instant::now() + deadline;
                let r = common::request_on(&mut conn, port, method, &key, form.as_deref(), until)
                    .map_err(|e| format!("{e:?}"))?;
                n += 1;
                if r.code() == 404 {
                    continue;
                }
                let header = index_header(&r).ok_or("no X-Etcd-Index")?;
                let body = r.body_str();
                let modified = json_u64(&body, "modifiedIndex").ok_or("no modifiedIndex")?;
                if modified > header {
                    return Err(format!(
                        "{method} {key}: modifiedIndex {modified} above X-Etcd-Index {header}: {body}"
                    ));
                }
                if header < last_header {
                    return Err(format!(
                        "{method} {key}: X-Etcd-Index went back from {last_header} to {header}"
                    ));
                }
                last_header = header;
            }
            Ok(n)
        };
        let keep_alive = Arc::new(keep_alive);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (stop, f) = (stop.clone(), keep_alive.clone());
                thread::spawn(move || f(&mut Rng(t * 7919 + 1), &stop, t < 3))
            })
            .collect();
        thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for t in threads {
            total += t
                .join()
                .expect("client thread")
                .unwrap_or_else(|e| panic!("--shards {shards}: {e}"));
        }
        eprintln!("--shards {shards}: {total} requests checked");
    }
}

/// Issue #13: requests pipelined on one connection take effect in request
/// order, as etcd's server (one request at a time per connection) has it:
/// each write's index is above the one before it on the connection, and a
/// read sees the writes sent before it, whichever shards the keys live on.
#[test]
fn pipelined_requests_take_effect_in_request_order() {
    for shards in ["2", "4"] {
        let server = Server::start_with(&["--shards", shards]).expect("start kardia");
        let port = server.client_port;
        let mut rng = Rng(common::time_seed());
        for round in 0..20 {
            // Keys in several directories (so on several shards), some
            // directories new (member-wide writes among plain ones).
            let mut wire = Vec::new();
            let mut expect = Vec::new();
            for i in 0..24 {
                let key = format!(
                    "/v2/keys/pipe{}/d{}/k{}",
                    round % 3,
                    rng.below(8),
                    rng.below(4)
                );
                if rng.below(3) == 0 {
                    wire.extend(common::build_request(
                        port,
                        "GET",
                        key.as_bytes(),
                        None,
                        &[],
                        true,
                    ));
                    expect.push(("GET", key, String::new()));
                } else {
                    let value = format!("r{round}i{i}");
                    let body = format!("value={value}");
                    wire.extend(common::build_request(
                        port,
                        "PUT",
                        key.as_bytes(),
                        Some(body.as_bytes()),
                        &[],
                        true,
                    ));
                    expect.push(("PUT", key, value));
                }
            }
            let mut conn = Conn::connect(port, Duration::from_secs(10)).expect("connect");
            conn.send(&wire).expect("send the pipeline");
            let mut last_write = 0u64;
            let mut values: BTreeMap<String, String> = BTreeMap::new();
            for (method, key, value) in expect {
                let r = common::read_response(
                    &mut conn,
                    method,
                    Instant::now() + Duration::from_secs(10),
                )
                .unwrap_or_else(|e| panic!("--shards {shards}: {method} {key}: {e:?}"));
                let body = r.body_str();
                if method == "PUT" {
                    let idx = json_u64(&body, "modifiedIndex").expect("modifiedIndex");
                    assert!(
                        idx > last_write,
                        "--shards {shards}: pipelined PUT {key} took index {idx}, after a PUT \
                         sent before it took {last_write}"
                    );
                    last_write = idx;
                    values.insert(key, value);
                } else {
                    if let Some(v) = values.get(&key) {
                        assert!(
                            r.code() == 200 && body.contains(&format!("\"value\":\"{v}\"")),
                            "--shards {shards}: pipelined GET {key} after PUT {v}: {} {body}",
                            r.code()
                        );
                    }
                }
            }
        }
    }
}

/// Large listings (over the 64 KiB that makes a read "bulk") answered while
/// writes are in flight take the asynchronous path, and are sent from the
/// buffer they were rendered in, behind room for their head: GET, HEAD and
/// a listing pipelined behind a small GET answer exactly what the quiet
/// member answered, at one shard and at two (where a listing of a
/// directory whose files lie on both shards is a member-wide read).
#[test]
fn large_listings_during_writes_answer_as_when_quiet() {
    for shards in ["1", "2"] {
        let server = Server::start_with(&["--shards", shards]).expect("start kardia");
        let port = server.client_port;
        let value = format!("value={}", "x".repeat(200));
        let mut c = Conn::connect(port, Duration::from_secs(10)).expect("connect");
        for i in 0..2400 {
            let key = format!("/v2/keys/big/d{}/k{i:04}", i % 7);
            let r = common::request_on(&mut c, port, "PUT", &key, Some(&value), far()).unwrap();
            assert_eq!(r.code(), 201, "{}", describe(&r));
        }
        let listings = [
            "/v2/keys/big?recursive=true",
            "/v2/keys/big/d3?recursive=true&sorted=true",
        ];
        let quiet: Vec<Vec<u8>> = listings
            .iter()
            .map(|l| ok(port, "GET", l, None).body)
            .collect();
        assert!(
            quiet.iter().all(|b| b.len() > 64 << 10),
            "listings over 64 KiB"
        );
        // Every file is in the quiet listings (they are the reference).
        let files = |body: &[u8]| {
            let text = String::from_utf8_lossy(body);
            let json = Json::parse(&text).unwrap_or_else(|e| {
                let e: String = e.chars().take(300).collect();
                panic!("--shards {shards}: the quiet listing: {e}")
            });
            let mut all = BTreeMap::new();
            let mut problems = Vec::new();
            flatten(json.get("node").expect("a node"), &mut all, &mut problems);
            assert!(problems.is_empty(), "--shards {shards}: {problems:?}");
            all.values().filter(|l| !l.dir).count()
        };
        assert_eq!(files(&quiet[0]), 2400, "--shards {shards}: /big");
        assert_eq!(files(&quiet[1]), 343, "--shards {shards}: /big/d3");

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut c = Conn::connect(port, Duration::from_secs(10)).expect("connect");
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("/v2/keys/busy/w{t}/k{}", i % 50);
                        let r =
                            common::request_on(&mut c, port, "PUT", &key, Some("value=v"), far());
                        let code = r.unwrap().code();
                        assert!(code == 200 || code == 201, "a PUT answered {code}");
                        i += 1;
                    }
                })
            })
            .collect();
        for round in 0..15 {
            for (target, want) in listings.iter().zip(&quiet) {
                let got = ok(port, "GET", target, None);
                assert!(
                    got.body == *want,
                    "--shards {shards} round {round}: GET {target} during writes differs from the \
                     quiet listing ({} vs {} bytes)",
                    got.body.len(),
                    want.len()
                );
                let head = ok(port, "HEAD", target, None);
                assert_eq!(
                    head.header("Content-Length"),
                    Some(&*want.len().to_string())
                );
                assert!(head.body.is_empty(), "HEAD {target} sent a body");
                // Behind a small response on the same connection.
                let mut wire =
                    common::build_request(port, "GET", b"/v2/keys/big/d0/k0000", None, &[], true);
                wire.extend(common::build_request(
                    port,
                    "GET",
                    target.as_bytes(),
                    None,
                    &[],
                    true,
                ));
                let mut c = Conn::connect(port, Duration::from_secs(10)).expect("connect");
                c.send(&wire).expect("send the pipeline");
                let small = common::read_response(&mut c, "GET", far()).unwrap();
                assert_eq!(small.code(), 200, "{}", describe(&small));
                let big = common::read_response(&mut c, "GET", far()).unwrap();
                assert!(
                    big.body == *want,
                    "--shards {shards} round {round}: pipelined GET {target} differs ({} vs {} bytes)",
                    big.body.len(),
                    want.len()
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(15)
}

// ---------------------------------------------------------------------------
// Placement units (issue #13)

fn sessions(port: u16) -> u64 {
    let r = request(port, "GET", "/debug/kardia/shards", None, &[]).unwrap();
    json_u64(&r.body_str(), "memberWideSessions").expect("memberWideSessions")
}

fn ok(port: u16, method: &str, target: &str, form: Option<&str>) -> Response {
    let r = request(port, method, target, form, &[]).unwrap();
    assert!(r.code() < 300, "{method} {target}: {}", describe(&r));
    r
}

/// HM9000's layout at the default unit depth (5) on two shards: creating
/// and deleting application directories, their TTLs and expiries commit on
/// one shard without a member-wide session (before units, each of these
/// parked every shard); listings of `apps/actual` span the shards and see
/// every application; a skeleton directory's TTL still expires member-wide.
#[test]
fn application_directories_commit_on_one_shard_without_parking() {
    let s = Server::start_with(&["--shards", "2"]).expect("start kardia --shards 2");
    let port = s.client_port;
    let actual = "/v2/keys/hm/v4/apps/actual";
    // The skeleton (`/hm/v4/apps/actual` and the presence directory) is
    // created member-wide, once.
    ok(port, "PUT", &format!("{actual}?dir=true"), None);
    ok(
        port,
        "PUT",
        "/v2/keys/hm/v4/dea-presence/dea0",
        Some("value=x&ttl=30"),
    );
    let before = sessions(port);
    let base = current_index(port);
    let (mut watch, mut stream) = open_stream(
        port,
        &format!(
            "{actual}?wait=true&recursive=true&stream=true&waitIndex={}",
            base + 1
        ),
    );

    let mut model: BTreeMap<String, String> = BTreeMap::new();
    for app in 0..40 {
        for i in 0..3 {
            let key = format!("/hm/v4/apps/actual/app{app},v1/i{i}");
            let value = format!("{i},RUNNING,1.0,dea{app}");
            ok(
                port,
                "PUT",
                &format!("/v2/keys{key}"),
                Some(&format!("value={value}")),
            );
            model.insert(key, value);
        }
    }
    // Whole applications go away; others get a TTL (refreshed, then due).
    for app in 0..8 {
        ok(
            port,
            "DELETE",
            &format!("{actual}/app{app},v1?recursive=true"),
            None,
        );
        model.retain(|k, _| !k.starts_with(&format!("/hm/v4/apps/actual/app{app},v1/")));
    }
    for app in 8..12 {
        let dir = format!("{actual}/app{app},v1?dir=true&prevExist=true");
        ok(port, "PUT", &format!("{dir}&ttl=100"), None);
        ok(port, "PUT", &format!("{dir}&ttl=1&refresh=true"), None);
        model.retain(|k, _| !k.starts_with(&format!("/hm/v4/apps/actual/app{app},v1/")));
    }
    ok(port, "PUT", &format!("{actual}/new,v1?dir=true"), None);
    ok(port, "DELETE", &format!("{actual}/new,v1?dir=true"), None);
    let app20 = ok(
        port,
        "GET",
        &format!("{actual}/app20,v1?recursive=true"),
        None,
    );
    assert_eq!(
        Json::parse(&app20.body_str())
            .unwrap()
            .get("node")
            .unwrap()
            .nodes()
            .len(),
        3
    );
    assert_eq!(
        sessions(port),
        before,
        "a write or read inside an application directory parked every shard"
    );

    // A skeleton directory with a TTL, and a POST just above the units
    // (its key lands in any shard's unit): member-wide.
    ok(port, "PUT", "/v2/keys/hm/v4/tmp?dir=true&ttl=1", None);
    let posted = ok(port, "POST", actual, Some("value=in-order"));
    let posted_key = Json::parse(&posted.body_str())
        .unwrap()
        .get("node")
        .and_then(|n| n.str_of("key").map(str::to_string))
        .expect("POST answers the created key");
    model.insert(posted_key.clone(), "in-order".into());
    assert!(sessions(port) > before);

    // Expiries: the four applications on their shards, `tmp` member-wide.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let apps = (8..12)
            .filter(|a| {
                let t = format!("{actual}/app{a},v1");
                request(port, "GET", &t, None, &[]).unwrap().code() == 200
            })
            .count();
        let tmp = request(port, "GET", "/v2/keys/hm/v4/tmp", None, &[])
            .unwrap()
            .code();
        if apps == 0 && tmp == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not expired: {apps} apps, tmp {tmp}"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // The listing spans both shards and equals the model, recursively and
    // not: every application directory is there, and nothing else.
    for recursive in [true, false] {
        let r = ok(
            port,
            "GET",
            &format!("{actual}?recursive={recursive}&sorted=true"),
            None,
        );
        let node = Json::parse(&r.body_str()).unwrap();
        let node = node.get("node").unwrap();
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        for child in node.nodes() {
            let key = child.str_of("key").unwrap().to_string();
            if child.is_dir() {
                dirs.insert(key);
                for leaf in child.nodes() {
                    let k = leaf.str_of("key").unwrap().to_string();
                    files.insert(k, leaf.str_of("value").unwrap().to_string());
                }
            } else {
                files.insert(key, child.str_of("value").unwrap().to_string());
            }
        }
        let want_dirs: BTreeSet<String> = (12..40)
            .map(|a| format!("/hm/v4/apps/actual/app{a},v1"))
            .collect();
        assert_eq!(dirs, want_dirs, "recursive={recursive}");
        if recursive {
            assert_eq!(files, model, "recursive listing differs from the writes");
        } else {
            assert_eq!(files.len(), 1, "{files:?}");
            assert!(node.nodes().iter().all(|c| c.nodes().is_empty()));
        }
    }

    // The watcher saw every change in index order: 121 sets (120 files and
    // a directory), 9 deletes, 4 TTL updates (refreshes notify no one), the
    // POST's create and 4 expiries.
    watch
        .read_body(
            &mut stream,
            "GET",
            Instant::now() + Duration::from_secs(10),
            BodyLimit {
                lines: Some(139),
                idle: None,
            },
        )
        .unwrap();
    let mut actions: BTreeMap<String, usize> = BTreeMap::new();
    let mut last = base;
    for line in stream.body_str().lines() {
        let e = Json::parse(line).unwrap();
        let i = e.get("node").unwrap().u64_of("modifiedIndex").unwrap();
        assert!(i > last, "event {i} after {last}: {line}");
        last = i;
        *actions
            .entry(e.str_of("action").unwrap().to_string())
            .or_default() += 1;
    }
    let want: BTreeMap<String, usize> = [
        ("set", 121),
        ("delete", 9),
        ("update", 4),
        ("create", 1),
        ("expire", 4),
    ]
    .into_iter()
    .map(|(a, n)| (a.to_string(), n))
    .collect();
    assert_eq!(actions, want);
}

/// Member-wide listings are consistent cuts (issue #13): while writers
/// create and delete unit directories and files on four shards, every
/// recursive listing of the root at `X-Etcd-Index` X holds exactly the files
/// the acknowledged writes up to X leave, with their values and indexes —
/// no write above X, none below it missing — although the shards resume
/// writing before the listing is rendered.
#[test]
fn recursive_listings_are_consistent_cuts_under_writes() {
    let s = Server::start_with(&["--shards", "4", "--unit-depth", "2"])
        .expect("start kardia --shards 4");
    let port = s.client_port;
    ok(port, "PUT", "/v2/keys/top?dir=true", None);
    /// (index, key, Some(value) for a PUT or None for a recursive DELETE).
    type Write = (u64, String, Option<String>);
    let log: Arc<Mutex<Vec<Write>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let log = log.clone();
            thread::spawn(move || {
                let mut rng = Rng(0xC0_7C07 + w);
                for n in 0..300 {
                    let (method, key, form) = match rng.below(10) {
                        0 => ("DELETE", format!("/u{}", rng.below(8)), None),
                        1..=3 => (
                            "PUT",
                            format!("/top/k{}", rng.below(6)),
                            Some(format!("w{w}n{n}")),
                        ),
                        _ => (
                            "PUT",
                            format!("/u{}/i{}", rng.below(8), rng.below(4)),
                            Some(format!("w{w}n{n}")),
                        ),
                    };
                    let target = match method {
                        "DELETE" => format!("/v2/keys{key}?recursive=true"),
                        _ => format!("/v2/keys{key}"),
                    };
                    let body = form.as_ref().map(|v| format!("value={v}"));
                    let r = request(port, method, &target, body.as_deref(), &[]).unwrap();
                    if r.code() >= 300 {
                        assert_eq!(
                            (method, r.code()),
                            ("DELETE", 404),
                            "{target}: {}",
                            describe(&r)
                        );
                        continue;
                    }
                    let i = json_u64(&r.body_str(), "modifiedIndex").expect("modifiedIndex");
                    log.lock().unwrap().push((i, key, form));
                }
            })
        })
        .collect();
    let reader = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut listings = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let r = ok(port, "GET", "/v2/keys/?recursive=true&sorted=true", None);
                let x = index_header(&r).expect("X-Etcd-Index");
                let node = Json::parse(&r.body_str()).unwrap();
                let mut files = BTreeMap::new();
                let mut todo = vec![node.get("node").unwrap().clone()];
                while let Some(n) = todo.pop() {
                    for c in n.nodes() {
                        if c.is_dir() {
                            todo.push(c.clone());
                        } else {
                            let k = c.str_of("key").unwrap().to_string();
                            let v = c.str_of("value").unwrap().to_string();
                            files.insert(k, (v, c.u64_of("modifiedIndex").unwrap()));
                        }
                    }
                }
                listings.push((x, files));
            }
            listings
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    stop.store(true, Ordering::SeqCst);
    let listings = reader.join().expect("reader");
    let mut log = log.lock().unwrap().clone();
    log.sort();
    let dels = log.iter().filter(|e| e.2.is_none()).count();
    assert!(dels > 20, "too few directory deletes: {dels}");
    assert!(listings.len() > 10, "too few listings: {}", listings.len());
    for (x, got) in &listings {
        let mut want: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for (i, key, value) in log.iter().take_while(|e| e.0 <= *x) {
            match value {
                Some(v) => {
                    want.insert(key.clone(), (v.clone(), *i));
                }
                None => want.retain(|k, _| !k.starts_with(&format!("{key}/"))),
            }
        }
        assert_eq!(
            got, &want,
            "the listing at index {x} is not the writes up to {x}"
        );
    }
    eprintln!(
        "{} listings checked against {} writes ({dels} directory deletes)",
        listings.len(),
        log.len()
    );
}

/// Without the listing's `ttl` fields (they count down while the test runs).
fn without_ttl(j: &Json) -> Json {
    match j {
        Json::Obj(fields) => Json::Obj(
            fields
                .iter()
                .filter(|(k, _)| k != "ttl")
                .map(|(k, v)| (k.clone(), without_ttl(v)))
                .collect(),
        ),
        Json::Arr(a) => Json::Arr(a.iter().map(without_ttl).collect()),
        other => other.clone(),
    }
}

fn kardia_tool(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kardia"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

/// `kardia reshard` (issue #13): a stopped member's data dir changes shard
/// count and unit depth and keeps every key — files, directories, hidden
/// keys, in-order keys, TTLs, indexes and the watch history — including the
/// writes only its log held (the power-cut simulation with no checkpoint
/// leaves the stores behind their logs, so the reshard replays them).
/// A running member's data dir is refused.
#[test]
fn a_stopped_member_reshards_without_losing_a_key() {
    let mut server = Server::start_power_cut(&[
        "--shards",
        "3",
        "--unit-depth",
        "0",
        "--checkpoint-interval",
        "3600000",
    ])
    .expect("start kardia");
    let port = server.client_port;
    for app in 0..30 {
        for i in 0..3 {
            let t = format!("/v2/keys/hm/v4/apps/actual/app{app}/i{i}");
            ok(port, "PUT", &t, Some("value=running"));
        }
    }
    ok(
        port,
        "DELETE",
        "/v2/keys/hm/v4/apps/actual/app7?recursive=true",
        None,
    );
    ok(
        port,
        "PUT",
        "/v2/keys/hm/v4/dea-presence/d1",
        Some("value=x&ttl=3000"),
    );
    ok(port, "PUT", "/v2/keys/hm/v4/lease?dir=true&ttl=3000", None);
    ok(port, "PUT", "/v2/keys/_hidden/k", Some("value=h"));
    ok(port, "PUT", "/v2/keys/a/_h", Some("value=h2"));
    ok(port, "POST", "/v2/keys/queue", Some("value=q1"));
    ok(port, "POST", "/v2/keys/queue", Some("value=q2"));
    ok(port, "PUT", "/v2/keys/top", Some("value=t"));
    let list = "/v2/keys/?recursive=true&sorted=true";
    let before = ok(port, "GET", list, None);
    let index = index_header(&before).unwrap();
    let history_at = |port: u16| {
        let t = format!(
            "/v2/keys/?wait=true&recursive=true&waitIndex={}",
            index - 20
        );
        ok(port, "GET", &t, None)
    };
    let history = history_at(port);

    // While it runs, the data dir is its own.
    let running = kardia_tool(
        &["reshard", "--shards", "2", "--data-dir"],
        &server.data_dir(),
    );
    let err = String::from_utf8_lossy(&running.stderr);
    assert_eq!(running.status.code(), Some(1), "{err}");
    assert!(err.contains("in use"), "{err}");

    server.set_args(&["--shards", "2"]);
    server
        .power_cut(|dir| {
            let out = kardia_tool(
                &[
                    "reshard",
                    "--shards",
                    "2",
                    "--unit-depth",
                    "5",
                    "--data-dir",
                ],
                dir,
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("3 shard(s) at unit depth 0 -> 2 shard(s) at unit depth 5"),
                "{text}"
            );
            let out = kardia_tool(&["check"], dir);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "kardia check after the reshard:\n{text}"
            );
        })
        .expect("start the resharded member");
    let port = server.client_port;
    let d = request(port, "GET", "/debug/kardia/shards", None, &[])
        .unwrap()
        .body_str();
    assert!(d.starts_with("{\"shards\":2,\"unitDepth\":5,"), "{d}");
    let after = ok(port, "GET", list, None);
    assert_eq!(index_header(&after), Some(index));
    assert_eq!(
        without_ttl(&Json::parse(&after.body_str()).unwrap()),
        without_ttl(&Json::parse(&before.body_str()).unwrap()),
        "the listing changed across the reshard"
    );
    for (key, value) in [("/_hidden/k", "h"), ("/a/_h", "h2")] {
        let r = ok(port, "GET", &format!("/v2/keys{key}"), None);
        assert!(
            r.body_str().contains(&format!("\"value\":\"{value}\"")),
            "{}",
            r.body_str()
        );
    }
    let lease = ok(port, "GET", "/v2/keys/hm/v4/lease", None).body_str();
    let ttl = Json::parse(&lease)
        .unwrap()
        .get("node")
        .unwrap()
        .u64_of("ttl")
        .unwrap();
    assert!((2900..=3000).contains(&ttl), "{lease}");
    let again = history_at(port);
    assert_eq!(again.body, history.body, "the watch history changed");
    // Writes go on above the old index, in units now.
    let r = ok(
        port,
        "PUT",
        "/v2/keys/hm/v4/apps/actual/app99/i0",
        Some("value=new"),
    );
    assert_eq!(json_u64(&r.body_str(), "modifiedIndex"), Some(index + 1));
    ok(
        port,
        "DELETE",
        "/v2/keys/hm/v4/apps/actual/app3?recursive=true",
        None,
    );
    let r = ok(
        port,
        "GET",
        "/v2/keys/hm/v4/apps/actual?recursive=true",
        None,
    );
    let apps = Json::parse(&r.body_str())
        .unwrap()
        .get("node")
        .unwrap()
        .nodes()
        .len();
    assert_eq!(apps, 29, "{}", r.body_str());
}
