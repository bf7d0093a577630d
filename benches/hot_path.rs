//! Criterion benches of the request path, piece by piece: parsing a request
//! head, decoding a form, encoding JSON, applying a batch to the store, and
//! appending a batch to the raft log (with its fdatasync).
//!
//! Run with `cargo bench --bench hot_path`. Speed is never asserted in tests;
//! numbers go to docs/performance.md.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kardia::http::request::parse_head;
use kardia::storage::wal::Wal;
use kardia::store::{Command, NodeJson, Op, Options, ReadAt, Store};
use kardia::v2::form::{Field, Form};

const PUT: &[u8] = b"PUT /v2/keys/hm/v4/dea-presence/4a1b6c2e-4c5f-4a55-9a3b-0c1f2d3e4f50 HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 52\r\nContent-Type: application/x-www-form-urlencoded\r\nAccept-Encoding: gzip\r\n\r\nvalue=4a1b6c2e-4c5f-4a55-9a3b-0c1f2d3e4f50&ttl=30";

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_head_put", |b| {
        b.iter(|| {
            let h = parse_head(std::hint::black_box(PUT)).unwrap().unwrap();
            std::hint::black_box(h.len)
        })
    });
    let mut form = Form::default();
    g.bench_function("form_body_and_query", |b| {
        b.iter(|| {
            form.parse(
                Some(b"value=4a1b6c2e-4c5f-4a55-9a3b-0c1f2d3e4f50&ttl=30"),
                b"prevExist=false",
            )
            .unwrap();
            std::hint::black_box(form.value(Field::Value).len())
        })
    });
    g.finish();
}

fn json(c: &mut Criterion) {
    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(512);
    g.bench_function("node_with_ttl", |b| {
        b.iter(|| {
            out.clear();
            NodeJson {
                key: b"/hm/v4/apps/actual/4a1b6c2e-4c5f-4a55-9a3b-0c1f2d3e4f50,f2d3/0c1f2d3e",
                value: Some(b"0c1f2d3e-4f50-4a55-9a3b-4a1b6c2e4c5f,RUNNING,1385000000.0,3"),
                dir: false,
                expire: Some(1_795_756_065_488_524_050),
                now: 1_795_756_035_488_524_050,
                modified: 123_456,
                created: 120_000,
            }
            .write(&mut out);
            std::hint::black_box(out.len())
        })
    });
    // An instance record as HM9000 stored it in 2013 (JSON, a quote every
    // 7 bytes): the escape of a listing's values.
    let record = br#"{"state":"RUNNING","index":0,"instance":"0c1f2d3e-4f50-4a55-9a3b-4a1b6c2e4c5f","cc_partition":"default","updated_at":1700000000,"version":"4a1b6c2e-4c5f-4a55-9a3b-0c1f2d3e4f50","app":"f2d3e4f5-0c1f-4a55-9a3b-4a1b6c2e4c5f"}"#;
    g.bench_function("escape_hm9000_json_record", |b| {
        b.iter(|| {
            out.clear();
            kardia::etcd::json::write_str(&mut out, std::hint::black_box(record));
            std::hint::black_box(out.len())
        })
    });
    // Expiry times as a listing meets them: records written one after
    // another, so neighbours share their second.
    let mut t = 1_795_756_065_488_524_050i64;
    g.bench_function("expiration_time", |b| {
        b.iter(|| {
            out.clear();
            t += 37_911;
            kardia::etcd::json::write_time(&mut out, std::hint::black_box(t));
            std::hint::black_box(out.len())
        })
    });
    g.finish();
}

/// A one-shard store in `dir`, as the benches use it.
fn open_store(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        &Options {
            map_size: 1 << 30,
            history: 1000,
        },
        kardia::store::Placement::single(),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    )
    .unwrap()
}

/// A store that applies batches of encoded commands as raft entries
/// `1, 2, ...`, discarding their results and events.
struct Applier {
    store: Store,
    raft_index: u64,
    results: Vec<(u64, kardia::store::Outcome)>,
    events: Vec<std::sync::Arc<kardia::store::Event>>,
}

impl Applier {
    fn apply(&mut self, batch: &[Vec<u8>]) {
        self.results.clear();
        let first = self.raft_index + 1;
        self.raft_index += batch.len() as u64;
        let entries = batch.iter().enumerate();
        let entries = entries.map(|(i, d)| (first + i as u64, 1, &d[..]));
        self.store.apply_batch(entries, &mut self.results).unwrap();
        self.store.take_events(&mut self.events);
        self.events.clear();
    }
}

