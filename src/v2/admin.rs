//! The non-keys endpoints: `/version`, `/health`, `/v2/machines`,
//! `/v2/members`, and `/v2/stats/{self,store,leader}` (spec 8.1–8.5).
//!
//! Each reads membership and shard state and writes one response; none of
//! them touches the keyspace. Membership changes (`POST`, `PUT`, `DELETE`
//! on `/v2/members`) go through the raft loop as configuration changes and
//! are answered once applied here ([`change_members`]).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::keys::Pending;
use super::{method_not_allowed, Api};
use crate::cluster::Member;
use crate::etcd::json::{write_str, write_time};
use crate::http::response::{Response, JSON, TEXT};
use crate::http::{Handled, Method, Request};
use crate::shard::Answer;

/// The member's leader as the admin endpoints report it, and whether it is
/// this member: in a sharded cluster, group 0's (the group that changes
/// the membership, whose leader sequences every group), whichever
/// executor took the request.
fn leader(api: &Api, me: u64) -> (u64, bool) {
    let leader = if api.shard.shared.seq.enabled {
        api.shard.shared.seq.leader(0)
    } else {
        api.shard.raft.leader()
    };
    (leader, leader != 0 && leader == me)
}

/// The etcd version kardia answers as, for client compatibility.
pub const ETCD_VERSION: &str = "3.4.23";
pub const CLUSTER_VERSION: &str = "3.4.0";

fn only_get(req: &Request<'_>, out: &mut Vec<u8>) -> bool {
    if req.head.method == Method::Get {
        return true;
    }
    method_not_allowed(req, b"GET", out);
    false
}

fn send(
    req: &Request<'_>,
    status: u16,
    ct: &[u8],
    extra: &[(&str, &[u8])],
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let mut r = Response::start(out, req.head.http11, status);
    r.header("Content-Type", ct);
    for (k, v) in extra {
        r.header(k, v);
    }
    r.body(body, req.head.method == Method::Head);
}

pub fn version(_api: &Api, req: &Request<'_>, out: &mut Vec<u8>) {
    if !only_get(req, out) {
        return;
    }
    let body =
        format!("{{\"etcdserver\":\"{ETCD_VERSION}\",\"etcdcluster\":\"{CLUSTER_VERSION}\"}}");
    send(req, 200, JSON, &[], body.as_bytes(), out);
}

pub fn health(api: &Api, req: &Request<'_>, out: &mut Vec<u8>) {
    if !only_get(req, out) {
        return;
    }
    if api.shard.healthy() {
        send(req, 200, TEXT, &[], b"{\"health\":\"true\"}", out);
    } else {
        send(req, 503, TEXT, &[], b"{\"health\":\"false\"}\n", out);
    }
}

pub fn machines(api: &Api, req: &Request<'_>, out: &mut Vec<u8>) {
    if !matches!(req.head.method, Method::Get | Method::Head) {
        method_not_allowed(req, b"GET,HEAD", out);
        return;
    }
    let view = api.cluster.read().expect("membership");
    let urls: Vec<&str> = view
        .sorted()
        .into_iter()
        .flat_map(|m| m.client_urls.iter().map(|s| s.as_str()))
        .collect();
    send(req, 200, TEXT, &[], urls.join(", ").as_bytes(), out);
}

