//! A damaged or missing write-ahead log is never replayed silently.
//!
//! The scenario with the real binary: a member writes 3000 keys,
//! is SIGKILLed, and its store is put back to a copy taken before the writes
//! (what a power loss can leave: the store is synced only at checkpoints),
//! so everything must come from the WAL. Then the WAL is damaged three ways:
//! a byte flipped in the middle (refused, naming the file and the offset),
//! its segment files deleted (refused), and its last record cut short (a
//! torn tail: dropped with a warning, every earlier write served).

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{request, Server};

const KEYS: usize = 3000;

/// The used part of a sparse `data.mdb` (the map is mostly holes).
fn read_store(path: &Path) -> Vec<u8> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .take(64 << 20)
        .read_to_end(&mut data)
        .unwrap();
    let used = data.len() - data.iter().rev().take_while(|&&b| b == 0).count();
    data.truncate(used.next_multiple_of(4096));
    data
}

/// Put the store back to `copy` (its meta pages point at the old tree).
fn restore_store(path: &Path, copy: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(copy, 0)
        .unwrap();
}

fn wal_segments(wal: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// (start, length) of every record in a segment (8-byte header: length,
/// CRC; then the payload, whose first byte is 1 for an entry).
fn records(data: &[u8]) -> Vec<(usize, usize, u8)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 || at + 8 + len > data.len() {
            break;
        }
        out.push((at, len, data[at + 8]));
        at += 8 + len;
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_damaged_or_missing_wal_is_never_replayed_silently() {
    let mut s = Server::start_with(&["--shards", "1"]).expect("start kardia");
    let port = s.client_port;
    let shard = s.data_dir().join("shard-0");
    let (mdb, wal) = (shard.join("lmdb/data.mdb"), shard.join("wal"));
    s.kill();
    let before = read_store(&mdb);
    s.restart().unwrap();
    let writers: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t..KEYS).step_by(8) {
                    let key = format!("/v2/keys/i/k{i}");
                    let r = request(port, "PUT", &key, Some(&format!("value=v{i}")), &[]).unwrap();
                    assert_eq!(r.code(), 201, "{}", r.body_str());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // One last write, alone: its entry is the log's last.
    let r = request(port, "PUT", "/v2/keys/last", Some("value=x"), &[]).unwrap();
    assert_eq!(r.code(), 201);
    let index = common::json_u64(&r.body_str(), "modifiedIndex").unwrap();
    s.kill();
    let saved = s.data_dir().with_file_name("wal-saved");
    copy_dir(&wal, &saved);

    // 1. A byte flipped in the middle of the log: in the segment with the
    // most records. In the log's last segment the refusal says valid
    // records follow the damage; in an earlier one (whether the log has
    // rotated depends on timing) its recorded end says the log continues.
    restore_store(&mdb, &before);
    let written: Vec<_> = wal_segments(&wal)
        .into_iter()
        .map(|p| (records(&std::fs::read(&p).unwrap()).len(), p))
        .filter(|(n, _)| *n > 0)
        .collect();
    let (count, seg) = written.iter().max_by_key(|(n, _)| *n).unwrap().clone();
    assert!(count >= 3, "no segment holds 3 records: {written:?}");
    let why = if Some(&seg) == written.last().map(|(_, p)| p) {
        "valid records follow"
    } else {
        "where the log is known to continue"
    };
    let mut data = std::fs::read(&seg).unwrap();
    let recs = records(&data);
    let (mid, len, _) = recs[recs.len() / 2];
    data[mid + 8 + len / 2] ^= 0x01;
    std::fs::write(&seg, &data).unwrap();
    let err = s
        .restart()
        .expect_err("started on a damaged log")
        .to_string();
    assert!(
        err.contains(&seg.display().to_string()) && err.contains(&format!("byte {mid}")),
        "the refusal does not name the file and offset:\n{err}"
    );
    assert!(err.contains(why), "{err}");

    // 2. The log's segment files deleted.
    copy_dir(&saved, &wal);
    restore_store(&mdb, &before);
    for p in wal_segments(&wal) {
        std::fs::remove_file(p).unwrap();
    }
    let err = s
        .restart()
        .expect_err("started without its log")
        .to_string();
    assert!(err.contains("missing"), "{err}");

    // 3. The last entry cut short (a torn tail): dropped with a warning,
    // everything before it served with its index.
    copy_dir(&saved, &wal);
    restore_store(&mdb, &before);
    let seg = wal_segments(&wal)
        .into_iter()
        .rfind(|p| !records(&std::fs::read(p).unwrap()).is_empty())
        .unwrap();
    let data = std::fs::read(&seg).unwrap();
    let &(last, len, _) = records(&data)
        .iter()
        .rev()
        .find(|(_, _, kind)| *kind == 1)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len((last + 8 + len / 2) as u64)
        .unwrap();
    s.restart().expect("a torn tail must not stop the member");
    assert!(
        s.log_tail(60).contains("torn tail dropped"),
        "{}",
        s.log_tail(20)
    );
    for i in 0..KEYS {
        let r = request(port, "GET", &format!("/v2/keys/i/k{i}"), None, &[]).unwrap();
        assert_eq!(r.code(), 200, "k{i} lost: {}", r.body_str());
        assert!(r.body_str().contains(&format!("\"value\":\"v{i}\"")));
    }
    let r = request(port, "GET", "/v2/keys/last", None, &[]).unwrap();
    assert_eq!(
        r.code(),
        404,
        "the torn record was replayed: {}",
        r.body_str()
    );
    let x = r.header("X-Etcd-Index").unwrap().parse::<u64>().unwrap();
    assert_eq!(
        x,
        index - 1,
        "the index went back further than the torn record"
    );
    let _ = std::fs::remove_dir_all(&saved);
}

/// Writers PUT 2 KB values from 8 threads until the store's map is full.
/// Every request must be answered within `limit`: 201, or 500 with etcd's
/// `300 Raft Internal Error`. Returns the acknowledged keys (key, value) and
/// the refused ones.
fn write_until_refused(
    port: u16,
    tag: &str,
    limit: Duration,
) -> (Vec<(String, String)>, Vec<String>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let slowest = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (acked, refused, tag) = (acked.clone(), refused.clone(), tag.to_string());
            let slowest = slowest.clone();
            std::thread::spawn(move || {
                let pad = "x".repeat(2000);
                // Keep writing a little after the first refusal: later
                // writes must be answered too.
                let mut after = 0;
                for i in 0.. {
                    if after >= 5 || i >= 100_000 {
                        break;
                    }
                    let key = format!("/full/{tag}/d{}/t{t}-{i}", i % 7);
                    let value = format!("{t}-{i}-{pad}");
                    let started = Instant::now();
                    let r = request(
                        port,
                        "PUT",
                        &format!("/v2/keys{key}"),
                        Some(&format!("value={value}")),
                        &[],
                    )
                    .unwrap_or_else(|e| {
                        panic!("{key}: no answer ({e:?}) after {:?}", started.elapsed())
                    });
                    let took = started.elapsed();
                    assert!(took < limit, "{key}: answered after {took:?}");
                    slowest.fetch_max(took.as_micros() as usize, Ordering::Relaxed);
                    match r.code() {
                        200 | 201 => acked.lock().unwrap().push((key, value)),
                        500 => {
                            let body = r.body_str();
                            assert!(body.contains("\"errorCode\":300"), "{body}");
                            refused.lock().unwrap().push(key);
                            after += 1;
                        }
                        c => panic!("{key}: unexpected {c} {}", r.body_str()),
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let slowest = slowest.load(Ordering::Relaxed);
    println!(
        "{tag}: the slowest answer took {:.1} ms",
        slowest as f64 / 1000.0
    );
    let refused = std::mem::take(&mut *refused.lock().unwrap());
    (acked, refused)
}

/// A refused write is not readable while the member runs on: it may not be
/// durable, and the member never shows what it could lose. (After a
/// restart a refused write may be there: a 500 is indeterminate, as etcd's
/// timeouts are, and one whose fsync finished as the shard stopped is
/// replayed.)
fn assert_all_absent(port: u16, refused: &[String]) {
    for key in refused {
        let r = request(port, "GET", &format!("/v2/keys{key}"), None, &[]).unwrap();
        assert_eq!(r.code(), 404, "refused {key} is readable: {}", r.body_str());
    }
}

/// Every acknowledged key reads back with its value.
fn assert_all_present(port: u16, acked: &[(String, String)]) {
    for (key, value) in acked {
        let r = request(port, "GET", &format!("/v2/keys{key}"), None, &[]).unwrap();
        assert_eq!(r.code(), 200, "{key} lost: {}", r.body_str());
        assert!(
            r.body_str().contains(&format!("\"value\":\"{value}\"")),
            "{key} changed"
        );
    }
}

/// `--map-size` reached (MDB_MAP_FULL): the shard stops by design, but the
/// writes in the batch that hit it, and every later one, are answered at
/// once with 300; `/health` is 503 and reads go on.
#[test]
fn a_full_map_answers_every_write_and_keeps_serving_reads() {
    for shards in ["1", "2"] {
        let s = Server::start_with(&["--shards", shards, "--map-size", "1048576"])
            .expect("start kardia");
        let port = s.client_port;
        let started = Instant::now();
        let (acked, refused) = write_until_refused(port, shards, Duration::from_secs(3));
        println!(
            "{shards} shard(s): {} writes acknowledged, {} refused, {:?}",
            acked.len(),
            refused.len(),
            started.elapsed()
        );
        assert!(
            !acked.is_empty() && refused.len() >= 8,
            "{} refused",
            refused.len()
        );
        assert!(
            s.log_tail(50).contains("--map-size"),
            "no log line names the cause:\n{}",
            s.log_tail(20)
        );
        let r = request(port, "GET", "/health", None, &[]).unwrap();
        assert_eq!(r.code(), 503, "{}", r.body_str());
        assert_all_present(port, &acked);
        assert_all_absent(port, &refused);
        // A stopped shard does not hold up the member: member-wide writes
        // (a new directory) and listings of every shard are answered at
        // once, again and again (a session it never joined would park
        // every shard for good).
        for i in 0..3 {
            for (method, target, form) in [
                (
                    "PUT",
                    format!("/v2/keys/after-stop/d{i}/k"),
                    Some("value=x"),
                ),
                ("GET", "/v2/keys/?recursive=true".to_string(), None),
                (
                    "PUT",
                    format!("/v2/keys/full/{shards}/d{i}/after"),
                    Some("value=y"),
                ),
            ] {
                let started = Instant::now();
                let r = request(port, method, &target, form, &[])
                    .unwrap_or_else(|e| panic!("{method} {target}: no answer ({e:?})"));
                let took = started.elapsed();
                assert!(
                    took < Duration::from_secs(3),
                    "{shards} shard(s): {method} {target} answered after {took:?}"
                );
                assert!(
                    matches!(r.code(), 200 | 201 | 500),
                    "{method} {target}: {} {}",
                    r.code(),
                    r.body_str()
                );
            }
        }
        assert_all_present(port, &acked);
    }
}

/// A tmpfs mounted for the test, unmounted when dropped (also when the test
/// fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server still running on it (a failed test) cannot hold it.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A full disk (a 20 MiB tmpfs as the data dir, with a filler file):
/// writes stop with 300 and a log line, the process stays alive, `/health`
/// is 503, reads are served; after the filler is deleted and the member
/// restarted, every acknowledged write is there and writes work.
#[test]
fn a_full_disk_stops_writes_and_keeps_the_process_alive() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test must mount a tmpfs"
        );
        println!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mut s = Server::start_with(&["--shards", "1", "--wal-segment-bytes", "1048576"])
        .expect("start kardia");
    let port = s.client_port;
    let data = s.data_dir();
    s.kill();
    std::fs::remove_dir_all(&data).unwrap();
    let _disk = Tmpfs::mount(&data, "20m").unwrap_or_else(|e| panic!("cannot mount a tmpfs: {e}"));
    s.restart().expect("start on the tmpfs");
    // Space the test gives back later.
    let filler = data.join("filler");
    std::fs::write(&filler, vec![1u8; 4 << 20]).unwrap();

    let started = Instant::now();
    let (acked, refused) = write_until_refused(port, "disk", Duration::from_secs(5));
    println!(
        "{} writes acknowledged, {} refused, {:?}",
        acked.len(),
        refused.len(),
        started.elapsed()
    );
    assert!(!acked.is_empty() && refused.len() >= 8);
    assert!(s
        .pid()
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()));
    assert!(
        s.log_tail(50).contains("no space left on device"),
        "no log line names the cause:\n{}",
        s.log_tail(20)
    );
    let r = request(port, "GET", "/health", None, &[]).unwrap();
    assert_eq!(r.code(), 503, "{}", r.body_str());
    assert_all_present(port, &acked);
    assert_all_absent(port, &refused);
    let r = request(port, "PUT", "/v2/keys/after", Some("value=x"), &[]).unwrap();
    assert_eq!(r.code(), 500, "{}", r.body_str());
    let wal = data.join("shard-0/wal");
    let tmp: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "half-made segments left: {tmp:?}");

    // Space returns: a restart has every acknowledged write, and writes work.
    s.kill();
    std::fs::remove_file(&filler).unwrap();
    s.restart().expect("restart once space is back");
    assert_all_present(port, &acked);
    let r = request(port, "PUT", "/v2/keys/after", Some("value=x"), &[]).unwrap();
    assert_eq!(r.code(), 201, "{}", r.body_str());
    s.kill();
}
