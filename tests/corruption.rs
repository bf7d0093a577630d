//! Damaged data files: flipped bytes in a shard's `data.mdb` are never
//! served as values. Every stored record carries a checksum of its key and
//! contents, checked on read; a mismatch stops the shard with a clear error
//! (reads and writes then get etcd's 300 error, `/health` 503), and
//! `kardia check DATA_DIR` finds the damage offline.

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::process::Command;

use common::{request, Server};

const KEYS: usize = 3000;
const DAMAGED: usize = 23;

fn value(i: usize) -> String {
    format!("value-{i:05}-{}", "x".repeat(24))
}

fn check(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kardia"))
        .arg("check")
        .arg(dir)
        .output()
        .expect("run kardia check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The first position of `needle` in `hay`.
fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = hay[from..].iter().position(|&b| b == needle[0]) {
        let at = from + p;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[test]
fn flipped_bytes_in_the_store_are_never_served() {
    let mut s = Server::start_with(&["--shards", "1"]).expect("start kardia");
    let port = s.client_port;
    let writers: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t..KEYS).step_by(8) {
                    let key = format!("/v2/keys/d{}/k{i}", i % 10);
                    let form = format!("value={}", value(i));
                    let r = request(port, "PUT", &key, Some(&form), &[]).unwrap();
                    assert_eq!(r.code(), 201, "{}", r.body_str());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    s.kill();
    let (code, out) = check(&s.data_dir());
    assert_eq!(code, 0, "a sound data dir was reported damaged:\n{out}");
    assert!(
        out.contains("3000 files") && out.contains("result: sound"),
        "{out}"
    );

    // Flip one byte inside every copy of 23 values (LMDB keeps old page
    // versions too; the live one is among them).
    // The file is as large as the map (sparse); the pages in use come first.
    let mdb = s.data_dir().join("shard-0/lmdb/data.mdb");
    let mut data = Vec::new();
    std::fs::File::open(&mdb)
        .unwrap()
        .take(64 << 20)
        .read_to_end(&mut data)
        .unwrap();
    // Every copy of every value: its index, at each offset.
    let damaged: Vec<usize> = (0..DAMAGED).map(|n| n * (KEYS / DAMAGED)).collect();
    let mut hit = 0;
    let mut at = 0;
    while let Some(p) = memfind(&data[at..], b"value-") {
        let start = at + p;
        at = start + 6;
        let digits = data.get(start + 6..start + 11).unwrap_or_default();
        let Some(i) = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
        else {
            continue;
        };
        if damaged.contains(&i) && data[start..].starts_with(value(i).as_bytes()) {
            data[start + 8] ^= 0x01;
            hit += 1;
        }
    }
    assert!(hit >= DAMAGED, "found only {hit} value copies to damage");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mdb)
        .unwrap()
        .write_all_at(&data, 0)
        .unwrap();

    let (code, out) = check(&s.data_dir());
    assert_eq!(code, 1, "damage not found:\n{out}");
    assert!(
        out.contains("checksum mismatch") && out.contains("DAMAGED"),
        "{out}"
    );

    s.restart().expect("restart on the damaged data dir");
    let (mut served, mut refused) = (0, 0);
    for i in 0..KEYS {
        let r = request(
            port,
            "GET",
            &format!("/v2/keys/d{}/k{i}", i % 10),
            None,
            &[],
        )
        .unwrap();
        match r.code() {
            200 => {
                let want = format!("\"value\":\"{}\"", value(i));
                assert!(
                    r.body_str().contains(&want),
                    "key {i} served a wrong value: {}",
                    r.body_str()
                );
                served += 1;
            }
            500 => {
                assert!(
                    r.body_str().contains("\"errorCode\":300"),
                    "{}",
                    r.body_str()
                );
                refused += 1;
            }
            c => panic!("key {i}: unexpected {c}: {}", r.body_str()),
        }
    }
    assert!(
        refused > 0,
        "no damaged record was detected ({served} served)"
    );
    let h = request(port, "GET", "/health", None, &[]).unwrap();
    assert_eq!(
        h.code(),
        503,
        "a shard that read a damaged record still reports healthy"
    );
    assert!(
        s.log_tail(50).contains("fails its checksum"),
        "no log line names the damage:\n{}",
        s.log_tail(20)
    );
}
