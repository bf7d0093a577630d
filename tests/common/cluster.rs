//! Multi-member harness for process-level cluster tests: a [`Cluster`] of
//! [`Member`]s, each a real `kardia` process with its own temp dir (data dir
//! and log file), a free client port and a free peer port, SIGKILLed on
//! drop. Members start either by static bootstrap (`--initial-cluster ...`)
//! or with 0.x flags (`-name -addr -peer-addr -peers`); they can be killed
//! (SIGKILL), restarted (with other flags if wanted), frozen (SIGSTOP) and
//! thawed (SIGCONT). The cluster finds the leader through
//! `GET /v2/members/leader`, waits for all live members to converge (same
//! per-shard content hashes from `GET /debug/kardia/shards` and the same
//! `X-Etcd-Index`), and dumps every member's log tail for failure messages.
//! Also here: an HTTP call with its own timeout that tells "never sent"
//! apart from "outcome unknown".

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub use super::json::Json;
use super::{free_port, read_response, Conn, HttpError, Response};

/// Faster raft timings for tests where default timing is not the point.
pub const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

/// How long a (re)started member may take to answer `GET /health` with 200.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

/// Client-side timeout for a request that may wait for raft (a write or a
/// quorum read fails on the server after ~5 s + 2 election timeouts).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Timeout for quick polls (health, leader, hashes).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// Marker written to a member's log before each start.
const START_MARKER: &str = "=== kardia-test: start";

