//! Wiring a member together: identity, executors, shards, raft loops and
//! client listeners.
//!
//! [`run`] takes a [`Config`], checks the data dir's identity, binds the
//! client ports (refusing ports already in use), starts one glommio executor
//! per shard, recovers each shard's store and raft group, and serves HTTP
//! until the process is killed.

use std::net::ToSocketAddrs;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::cluster::{bootstrap, Cluster};
use crate::config::Config;
use crate::raft::RaftOptions;
use crate::shard::{Orderer, Shard, Shared};
use crate::storage::identity::{self, Identity};
use crate::store::{Options, Store};
use crate::v2::Api;

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

/// Bind every URL of `urls` (non-blocking listening sockets, as raw fds).
fn bind_all(urls: &[String], what: &str) -> Result<Vec<i32>, String> {
    let mut fds = Vec::new();
    for url in urls {
        let addr = crate::cluster::transport::host_port(url)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve listen address{what} {url}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve listen address{what} {url}"))?;
        let l = bind_retrying(addr).map_err(|e| format!("cannot listen{what} on {url}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        fds.push(l.into_raw_fd());
    }
    Ok(fds)
}

/// Run a member until killed. Errors are for the operator, one line each.
pub fn run(mut cfg: Config) -> Result<(), String> {
    give_back_large_buffers();
    crate::storage::powercut::init(&cfg.data_dir)?;
    let peer_tls = match &cfg.peer_tls {
        Some(t) => Some(Arc::new(crate::tls::peer_configs(t)?)),
        None => None,
    };
    let existing = cfg.data_dir.join(identity::FILE).exists();
    let bootstrap::Start {
        mut cluster,
        initial_voters,
        layout,
    } = bootstrap::membership(&cfg, existing, peer_tls.as_deref())?;
    // A newcomer runs the cluster's layout (checked against its flags by
    // whoever answered).
    if let Some(l) = layout {
        cfg.shards = l.shards;
        cfg.unit_depth = l.unit_depth.or(cfg.unit_depth);
    }
    // Flags that name a new cluster must agree with the data dir's record.
    let explicit_cluster =
        cfg.clustered() && cfg.peers.is_empty() && cfg.initial_cluster_state == "new";
    let id = identity::load_or_create(
        &cfg.data_dir,
        &Identity {
            name: cfg.name.clone(),
            member_id: cluster.local().id,
            cluster_id: cluster.id,
            shards: cfg.shards,
            unit_depth: cfg.unit_depth,
        },
        explicit_cluster,
    )?;
    // One process per data dir, for as long as this one runs.
    let _lock = identity::lock(&cfg.data_dir)?;
    // The recorded identity wins over the flags.
    if let Some(i) = cluster.members.iter().position(|m| m.name == id.name) {
        cluster.members[i].id = id.member_id;
        cluster.local = i;
    }
    cluster.id = id.cluster_id;
    let me = cluster.local().clone();
    let shards = id.shards.max(1);
    let unit_depth = id.unit_depth.unwrap_or(0);
    // Bind before starting anything, without SO_REUSEPORT, so a port that
    // is already in use (by etcd, or another kardia) is an error, not a
    // silently shared socket.
    let fds = bind_all(&cfg.listen_client_urls, "")?;
    let peer_fds = bind_all(&cfg.listen_peer_urls, " for peers")?;
    tracing::info!(
        name = %cfg.name,
        member_id = %format!("{:x}", me.id),
        cluster_id = %format!("{:x}", cluster.id),
        data_dir = %cfg.data_dir.display(),
        listen_client_urls = %cfg.listen_client_urls.join(","),
        advertise_client_urls = %cfg.advertise_client_urls.join(","),
        "kardia starting"
    );
    // A sharded cluster (issue #14): every shard is a raft group across
    // the members, one etcd index kept by the sequencer.
    let sharded_cluster = shards > 1 && cfg.sharded_cluster;
    let shared = Arc::new(Shared::new(shards, unit_depth, sharded_cluster));
    let cpus = allowed_cpus();
    let mut mesh = crate::shard::mesh::build(shards).into_iter();
    let barrier = Arc::new(Barrier::new(shards));
    let view: crate::cluster::View = Arc::new(std::sync::RwLock::new(cluster));
    let mut handles = Vec::new();
    let client_tls = match &cfg.client_tls {
        Some(t)
            if cfg
                .listen_client_urls
                .iter()
                .any(|u| u.starts_with("https://")) =>
        {
            Some(crate::tls::server_config(t)?)
        }
        _ => None,
    };
    let boot = Arc::new(Boot {
        initial_voters,
        peer_fds: std::sync::Mutex::new(peer_fds),
        history: std::sync::Mutex::new((Vec::new(), 0)),
        floor: std::sync::atomic::AtomicU64::new(u64::MAX),
        client_tls,
        peer_tls,
    });
    for i in 0..shards {
        let cfg = cfg.clone();
        let shared = shared.clone();
        let mesh = mesh.next().expect("mesh ends");
        let barrier = barrier.clone();
        let view = view.clone();
        let boot = boot.clone();
        // Each executor accepts on its own descriptor of the shared sockets.
        let fds: Vec<i32> = fds.iter().map(|&fd| unsafe { libc::dup(fd) }).collect();
        let me_id = me.id;
        // Several shards: one executor per core. One shard: left to the
        // scheduler (members sharing a machine, as on a loopback test
        // cluster, must not all land on the first allowed core).
        let placement = if shards > 1 {
            Placement::Fixed(cpus[i % cpus.len()])
        } else {
            Placement::Unbound
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("kardia-shard-{i}"))
            .io_memory(1 << 20)
            .spawn(move || async move {
                let r = shard_main(i, cfg, me_id, shared, mesh, barrier, view, fds, boot).await;
                if let Err(e) = &r {
                    eprintln!("kardia: {e}");
                    std::process::exit(1);
                }
                r
            })
            .map_err(|e| format!("cannot start executor: {e}"))?;
        handles.push(handle);
    }
    for fd in fds {
        unsafe { libc::close(fd) };
    }
    for h in handles {
        h.join().map_err(|e| format!("executor failed: {e}"))??;
    }
    Ok(())
}

/// Tell systemd (`Type=notify`) the member can serve, once `/health` would
/// say so; nothing when not started by systemd.
async fn notify_ready(shard: Rc<Shard>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    while !shard.healthy() {
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
    }
    match sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        Ok(()) => tracing::info!("told systemd the member is ready"),
        Err(e) => tracing::warn!(error = %e, "could not notify systemd"),
    }
}

/// Start-up facts shared by the executors.
struct Boot {
    initial_voters: Vec<u64>,
    /// Peer listening sockets, taken by shard 0.
    peer_fds: std::sync::Mutex<Vec<i32>>,
    /// Every shard's stored events and the index from which all of them
    /// are known (the largest of the shards'): the member's event history.
    history: std::sync::Mutex<(Vec<Arc<crate::store::Event>>, u64)>,
    /// Where a sharded cluster's member may start closing: the lowest over
    /// its shards of what each applied or recorded as closed (the groups
    /// apply independently; see `raft::closed_at_start`).
    floor: std::sync::atomic::AtomicU64,
    /// TLS for the https:// client listeners.
    client_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS for the peer transport.
    peer_tls: Option<Arc<crate::tls::PeerConfigs>>,
}

/// One executor: recover its shard, wait for the others, then serve.
#[allow(clippy::too_many_arguments)]
async fn shard_main(
    i: usize,
    cfg: Config,
    member_id: u64,
    shared: Arc<Shared>,
    mesh: crate::shard::mesh::Ends,
    barrier: Arc<Barrier>,
    view: crate::cluster::View,
    fds: Vec<i32>,
    boot: Arc<Boot>,
) -> Result<(), String> {
    let shards = shared.shards;
    let shard_dir = cfg.data_dir.join(format!("shard-{i}"));
    let mut store = Store::open(
        &shard_dir.join("lmdb"),
        &Options {
            map_size: cfg.map_size,
            history: cfg.history,
        },
        crate::store::Placement {
            shard: i,
            shards,
            unit_depth: shared.unit_depth,
        },
        shared.counter.clone(),
    )
    .map_err(|e| format!("cannot open store in {}: {e}", shard_dir.display()))?;
    store.exact_expiry = shared.seq.enabled;
    // The membership: as recorded by the store (the last applied change),
    // else as the flags or the join reply describe it (recorded now).
    if i == 0 {
        let recorded = store
            .meta_get(crate::raft::META_MEMBERS)
            .map_err(|e| format!("cannot read shard {i}: {e}"))?;
        match recorded.and_then(|b| Cluster::decode(&b, member_id)) {
            Some(c) if c.removed.contains(&member_id) => {
                return Err(format!(
                    "member {:?} ({member_id:x}) was removed from cluster {:x}; its data dir {} cannot rejoin: start it with an empty data dir and join again (-peers or the members API)",
                    cfg.name,
                    c.id,
                    cfg.data_dir.display()
                ));
            }
            Some(c) if shards > 1 && c.members.len() > 1 && !shared.seq.enabled => {
                return Err(format!(
                    "the data dir {} belongs to a member of a sharded cluster ({} shards): start it with --experimental-sharded-cluster and its --initial-cluster",
                    cfg.data_dir.display(),
                    shards
                ));
            }
            Some(c) => *view.write().expect("membership") = c,
            None => {
                let bytes = view.read().expect("membership").encode();
                store
                    .batch(|st, txn| {
                        st.meta_put(txn, crate::raft::META_MEMBERS, &bytes)?;
                        Ok(((), None))
                    })
                    .map_err(|e| format!("cannot write shard {i}: {e}"))?;
            }
        }
    }
    store.observe_commits(shared.metrics.backend_commit.clone());
    let placeholder = Orderer::new(1, 0, &[], 0, Arc::new(AtomicU64::new(0)));
    let shard = Rc::new(Shard::new(store, placeholder, shared.clone(), view.clone()));
    let opts = RaftOptions {
        member_id,
        heartbeat: cfg.heartbeat,
        election_ticks: (cfg.election.as_millis() / cfg.heartbeat.as_millis().max(1)).max(2)
            as usize,
        checkpoint_interval: cfg.checkpoint_interval,
        segment_bytes: cfg.wal_segment_bytes,
        initial_voters: if shards == 1 || shared.seq.enabled {
            boot.initial_voters.clone()
        } else {
            vec![member_id]
        },
        retain_entries: cfg.snapshot_count,
        request_timeout: Duration::from_secs(5) + cfg.election * 2,
        snap_dir: shard_dir.join("snap"),
        force_new_cluster: cfg.force_new_cluster,
        name: cfg.name.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
    };
    let mut group = crate::raft::start(&shard, &shard_dir.join("wal"), opts)
        .await
        .map_err(|e| format!("cannot recover shard {i} in {}: {e}", shard_dir.display()))?;
    {
        let mut found = shared.recovery.lock().expect("recovery map");
        for (gseq, data) in std::mem::take(&mut group.global_ops) {
            found.insert(gseq, data);
        }
        // The last one this shard applied may be in its store only (a
        // crash before the session's fsync).
        let last = shard
            .store
            .borrow()
            .last_global()
            .map_err(|e| format!("cannot read shard {i}: {e}"))?;
        if let Some(data) = last {
            if let Some(c) = crate::store::Command::decode(&data) {
                found.insert(c.gseq, data);
            }
        }
    }
    if i == 0 {
        // The v2 auth records, before any executor serves a request.
        let mut st = shard.store.borrow_mut();
        st.publish_auth_to(shared.auth.clone());
        st.publish_auth()
            .map_err(|e| format!("cannot read shard {i}'s auth records: {e}"))?;
    }
    // Every shard has replayed its log: complete any member-wide operation
    // a crash left on some shards only.
    blocking_wait(&barrier);
    let ops: Vec<(u64, Vec<u8>)> = shared
        .recovery
        .lock()
        .expect("recovery map")
        .iter()
        .map(|(g, d)| (*g, d.clone()))
        .collect();
    if !shared.seq.enabled {
        // (A sharded cluster's member-wide writes are in every group's
        // log, and replayed from there.)
        crate::raft::roll_forward(&shard, &mut group, &ops)
            .await
            .map_err(|e| format!("cannot complete shard {i} in {}: {e}", shard_dir.display()))?;
    }
    // Each shard's durable events go into the member's history.
    let (events, complete_from) = shard
        .store
        .borrow()
        .recent_events()
        .map_err(|e| format!("cannot read shard {i}'s event history: {e}"))?;
    {
        let mut h = boot.history.lock().expect("history");
        h.0.extend(events);
        h.1 = h.1.max(complete_from);
    }
    if shared.seq.enabled {
        shared
            .seq
            .note_resolved(&shard.store.borrow())
            .map_err(|e| format!("cannot read shard {i}: {e}"))?;
        let closed = crate::raft::closed_at_start(&shard.store.borrow())
            .map_err(|e| format!("cannot read shard {i}: {e}"))?;
        boot.floor.fetch_min(closed, Ordering::SeqCst);
    }
    // The counter now holds the member's index.
    blocking_wait(&barrier);
    let top = shared.counter.load(Ordering::SeqCst);
    // A sharded cluster's shards may have applied up to different
    // indexes: every event up to the lowest is known; those above it wait
    // for an epoch (see `raft::sequencer`).
    let index = if shared.seq.enabled {
        boot.floor.load(Ordering::SeqCst).min(top)
    } else {
        top
    };
    let orderer = {
        let mut h = boot.history.lock().expect("history");
        if !h.0.is_sorted_by_key(|e| e.index) {
            h.0.sort_by_key(|e| e.index);
        }
        let known = h.0.partition_point(|e| e.index <= index);
        let mut o = Orderer::new(
            cfg.history,
            index,
            &h.0[..known],
            h.1,
            shared.closed.clone(),
        );
        if shared.seq.enabled {
            o.close_by_epochs(shards, top > index);
            for e in &h.0[known..] {
                o.offer(e.clone());
            }
        }
        o
    };
    *shard.orderer.borrow_mut() = orderer;
    shard.executed.set(shard.store.borrow().index());
    shard.publish_figures();
    if shards > 1 {
        crate::shard::mesh::join(&shard, mesh).await?;
    }
    if i == 0 {
        // Member-wide sessions: shards' operations, and backups (any count).
        glommio::spawn_local(crate::shard::global::coordinate(shard.clone())).detach();
        glommio::spawn_local(notify_ready(shard.clone())).detach();
    }
    // The peer transport: executor 0's listens; a sharded cluster's other
    // groups send from their own executor (what peers send them arrives on
    // executor 0's listener and crosses the mesh).
    if i == 0 || shared.seq.enabled {
        let cid = view.read().expect("membership").id;
        let t = crate::cluster::transport::Transport::new(
            member_id,
            cid,
            shared.layout(),
            view.clone(),
            shard_dir.join("snap"),
            &shard.shared.metrics,
            boot.peer_tls.as_deref(),
        );
        let inbound = crate::raft::connect(&shard, t.clone());
        let peer_fds = if i == 0 {
            std::mem::take(&mut *boot.peer_fds.lock().expect("peer fds"))
        } else {
            Vec::new()
        };
        for fd in peer_fds {
            // SAFETY: `fd` is a bound, listening socket we own.
            let l = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
            glommio::spawn_local(crate::cluster::transport::serve(
                l,
                t.clone(),
                inbound.clone(),
            ))
            .detach();
        }
    }
    glommio::spawn_local(crate::raft::run(shard.clone(), group)).detach();
    let api = Rc::new(Api::new(
        shard.clone(),
        view,
        cfg.initial_cluster_token.clone(),
    ));
    let limits = Rc::new(cfg.limits.clone());
    for (fd, url) in fds.into_iter().zip(&cfg.listen_client_urls) {
        // SAFETY: `fd` is a duplicate of a bound, listening socket we own.
        let l = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
        let tls = url
            .starts_with("https://")
            .then(|| boot.client_tls.clone())
            .flatten();
        glommio::spawn_local(crate::http::serve(
            l,
            api.clone(),
            limits.clone(),
            shared.open.clone(),
            tls,
        ))
        .detach();
    }
    if i == 0 {
        tracing::info!(shards, index, "kardia ready");
    }
    // Serve until killed.
    loop {
        glommio::timer::sleep(Duration::from_secs(3600)).await;
    }
}

/// The CPUs this process may run on (its affinity mask, e.g. from
/// `taskset`), in order: shard `i` is pinned to the `i mod n`-th.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the call.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    let cpus: Vec<usize> = if ok {
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}

/// Wait at the start-up barrier (before serving, so blocking is harmless).
fn blocking_wait(b: &Barrier) {
    b.wait();
}

/// Allocations of 1 MiB or more (a large listing's response, a snapshot
/// chunk) are mapped on their own and unmapped when freed, so memory a burst
/// of large responses needed goes back to the system instead of staying in
/// the allocator's heap (glibc would otherwise raise its mmap threshold to
/// the largest size freed). Small allocations are unaffected.
fn give_back_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the
    // executors start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
