//! The keys API (`/v2/keys`): etcd's request parsing and validation order
//! (spec 2.4–2.6), its PUT/POST/DELETE decision tables (4.2–4.5), reads,
//! watches (5) and the exact response headers (2.7).
//!
//! A request enters with its decoded key. Validation errors and reads are
//! answered at once. Writes are encoded as a store [`Command`], proposed to
//! the shard, and answered by [`complete`] after apply. Watches come back as
//! a [`Watch`] that the HTTP layer streams with [`next_event`].

use std::sync::Arc;

use super::form::{is_form, Field};
use super::stream::{Listing, Started};
use super::Api;
use crate::etcd::error::*;
use crate::http::response::{Output, Response, HEAD_ROOM, JSON};
use crate::http::{Handled, Method, Request};
use crate::raft::wall_nanos;
use crate::shard::mesh::{ReadOpts, ReadReq};
use crate::shard::orderer::{Delivered, WatchStart};
use crate::shard::{read_at, Answer, AnswerFuture};
use crate::store::watch::WatchHandle;
use crate::store::{escalated_to, ReadAt, OVER_LIMIT};
use crate::store::{Action, Command, Event, Op};

/// A request answered later, in request order.
pub enum Pending {
    Write(PendingWrite),
    Read(PendingRead),
    /// A membership change (`/v2/members`).
    Members(super::admin::PendingMembers),
    /// An online backup (`/kardia/backup`).
    Backup(super::admin::PendingBackup),
    /// A change of v2 auth users, roles or the auth switch.
    Auth(super::auth::PendingAuth),
    /// A password to check before the request is handled again.
    Verify(crate::auth::Verification),
}

/// A write on its way through its shard's raft group.
pub struct PendingWrite {
    fut: AnswerFuture,
    no_value: bool,
    http11: bool,
}

/// A read, started when the requests before it on the connection are done
/// (so a pipelined read sees the writes sent before it).
pub struct PendingRead {
    owner: usize,
    req: ReadReq,
    head_only: bool,
    http11: bool,
    /// `quorum=true` on a replicated member: pass a read barrier first.
    barrier: bool,
}

/// A watch event as the HTTP layer writes it: the shared event's JSON.
pub struct EventBody(Arc<Event>);

impl AsRef<[u8]> for EventBody {
    fn as_ref(&self) -> &[u8] {
        self.0.json()
    }
}

/// A watch being streamed.
pub struct Watch {
    key: Box<[u8]>,
    recursive: bool,
    pub stream: bool,
    past: Option<Arc<Event>>,
    handle: Option<WatchHandle>,
    next_since: u64,
}

type Out = Handled<Pending, Watch>;

