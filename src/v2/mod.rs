//! The etcd v2 API surface: routing, the keys API ([`keys`]) and the
//! membership, stats, version and health endpoints ([`admin`]).
//!
//! [`Api`] is the [`crate::http::Service`] of a member: it receives parsed
//! requests from the HTTP front end, applies Go's `ServeMux` path rules
//! (301 for unclean paths, 404 for unknown ones), and dispatches. Reads and
//! validation errors are answered at once; writes become encoded commands
//! proposed to the owning shard and are answered when applied. Large
//! listings leave as they render ([`stream`]).

pub mod admin;
pub mod auth;
pub mod form;
pub mod keys;
pub mod stream;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::SystemTime;

use crate::cluster::View;
use crate::http::request::{escape_path, mux_clean};
use crate::http::response::{Response, TEXT};
use crate::http::{Handled, Method, Output, Part, Request, Service};
use crate::shard::Shard;

/// The largest scratch buffer an executor keeps between requests.
const SCRATCH_KEEP: usize = 64 << 20;

/// The v2 API of one member, on one executor.
pub struct Api {
    pub shard: Rc<Shard>,
    pub cluster: View,
    cluster_id_hex: Vec<u8>,
    /// The cluster token (IDs of members added through the members API).
    pub token: String,
    pub start: SystemTime,
    form: RefCell<form::Form>,
    /// Response bodies are rendered here before their headers are written
    /// (kept between requests, up to [`SCRATCH_KEEP`]).
    scratch: RefCell<Vec<u8>>,
    /// Passwords this executor has checked (v2 auth).
    verifier: RefCell<crate::auth::Verifier>,
}

impl Api {
    pub fn new(shard: Rc<Shard>, cluster: View, token: String) -> Api {
        let cluster_id_hex = format!("{:x}", cluster.read().expect("membership").id).into_bytes();
        Api {
            shard,
            cluster,
            cluster_id_hex,
            token,
            start: SystemTime::now(),
            form: RefCell::new(form::Form::default()),
            scratch: RefCell::new(Vec::new()),
            verifier: RefCell::default(),
        }
    }
}

/// 301 to the cleaned path, as Go's `http.Redirect` writes it.
fn redirect(req: &Request<'_>, clean: &[u8], out: &mut Vec<u8>) {
    let mut loc = Vec::with_capacity(clean.len() + req.head.query.len() + 8);
    escape_path(clean, &mut loc);
    if !req.head.query.is_empty() {
        loc.push(b'?');
        loc.extend_from_slice(req.head.query);
    }
    let mut r = Response::start(out, req.head.http11, 301);
    let m = req.head.method;
    if m == Method::Get || m == Method::Head {
        r.header("Content-Type", b"text/html; charset=utf-8");
    }
    r.header("Location", &loc);
    if m == Method::Get {
        let mut body = b"<a href=\"".to_vec();
        for &c in &loc {
            match c {
                b'<' => body.extend_from_slice(b"&lt;"),
                b'>' => body.extend_from_slice(b"&gt;"),
                b'&' => body.extend_from_slice(b"&amp;"),
                b'\'' => body.extend_from_slice(b"&#39;"),
                b'"' => body.extend_from_slice(b"&#34;"),
                c => body.push(c),
            }
        }
        body.extend_from_slice(b"\">Moved Permanently</a>.\n\n");
        r.body(&body, false);
    } else {
        r.body(b"", false);
    }
}

/// Go's `http.NotFound`.
pub fn not_found(req: &Request<'_>, out: &mut Vec<u8>) {
    let mut r = Response::start(out, req.head.http11, 404);
    r.header("Content-Type", TEXT)
        .header("X-Content-Type-Options", b"nosniff");
    r.body(b"404 page not found\n", req.head.method == Method::Head);
}

/// Go's 405 with an `Allow` header.
pub fn method_not_allowed(req: &Request<'_>, allow: &[u8], out: &mut Vec<u8>) {
    let mut r = Response::start(out, req.head.http11, 405);
    r.header("Allow", allow)
        .header("Content-Type", TEXT)
        .header("X-Content-Type-Options", b"nosniff");
    r.body(b"Method Not Allowed\n", req.head.method == Method::Head);
}

impl Service for Api {
    type Pending = keys::Pending;
    type Watch = keys::Watch;
    type Event = keys::EventBody;
    type Body = stream::Listing;

    fn handle(&self, req: &Request<'_>, out: &mut Output) -> Handled<Self::Pending, Self::Watch> {
        // etcd's CORS wrapper answers every OPTIONS before routing.
        if req.head.method == Method::Options {
            Response::start(out, req.head.http11, 200).body(b"", false);
            return Handled::Done;
        }
        if let Some(clean) = mux_clean(req.path) {
            redirect(req, &clean, out);
            return Handled::Done;
        }
        let p = req.path;
        if p == b"/v2/keys" || p.starts_with(b"/v2/keys/") {
            return keys::handle(self, req, &p[8..], out);
        }
        match p {
            b"/version" => admin::version(self, req, out),
            b"/health" => admin::health(self, req, out),
            b"/v2/machines" => admin::machines(self, req, out),
            b"/v2/stats/self" => admin::stats_self(self, req, out),
            b"/v2/stats/store" => admin::stats_store(self, req, out),
            b"/v2/stats/leader" => admin::stats_leader(self, req, out),
            b"/debug/kardia/shards" => admin::shards(self, req, out),
            b"/metrics" => admin::metrics(self, req, out),
            b"/kardia/backup" => return admin::backup(self, req, out),
            b"/debug/kardia/transfer" => return admin::transfer(self, req, out),
            _ if p.starts_with(b"/v2/auth/") => return auth::handle(self, req, &p[9..], out),
            _ if p == b"/v2/members" || p.starts_with(b"/v2/members/") => {
                return admin::members(self, req, &p[11..], out);
            }
            _ => not_found(req, out),
        }
        Handled::Done
    }

    async fn complete(&self, p: Self::Pending, out: &mut Output) -> Option<Self::Body> {
        keys::complete(self, p, out).await
    }

    async fn next_part(&self, b: &mut Self::Body, out: &mut Vec<u8>) -> Part {
        stream::next_part(self, b, out).await
    }

    async fn settle(&self, p: Self::Pending) {
        if let keys::Pending::Verify(v) = p {
            auth::verify(self, v).await;
        }
    }

    async fn next_event(&self, w: &mut Self::Watch) -> Option<Self::Event> {
        keys::next_event(self, w).await
    }

    fn is_stream(&self, w: &Self::Watch) -> bool {
        w.stream
    }

    fn cancel(&self, w: Self::Watch) {
        keys::cancel(self, w)
    }
}
