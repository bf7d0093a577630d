//! v2 auth beyond the golden scenarios (tests/golden/auth_*.txt): etcdctl's
//! user, role and auth commands give the same transcript against kardia as
//! against etcd 3.4.23; auth records survive SIGKILL and are enforced after
//! the restart (1 and 2 shards); a changed password or a deleted user takes
//! effect at once although credentials are cached, and a password is
//! checked with bcrypt once, not per request; a 3-member cluster enforces
//! what one member was told, also after a member restarts.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{etcdctl, have, missing, request, RefEtcd, Response, Server};

const ROOT: &str = "Basic cm9vdDpyb290cHc="; // root:rootpw
const HM: &str = "Basic aG06aG1wdw=="; // hm:hmpw
const HM_NEW: &str = "Basic aG06aG1wdzI="; // hm:hmpw2

fn call(port: u16, method: &str, target: &str, body: Option<&str>, auth: Option<&str>) -> Response {
    let mut extra = Vec::new();
    if let Some(a) = auth {
        extra.push(("Authorization".to_string(), a.to_string()));
    }
    request(port, method, target, body, &extra).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// An auth API change with a JSON body.
fn json(port: u16, method: &str, target: &str, body: &str, auth: Option<&str>) -> Response {
    let mut extra = vec![("Content-Type".to_string(), "application/json".to_string())];
    if let Some(a) = auth {
        extra.push(("Authorization".to_string(), a.to_string()));
    }
    request(port, method, target, Some(body), &extra)
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

fn expect(r: &Response, code: u16, what: &str) {
    assert_eq!(r.code(), code, "{what}: {}", r.body_str());
}

/// Root, a role `hm` with read/write on `/apps/*`, a user `hm` holding it,
/// auth on, and the guest role left with nothing.
fn set_up_auth(port: u16) {
    let r = json(
        port,
        "PUT",
        "/v2/auth/users/root",
        r#"{"user":"root","password":"rootpw"}"#,
        None,
    );
    expect(&r, 201, "create root");
    let role = r#"{"role":"hm","permissions":{"kv":{"read":["/apps/*"],"write":["/apps/*"]}}}"#;
    expect(
        &json(port, "PUT", "/v2/auth/roles/hm", role, None),
        201,
        "create role",
    );
    let user = r#"{"user":"hm","password":"hmpw","roles":["hm"]}"#;
    expect(
        &json(port, "PUT", "/v2/auth/users/hm", user, None),
        200,
        "create user",
    );
    expect(
        &call(port, "PUT", "/v2/auth/enable", None, Some(ROOT)),
        200,
        "enable",
    );
    let revoke = r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#;
    expect(
        &json(port, "PUT", "/v2/auth/roles/guest", revoke, Some(ROOT)),
        200,
        "revoke guest",
    );
}

/// What auth must enforce once set up by [`set_up_auth`].
fn check_enforced(port: u16, what: &str) {
    let r = call(port, "GET", "/v2/auth/enable", None, None);
    assert_eq!(r.body_str(), "{\"enabled\":true}\n", "{what}");
    expect(
        &call(port, "PUT", "/v2/keys/apps/a", Some("value=guest"), None),
        401,
        what,
    );
    expect(&call(port, "GET", "/v2/keys/apps/a", None, None), 401, what);
    expect(
        &call(port, "PUT", "/v2/keys/other", Some("value=hm"), Some(HM)),
        401,
        what,
    );
    expect(
        &call(port, "GET", "/v2/auth/users", None, Some(HM)),
        401,
        what,
    );
    expect(
        &call(port, "PUT", "/v2/keys/apps/a", Some("value=hm"), Some(HM)),
        200,
        what,
    );
    let r = call(port, "GET", "/v2/keys/apps/a", None, Some(HM));
    expect(&r, 200, what);
    assert!(
        r.body_str().contains("\"value\":\"hm\""),
        "{what}: {}",
        r.body_str()
    );
    let r = call(
        port,
        "PUT",
        "/v2/keys/other",
        Some("value=root"),
        Some(ROOT),
    );
    assert!(
        matches!(r.code(), 200 | 201),
        "{what}: root write: {}",
        r.body_str()
    );
}

fn index_of(r: &Response) -> u64 {
    r.header("X-Etcd-Index")
        .and_then(|v| v.parse().ok())
        .expect("X-Etcd-Index")
}

fn password_checks(port: u16) -> f64 {
    let r = call(port, "GET", "/metrics", None, None);
    r.body_str()
        .lines()
        .filter(|l| l.starts_with("kardia_auth_password_checks_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn auth_survives_sigkill_and_is_enforced_after_restart() {
    for shards in ["1", "2"] {
        let mut s = Server::start_with(&["--shards", shards]).expect("start kardia");
        let p = s.client_port;
        set_up_auth(p);
        expect(
            &call(p, "PUT", "/v2/keys/apps/a", Some("value=first"), Some(HM)),
            201,
            "first write",
        );
        expect(
            &call(p, "PUT", "/v2/keys/other", Some("value=x"), Some(ROOT)),
            201,
            "root write",
        );
        check_enforced(p, &format!("{shards} shard(s), before the kill"));
        let before = index_of(&call(p, "GET", "/v2/keys/apps/a", None, Some(ROOT)));

        s.kill();
        s.restart().expect("restart");
        let p = s.client_port;
        let r = call(p, "GET", "/v2/keys/apps/a", None, Some(ROOT));
        assert_eq!(
            index_of(&r),
            before,
            "{shards} shard(s): the index after the restart"
        );
        check_enforced(p, &format!("{shards} shard(s), after SIGKILL and restart"));

        // A new password replaces the old one at once (cached credentials
        // hold only while the stored hash is the one they were checked
        // against).
        let r = json(
            p,
            "PUT",
            "/v2/auth/users/hm",
            r#"{"user":"hm","password":"hmpw2"}"#,
            Some(ROOT),
        );
        expect(&r, 200, "change password");
        expect(
            &call(p, "GET", "/v2/keys/apps/a", None, Some(HM)),
            401,
            "old password",
        );
        expect(
            &call(p, "GET", "/v2/keys/apps/a", None, Some(HM_NEW)),
            200,
            "new password",
        );
        expect(
            &call(p, "DELETE", "/v2/auth/users/hm", None, Some(ROOT)),
            200,
            "delete user",
        );
        expect(
            &call(p, "GET", "/v2/keys/apps/a", None, Some(HM_NEW)),
            401,
            "deleted user",
        );
        // Disabling lets guests back in.
        expect(
            &call(p, "DELETE", "/v2/auth/enable", None, Some(ROOT)),
            200,
            "disable",
        );
        expect(
            &call(p, "PUT", "/v2/keys/apps/a", Some("value=g"), None),
            200,
            "auth off",
        );
    }
}

#[test]
fn a_password_is_checked_once_per_credential_not_per_request() {
    let s = Server::start().expect("start kardia");
    let p = s.client_port;
    set_up_auth(p);
    expect(
        &call(p, "PUT", "/v2/keys/apps/a", Some("value=0"), Some(ROOT)),
        201,
        "root write",
    );
    let start = password_checks(p);
    // 16 connections open at once with hm's (unchecked) password: one
    // bcrypt, the others wait for its verdict; then 50 more requests.
    let threads: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| call(p, "GET", "/v2/keys/apps/a", None, Some(HM)).code())
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().iter().all(|&c| c == 200), "hm reads");
    }
    for i in 0..50 {
        let v = format!("value={i}");
        expect(
            &call(p, "PUT", "/v2/keys/apps/a", Some(&v), Some(HM)),
            200,
            "hm write",
        );
    }
    // Wrong passwords are remembered as wrong.
    for _ in 0..20 {
        let wrong = "Basic aG06bm9wZQ=="; // hm:nope
        expect(
            &call(p, "GET", "/v2/keys/apps/a", None, Some(wrong)),
            401,
            "wrong password",
        );
    }
    let checks = password_checks(p) - start;
    // One executor: hm's password once, the wrong one once (root's was
    // checked during the set-up, before `start`).
    assert_eq!(checks, 2.0, "bcrypt comparisons for 150 requests");
}

/// etcdctl's v2 auth commands, with their output and exit codes.
fn etcdctl_transcript(endpoint: &str) -> String {
    let steps: &[&[&str]] = &[
        &["user", "add", "root:rootpw"],
        &["role", "add", "hm"],
        &["role", "grant", "hm", "--path", "/hm/*", "--rw"],
        &["user", "add", "hm:hmpw"],
        &["user", "grant", "hm", "--roles", "hm"],
        &["auth", "enable"],
        &[
            "-u",
            "root:rootpw",
            "role",
            "revoke",
            "guest",
            "--path",
            "/*",
            "--rw",
        ],
        &["-u", "hm:hmpw", "set", "/hm/x", "1"],
        &["set", "/hm/x", "2"],
        &["-u", "hm:wrong", "get", "/hm/x"],
        &["-u", "hm:hmpw", "get", "/hm/x"],
        &["-u", "hm:hmpw", "set", "/elsewhere", "1"],
        &["-u", "root:rootpw", "user", "list"],
        &["-u", "root:rootpw", "role", "list"],
        &["-u", "root:rootpw", "role", "get", "hm"],
        &["-u", "root:rootpw", "user", "get", "hm"],
        &["-u", "root:rootpw", "user", "revoke", "hm", "--roles", "hm"],
        &["-u", "hm:hmpw", "get", "/hm/x"],
        &["-u", "root:rootpw", "role", "remove", "hm"],
        &["-u", "root:rootpw", "user", "remove", "hm"],
        &["-u", "root:rootpw", "auth", "disable"],
        &["set", "/hm/x", "3"],
    ];
    let mut t = String::new();
    for args in steps {
        let (code, out, err) = etcdctl(endpoint, args);
        t.push_str(&format!(
            "$ etcdctl {}\n{out}{err}exit {code}\n",
            args.join(" ")
        ));
    }
    t
}

#[test]
fn etcdctl_manages_users_roles_and_auth_as_with_etcd() {
    if !have("etcdctl", &["--version"]) && missing("etcdctl") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let etcd_port = common::free_port().unwrap();
    let etcd = RefEtcd::start(home.path(), etcd_port).expect("start etcd 3.4.23 (ref-etcd)");
    let want = etcdctl_transcript(&format!("http://127.0.0.1:{}", etcd.client_port));
    drop(etcd);
    let s = Server::start().expect("start kardia");
    let got = etcdctl_transcript(&format!("http://127.0.0.1:{}", s.client_port));
    assert_eq!(
        got, want,
        "kardia's transcript (left) differs from etcd's (right)"
    );
    assert!(want.contains("Insufficient credentials"), "{want}");
}

#[test]
fn a_cluster_enforces_auth_on_every_member() {
    let _serial = common::cluster::serial();
    let mut c = Cluster::start_static(3, &[]);
    c.wait_leader_agreed(Duration::from_secs(10));
    set_up_auth(c.port(0));
    // Every member applies the change; each enforces it once it has.
    for i in 1..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = call(c.port(i), "GET", "/v2/auth/enable", None, None);
            if r.body_str() == "{\"enabled\":true}\n" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} never saw auth enabled"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The guest revocation came after the enable: wait for it too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while call(c.port(i), "GET", "/v2/keys/apps/a", None, None).code() != 401 {
            assert!(
                Instant::now() < deadline,
                "member {i} still lets guests read"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    expect(
        &call(
            c.port(1),
            "PUT",
            "/v2/keys/apps/a",
            Some("value=hm"),
            Some(HM),
        ),
        201,
        "hm write via n2",
    );
    for i in 0..3 {
        check_enforced(c.port(i), &format!("member {i}"));
    }
    c.kill(2);
    c.restart(2);
    c.members[2]
        .wait_healthy(Duration::from_secs(20))
        .expect("n3 healthy again");
    check_enforced(c.port(2), "n3 after SIGKILL and restart");
    // Member changes need root.
    let r = json(
        c.port(0),
        "POST",
        "/v2/members",
        r#"{"peerURLs":["http://127.0.0.1:1"]}"#,
        None,
    );
    expect(&r, 401, "add a member without credentials");
}

/// Only root may take a backup (it holds the auth records); `kardia
/// reshard` carries the records to the new shard 0, and `kardia check`
/// passes on a data dir that holds them.
#[test]
fn auth_records_move_with_a_reshard() {
    let mut s = Server::start().expect("start kardia");
    set_up_auth(s.client_port);
    expect(
        &call(
            s.client_port,
            "PUT",
            "/v2/keys/apps/a",
            Some("value=1"),
            Some(HM),
        ),
        201,
        "hm write",
    );
    // A backup copies the auth records too: root only.
    let dir = tempfile::tempdir().unwrap();
    let target = format!("/kardia/backup?dir={}", dir.path().join("b").display());
    expect(
        &call(s.client_port, "POST", &target, None, None),
        401,
        "backup as a guest",
    );
    expect(
        &call(s.client_port, "POST", &target, None, Some(HM)),
        401,
        "backup as hm",
    );
    expect(
        &call(s.client_port, "POST", &target, None, Some(ROOT)),
        201,
        "backup as root",
    );
    s.kill();
    let tool = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kardia"))
            .args(args)
            .arg(s.data_dir())
            .output()
            .expect("run kardia");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kardia {args:?}: {text}");
    };
    tool(&["reshard", "--shards", "2", "--data-dir"]);
    tool(&["check"]);
    s.set_args(&["--shards", "2"]);
    s.restart().expect("start the resharded member");
    check_enforced(s.client_port, "after the reshard to 2 shards");
}
