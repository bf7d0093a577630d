//! Wiring a member together: identity, executors, shards, raft loops and
//! client listeners.
//!
//! [`run`] takes a [`Config`], checks the data dir's identity, binds the
//! client ports (refusing ports already in use), starts one glommio executor
//! per shard, recovers each shard's store and raft group, and serves HTTP
//! until the process is killed.

use std::cell::Cell;
use std::net::ToSocketAddrs;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::cluster::{cluster_id, member_id, Cluster, Member};
use crate::config::Config;
use crate::raft::RaftOptions;
use crate::shard::Shard;
use crate::storage::identity::{self, Identity};
use crate::store::{Options, Store};
use crate::v2::Api;

/// Build the cluster description from the bootstrap flags.
pub fn cluster_of(cfg: &Config) -> Cluster {
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
    }
}

fn host_port(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// Bind a client port. A port held by our own previous incarnation is
/// released by the kernel shortly after it dies (its io_uring is torn down
/// asynchronously), so "in use" is retried for a few seconds.
fn bind_retrying(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Run a member until killed. Errors are for the operator, one line each.
pub fn run(cfg: Config) -> Result<(), String> {
    let cluster = cluster_of(&cfg);
    let me = cluster.local().clone();
    if cfg.force_new_cluster {
        tracing::warn!("-force / --force-new-cluster: a single-member kardia always starts as its own cluster; nothing is wiped");
    }
    identity::load_or_create(
        &cfg.data_dir,
        &Identity {
            name: cfg.name.clone(),
            member_id: me.id,
            cluster_id: cluster.id,
            shards: cfg.shards,
        },
    )?;
    // Bind before starting anything, without SO_REUSEPORT, so a port that
    // is already in use (by etcd, or another kardia) is an error, not a
    // silently shared socket.
    let mut fds = Vec::new();
    for url in &cfg.listen_client_urls {
        let hp = host_port(url);
        let addr = hp
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve listen address {url}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve listen address {url}"))?;
        let l = bind_retrying(addr).map_err(|e| format!("cannot listen on {url}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        fds.push(l.into_raw_fd());
    }
    tracing::info!(
        name = %cfg.name,
        member_id = %format!("{:x}", me.id),
        cluster_id = %format!("{:x}", cluster.id),
        data_dir = %cfg.data_dir.display(),
        listen_client_urls = %cfg.listen_client_urls.join(","),
        advertise_client_urls = %cfg.advertise_client_urls.join(","),
        "kardia starting"
    );
    let shard_dir = cfg.data_dir.join("shard-0");
    let cfg2 = cfg.clone();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("kardia-shard-0")
        .io_memory(1 << 20)
        .spawn(move || async move {
            let cfg = cfg2;
            let store = match Store::open(
                &shard_dir.join("lmdb"),
                &Options {
                    map_size: cfg.map_size,
                    history: cfg.history,
                },
            ) {
                Ok(s) => s,
                Err(e) => return Err(format!("cannot open store in {}: {e}", shard_dir.display())),
            };
            let shard = Rc::new(Shard::new(0, store));
            let opts = RaftOptions {
                member_id: me.id,
                heartbeat: cfg.heartbeat,
                election_ticks: (cfg.election.as_millis() / cfg.heartbeat.as_millis().max(1)).max(2)
                    as usize,
                checkpoint_interval: cfg.checkpoint_interval,
                segment_bytes: cfg.wal_segment_bytes,
            };
            let group = crate::raft::start(&shard, &shard_dir.join("wal"), opts)
                .await
                .map_err(|e| format!("cannot recover shard 0 in {}: {e}", shard_dir.display()))?;
            glommio::spawn_local(crate::raft::run(shard.clone(), group)).detach();
            let api = Rc::new(Api::new(shard.clone(), Rc::new(cluster)));
            let limits = Rc::new(cfg.limits.clone());
            let open = Rc::new(Cell::new(0usize));
            for fd in fds {
                // SAFETY: `fd` is a bound, listening socket we own.
                let l = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                glommio::spawn_local(crate::http::serve(
                    l,
                    api.clone(),
                    limits.clone(),
                    open.clone(),
                ))
                .detach();
            }
            tracing::info!(
                applied = shard.store.borrow().applied().0,
                index = shard.store.borrow().index(),
                "kardia ready"
            );
            // Serve until killed.
            loop {
                glommio::timer::sleep(Duration::from_secs(3600)).await;
            }
        })
        .map_err(|e| format!("cannot start executor: {e}"))?;
    handle.join().map_err(|e| format!("executor failed: {e}"))?
}
