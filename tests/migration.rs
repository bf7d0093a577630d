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
