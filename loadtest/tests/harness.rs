//! End-to-end checks of the `kardia-loadtest` binary.
//!
//! Every workload runs briefly against the built-in null server and the JSON
//! report's counts are checked (requests = ok + errors, per-class totals, open-loop
//! rate, watch deliveries, HM9000 flushes). A server that answers 500 must make
//! the run fail loudly. When a kardia binary exists under `target/*/kardia`, every
//! workload also runs against it; otherwise that test prints a note and passes.
//! All traffic stays on 127.0.0.1 and every run is bounded to a few seconds.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Runs are serialised: the machine is small and the rate checks need a core.
static SERIAL: Mutex<()> = Mutex::new(());

fn harness(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kardia-loadtest"))
        .args(args)
        .args(["--json", "--no-report", "--quiet"])
        .output()
        .expect("run kardia-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn summary(json: &Value) -> &Value {
    &json["runs"][0]["summary"]
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn class<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["classes"].as_array()?.iter().find(|c| c["name"] == name)
}

/// requests = ok + errors, and the per-class counts add up to the totals.
fn consistent(s: &Value) {
    assert_eq!(u(&s["requests"]), u(&s["ok"]) + u(&s["errors"]), "{s}");
    let classes = s["classes"].as_array().unwrap();
    let ok: u64 = classes.iter().map(|c| u(&c["ok"])).sum();
    assert_eq!(ok, u(&s["ok"]));
    let per_second: u64 = s["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| u(&p["ok"]))
        .sum();
    assert!(per_second <= u(&s["ok"]));
}

#[test]
fn every_workload_against_the_null_server() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for w in ["put", "get", "mixed", "recursive-get"] {
        let (code, json, err) = harness(&[w, "--null-server", "-d", "1s", "-c", "8"]);
        assert_eq!(code, 0, "{w}: {err}");
        let s = summary(&json);
        consistent(s);
        assert_eq!(u(&s["errors"]), 0, "{w}");
        assert!(u(&s["ok"]) > 500, "{w}: only {} requests", s["ok"]);
        assert_eq!(json["runs"][0]["label"], "null");
    }
    // put: every request is a PUT; mixed: both kinds, ~90 % GETs.
    let (_, json, _) = harness(&[
        "mixed",
        "--null-server",
        "-d",
        "1s",
        "-c",
        "8",
        "--read-ratio",
        "0.9",
    ]);
    let s = summary(&json);
    let gets = u(&class(s, "GET").unwrap()["ok"]) as f64;
    let puts = u(&class(s, "PUT").unwrap()["ok"]) as f64;
    assert!((gets / (gets + puts) - 0.9).abs() < 0.05, "{gets} {puts}");
}

#[test]
fn open_loop_holds_its_rate_and_pipelining_works() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (code, json, err) = harness(&[
        "get",
        "--null-server",
        "-d",
        "2s",
        "-c",
        "4",
        "--rate",
        "1000",
    ]);
    assert_eq!(code, 0, "{err}");
    let s = summary(&json);
    consistent(s);
    let ok = u(&s["ok"]);
    assert!(
        (1800..=2100).contains(&ok),
        "open loop at 1000/s for 2 s sent {ok}"
    );
    let (code, json, err) = harness(&[
        "put",
        "--null-server",
        "-d",
        "1s",
        "-c",
        "2",
        "--pipeline",
        "16",
        "--keys",
        "100",
    ]);
    assert_eq!(code, 0, "{err}");
    consistent(summary(&json));
    assert!(u(&summary(&json)["ok"]) > 1000);
}