/// Handle `/v2/keys<rest>`.
pub fn handle(api: &Api, req: &Request<'_>, rest: &[u8], out: &mut Vec<u8>) -> Out {
    let m = req.head.method;
    if !matches!(
        m,
        Method::Get | Method::Head | Method::Put | Method::Post | Method::Delete
    ) {
        super::method_not_allowed(req, b"HEAD,GET,PUT,POST,DELETE", out);
        return Handled::Done;
    }
    let mut form = api.form.borrow_mut();
    // Form: the url-encoded body (PUT/POST only) before the query string.
    let mut body = None;
    let mut parse_err = None;
    if matches!(m, Method::Put | Method::Post) {
        if let Some(ct) = req.head.content_type {
            match is_form(ct) {
                Ok(true) => body = Some(req.body),
                Ok(false) => {}
                Err(e) => parse_err = Some(e),
            }
        }
    }
    let r = form.parse(body, req.head.query);
    if let Some(e) = parse_err.or(r.err()) {
        return request_error(api, req, INVALID_FORM, &e, out);
    }
    // The key: path.Join("/", rest).
    let mut key = rest;
    while key.len() > 1 && key.ends_with(b"/") {
        key = &key[..key.len() - 1];
    }
    if key.is_empty() {
        key = b"/";
    }

    // Validation, in etcd's order (spec 2.6).
    let Ok(prev_index) = form.u64(Field::PrevIndex) else {
        return request_error(api, req, INDEX_NAN, "invalid value for \"prevIndex\"", out);
    };
    let Ok(wait_index) = form.u64(Field::WaitIndex) else {
        return request_error(api, req, INDEX_NAN, "invalid value for \"waitIndex\"", out);
    };
    let mut flags = [false; 6];
    for (i, (f, name)) in [
        (Field::Recursive, "recursive"),
        (Field::Sorted, "sorted"),
        (Field::Wait, "wait"),
        (Field::Dir, "dir"),
        (Field::Quorum, "quorum"),
        (Field::Stream, "stream"),
    ]
    .into_iter()
    .enumerate()
    {
        match form.bool(f) {
            Ok(b) => flags[i] = b,
            Err(_) => {
                return request_error(
                    api,
                    req,
                    INVALID_FIELD,
                    &format!("invalid value for \"{name}\""),
                    out,
                )
            }
        }
    }
    let [recursive, sorted, wait, dir, quorum, stream] = flags;
    if wait && m != Method::Get {
        return request_error(
            api,
            req,
            INVALID_FIELD,
            "\"wait\" can only be used with GET requests",
            out,
        );
    }
    let prev_value = form.value(Field::PrevValue);
    if form.get(Field::PrevValue).is_some() && prev_value.is_empty() {
        return request_error(
            api,
            req,
            PREV_VALUE_REQUIRED,
            "\"prevValue\" cannot be empty",
            out,
        );
    }
    let Ok(no_value) = form.bool(Field::NoValueOnSuccess) else {
        return request_error(
            api,
            req,
            INVALID_FIELD,
            "invalid value for \"noValueOnSuccess\"",
            out,
        );
    };
    let ttl = match form.get(Field::Ttl) {
        Some(v) if !v.is_empty() => match super::form::parse_u64(v) {
            Ok(t) => Some(t),
            Err(_) => return request_error(api, req, TTL_NAN, "invalid value for \"ttl\"", out),
        },
        _ => None,
    };
    let prev_exist = match form.get(Field::PrevExist) {
        None => None,
        Some(v) => match super::form::parse_bool(v) {
            Ok(b) => Some(b),
            Err(_) => {
                return request_error(api, req, INVALID_FIELD, "invalid value for prevExist", out)
            }
        },
    };
    let mut refresh = false;
    if let Some(v) = form.get(Field::Refresh) {
        match super::form::parse_bool(v) {
            Ok(b) => refresh = b,
            Err(_) => {
                return request_error(api, req, INVALID_FIELD, "invalid value for refresh", out)
            }
        }
        if refresh {
            if !form.value(Field::Value).is_empty() {
                return request_error(
                    api,
                    req,
                    REFRESH_VALUE,
                    "A value was provided on a refresh",
                    out,
                );
            }
            if ttl.is_none() {
                return request_error(api, req, REFRESH_TTL_REQUIRED, "No TTL value set", out);
            }
        }
    }

    // v2 auth, once the request is known to be valid (etcd's order).
    if let Some(h) = super::auth::check_key(api, req, rest, recursive, out) {
        return h;
    }
    let now = wall_nanos();
    match m {
        Method::Get | Method::Head => {
            if wait && !quorum {
                drop(form);
                return start_watch(api, req, key, recursive, stream, wait_index, out);
            }
            let owner = api.shard.placement.of_key(key);
            let mut opts = ReadOpts {
                recursive,
                sorted,
                now,
                bulk: false,
                at_least: 0,
            };
            let head_only = m == Method::Head;
            drop(form);
            // Linearizable reads on a replicated member wait for a read
            // barrier (ReadIndex); a single member's own store is current.
            let barrier = quorum && api.cluster.read().expect("membership").members.len() > 1;
            if !barrier
                && owner == api.shard.id
                && read_now(api, key, &mut opts, head_only, req.head.http11, out)
            {
                return Handled::Done;
            }
            Handled::Pending(Pending::Read(PendingRead {
                owner,
                req: ReadReq {
                    key: key.to_vec(),
                    opts,
                },
                head_only,
                http11: req.head.http11,
                barrier,
            }))
        }
        _ => {
            let op = match m {
                Method::Post => Op::CreateUnique,
                Method::Delete if prev_index > 0 || !prev_value.is_empty() => Op::CompareAndDelete,
                Method::Delete => Op::Delete,
                _ => match prev_exist {
                    Some(true) if prev_index == 0 && prev_value.is_empty() => Op::Update,
                    Some(true) => Op::CompareAndSwap,
                    Some(false) => Op::Create,
                    None if prev_index > 0 || !prev_value.is_empty() => Op::CompareAndSwap,
                    None => Op::Set,
                },
            };
            let mut c = Command::new(op, key, now);
            if m != Method::Delete {
                c.value = form.value(Field::Value);
                // Go: now.Add(Duration(ttl) * Second).UnixNano(), wrapping.
                c.expire = ttl.map(|t| now.wrapping_add((t as i64).wrapping_mul(1_000_000_000)));
                c.refresh = refresh && op != Op::Create && op != Op::CreateUnique;
            }
            c.dir = dir;
            c.recursive = recursive;
            c.prev_value = prev_value;
            c.prev_index = prev_index;
            let mut data = Vec::new();
            c.encode(&mut data);
            drop(form);
            let pl = api.shard.placement;
            let owner = if op == Op::CreateUnique {
                // Just above the unit depth: any shard escalates it.
                pl.of_dir(key).unwrap_or(api.shard.id)
            } else {
                pl.of_key(key)
            };
            Handled::Pending(Pending::Write(PendingWrite {
                fut: api.shard.propose(owner, data),
                no_value,
                http11: req.head.http11,
            }))
        }
    }
}

