//! Raw single-operation workloads: put, get, recursive-get and mixed.
//!
//! A [`RawSpec`] (from the CLI) fixes the key layout; [`RawSpec::source`] builds a
//! per-connection [`RawSource`] whose request templates are rendered once, so the
//! engine's hot loop only copies bytes and patches a key number. Key layout, all
//! under `/lt/<run-id>/` so runs never collide:
//!
//! * put, distinct keys: `put/c<conn>-<n>` with a per-connection counter `n`;
//! * put `--keys N` (overwrite), get, mixed: `kv/k<n>`, `n` in `0..N`; put and get
//!   walk the keys from a per-connection offset, mixed picks them at random;
//! * recursive-get: `GET dir?recursive=true` on `dir/k<n>`, `n` in `0..N`.
//!
//! [`RawSpec::prefill`] writes the keys that get, mixed and recursive-get read.

use super::fill;
use crate::engine::{ConnSource, ReqMeta};
use crate::http::Template;
use crate::validate::{Expect, NodeCheck};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawKind {
    Put,
    Get,
    RecursiveGet,
    Mixed,
}

/// Request classes reported for the raw workloads (indices used in `ReqMeta`).
pub const CLASSES: &[&str] = &["PUT", "GET", "recursive GET"];
const PUT: u8 = 0;
const GET: u8 = 1;
const LIST: u8 = 2;

#[derive(Clone, Debug)]
pub struct RawSpec {
    pub kind: RawKind,
    /// Key-set size; `None` for put means every PUT writes a new key.
    pub keys: Option<u64>,
    pub ttl: Option<u32>,
    pub value_size: usize,
    /// Fraction of GETs in the mixed workload.
    pub read_ratio: f64,
    /// Add go-etcd's `quorum=true&recursive=false&sorted=false` to GETs.
    pub quorum: bool,
    pub run_id: String,
    pub host: String,
    pub conns: usize,
    pub seed: u64,
}

/// Width of the key-number slot for `n` keys.
pub fn digits(n: u64) -> usize {
    let mut d = 1;
    let mut x = n.saturating_sub(1);
    while x >= 10 {
        x /= 10;
        d += 1;
    }
    d
}

impl RawSpec {
    fn root(&self) -> String {
        format!("/lt/{}", self.run_id)
    }

    pub fn value(&self) -> String {
        "a".repeat(self.value_size)
    }

    fn body(&self) -> String {
        match self.ttl {
            Some(t) => format!("value={}&ttl={t}", self.value()),
            None => format!("value={}", self.value()),
        }
    }

    /// Keys actually addressed (get defaults to one key).
    pub fn key_count(&self) -> u64 {
        match self.kind {
            RawKind::Put => self.keys.unwrap_or(0),
            RawKind::Get => self.keys.unwrap_or(1).max(1),
            RawKind::RecursiveGet => self.keys.unwrap_or(10_000).max(1),
            RawKind::Mixed => self.keys.unwrap_or(10_000).max(1),
        }
    }

    fn width(&self) -> usize {
        digits(self.key_count().max(1))
    }

    /// The `/v2/keys` path of key `n` in the bounded key set (slot form with `{n}`).
    fn kv_path(&self) -> String {
        match self.kind {
            RawKind::RecursiveGet => format!("/v2/keys{}/dir/k{{n}}", self.root()),
            _ => format!("/v2/keys{}/kv/k{{n}}", self.root()),
        }
    }

    /// The etcd key (as returned in `node.key`) of key `n`.
    pub fn key_name(&self, conn: usize, n: u64) -> String {
        let mut num = vec![0u8; self.width()];
        match (self.kind, self.keys) {
            (RawKind::Put, None) => {
                let mut num = [0u8; 12];
                crate::http::write_padded(n, &mut num);
                format!(
                    "{}/put/c{conn:04}-{}",
                    self.root(),
                    String::from_utf8_lossy(&num)
                )
            }
            (RawKind::RecursiveGet, _) => {
                crate::http::write_padded(n, &mut num);
                format!("{}/dir/k{}", self.root(), String::from_utf8_lossy(&num))
            }
            _ => {
                crate::http::write_padded(n, &mut num);
                format!("{}/kv/k{}", self.root(), String::from_utf8_lossy(&num))
            }
        }
    }