fn member_json(m: &crate::cluster::Member, out: &mut Vec<u8>) {
    let _ = write!(Str(out), "{{\"id\":\"{:x}\",\"name\":", m.id);
    write_str(out, m.name.as_bytes());
    for (field, urls) in [("peerURLs", &m.peer_urls), ("clientURLs", &m.client_urls)] {
        let _ = write!(Str(out), ",\"{field}\":[");
        for (i, u) in urls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, u.as_bytes());
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// A membership change waiting for its configuration change.
pub struct PendingMembers {
    op: MemberOp,
    http11: bool,
}

enum MemberOp {
    Add(Member),
    Update(Member),
    Remove(u64),
}

fn members_error(
    req: &Request<'_>,
    hdr: &[(&str, &[u8])],
    status: u16,
    msg: &str,
    out: &mut Vec<u8>,
) {
    let mut body = b"{\"message\":".to_vec();
    write_str(&mut body, msg.as_bytes());
    body.push(b'}');
    send(req, status, JSON, hdr, &body, out);
}

/// The peer URLs of a members POST/PUT body, validated as etcd does.
fn peer_urls_of(req: &Request<'_>) -> Result<Vec<String>, (u16, String)> {
    let ct = req.head.content_type.unwrap_or(b"");
    let ct_main = ct.split(|&c| c == b';').next().unwrap_or(b"");
    if ct_main.trim_ascii() != b"application/json" {
        return Err((
            415,
            format!(
                "Bad Content-Type {}, accept application/json",
                String::from_utf8_lossy(ct)
            ),
        ));
    }
    let mut body = req.body.to_vec();
    let v = simd_json::to_owned_value(&mut body).map_err(|e| (400, e.to_string()))?;
    use simd_json::prelude::*;
    let urls = v
        .get("peerURLs")
        .and_then(|u| u.as_array())
        .ok_or((400, "missing peerURLs".to_string()))?;
    let mut out = Vec::new();
    for u in urls {
        let s = u
            .as_str()
            .ok_or((400, "peerURLs must be strings".to_string()))?;
        let ok = s.strip_prefix("http://").is_some_and(|r| {
            r.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        });
        if !ok {
            return Err((
                400,
                format!("URL scheme must be http, https, unix, or unixs: {s}"),
            ));
        }
        out.push(s.trim_end_matches('/').to_string());
    }
    if out.is_empty() {
        return Err((400, "missing peerURLs".to_string()));
    }
    Ok(out)
}

/// `/v2/members[/...]`.
pub fn members(
    api: &Api,
    req: &Request<'_>,
    rest: &[u8],
    out: &mut Vec<u8>,
) -> Handled<Pending, super::keys::Watch> {
    let cid = format!("{:x}", api.cluster.read().expect("membership").id);
    let hdr: &[(&str, &[u8])] = &[("X-Etcd-Cluster-Id", cid.as_bytes())];
    // v2 auth: changes need root (etcd's hasWriteRootAccess).
    if matches!(req.head.method, Method::Post | Method::Put | Method::Delete) {
        if let Some(h) = super::auth::check_root(api, req, true, out) {
            return h;
        }
    }
    let id_of = |rest: &[u8]| {
        std::str::from_utf8(rest.strip_prefix(b"/").unwrap_or(rest))
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    };
    let change = match req.head.method {
        Method::Get => None,
        Method::Post if rest.is_empty() || rest == b"/" => {
            let urls = match peer_urls_of(req) {
                Ok(u) => u,
                Err((st, m)) => {
                    members_error(req, hdr, st, &m, out);
                    return Handled::Done;
                }
            };
            let view = api.cluster.read().expect("membership");
            if view.sharing_peer_url(&urls).next().is_some() {
                members_error(req, hdr, 409, "membership: peerURL exists", out);
                return Handled::Done;
            }
            let id = crate::cluster::member_id(&urls, &api.token);
            if view.get(id).is_some() || view.removed.contains(&id) {
                members_error(req, hdr, 409, "membership: ID exists", out);
                return Handled::Done;
            }
            Some(MemberOp::Add(Member {
                id,
                name: String::new(),
                peer_urls: urls,
                client_urls: Vec::new(),
            }))
        }
        Method::Put | Method::Delete if rest.len() > 1 => {
            let view = api.cluster.read().expect("membership");
            let raw = String::from_utf8_lossy(&rest[1..]).into_owned();
            let Some(id) = id_of(rest) else {
                members_error(req, hdr, 404, &format!("No such member: {raw}"), out);
                return Handled::Done;
            };
            if view.removed.contains(&id) {
                members_error(
                    req,
                    hdr,
                    410,
                    &format!("Member permanently removed: {id:x}"),
                    out,
                );
                return Handled::Done;
            }
            let Some(m) = view.get(id).cloned() else {
                members_error(req, hdr, 404, &format!("No such member: {raw}"), out);
                return Handled::Done;
            };
            if req.head.method == Method::Delete {
                Some(MemberOp::Remove(id))
            } else {
                let urls = match peer_urls_of(req) {
                    Ok(u) => u,
                    Err((st, msg)) => {
                        members_error(req, hdr, st, &msg, out);
                        return Handled::Done;
                    }
                };
                if view.sharing_peer_url(&urls).any(|x| x.id != id) {
                    members_error(req, hdr, 409, "membership: peerURL exists", out);
                    return Handled::Done;
                }
                Some(MemberOp::Update(Member {
                    peer_urls: urls,
                    ..m
                }))
            }
        }
        _ => {
            method_not_allowed(req, b"GET,POST,DELETE,PUT", out);
            return Handled::Done;
        }
    };
    if let Some(op) = change {
        if api.shard.shared.shards > 1 && !api.shard.shared.seq.enabled {
            members_error(
                req,
                hdr,
                500,
                "membership changes need every member to run --shards 1",
                out,
            );
            return Handled::Done;
        }
        return Handled::Pending(Pending::Members(PendingMembers {
            op,
            http11: req.head.http11,
        }));
    }
    let view = api.cluster.read().expect("membership");
    let mut body = Vec::new();
    match rest {
        b"" | b"/" => {
            body.extend_from_slice(b"{\"members\":[");
            for (i, m) in view.sorted().into_iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                member_json(m, &mut body);
            }
            body.extend_from_slice(b"]}\n");
            send(req, 200, JSON, hdr, &body, out);
        }
        b"/leader" => match view.get(leader(api, view.local().id).0) {
            Some(m) => {
                member_json(m, &mut body);
                body.push(b'\n');
                send(req, 200, JSON, hdr, &body, out);
            }
            None => send(
                req,
                503,
                JSON,
                hdr,
                b"{\"message\":\"During election\"}",
                out,
            ),
        },
        _ => send(req, 404, JSON, hdr, b"{\"message\":\"Not found\"}", out),
    }
    Handled::Done
}