#[test]
fn hm9000_and_watch_against_the_null_server() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (code, json, err) = harness(&["hm9000", "--null-server", "-d", "3s", "--preset", "small"]);
    assert_eq!(code, 0, "{err}");
    let s = summary(&json);
    consistent(s);
    let f = &json["runs"][0]["freshness"];
    // Syncs at t = 1 s and 2 s (the one at 3 s is past the deadline); 20 DEAs
    // over 10 s phases means a second can be empty.
    assert!((1..=2).contains(&u(&f["flushes"])), "{f}");
    assert_eq!(f["instances"], 1000);
    assert_eq!(f["all_fresh"], true);
    let presence = u(&class(s, "presence PUT").unwrap()["ok"]);
    assert!((1..=20).contains(&presence), "{presence}");
    assert!(
        json["runs"][0]["model"]["expected_writes_per_s"]
            .as_f64()
            .unwrap()
            > 5.0
    );

    let (code, json, err) = harness(&[
        "watch",
        "--null-server",
        "-d",
        "1s",
        "--watchers",
        "5",
        "--rate",
        "50",
    ]);
    assert_eq!(code, 0, "{err}");
    let s = summary(&json);
    consistent(s);
    let w = &json["runs"][0]["watch"];
    assert!((45..=51).contains(&u(&w["writes"])), "{w}");
    assert_eq!(u(&class(s, "PUT").unwrap()["ok"]), u(&w["writes"]));
    assert_eq!(w["events_missed"], 0);
}

/// Answers every request with a 500 and an etcd-like error body.
fn failing_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let body = r#"{"errorCode":300,"message":"Raft Internal Error"}"#;
                let resp = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(resp.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn errors_are_counted_and_fail_the_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = failing_server();
    let url = format!("http://127.0.0.1:{port}");
    let (code, json, _) = harness(&[
        "put", "--target", &url, "-d", "1s", "-c", "1", "--keys", "10",
    ]);
    assert_eq!(code, 1);
    let s = summary(&json);
    consistent(s);
    assert!(u(&s["errors"]) > 10);
    assert_eq!(u(&s["ok"]), 0);
    assert_eq!(s["error_kinds"][0][0], "etcd errorCode 300");
    // The text table says so plainly.
    let out = Command::new(env!("CARGO_BIN_EXE_kardia-loadtest"))
        .args([
            "get",
            "--target",
            &url,
            "-d",
            "1s",
            "-c",
            "1",
            "--no-report",
            "--quiet",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("ERRORS") && text.contains("RESULT: requests FAILED"),
        "{text}"
    );
}

fn kardia_binary() -> Option<PathBuf> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_kardia-loadtest"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            exe.ancestors()
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(PathBuf::from)
        })?;
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("kardia"))
        .find(|p| p.is_file())
}

#[test]
fn every_workload_against_kardia_if_built() {
    let Some(bin) = kardia_binary() else {
        println!("note: no target/*/kardia binary; skipping the runs against kardia");
        return;
    };
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = bin.to_string_lossy().to_string();
    let runs: [&[&str]; 6] = [
        &["put", "-d", "1s", "-c", "8", "--ttl", "30"],
        &["get", "-d", "1s", "-c", "8"],
        &["mixed", "-d", "1s", "-c", "8", "--keys", "100"],
        &["recursive-get", "-d", "1s", "-c", "2", "--keys", "200"],
        &["watch", "-d", "1s", "--watchers", "5", "--rate", "20"],
        &["hm9000", "-d", "2s", "--preset", "small"],
    ];
    for args in runs {
        let mut all = args.to_vec();
        all.extend(["--server", "kardia", "--kardia-bin", &bin, "--no-build"]);
        let (code, json, err) = harness(&all);
        let run = &json["runs"][0];
        if let Some(f) = run["failure"].as_str() {
            panic!("{args:?}: kardia did not start: {f}\n{err}");
        }
        let s = summary(&json);
        consistent(s);
        println!(
            "kardia {}: ok {} errors {} {:?} (exit {code})",
            args[0], s["ok"], s["errors"], s["error_kinds"]
        );
        assert!(u(&s["ok"]) > 0, "{args:?}: nothing succeeded: {s}");
        assert_eq!(
            code == 0,
            u(&s["errors"]) == 0 && u(&run["prefill_failures"]) == 0
        );
    }
}
