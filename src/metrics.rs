//! Prometheus metrics, served as text at `GET /metrics` on the client port
//! (as etcd does), with etcd's names where they mean the same thing.
//!
//! Owns the member's registry. Two kinds of series. *Live* ones are the
//! `prometheus` crate's counters, gauges and histograms, updated where
//! things happen — the raft loops (proposals, WAL fsyncs, store commits,
//! leader changes, batch sizes), the peer transport (bytes), the answer
//! path (failed proposals) — each an atomic operation on a handle resolved
//! at start: no lock, no allocation. *Mirrored* ones are figures the shards
//! already publish for `/v2/stats/store` and `/debug/kardia/shards`
//! (`shard::Figures`): they are copied into their series when a scrape
//! renders ([`Metrics::render`]), under a lock only scrapes take.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::shard::Shared;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

/// `etcd_debugging_store_writes_total` actions, in `store::Stats` order
/// (after the two GET counters); each is the sum of successes and failures.
const WRITE_ACTIONS: [&str; 6] = [
    "set",
    "delete",
    "update",
    "create",
    "compareAndSwap",
    "compareAndDelete",
];

/// Every series of a member.
pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntCounter,
    pub proposals_applied: IntCounter,
    pub proposals_failed: IntCounter,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub peer_sent: IntCounterVec,
    pub peer_received: IntCounterVec,
    /// Commands per executed batch, by shard.
    pub batch_size: HistogramVec,
    /// bcrypt comparisons of v2 auth passwords (cache misses), by result.
    pub password_checks: IntCounterVec,
    // Mirrored at scrape time.
    proposals_pending: IntGauge,
    store_reads: IntCounterVec,
    store_writes: IntCounterVec,
    store_expires: IntCounter,
    store_watchers: IntGauge,
    shard_nodes: IntGaugeVec,
    shard_index: IntGaugeVec,
    shard_writes: IntCounterVec,
    shard_queued: IntGaugeVec,
    shard_stopped: IntGaugeVec,
    sessions: IntCounter,
    session_jobs: IntCounter,
    orderer_lag: IntGauge,
    mirror: Mutex<()>,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// etcd's disk histograms: 1 ms to 8 s, doubling.
fn disk_histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let buckets = exponential_buckets(0.001, 2.0, 14).expect("buckets");
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics");
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                "kardia_shard_batch_commands",
                "Commands executed per batch (one LMDB commit and one WAL fsync), by shard.",
            )
            .buckets(exponential_buckets(1.0, 2.0, 12).expect("buckets")),
            &["shard"],
        )
        .expect("metric");
        r.register(Box::new(batch_size.clone()))
            .expect("unique metric");
        Metrics {
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            leader_changes: counter(
                &r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            proposals_committed: counter(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: counter(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_failed: counter(
                &r,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            proposals_pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            wal_fsync: disk_histogram(
                &r,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
            ),
            backend_commit: disk_histogram(
                &r,
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
            ),
            password_checks: counter_vec(
                &r,
                "kardia_auth_password_checks_total",
                "bcrypt comparisons of v2 auth credentials (each header is checked once per executor, then cached), by result.",
                "result",
            ),
            peer_sent: counter_vec(
                &r,
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                "To",
            ),
            peer_received: counter_vec(
                &r,
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                "From",
            ),
            store_reads: counter_vec(
                &r,
                "etcd_debugging_store_reads_total",
                "Total number of reads action by (get/getRecursive), local to this member.",
                "action",
            ),
            store_writes: counter_vec(
                &r,
                "etcd_debugging_store_writes_total",
                "Total number of writes (e.g. set/compareAndDelete) seen by this member.",
                "action",
            ),
            store_expires: counter(
                &r,
                "etcd_debugging_store_expires_total",
                "Total number of expired keys.",
            ),
            store_watchers: gauge(
                &r,
                "etcd_debugging_store_watchers",
                "Count of currently active watchers.",
            ),
            shard_nodes: gauge_vec(
                &r,
                "kardia_shard_nodes",
                "Nodes (files and directories) stored by the shard.",
                "shard",
            ),
            shard_index: gauge_vec(
                &r,
                "kardia_shard_etcd_index",
                "The last etcd index the shard used.",
                "shard",
            ),
            shard_writes: counter_vec(
                &r,
                "kardia_shard_proposals_total",
                "Write requests handed to the shard's raft loop.",
                "shard",
            ),
            shard_queued: gauge_vec(
                &r,
                "kardia_shard_queued_proposals",
                "Write requests waiting for the shard's next batch.",
                "shard",
            ),
            shard_stopped: gauge_vec(
                &r,
                "kardia_shard_stopped",
                "1 when the shard stopped on a fatal error (see the log).",
                "shard",
            ),
            sessions: counter(
                &r,
                "kardia_member_wide_sessions_total",
                "Member-wide sessions (every shard parked once).",
            ),
            session_jobs: counter(
                &r,
                "kardia_member_wide_jobs_total",
                "Requests carried by member-wide sessions.",
            ),
            orderer_lag: gauge(
                &r,
                "kardia_orderer_lag_indexes",
                "Indexes taken but not yet delivered in order (the answering executor's view).",
            ),
            batch_size,
            registry: r,
            mirror: Mutex::new(()),
        }
    }

    /// The text exposition of every series into `out`; `shared` gives the
    /// mirrored figures, `delivered` the answering executor's orderer.
    pub fn render(&self, shared: &Shared, delivered: u64, out: &mut Vec<u8>) {
        {
            let _one_scrape_at_a_time = self.mirror.lock().unwrap_or_else(|e| e.into_inner());
            self.mirror_figures(shared, delivered);
        }
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, out) {
            tracing::warn!(error = %e, "metrics not encoded");
        }
    }

    fn mirror_figures(&self, shared: &Shared, delivered: u64) {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let set = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        let mut stats = [0u64; 15];
        let (mut watchers, mut queued) = (0, 0);
        for (i, f) in shared.figures.iter().enumerate() {
            for (sum, a) in stats.iter_mut().zip(&f.stats) {
                *sum += l(a);
            }
            watchers += l(&f.watchers);
            queued += l(&f.queued);
            let shard = i.to_string();
            let s = [shard.as_str()];
            self.shard_nodes
                .with_label_values(&s)
                .set(l(&f.nodes) as i64);
            self.shard_index
                .with_label_values(&s)
                .set(l(&f.index) as i64);
            set(&self.shard_writes.with_label_values(&s), l(&f.writes));
            self.shard_queued
                .with_label_values(&s)
                .set(l(&f.queued) as i64);
            self.shard_stopped
                .with_label_values(&s)
                .set((l(&f.failed) != 0) as i64);
        }
        set(
            &self.store_reads.with_label_values(&["get"]),
            stats[0] + stats[1],
        );
        for (k, action) in WRITE_ACTIONS.iter().enumerate() {
            let v = stats[2 + 2 * k] + stats[3 + 2 * k];
            set(&self.store_writes.with_label_values(&[action]), v);
        }
        set(&self.store_expires, stats[14]);
        self.store_watchers.set(watchers as i64);
        self.proposals_pending.set(queued as i64);
        set(&self.sessions, l(&shared.sessions));
        set(&self.session_jobs, l(&shared.session_jobs));
        let taken = l(&shared.counter);
        self.orderer_lag.set(taken.saturating_sub(delivered) as i64);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