/// Carry out a membership change and answer once it is applied here.
pub async fn change_members(api: &Api, p: PendingMembers, out: &mut Vec<u8>) {
    let shard = &api.shard;
    let (answer, created) = match p.op {
        MemberOp::Add(m) => {
            let json = {
                let mut b = Vec::new();
                member_json(&m, &mut b);
                b.push(b'\n');
                b
            };
            (crate::raft::add_member(shard, m).await, Some(json))
        }
        MemberOp::Update(m) => (crate::raft::add_member(shard, m).await, None),
        MemberOp::Remove(id) => (crate::raft::remove_member(shard, id).await, None),
    };
    let cid = format!("{:x}", api.cluster.read().expect("membership").id);
    let status = match (&answer, &created) {
        (Answer::Read(Ok(_)), Some(_)) => 201,
        (Answer::Read(Ok(_)), None) => 204,
        _ => 500,
    };
    if let Answer::Read(Err(e)) = &answer {
        tracing::warn!(cause = %String::from_utf8_lossy(&e.cause), "membership change failed");
    }
    let mut r = Response::start(out, p.http11, status);
    r.header("X-Etcd-Cluster-Id", cid.as_bytes());
    match (status, created) {
        (201, Some(json)) => {
            r.header("Content-Type", JSON);
            r.body(&json, false);
        }
        (204, _) => r.body(b"", false),
        _ => {
            r.header("Content-Type", JSON);
            r.body(b"{\"message\":\"Internal Server Error\"}", false);
        }
    }
}

pub fn stats_store(api: &Api, req: &Request<'_>, out: &mut Vec<u8>) {
    if !only_get(req, out) {
        return;
    }
    // Summed over every shard (each publishes its counters after each
    // batch and read).
    api.shard.publish_figures();
    let sh = &api.shard.shared;
    let sum = |i: usize| -> u64 {
        sh.figures
            .iter()
            .map(|f| f.stats[i].load(Ordering::Relaxed))
            .sum()
    };
    let watchers: u64 = sh
        .figures
        .iter()
        .map(|f| f.watchers.load(Ordering::Relaxed))
        .sum();
    let body = format!(
        "{{\"getsSuccess\":{},\"getsFail\":{},\"setsSuccess\":{},\"setsFail\":{},\"deleteSuccess\":{},\"deleteFail\":{},\"updateSuccess\":{},\"updateFail\":{},\"createSuccess\":{},\"createFail\":{},\"compareAndSwapSuccess\":{},\"compareAndSwapFail\":{},\"compareAndDeleteSuccess\":{},\"compareAndDeleteFail\":{},\"expireCount\":{},\"watchers\":{}}}",
        sum(0),
        sum(1),
        sum(2),
        sum(3),
        sum(4),
        sum(5),
        sum(6),
        sum(7),
        sum(8),
        sum(9),
        sum(10),
        sum(11),
        sum(12),
        sum(13),
        sum(14),
        watchers
    );
    send(req, 200, JSON, &[], body.as_bytes(), out);
}