fn request_error(api: &Api, req: &Request<'_>, code: u16, cause: &str, out: &mut Vec<u8>) -> Out {
    write_error(
        api,
        req.head.http11,
        &V2Error::request(code, cause),
        req.head.method == Method::Head,
        out,
    );
    Handled::Done
}

/// etcd's error response: status by code, JSON body, `X-Etcd-Index`.
pub fn write_error(api: &Api, http11: bool, e: &V2Error, head_only: bool, out: &mut Vec<u8>) {
    let mut body = api.scratch.borrow_mut();
    body.clear();
    e.write_json(&mut body);
    let mut r = Response::start(out, http11, e.status());
    r.header("Content-Type", JSON)
        .header("X-Etcd-Cluster-Id", &api.cluster_id_hex)
        .header_u64("X-Etcd-Index", e.index);
    r.body(&body, head_only);
}

fn success_headers<'o>(
    api: &Api,
    out: &'o mut Vec<u8>,
    http11: bool,
    status: u16,
    etcd_index: u64,
    raft_index: u64,
    raft_term: u64,
) -> Response<'o> {
    let mut r = Response::start(out, http11, status);
    r.header("Content-Type", JSON)
        .header("X-Etcd-Cluster-Id", &api.cluster_id_hex)
        .header_u64("X-Etcd-Index", etcd_index)
        .header_u64("X-Raft-Index", raft_index)
        .header_u64("X-Raft-Term", raft_term);
    r
}

/// 200 headers of a read or watch: the raft position is the current one.
pub(super) fn read_headers<'o>(
    api: &Api,
    out: &'o mut Vec<u8>,
    http11: bool,
    etcd_index: u64,
) -> Response<'o> {
    let (ri, rt) = (api.shard.raft.raft_index(), api.shard.raft.raft_term());
    success_headers(api, out, http11, 200, etcd_index, ri, rt)
}

/// The index a read of this executor's own shard can answer at now, from
/// the store as last committed: when the shard runs, no member-wide
/// operation is applying, and everything it executed is delivered.
fn quiet_index(api: &Api) -> Option<u64> {
    let sh = &api.shard;
    let o = sh.orderer.borrow();
    let closed = o.closed();
    let stopped = sh.failed.borrow().is_some();
    let quiet = !stopped && !sh.global.applying() && o.delivered() >= closed.max(sh.executed.get());
    quiet.then_some(closed)
}

