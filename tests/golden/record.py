#!/usr/bin/env python3
"""Record etcd 3.4.23's answers into the golden scenario files.

Usage:
    python3 tests/golden/record.py --all            # every tests/golden/*.txt
    python3 tests/golden/record.py NAME [NAME ...]  # by scenario name or path
    python3 tests/golden/record.py --check NAME     # replay against etcd, report
                                                      # differences, write nothing

Each scenario runs on a freshly started single-member etcd
(`../shared/tools/ref-etcd start 1 PORT PEER_PORT`, which wipes its state).
The command and comment lines of a file are the source; everything between a
command and the next command or comment is regenerated from etcd's answers.
The file format, the normalisation and the command syntax are described in
tests/golden/README.md; tests/golden.rs implements the same rules in Rust and
the two must stay in step.

Python 3 standard library only; requests are written by hand on raw sockets so
that exactly the bytes a scenario names go on the wire.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REF_ETCD = os.environ.get(
    "REF_ETCD", os.path.join(os.path.dirname(REPO), "shared", "tools", "ref-etcd")
)
# A state directory and ports of our own, so that a ref-etcd someone else runs
# for benchmarks (default home /tmp/ref-etcd, port 23790) is left alone.
ETCD_HOME = os.environ.get("GOLDEN_ETCD_HOME", "/tmp/kardia-golden-etcd")
CLIENT_PORT = int(os.environ.get("GOLDEN_ETCD_PORT", "23890"))
PEER_PORT = CLIENT_PORT + 10

REQUEST_TIMEOUT = 15.0  # seconds for an ordinary request (the 10 MiB body case is slow-ish)
AWAIT_TIMEOUT = 5.0  # default seconds an AWAIT waits for a watch to finish
RAW_IDLE = 1.0  # seconds of silence that end an unframed RAW response
INITIAL_INDEX = 3  # X-Etcd-Index of a fresh 1-member etcd 3.4.23

DROP_HEADERS = {"date", "content-length", "transfer-encoding", "connection"}
# Masked headers and the shape their value must have to be masked; a value of
# any other shape stays visible and fails the comparison.
MASK_HEADERS = {
    "x-raft-index": re.compile(r"0|[1-9][0-9]*"),
    "x-raft-term": re.compile(r"0|[1-9][0-9]*"),
    "x-etcd-cluster-id": re.compile(r"[1-9a-f][0-9a-f]*"),  # lowercase hex, no zero padding
}
# Only a well-formed timestamp is masked: UTC, RFC 3339, fraction with its
# trailing zeros trimmed (Go's RFC3339Nano). Any other spelling stays visible.
EXPIRATION = re.compile(
    r'"expiration":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,8}[1-9])?Z"'
)
DIGITS = re.compile(r"[0-9]+")
COMPARE_MODES = ("full", "status", "shape")


class ScenarioError(Exception):
    pass


# ---------------------------------------------------------------------------
# Command-line syntax


EXPANSION = re.compile(r"\{\{([^*{}]+)\*([0-9]+)\}\}")


def expand(text):
    """`{{abc*3}}` -> `abcabcabc` (for long keys and bodies)."""
    return EXPANSION.sub(lambda m: m.group(1) * int(m.group(2)), text)


def unquote(text):
    """A double-quoted string with \\r \\n \\t \\0 \\\\ \\" \\xNN escapes -> bytes."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ScenarioError("expected a double-quoted string, got %r" % text)
    out = bytearray()
    s = text[1:-1]
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            if i + 1 >= len(s):
                raise ScenarioError("dangling backslash in %r" % text)
            e = s[i + 1]
            simple = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\", '"': b'"'}
            if e in simple:
                out += simple[e]
                i += 2
            elif e == "x":
                out.append(int(s[i + 2 : i + 4], 16))
                i += 4
            else:
                raise ScenarioError("unknown escape \\%s in %r" % (e, text))
        else:
            out += c.encode("utf-8")
            i += 1
    return bytes(out)