pub fn stats_self(api: &Api, req: &Request<'_>, out: &mut Vec<u8>) {
    if !only_get(req, out) {
        return;
    }
    let view = api.cluster.read().expect("membership");
    let me = view.local();
    let (leader_id, leader) = leader(api, me.id);
    let start = nanos(api.start);
    let mut body = Vec::new();
    let _ = write!(Str(&mut body), "{{\"name\":");
    write_str(&mut body, me.name.as_bytes());
    let _ = write!(
        Str(&mut body),
        ",\"id\":\"{:x}\",\"state\":\"{}\",\"startTime\":",
        me.id,
        if leader {
            "StateLeader"
        } else {
            "StateFollower"
        }
    );
    write_time(&mut body, start);
    let _ = write!(
        Str(&mut body),
        ",\"leaderInfo\":{{\"leader\":\"{}\",\"uptime\":\"",
        match leader_id {
            0 => String::new(),
            id => format!("{id:x}"),
        }
    );
    let up = SystemTime::now()
        .duration_since(api.start)
        .unwrap_or_default();
    body.extend_from_slice(go_duration(up).as_bytes());
    body.extend_from_slice(b"\",\"startTime\":");
    write_time(&mut body, start);
    let (recv, sent) = api
        .shard
        .raft
        .transport()
        .map_or((0, 0), |t| (t.appends_received.get(), t.appends_sent.get()));
    let _ = write!(
        Str(&mut body),
        "}},\"recvAppendRequestCnt\":{recv},\"sendAppendRequestCnt\":{sent}}}"
    );
    send(req, 200, JSON, &[], &body, out);
}

pub fn stats_leader(api: &Api, req: &Request<'_>, out: &mut Vec<u8>) {
    if !only_get(req, out) {
        return;
    }
    let me = api.cluster.read().expect("membership").local().id;
    if !leader(api, me).1 {
        send(
            req,
            403,
            JSON,
            &[],
            b"{\"message\":\"not current leader\"}",
            out,
        );
        return;
    }
    // Per follower: heartbeat round trips in milliseconds; append
    // responses that accepted entries (success), and rejections plus
    // messages the transport dropped (fail).
    let view = api.cluster.read().expect("membership");
    let me = view.local().id;
    let stats = api
        .shard
        .raft
        .transport()
        .map(|t| t.stats.borrow().clone())
        .unwrap_or_default();
    let mut body = format!("{{\"leader\":\"{me:x}\",\"followers\":{{");
    for (i, m) in view.sorted().into_iter().filter(|m| m.id != me).enumerate() {
        let st = stats.get(&m.id).copied().unwrap_or_default();
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            "\"{:x}\":{{\"latency\":{{\"current\":{},\"average\":{},\"standardDeviation\":{},\"minimum\":{},\"maximum\":{}}},\"counts\":{{\"fail\":{},\"success\":{}}}}}",
            m.id,
            st.rtt_current,
            st.rtt_mean,
            st.rtt_stddev(),
            st.rtt_min,
            st.rtt_max,
            st.dropped + st.appends_rejected,
            st.appends_ok
        );
    }
    body.push_str("}}");
    send(req, 200, JSON, &[], body.as_bytes(), out);
}

/// Prometheus metrics in the text format (etcd serves them on the client
/// port too).
pub fn metrics(api: &Api, req: &Request<'_>, out: &mut Vec<u8>) {
    if !only_get(req, out) {
        return;
    }
    let sh = &api.shard;
    sh.publish_figures();
    let delivered = sh.orderer.borrow().delivered();
    let mut body = Vec::with_capacity(16 << 10);
    sh.shared.metrics.render(&sh.shared, delivered, &mut body);
    send(req, 200, crate::metrics::CONTENT_TYPE, &[], &body, out);
}

/// `POST /kardia/backup?dir=/absolute/path`: an online, consistent backup
/// of the member into a new directory on its machine (see
/// `shard::global::Job::Backup`), answered when it is complete and synced.
pub struct PendingBackup {
    dir: std::path::PathBuf,
    http11: bool,
}