/// Answer a read of this executor's own shard at once, when nothing it
/// would have to wait for is in flight (always so on a quiet member). False:
/// the read takes the asynchronous path ([`read`]) instead, as a bulk read
/// (`opts.bulk`) when it turned out to be a large listing.
fn read_now(
    api: &Api,
    key: &[u8],
    opts: &mut ReadOpts,
    head_only: bool,
    http11: bool,
    out: &mut Vec<u8>,
) -> bool {
    let sh = &api.shard;
    let Some(index) = quiet_index(api) else {
        return false;
    };
    let mut body = api.scratch.borrow_mut();
    body.clear();
    match read_at(sh, index, key, *opts, None, ReadAt::Now, &mut body) {
        Ok(i) => read_headers(api, out, http11, i).body(&body, head_only),
        Err(e) if escalated_to(&e).is_some() => return false,
        // A large listing waits for the executor's bulk gate.
        Err(e) if e.code == OVER_LIMIT => {
            opts.bulk = true;
            return false;
        }
        Err(e) => {
            drop(body);
            read_error(api, key, opts.recursive, e, head_only, http11, out);
            return true;
        }
    }
    if body.capacity() > super::SCRATCH_KEEP {
        *body = Vec::new();
    }
    true
}

/// A body at least this large is sent from the buffer it was rendered in
/// ([`answer_in_place`]); a smaller one is copied into the connection's
/// output, which keeps its own buffer.
const IN_PLACE_MIN: usize = 64 << 10;

/// Answer with `body`, a read's JSON behind [`HEAD_ROOM`] bytes of room:
/// the head goes into the room and the buffer becomes the connection's
/// output, sent from where it was rendered (no copy of many megabytes into
/// fresh memory). A small body, or one behind responses already waiting in
/// `out`, is copied after them, and its buffer kept as the executor's
/// spare if it is the largest.
pub(super) fn answer_in_place(
    api: &Api,
    mut body: Vec<u8>,
    index: u64,
    http11: bool,
    head_only: bool,
    out: &mut Output,
) {
    if !out.is_empty() || body.len() < IN_PLACE_MIN {
        read_headers(api, out, http11, index).body(&body[HEAD_ROOM..], head_only);
        crate::executor::give_back(body);
        return;
    }
    let mut head = Vec::with_capacity(512);
    read_headers(api, &mut head, http11, index).length_only(body.len() - HEAD_ROOM);
    if head_only {
        body.truncate(HEAD_ROOM);
    }
    head_in_room(body, &head, out);
}

/// Make `body`, whose first [`HEAD_ROOM`] bytes are room, the connection's
/// (empty) output with `head` at the end of that room.
pub(super) fn head_in_room(mut body: Vec<u8>, head: &[u8], out: &mut Output) {
    if head.len() <= HEAD_ROOM {
        body[HEAD_ROOM - head.len()..HEAD_ROOM].copy_from_slice(head);
        **out = body;
        out.skip_front(HEAD_ROOM - head.len());
    } else {
        body.splice(..HEAD_ROOM, head.iter().copied());
        **out = body;
    }
}

/// Answer a read once its shard has: etcd's headers with the index it
/// was read at, once this executor has delivered that index (so a watch
/// from the next index on this connection misses nothing).
async fn read(api: &Api, mut p: PendingRead, out: &mut Output) -> Option<Listing> {
    let (http11, head_only, recursive) = (p.http11, p.head_only, p.req.opts.recursive);
    // Kept only for the `/_etcd/machines` fallback.
    let machines = is_machines_path(&p.req.key).then(|| p.req.key.clone());
    if p.barrier {
        match crate::raft::read_barrier(&api.shard, p.owner).await {
            Ok(at) => p.req.opts.at_least = at,
            Err(mut e) => {
                e.index = e.index.max(api.shard.orderer.borrow().closed());
                write_error(api, http11, &e, head_only, out);
                return None;
            }
        }
    }
    if p.owner == api.shard.id {
        // A read of this executor's own shard (a large listing in its
        // turn, in slices, sent as it renders where it can be).
        let opts = p.req.opts;
        match super::stream::start(api, &p.req.key, opts, head_only, http11, out).await {
            Started::Answered(listing) => return listing,
            Started::Elsewhere => {}
        }
    }
    match api.shard.read(p.owner, p.req).await {
        Ok((body, index)) => {
            if !delivered(api, index).await {
                write_error(api, http11, &timed_out(api), head_only, out);
                return None;
            }
            // (The body comes behind room for the head: `ReadReq`.)
            answer_in_place(api, body, index, http11, head_only, out);
        }
        Err(e) => {
            let key = machines.as_deref().unwrap_or_default();
            read_error(api, key, recursive, e, head_only, http11, out);
        }
    }
    None
}

