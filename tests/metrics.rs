//! `GET /metrics` (issue #15, point 3): the real binary, scraped after real
//! work. The text parses as Prometheus' exposition format, carries etcd's
//! names with values that follow what was done (writes, reads, watchers,
//! fsyncs, commits, leader, peer bytes), and kardia's per-shard series.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::Cluster;
use common::{open_stream, request, Server};

/// `name{labels}` → value, from the text format; panics on a line that is
/// not a comment, blank, or `series value`.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let r = request(port, "GET", "/metrics", None, &[]).unwrap();
    assert_eq!(r.code(), 200);
    let ct = r.header("Content-Type").unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let mut out = BTreeMap::new();
    for line in r.body_str().lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_string(), v);
    }
    out
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        let near: Vec<_> = m
            .keys()
            .filter(|k| k.starts_with(&series[..series.len().min(20)]))
            .collect();
        panic!("no series {series}; similar: {near:?}")
    })
}

#[test]
fn metrics_follow_what_the_member_did() {
    let s = Server::start_with(&["--shards", "2"]).expect("start kardia");
    let port = s.client_port;
    let before = scrape(port);
    assert_eq!(get(&before, "etcd_server_has_leader"), 1.0);
    assert_eq!(get(&before, "etcd_server_leader_changes_seen_total"), 1.0);
    let (_watch, _) = open_stream(port, "/v2/keys/hm?wait=true&recursive=true&stream=true");
    for i in 0..50 {
        let t = format!("/v2/keys/hm/v4/apps/actual/app{i}/i0");
        let r = request(port, "PUT", &t, Some("value=running"), &[]).unwrap();
        assert_eq!(r.code(), 201);
    }
    for i in 0..7 {
        let t = format!("/v2/keys/hm/v4/apps/actual/app{i}/i0");
        assert_eq!(request(port, "GET", &t, None, &[]).unwrap().code(), 200);
    }
    let r = request(
        port,
        "PUT",
        "/v2/keys/hm/v4/apps/actual/app0/i0?prevValue=nope",
        Some("value=x"),
        &[],
    )
    .unwrap();
    assert_eq!(r.code(), 412);
    let m = scrape(port);

    let writes = |m: &BTreeMap<String, f64>, a: &str| {
        get(
            m,
            &format!("etcd_debugging_store_writes_total{{action=\"{a}\"}}"),
        )
    };
    assert_eq!(writes(&m, "set") - writes(&before, "set"), 50.0);
    assert_eq!(
        writes(&m, "compareAndSwap") - writes(&before, "compareAndSwap"),
        1.0
    );
    let reads = "etcd_debugging_store_reads_total{action=\"get\"}";
    assert!(get(&m, reads) - get(&before, reads) >= 7.0);
    assert_eq!(get(&m, "etcd_debugging_store_watchers"), 1.0);
    let committed = "etcd_server_proposals_committed_total";
    assert!(
        get(&m, committed) - get(&before, committed) >= 50.0,
        "{m:?}"
    );
    assert_eq!(
        get(&m, committed),
        get(&m, "etcd_server_proposals_applied_total")
    );
    // Every write waited for a WAL fsync and an LMDB commit.
    let fsyncs = "etcd_disk_wal_fsync_duration_seconds_count";
    assert!(get(&m, fsyncs) > get(&before, fsyncs));
    assert!(
        get(
            &m,
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"
        ) == get(&m, fsyncs)
    );
    assert!(get(&m, "etcd_disk_backend_commit_duration_seconds_count") >= 1.0);
    assert!(
        get(
            &m,
            "etcd_disk_backend_commit_duration_seconds_bucket{le=\"0.001\"}"
        ) >= 0.0
    );
    assert!(get(&m, "process_resident_memory_bytes") > 1e6);
    assert!(get(&m, "process_open_fds") > 5.0);
    // kardia's own series, per shard: 50 application directories spread.
    let nodes =
        get(&m, "kardia_shard_nodes{shard=\"0\"}") + get(&m, "kardia_shard_nodes{shard=\"1\"}");
    assert!(nodes >= 100.0, "{nodes}");
    assert_eq!(get(&m, "kardia_shard_stopped{shard=\"1\"}"), 0.0);
    let batches = get(&m, "kardia_shard_batch_commands_count{shard=\"0\"}")
        + get(&m, "kardia_shard_batch_commands_count{shard=\"1\"}");
    assert!(batches >= 1.0);
    assert!(get(&m, "kardia_member_wide_sessions_total") >= 1.0);
    assert_eq!(get(&m, "etcd_server_proposals_failed_total"), 0.0);
    // Only GET.
    let r = request(port, "PUT", "/metrics", Some("x=1"), &[]).unwrap();
    assert_eq!(r.code(), 405);
}

#[test]
fn a_cluster_counts_peer_bytes_and_leader_changes() {
    let mut c = Cluster::start_static(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(20));
    let port = c.port(leader);
    for i in 0..20 {
        let r = request(port, "PUT", &format!("/v2/keys/k{i}"), Some("value=v"), &[]).unwrap();
        assert_eq!(r.code(), 201, "{}", r.body_str());
    }
    let m = scrape(port);
    assert_eq!(get(&m, "etcd_server_has_leader"), 1.0);
    assert!(get(&m, "etcd_server_leader_changes_seen_total") >= 1.0);
    let sent: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("etcd_network_peer_sent_bytes_total{To="))
        .map(|(_, v)| v)
        .sum();
    let received: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("etcd_network_peer_received_bytes_total{From="))
        .map(|(_, v)| v)
        .sum();
    assert!(sent > 20.0 * 5.0, "sent {sent}");
    assert!(received > 0.0, "received {received}");
    assert_eq!(
        m.keys()
            .filter(|k| k.starts_with("etcd_network_peer_sent_bytes_total{"))
            .count(),
        2,
        "one series per peer"
    );
}
