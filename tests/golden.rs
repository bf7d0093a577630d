//! Golden conformance tests: replays every scenario in `tests/golden/*.txt`
//! (responses recorded from etcd 3.4.23 by `tests/golden/record.py`) against a
//! freshly started kardia per scenario, and fails listing every scenario whose
//! answers differ, with a diff at the first mismatch.
//!
//! The file format, the commands and the normalisation are documented in
//! `tests/golden/README.md`; this file and `record.py` implement the same
//! rules and must change together.
//!
//! Environment:
//! * `KARDIA_GOLDEN_FILTER=a,b` runs only scenarios whose name contains `a` or `b`.
//! * `KARDIA_GOLDEN_JOBS=N` runs N scenarios at once (default 2).
//! * `KARDIA_GOLDEN_TARGET=etcd` replays against a fresh reference etcd per
//!   scenario instead (`../shared/tools/ref-etcd`, or `REF_ETCD`; serial; port
//!   `KARDIA_GOLDEN_ETCD_PORT`, default 23990). This checks that the
//!   recordings are deterministic.

mod common;

use common::{BodyLimit, Conn, HttpError, RefEtcd, Response, Server};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// An ordinary request, including a 10 MiB upload.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default wait of an AWAIT, and of a WATCH for its response head.
const AWAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Silence that ends an unframed RAW response (Go's 400s to malformed requests).
const RAW_IDLE: Duration = Duration::from_secs(1);

const TIMEOUT_NOTE: &str = "(no more data before timeout)";
const CLOSED_NOTE: &str = "(connection closed without a response)";
const NO_RESPONSE_NOTE: &str = "(no response before timeout)";
const NO_HEAD_NOTE: &str = "(no response head before timeout)";

const DROP_HEADERS: [&str; 4] = ["date", "content-length", "transfer-encoding", "connection"];

// ---------------------------------------------------------------------------
// Scenario files

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Compare the whole normalised response.
    Full,
    /// Compare the status code only.
    Status,
    /// Compare with every run of digits in bodies replaced by `N`.
    Shape,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Status => "status",
            Mode::Shape => "shape",
        }
    }
}

struct Block {
    line: usize,
    command: String,
    output: Vec<String>,
}

struct Scenario {
    mode: Mode,
    /// `# replay: etcd-only`: documents etcd; not replayed against kardia.
    etcd_only: bool,
    blocks: Vec<Block>,
}

fn parse_scenario(text: &str) -> Result<Scenario, String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let header: Vec<&str> = lines
        .iter()
        .take_while(|l| l.starts_with('#'))
        .copied()
        .collect();
    if header.is_empty() {
        return Err("a scenario starts with # title lines".into());
    }
    let mut mode = Mode::Full;
    let mut etcd_only = false;
    for h in &header {
        let h = h.trim_start_matches('#').trim();
        if let Some(m) = h.strip_prefix("compare:") {
            mode = match m.trim() {
                "full" => Mode::Full,
                "status" => Mode::Status,
                "shape" => Mode::Shape,
                other => return Err(format!("unknown compare mode {other:?}")),
            };
        } else if let Some(r) = h.strip_prefix("replay:") {
            etcd_only = r.trim().starts_with("etcd-only");
        }
    }
    let mut blocks: Vec<Block> = Vec::new();
    let mut pending_comments = false;
    for (i, line) in lines.iter().enumerate().skip(header.len()) {
        if let Some(cmd) = line.strip_prefix("> ") {
            blocks.push(Block {
                line: i + 1,
                command: cmd.to_string(),
                output: Vec::new(),
            });
            pending_comments = false;
        } else if line.starts_with('#') {
            pending_comments = true;
        } else if !blocks.is_empty() && !pending_comments {
            blocks.last_mut().unwrap().output.push(line.to_string());
        } else if !line.trim().is_empty() {
            return Err(format!("line {}: text outside a block: {line:?}", i + 1));
        }
    }
    if pending_comments {
        return Err("comment lines after the last command".into());
    }
    for b in &mut blocks {
        while b.output.last().is_some_and(|l| l.trim().is_empty()) {
            b.output.pop();
        }
    }
    Ok(Scenario {
        mode,
        etcd_only,
        blocks,
    })
}

