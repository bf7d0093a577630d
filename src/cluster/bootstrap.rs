//! Joining a cluster at start-up, before the executors run: the
//! membership a member starts with, from its flags (a static
//! `--initial-cluster`), from a listed member (0.x `-peers` joins, and a
//! member added through the members API that starts with
//! `--initial-cluster-state existing`), or from its data dir.
//!
//! In: the [`Config`]. Out: the [`Cluster`] and the voters of a new raft
//! group. The requests are the client side of the peer port's join
//! exchange ([`super::transport`] frames, answered by
//! `raft::join::Inbound`); they block, which is fine before any executor
//! starts.

use std::net::ToSocketAddrs;
use std::time::Duration;

use super::transport::{
    decode_join_reply, encode_hello, frame_len, host_port, KIND_JOIN, KIND_LOOKUP,
};
use super::{cluster_id, member_id, Cluster, Layout, Member};
use crate::config::Config;

/// What a member starts with: its membership, the voters of a raft group
/// that has no recorded configuration yet (this member alone, the static
/// cluster, or none: joining, the leader brings this member up to date),
/// and the shard layout of the cluster it joins (learned from a peer).
pub struct Start {
    pub cluster: Cluster,
    pub initial_voters: Vec<u64>,
    pub layout: Option<Layout>,
}

/// The [`Start`] of this member. `existing`: the data dir already records
/// an identity (it wins; flags naming peers are then ignored).
pub fn membership(
    cfg: &Config,
    existing: bool,
    tls: Option<&crate::tls::PeerConfigs>,
) -> Result<Start, String> {
    let cluster = cluster_of(cfg);
    if existing {
        if !cfg.peers.is_empty() {
            tracing::info!("the data dir records this member's cluster; -peers is only used to join the first time");
        }
        let initial_voters = vec![cluster.local().id];
        return Ok(Start {
            cluster,
            initial_voters,
            layout: None,
        });
    }
    let (cluster, initial_voters, layout) = if !cfg.peers.is_empty() {
        let (c, l) = join(cfg, tls)?;
        (c, Vec::new(), l)
    } else if cfg.initial_cluster_state == "existing" {
        let (c, l) = existing_membership(cfg, cluster, tls)?;
        (c, Vec::new(), l)
    } else {
        let voters = cluster.members.iter().map(|m| m.id).collect();
        (cluster, voters, None)
    };
    Ok(Start {
        cluster,
        initial_voters,
        layout,
    })
}

/// The layout this member was started with (0 / None: not given).
fn wanted_layout(cfg: &Config) -> Layout {
    Layout {
        shards: cfg.shards,
        unit_depth: cfg.unit_depth,
    }
}

/// Build the cluster description from the bootstrap flags.
fn cluster_of(cfg: &Config) -> Cluster {
    let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
    for (n, u) in &cfg.initial_cluster {
        match by_name.iter_mut().find(|(m, _)| m == n) {
            Some((_, urls)) => urls.push(u.clone()),
            None => by_name.push((n.clone(), vec![u.clone()])),
        }
    }
    let members: Vec<Member> = by_name
        .into_iter()
        .map(|(name, peer_urls)| Member {
            id: member_id(&peer_urls, &cfg.initial_cluster_token),
            client_urls: if name == cfg.name {
                cfg.advertise_client_urls.clone()
            } else {
                Vec::new()
            },
            name,
            peer_urls,
        })
        .collect();
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let local = members.iter().position(|m| m.name == cfg.name).unwrap_or(0);
    Cluster {
        id: cluster_id(&ids),
        members,
        local,
        removed: Vec::new(),
    }
}