    /// Writes the keys that the read workloads need. Returns failures.
    pub fn prefill(&self, addrs: &[SocketAddr], lenient: bool, timeout: Duration) -> u64 {
        let n = match self.kind {
            RawKind::Put => 0,
            _ => self.key_count(),
        };
        let t = Template::new(
            "PUT",
            &self.host,
            &self.kv_path(),
            Some(&format!("value={}", self.value())),
            self.width(),
        );
        fill(
            addrs,
            64,
            n,
            Expect::Set,
            lenient,
            timeout,
            Rc::new(move |i, out| t.write(i, out)),
        )
    }

    /// The request generator for connection `conn`.
    pub fn source(&self, conn: usize) -> RawSource {
        let q = if self.quorum {
            "?quorum=true&recursive=false&sorted=false"
        } else {
            ""
        };
        let width = self.width();
        let keys = self.key_count();
        let (put, get) = match (self.kind, self.keys) {
            (RawKind::Put, None) => {
                let path = format!("/v2/keys{}/put/c{conn:04}-{{n}}", self.root());
                (
                    Some(Template::new(
                        "PUT",
                        &self.host,
                        &path,
                        Some(&self.body()),
                        12,
                    )),
                    None,
                )
            }
            (RawKind::RecursiveGet, _) => {
                let sorted = if self.quorum {
                    "&quorum=true&sorted=false"
                } else {
                    ""
                };
                let path = format!("/v2/keys{}/dir?recursive=true{sorted}", self.root());
                (None, Some(Template::new("GET", &self.host, &path, None, 0)))
            }
            _ => {
                let put = Template::new(
                    "PUT",
                    &self.host,
                    &self.kv_path(),
                    Some(&self.body()),
                    width,
                );
                let get = Template::new(
                    "GET",
                    &self.host,
                    &format!("{}{q}", self.kv_path()),
                    None,
                    width,
                );
                (Some(put), Some(get))
            }
        };
        let start = if keys > 0 {
            (conn as u64 * keys) / self.conns.max(1) as u64
        } else {
            0
        };
        RawSource {
            spec: Rc::new(self.clone()),
            conn,
            put,
            get,
            counter: start,
            keys,
            rng: fastrand::Rng::with_seed(self.seed.wrapping_add(conn as u64 * 0x9e37_79b9)),
        }
    }
}

/// Per-connection generator for the raw workloads.
pub struct RawSource {
    spec: Rc<RawSpec>,
    conn: usize,
    put: Option<Template>,
    get: Option<Template>,
    counter: u64,
    keys: u64,
    rng: fastrand::Rng,
}

impl ConnSource for RawSource {
    #[inline]
    fn next(&mut self, out: &mut Vec<u8>) -> ReqMeta {
        match self.spec.kind {
            RawKind::Put => {
                let n = if self.spec.keys.is_some() {
                    self.counter % self.keys
                } else {
                    self.counter
                };
                self.counter += 1;
                self.put.as_ref().expect("put template").write(n, out);
                ReqMeta {
                    class: PUT,
                    expect: Expect::Set,
                    n,
                }
            }
            RawKind::Get => {
                let n = self.counter % self.keys;
                self.counter += 1;
                self.get.as_ref().expect("get template").write(n, out);
                ReqMeta {
                    class: GET,
                    expect: Expect::Get,
                    n,
                }
            }
            RawKind::RecursiveGet => {
                self.get.as_ref().expect("list template").write(0, out);
                ReqMeta {
                    class: LIST,
                    expect: Expect::Get,
                    n: 0,
                }
            }
            RawKind::Mixed => {
                let n = self.rng.u64(0..self.keys);
                if self.rng.f64() < self.spec.read_ratio {
                    self.get.as_ref().expect("get template").write(n, out);
                    ReqMeta {
                        class: GET,
                        expect: Expect::Get,
                        n,
                    }
                } else {
                    self.put.as_ref().expect("put template").write(n, out);
                    ReqMeta {
                        class: PUT,
                        expect: Expect::Set,
                        n,
                    }
                }
            }
        }
    }