/// The prologue of a member-wide admin action: POST only (405 otherwise),
/// and by root when auth is on. `Some`: answered here.
fn post_as_root(
    api: &Api,
    req: &Request<'_>,
    out: &mut Vec<u8>,
) -> Option<Handled<super::keys::Pending, super::keys::Watch>> {
    if req.head.method != Method::Post {
        let mut r = Response::start(out, req.head.http11, 405);
        r.header("Allow", b"POST");
        r.body(b"Method Not Allowed\n", req.head.method == Method::Head);
        return Some(Handled::Done);
    }
    super::auth::check_root(api, req, false, out)
}

/// `POST /debug/kardia/transfer?shard=S&to=ID`: if this member leads shard
/// S's raft group, hand its leadership to member ID (hex), as etcd's
/// `move-leader` does for its one group. For tests and operators of sharded
/// clusters, where group 0's leader takes the other groups back within a
/// few heartbeats. Answered at once (202) with what was asked; whether the
/// move happened shows in `/debug/kardia/shards`. Root only when auth is on.
pub fn transfer(
    api: &Api,
    req: &Request<'_>,
    out: &mut Vec<u8>,
) -> Handled<super::keys::Pending, super::keys::Watch> {
    if let Some(h) = post_as_root(api, req, out) {
        return h;
    }
    let (mut shard, mut to) = (None, None);
    for pair in req.head.query.split(|&b| b == b'&') {
        let text = std::str::from_utf8(pair).unwrap_or("");
        if let Some(v) = text.strip_prefix("shard=") {
            shard = v.parse::<usize>().ok();
        } else if let Some(v) = text.strip_prefix("to=") {
            to = u64::from_str_radix(v, 16).ok();
        }
    }
    let n = api.shard.shared.shards;
    let (Some(shard), Some(to)) = (shard.filter(|&s| s < n), to.filter(|&t| t != 0)) else {
        let body = format!(
            "{{\"message\":\"transfer: give ?shard= (0 to {}) and ?to= (a member id in hex)\"}}\n",
            n - 1
        );
        send(req, 400, JSON, &[], body.as_bytes(), out);
        return Handled::Done;
    };
    api.shard
        .send(shard, crate::shard::mesh::Msg::Transfer { to });
    let body = format!("{{\"shard\":{shard},\"to\":\"{to:x}\"}}\n");
    send(req, 202, JSON, &[], body.as_bytes(), out);
    Handled::Done
}

pub fn backup(
    api: &Api,
    req: &Request<'_>,
    out: &mut Vec<u8>,
) -> Handled<super::keys::Pending, super::keys::Watch> {
    // A backup copies everything, auth records included: root only.
    if let Some(h) = post_as_root(api, req, out) {
        return h;
    }
    let mut dir = Vec::new();
    for pair in req.head.query.split(|&b| b == b'&') {
        if let Some(v) = pair.strip_prefix(b"dir=") {
            if super::form::unescape(v, &mut dir).is_err() {
                dir.clear();
            }
        }
    }
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&dir).into_owned());
    if !dir.is_absolute() {
        let body = b"{\"message\":\"backup: give the new backup directory as ?dir=/absolute/path (it must not exist yet)\"}\n";
        send(req, 400, JSON, &[], body, out);
        return Handled::Done;
    }
    Handled::Pending(super::keys::Pending::Backup(PendingBackup {
        dir,
        http11: req.head.http11,
    }))
}

pub async fn backup_done(api: &Api, p: PendingBackup, out: &mut Vec<u8>) {
    let (status, body) = match api.shard.backup(p.dir).await {
        Ok((body, _)) => (201, body),
        Err(e) => {
            let m = String::from_utf8_lossy(&e.cause).into_owned();
            let mut b = Vec::new();
            b.extend_from_slice(b"{\"message\":");
            crate::etcd::json::write_str(&mut b, m.as_bytes());
            b.extend_from_slice(b"}\n");
            (500, b)
        }
    };
    let mut r = Response::start(out, p.http11, status);
    r.header("Content-Type", JSON);
    r.body(&body, false);
}

