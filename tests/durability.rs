//! Durability (G2) and restart behaviour of the real binary.
//!
//! Writers keep PUTting over loopback while the test SIGKILLs the server at
//! random moments, several times over. After each restart every
//! acknowledged write must still be there with the value and modifiedIndex
//! it was acknowledged with, and the index must keep growing. TTLs keep
//! running by the wall clock across a restart.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{json_u64, request, Rng, Server};

/// (key, value, acknowledged modifiedIndex)
type Acked = Arc<Mutex<Vec<(String, String, u64)>>>;

#[test]
fn acknowledged_writes_survive_sigkill_under_load() {
    sigkill_rounds(Server::start().expect("start kardia"));
}

/// The same with 64 KiB WAL segments: segments roll, checkpoints release and
/// recycle them, all while the server is being killed.
#[test]
fn acknowledged_writes_survive_sigkill_across_wal_rotations() {
    let server = sigkill_rounds(
        Server::start_with(&["--wal-segment-bytes", "65536"]).expect("start kardia"),
    );
    // Segments are named by sequence: check that several were used.
    let highest = std::fs::read_dir(server.data_dir().join("shard-0/wal"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
        })
        .max()
        .unwrap();
    assert!(highest >= 8, "only {highest} WAL segments were used");
}

fn sigkill_rounds(mut server: Server) -> Server {
    let seed = common::time_seed();
    let mut rng = Rng(seed);
    let acked: Acked = Arc::default();
    let mut last_index = 0u64;
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let port = server.client_port;
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (stop, acked) = (stop.clone(), acked.clone());
                thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        // Overwrites and fresh keys, in nested directories.
                        let key = format!("/dur/r{round}/w{w}/k{}", n % 50);
                        let value = format!("v{round}-{w}-{n}");
                        let form = format!("value={value}");
                        match request(port, "PUT", &format!("/v2/keys{key}"), Some(&form), &[]) {
                            Ok(r) if r.code() == 200 || r.code() == 201 => {
                                let idx =
                                    json_u64(&r.body_str(), "modifiedIndex").expect("index in ack");
                                let hdr: u64 = r.header("X-Etcd-Index").unwrap().parse().unwrap();
                                assert_eq!(idx, hdr, "X-Etcd-Index of a write is its index");
                                acked.lock().unwrap().push((key, value, idx));
                            }
                            Ok(r) => panic!("unexpected answer {} {}", r.code(), r.body_str()),
                            // The server was killed mid-request: not acknowledged.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        let pause = 150 + rng.next() % 600;
        thread::sleep(Duration::from_millis(pause));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer");
        }
        server.restart().expect("restart after SIGKILL");

        // Every acknowledged write is there; the latest per key wins.
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: no write was acknowledged"
        );
        let mut latest = std::collections::BTreeMap::new();
        for (k, v, i) in &acked {
            let e = latest.entry(k.clone()).or_insert((v.clone(), *i));
            if *i > e.1 {
                *e = (v.clone(), *i);
            }
        }
        for (k, (v, i)) in &latest {
            let r = request(
                server.client_port,
                "GET",
                &format!("/v2/keys{k}"),
                None,
                &[],
            )
            .unwrap();
            assert_eq!(
                r.code(),
                200,
                "round {round}: acknowledged {k} lost: {}",
                r.body_str()
            );
            let body = r.body_str();
            // A later write that was cut off before its answer may also have
            // been applied; an acknowledged one can never be missing.
            let stored = json_u64(&body, "modifiedIndex").unwrap();
            assert!(
                stored >= *i,
                "round {round}: {k} went back to index {stored}, acked {i}: {body}"
            );
            if stored == *i {
                assert!(
                    body.contains(&format!("\"value\":\"{v}\"")),
                    "round {round}: {k} has {body}, acked {v}"
                );
            }
        }
        // The index never goes backwards and keeps growing.
        let max_acked = acked.iter().map(|a| a.2).max().unwrap();
        let r = request(
            server.client_port,
            "PUT",
            "/v2/keys/dur/after",
            Some("value=x"),
            &[],
        )
        .unwrap();
        let idx = json_u64(&r.body_str(), "modifiedIndex").unwrap();
        assert!(
            idx > max_acked && idx > last_index,
            "round {round}: new index {idx} after {max_acked}"
        );
        last_index = idx;
        eprintln!(
            "round {round}: {} acked writes survived (killed after {pause} ms)",
            acked.len()
        );
    }
    server
}