/// 0.x `-peers`: ask the listed members, in turn, to add this one; retry
/// for a while (the cluster may be electing). Returns the cluster, with
/// this member in it, and the layout its members run.
fn join(
    cfg: &Config,
    tls: Option<&crate::tls::PeerConfigs>,
) -> Result<(Cluster, Option<Layout>), String> {
    let me = Member {
        id: 0,
        name: cfg.name.clone(),
        peer_urls: cfg.initial_advertise_peer_urls.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
    };
    let addrs: Vec<&str> = cfg.peers.iter().map(String::as_str).collect();
    let request = format!("{}\n{}", me.encode(), wanted_layout(cfg).line());
    let (c, layout) = ask_peers(&addrs, Duration::from_secs(60), |addr| {
        match exchange(addr, KIND_JOIN, request.as_bytes(), tls) {
            Ok(bytes) => Ok(Cluster::decode_named(&bytes, &me.name)
                .map(|c| (c, Layout::find(&bytes)))
                .ok_or_else(|| format!("{addr}: the join reply does not list this member"))),
            Err(e) if e.contains("already in the cluster") || e.contains("shard layout") => {
                Ok(Err(format!("cannot join through {addr}: {e}")))
            }
            Err(e) => Err(e),
        }
    })
    .map_err(|last| {
        format!(
            "cannot join the cluster through -peers {}: {last}",
            cfg.peers.join(",")
        )
    })??;
    tracing::info!(member_id = %format!("{:x}", c.local().id), cluster_id = %format!("{:x}", c.id), "joined the cluster");
    Ok((c, layout))
}

/// Ask the peer addresses in turn, every 500 ms, until one answers (`ask`
/// gives `Ok`) or `patience` runs out (the last error).
fn ask_peers<T>(
    addrs: &[&str],
    patience: Duration,
    mut ask: impl FnMut(&str) -> Result<T, String>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + patience;
    let mut last = String::from("no peer address to ask");
    loop {
        for addr in addrs {
            match ask(addr) {
                Ok(t) => return Ok(t),
                Err(e) => last = e,
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `--initial-cluster-state existing`: this member was added through the
/// members API; learn the cluster (its id and members) from another member
/// listed in `--initial-cluster`, and the layout its members run (this
/// member is already a voter: a layout it cannot run stops it here).
fn existing_membership(
    cfg: &Config,
    flags: Cluster,
    tls: Option<&crate::tls::PeerConfigs>,
) -> Result<(Cluster, Option<Layout>), String> {
    let me = flags.local().clone();
    let addrs: Vec<&str> = flags
        .members
        .iter()
        .filter(|m| m.id != me.id)
        .filter_map(|m| m.peer_urls.first())
        .map(|u| host_port(u))
        .collect();
    let bytes = ask_peers(&addrs, Duration::from_secs(30), |addr| {
        request_membership(addr, tls)
    })
    .map_err(|last| format!("cannot reach the cluster to join it: {last}"))?;
    let Some(mut c) = Cluster::decode(&bytes, me.id) else {
        return Err(format!(
            "member {:?} ({:x}, peer URLs {}) is not in the cluster: add it first with POST /v2/members",
            cfg.name,
            me.id,
            me.peer_urls.join(",")
        ));
    };
    let layout = Layout::find(&bytes);
    if let Some(why) = layout.and_then(|l| l.refuses(wanted_layout(cfg))) {
        return Err(format!(
            "member {:?} cannot run in this cluster: {why}; remove it (DELETE /v2/members/{:x}) or restart it so",
            cfg.name, me.id
        ));
    }
    let i = c.local;
    c.members[i].name = me.name.clone();
    c.members[i].client_urls = me.client_urls.clone();
    Ok((c, layout))
}

/// Ask the member at peer address `addr` for the membership.
fn request_membership(
    addr: &str,
    tls: Option<&crate::tls::PeerConfigs>,
) -> Result<Vec<u8>, String> {
    exchange(addr, KIND_LOOKUP, b"", tls)
}

/// One request frame and its reply, blocking (start-up only); over TLS
/// when the transport uses it.
fn exchange(
    addr: &str,
    kind: u8,
    payload: &[u8],
    tls: Option<&crate::tls::PeerConfigs>,
) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let tcp = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(c) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let conn =
                rustls::ClientConnection::new(c.client.clone(), crate::tls::server_name(host)?)
                    .map_err(|e| format!("{addr}: {e}"))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let mut out = encode_hello(0, 0).to_vec();
    out.extend_from_slice(&((1 + payload.len()) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    s.write_all(&out).map_err(|e| format!("{addr}: {e}"))?;
    s.flush().map_err(|e| format!("{addr}: {e}"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(|e| format!("{addr}: no answer ({e})"))?;
    let len = frame_len(len).ok_or_else(|| format!("{addr}: bad join reply"))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .map_err(|e| format!("{addr}: {e}"))?;
    match decode_join_reply(&body) {
        Some(Ok(b)) => Ok(b.to_vec()),
        Some(Err(e)) => Err(e),
        None => Err(format!("{addr}: bad join reply")),
    }
}

/// A blocking stream, plain or TLS.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}