/// A failed read: the synthesised `/_etcd/machines` registry where etcd's
/// store has nothing, else etcd's error.
pub(super) fn read_error(
    api: &Api,
    key: &[u8],
    recursive: bool,
    mut e: V2Error,
    head_only: bool,
    http11: bool,
    out: &mut Vec<u8>,
) {
    if e.code == KEY_NOT_FOUND && is_machines_path(key) {
        let mut body = Vec::new();
        let index = machines_listing(api, key, recursive, &mut body);
        return read_headers(api, out, http11, index).body(&body, head_only);
    }
    e.index = e.index.max(api.shard.orderer.borrow().closed());
    write_error(api, http11, &e, head_only, out);
}

fn is_machines_path(key: &[u8]) -> bool {
    key == b"/_etcd" || key == b"/_etcd/machines" || key.starts_with(b"/_etcd/machines/")
}

/// The 0.4-era registry `/_etcd/machines`, synthesised from membership
/// (spec 8.7): one file per member, `raft=<peer>&etcd=<client>`.
fn machines_listing(api: &Api, key: &[u8], recursive: bool, out: &mut Vec<u8>) -> u64 {
    use crate::store::NodeJson;
    let index = api.shard.orderer.borrow().closed();
    let view = api.cluster.read().expect("membership");
    let members = view.sorted();
    let value = |m: &crate::cluster::Member| {
        let mut v = b"raft=".to_vec();
        enc(&mut v, m.peer_urls.first().map_or("", |s| s.as_str()));
        v.extend_from_slice(b"&etcd=");
        enc(&mut v, m.client_urls.first().map_or("", |s| s.as_str()));
        v
    };
    let file = |m: &crate::cluster::Member, out: &mut Vec<u8>| {
        let k = format!("/_etcd/machines/{}", m.name);
        NodeJson {
            key: k.as_bytes(),
            value: Some(&value(m)),
            dir: false,
            expire: None,
            now: 0,
            modified: 1,
            created: 1,
        }
        .write(out);
    };
    out.extend_from_slice(b"{\"action\":\"get\",\"node\":");
    if let Some(name) = key.strip_prefix(b"/_etcd/machines/") {
        if let Some(m) = members.iter().find(|m| m.name.as_bytes() == name) {
            file(m, out);
            out.extend_from_slice(b"}\n");
            return index;
        }
    }
    let dir = |k: &[u8], out: &mut Vec<u8>, children: &dyn Fn(&mut Vec<u8>)| {
        NodeJson {
            key: k,
            value: None,
            dir: true,
            expire: None,
            now: 0,
            modified: 1,
            created: 1,
        }
        .write_head(out);
        out.extend_from_slice(b",\"nodes\":[");
        children(out);
        out.push(b']');
        crate::store::event::write_tail(out, 1, 1);
    };
    let machines = |out: &mut Vec<u8>| {
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            file(m, out);
        }
    };
    if key == b"/_etcd" {
        dir(b"/_etcd", out, &|out: &mut Vec<u8>| {
            if recursive {
                dir(b"/_etcd/machines", out, &machines);
            } else {
                NodeJson {
                    key: b"/_etcd/machines",
                    value: None,
                    dir: true,
                    expire: None,
                    now: 0,
                    modified: 1,
                    created: 1,
                }
                .write(out);
            }
        });
    } else {
        dir(b"/_etcd/machines", out, &machines);
    }
    out.extend_from_slice(b"}\n");
    index
}

/// Go's `url.QueryEscape`.
fn enc(out: &mut Vec<u8>, s: &str) {
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-_.~".contains(&c) {
            out.push(c);
        } else if c == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(format!("%{c:02X}").as_bytes());
        }
    }
}

/// How long an answer may wait for the member-wide order to reach it (only
/// a stopped shard holds it back that long).
const ORDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Wait until this executor has delivered `index`; false on timeout. The
/// common case (already delivered) arms no timer.
pub(super) async fn delivered(api: &Api, index: u64) -> bool {
    if api.shard.orderer.borrow().delivered() >= index {
        return true;
    }
    futures_lite::future::or(
        async {
            Delivered {
                orderer: &api.shard.orderer,
                index,
            }
            .await;
            true
        },
        async {
            glommio::timer::sleep(ORDER_TIMEOUT).await;
            false
        },
    )
    .await
}

