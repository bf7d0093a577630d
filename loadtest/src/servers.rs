//! Systems under test: starting, checking, measuring and always stopping them.
//!
//! A [`System`] is what a run talks to: its client addresses plus whatever the
//! harness started for it, i.e. kardia or etcd member processes (each with a
//! fresh temporary data directory and a log file) or the built-in null server.
//! [`start`] takes a [`Kind`] and [`ServerOpts`] and returns a ready `System`
//! (every member answers and a quorum PUT succeeds) or a readable error.
//! Dropping a `System` kills its processes and removes its directories; the
//! children also get `PR_SET_PDEATHSIG`, and a Ctrl-C handler kills whatever
//! is registered in [`CHILDREN`], so nothing outlives the harness. CPU time and
//! RSS of the server processes are read from `/proc` for the report.

use crate::http;
use crate::nullserver::NullServer;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// PIDs of every server process alive, for the Ctrl-C handler.
pub static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Data directories of live systems, removed by the Ctrl-C handler too.
pub static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Which system to run against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// kardia, with these extra flags (`--kardia-args`, split on spaces).
    Kardia(String),
    Etcd,
    Null,
    /// Already running at these client URLs.
    External(Vec<String>),
}

impl Kind {
    pub fn label(&self) -> String {
        match self {
            Kind::Kardia(args) if args.trim().is_empty() => "kardia".into(),
            Kind::Kardia(args) => format!("kardia {}", args.trim()),
            Kind::Etcd => "etcd".into(),
            Kind::Null => "null".into(),
            Kind::External(urls) => urls.join(","),
        }
    }
}

/// Settings shared by every system started in one invocation.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    pub members: usize,
    /// CPUs for server processes (empty = not pinned).
    pub server_cpus: Vec<usize>,
    pub install_etcd: bool,
    pub kardia_bin: Option<PathBuf>,
    pub etcd_bin: Option<PathBuf>,
    /// Do not run cargo to build kardia when its binary is missing.
    pub no_build: bool,
}

/// One started (or external) member process.
pub struct Member {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// A ready system under test.
pub struct System {
    pub label: String,
    pub addrs: Vec<SocketAddr>,
    pub urls: Vec<String>,
    pub members: Vec<Member>,
    pub null: Option<NullServer>,
    pub version: Option<String>,
    /// Owns the data directories (removed on drop, after the processes die).
    _dir: Option<tempfile::TempDir>,
}

impl System {
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// Total CPU seconds (user + system) used so far by the server processes.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pids = self.pids();
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| proc_cpu_seconds(*p)).sum()
    }

    /// Total resident memory of the server processes, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let pids = self.pids();
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| proc_rss_bytes(*p)).sum()
    }

    /// Kills every process (SIGTERM, then SIGKILL after 2 s).
    pub fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let pid = child.id();
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                CHILDREN
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|p| *p != pid);
            }
        }
        self.null = None;
        if let Some(dir) = &self._dir {
            DIRS.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|d| d != dir.path());
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pins the calling thread to `cpus` (ignored if that fails).
pub fn pin_current_thread(cpus: &[usize]) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Kills every registered server process and removes the data directories
/// (the abort path, where destructors do not run).
pub fn kill_all_children() {
    let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for p in &pids {
        unsafe {
            libc::kill(*p as libc::pid_t, libc::SIGKILL);
            libc::waitpid(*p as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
    for d in DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A port no one listens on, from below the kernel's ephemeral range
/// (32768 and up by default): a port the kernel picks is in that range,
/// where this harness's own outgoing connections take their local ports,
/// and one could take it before the server binds it. A process-wide counter
/// from a per-process start moves on at each call.
fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919) ^ seed) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free port below the ephemeral range",
    ))
}

/// Starts (or attaches to) a system and waits until it serves.
pub fn start(kind: &Kind, opts: &ServerOpts) -> Result<System, String> {
    match kind {
        Kind::Null => {
            let null = NullServer::start(opts.server_cpus.first().copied())
                .map_err(|e| format!("null server: {e}"))?;
            let addr = null.addr;
            Ok(System {
                label: "null".into(),
                addrs: vec![addr],
                urls: vec![format!("http://{addr}")],
                members: Vec::new(),
                null: Some(null),
                version: None,
                _dir: None,
            })
        }
        Kind::External(urls) => {
            let addrs = urls
                .iter()
                .map(|u| parse_url(u))
                .collect::<Result<Vec<_>, _>>()?;
            let sys = System {
                label: kind.label(),
                addrs,
                urls: urls.clone(),
                members: Vec::new(),
                null: None,
                version: None,
                _dir: None,
            };
            for a in &sys.addrs {
                wait_http(*a, Duration::from_secs(5), &mut || Ok(()))
                    .map_err(|e| format!("{a}: {e}"))?;
            }
            Ok(sys)
        }
        Kind::Kardia(_) | Kind::Etcd => start_processes(kind, opts),
    }
}