/// `{{abc*3}}` -> `abcabcabc`.
fn expand(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match expansion(after) {
            Some((piece, count, used)) => {
                out.push_str(&piece.repeat(count));
                rest = &after[used..];
            }
            None => {
                out.push('{');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses `piece*count}}` at the start of `s`: (piece, count, bytes used).
fn expansion(s: &str) -> Option<(&str, usize, usize)> {
    let star = s.find(['*', '{', '}'])?;
    if star == 0 || !s[star..].starts_with('*') {
        return None;
    }
    let digits = s[star + 1..].bytes().take_while(u8::is_ascii_digit).count();
    let end = star + 1 + digits;
    if digits == 0 || !s[end..].starts_with("}}") {
        return None;
    }
    Some((&s[..star], s[star + 1..end].parse().ok()?, end + 2))
}

/// A double-quoted string with `\r \n \t \0 \\ \" \xNN` escapes -> bytes.
fn unquote(text: &str) -> Result<Vec<u8>, String> {
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(|| format!("expected a double-quoted string, got {text:?}"))?;
    let mut out = Vec::new();
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some((_, 'r')) => out.push(b'\r'),
            Some((_, 'n')) => out.push(b'\n'),
            Some((_, 't')) => out.push(b'\t'),
            Some((_, '0')) => out.push(0),
            Some((_, '\\')) => out.push(b'\\'),
            Some((_, '"')) => out.push(b'"'),
            Some((_, 'x')) => {
                let hex = inner.get(i + 2..i + 4).ok_or("short \\x escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad \\x{hex}"))?);
                chars.next();
                chars.next();
            }
            other => return Err(format!("unknown escape {other:?} in {text:?}")),
        }
    }
    Ok(out)
}

struct Request {
    method: String,
    target: String,
    body: Option<Vec<u8>>,
    extra: Vec<(String, String)>,
}

/// `METHOD TARGET [BODY] [| Name: value]...`
fn parse_request(words: &str) -> Result<Request, String> {
    let mut parts = words.split(" | ");
    let head = parts.next().unwrap_or("").trim();
    let mut extra = Vec::new();
    for h in parts {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("bad header {h:?}"))?;
        extra.push((name.trim().to_string(), value.trim().to_string()));
    }
    let (method, rest) = split_word(head);
    let (target, rest) = split_word(rest);
    if method.is_empty() || target.is_empty() {
        return Err(format!("expected METHOD TARGET [BODY], got {head:?}"));
    }
    let body = match rest.trim() {
        "" => None,
        b if b.starts_with('"') => Some(unquote(b)?),
        b => Some(b.as_bytes().to_vec()),
    };
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        body,
        extra,
    })
}

/// The first whitespace-separated word and the rest after its whitespace.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

// ---------------------------------------------------------------------------
// Normalisation and rendering