thread_local! {
    /// Flags added to every member this thread starts ([`with_member_flags`]).
    static MEMBER_FLAGS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` (a test) with `flags` added to every member it starts, e.g. to
/// run a cluster test with sharded members (issue #14). Members are started
/// from the test's own thread.
pub fn with_member_flags(flags: &[&str], f: impl FnOnce()) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            MEMBER_FLAGS.with(|m| m.borrow_mut().clear());
        }
    }
    MEMBER_FLAGS.with(|m| *m.borrow_mut() = flags.iter().map(|s| s.to_string()).collect());
    let _reset = Reset;
    f();
}

/// Cluster tests measure failover times and fight over 2 cores: run them one
/// at a time. Hold the guard for the whole test.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free loopback port not yet handed out by this process.
pub fn unique_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    loop {
        let p = free_port().expect("free port");
        if used.insert(p) {
            return p;
        }
    }
}

/// A cluster token no other test run shares.
pub fn unique_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "kardia-test-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// Members

/// One kardia process of a cluster, with its own temp dir and ports. `args`
/// are the flags of the next start.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub args: Vec<String>,
    root: tempfile::TempDir,
    child: Option<Child>,
    stopped: bool,
    starts: usize,
}

impl Member {
    /// A member with fresh ports and temp dir, not started, no flags yet.
    pub fn new(name: &str) -> Member {
        let root = tempfile::Builder::new()
            .prefix(&format!("kardia-cluster-{name}-"))
            .tempdir()
            .expect("temp dir");
        Member {
            name: name.to_string(),
            client_port: unique_port(),
            peer_port: unique_port(),
            args: Vec::new(),
            root,
            child: None,
            stopped: false,
            starts: 0,
        }
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("kardia.log")
    }

    /// Static-bootstrap flags: `initial_cluster` is `n1=http://...,n2=...`.
    pub fn static_args(&self, initial_cluster: &str, token: &str, extra: &[&str]) -> Vec<String> {
        let (client, peer) = (self.client_url(), self.peer_url());
        let mut a: Vec<String> = [
            "--name",
            &self.name,
            "--data-dir",
            &self.data_dir().to_string_lossy(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// 0.x flags: `-name -data-dir -addr -peer-addr [-peers 127.0.0.1:P,...]`.
    pub fn ox_args(&self, peers: &[u16], extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-data-dir".into(),
            self.data_dir().to_string_lossy().into_owned(),
            "-addr".into(),
            format!("127.0.0.1:{}", self.client_port),
            "-peer-addr".into(),
            format!("127.0.0.1:{}", self.peer_port),
        ];
        if !peers.is_empty() {
            a.push("-peers".into());
            a.push(
                peers
                    .iter()
                    .map(|p| format!("127.0.0.1:{p}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Starts the process with `args` (killing any previous one) without
    /// waiting for it to become healthy.
    pub fn spawn(&mut self) -> io::Result<()> {
        self.kill();
        self.starts += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        // Flags added to every member's: the thread's (`with_member_flags`)
        // and KARDIA_TEST_MEMBER_FLAGS's.
        let env = std::env::var("KARDIA_TEST_MEMBER_FLAGS").unwrap_or_default();
        let mut extra: Vec<String> = MEMBER_FLAGS.with(|m| m.borrow().clone());
        extra.extend(env.split_whitespace().map(str::to_string));
        writeln!(
            log,
            "{START_MARKER} #{} of {}: kardia {} {}",
            self.starts,
            self.name,
            self.args.join(" "),
            extra.join(" ")
        )?;
        let child = Command::new(env!("CARGO_BIN_EXE_kardia"))
            .args(&self.args)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.stopped = false;
        Ok(())
    }

    /// Spawn, then wait for health.
    pub fn start(&mut self) -> io::Result<()> {
        self.spawn()?;
        self.wait_healthy(HEALTH_TIMEOUT)
    }

    /// Waits until `GET /health` answers 200 `{"health":"true"}`; an error
    /// (with the log tail) if the process exits or time runs out.
    pub fn wait_healthy(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(io::Error::other(format!(
                    "{} exited before becoming healthy ({status}); log tail:\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            let last = match http(self.client_port, "GET", "/health", None, POLL_TIMEOUT) {
                Ok(r) if r.code() == 200 && r.body_str().contains("true") => return Ok(()),
                Ok(r) => format!("{} {}", r.code(), r.body_str()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} not healthy within {timeout:?} (last: {last}); log tail:\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap (thawing a SIGSTOPped process is not needed).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// Kill, then start again with the current `args`, and wait for health.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.start()
    }

    /// Restart with other flags.
    pub fn restart_with(&mut self, args: Vec<String>) -> io::Result<()> {
        self.args = args;
        self.restart()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("member is not running");
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn stop(&mut self) {
        self.signal("-STOP");
        self.stopped = true;
    }

    /// SIGCONT after [`Member::stop`].
    pub fn cont(&mut self) {
        self.signal("-CONT");
        self.stopped = false;
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The exit status if the process has ended (None while it runs or if
    /// it was never started).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// Running and not frozen.
    pub fn is_live(&mut self) -> bool {
        !self.stopped && self.is_running()
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit_status() {
                return Some(s);
            }
            if self.child.is_none() || Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole log (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log written since the latest start.
    pub fn log_since_start(&self) -> String {
        let log = self.log();
        match log.rfind(START_MARKER) {
            Some(at) => log[at..].to_string(),
            None => log,
        }
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Clusters

/// Members named `n1`, `n2`, ... (index `i` is `n{i+1}`).
pub struct Cluster {
    pub members: Vec<Member>,
    pub token: String,
}

impl Cluster {
    /// `n` members with ports and temp dirs, no flags, nothing started.
    pub fn unstarted(n: usize) -> Cluster {
        Cluster {
            members: (1..=n).map(|i| Member::new(&format!("n{i}"))).collect(),
            token: unique_token(),
        }
    }

    /// `n1=http://127.0.0.1:P1,n2=...`
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Gives every member static-bootstrap flags plus `extra`.
    pub fn configure_static(&mut self, extra: &[&str]) {
        let spec = self.initial_cluster();
        for m in &mut self.members {
            m.args = m.static_args(&spec, &self.token, extra);
        }
    }

    /// A statically bootstrapped cluster of `n`, all members healthy.
    pub fn start_static(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::unstarted(n);
        c.configure_static(extra);
        for m in &mut c.members {
            m.spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", m.name));
        }
        let errors: Vec<String> = c
            .members
            .iter_mut()
            .filter_map(|m| m.wait_healthy(HEALTH_TIMEOUT).err())
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            panic!("{}\n{}", errors.join("\n"), c.logs());
        }
        c
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    pub fn ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client_port).collect()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    /// Start member `i` (current args) and wait for health; panics with all
    /// logs on failure.
    pub fn start(&mut self, i: usize) {
        if let Err(e) = self.members[i].start() {
            panic!("starting {}: {e}\n{}", self.members[i].name, self.logs());
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start(i);
    }

    pub fn stop(&mut self, i: usize) {
        self.members[i].stop();
    }

    pub fn cont(&mut self, i: usize) {
        self.members[i].cont();
    }

    /// Indices of members that run and are not frozen.
    pub fn live(&mut self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_live())
            .collect()
    }

    /// The leader's name according to member `i`, or None (no answer, 503
    /// during an election, unparsable).
    pub fn leader_name_seen_by(&self, i: usize) -> Option<String> {
        let r = http(
            self.port(i),
            "GET",
            "/v2/members/leader",
            None,
            POLL_TIMEOUT,
        )
        .ok()?;
        if r.code() != 200 {
            return None;
        }
        Json::parse(&r.body_str())
            .ok()?
            .get("name")?
            .as_str()
            .map(str::to_string)
    }

    /// The leader's member index according to member `i`.
    pub fn leader_seen_by(&self, i: usize) -> Option<usize> {
        self.index_of(&self.leader_name_seen_by(i)?)
    }

    /// The leader as reported by the first live member that names a live
    /// member.
    pub fn leader(&mut self) -> Option<usize> {
        let live = self.live();
        live.iter()
            .filter_map(|&i| self.leader_seen_by(i))
            .find(|l| live.contains(l))
    }

    /// Polls [`Cluster::leader`]; panics with all logs on timeout.
    pub fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            if Instant::now() > deadline {
                panic!("no leader within {timeout:?}\n{}", self.logs());
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until every live member names the same live leader (and, with
    /// sharded members, sees it lead every group).
    pub fn wait_leader_agreed(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.live();
            let seen: Vec<Option<usize>> = live.iter().map(|&i| self.leader_seen_by(i)).collect();
            if let Some(Some(l)) = seen.first() {
                if live.contains(l)
                    && seen.iter().all(|s| s == &Some(*l))
                    && live.iter().all(|&i| self.leads_every_group(i, *l))
                {
                    return *l;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "live members {live:?} do not agree on a leader within {timeout:?}: {seen:?}\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Member `i`'s id (hex), as it lists itself.
    pub fn member_id(&self, i: usize) -> Option<String> {
        let r = http(self.port(i), "GET", "/v2/stats/self", None, POLL_TIMEOUT).ok()?;
        Json::parse(&r.body_str())
            .ok()?
            .get("id")?
            .as_str()
            .map(str::to_string)
    }

    /// Member `i` sees member `leader` lead every raft group it runs (a
    /// sharded member lists them; co-location moves the other groups to
    /// group 0's leader within a few heartbeats of an election). Always true
    /// for a member with one group.
    fn leads_every_group(&self, i: usize, leader: usize) -> bool {
        let Ok(r) = http(
            self.port(i),
            "GET",
            "/debug/kardia/shards",
            None,
            POLL_TIMEOUT,
        ) else {
            return false;
        };
        let Ok(j) = Json::parse(&r.body_str()) else {
            return false;
        };
        let Some(groups) = j.get("groupLeaders") else {
            return true;
        };
        let id = self.member_id(leader);
        id.is_some() && groups.items().iter().all(|g| g.as_str() == id.as_deref())
    }

    /// The per-shard content hashes member `i` reports. Each answer
    /// carries the hash of the executor that took the connection, so a
    /// member with several shards is asked until every executor has
    /// answered (listed as `id:hash`).
    pub fn content_hash(&self, i: usize) -> Option<Vec<String>> {
        let mut seen = BTreeMap::new();
        for _ in 0..64 {
            let r = http(
                self.port(i),
                "GET",
                "/debug/kardia/shards",
                None,
                POLL_TIMEOUT,
            )
            .ok()?;
            if r.code() != 200 {
                return None;
            }
            let body = r.body_str();
            let j = Json::parse(&body).ok()?;
            let shards = j.get("shards").and_then(Json::as_u64).unwrap_or(1) as usize;
            let exec = j.get("executor")?;
            let id = exec.get("id").and_then(Json::as_u64)?;
            let hash = exec.get("hash").and_then(Json::as_str)?.to_string();
            seen.insert(id, hash);
            if seen.len() >= shards {
                return Some(seen.iter().map(|(id, h)| format!("{id}:{h}")).collect());
            }
        }
        None
    }

    /// Member `i`'s `X-Etcd-Index` on `GET /v2/keys/`.
    pub fn etcd_index(&self, i: usize) -> Option<u64> {
        let r = http(self.port(i), "GET", "/v2/keys/", None, POLL_TIMEOUT).ok()?;
        r.header("X-Etcd-Index")?.parse().ok()
    }

    /// Waits until all live members report the same non-empty list of
    /// content hashes and the same `X-Etcd-Index`. Panics with what each
    /// member reported and all logs.
    pub fn wait_converged(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.live();
            assert!(!live.is_empty(), "no live members\n{}", self.logs());
            let seen: Vec<(usize, Option<Vec<String>>, Option<u64>)> = live
                .iter()
                .map(|&i| (i, self.content_hash(i), self.etcd_index(i)))
                .collect();
            let first = &seen[0];
            let agreed = first.1.as_ref().is_some_and(|h| !h.is_empty())
                && first.2.is_some()
                && seen.iter().all(|s| s.1 == first.1 && s.2 == first.2);
            if agreed {
                return;
            }
            if Instant::now() > deadline {
                let report: Vec<String> = seen
                    .iter()
                    .map(|(i, h, x)| {
                        format!("  {}: index {x:?} hashes {h:?}", self.members[*i].name)
                    })
                    .collect();
                panic!(
                    "members did not converge within {timeout:?}:\n{}\n{}",
                    report.join("\n"),
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Plain (local, possibly stale) read of a key on member `i`.
    pub fn get_value(&self, i: usize, key: &str) -> Result<Option<String>, String> {
        let r = http(
            self.port(i),
            "GET",
            &format!("/v2/keys{key}"),
            None,
            POLL_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        value_of(&r)
    }

    /// Polls plain GETs on member `i` until `key` has `want` (None: absent).
    pub fn wait_value(&self, i: usize, key: &str, want: Option<&str>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.get_value(i, key);
            if got.as_ref().is_ok_and(|v| v.as_deref() == want) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not show {key} = {want:?} within {timeout:?} (last: {got:?})\n{}",
                    self.members[i].name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// PUT `key` = `value` through member `i`, retrying connection errors
    /// and 5xx (elections) for up to 30 s; panics unless it ends in 200/201.
    pub fn must_put(&self, i: usize, key: &str, value: &str) -> Response {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = match put(self.port(i), key, value) {
                Ok(r) if r.code() == 200 || r.code() == 201 => return r,
                Ok(r) if r.code() < 500 => panic!(
                    "PUT {key} via {}: {} {}\n{}",
                    self.members[i].name,
                    r.code(),
                    r.body_str(),
                    self.logs()
                ),
                Ok(r) => format!("{} {}", r.code(), r.body_str()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "PUT {key} via {} kept failing (last: {last})\n{}",
                    self.members[i].name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's log tail, for failure messages.
    pub fn logs(&self) -> String {
        self.logs_tail(40)
    }

    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str(&format!(
                "----- {} (client {}, peer {}) log tail -----\n{}\n",
                m.name,
                m.client_port,
                m.peer_port,
                m.log_tail(lines)
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// HTTP with outcome classification

/// Why a call has no response.
#[derive(Debug)]
pub enum CallError {
    /// Could not connect: the request was certainly not sent.
    NotSent(io::Error),
    /// Sent (at least partly) and then failed: its effect is unknown.
    Failed(HttpError),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotSent(e) => write!(f, "not sent: {e}"),
            CallError::Failed(e) => write!(f, "failed after sending: {e}"),
        }
    }
}

/// One request on a fresh `Connection: close` connection with a deadline of
/// `timeout` for the whole exchange. `form` goes out url-encoded.
pub fn http(
    port: u16,
    method: &str,
    target: &str,
    form: Option<&str>,
    timeout: Duration,
) -> Result<Response, CallError> {
    let mut conn =
        Conn::connect(port, timeout.min(Duration::from_secs(2))).map_err(CallError::NotSent)?;
    send_request(&mut conn, port, method, target, form).map_err(CallError::Failed)?;
    read_response(&mut conn, method, Instant::now() + timeout).map_err(CallError::Failed)
}

/// Writes one `Connection: close` request on `conn`.
pub fn send_request(
    conn: &mut Conn,
    port: u16,
    method: &str,
    target: &str,
    form: Option<&str>,
) -> Result<(), HttpError> {
    super::send_form(conn, port, method, target, form, false)
}

/// `PUT /v2/keys{key}` with `value=...`, client timeout [`CLIENT_TIMEOUT`].
pub fn put(port: u16, key: &str, value: &str) -> Result<Response, CallError> {
    http(
        port,
        "PUT",
        &format!("/v2/keys{key}"),
        Some(&format!("value={}", url_encode(value))),
        CLIENT_TIMEOUT,
    )
}

/// A key's value from a `GET /v2/keys...` response: 200 -> Some(value),
/// 404 (errorCode 100) -> None, anything else an error.
pub fn value_of(r: &Response) -> Result<Option<String>, String> {
    match r.code() {
        200 => {
            let j = Json::parse(&r.body_str())?;
            match j.path(&["node", "value"]).and_then(Json::as_str) {
                Some(v) => Ok(Some(v.to_string())),
                None => Err(format!("no node.value in {}", r.body_str())),
            }
        }
        404 if error_code(r) == Some(100) => Ok(None),
        c => Err(format!("{c} {}", r.body_str())),
    }
}

/// The etcd `errorCode` of an error body.
pub fn error_code(r: &Response) -> Option<u64> {
    Json::parse(&r.body_str()).ok()?.get("errorCode")?.as_u64()
}

/// Every `key -> value` of the leaves in a (recursive) `GET /v2/keys` body.
pub fn node_values(body: &str) -> Result<BTreeMap<String, String>, String> {
    fn walk(node: &Json, out: &mut BTreeMap<String, String>) {
        if let (Some(k), Some(v)) = (
            node.get("key").and_then(Json::as_str),
            node.get("value").and_then(Json::as_str),
        ) {
            out.insert(k.to_string(), v.to_string());
        }
        for child in node.get("nodes").map(Json::items).unwrap_or_default() {
            walk(child, out);
        }
    }
    let j = Json::parse(body)?;
    let mut out = BTreeMap::new();
    if let Some(node) = j.get("node") {
        walk(node, &mut out);
    }
    Ok(out)
}

/// Every string value of `"field":"..."` in `body`, in order, found by
/// scanning (wherever the field is nested).
pub fn string_fields(body: &str, field: &str) -> Vec<String> {
    let pat = format!("\"{field}\":\"");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(&pat) {
        rest = &rest[at + pat.len()..];
        let end = rest.find('"').unwrap_or(rest.len());
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// Percent-encoding for a form value or query parameter.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decoding (`+` as space).
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