/// `http://host:port[/...]` → socket address (loopback or numeric only).
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .map_err(|_| format!("{url}: need http://IP:PORT"))
}

fn start_processes(kind: &Kind, opts: &ServerOpts) -> Result<System, String> {
    let members = opts.members.max(1);
    let (bin, version) = match kind {
        Kind::Etcd => {
            let bin = find_etcd(opts)?;
            let v = etcd_version(&bin);
            (bin, v)
        }
        _ => {
            let bin = find_kardia(opts)?;
            let v = kardia_version(&bin);
            (bin, v)
        }
    };
    let dir = tempfile::Builder::new()
        .prefix(&format!("kardia-loadtest-{}-", kind.label()))
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let mut ports = Vec::new();
    for _ in 0..2 * members {
        ports.push(free_port().map_err(|e| format!("free port: {e}"))?);
    }
    let prefix = if *kind == Kind::Etcd {
        "etcd"
    } else {
        "kardia"
    };
    let names: Vec<String> = (0..members).map(|i| format!("{prefix}{i}")).collect();
    let client = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
    let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
    let cluster = (0..members)
        .map(|i| format!("{}={}", names[i], peer(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut sys = System {
        label: kind.label(),
        addrs: Vec::new(),
        urls: Vec::new(),
        members: Vec::new(),
        null: None,
        version,
        _dir: None,
    };
    for (i, name) in names.iter().enumerate() {
        let data = dir.path().join(name);
        let log = dir.path().join(format!("{name}.log"));
        let logf = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(&bin);
        if *kind == Kind::Etcd {
            cmd.arg("--enable-v2");
        }
        cmd.arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(client(i))
            .arg("--advertise-client-urls")
            .arg(client(i))
            .arg("--listen-peer-urls")
            .arg(peer(i))
            .arg("--initial-advertise-peer-urls")
            .arg(peer(i))
            .arg("--initial-cluster")
            .arg(&cluster);
        if *kind == Kind::Etcd {
            cmd.arg("--initial-cluster-state").arg("new");
        }
        if let Kind::Kardia(args) = kind {
            cmd.args(args.split_whitespace());
        }
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf);
        let cpus = opts.server_cpus.clone();
        // SAFETY: only async-signal-safe calls (prctl, sched_setaffinity) run in the child.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if !cpus.is_empty() {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for &c in &cpus {
                        libc::CPU_SET(c, &mut set);
                    }
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        sys.members.push(Member {
            name: name.clone(),
            child: Some(child),
            log,
        });
        sys.urls.push(client(i));
        sys.addrs.push(parse_url(&client(i))?);
    }
    DIRS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.path().to_path_buf());
    sys._dir = Some(dir);
    let deadline = Duration::from_secs(if members > 1 { 30 } else { 20 });
    for i in 0..members {
        let addr = sys.addrs[i];
        let res = {
            let member = &mut sys.members[i];
            wait_http(
                addr,
                deadline,
                &mut || match member.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Err(format!("exited ({status})")),
                    _ => Ok(()),
                },
            )
        };
        if let Err(e) = res {
            let m = &sys.members[i];
            let tail = log_tail(&m.log, 6);
            return Err(format!(
                "{} {} did not come up: {e}{}",
                sys.label, m.name, tail
            ));
        }
    }
    // A quorum write proves the cluster has a leader.
    let until = Instant::now() + deadline;
    loop {
        let put = http::render(
            "PUT",
            "loadtest",
            "/v2/keys/_loadtest/ready",
            Some("value=1"),
        );
        match raw_request(sys.addrs[0], &put) {
            Ok((200 | 201, _)) => break,
            r if Instant::now() > until => {
                return Err(format!(
                    "{} answered but a PUT did not succeed: {r:?}",
                    sys.label
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Ok(sys)
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return " (log empty)".into();
    }
    let tail = all[all.len().saturating_sub(lines)..].join("\n    ");
    format!("; log tail:\n    {tail}")
}

/// One blocking request (setup paths only): returns (status, body).
pub fn raw_request(addr: SocketAddr, req: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(req).map_err(|e| e.to_string())?;
    let mut reader = http::ResponseReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut fed: &[u8] = &[];
    loop {
        if let Some(r) = reader.feed(fed).map_err(|e| e.to_string())? {
            return Ok((r.status, r.body.to_vec()));
        }
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        fed = &buf[..n];
    }
}

/// Polls `GET /v2/keys/` until any HTTP answer arrives; `alive` reports a dead process.
fn wait_http(
    addr: SocketAddr,
    limit: Duration,
    alive: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let until = Instant::now() + limit;
    let req = http::render("GET", "loadtest", "/v2/keys/", None);
    let mut last = String::new();
    while Instant::now() < until {
        alive()?;
        match raw_request(addr, &req) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no HTTP answer within {limit:?} ({last})"))
}

fn find_etcd(opts: &ServerOpts) -> Result<PathBuf, String> {
    if let Some(b) = &opts.etcd_bin {
        return Ok(b.clone());
    }
    if let Some(p) = which("etcd") {
        return Ok(p);
    }
    if opts.install_etcd {
        eprintln!("installing Debian's etcd-server with apt-get ...");
        let ok = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if let (true, Some(p)) = (ok, which("etcd")) {
            return Ok(p);
        }
        return Err("apt-get install etcd-server failed".into());
    }
    Err("etcd not found on PATH (pass --install-etcd to install Debian's etcd-server, or --etcd-bin)".into())
}

fn etcd_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        l.strip_prefix("etcd Version: ")
            .map(|v| v.trim().to_string())
    })
}

/// `kardia --version` prints `kardia X.Y.Z`. Bounded to 2 s, in case a build
/// without the flag starts serving instead.
fn kardia_version(bin: &Path) -> Option<String> {
    let mut child = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let until = Instant::now() + Duration::from_secs(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut text = String::new();
    child.stdout.take()?.read_to_string(&mut text).ok()?;
    let line = text.lines().next()?.trim().to_string();
    status
        .success()
        .then(|| line.strip_prefix("kardia ").unwrap_or(&line).to_string())
}

/// Looks `name` up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The cargo target directory: `CARGO_TARGET_DIR`, else the nearest ancestor of
/// this executable holding `CACHEDIR.TAG`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe
            .ancestors()
            .skip(1)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
        {
            return d.to_path_buf();
        }
    }
    workspace_root().join("target")
}