/// Bytes -> text: UTF-8, except that invalid bytes and control characters
/// (C0 other than newline and tab, DEL, C1) are written as `\xNN` per byte.
fn show(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b < 0x80 {
            if (b < 0x20 && b != b'\t' && b != b'\n') || b == 0x7f {
                let _ = write!(out, "\\x{b:02x}");
            } else {
                out.push(b as char);
            }
            i += 1;
            continue;
        }
        let n = match b {
            0xf0.. => 4,
            0xe0.. => 3,
            0xc2.. => 2,
            _ => 0,
        };
        if n > 0 && i + n <= data.len() {
            if let Ok(s) = std::str::from_utf8(&data[i..i + n]) {
                let c1_control = s
                    .chars()
                    .next()
                    .is_some_and(|c| ('\u{80}'..='\u{9f}').contains(&c));
                if !c1_control {
                    out.push_str(s);
                    i += n;
                    continue;
                }
            }
        }
        let _ = write!(out, "\\x{b:02x}");
        i += 1;
    }
    out
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Whether a masked header's value has the shape it must have to be masked.
fn mask_ok(name: &str, value: &[u8]) -> bool {
    let decimal = |v: &[u8]| {
        v == b"0"
            || (v.first().is_some_and(|&d| (b'1'..=b'9').contains(&d))
                && v.iter().all(u8::is_ascii_digit))
    };
    match name {
        "x-raft-index" | "x-raft-term" => decimal(value),
        // lowercase hex without zero padding
        "x-etcd-cluster-id" => {
            value.first().is_some_and(|&d| d != b'0')
                && value
                    .iter()
                    .all(|&c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        }
        _ => false,
    }
}

/// Replaces `"expiration":"<UTC RFC3339Nano>"` by `"expiration":"*"`; a
/// timestamp of any other shape stays visible.
fn mask_expiration(text: &str) -> String {
    const KEY: &str = "\"expiration\":\"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(KEY) {
        out.push_str(&rest[..i + KEY.len()]);
        rest = &rest[i + KEY.len()..];
        if let Some(len) = rfc3339_utc_len(rest.as_bytes()) {
            out.push_str("*\"");
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    out
}

/// Length of `YYYY-MM-DDTHH:MM:SS[.fraction without trailing 0s]Z"` at the
/// start of `s`, if it is there.
fn rfc3339_utc_len(s: &[u8]) -> Option<usize> {
    let pattern = b"dddd-dd-ddTdd:dd:dd";
    if s.len() < pattern.len() {
        return None;
    }
    for (c, p) in s.iter().zip(pattern) {
        let ok = if *p == b'd' {
            c.is_ascii_digit()
        } else {
            c == p
        };
        if !ok {
            return None;
        }
    }
    let mut i = pattern.len();
    if s.get(i) == Some(&b'.') {
        let digits = s[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) || s[i + digits] == b'0' {
            return None;
        }
        i += 1 + digits;
    }
    (s.get(i..i + 2) == Some(b"Z\"")).then_some(i + 2)
}

fn mask_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// The normalised text of one response (no trailing newline).
fn render(resp: Option<&Response>, mode: Mode) -> String {
    let Some(resp) = resp else {
        return CLOSED_NOTE.to_string();
    };
    let status = resp
        .status
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| resp.status.strip_prefix(b"HTTP/1.0 "))
        .unwrap_or(&resp.status);
    let mut lines = vec![show(status)];
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in &resp.headers {
        let low = latin1(name).to_ascii_lowercase();
        if DROP_HEADERS.contains(&low.as_str()) {
            continue;
        }
        let value: &[u8] = if mask_ok(&low, value) { b"*" } else { value };
        let line = [name.as_slice(), b": ", value].concat();
        headers.push((low, show(&line)));
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0)); // stable: repeated headers keep their order
    lines.extend(headers.into_iter().map(|h| h.1));
    let mut text = mask_expiration(&show(&resp.body));
    if mode == Mode::Shape {
        text = mask_digits(&text);
    }
    if !text.is_empty() {
        lines.push(String::new());
        if let Some(body) = text.strip_suffix('\n') {
            lines.extend(body.split('\n').map(str::to_string));
            if text == "\n" || text.ends_with("\n\n") {
                lines.push("(end of body)".into());
            }
        } else {
            lines.extend(text.split('\n').map(str::to_string));
            lines.push("(no newline at end)".into());
        }
    }
    if resp.timed_out {
        lines.push(TIMEOUT_NOTE.into());
    }
    lines.join("\n")
}

/// The part of a rendered response a comparison looks at: in status mode the
/// status code alone (or the whole first line when it is a marker).
fn compared(text: &str, mode: Mode) -> &str {
    if mode != Mode::Status {
        return text;
    }
    let first = text.split('\n').next().unwrap_or("");
    let code = first.split(' ').next().unwrap_or("");
    if !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit()) {
        code
    } else {
        first
    }
}

// ---------------------------------------------------------------------------
// Running commands

enum WatchHead {
    Got(Option<Response>),
    TimedOut,
}

struct Watch {
    conn: Conn,
    method: String,
    head: WatchHead,
}

struct Runner {
    port: u16,
    mode: Mode,
    watches: HashMap<String, Watch>,
}

impl Runner {
    fn lines(&self, resp: Option<&Response>) -> Vec<String> {
        render(resp, self.mode)
            .split('\n')
            .map(str::to_string)
            .collect()
    }

    fn bytes(&self, req: &Request, keep_alive: bool) -> Vec<u8> {
        common::build_request(
            self.port,
            &req.method,
            req.target.as_bytes(),
            req.body.as_deref(),
            &req.extra,
            keep_alive,
        )
    }