#[test]
fn recursive_delete_and_parent_creation_survive_sigkill() {
    let mut server = Server::start().expect("start kardia");
    let port = server.client_port;
    for i in 0..20 {
        let r = request(
            port,
            "PUT",
            &format!("/v2/keys/tree/a{}/b/c{i}", i % 4),
            Some("value=1"),
            &[],
        )
        .unwrap();
        assert_eq!(r.code(), 201);
    }
    let r = request(port, "DELETE", "/v2/keys/tree/a1?recursive=true", None, &[]).unwrap();
    assert_eq!(r.code(), 200);
    server.kill();
    server.restart().unwrap();
    let r = request(port, "GET", "/v2/keys/tree/a1/b/c1", None, &[]).unwrap();
    assert_eq!(r.code(), 404, "{}", r.body_str());
    assert!(
        r.body_str().contains("\"cause\":\"/tree/a1\""),
        "{}",
        r.body_str()
    );
    let r = request(
        port,
        "GET",
        "/v2/keys/tree?recursive=true&sorted=true",
        None,
        &[],
    )
    .unwrap();
    let body = r.body_str();
    for a in ["a0", "a2", "a3"] {
        assert_eq!(
            body.matches(&format!("\"key\":\"/tree/{a}/b/c")).count(),
            5,
            "{a}: {body}"
        );
    }
    assert!(!body.contains("/tree/a1"), "{body}");
}

#[test]
fn ttl_keeps_running_by_the_wall_clock_across_restart() {
    let mut server = Server::start().expect("start kardia");
    let port = server.client_port;
    let r = request(port, "PUT", "/v2/keys/hb", Some("value=alive&ttl=3"), &[]).unwrap();
    assert_eq!(r.code(), 201);
    let put_at = Instant::now();
    server.kill();
    thread::sleep(Duration::from_millis(1200));
    server.restart().unwrap();
    let r = request(port, "GET", "/v2/keys/hb", None, &[]).unwrap();
    assert_eq!(r.code(), 200, "{}", r.body_str());
    let ttl = json_u64(&r.body_str(), "ttl").expect("ttl shown");
    assert!(
        ttl <= 2,
        "ttl {ttl} did not count down while the server was down"
    );
    // The watch sees the expiry, at about 3 s after the PUT.
    let w = request(port, "GET", "/v2/keys/hb?wait=true", None, &[]).unwrap();
    let elapsed = put_at.elapsed();
    assert!(
        w.body_str().contains("\"action\":\"expire\""),
        "{}",
        w.body_str()
    );
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_secs(5),
        "expired after {elapsed:?}"
    );
    let r = request(port, "GET", "/v2/keys/hb", None, &[]).unwrap();
    assert_eq!(r.code(), 404);
}

#[test]
fn a_data_dir_of_another_member_or_program_is_refused() {
    let mut server = Server::start().expect("start kardia");
    let dir = server.data_dir();
    server.kill();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kardia"))
        .args([
            "--name",
            "other",
            "--listen-client-urls",
            "http://127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("belongs to member \"default\""), "{err}");
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("member"), b"etcd").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kardia"))
        .args(["--listen-client-urls", "http://127.0.0.1:1"])
        .arg("--data-dir")
        .arg(foreign.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a kardia data dir"), "{err}");
}

