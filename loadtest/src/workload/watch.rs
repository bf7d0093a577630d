//! Watch fan-out: W long-polling watchers on one directory, one paced writer.
//!
//! Every watcher holds its own connection and loops on
//! `GET /v2/keys/lt/<run>/watch?wait=true&recursive=true&waitIndex=<i>`, moving
//! `i` to the event's `modifiedIndex + 1`, so it must see every write exactly
//! once. The writer PUTs `value=t<ns>` (its send time since the start) at
//! `--rate` to `watch/k<n % keys>`; a watcher turns the value of each event into
//! a notification latency (writer send → watcher receipt). Results leave as a
//! [`Recorder`] (class "PUT" for writes, "watch event" for deliveries) and a
//! [`WatchResult`] with expected vs delivered event counts; events lost to etcd's
//! 1000-event history window come back as errorCode 401 and are counted.

use crate::conn::Client;
use crate::http;
use crate::stats::{Live, Recorder};
use crate::validate::{check, ErrorKind, Expect, Outcome};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CLASSES: &[&str] = &["PUT", "watch event", "watch setup"];
const PUT: usize = 0;
const EVENT: usize = 1;
const SETUP: usize = 2;

#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub watchers: usize,
    /// Writes per second.
    pub rate: f64,
    pub keys: u64,
    pub duration: Duration,
    pub timeout: Duration,
    pub run_id: String,
    pub host: String,
    pub lenient: bool,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WatchResult {
    pub watchers: usize,
    pub writes: u64,
    pub events_expected: u64,
    pub events_delivered: u64,
    /// Expected events that no watcher loop delivered (lost or late).
    pub events_missed: u64,
    pub history_cleared: u64,
}

/// `"modifiedIndex":N` of the event's node (the first one in the body).
pub fn modified_index(body: &[u8]) -> Option<u64> {
    const NEEDLE: &[u8] = b"\"modifiedIndex\":";
    let at = memchr::memmem::find(body, NEEDLE)? + NEEDLE.len();
    parse_digits(&body[at..])
}

/// The send time (ns since start) the writer put in the event's value.
pub fn sent_ns(body: &[u8]) -> Option<u64> {
    const NEEDLE: &[u8] = b"\"value\":\"t";
    let at = memchr::memmem::find(body, NEEDLE)? + NEEDLE.len();
    parse_digits(&body[at..])
}

fn parse_digits(b: &[u8]) -> Option<u64> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    std::str::from_utf8(&b[..n]).ok()?.parse().ok()
}

/// Index to resume from after errorCode 401: the header, else the body's `index`.
fn resync_index(resp: &http::Resp<'_>) -> Option<u64> {
    resp.etcd_index.or_else(|| {
        let at = memchr::memmem::find(resp.body, b"\"index\":")? + 8;
        parse_digits(&resp.body[at..])
    })
}

