//! Linux network namespaces for cluster tests that need a real network
//! between members: a [`Lab`] is a set of namespaces the test creates
//! itself — one "hub" holding a bridge and the clients' address, and one per
//! member, each joined to the bridge by a veth pair and given its own
//! address in `10.213.<run>.0/24` (`.1`, `.2`, ... for members, `.100` for
//! the clients). Nothing outside these namespaces is touched: no host
//! interface, route or firewall rule. Faults are `iptables` rules in a
//! `NEMESIS` chain inside each member's namespace (partitions, one-way
//! drops, random loss) and `ip link set eth0 down/up` there (flapping), plus
//! `tc tbf` for a slow link; [`Lab::heal`] removes them all. Dropping the
//! lab deletes its namespaces (with their veths, bridge and rules), also on
//! panic. A thread joins a namespace with `setns(2)` ([`enter`], undone by
//! the guard); processes spawned from such a thread run there, which is how
//! [`NetCluster`] starts `kardia` members inside their namespaces, on their
//! own non-loopback addresses (the "cluster on external addresses" case).

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use super::cluster::{string_fields, unique_token, CallError, Json, Member};
use super::{build_request, read_response, Conn, Response};

/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Prefix of every namespace a lab creates: `kzn<pid>-<run>-<role>`.
const PREFIX: &str = "kzn";

/// Client and peer ports of a member (each has its own address).
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

// ---------------------------------------------------------------------------
// Preconditions

/// Why this machine cannot run namespace tests (not root, `ip` or
/// `iptables` missing), or None when it can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network-namespace tests need root (ip netns, iptables)".into());
    }
    for (tool, arg) in [("ip", "-V"), ("iptables", "-V")] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!(
                "`{tool}` is not installed (apt-get install -y iproute2 iptables)"
            ));
        }
    }
    None
}