    fn node_check(&self, meta: &ReqMeta) -> Option<NodeCheck> {
        match self.spec.kind {
            RawKind::RecursiveGet => Some(NodeCheck::Leaves {
                key: format!("/lt/{}/dir", self.spec.run_id),
                min: self.keys,
                max: self.keys,
            }),
            _ => Some(NodeCheck::KeyValue {
                key: self.spec.key_name(self.conn, meta.n),
                value: Some(self.spec.value()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: RawKind, keys: Option<u64>) -> RawSpec {
        RawSpec {
            kind,
            keys,
            ttl: Some(30),
            value_size: 8,
            read_ratio: 0.25,
            quorum: false,
            run_id: "abc123".into(),
            host: "h".into(),
            conns: 4,
            seed: 7,
        }
    }

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .split("\r\n")
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn digit_widths() {
        assert_eq!(
            (
                digits(1),
                digits(10),
                digits(11),
                digits(10_000),
                digits(10_001)
            ),
            (1, 1, 2, 4, 5)
        );
    }

    #[test]
    fn distinct_puts_never_repeat_and_carry_ttl() {
        let s = spec(RawKind::Put, None);
        let mut a = s.source(0);
        let mut b = s.source(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            for src in [&mut a, &mut b] {
                let mut out = Vec::new();
                let m = src.next(&mut out);
                assert_eq!((m.class, m.expect), (PUT, Expect::Set));
                let l = lines(&out);
                assert!(seen.insert(l[0].clone()), "repeated {}", l[0]);
                assert!(l.last().unwrap().ends_with("value=aaaaaaaa&ttl=30"));
            }
        }
        let mut out = Vec::new();
        let m = s.source(3).next(&mut out);
        assert_eq!(
            lines(&out)[0],
            "PUT /v2/keys/lt/abc123/put/c0003-000000000000 HTTP/1.1"
        );
        assert_eq!(s.key_name(3, m.n), "/lt/abc123/put/c0003-000000000000");
    }

    #[test]
    fn overwrite_cycles_through_key_set_from_spread_offsets() {
        let s = spec(RawKind::Put, Some(100));
        let mut src = s.source(1);
        let mut counts = [0u32; 100];
        let mut first = None;
        for _ in 0..300 {
            let mut out = Vec::new();
            let m = src.next(&mut out);
            first.get_or_insert(m.n);
            counts[m.n as usize] += 1;
            assert!(lines(&out)[0].starts_with(&format!("PUT /v2/keys/lt/abc123/kv/k{:02} ", m.n)));
        }
        assert_eq!(first, Some(25), "conn 1 of 4 starts a quarter in");
        assert!(counts.iter().all(|&c| c == 3));
    }

    #[test]
    fn mixed_ratio_and_keys() {
        let s = spec(RawKind::Mixed, Some(50));
        let mut src = s.source(0);
        let (mut gets, total) = (0, 20_000);
        for _ in 0..total {
            let mut out = Vec::new();
            let m = src.next(&mut out);
            assert!(m.n < 50);
            if m.class == GET {
                gets += 1;
                assert!(out.starts_with(b"GET /v2/keys/lt/abc123/kv/k"));
            }
        }
        let ratio = gets as f64 / total as f64;
        assert!((ratio - 0.25).abs() < 0.02, "{ratio}");
    }

    #[test]
    fn recursive_get_lists_the_dir() {
        let s = spec(RawKind::RecursiveGet, Some(1000));
        let mut out = Vec::new();
        let m = s.source(2).next(&mut out);
        assert_eq!(
            lines(&out)[0],
            "GET /v2/keys/lt/abc123/dir?recursive=true HTTP/1.1"
        );
        assert_eq!(
            s.source(2).node_check(&m),
            Some(NodeCheck::Leaves {
                key: "/lt/abc123/dir".into(),
                min: 1000,
                max: 1000
            })
        );
        assert_eq!(s.key_name(0, 7), "/lt/abc123/dir/k007");
    }

    #[test]
    fn get_defaults_to_one_key_and_quorum_params() {
        let mut s = spec(RawKind::Get, None);
        s.quorum = true;
        let mut out = Vec::new();
        s.source(0).next(&mut out);
        assert_eq!(
            lines(&out)[0],
            "GET /v2/keys/lt/abc123/kv/k0?quorum=true&recursive=false&sorted=false HTTP/1.1"
        );
    }
}