/// A sharded cluster's leader of every group, as each group's loop last
/// published it: `"groupLeaders":["hex",...],` (nothing elsewhere). A
/// member that leads every group is the sequencer.
fn group_leaders(sh: &crate::shard::Shard) -> String {
    if !sh.shared.seq.enabled {
        return String::new();
    }
    let ids: Vec<String> = (0..sh.shared.shards)
        .map(|g| format!("\"{:x}\"", sh.shared.seq.leader(g)))
        .collect();
    format!("\"groupLeaders\":[{}],", ids.join(","))
}

/// kardia's diagnostics: per-shard keys, applied index, write-path counters.
pub fn shards(api: &Api, req: &Request<'_>, out: &mut Vec<u8>) {
    if !only_get(req, out) {
        return;
    }
    // This executor's shard in full; the others from their published
    // figures.
    let sh = &api.shard;
    sh.publish_figures();
    let m = &sh.metrics;
    let h = m.sync_micros.borrow();
    let (p50, p99, max) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max());
    drop(h);
    let o = sh.orderer.borrow();
    let mut body = format!(
        "{{\"shards\":{},\"unitDepth\":{},\"memberWideSessions\":{},\"memberWideJobs\":{},\"index\":{},\"executor\":{{\"id\":{},\"leader\":{},\"raftIndex\":{},\"raftTerm\":{},\"walSyncedEntries\":{},\"walSyncSeconds\":{:.6},\"walSyncMicros\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\"delivered\":{},\"held\":{},\"hash\":\"{:016x}\"}},{}\"shard\":[",
        sh.shared.shards,
        sh.shared.unit_depth,
        sh.shared.sessions.load(Ordering::Relaxed),
        sh.shared.session_jobs.load(Ordering::Relaxed),
        o.closed(),
        sh.id,
        sh.raft.is_leader(),
        sh.raft.raft_index(),
        sh.raft.raft_term(),
        m.synced_entries.get(),
        m.sync_nanos.get() as f64 / 1e9,
        p50,
        p99,
        max,
        o.delivered(),
        o.held(),
        // The content of this executor's shard (equal on members that
        // agree), for convergence checks.
        sh.store.borrow().content_hash().unwrap_or(0),
        group_leaders(sh),
    );
    drop(o);
    for (i, f) in sh.shared.figures.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        body.push_str(&format!(
            "{{\"id\":{i},\"nodes\":{},\"etcdIndex\":{},\"appliedIndex\":{},\"proposals\":{},\"writesPerSecond\":{},\"walSyncs\":{},\"walBytes\":{},\"walSealedSegments\":{},\"walOpenSegmentBytes\":{},\"watchers\":{},\"failed\":{}}}",
            l(&f.nodes),
            l(&f.index),
            l(&f.applied),
            l(&f.writes),
            l(&f.rate),
            l(&f.syncs),
            l(&f.wal_bytes),
            l(&f.wal_segments),
            l(&f.wal_offset),
            l(&f.watchers),
            l(&f.failed) != 0
        ));
    }
    body.push_str("]}\n");
    send(req, 200, JSON, &[], body.as_bytes(), out);
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Go's `time.Duration.String()` (e.g. `56.1476099s`, `1m2.5s`).
pub fn go_duration(d: std::time::Duration) -> String {
    let total = d.as_nanos();
    if total == 0 {
        return "0s".into();
    }
    if total < 1_000_000_000 {
        let (unit, div) = if total < 1_000 {
            ("ns", 1)
        } else if total < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", frac(total, div));
    }
    let secs = total / 1_000_000_000;
    let ns = total % 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let sec = frac(s * 1_000_000_000 + ns, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, m) => format!("{m}m{sec}s"),
        (h, m) => format!("{h}h{m}m{sec}s"),
    }
}

fn frac(v: u128, div: u128) -> String {
    let whole = v / div;
    let mut rest = v % div;
    if rest == 0 {
        return whole.to_string();
    }
    let mut digits = String::new();
    let mut d = div;
    while rest > 0 {
        d /= 10;
        digits.push(char::from(b'0' + (rest / d) as u8));
        rest %= d;
    }
    format!("{whole}.{digits}")
}

/// `fmt::Write` into a byte buffer.
struct Str<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Str<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(
            go_duration(Duration::from_nanos(56_147_609_900)),
            "56.1476099s"
        );
        assert_eq!(go_duration(Duration::from_millis(62_500)), "1m2.5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
    }
}