#[test]
fn unknown_flags_and_bad_values_exit_2_naming_the_flag() {
    for (args, needle) in [
        (&["--bogus"][..], "--bogus"),
        (&["--election-timeout", "soon"][..], "election-timeout"),
        (&["-addr", "nohostport"][..], "addr"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kardia"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Online backup and restore (issue #15, point 5): `POST
/// /kardia/backup?dir=...` under write load (one shard, then two) writes a data dir
/// at one cut; `kardia check` passes on it; a member started on it (with
/// `--force-new-cluster`, as after `etcdctl backup`) holds exactly the
/// acknowledged writes up to the backup's index — with their values and
/// indexes, none after it — and takes new writes above it.
#[test]
fn an_online_backup_restores_every_write_up_to_its_index() {
    backup_and_restore("1");
    backup_and_restore("2");
}

fn backup_and_restore(shards: &str) {
    let server = Server::start_with(&["--shards", shards]).expect("start kardia");
    let port = server.client_port;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = Rng(0xBAC0 + w);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let key = format!("/hm/v4/apps/actual/app{}/i{}", rng.below(40), rng.below(3));
                    let value = format!("w{w}n{n}");
                    let r = request(
                        port,
                        "PUT",
                        &format!("/v2/keys{key}"),
                        Some(&format!("value={value}")),
                        &[],
                    )
                    .unwrap();
                    assert!(r.code() < 300, "{key}: {}", r.body_str());
                    let i = json_u64(&r.body_str(), "modifiedIndex").unwrap();
                    acked.lock().unwrap().push((key, value, i));
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(400));
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("backup");
    let target = format!("/kardia/backup?dir={}", dir.display());
    let r = request(port, "POST", &target, None, &[]).unwrap();
    assert_eq!(r.code(), 201, "{}", r.body_str());
    let index = json_u64(&r.body_str(), "index").expect("the backup's index");
    // The same directory again: refused, nothing overwritten.
    let again = request(port, "POST", &target, None, &[]).unwrap();
    assert_eq!(again.code(), 500, "{}", again.body_str());
    assert!(again.body_str().contains("exists"), "{}", again.body_str());
    let relative = request(port, "POST", "/kardia/backup?dir=backup", None, &[]).unwrap();
    assert_eq!(relative.code(), 400);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let mut log = acked.lock().unwrap().clone();
    log.sort_by_key(|e| e.2);
    assert!(log.iter().any(|e| e.2 > index), "no write after the backup");
    let mut want = std::collections::BTreeMap::new();
    for (k, v, i) in log.iter().filter(|e| e.2 <= index) {
        want.insert(k.clone(), (v.clone(), *i));
    }
    assert!(
        want.len() > 20,
        "too few writes before the backup: {}",
        want.len()
    );

    common::assert_sound(&dir);
    drop(server);

    let restored = Server::start_from(&dir, &["--force-new-cluster"]).expect("start on the backup");
    let port = restored.client_port;
    let r = request(
        port,
        "GET",
        "/v2/keys/hm/v4/apps/actual?recursive=true",
        None,
        &[],
    )
    .unwrap();
    assert_eq!(r.code(), 200);
    assert_eq!(r.header("X-Etcd-Index"), Some(index.to_string().as_str()));
    let body = r.body_str();
    let mut got = std::collections::BTreeMap::new();
    for k in want.keys().chain(log.iter().map(|e| &e.0)) {
        let r = request(port, "GET", &format!("/v2/keys{k}"), None, &[]).unwrap();
        if r.code() == 200 {
            let b = r.body_str();
            let v = b
                .split("\"value\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap()
                .to_string();
            got.insert(k.clone(), (v, json_u64(&b, "modifiedIndex").unwrap()));
        }
    }
    assert_eq!(
        got, want,
        "the restored member differs from the writes up to {index}"
    );
    assert!(body.contains("\"nodes\""));
    let r = request(port, "PUT", "/v2/keys/after", Some("value=x"), &[]).unwrap();
    assert_eq!(json_u64(&r.body_str(), "modifiedIndex"), Some(index + 1));
}
