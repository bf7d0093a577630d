//! Shared harness for kardia's process-level tests: start the real `kardia`
//! binary (or, for checking recordings, the reference etcd) on free loopback
//! ports with a fresh data dir, wait until it is healthy, kill and restart it;
//! plus a minimal raw HTTP/1.1 client over `std::net::TcpStream` that decodes
//! chunked bodies and can read a streaming response incrementally.
//!
//! Nothing here knows about golden files; `tests/golden.rs` builds on it.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod json;
pub mod linearizability;
pub mod netns;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to answer `GET /health` with 200 after a start.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// kardia processes

/// A running kardia binary with its own temp dir (data dir + log file). The
/// process is SIGKILLed when the value is dropped.
pub struct Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
    /// Extra flags given at every start.
    extra_args: Vec<String>,
    /// Simulate power cuts: the binary keeps a durable image of its data dir.
    power_cut: bool,
}

impl Server {
    /// Starts kardia on free ports with a fresh data dir and waits for health.
    pub fn start() -> io::Result<Server> {
        Server::start_with(&[])
    }

    /// Like [`Server::start`], with extra flags (e.g. limits) on every start.
    pub fn start_with(args: &[&str]) -> io::Result<Server> {
        Server::launch(args, false)
    }

    /// Like [`Server::start_with`], with the power-cut simulation on: the
    /// binary keeps an image of what its fsyncs made durable
    /// (`src/storage/powercut.rs`), and [`Server::power_cut`] restarts it on
    /// that image.
    pub fn start_power_cut(args: &[&str]) -> io::Result<Server> {
        Server::launch(args, true)
    }

    /// Like [`Server::start_with`], on a copy of the data dir `from` (a
    /// backup, say).
    pub fn start_from(from: &Path, args: &[&str]) -> io::Result<Server> {
        Server::launch_in(args, false, Some(from))
    }

    fn launch(args: &[&str], power_cut: bool) -> io::Result<Server> {
        Server::launch_in(args, power_cut, None)
    }

    /// Start on free ports with a new temp dir, its data dir a copy of
    /// `from` if given.
    fn launch_in(args: &[&str], power_cut: bool, from: Option<&Path>) -> io::Result<Server> {
        let root = tempfile::Builder::new().prefix("kardia-test-").tempdir()?;
        if let Some(from) = from {
            copy_dir(from, &root.path().join("data"))?;
        }
        let mut server = Server {
            child: None,
            root,
            client_port: free_port()?,
            peer_port: free_port()?,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            power_cut,
        };
        server.spawn()?;
        Ok(server)
    }

    fn image_dir(&self) -> PathBuf {
        self.root.path().join("image")
    }

    /// Cut the power: SIGKILL, then boot with only what was fsynced (the
    /// image replaces the data dir; the next image starts as its copy).
    /// `inspect` sees the data dir as the machine boots (before kardia runs).
    pub fn power_cut(&mut self, inspect: impl FnOnce(&Path)) -> io::Result<()> {
        assert!(self.power_cut, "started without the power-cut simulation");
        self.kill();
        std::fs::remove_dir_all(self.data_dir())?;
        std::fs::rename(self.image_dir(), self.data_dir())?;
        copy_dir(&self.data_dir(), &self.image_dir())?;
        inspect(&self.data_dir());
        self.spawn()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("kardia.log")
    }

    /// The last `n` lines of the server's stdout+stderr, for failure reports.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL (no clean shutdown) and reap the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replace the extra flags given at every later start.
    pub fn set_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Kill, then start again on the same data dir and ports.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(env!("CARGO_BIN_EXE_kardia"))
            .args(["--name", "default", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(&self.extra_args)
            .envs(
                self.power_cut
                    .then(|| ("KARDIA_POWERCUT_IMAGE", self.image_dir())),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "kardia exited during startup ({status}); log tail:\n{}",
                    self.log_tail(20)
                )));
            }
            if health_ok(self.client_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "kardia not healthy within {START_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail(20)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Copy a directory tree (regular files and folders).
fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for ent in std::fs::read_dir(from)? {
        let ent = ent?;
        let target = to.join(ent.file_name());
        if ent.file_type()?.is_dir() {
            copy_dir(&ent.path(), &target)?;
        } else {
            copy_sparse(&ent.path(), &target)?;
        }
    }
    Ok(())
}

