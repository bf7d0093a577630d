//! TLS on the client port (issue #15, point 1), with real clients: curl and
//! etcdctl over https against the real binary, certificates made by openssl
//! for the test (a CA, a server certificate for 127.0.0.1, a client
//! certificate, and a client certificate from another CA). Without
//! `--client-cert-auth` any client that trusts the CA is served; with it, a
//! client without a certificate, or with one from another CA, is refused in
//! the handshake. 0.4's `-cert-file/-key-file/-ca-file` do the same on
//! `-addr`. Members of a cluster talk over TLS with `--peer-*` flags and
//! https:// peer URLs; a member whose certificate comes from another CA is
//! refused by the others and never gets their data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{put, Cluster};
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
    std::fs::write(
        d.join("member.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("hm", "ca", "client.ext"),
        ("stranger", "other-ca", "client.ext"),
        ("member", "ca", "member.ext"),
        ("rogue", "other-ca", "member.ext"),
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

/// Flags of a member serving `url` (https) under `--client-cert-auth`.
fn client_cert_auth_args(c: &Certs, url: &str) -> Vec<String> {
    vec![
        "--listen-client-urls".into(),
        url.into(),
        "--advertise-client-urls".into(),
        url.into(),
        "--cert-file".into(),
        c.s("server.crt"),
        "--key-file".into(),
        c.s("server.key"),
        "--trusted-ca-file".into(),
        c.s("ca.crt"),
        "--client-cert-auth".into(),
    ]
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
    // A listing large enough to be sent as it renders (chunked, in parts)
    // arrives whole over TLS.
    let mut conn = common::Conn::connect(plain, Duration::from_secs(10)).unwrap();
    let value = format!("value={}", "v".repeat(10_000));
    let mut wire = Vec::new();
    for i in 0..600 {
        let key = format!("/v2/keys/big/k{i:03}");
        wire.extend(common::build_request(
            plain,
            "PUT",
            key.as_bytes(),
            Some(value.as_bytes()),
            &[],
            true,
        ));
    }
    conn.send(&wire).unwrap();
    for _ in 0..600 {
        let r = common::read_response(&mut conn, "PUT", Instant::now() + Duration::from_secs(20));
        assert_eq!(r.unwrap().code(), 201);
    }
    let listing = "/v2/keys/big?recursive=true";
    let (code, over_tls) = curl(&c, &format!("{url}{listing}"), &["--raw"]);
    assert_eq!(code, 0);
    assert!(
        over_tls.len() > 6_000_000 && over_tls.starts_with("00"),
        "a chunked listing over TLS: {} bytes, {:?}",
        over_tls.len(),
        &over_tls[..over_tls.len().min(40)]
    );
    let (code, over_tls) = curl(&c, &format!("{url}{listing}"), &[]);
    assert_eq!(code, 0);
    let (code, plain_10) = curl(
        &c,
        &format!("http://127.0.0.1:{plain}{listing}"),
        &["--http1.0"],
    );
    assert_eq!(code, 0);
    assert!(
        over_tls == plain_10,
        "the listing over TLS ({} bytes) differs from HTTP/1.0's ({} bytes)",
        over_tls.len(),
        plain_10.len()
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
            client_cert_auth_args(&c, &url)
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

/// Under `--client-cert-auth` with v2 auth on, a request without an
/// `Authorization` header is the user its certificate's common name names
/// (etcd's `userFromClientCertificate`), else a guest; basic auth wins.
#[test]
fn a_client_certificate_names_its_v2_auth_user() {
    if !tools() {
        return;
    }
    let c = make_certs();
    let port = free_port().unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let _m = start(&client_cert_auth_args(&c, &url));
    let (cc, ck) = (c.s("client.crt"), c.s("client.key"));
    let (hc, hk) = (c.s("hm.crt"), c.s("hm.key"));
    let as_client = ["--cert", cc.as_str(), "--key", ck.as_str()];
    let as_hm = ["--cert", hc.as_str(), "--key", hk.as_str()];
    wait_ready(&c, &url, &as_client);
    // (status, body) of one request with the given certificate and flags.
    let call = |cert: &[&str], extra: &[&str], path: &str| -> (String, String) {
        let mut args: Vec<&str> = cert.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-w", "\n%{http_code}"]);
        let (code, out) = curl(&c, &format!("{url}{path}"), &args);
        assert_eq!(code, 0, "curl {path}: {out}");
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.to_string(), body.to_string())
    };
    let json = ["-XPUT", "-H", "Content-Type: application/json", "-d"];
    let setup: [(&str, &str, &[&str]); 5] = [
        (
            "/v2/auth/users/root",
            r#"{"user":"root","password":"rootpw"}"#,
            &[],
        ),
        (
            "/v2/auth/roles/apps",
            r#"{"role":"apps","permissions":{"kv":{"read":["/apps/*"],"write":["/apps/*"]}}}"#,
            &[],
        ),
        (
            "/v2/auth/users/hm",
            r#"{"user":"hm","password":"hmpw","roles":["apps"]}"#,
            &[],
        ),
        ("/v2/auth/enable", "", &["-u", "root:rootpw"]),
        (
            "/v2/auth/roles/guest",
            r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#,
            &["-u", "root:rootpw"],
        ),
    ];
    for (path, body, extra) in setup {
        let mut args: Vec<&str> = json.to_vec();
        args.push(body);
        args.extend_from_slice(extra);
        let (status, out) = call(&as_client, &args, path);
        assert!(status.starts_with('2'), "{path}: {status} {out}");
    }
    let put = ["-XPUT", "-d", "value=1"];
    let (status, body) = call(&as_hm, &put, "/v2/keys/apps/a");
    assert_eq!(status, "201", "the certificate named hm: {body}");
    let (status, body) = call(&as_client, &put, "/v2/keys/apps/a");
    assert_eq!(
        status, "401",
        "a certificate naming no user is a guest: {body}"
    );
    assert!(body.contains("\"errorCode\":110"), "{body}");
    let (status, body) = call(
        &as_client,
        &["-XPUT", "-d", "value=2", "-u", "hm:hmpw"],
        "/v2/keys/apps/a",
    );
    assert_eq!(status, "200", "basic auth: {body}");
    let (status, body) = call(&as_hm, &[], "/v2/keys/other");
    assert_eq!(status, "401", "hm may not read /other: {body}");
    let (status, _) = call(&as_hm, &[], "/v2/auth/users");
    assert_eq!(status, "401", "hm is not root");
}

/// A static cluster of three whose peer URLs are https://, each member
/// with the certificate files of `certs(i)`.
fn tls_cluster(c: &Certs, certs: impl Fn(usize) -> (&'static str, &'static str)) -> Cluster {
    let mut cl = Cluster::unstarted(3);
    let spec = cl.initial_cluster().replace("http://", "https://");
    let token = cl.token.clone();
    for (i, m) in cl.members.iter_mut().enumerate() {
        let (cert, ca) = certs(i);
        let extra = [
            "--peer-cert-file".to_string(),
            c.s(&format!("{cert}.crt")),
            "--peer-key-file".into(),
            c.s(&format!("{cert}.key")),
            "--peer-trusted-ca-file".into(),
            c.s(&format!("{ca}.crt")),
            "--peer-client-cert-auth".into(),
        ];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let peer = m.peer_url();
        m.args = m
            .static_args(&spec, &token, &extra)
            .into_iter()
            .map(|a| {
                if a == peer {
                    a.replace("http://", "https://")
                } else {
                    a
                }
            })
            .collect();
    }
    cl
}

#[test]
fn members_replicate_over_peer_tls_and_refuse_another_ca() {
    if !tools() {
        return;
    }
    let c = make_certs();
    let mut cl = tls_cluster(&c, |_| ("member", "ca"));
    for m in &mut cl.members {
        m.spawn().unwrap();
    }
    for m in &mut cl.members {
        m.wait_healthy(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let r = put(cl.port(0), "/tls/k", "over-peer-tls").unwrap();
    assert!(r.code() < 300, "{}", r.body_str());
    for i in 1..3 {
        cl.wait_value(i, "/tls/k", Some("over-peer-tls"), Duration::from_secs(10));
    }
    drop(cl);

    // n3's certificate (and trust) come from another CA: n1 and n2 form the
    // quorum and refuse it; it never learns their data.
    let mut cl = tls_cluster(&c, |i| {
        if i == 2 {
            ("rogue", "other-ca")
        } else {
            ("member", "ca")
        }
    });
    for m in &mut cl.members {
        m.spawn().unwrap();
    }
    for i in 0..2 {
        cl.members[i]
            .wait_healthy(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}\n{}", cl.logs()));
    }
    let r = put(cl.port(0), "/tls/k", "members-only").unwrap();
    assert!(r.code() < 300, "{}", r.body_str());
    cl.wait_value(1, "/tls/k", Some("members-only"), Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(
        cl.get_value(2, "/tls/k").ok().flatten().as_deref(),
        Some("members-only"),
        "a member with another CA's certificate got the data"
    );
    assert!(
        cl.members[0].log_tail(400).contains("peer TLS handshake"),
        "no refused handshake in n1's log:\n{}",
        cl.members[0].log_tail(40)
    );
}

#[test]
fn tls_flags_are_checked_at_start() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kardia"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--listen-client-urls", "https://127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--cert-file"), "{err}");
    let (code, err) = run(&["--listen-peer-urls", "https://127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--peer-cert-file"), "{err}");
    let (code, err) = run(&["--peer-cert-file", "a.crt", "--peer-key-file", "a.key"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--peer-trusted-ca-file"), "{err}");
}