    /// A fresh connection with `bytes` sent on it.
    fn send(&self, bytes: &[u8]) -> Result<Conn, String> {
        let mut conn =
            Conn::connect(self.port, REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        conn.send(bytes).map_err(|e| format!("send: {e}"))?;
        Ok(conn)
    }

    /// Executes one command; returns its output lines.
    fn run(&mut self, command: &str) -> Result<Vec<String>, String> {
        let (word, rest) = command.split_once(' ').unwrap_or((command, ""));
        let rest = expand(rest);
        let http = |e: HttpError| e.to_string();
        match word {
            "SLEEP" => {
                let secs: f64 = rest
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad SLEEP {rest:?}"))?;
                thread::sleep(Duration::from_secs_f64(secs));
                Ok(Vec::new())
            }
            "RAW" => {
                let mut conn = self.send(&unquote(rest.trim())?)?;
                let deadline = Instant::now() + REQUEST_TIMEOUT;
                let mut resp = match conn.read_head(deadline) {
                    Err(HttpError::Timeout) => return Ok(vec![NO_RESPONSE_NOTE.into()]),
                    other => other.map_err(http)?,
                };
                if let Some(r) = resp.as_mut() {
                    let limit = BodyLimit {
                        idle: Some(RAW_IDLE),
                        ..BodyLimit::default()
                    };
                    conn.read_body(r, "GET", deadline, limit).map_err(http)?;
                }
                Ok(self.lines(resp.as_ref()))
            }
            "REPEAT" => {
                let (count, req) = rest.split_once(' ').ok_or("REPEAT N REQUEST")?;
                let count: usize = count.parse().map_err(|_| format!("bad count {count:?}"))?;
                self.repeat(count, &parse_request(req)?)
            }
            "WATCH" => {
                let (name, req) = rest.split_once(' ').ok_or("WATCH NAME REQUEST")?;
                if self.watches.contains_key(name) {
                    return Err(format!("watch {name} already exists"));
                }
                let req = parse_request(req)?;
                let mut conn = self.send(&self.bytes(&req, false))?;
                // The server flushes the head once the watcher is registered;
                // waiting for it orders the watch before the next request.
                let (head, out) = match conn.read_head(Instant::now() + AWAIT_TIMEOUT) {
                    Err(HttpError::Timeout) => {
                        (WatchHead::TimedOut, vec![NO_HEAD_NOTE.to_string()])
                    }
                    other => (WatchHead::Got(other.map_err(http)?), Vec::new()),
                };
                let watch = Watch {
                    conn,
                    method: req.method,
                    head,
                };
                self.watches.insert(name.to_string(), watch);
                Ok(out)
            }
            "AWAIT" => {
                let mut args = rest.split_whitespace();
                let name = args.next().ok_or("AWAIT NAME")?;
                let (mut lines, mut timeout) = (None, AWAIT_TIMEOUT);
                for a in args {
                    if let Some(t) = a.strip_prefix("timeout=") {
                        let secs: f64 = t.parse().map_err(|_| format!("bad timeout {t:?}"))?;
                        timeout = Duration::from_secs_f64(secs);
                    } else {
                        lines = Some(a.parse().map_err(|_| format!("bad event count {a:?}"))?);
                    }
                }
                let mut w = self
                    .watches
                    .remove(name)
                    .ok_or_else(|| format!("no watch named {name}"))?;
                let deadline = Instant::now() + timeout;
                let mut resp = match w.head {
                    WatchHead::Got(r) => r,
                    WatchHead::TimedOut => match w.conn.read_head(deadline) {
                        Err(HttpError::Timeout) => return Ok(vec![NO_RESPONSE_NOTE.into()]),
                        other => other.map_err(http)?,
                    },
                };
                if let Some(r) = resp.as_mut() {
                    let limit = BodyLimit {
                        lines,
                        ..BodyLimit::default()
                    };
                    w.conn
                        .read_body(r, &w.method, deadline, limit)
                        .map_err(http)?;
                }
                Ok(self.lines(resp.as_ref()))
            }
            _ if is_method(word) => {
                let req = parse_request(&expand(command))?;
                let mut conn = self.send(&self.bytes(&req, false))?;
                let deadline = Instant::now() + REQUEST_TIMEOUT;
                let mut resp = conn.read_head(deadline).map_err(http)?;
                if let Some(r) = resp.as_mut() {
                    conn.read_body(r, &req.method, deadline, BodyLimit::default())
                        .map_err(http)?;
                }
                Ok(self.lines(resp.as_ref()))
            }
            _ => Err(format!("unknown command {command:?}")),
        }
    }

    /// `count` requests over one keep-alive connection; a status summary.
    fn repeat(&self, count: usize, req: &Request) -> Result<Vec<String>, String> {
        let bytes = self.bytes(req, true);
        let mut conn = self.send(&bytes)?;
        let mut counts: Vec<(usize, String)> = Vec::new();
        for i in 0..count {
            if i > 0 {
                conn.send(&bytes).map_err(|e| format!("send: {e}"))?;
            }
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            let mut resp = conn
                .read_head(deadline)
                .map_err(|e| e.to_string())?
                .ok_or("connection closed during REPEAT")?;
            conn.read_body(&mut resp, &req.method, deadline, BodyLimit::default())
                .map_err(|e| e.to_string())?;
            let status = latin1(
                resp.status
                    .strip_prefix(b"HTTP/1.1 ")
                    .unwrap_or(&resp.status),
            );
            match counts.last_mut() {
                Some((n, s)) if *s == status => *n += 1,
                _ => counts.push((1, status)),
            }
        }
        Ok(counts
            .into_iter()
            .map(|(n, s)| format!("{n}x {s}"))
            .collect())
    }
}

/// Any other upper-case word is an HTTP method (as in record.py).
fn is_method(word: &str) -> bool {
    word.chars().any(char::is_alphabetic) && !word.chars().any(char::is_lowercase)
}

// ---------------------------------------------------------------------------
// Scenarios against a target

enum Target {
    Kardia,
    Etcd { home: PathBuf, port: u16 },
}

impl Target {
    fn from_env() -> Target {
        match std::env::var("KARDIA_GOLDEN_TARGET").as_deref() {
            Ok("etcd") => Target::Etcd {
                home: std::env::temp_dir().join("kardia-golden-replay-etcd"),
                port: std::env::var("KARDIA_GOLDEN_ETCD_PORT")
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(23990),
            },
            Ok("" | "kardia") | Err(_) => Target::Kardia,
            Ok(other) => panic!("KARDIA_GOLDEN_TARGET={other:?}: expected kardia or etcd"),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Target::Kardia => "kardia",
            Target::Etcd { .. } => "etcd",
        }
    }
}

enum Outcome {
    Pass,
    Skipped,
    Mismatch(String),
    Error(String),
}

fn run_scenario(sc: &Scenario, target: &Target, shards: usize) -> Outcome {
    match target {
        Target::Kardia => {
            if sc.etcd_only {
                return Outcome::Skipped;
            }
            let server = match Server::start_with(&["--shards", &shards.to_string()]) {
                Ok(s) => s,
                Err(e) => return Outcome::Error(format!("could not start kardia: {e}")),
            };
            let with_log = |m: String| {
                format!(
                    "{m}\nkardia log (last lines):\n{}",
                    indent(&server.log_tail(15))
                )
            };
            match replay(sc, server.client_port, target) {
                Outcome::Mismatch(m) => Outcome::Mismatch(with_log(m)),
                Outcome::Error(m) => Outcome::Error(with_log(m)),
                other => other,
            }
        }
        Target::Etcd { home, port } => {
            let _etcd = match RefEtcd::start(home, *port) {
                Ok(e) => e,
                Err(e) => return Outcome::Error(format!("could not start etcd: {e}")),
            };
            replay(sc, *port, target)
        }
    }
}

fn replay(sc: &Scenario, port: u16, target: &Target) -> Outcome {
    let mut runner = Runner {
        port,
        mode: sc.mode,
        watches: HashMap::new(),
    };
    for (i, block) in sc.blocks.iter().enumerate() {
        let actual = match runner.run(&block.command) {
            Ok(lines) => lines,
            Err(e) => {
                return Outcome::Error(format!(
                    "command {} (line {}) failed: {e}\n  > {}",
                    i + 1,
                    block.line,
                    short(&block.command, 200)
                ))
            }
        };
        let (want, got) = (block.output.join("\n"), actual.join("\n"));
        if compared(&want, sc.mode) != compared(&got, sc.mode) {
            let mut report = format!(
                "mismatch at command {} (line {}, compare: {})\n  > {}\n",
                i + 1,
                block.line,
                sc.mode.name(),
                short(&block.command, 200)
            );
            report.push_str(&diff(&block.output, &actual, target.label()));
            return Outcome::Mismatch(report);
        }
    }
    Outcome::Pass
}

/// A line diff (LCS) of expected vs actual, then the first differing line
/// pair with a caret under the first differing character.
fn diff(want: &[String], got: &[String], label: &str) -> String {
    let (n, m) = (want.len(), got.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if want[i] == got[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("  --- expected (etcd 3.4.23)\n  +++ actual ({label})\n");
    let (mut i, mut j) = (0, 0);
    let mut first: Option<(String, String)> = None;
    while i < n || j < m {
        if i < n && j < m && want[i] == got[j] {
            let _ = writeln!(out, "    {}", short(&want[i], 160));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "  - {}", short(&want[i], 160));
            if first.is_none() {
                first = Some((want[i].clone(), got.get(j).cloned().unwrap_or_default()));
            }
            i += 1;
        } else {
            let _ = writeln!(out, "  + {}", short(&got[j], 160));
            if first.is_none() {
                first = Some((want.get(i).cloned().unwrap_or_default(), got[j].clone()));
            }
            j += 1;
        }
    }
    if let Some((w, g)) = first {
        let col = w.chars().zip(g.chars()).take_while(|(a, b)| a == b).count();
        let start = col.saturating_sub(40);
        let window = |s: &str| s.chars().skip(start).take(100).collect::<String>();
        let _ = writeln!(out, "  first difference at column {}:", col + 1);
        let _ = writeln!(out, "    expected: {}", window(&w));
        let _ = writeln!(out, "    actual:   {}", window(&g));
        let _ = writeln!(out, "              {}^", " ".repeat(col - start));
    }
    out
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}... ({} chars)", s.chars().count())
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let filters: Vec<String> = std::env::var("KARDIA_GOLDEN_FILTER")
        .unwrap_or_default()
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn golden_scenarios() {
    let files = scenario_files();
    assert!(!files.is_empty(), "no golden scenarios selected");
    let target = Target::from_env();
    let jobs = match target {
        Target::Etcd { .. } => 1, // one ref-etcd home and port
        Target::Kardia => std::env::var("KARDIA_GOLDEN_JOBS")
            .ok()
            .and_then(|j| j.parse().ok())
            .unwrap_or(2usize)
            .max(1),
    };
    // Every scenario at every shard width: the answers must not depend on
    // how the keyspace is split (KARDIA_GOLDEN_SHARDS=1,4 narrows it).
    let widths: Vec<usize> = match target {
        Target::Etcd { .. } => vec![1],
        Target::Kardia => std::env::var("KARDIA_GOLDEN_SHARDS")
            .unwrap_or_else(|_| "1,2,4,8".into())
            .split(',')
            .filter_map(|w| w.trim().parse().ok())
            .collect(),
    };
    let queue = Mutex::new(
        files
            .iter()
            .flat_map(|f| widths.iter().map(move |&w| (f.clone(), w)))
            .collect::<VecDeque<_>>(),
    );
    let results = Mutex::new(Vec::new());
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let Some((path, shards)) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let mut name = path.file_name().unwrap().to_string_lossy().into_owned();
                if matches!(target, Target::Kardia) {
                    name = format!("{name} [shards={shards}]");
                }
                let t0 = Instant::now();
                let outcome = match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| parse_scenario(&text))
                {
                    Ok(sc) => run_scenario(&sc, &target, shards),
                    Err(e) => Outcome::Error(format!("bad scenario file: {e}")),
                };
                let verdict = match &outcome {
                    Outcome::Pass => "ok",
                    Outcome::Skipped => "skipped (etcd-only)",
                    Outcome::Mismatch(_) | Outcome::Error(_) => "FAILED",
                };
                eprintln!(
                    "golden {name:<62} {verdict} ({:.1}s)",
                    t0.elapsed().as_secs_f64()
                );
                results.lock().unwrap().push((name, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut report = String::new();
    let mut failed = Vec::new();
    for (name, outcome) in &results {
        if let Outcome::Mismatch(m) | Outcome::Error(m) = outcome {
            let _ = writeln!(report, "\n=== {name}: {m}");
            failed.push(name.as_str());
        }
    }
    let skipped = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Skipped))
        .count();
    eprintln!(
        "golden: {} scenarios against {}, {} failed, {} skipped, {:.1}s",
        results.len(),
        target.label(),
        failed.len(),
        skipped,
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        panic!(
            "{} of {} golden scenarios failed against {}:\n  {}\n{report}",
            failed.len(),
            results.len(),
            target.label(),
            failed.join("\n  ")
        );
    }
}