/// The workspace root this harness was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn find_kardia(opts: &ServerOpts) -> Result<PathBuf, String> {
    if let Some(b) = &opts.kardia_bin {
        return if b.is_file() {
            Ok(b.clone())
        } else {
            Err(format!("{}: no such file", b.display()))
        };
    }
    let bin = target_dir().join("release").join("kardia");
    if bin.is_file() {
        return Ok(bin);
    }
    if opts.no_build {
        return Err(format!(
            "{} not found (build it with cargo build --release -p kardia)",
            bin.display()
        ));
    }
    eprintln!(
        "{} not found; running cargo build --release -p kardia ...",
        bin.display()
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-p", "kardia"])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() || !bin.is_file() {
        return Err(format!("cargo build --release -p kardia failed ({status})"));
    }
    Ok(bin)
}

fn clock_ticks() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in seconds.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident set size of a process, in bytes.
pub fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert_eq!(
            parse_url("http://localhost:4001/v2").unwrap(),
            "127.0.0.1:4001".parse().unwrap()
        );
        assert!(parse_url("https://x:1").is_err());
    }

    #[test]
    fn reads_own_cpu_and_rss() {
        let me = std::process::id();
        assert!(proc_cpu_seconds(me).is_some());
        assert!(proc_rss_bytes(me).unwrap() > 0);
    }

    #[test]
    fn null_system_answers() {
        let sys = start(&Kind::Null, &ServerOpts::default()).unwrap();
        let (status, body) =
            raw_request(sys.addrs[0], &http::render("GET", "h", "/v2/keys/a", None)).unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with(br#"{"action":"get""#));
    }
}