def parse_request(words):
    """`METHOD TARGET [BODY] [| Name: value]...` -> (method, target, body|None, headers).

    headers is a list of (name, value); an empty value removes a default header.
    """
    parts = words.split(" | ")
    head = parts[0].strip()
    extra = []
    for h in parts[1:]:
        name, sep, value = h.partition(":")
        if not sep:
            raise ScenarioError("bad header %r" % h)
        extra.append((name.strip(), value.strip()))
    fields = head.split(None, 2)
    if len(fields) < 2:
        raise ScenarioError("expected METHOD TARGET [BODY], got %r" % head)
    method, target = fields[0], fields[1]
    body = None
    if len(fields) == 3:
        b = fields[2].strip()
        body = unquote(b) if b.startswith('"') else b.encode("utf-8")
    return method, target, body, extra


def build_request(port, method, target, body, extra, keep_alive=False):
    headers = [("Host", "127.0.0.1:%d" % port)]
    if not keep_alive:
        headers.append(("Connection", "close"))
    if body is not None:
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        headers.append(("Content-Length", str(len(body))))
    for name, value in extra:
        headers = [(n, v) for (n, v) in headers if n.lower() != name.lower()]
        if value:
            headers.append((name, value))
    out = bytearray()
    out += ("%s %s HTTP/1.1\r\n" % (method, target)).encode("utf-8")
    for n, v in headers:
        out += ("%s: %s\r\n" % (n, v)).encode("utf-8")
    out += b"\r\n"
    if body is not None:
        out += body
    return bytes(out)


# ---------------------------------------------------------------------------
# HTTP/1.1 response reading


class Timeout(Exception):
    pass


class Conn:
    """A socket with a read buffer and an absolute deadline per operation."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.settimeout(REQUEST_TIMEOUT)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (and close) before reading everything

    def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout()
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout()
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, sep, deadline):
        while sep not in self.buf:
            if not self._fill(deadline):
                return None
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise ScenarioError("connection closed %d bytes short of a body" % (n - len(self.buf)))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self, deadline):
        while self._fill(deadline):
            pass
        out, self.buf = self.buf, b""
        return out


class Response:
    def __init__(self):
        self.status = None  # the status line without the trailing CRLF
        self.headers = []  # (name, value) in arrival order
        self.body = b""
        self.note = None  # a marker line, e.g. a timeout
        self.chunked = False
        self.length = None

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


def read_head(conn, deadline):
    """Status line and headers. Returns None when the peer closed first."""
    raw = conn.read_until(b"\r\n\r\n", deadline)
    if raw is None:
        if conn.buf:
            raise ScenarioError("truncated response head: %r" % conn.buf[:200])
        return None
    lines = raw[:-4].split(b"\r\n")
    resp = Response()
    resp.status = lines[0].decode("latin-1")
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ScenarioError("bad header line %r" % line)
        resp.headers.append((name, value.strip(" \t")))
    te = resp.header("Transfer-Encoding")
    resp.chunked = te is not None and te.lower() == "chunked"
    cl = resp.header("Content-Length")
    resp.length = int(cl) if cl is not None else None
    return resp


def read_body(conn, resp, method, deadline, events=None, idle=None):
    """Read the body per its framing. With `events`, stop once the (chunked)
    body holds that many newline-terminated lines; on timeout note it. With
    `idle`, an unframed body ends at EOF or after `idle` seconds of silence
    (no note): Go's 400 answers to malformed requests are unframed and,
    behind etcd's connection multiplexer, the connection is not always closed."""
    code = resp.status.split(" ")[1] if " " in resp.status else ""
    try:
        if method == "HEAD" or code in ("204", "304") or code.startswith("1"):
            return
        if resp.chunked:
            while True:
                if events is not None and resp.body.count(b"\n") >= events:
                    return
                line = conn.read_until(b"\r\n", deadline)
                if line is None:
                    raise ScenarioError("connection closed inside a chunked body")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers
                        t = conn.read_until(b"\r\n", deadline)
                        if t is None or t == b"\r\n":
                            return
                resp.body += conn.read_exact(size, deadline)
                if conn.read_exact(2, deadline) != b"\r\n":
                    raise ScenarioError("chunk not followed by CRLF")
        elif resp.length is not None:
            resp.body = conn.read_exact(resp.length, deadline)
        elif idle is not None:
            try:
                while conn._fill(time.monotonic() + idle):
                    pass
            except Timeout:
                pass
            resp.body, conn.buf = conn.buf, b""
        else:
            resp.body = conn.read_to_eof(deadline)
    except Timeout:
        resp.note = "(no more data before timeout)"


