//! TLS on the client port (issue #15, point 1), with real clients: curl and
//! etcdctl over https against the real binary, certificates made by openssl
//! for the test (a CA, a server certificate for 127.0.0.1, a client
//! certificate, and a client certificate from another CA). Without
//! `--client-cert-auth` any client that trusts the CA is served; with it, a
//! client without a certificate, or with one from another CA, is refused in
//! the handshake. 0.4's `-cert-file/-key-file/-ca-file` do the same on
//! `-addr`. Peer TLS is refused with a message (not built yet).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl, free_port, have, missing};

struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn openssl(dir: &Path, args: &[String]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Words of a command line.
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// A CA and certificates signed by it (EC P-256, valid two days).
fn make_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    for ca in ["ca", "other-ca"] {
        let mut a = words(&format!(
            "req -x509 {key} -keyout {ca}.key -out {ca}.crt -days 2 -subj"
        ));
        a.push(format!("/CN=kardia test {ca}"));
        openssl(d, &a);
    }
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("stranger", "other-ca", "client.ext"),
    ] {
        openssl(
            d,
            &words(&format!(
                "req {key} -keyout {name}.key -out {name}.csr -subj /CN={name}"
            )),
        );
        openssl(
            d,
            &words(&format!(
                "x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial \
                 -out {name}.crt -days 2 -extfile {ext}"
            )),
        );
    }
    Certs { dir }
}

struct Member {
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[String]) -> Member {
    let data = tempfile::tempdir().unwrap();
    let peer = free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kardia"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer}"),
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Member { child, _data: data }
}

/// `curl` over https; returns (exit code, body).
fn curl(c: &Certs, url: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "--cacert", &c.s("ca.crt")])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn wait_ready(c: &Certs, url: &str, client: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = curl(c, &format!("{url}/health"), client);
        if code == 0 && body.contains("true") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready over https: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tools() -> bool {
    for t in ["openssl", "curl", "etcdctl"] {
        if !have(t, &["--version"]) && !have(t, &["version"]) && missing(t) {
            return false;
        }
    }
    true
}

#[test]
fn curl_and_etcdctl_speak_https() {
    if !tools() {
        return;
    }
    let c = make_certs();
    let (plain, tls) = (free_port().unwrap(), free_port().unwrap());
    let urls = format!("http://127.0.0.1:{plain},https://127.0.0.1:{tls}");
    let _m = start(&[
        "--listen-client-urls".into(),
        urls.clone(),
        "--advertise-client-urls".into(),
        urls,
        "--cert-file".into(),
        c.s("server.crt"),
        "--key-file".into(),
        c.s("server.key"),
    ]);
    let url = format!("https://127.0.0.1:{tls}");
    wait_ready(&c, &url, &[]);
    let (code, body) = curl(
        &c,
        &format!("{url}/v2/keys/hm/k"),
        &["-XPUT", "-d", "value=over-tls"],
    );
    assert_eq!(code, 0);
    assert!(body.contains("\"value\":\"over-tls\""), "{body}");
    let (code, body) = curl(&c, &format!("http://127.0.0.1:{plain}/v2/keys/hm/k"), &[]);
    assert_eq!(code, 0);
    assert!(
        body.contains("over-tls"),
        "the plain listener sees the same store: {body}"
    );
    let ca = c.s("ca.crt");
    let (code, out, err) = etcdctl(&url, &["--ca-file", &ca, "set", "/hm/e", "from-etcdctl"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = etcdctl(&url, &["--ca-file", &ca, "get", "/hm/k"]);
    assert_eq!((code, out.trim()), (0, "over-tls"), "{err}");
    // Plain HTTP on the TLS port gets no answer; a client that does not
    // trust the CA refuses the server.
    let (code, _) = curl(&c, &format!("http://127.0.0.1:{tls}/health"), &[]);
    assert_ne!(code, 0);
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("{url}/health")])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn client_cert_auth_refuses_clients_without_a_trusted_certificate() {
    if !tools() {
        return;
    }
    let c = make_certs();
    for old_flags in [false, true] {
        let port = free_port().unwrap();
        let url = format!("https://127.0.0.1:{port}");
        let args: Vec<String> = if old_flags {
            // 0.4: -addr with -cert-file serves TLS; -ca-file asks for
            // client certificates.
            vec![
                "-addr".into(),
                format!("127.0.0.1:{port}"),
                "-cert-file".into(),
                c.s("server.crt"),
                "-key-file".into(),
                c.s("server.key"),
                "-ca-file".into(),
                c.s("ca.crt"),
            ]
        } else {
            vec![
                "--listen-client-urls".into(),
                url.clone(),
                "--advertise-client-urls".into(),
                url.clone(),
                "--cert-file".into(),
                c.s("server.crt"),
                "--key-file".into(),
                c.s("server.key"),
                "--trusted-ca-file".into(),
                c.s("ca.crt"),
                "--client-cert-auth".into(),
            ]
        };
        let _m = start(&args);
        let (cert, key) = (c.s("client.crt"), c.s("client.key"));
        let client = ["--cert", cert.as_str(), "--key", key.as_str()];
        wait_ready(&c, &url, &client);
        let (code, body) = curl(
            &c,
            &format!("{url}/v2/keys/k"),
            &["-XPUT", "-d", "value=v", "--cert", &cert, "--key", &key],
        );
        assert_eq!(code, 0, "{body}");
        assert!(body.contains("\"value\":\"v\""), "{body}");
        let (code, body) = curl(&c, &format!("{url}/v2/keys/k"), &[]);
        assert_ne!(code, 0, "served without a client certificate: {body}");
        let (sc, sk) = (c.s("stranger.crt"), c.s("stranger.key"));
        let (code, body) = curl(
            &c,
            &format!("{url}/v2/keys/k"),
            &["--cert", &sc, "--key", &sk],
        );
        assert_ne!(code, 0, "served a certificate from another CA: {body}");
        let ca = c.s("ca.crt");
        let (code, out, err) = etcdctl(
            &url,
            &[
                "--ca-file",
                &ca,
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "get",
                "/k",
            ],
        );
        assert_eq!((code, out.trim()), (0, "v"), "{err}");
        let (code, _, _) = etcdctl(&url, &["--ca-file", &ca, "get", "/k"]);
        assert_ne!(code, 0);
    }
}

#[test]
fn peer_tls_is_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_kardia"))
        .args(["--peer-cert-file", "/nonexistent.crt"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("peer TLS is not supported"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_kardia"))
        .args(["--listen-client-urls", "https://127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--cert-file"), "{err}");
}
