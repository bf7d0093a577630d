//! Deep trees: a legal key 10,000 levels deep must never take a member (or
//! a cluster) down. Every walk over the tree is exercised on such a chain
//! with the real binary — render (recursive and sorted GET), recursive
//! delete, directory TTL expiry, the watchers on removed nodes, the
//! member-wide collect of a sharded member, WAL replay after SIGKILL, the
//! replicated apply on every member of a cluster, and the snapshot a
//! lagging member installs.
//!
//! Each node of the chain is `/a`, so the deepest key is 20,000 bytes and a
//! recursive listing of the chain is about 100 MB of JSON (every node
//! carries its full key, as in etcd).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{http, Cluster};
use common::{request, Server};

const LEVELS: usize = 10_000;

/// `/<top>/a/a/…/a`, `LEVELS` components in all.
fn chain(top: &str) -> String {
    let mut k = format!("/{top}");
    k.push_str(&"/a".repeat(LEVELS - 1));
    k
}

fn code(port: u16, method: &str, target: &str, form: Option<&str>) -> (u16, String) {
    let r = request(port, method, target, form, &[])
        .unwrap_or_else(|e| panic!("{method} {}…: {e}", &target[..target.len().min(60)]));
    (r.code(), r.body_str())
}

/// A body short enough for a failure message.
fn short(body: &str) -> &str {
    &body[body.len().saturating_sub(300)..]
}

fn alive(port: u16) {
    assert_eq!(
        code(port, "GET", "/health", None).0,
        200,
        "member not healthy"
    );
}

/// Every walk on one member with `args`.
fn single_member(args: &[&str]) {
    let mut s = Server::start_with(args).expect("start kardia");
    let port = s.client_port;
    let deep = chain("t");
    let url = format!("/v2/keys{deep}");
    assert_eq!(code(port, "PUT", &url, Some("value=v")).0, 201);
    let (c, body) = code(port, "GET", &url, None);
    assert_eq!(c, 200);
    assert!(body.contains("\"value\":\"v\""), "{}", short(&body));

    // Render: a recursive (and a sorted) listing of the whole chain.
    for q in ["recursive=true", "recursive=true&sorted=true"] {
        let r = request(port, "GET", &format!("/v2/keys/?{q}"), None, &[]).expect("listing");
        assert_eq!(r.code(), 200, "{q}");
        assert!(
            r.body.len() > LEVELS * LEVELS,
            "{q}: {} bytes",
            r.body.len()
        );
        let tail = String::from_utf8_lossy(&r.body[r.body.len() - 200..]).into_owned();
        assert!(
            tail.trim_end().ends_with("\"createdIndex\":4}]}}"),
            "{q}: ends {tail:?}"
        );
    }
    alive(port);

    // A watcher on the deepest node hears the recursive delete of the top.
    let watch = {
        let url = format!("{url}?wait=true");
        thread::spawn(move || code(port, "GET", &url, None))
    };
    thread::sleep(Duration::from_millis(500));
    let (c, body) = code(port, "DELETE", "/v2/keys/t?recursive=true", None);
    assert_eq!(c, 200, "{}", short(&body));
    let (c, body) = watch.join().expect("watcher");
    assert_eq!(c, 200);
    assert!(
        body.contains("\"action\":\"delete\"") && body.contains("\"key\":\"/t\""),
        "{}",
        short(&body)
    );
    assert_eq!(code(port, "GET", "/v2/keys/t", None).0, 404);
    alive(port);

    // Expiry: a directory TTL over a chain.
    assert_eq!(
        code(port, "PUT", "/v2/keys/e", Some("dir=true&ttl=2")).0,
        201
    );
    let e = format!("/v2/keys{}", chain("e"));
    assert_eq!(code(port, "PUT", &e, Some("value=x")).0, 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    while code(port, "GET", "/v2/keys/e", None).0 != 404 {
        assert!(Instant::now() < deadline, "/e never expired");
        thread::sleep(Duration::from_millis(200));
    }
    alive(port);

    // Replay: the chain again, a recursive delete, another chain; SIGKILL
    // and restart replays every one of them from the WAL.
    assert_eq!(code(port, "PUT", &url, Some("value=w")).0, 201);
    assert_eq!(
        code(port, "DELETE", "/v2/keys/t?recursive=true", None).0,
        200
    );
    let u = format!("/v2/keys{}", chain("u"));
    assert_eq!(code(port, "PUT", &u, Some("value=u")).0, 201);
    s.restart().expect("restart after SIGKILL");
    assert_eq!(code(port, "GET", "/v2/keys/t", None).0, 404);
    assert_eq!(code(port, "GET", "/v2/keys/e", None).0, 404);
    let (c, body) = code(port, "GET", &u, None);
    assert_eq!(c, 200);
    assert!(body.contains("\"value\":\"u\""), "{}", short(&body));
    let r = request(port, "GET", "/v2/keys/u?recursive=true", None, &[]).expect("listing");
    assert_eq!(r.code(), 200);
    alive(port);
}

#[test]
fn ten_thousand_levels_on_one_shard() {
    single_member(&["--shards", "1"]);
}

#[test]
fn ten_thousand_levels_on_two_shards() {
    single_member(&["--shards", "2"]);
}

/// A recursive delete and a directory expiry of a chain are applied by
/// every member; a member that missed them catches up from a snapshot; all
/// survive restarts.
#[test]
fn ten_thousand_levels_in_a_cluster() {
    let _serial = common::cluster::serial();
    let mut c = Cluster::start_static(3, &["--snapshot-count", "20"]);
    let leader = c.wait_leader(Duration::from_secs(10));
    let port = c.port(leader);
    let url = format!("/v2/keys{}", chain("t"));
    let call = |port: u16, method: &str, target: &str, form: Option<&str>| -> u16 {
        http(port, method, target, form, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
            .code()
    };
    assert_eq!(call(port, "PUT", &url, Some("value=v")), 201);
    assert_eq!(call(port, "PUT", "/v2/keys/e", Some("dir=true&ttl=2")), 201);
    let e = format!("/v2/keys{}", chain("e"));
    assert_eq!(call(port, "PUT", &e, Some("value=x")), 201);

    // One member misses the delete and enough writes to need a snapshot.
    let lagging = (leader + 1) % 3;
    c.kill(lagging);
    assert_eq!(call(port, "DELETE", "/v2/keys/t?recursive=true", None), 200);
    let u = format!("/v2/keys{}", chain("u"));
    assert_eq!(call(port, "PUT", &u, Some("value=u")), 201);
    for i in 0..40 {
        assert_eq!(
            call(port, "PUT", &format!("/v2/keys/f{i}"), Some("value=1")),
            201
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while call(port, "GET", "/v2/keys/e", None) != 404 {
        assert!(Instant::now() < deadline, "/e never expired");
        thread::sleep(Duration::from_millis(200));
    }
    c.start(lagging);
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_leader_agreed(Duration::from_secs(15));
    for i in 0..3 {
        let p = c.port(i);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = call(p, "GET", "/v2/keys/t", None) == 404
                && call(p, "GET", "/v2/keys/e", None) == 404
                && call(p, "GET", &u, None) == 200
                && call(p, "GET", "/v2/keys/f39", None) == 200;
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} did not converge\n{}",
                c.logs()
            );
            thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(call(p, "GET", "/health", None), 200);
        assert_eq!(call(p, "GET", "/v2/keys/?recursive=true", None), 200);
    }
}