pub fn run(
    spec: &WatchSpec,
    addrs: &[SocketAddr],
    live: &Arc<Live>,
    stop: &Arc<AtomicBool>,
) -> (Recorder, Duration, WatchResult) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let dir = format!("/lt/{}/watch", spec.run_id);
    let t0 = Instant::now() + Duration::from_millis(200 + 2 * spec.watchers as u64);
    let rec = Rc::new(RefCell::new(Recorder::new(t0, CLASSES)));
    let result = local.block_on(&rt, async {
        // Create the directory and learn the index to watch from.
        let mut setup = Client::new(addrs[0], spec.timeout);
        let mkdir = http::render(
            "PUT",
            &spec.host,
            &format!("/v2/keys{dir}?dir=true"),
            Some(""),
        );
        let start_index = match setup.call(&mkdir).await {
            Ok(r) if r.status < 300 || spec.lenient => r.etcd_index.unwrap_or(0),
            Ok(r) => {
                let kind = check(Expect::Set, &r, false)
                    .err()
                    .unwrap_or(ErrorKind::Status(r.status));
                rec.borrow_mut()
                    .record_error(SETUP, Instant::now(), kind, live);
                0
            }
            Err(kind) => {
                rec.borrow_mut()
                    .record_error(SETUP, Instant::now(), kind, live);
                0
            }
        };
        let delivered = Rc::new(Cell::new(0u64));
        let cleared = Rc::new(Cell::new(0u64));
        let lowest_next = Rc::new(RefCell::new(vec![start_index + 1; spec.watchers]));
        let mut tasks = Vec::new();
        for w in 0..spec.watchers {
            let (rec, live, delivered, cleared, lowest_next) = (
                rec.clone(),
                live.clone(),
                delivered.clone(),
                cleared.clone(),
                lowest_next.clone(),
            );
            let addr = addrs[w % addrs.len()];
            let dir = dir.clone();
            let lenient = spec.lenient;
            let long = spec.duration + spec.timeout + Duration::from_secs(5);
            let host = spec.host.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut client = Client::new(addr, long);
                let mut next = start_index + 1;
                let mut req = Vec::with_capacity(256);
                loop {
                    req.clear();
                    let path = format!("/v2/keys{dir}?wait=true&recursive=true&waitIndex={next}");
                    req.extend_from_slice(&http::render("GET", &host, &path, None));
                    let result = client.call(&req).await;
                    let now = Instant::now();
                    let zero = Duration::ZERO;
                    // (outcome, latency, pause before the next poll)
                    let (outcome, lat, pause) = match result {
                        // The null server answers at once: count it, and pace the loop.
                        Ok(_) if lenient => (Ok(Outcome::Ok), zero, 10),
                        Ok(resp) => match check(Expect::Watch, &resp, false) {
                            Ok(o) => {
                                let lat = sent_ns(resp.body)
                                    .map(|ns| {
                                        now.saturating_duration_since(t0 + Duration::from_nanos(ns))
                                    })
                                    .unwrap_or_default();
                                next = modified_index(resp.body).map_or(next + 1, |m| m + 1);
                                (Ok(o), lat, 0)
                            }
                            Err(ErrorKind::HistoryCleared) => {
                                cleared.set(cleared.get() + 1);
                                next = resync_index(&resp).map_or(next + 1, |i| i + 1);
                                (Err(ErrorKind::HistoryCleared), zero, 0)
                            }
                            Err(kind) => (Err(kind), zero, 50),
                        },
                        Err(kind) => (Err(kind), zero, 50),
                    };
                    if outcome.is_ok() {
                        delivered.set(delivered.get() + 1);
                    }
                    lowest_next.borrow_mut()[w] = next;
                    rec.borrow_mut()
                        .record(EVENT, now, lat, lat, outcome, &live);
                    if pause > 0 {
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }));
        }
        // The writer, paced at `rate` from t0.
        tokio::time::sleep_until(t0.into()).await;
        let interval = Duration::from_secs_f64(1.0 / spec.rate.max(0.001));
        let deadline = t0 + spec.duration;
        let mut writer = Client::new(addrs[0], spec.timeout);
        let width = crate::workload::raw::digits(spec.keys.max(1));
        let mut req = Vec::with_capacity(256);
        let mut n = 0u64;
        let mut writes = 0u64;
        let mut last_index = start_index;
        let mut intended = t0;
        while intended < deadline && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep_until(intended.into()).await;
            let sent = Instant::now();
            let ns = sent.saturating_duration_since(t0).as_nanos() as u64;
            let mut key = vec![0u8; width];
            http::write_padded(n % spec.keys.max(1), &mut key);
            req.clear();
            let body = format!("value=t{ns:016}");
            let path = format!("/v2/keys{dir}/k{}", String::from_utf8_lossy(&key));
            let _ = req.write_all(&http::render("PUT", &spec.host, &path, Some(&body)));
            let result = writer.call(&req).await.and_then(|r| {
                if let Some(i) = r.etcd_index {
                    last_index = last_index.max(i);
                }
                check(Expect::Set, &r, spec.lenient)
            });
            let done = Instant::now();
            if result.is_ok() {
                writes += 1;
            }
            rec.borrow_mut()
                .record(PUT, done, done - intended, done - sent, result, live);
            n += 1;
            intended += interval;
        }
        // Let the watchers catch up to the last write (bounded).
        let grace =
            Instant::now() + Duration::from_secs(2).max(spec.timeout.min(Duration::from_secs(5)));
        while Instant::now() < grace && !spec.lenient {
            if lowest_next.borrow().iter().all(|&i| i > last_index) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let expected = if spec.lenient {
            delivered.get()
        } else {
            writes * spec.watchers as u64
        };
        WatchResult {
            watchers: spec.watchers,
            writes,
            events_expected: expected,
            events_delivered: delivered.get(),
            events_missed: expected.saturating_sub(delivered.get()),
            history_cleared: cleared.get(),
        }
    });
    let elapsed = Instant::now()
        .saturating_duration_since(t0)
        .min(spec.duration + Duration::from_secs(10));
    let rec = Rc::try_unwrap(rec)
        .ok()
        .expect("tasks finished")
        .into_inner();
    (rec, elapsed.max(spec.duration.min(elapsed)), result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_fields() {
        let body = br#"{"action":"set","node":{"key":"/lt/x/watch/k1","value":"t0000000001234567","modifiedIndex":42,"createdIndex":42},"prevNode":{"modifiedIndex":7}}"#;
        assert_eq!(modified_index(body), Some(42));
        assert_eq!(sent_ns(body), Some(1_234_567));
        assert_eq!(sent_ns(br#"{"node":{"value":"x"}}"#), None);
        let cleared = http::Resp {
            status: 400,
            etcd_index: None,
            body: br#"{"errorCode":401,"index":2000}"#,
        };
        assert_eq!(resync_index(&cleared), Some(2000));
    }
}
