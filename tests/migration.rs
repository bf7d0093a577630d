//! Moving off etcd (issue #17): `kardia mirror` against a real etcd 3.4.23
//! (`../shared/tools/ref-etcd`). A keyspace with every node kind — files,
//! directories, TTLs on both, in-order keys — is copied while writes keep
//! coming (updates, recursive deletes, new directories, new TTLs); the
//! mirror follows the source's watch until it goes idle, and then
//! `kardia mirror --verify` and direct reads find the same keyspace in
//! kardia (values, directories, TTLs within a second or two). Hidden keys
//! are not copied (etcd lists and watches them only by name).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{request, RefEtcd, Server};

fn ok(port: u16, method: &str, target: &str, form: Option<&str>) {
    let r = request(port, method, target, form, &[]).unwrap();
    assert!(
        r.code() < 300,
        "{method} {target}: {} {}",
        r.code(),
        r.body_str()
    );
}

fn mirror(from: u16, to: u16, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kardia"));
    c.args(["mirror", "--from", &format!("http://127.0.0.1:{from}")])
        .args(["--to", &format!("http://127.0.0.1:{to}")])
        .args(extra);
    c
}

#[test]
fn a_live_etcd_keyspace_is_mirrored_through_cut_over() {
    let home = tempfile::tempdir().unwrap();
    let etcd_port = common::free_port().unwrap();
    let etcd = RefEtcd::start(home.path(), etcd_port).expect("start etcd 3.4.23 (ref-etcd)");
    let e = etcd.client_port;
    let kardia = Server::start().expect("start kardia");
    let k = kardia.client_port;

    for app in 0..20 {
        for i in 0..3 {
            let t = format!("/v2/keys/hm/v4/apps/actual/app{app},v1/i{i}");
            ok(
                e,
                "PUT",
                &t,
                Some(&format!("value={i},RUNNING,1.0,dea{app}")),
            );
        }
    }
    for d in 0..5 {
        ok(
            e,
            "PUT",
            &format!("/v2/keys/hm/v4/dea-presence/dea{d}"),
            Some("value=x&ttl=300"),
        );
    }
    ok(e, "PUT", "/v2/keys/hm/v4/lease?dir=true&ttl=300", None);
    ok(e, "POST", "/v2/keys/queue", Some("value=q1"));
    ok(e, "POST", "/v2/keys/queue", Some("value=q2"));
    ok(e, "PUT", "/v2/keys/hm/_hidden", Some("value=h"));
    ok(
        e,
        "PUT",
        "/v2/keys/spaces/a%20b",
        Some("value=with%20space%26amp"),
    );

    let mut child = mirror(e, k, &["--until-idle", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Writes while the mirror runs.
    std::thread::sleep(Duration::from_millis(800));
    for app in 0..5 {
        ok(
            e,
            "PUT",
            &format!("/v2/keys/hm/v4/apps/actual/app{app},v1/i0"),
            Some("value=0,CRASHED,2.0,x"),
        );
    }
    ok(
        e,
        "DELETE",
        "/v2/keys/hm/v4/apps/actual/app7,v1?recursive=true",
        None,
    );
    ok(e, "DELETE", "/v2/keys/hm/v4/dea-presence/dea4", None);
    ok(
        e,
        "PUT",
        "/v2/keys/hm/v4/apps/actual/app99,v1/i0",
        Some("value=new"),
    );
    ok(
        e,
        "PUT",
        "/v2/keys/hm/v4/start/app99",
        Some("value=s&ttl=200"),
    );
    ok(e, "POST", "/v2/keys/queue", Some("value=q3"));

    // The mirror drains and goes idle: the cut-over moment.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the mirror did not go idle");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{log}");
    assert!(log.contains("copied"), "{log}");

    let v = mirror(e, k, &["--verify"]).output().unwrap();
    let report = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(report.contains(" 0 difference(s)"), "{report}");

    let get = |t: &str| request(k, "GET", t, None, &[]).unwrap();
    assert_eq!(get("/v2/keys/hm/v4/apps/actual/app7,v1").code(), 404);
    assert!(get("/v2/keys/hm/v4/apps/actual/app2,v1/i0")
        .body_str()
        .contains("CRASHED"));
    // etcd's JSON escapes `&` as \u0026.
    let spaced = get("/v2/keys/spaces/a%20b").body_str();
    assert!(spaced.contains("with space\\u0026amp"), "{spaced}");
    let lease = get("/v2/keys/hm/v4/lease").body_str();
    assert!(
        lease.contains("\"dir\":true") && lease.contains("\"ttl\":29"),
        "{lease}"
    );
    let queue = get("/v2/keys/queue?sorted=true").body_str();
    assert_eq!(queue.matches("\"value\":\"q").count(), 3, "{queue}");
    assert_eq!(
        get("/v2/keys/hm/_hidden").code(),
        404,
        "hidden keys are not copied"
    );
    // A difference is reported, and fails the verification.
    ok(k, "PUT", "/v2/keys/only/in/kardia", Some("value=x"));
    let v = mirror(e, k, &["--verify"]).output().unwrap();
    let report = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{report}");
    assert!(
        report.contains("only in target: /only/in/kardia"),
        "{report}"
    );
    // The source was only read.
    assert_eq!(
        request(e, "GET", "/v2/keys/hm/_hidden", None, &[])
            .unwrap()
            .code(),
        200
    );
}

/// `kardia import` of the etcd data dir `data` into the kardia at `port`.
fn import(data: &std::path::Path, port: u16) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kardia"))
        .args(["import", "--etcd-data-dir"])
        .arg(data)
        .args(["--to", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap()
}

/// A recursive listing as key → (dir, value, ttl).
fn flatten(body: &str) -> std::collections::BTreeMap<String, (bool, String, u64)> {
    let j = common::json::Json::parse(body).unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![j.get("node").unwrap()];
    while let Some(n) = todo.pop() {
        if let Some(k) = n.get("key").and_then(|k| k.as_str()) {
            out.insert(
                k.to_string(),
                (
                    n.get("dir").and_then(|d| d.as_bool()).unwrap_or(false),
                    n.get("value")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string(),
                    n.get("ttl").and_then(|t| t.as_u64()).unwrap_or(0),
                ),
            );
        }
        if let Some(c) = n.get("nodes") {
            todo.extend(c.items());
        }
    }
    out
}

/// A stopped etcd 3.4.23 member's data dir — with a v2 snapshot and log
/// entries after it, and with a log only — is imported into a running
/// kardia: the same keys, values, directories, hidden keys, in-order keys
/// and TTLs (within 2 s); conditional writes, deletes and expiries that
/// happened in etcd count. A dir that is not etcd's is refused with a
/// message pointing at the live path.
#[test]
fn a_stopped_etcd_data_dir_is_imported() {
    if !common::have("etcd", &["--version"]) && common::missing("etcd") {
        return;
    }
    for snapshot_count in ["25", "100000"] {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("etcd");
        let (cp, pp) = (common::free_port().unwrap(), common::free_port().unwrap());
        let (c, p) = (
            format!("http://127.0.0.1:{cp}"),
            format!("http://127.0.0.1:{pp}"),
        );
        let mut etcd = Command::new("etcd")
            .args(["--enable-v2", "--snapshot-count", snapshot_count])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("default={p}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(request(cp, "GET", "/v2/keys/", None, &[]), Ok(r) if r.code() == 200) {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let e = cp;
        for i in 0..60 {
            ok(
                e,
                "PUT",
                &format!("/v2/keys/hm/apps/a{}", i % 7),
                Some(&format!("value=v{i}")),
            );
        }
        ok(e, "PUT", "/v2/keys/hm/ttl/x", Some("value=t&ttl=300"));
        ok(e, "PUT", "/v2/keys/hm/lease?dir=true&ttl=400", None);
        ok(
            e,
            "PUT",
            "/v2/keys/hm/lease?dir=true&ttl=500&prevExist=true",
            None,
        );
        for q in ["q1", "q2", "q3"] {
            ok(e, "POST", "/v2/keys/queue", Some(&format!("value={q}")));
        }
        ok(e, "PUT", "/v2/keys/_hidden", Some("value=h"));
        ok(e, "PUT", "/v2/keys/hm/apps/_h", Some("value=hh"));
        ok(
            e,
            "PUT",
            "/v2/keys/hm/apps/a1?prevValue=v57",
            Some("value=cas"),
        );
        let failed = request(
            e,
            "PUT",
            "/v2/keys/hm/apps/a3?prevValue=nope",
            Some("value=x"),
            &[],
        )
        .unwrap();
        assert_eq!(failed.code(), 412);
        ok(e, "DELETE", "/v2/keys/hm/apps/a2?prevValue=v58", None);
        ok(e, "PUT", "/v2/keys/gone/deep/k", Some("value=1"));
        ok(e, "DELETE", "/v2/keys/gone?recursive=true", None);
        ok(
            e,
            "PUT",
            "/v2/keys/sp%20ace/%C3%A9",
            Some("value=%C3%BC%26"),
        );
        ok(e, "PUT", "/v2/keys/hm/short", Some("value=s&ttl=1"));
        ok(
            e,
            "PUT",
            "/v2/keys/hm/ttl/x?refresh=true&prevExist=true&ttl=600",
            None,
        );
        std::thread::sleep(Duration::from_millis(2500));
        let want = flatten(
            &request(e, "GET", "/v2/keys/?recursive=true&sorted=true", None, &[])
                .unwrap()
                .body_str(),
        );
        assert!(!want.contains_key("/hm/short"), "etcd expired it");
        assert!(want.contains_key("/queue"), "{want:?}");
        unsafe { libc::kill(etcd.id() as i32, libc::SIGTERM) };
        etcd.wait().unwrap();
        if snapshot_count == "25" {
            let snaps = std::fs::read_dir(data.join("member/snap"))
                .unwrap()
                .filter(|f| {
                    f.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "snap")
                })
                .count();
            assert!(snaps > 0, "etcd wrote no snapshot");
        }

        let kardia = Server::start().expect("start kardia");
        let k = kardia.client_port;
        let out = import(&data, k);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "snapshot-count {snapshot_count}: {log}"
        );
        assert!(log.contains("each read back and equal"), "{log}");
        let got = flatten(
            &request(k, "GET", "/v2/keys/?recursive=true&sorted=true", None, &[])
                .unwrap()
                .body_str(),
        );
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "snapshot-count {snapshot_count}: keys\n{log}"
        );
        for (key, (dir, value, ttl)) in &want {
            let (gdir, gvalue, gttl) = &got[key];
            assert_eq!((gdir, gvalue), (dir, value), "{key}");
            assert!(
                gttl.abs_diff(*ttl) <= 2,
                "{key}: ttl {gttl} vs etcd's {ttl}"
            );
        }
        assert!(want["/hm/ttl/x"].2 > 500, "the refresh counted");
        for hidden in ["/v2/keys/_hidden", "/v2/keys/hm/apps/_h"] {
            let r = request(k, "GET", hidden, None, &[]).unwrap();
            assert_eq!(r.code(), 200, "{hidden} imported");
        }
        // The etcd data dir was only read.
        assert!(data.join("member/wal").is_dir());
        if snapshot_count == "100000" {
            // A damaged record in the middle of the log (records follow
            // it) fails the import instead of dropping what follows.
            let wal = std::fs::read_dir(data.join("member/wal"))
                .unwrap()
                .map(|f| f.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "wal"))
                .unwrap();
            let mut b = std::fs::read(&wal).unwrap();
            let at = b
                .windows(3)
                .position(|w| w == b"v30")
                .expect("a logged value");
            b[at] = b'w';
            std::fs::write(&wal, &b).unwrap();
            let out = import(&data, k);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(
                err.contains("failing its checksum") && err.contains("damaged"),
                "{err}"
            );
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kardia"))
        .args([
            "import",
            "--etcd-data-dir",
            "/nonexistent",
            "--to",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("kardia mirror"), "{err}");
}