# ---------------------------------------------------------------------------
# Rendering and normalisation (keep in step with tests/golden.rs)


def show(data):
    """Bytes -> text: UTF-8, except that invalid bytes and control characters
    (C0 other than newline and tab, DEL, C1) are written as \\xNN per byte."""
    out = []
    i = 0
    while i < len(data):
        b = data[i]
        if b < 0x80:
            if (b < 0x20 and b not in (0x09, 0x0A)) or b == 0x7F:
                out.append("\\x%02x" % b)
            else:
                out.append(chr(b))
            i += 1
            continue
        n = 4 if b >= 0xF0 else 3 if b >= 0xE0 else 2 if b >= 0xC2 else 0
        if n:
            try:
                ch = data[i : i + n].decode("utf-8")
                if not 0x80 <= ord(ch) <= 0x9F:
                    out.append(ch)
                    i += n
                    continue
            except UnicodeDecodeError:
                pass
        out.append("\\x%02x" % b)
        i += 1
    return "".join(out)


def render(resp, mode):
    """The normalised text of one response (no trailing newline)."""
    if resp is None:
        return "(connection closed without a response)"
    status = resp.status
    if status.startswith(("HTTP/1.1 ", "HTTP/1.0 ")):
        status = status[len("HTTP/1.1 ") :]
    lines = [show(status.encode("latin-1"))]
    headers = []
    for name, value in resp.headers:
        low = name.lower()
        if low in DROP_HEADERS:
            continue
        if low in MASK_HEADERS and MASK_HEADERS[low].fullmatch(value):
            value = "*"
        headers.append((low, show(("%s: %s" % (name, value)).encode("latin-1"))))
    headers.sort(key=lambda h: h[0])  # stable: repeated headers keep their order
    lines += [h[1] for h in headers]
    text = show(resp.body)
    text = EXPIRATION.sub('"expiration":"*"', text)
    if mode == "shape":
        text = DIGITS.sub("N", text)
    if text:
        lines.append("")
        if text.endswith("\n"):
            lines += text[:-1].split("\n")
            if text == "\n" or text.endswith("\n\n"):
                lines.append("(end of body)")
        else:
            lines += text.split("\n")
            lines.append("(no newline at end)")
    if resp.note:
        lines.append(resp.note)
    for line in lines[1:]:
        if line.startswith("#") or line.startswith(">"):
            raise ScenarioError("response line %r would read as a comment/command" % line)
    return "\n".join(lines)


def compared(text, mode):
    """The part of a rendered response a comparison looks at: in status mode
    the status code alone (or the whole first line when it is a marker)."""
    if mode == "status":
        first = text.split("\n", 1)[0]
        code = first.split(" ", 1)[0]
        return code if code.isdigit() else first
    return text


# ---------------------------------------------------------------------------
# Scenario files


class Block:
    def __init__(self, comments, command, output):
        self.comments = comments  # list of comment lines before the command
        self.command = command  # the command line, without "> "
        self.output = output  # list of expected output lines (may be empty)


