//! Real etcd v2 clients against the real binary: `etcdctl` with
//! `ETCDCTL_API=2` (Debian's etcd-client) and python-etcd. `.ci/run`
//! installs both; locally the test is skipped, saying so, when one is
//! missing (in CI, `CI=true`, a missing client is a failure).

mod common;

use std::process::Command;

use common::{etcdctl, have, missing, Server};

#[test]
fn etcdctl_v2_sets_gets_watches_and_lists_members() {
    if !have("etcdctl", &["--version"]) && missing("etcdctl (Debian etcd-client)") {
        return;
    }
    let s = Server::start().unwrap();
    let ep = format!("http://127.0.0.1:{}", s.client_port);
    let ctl = |args: &[&str]| etcdctl(&ep, args);
    assert_eq!(ctl(&["set", "/foo", "bar"]).1, "bar\n");
    assert_eq!(ctl(&["get", "/foo"]).1, "bar\n");
    assert_eq!(ctl(&["update", "/foo", "baz"]).1, "baz\n");
    assert_eq!(ctl(&["mkdir", "/dir"]).0, 0);
    assert_eq!(ctl(&["set", "--ttl", "30", "/dir/a", "1"]).1, "1\n");
    assert_eq!(
        ctl(&["ls", "--recursive", "--sort", "/"]).1,
        "/dir\n/dir/a\n/foo\n"
    );
    let (code, _, err) = ctl(&["rmdir", "/dir"]);
    assert_ne!(code, 0);
    assert!(err.contains("108: Directory not empty (/dir)"), "{err}");
    assert_eq!(ctl(&["rm", "--recursive", "/dir"]).0, 0);
    let (code, _, err) = ctl(&["get", "/dir/a"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("100: Key not found (/dir)"), "{err}");
    // A watch sees a later set.
    let watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .args(["--endpoints", &ep, "watch", "/w"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(ctl(&["set", "/w", "hello"]).0, 0);
    let out = watch.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let (_, members, _) = ctl(&["member", "list"]);
    assert!(
        members.contains(&format!("clientURLs={ep} isLeader=true")),
        "{members}"
    );
    let (code, health, _) = ctl(&["cluster-health"]);
    assert_eq!(code, 0);
    assert!(health.contains("cluster is healthy"), "{health}");
}

#[test]
fn python_etcd_client_works() {
    if !have("python3", &["-c", "import etcd"]) && missing("python-etcd (pip)") {
        return;
    }
    let s = Server::start().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python_etcd_smoke.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(s.client_port.to_string())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim() == "OK",
        "python-etcd failed:\n{stdout}\n{stderr}"
    );
}