/// True when the test may go on; otherwise prints why and skips, or fails
/// under CI (which runs as root and installs the tools).
pub fn usable() -> bool {
    match unavailable() {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{why}; CI must run these tests")
        }
        Some(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Commands and setns

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip -n <ns> <args>`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `iptables -w <args>` inside `ns`.
pub fn iptables(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns, "iptables", "-w"];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn setns_file(f: &File) -> io::Result<()> {
    // SAFETY: `f` is an open namespace handle; setns only switches this
    // thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// While alive, the current thread is in another network namespace; the
/// drop returns it to the one it came from.
pub struct InNs {
    home: File,
}

impl Drop for InNs {
    fn drop(&mut self) {
        if let Err(e) = setns_file(&self.home) {
            // A thread stuck in a test namespace must not go on to run
            // other tests there.
            panic!("cannot return to the original network namespace: {e}");
        }
    }
}

/// Moves the current thread into namespace `ns` (made by `ip netns add`).
/// Sockets it opens, and processes it spawns, live there.
pub fn enter(ns: &str) -> io::Result<InNs> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(format!("{NETNS_DIR}/{ns}"))?;
    setns_file(&target)?;
    Ok(InNs { home })
}

/// Runs `f` on a fresh thread inside `ns` and returns its result (a panic
/// in `f` is re-raised here).
pub fn in_ns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    thread::scope(|s| {
        let h = s.spawn(|| {
            let _in = enter(ns).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
            f()
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// One request to `addr` on a fresh `Connection: close` connection, from
/// the calling thread's namespace, with a deadline of `timeout` for the
/// whole exchange (as `cluster::http`, which only knows loopback).
pub fn http_at(
    addr: SocketAddrV4,
    method: &str,
    target: &str,
    form: Option<&str>,
    timeout: Duration,
) -> Result<Response, CallError> {
    let connect = timeout.min(Duration::from_secs(2));
    let stream = TcpStream::connect_timeout(&addr.into(), connect).map_err(CallError::NotSent)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(CallError::NotSent)?;
    stream.set_nodelay(true).map_err(CallError::NotSent)?;
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        eof: false,
    };
    let req = build_request(
        addr.port(),
        method,
        target.as_bytes(),
        form.map(str::as_bytes),
        &[("Host".to_string(), addr.to_string())],
        false,
    );
    conn.send(&req).map_err(|e| CallError::Failed(e.into()))?;
    read_response(&mut conn, method, Instant::now() + timeout).map_err(CallError::Failed)
}

/// `(is leader, raft term)` as the member at `addr` reports them in
/// `/debug/kardia/shards` (from the calling thread's namespace).
pub fn role_at(addr: SocketAddrV4, timeout: Duration) -> Option<(bool, u64)> {
    let r = http_at(addr, "GET", "/debug/kardia/shards", None, timeout).ok()?;
    if r.code() != 200 {
        return None;
    }
    let j = Json::parse(&r.body_str()).ok()?;
    let leader = j.path(&["executor", "leader"])?.as_bool()?;
    let term = j.path(&["executor", "raftTerm"])?.as_u64()?;
    Some((leader, term))
}

// ---------------------------------------------------------------------------
// The lab

/// Namespaces, bridge and veths of one test; see the module docs.
pub struct Lab {
    /// `kzn<pid>-<run>`: every namespace name starts with it.
    pub tag: String,
    /// The third octet of `10.213.x.0/24`.
    pub subnet: u8,
    /// The namespace with the bridge and the clients' address.
    pub hub: String,
    /// One namespace per member.
    pub nodes: Vec<String>,
    /// Namespaces to delete at drop (those created so far).
    created: Vec<String>,
}

impl Lab {
    /// Creates the hub and `n` member namespaces, wired and addressed.
    pub fn create(n: usize) -> Result<Lab, String> {
        assert!((1..100).contains(&n), "1..99 members");
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}-{run}", std::process::id());
        let mut lab = Lab {
            hub: format!("{tag}-h"),
            nodes: (1..=n).map(|i| format!("{tag}-{i}")).collect(),
            subnet: (run % 250 + 1) as u8,
            tag,
            created: Vec::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        run("ip", &["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build(&mut self) -> Result<(), String> {
        let hub = self.hub.clone();
        self.add_ns(&hub)?;
        ip(&hub, &["link", "add", "br0", "type", "bridge"])?;
        let client = format!("{}/24", self.client_ip());
        ip(&hub, &["addr", "add", &client, "dev", "br0"])?;
        ip(&hub, &["link", "set", "br0", "up"])?;
        for (i, node) in self.nodes.clone().iter().enumerate() {
            self.add_ns(node)?;
            let veth = format!("v{}", i + 1);
            ip(
                &hub,
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", node,
                ],
            )?;
            ip(&hub, &["link", "set", &veth, "master", "br0"])?;
            ip(&hub, &["link", "set", &veth, "up"])?;
            let addr = format!("{}/24", self.member_ip(i));
            ip(node, &["addr", "add", &addr, "dev", "eth0"])?;
            ip(node, &["link", "set", "eth0", "up"])?;
            iptables(node, &["-N", "NEMESIS"])?;
            iptables(node, &["-A", "INPUT", "-j", "NEMESIS"])?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Member `i`'s address (`10.213.x.(i+1)`).
    pub fn member_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, i as u8 + 1)
    }

    /// The clients' address on the hub's bridge.
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 100)
    }

    /// Moves the current thread into the hub (where the members' addresses
    /// are reachable) until the guard drops.
    pub fn enter_hub(&self) -> InNs {
        enter(&self.hub).unwrap_or_else(|e| panic!("setns into {}: {e}", self.hub))
    }

    fn rule(&self, i: usize, args: &[&str]) {
        let mut all = vec!["-A", "NEMESIS"];
        all.extend_from_slice(args);
        iptables(&self.nodes[i], &all).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Member `to` drops every packet from member `from` (one way).
    pub fn drop_from(&self, from: usize, to: usize) {
        let src = self.member_ip(from).to_string();
        self.rule(to, &["-s", &src, "-j", "DROP"]);
    }

    /// No packet passes between members `a` and `b`, either way.
    pub fn cut(&self, a: usize, b: usize) {
        self.drop_from(a, b);
        self.drop_from(b, a);
    }

    /// Member `i` is cut from every other member (clients still reach it).
    pub fn isolate(&self, i: usize) {
        for j in 0..self.len() {
            if j != i {
                self.cut(i, j);
            }
        }
    }

    /// Every member drops each packet from every other member with
    /// probability `p` (clients are not affected).
    pub fn loss(&self, p: f64) {
        let p = format!("{p}");
        for to in 0..self.len() {
            for from in 0..self.len() {
                if from != to {
                    let src = self.member_ip(from).to_string();
                    self.rule(
                        to,
                        &[
                            "-s",
                            &src,
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            &p,
                            "-j",
                            "DROP",
                        ],
                    );
                }
            }
        }
    }

    /// Member `i`'s link up or down (down: nothing in or out, clients
    /// included).
    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&self.nodes[i], &["link", "set", "eth0", state]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Member `i`'s outgoing traffic limited to `rate` (tc tbf, e.g.
    /// "256kbit").
    pub fn slow(&self, i: usize, rate: &str) {
        run(
            "tc",
            &[
                "-n",
                &self.nodes[i],
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "16kbit",
                "latency",
                "200ms",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Removes every fault: flushes the rules, sets links up, removes tbf.
    pub fn heal(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            iptables(node, &["-F", "NEMESIS"]).unwrap_or_else(|e| panic!("{e}"));
            self.link(i, true);
            let _ = run("tc", &["-n", node, "qdisc", "del", "dev", "eth0", "root"]);
        }
    }

    /// The NEMESIS rules of member `i` (for failure messages).
    pub fn rules(&self, i: usize) -> String {
        iptables(&self.nodes[i], &["-S", "NEMESIS"]).unwrap_or_else(|e| e)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                eprintln!("teardown: {e}");
            }
        }
    }
}

/// Deletes namespaces left by earlier runs of these tests that were killed
/// before their teardown (their process is gone). Only names with this
/// harness's prefix.
fn sweep_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name}");
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

// ---------------------------------------------------------------------------
// A cluster inside a lab

/// `kardia` members `n1..` in a [`Lab`], each in its own namespace,
/// listening and advertising on its own address (ports 2379/2380). Every
/// call that talks to a member must run on a thread inside the hub
/// ([`Lab::enter_hub`]). Members are killed before the lab is torn down.
pub struct NetCluster {
    pub members: Vec<Member>,
    pub lab: Lab,
    pub token: String,
}

/// Quick polls (health, leader, hashes).
const POLL: Duration = Duration::from_millis(1500);

impl NetCluster {
    /// Members with static-bootstrap flags plus `extra`; nothing started.
    pub fn new(lab: Lab, extra: &[&str]) -> NetCluster {
        let token = unique_token();
        let n = lab.len();
        let mut members: Vec<Member> = (1..=n).map(|i| Member::new(&format!("n{i}"))).collect();
        let peer = |i: usize| format!("http://{}:{PEER_PORT}", lab.member_ip(i));
        let spec = (0..n)
            .map(|i| format!("n{}={}", i + 1, peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        for (i, m) in members.iter_mut().enumerate() {
            m.client_port = CLIENT_PORT;
            m.peer_port = PEER_PORT;
            let client = format!("http://{}:{CLIENT_PORT}", lab.member_ip(i));
            let mut a: Vec<String> = [
                "--name",
                &m.name,
                "--data-dir",
                &m.data_dir().to_string_lossy(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer(i),
                "--initial-advertise-peer-urls",
                &peer(i),
                "--initial-cluster",
                &spec,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &token,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            a.extend(extra.iter().map(|s| s.to_string()));
            m.args = a;
        }
        NetCluster {
            members,
            lab,
            token,
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i`'s client address.
    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.lab.member_ip(i), CLIENT_PORT)
    }

    /// Every member's client address.
    pub fn addrs(&self) -> Vec<SocketAddrV4> {
        (0..self.len()).map(|i| self.addr(i)).collect()
    }

    /// One request to member `i` (the calling thread must be in the hub).
    pub fn http(
        &self,
        i: usize,
        method: &str,
        target: &str,
        form: Option<&str>,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        http_at(self.addr(i), method, target, form, timeout)
    }

    /// Starts member `i`'s process inside its namespace (killing any
    /// previous one), without waiting for health.
    pub fn spawn(&mut self, i: usize) {
        let ns = self.lab.nodes[i].clone();
        let m = &mut self.members[i];
        in_ns(&ns, || m.spawn()).unwrap_or_else(|e| panic!("spawn n{}: {e}", i + 1));
    }

    /// Spawn, then wait for health; panics with all logs on failure.
    pub fn start(&mut self, i: usize) {
        self.spawn(i);
        if let Err(e) = self.wait_healthy(i, Duration::from_secs(20)) {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// Starts every member, then waits until all are healthy.
    pub fn start_all(&mut self) {
        for i in 0..self.len() {
            self.spawn(i);
        }
        for i in 0..self.len() {
            if let Err(e) = self.wait_healthy(i, Duration::from_secs(20)) {
                panic!("{e}\n{}", self.logs());
            }
        }
    }

    /// Waits until member `i` answers `GET /health` with 200 "true".
    pub fn wait_healthy(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.members[i].exit_status() {
                return Err(format!("n{} exited ({status})", i + 1));
            }
            let last = match self.http(i, "GET", "/health", None, POLL) {
                Ok(r) if r.code() == 200 && r.body_str().contains("true") => return Ok(()),
                Ok(r) => format!("{} {}", r.code(), r.body_str()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "n{} not healthy within {timeout:?} (last: {last})",
                    i + 1
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    pub fn stop(&mut self, i: usize) {
        self.members[i].stop();
    }

    pub fn cont(&mut self, i: usize) {
        self.members[i].cont();
    }

    /// `(is leader, raft term)` as member `i` reports them.
    pub fn role(&self, i: usize, timeout: Duration) -> Option<(bool, u64)> {
        role_at(self.addr(i), timeout)
    }

    /// The leader's index according to member `i` (`/v2/members/leader`).
    pub fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let r = self.http(i, "GET", "/v2/members/leader", None, POLL).ok()?;
        if r.code() != 200 {
            return None;
        }
        let j = Json::parse(&r.body_str()).ok()?;
        let name = j.get("name")?.as_str()?;
        self.members.iter().position(|m| m.name == name)
    }

    /// Waits until every running, unfrozen member names the same leader.
    pub fn wait_leader_agreed(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let live: Vec<usize> = (0..self.len())
                .filter(|&i| self.members[i].is_live())
                .collect();
            let seen: Vec<Option<usize>> = live.iter().map(|&i| self.leader_seen_by(i)).collect();
            if let Some(Some(l)) = seen.first() {
                if live.contains(l) && seen.iter().all(|s| s == &Some(*l)) {
                    return *l;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "members {live:?} do not agree on a leader within {timeout:?}: {seen:?}\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Member `i`'s content hashes and `X-Etcd-Index`.
    pub fn position(&self, i: usize) -> (Option<Vec<String>>, Option<u64>) {
        let hashes = self
            .http(i, "GET", "/debug/kardia/shards", None, POLL)
            .ok()
            .filter(|r| r.code() == 200)
            .map(|r| string_fields(&r.body_str(), "hash"));
        let index = self
            .http(i, "GET", "/v2/keys/", None, POLL)
            .ok()
            .and_then(|r| r.header("X-Etcd-Index")?.parse().ok());
        (hashes, index)
    }

    /// Waits until every member reports the same content hashes and index.
    pub fn wait_converged(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen: Vec<_> = (0..self.len()).map(|i| self.position(i)).collect();
            let first = &seen[0];
            if first.0.as_ref().is_some_and(|h| !h.is_empty())
                && first.1.is_some()
                && seen.iter().all(|s| s == first)
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "members did not converge within {timeout:?}: {seen:?}\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's log tail and fault rules, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            out.push_str(&format!(
                "----- {} ({}; rules: {}) log tail -----\n{}\n",
                m.name,
                self.addr(i),
                self.lab.rules(i).replace('\n', "; "),
                m.log_tail(40)
            ));
        }
        out
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        // Processes first: a namespace with a process in it outlives
        // `ip netns del`.
        for m in &mut self.members {
            m.kill();
        }
    }
}