def parse_file(text):
    """-> (header comment lines, [Block])."""
    lines = text.split("\n")
    header = []
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        header.append(lines[i])
        i += 1
    if not header:
        raise ScenarioError("a scenario starts with # title lines")
    blocks = []
    comments = []
    for line in lines[i:]:
        if line.startswith("> "):
            blocks.append(Block(comments, line[2:], []))
            comments = []
        elif line.startswith("#"):
            comments.append(line)
        elif blocks and not comments:
            blocks[-1].output.append(line)
        elif line.strip():
            raise ScenarioError("text outside a block: %r" % line)
    if comments:
        raise ScenarioError("comment lines after the last command")
    for b in blocks:
        while b.output and not b.output[-1].strip():
            b.output.pop()
    return header, blocks


def format_file(header, blocks):
    parts = ["\n".join(header)]
    for b in blocks:
        parts.append("\n".join(b.comments + ["> " + b.command] + b.output))
    return "\n\n".join(parts) + "\n"


def compare_mode(header):
    mode = "full"
    for line in header:
        m = re.match(r"#\s*compare:\s*(\S+)", line)
        if m:
            mode = m.group(1)
            if mode not in COMPARE_MODES:
                raise ScenarioError("unknown compare mode %r" % mode)
    return mode


# ---------------------------------------------------------------------------
# Running a scenario


class Runner:
    def __init__(self, port, mode):
        self.port = port
        self.mode = mode
        self.watches = {}  # name -> (conn, method, response-with-head or None)

    def request(self, method, target, body, extra):
        conn = Conn(self.port)
        try:
            conn.send(build_request(self.port, method, target, body, extra))
            deadline = time.monotonic() + REQUEST_TIMEOUT
            resp = read_head(conn, deadline)
            if resp is not None:
                read_body(conn, resp, method, deadline)
            return resp
        finally:
            conn.close()

    def run(self, command):
        """Execute one command; return its output lines."""
        word, _, rest = command.partition(" ")
        rest = expand(rest)
        if word == "SLEEP":
            time.sleep(float(rest))
            return []
        if word == "RAW":
            conn = Conn(self.port)
            try:
                conn.send(unquote(rest.strip()))
                deadline = time.monotonic() + REQUEST_TIMEOUT
                try:
                    resp = read_head(conn, deadline)
                except Timeout:
                    return ["(no response before timeout)"]
                if resp is not None:
                    read_body(conn, resp, "GET", deadline, idle=RAW_IDLE)
                return render(resp, self.mode).split("\n")
            finally:
                conn.close()
        if word == "REPEAT":
            count, _, req = rest.partition(" ")
            return self.repeat(int(count), *parse_request(req))
        if word == "WATCH":
            name, _, req = rest.partition(" ")
            if name in self.watches:
                raise ScenarioError("watch %s already exists" % name)
            method, target, body, extra = parse_request(req)
            conn = Conn(self.port)
            conn.send(build_request(self.port, method, target, body, extra))
            # The server flushes the head once the watcher is registered; waiting
            # for it orders the watch before the scenario's next request.
            try:
                resp = read_head(conn, time.monotonic() + AWAIT_TIMEOUT)
            except Timeout:
                self.watches[name] = (conn, method, Timeout)
                return ["(no response head before timeout)"]
            self.watches[name] = (conn, method, resp)
            return []
        if word == "AWAIT":
            args = rest.split()
            name = args[0]
            events, timeout = None, AWAIT_TIMEOUT
            for a in args[1:]:
                if a.startswith("timeout="):
                    timeout = float(a[len("timeout=") :])
                else:
                    events = int(a)
            if name not in self.watches:
                raise ScenarioError("no watch named %s" % name)
            conn, method, resp = self.watches.pop(name)
            try:
                deadline = time.monotonic() + timeout
                if resp is Timeout:
                    try:
                        resp = read_head(conn, deadline)
                    except Timeout:
                        return ["(no response before timeout)"]
                if resp is not None:
                    read_body(conn, resp, method, deadline, events)
                return render(resp, self.mode).split("\n")
            finally:
                conn.close()
        if word.isupper():  # any other upper-case word is an HTTP method
            method, target, body, extra = parse_request(expand(command))
            return render(self.request(method, target, body, extra), self.mode).split("\n")
        raise ScenarioError("unknown command %r" % command)

    def repeat(self, count, method, target, body, extra):
        """Send `count` requests over one keep-alive connection; summarise statuses."""
        conn = Conn(self.port)
        counts = []
        try:
            for _ in range(count):
                conn.send(build_request(self.port, method, target, body, extra, keep_alive=True))
                deadline = time.monotonic() + REQUEST_TIMEOUT
                resp = read_head(conn, deadline)
                if resp is None:
                    raise ScenarioError("connection closed during REPEAT")
                read_body(conn, resp, method, deadline)
                status = resp.status.replace("HTTP/1.1 ", "", 1)
                if counts and counts[-1][1] == status:
                    counts[-1][0] += 1
                else:
                    counts.append([1, status])
        finally:
            conn.close()
        return ["%dx %s" % (n, s) for n, s in counts]

    def close(self):
        for conn, _, _ in self.watches.values():
            conn.close()
        self.watches.clear()


