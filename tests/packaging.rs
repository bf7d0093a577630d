//! The Debian package and the systemd integration (issue #15, point 4).
//!
//! `cargo deb` packages the binary this test suite built; the package must
//! hold the binary, the unit, `/etc/default/kardia` (a conffile) and the
//! docs, and its postinst must make the `kardia` user and `/var/lib/kardia`.
//! The packaged binary, started with exactly the packaged environment file
//! (only the data dir moved to a temporary one) in a network namespace of
//! its own (so the default ports are its own), tells systemd it is ready
//! through `NOTIFY_SOCKET` once it serves, and answers on etcd's default
//! client port.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::missing;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have_cargo_deb() -> bool {
    Command::new("cargo")
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_debian_package_installs_a_ready_member() {
    if !have_cargo_deb() && missing("cargo-deb") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let deb = tmp.path().join("kardia.deb");
    // The binary `cargo test` built (target/debug), no second build.
    run(Command::new("cargo")
        .args(["deb", "--no-build", "--profile", "dev", "--quiet", "-o"])
        .arg(&deb)
        .current_dir(env!("CARGO_MANIFEST_DIR")));

    let files = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/bin/kardia",
        "./usr/lib/systemd/system/kardia.service",
        "./etc/default/kardia",
        "./usr/share/doc/kardia/operations.md",
    ] {
        assert!(files.contains(f), "{f} missing from the package:\n{files}");
    }
    let x = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
    let ctl = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/default/kardia");
    let postinst = std::fs::read_to_string(ctl.join("postinst")).unwrap();
    for needle in [
        "useradd --system",
        "/var/lib/kardia",
        "chown kardia:kardia",
        "deb-systemd-helper",
    ] {
        assert!(
            postinst.contains(needle),
            "postinst lacks {needle}:\n{postinst}"
        );
    }
    let unit = std::fs::read_to_string(x.join("usr/lib/systemd/system/kardia.service")).unwrap();
    for line in [
        "Type=notify",
        "User=kardia",
        "EnvironmentFile=-/etc/default/kardia",
        "ExecStart=/usr/bin/kardia",
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "LimitMEMLOCK=infinity",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit lacks {line}:\n{unit}"
        );
    }

    // The packaged environment, as systemd's EnvironmentFile reads it.
    let defaults = std::fs::read_to_string(x.join("etc/default/kardia")).unwrap();
    let mut env: Vec<(String, String)> = defaults
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect();
    assert!(env
        .iter()
        .any(|(k, v)| k == "ETCD_DATA_DIR" && v == "/var/lib/kardia"));
    let data = tmp.path().join("var-lib-kardia");
    for (k, v) in env.iter_mut() {
        if k == "ETCD_DATA_DIR" {
            *v = data.display().to_string();
        }
    }
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let bin = x.join("usr/bin/kardia");
    let script = format!("ip link set lo up && exec {}", bin.display());
    let mut child = match Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("unshare: {e}"),
    };
    let mut buf = [0u8; 256];
    let got = notify.recv(&mut buf);
    let ready = got
        .as_ref()
        .map(|&n| String::from_utf8_lossy(&buf[..n]).into_owned());
    let health = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", child.id()))
        .args(["curl", "-s", "http://127.0.0.1:2379/health"])
        .output();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let not_root = log.contains("unshare failed") || log.contains("Operation not permitted");
    if not_root && missing("root (unshare --net)") {
        return;
    }
    assert_eq!(
        ready.as_deref().ok().map(str::trim),
        Some("READY=1"),
        "no readiness notification:\n{log}"
    );
    let health = health.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&health.stdout),
        "{\"health\":\"true\"}",
        "{log}"
    );
    assert!(
        Path::new(&data).join("kardia.id").is_file(),
        "the data dir was not made"
    );
}