/// Copy a file's data ranges only (`SEEK_DATA`/`SEEK_HOLE`): LMDB files
/// are as long as their map (64 GiB) and almost all hole.
fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let src = File::open(from)?;
    let len = src.metadata()?.len();
    let dst = File::create(to)?;
    let fd = src.as_raw_fd();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0i64;
    while (at as u64) < len {
        // SAFETY: lseek on an open descriptor has no memory effects.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            break; // only a hole is left (ENXIO)
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        let mut pos = data;
        while pos < end {
            let n = buf.len().min((end - pos) as usize);
            src.read_exact_at(&mut buf[..n], pos as u64)?;
            dst.write_all_at(&buf[..n], pos as u64)?;
            pos += n as i64;
        }
        at = end;
    }
    dst.set_len(len)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The unsigned number after `"field":` in a JSON body, if any.
/// `kardia check DIR` must find the data dir sound.
pub fn assert_sound(dir: &Path) {
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_kardia"))
        .arg("check")
        .arg(dir)
        .output()
        .expect("run kardia check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

pub fn json_u64(body: &str, field: &str) -> Option<u64> {
    let at = body.find(&format!("\"{field}\":"))? + field.len() + 3;
    let digits: String = body[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// A loopback port that was free a moment ago.
/// A port no one listens on, for a server this test starts. It comes from
/// below the kernel's ephemeral range (32768 and up by default), which a
/// port the kernel picks (`bind` to 0) is in: the test's own outgoing
/// connections take local ports from that range, and one could take the
/// port between this check and the server's bind ("Address already in
/// use"). Each call moves on (a process-wide counter from a per-process
/// start), so parallel tests never get the same port.
pub fn free_port() -> io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919) ^ nanos()) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port below the ephemeral range"))
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

fn health_ok(port: u16) -> bool {
    matches!(request(port, "GET", "/health", None, &[]), Ok(r) if r.code() == 200)
}

// ---------------------------------------------------------------------------
// The reference etcd

/// A single-member etcd 3.4.23 started with `../shared/tools/ref-etcd` (or the
/// script named by `REF_ETCD`), in a state dir of its own. Used to check that
/// golden recordings replay deterministically. Stopped on drop.
pub struct RefEtcd {
    script: PathBuf,
    home: PathBuf,
    pub client_port: u16,
}

impl RefEtcd {
    /// The fresh-start X-Etcd-Index of a 1-member etcd 3.4.23.
    pub const INITIAL_INDEX: u64 = 3;

    /// (Re)starts etcd with wiped state and waits until it has made its three
    /// internal bootstrap writes (`/health` can pass a moment earlier).
    pub fn start(home: &Path, client_port: u16) -> io::Result<RefEtcd> {
        let script = std::env::var_os("REF_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/ref-etcd")
            });
        let etcd = RefEtcd {
            script,
            home: home.to_path_buf(),
            client_port,
        };
        let status = Command::new(&etcd.script)
            .args(["start", "1"])
            .arg(client_port.to_string())
            .arg((client_port + 10).to_string())
            .env("REF_ETCD_HOME", &etcd.home)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!("ref-etcd start failed: {status}")));
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let want = Self::INITIAL_INDEX.to_string();
        loop {
            if let Ok(r) = request(client_port, "GET", "/v2/keys/", None, &[]) {
                if r.header("X-Etcd-Index") == Some(want.as_str()) {
                    return Ok(etcd);
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("etcd did not reach its initial index"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RefEtcd {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .env("REF_ETCD_HOME", &self.home)
            .status();
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client

/// Why reading a response stopped short.
#[derive(Debug)]
pub enum HttpError {
    /// The deadline passed.
    Timeout,
    /// The peer broke the protocol or closed mid-message.
    Protocol(String),
    Io(io::Error),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Protocol(m) => write!(f, "protocol error: {m}"),
            HttpError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

/// A response as read off the wire: raw status line (no CRLF), headers in
/// arrival order (values trimmed of spaces/tabs), and the decoded body.
#[derive(Debug, Default, Clone)]
pub struct Response {
    pub status: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Set when a body read ended at its deadline (e.g. an open watch stream).
    pub timed_out: bool,
}

impl Response {
    /// The numeric status code, or 0 if the status line has none.
    pub fn code(&self) -> u16 {
        let line = String::from_utf8_lossy(&self.status);
        line.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// The first header with this name (case-insensitive), as UTF-8 if it is.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn is_chunked(&self) -> bool {
        self.header("Transfer-Encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    }

    fn content_length(&self) -> Result<Option<usize>, HttpError> {
        match self.header("Content-Length") {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| HttpError::Protocol(format!("bad Content-Length {v:?}"))),
        }
    }
}

/// How a body read should end besides its framing.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyLimit {
    /// Stop once the (streamed) body holds this many newline-terminated lines.
    pub lines: Option<usize>,
    /// For a body with neither Content-Length nor chunking: end it at EOF or
    /// after this much silence, whichever comes first (no timeout flagged).
    pub idle: Option<Duration>,
}

/// One client connection with a read buffer. Every read takes an absolute
/// deadline.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    pub fn connect(port: u16, timeout: Duration) -> io::Result<Conn> {
        let addr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// Writes everything. A reset or broken pipe is ignored: the server may
    /// answer and close before it has read the whole request.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match self.stream.write_all(data) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Reads more into the buffer. Ok(false) at EOF.
    fn fill(&mut self, deadline: Instant) -> Result<bool, HttpError> {
        if self.eof {
            return Ok(false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout);
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(HttpError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.eof = true;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Everything up to and including `sep`, or None if the peer closed first.
    fn read_until(&mut self, sep: &[u8], deadline: Instant) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            if let Some(i) = find(&self.buf, sep) {
                return Ok(Some(self.buf.drain(..i + sep.len()).collect()));
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    fn read_exact_bytes(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, HttpError> {
        while self.buf.len() < n {
            if !self.fill(deadline)? {
                return Err(HttpError::Protocol(format!(
                    "connection closed {} bytes short of a body",
                    n - self.buf.len()
                )));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// True when the peer closes the connection (with nothing more to read)
    /// before `deadline`.
    pub fn closed_by_peer(&mut self, deadline: Instant) -> bool {
        loop {
            if !self.buf.is_empty() {
                return false;
            }
            match self.fill(deadline) {
                Ok(false) => return true,
                Ok(true) => {}
                Err(_) => return false,
            }
        }
    }

    /// Status line and headers; None if the peer closed before sending any.
    pub fn read_head(&mut self, deadline: Instant) -> Result<Option<Response>, HttpError> {
        let Some(raw) = self.read_until(b"\r\n\r\n", deadline)? else {
            if self.buf.is_empty() {
                return Ok(None);
            }
            return Err(HttpError::Protocol(format!(
                "truncated response head: {:?}",
                String::from_utf8_lossy(&self.buf)
            )));
        };
        let mut lines = split_crlf(&raw[..raw.len() - 4]).into_iter();
        let mut resp = Response {
            status: lines.next().unwrap_or_default().to_vec(),
            ..Response::default()
        };
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(HttpError::Protocol(format!(
                    "bad header line {:?}",
                    String::from_utf8_lossy(line)
                )));
            };
            let value = trim_sp_tab(&line[colon + 1..]);
            resp.headers.push((line[..colon].to_vec(), value.to_vec()));
        }
        Ok(Some(resp))
    }

    /// Reads `resp`'s body per its framing (none for HEAD, 1xx, 204, 304).
    /// A deadline inside a body sets `timed_out` and keeps what was decoded.
    pub fn read_body(
        &mut self,
        resp: &mut Response,
        method: &str,
        deadline: Instant,
        limit: BodyLimit,
    ) -> Result<(), HttpError> {
        let code = resp.code();
        if method == "HEAD" || code == 204 || code == 304 || (100..200).contains(&code) {
            return Ok(());
        }
        match self.read_framed_body(resp, deadline, limit) {
            Err(HttpError::Timeout) => {
                resp.timed_out = true;
                Ok(())
            }
            other => other,
        }
    }

    fn read_framed_body(
        &mut self,
        resp: &mut Response,
        deadline: Instant,
        limit: BodyLimit,
    ) -> Result<(), HttpError> {
        if resp.is_chunked() {
            loop {
                if let Some(n) = limit.lines {
                    if resp.body.iter().filter(|&&b| b == b'\n').count() >= n {
                        return Ok(());
                    }
                }
                let line = self.read_until(b"\r\n", deadline)?.ok_or_else(|| {
                    HttpError::Protocol("connection closed inside a chunked body".into())
                })?;
                let size_text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| HttpError::Protocol(format!("bad chunk size {size_text:?}")))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    while let Some(t) = self.read_until(b"\r\n", deadline)? {
                        if t == b"\r\n" {
                            break;
                        }
                    }
                    return Ok(());
                }
                let data = self.read_exact_bytes(size, deadline)?;
                resp.body.extend_from_slice(&data);
                if self.read_exact_bytes(2, deadline)? != b"\r\n" {
                    return Err(HttpError::Protocol("chunk not followed by CRLF".into()));
                }
            }
        } else if let Some(n) = resp.content_length()? {
            resp.body = self.read_exact_bytes(n, deadline)?;
            Ok(())
        } else if let Some(idle) = limit.idle {
            loop {
                match self.fill(Instant::now() + idle) {
                    Ok(true) => continue,
                    Ok(false) | Err(HttpError::Timeout) => break,
                    Err(e) => return Err(e),
                }
            }
            resp.body = std::mem::take(&mut self.buf);
            Ok(())
        } else {
            while self.fill(deadline)? {}
            resp.body = std::mem::take(&mut self.buf);
            Ok(())
        }
    }
}

/// Builds a request. With `body`, it goes out as a url-encoded form.
/// `extra` headers replace same-named defaults; an empty value removes one.
pub fn build_request(
    port: u16,
    method: &str,
    target: &[u8],
    body: Option<&[u8]>,
    extra: &[(String, String)],
    keep_alive: bool,
) -> Vec<u8> {
    let mut headers: Vec<(String, String)> = vec![("Host".into(), format!("127.0.0.1:{port}"))];
    if !keep_alive {
        headers.push(("Connection".into(), "close".into()));
    }
    if let Some(b) = body {
        headers.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        headers.push(("Content-Length".into(), b.len().to_string()));
    }
    for (name, value) in extra {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if !value.is_empty() {
            headers.push((name.clone(), value.clone()));
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in &headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

/// One request on a fresh `Connection: close` connection; the whole response.
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    form: Option<&str>,
    extra: &[(String, String)],
) -> Result<Response, HttpError> {
    let timeout = Duration::from_secs(15);
    let mut conn = Conn::connect(port, timeout)?;
    let req = build_request(
        port,
        method,
        target.as_bytes(),
        form.map(str::as_bytes),
        extra,
        false,
    );
    conn.send(&req)?;
    read_response(&mut conn, method, Instant::now() + timeout)
}

/// Writes one request on `conn` (`form` as a url-encoded body), with
/// `Connection: close` unless `keep_alive`.
pub fn send_form(
    conn: &mut Conn,
    port: u16,
    method: &str,
    target: &str,
    form: Option<&str>,
    keep_alive: bool,
) -> Result<(), HttpError> {
    let req = build_request(
        port,
        method,
        target.as_bytes(),
        form.map(str::as_bytes),
        &[],
        keep_alive,
    );
    conn.send(&req)?;
    Ok(())
}

/// One request on `conn`, kept open (keep-alive); the whole response by
/// `deadline`. With `form`, it goes out as a url-encoded form.
pub fn request_on(
    conn: &mut Conn,
    port: u16,
    method: &str,
    target: &str,
    form: Option<&str>,
    deadline: Instant,
) -> Result<Response, HttpError> {
    send_form(conn, port, method, target, form, true)?;
    read_response(conn, method, deadline)
}

/// Reads one whole response on `conn` by `deadline`.
pub fn read_response(
    conn: &mut Conn,
    method: &str,
    deadline: Instant,
) -> Result<Response, HttpError> {
    let mut resp = conn
        .read_head(deadline)?
        .ok_or_else(|| HttpError::Protocol("connection closed without a response".into()))?;
    conn.read_body(&mut resp, method, deadline, BodyLimit::default())?;
    if resp.timed_out {
        return Err(HttpError::Timeout);
    }
    Ok(resp)
}

fn split_crlf(mut s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(i) = find(s, b"\r\n") {
        out.push(&s[..i]);
        s = &s[i + 2..];
    }
    out.push(s);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim_sp_tab(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

// ---------------------------------------------------------------------------
// Shared helpers

/// Resident memory of process `pid` in bytes (`VmRSS`), or 0 once it is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// Resident anonymous memory (the heap: not LMDB's mapped file) of `pid`.
pub fn rss_anon_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "RssAnon:")
}

fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A seed from the clock, printed so a failing run can be repeated.
pub fn time_seed() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    seed
}

/// A tiny deterministic PRNG (xorshift64*): tests print their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// True when `cmd args` runs and succeeds (a real client is installed).
pub fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .env("ETCDCTL_API", "2")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run `etcdctl` (v2 API) against `endpoints`: exit code, stdout, stderr.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .args(["--endpoints", endpoints])
        .args(args)
        .output()
        .expect("run etcdctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real client is missing: a failure on CI (`.ci/run` installs it), a
/// skip elsewhere.
pub fn missing(what: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is not installed; .ci/run installs it");
    }
    eprintln!("skipping: {what} is not installed");
    true
}

/// Open a stream watch (`GET target`): the connection and its 200 head.
pub fn open_stream(port: u16, target: &str) -> (Conn, Response) {
    let mut c = Conn::connect(port, Duration::from_secs(5)).unwrap();
    c.send(&build_request(
        port,
        "GET",
        target.as_bytes(),
        None,
        &[],
        false,
    ))
    .unwrap();
    let r = c
        .read_head(Instant::now() + Duration::from_secs(5))
        .unwrap()
        .unwrap_or_else(|| panic!("{target}: closed without an answer"));
    assert_eq!(r.code(), 200, "{target}");
    (c, r)
}