# ---------------------------------------------------------------------------
# The reference etcd


def etcd_env():
    env = dict(os.environ)
    env["REF_ETCD_HOME"] = ETCD_HOME
    return env


def start_etcd():
    subprocess.run(
        [REF_ETCD, "start", "1", str(CLIENT_PORT), str(PEER_PORT)],
        env=etcd_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # /health can pass a moment before etcd has stored the cluster version
    # (its third internal write); wait for the documented fresh index.
    deadline = time.monotonic() + 10
    runner = Runner(CLIENT_PORT, "full")
    while time.monotonic() < deadline:
        resp = runner.request("GET", "/v2/keys/", None, [])
        if resp is not None and resp.header("X-Etcd-Index") == str(INITIAL_INDEX):
            return
        time.sleep(0.05)
    raise ScenarioError("etcd did not reach X-Etcd-Index %d" % INITIAL_INDEX)


def stop_etcd():
    subprocess.run([REF_ETCD, "stop"], env=etcd_env(), check=False)


def scenario_paths(args):
    if args.all:
        return sorted(
            os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".txt")
        )
    paths = []
    for name in args.scenarios:
        if os.path.exists(name):
            paths.append(name)
        else:
            base = os.path.basename(name)
            paths.append(os.path.join(HERE, base if base.endswith(".txt") else base + ".txt"))
    return paths


def run_scenario(path, check):
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    header, blocks = parse_file(text)
    mode = compare_mode(header)
    start_etcd()
    runner = Runner(CLIENT_PORT, mode)
    diffs = []
    try:
        for b in blocks:
            try:
                got = runner.run(b.command)
            except ScenarioError as e:
                raise ScenarioError("%s: > %s: %s" % (os.path.basename(path), b.command[:80], e))
            if check:
                want = compared("\n".join(b.output), mode)
                if compared("\n".join(got), mode) != want:
                    diffs.append((b.command, b.output, got))
            b.output = got
    finally:
        runner.close()
    if not check:
        new = format_file(header, blocks)
        if new != text:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(new)
    return diffs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--all", action="store_true", help="every scenario in tests/golden")
    p.add_argument("--check", action="store_true", help="compare only, write nothing")
    p.add_argument("scenarios", nargs="*")
    args = p.parse_args()
    paths = scenario_paths(args)
    if not paths:
        p.error("name scenarios or pass --all")
    failed = 0
    t0 = time.monotonic()
    try:
        for path in paths:
            s0 = time.monotonic()
            diffs = run_scenario(path, args.check)
            status = "ok"
            if diffs:
                failed += 1
                status = "DIFFERS"
            print("%-60s %s %5.1fs" % (os.path.basename(path), status, time.monotonic() - s0))
            for cmd, want, got in diffs[:1]:
                print("  > %s\n  expected:\n    %s\n  got:\n    %s" % (
                    cmd[:120], "\n    ".join(want), "\n    ".join(got)))
    finally:
        stop_etcd()
    print("%d scenario(s), %d differing, %.1fs" % (len(paths), failed, time.monotonic() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