pub(super) fn timed_out(api: &Api) -> V2Error {
    V2Error::new(
        RAFT_INTERNAL,
        "etcdserver: request timed out",
        api.shard.orderer.borrow().closed(),
    )
}

/// Answer a request once its shard has.
pub async fn complete(api: &Api, p: Pending, out: &mut Output) -> Option<Listing> {
    match p {
        Pending::Read(r) => return read(api, r, out).await,
        Pending::Write(w) => write(api, w, out).await,
        Pending::Members(m) => super::admin::change_members(api, m, out).await,
        Pending::Backup(b) => super::admin::backup_done(api, b, out).await,
        Pending::Auth(a) => super::auth::complete(api, a, out).await,
        // Settled before the request is handled again (never queued).
        Pending::Verify(v) => super::auth::verify(api, v).await,
    }
    None
}

/// Answer a write once it is durable and its event delivered here.
async fn write(api: &Api, p: PendingWrite, out: &mut Vec<u8>) {
    let reply = match p.fut.await {
        Answer::Write(r) => r,
        Answer::Read(_) => {
            let e = V2Error::new(RAFT_INTERNAL, "etcdserver: internal error", 0);
            return write_error(api, p.http11, &e, false, out);
        }
    };
    match reply.outcome {
        Ok(ev) => {
            if !delivered(api, ev.index).await {
                return write_error(api, p.http11, &timed_out(api), false, out);
            }
            let status = if ev.created { 201 } else { 200 };
            let r = success_headers(
                api,
                out,
                p.http11,
                status,
                ev.index,
                reply.raft_index,
                reply.raft_term,
            );
            let plain = matches!(
                ev.action,
                Action::Set | Action::Create | Action::Update | Action::CompareAndSwap
            );
            if p.no_value && plain {
                let body = format!("{{\"action\":\"{}\"}}\n", ev.action.as_str());
                r.body(body.as_bytes(), false);
            } else {
                r.body(ev.json(), false);
            }
        }
        Err(mut e) => {
            e.index = e.index.max(api.shard.orderer.borrow().closed());
            write_error(api, p.http11, &e, false, out)
        }
    }
}

fn start_watch(
    api: &Api,
    req: &Request<'_>,
    key: &[u8],
    recursive: bool,
    stream: bool,
    since: u64,
    out: &mut Vec<u8>,
) -> Out {
    let r = api
        .shard
        .orderer
        .borrow_mut()
        .watch(key, recursive, stream, since);
    let (start, index) = match r {
        Ok(x) => x,
        Err(e) => {
            write_error(api, req.head.http11, &e, false, out);
            return Handled::Done;
        }
    };
    let r = read_headers(api, out, req.head.http11, index);
    if req.head.http11 {
        r.chunked();
    } else {
        r.until_close();
    }
    api.shard.note_watchers();
    let (past, handle) = match start {
        WatchStart::Past(e) => (Some(e), None),
        WatchStart::Waiting(h) => (None, Some(h)),
    };
    Handled::Watch(Watch {
        key: key.into(),
        recursive,
        stream,
        past,
        handle,
        next_since: 0,
    })
}

/// The next event of a watch; `None` when the watcher was dropped.
pub async fn next_event(api: &Api, w: &mut Watch) -> Option<EventBody> {
    loop {
        if let Some(e) = w.past.take() {
            w.next_since = e.index + 1;
            return Some(EventBody(e));
        }
        if w.handle.is_none() {
            // A stream that started in history goes on from after that event.
            if !w.stream {
                return None;
            }
            let r = api
                .shard
                .orderer
                .borrow_mut()
                .watch(&w.key, w.recursive, true, w.next_since);
            match r {
                Ok((WatchStart::Past(e), _)) => {
                    w.past = Some(e);
                    continue;
                }
                Ok((WatchStart::Waiting(h), _)) => w.handle = Some(h),
                Err(_) => return None,
            }
        }
        let h = w.handle.as_ref().expect("registered");
        return h.rx.recv().await.map(EventBody);
    }
}

/// Unregister a watch whose client is gone or that is finished.
pub fn cancel(api: &Api, w: Watch) {
    if let Some(h) = w.handle {
        api.shard.orderer.borrow_mut().hub.remove(&h.key, h.id);
        api.shard.note_watchers();
    }
}