fn encoded(c: &Command) -> Vec<u8> {
    let mut data = Vec::new();
    c.encode(&mut data);
    data
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    const BATCH: u64 = 64;
    g.throughput(Throughput::Elements(BATCH));
    let dir = tempfile::tempdir().unwrap();
    let mut a = Applier {
        store: open_store(dir.path()),
        raft_index: 0,
        results: Vec::new(),
        events: Vec::new(),
    };
    let mut n = 0u64;
    g.bench_function("apply_batch_64_ttl_puts_10k_keys", |b| {
        b.iter_batched(
            || {
                (0..BATCH)
                    .map(|_| {
                        n += 1;
                        let key = format!("/hm/v4/dea-presence/dea-{:05}", n % 10_000);
                        let mut c =
                            Command::new(Op::Set, key.as_bytes(), 1_795_756_035_000_000_000);
                        c.value = b"4a1b6c2e-4c5f-4a55-9a3b-0c1f2d3e4f50";
                        c.expire = Some(1_795_756_065_000_000_000);
                        encoded(&c)
                    })
                    .collect::<Vec<_>>()
            },
            |batch| a.apply(&batch),
            BatchSize::SmallInput,
        )
    });
    // HM9000's cold start: each instance record in a new application
    // directory (`apps/actual/<app>,<version>/<instance>`, GUID names), six
    // path components deep, into a store that grows with the run (kept
    // short: the store must stay inside its 1 GiB map).
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut app = 0u64;
    let guid = |n: u64| {
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            h >> 32,
            h >> 16 & 0xffff,
            h >> 4 & 0xfff,
            h & 0xfff,
            h >> 8
        )
    };
    g.bench_function("apply_batch_64_cold_start_instances", |b| {
        b.iter_batched(
            || {
                (0..BATCH)
                    .map(|_| {
                        app += 1;
                        let (a, v, i) = (guid(app), guid(!app), guid(app << 1));
                        let key = format!("/hm/v4/apps/actual/{a},{v}/{i}");
                        let mut c =
                            Command::new(Op::Set, key.as_bytes(), 1_795_756_035_000_000_000);
                        c.value = br#"{"droplet":"2c0b8a2e","version":"4f1a","instance":"9d3e","index":0,"state":"RUNNING","state_timestamp":1795756035.0}"#;
                        encoded(&c)
                    })
                    .collect::<Vec<_>>()
            },
            |batch| a.apply(&batch),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn wal(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for batch in [1usize, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("append_and_sync_{batch}_entries"), |b| {
            b.iter_custom(|iters| {
                let dir = tempfile::tempdir().unwrap();
                let d = dir.path().to_path_buf();
                glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                    .spawn(move || async move {
                        let (rec, segs) = Wal::recover(&d).unwrap();
                        let mut w = Wal::open(&d, segs, rec.end, 64 << 20).await.unwrap();
                        let mut index = 0;
                        let entry = |i: u64| raft::eraftpb::Entry {
                            index: i,
                            term: 1,
                            data: bytes::Bytes::from(vec![7u8; 120]),
                            ..Default::default()
                        };
                        let t = Instant::now();
                        for _ in 0..iters {
                            let ents: Vec<_> = (0..batch)
                                .map(|_| {
                                    index += 1;
                                    entry(index)
                                })
                                .collect();
                            w.append_entries(&ents);
                            w.sync().await.unwrap();
                        }
                        let took = t.elapsed();
                        w.settle().await;
                        took
                    })
                    .unwrap()
                    .join()
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// Bench recursive listings of `dir` into one buffer, in process, after
/// filling a fresh store with `n` records (`record(i)`: key, value and
/// expiry time, written 1,000 to a batch); `marker` appears once in each
/// listed record.
fn bench_listing(
    c: &mut Criterion,
    name: &str,
    n: u64,
    dir: &[u8],
    marker: &[u8],
    record: impl Fn(u64) -> (String, String, Option<i64>),
) {
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(n));
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Applier {
        store: open_store(tmp.path()),
        raft_index: 0,
        results: Vec::new(),
        events: Vec::new(),
    };
    for chunk in 0..n.div_ceil(1000) {
        let batch: Vec<Vec<u8>> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| {
                let (key, value, expire) = record(i);
                let mut c = Command::new(Op::Set, key.as_bytes(), NOW + i as i64 * 1_000_000);
                c.value = value.as_bytes();
                c.expire = expire;
                encoded(&c)
            })
            .collect();
        a.apply(&batch);
    }
    let mut store = a.store;
    let mut out = Vec::with_capacity(16 << 20);
    let mut list = |out: &mut Vec<u8>| {
        out.clear();
        let r = store.get(n, dir, true, false, NOW, None, ReadAt::Now, usize::MAX, out);
        assert!(r.unwrap().is_ok());
    };
    list(&mut out);
    let listed = out.windows(marker.len()).filter(|w| w == &marker).count();
    assert_eq!(listed as u64, n, "every record listed");
    g.bench_function(name, |b| {
        b.iter(|| {
            list(&mut out);
            std::hint::black_box(out.len())
        })
    });
    g.finish();
}

/// The clock the listing benches write and read at.
const NOW: i64 = 1_795_756_035_000_000_000;

/// HM9000's `apps/actual` listing, in process: 20,000 instance records
/// (HM9000's CSV, ttl) in 10,000 application directories named in no
/// relation to their creation order, as HM9000's GUIDs are. Steadier than
/// the end-to-end `benches/hm9000_listing.sh` on a shared machine (no
/// socket, no client), and the same walk.
fn listing(c: &mut Criterion) {
    bench_listing(
        c,
        "list_hm9000_20k_instances",
        20_000,
        b"/hm/v4/apps/actual",
        b"RUNNING",
        |i| {
            let app = (i / 2).wrapping_mul(2_654_435_761) % (1 << 32);
            let key = format!(
                "/hm/v4/apps/actual/{app:08x}-0000-4000-8000-{app:012x}/\
                 {i:08x}-1111-4000-8000-{i:012x}"
            );
            let value = format!("{},RUNNING,1700000000.0,{}", i % 2, "d".repeat(36));
            let expire = NOW + 600_000_000_000 + i as i64 * 1_000_000;
            (key, value, Some(expire))
        },
    );
}

/// The `recursive-get` workload's listing, in process: 10,000 keys with
/// 64-byte values and no TTL in one directory (`kardia-loadtest
/// recursive-get` fills the same shape), listed recursively.
fn listing_10k(c: &mut Criterion) {
    let value = "a".repeat(64);
    bench_listing(
        c,
        "list_10k_keys_recursive",
        10_000,
        b"/lt",
        b"\"value\"",
        |i| (format!("/lt/880d0b/dir/k{i:04}"), value.clone(), None),
    );
}

criterion_group!(benches, parsing, json, apply, listing, listing_10k, wal);
criterion_main!(benches);
