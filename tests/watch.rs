//! Watches and TTLs beyond the golden recordings: completeness under
//! concurrent writers (G3), directory expiry with children, a slow stream
//! client that overflows its watcher, and the event history surviving a
//! restart (a watcher that reconnects resumes exactly where it was).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{build_request, json_u64, open_stream, request, BodyLimit, Conn, Server};

fn json_key(line: &str) -> String {
    let at = line.find("\"key\":\"").unwrap() + 7;
    line[at..].split('"').next().unwrap().to_string()
}

#[test]
fn watchers_see_every_committed_event_in_order_exactly_once() {
    let s = Server::start_with(&["--history-size", "100000"]).unwrap();
    let port = s.client_port;
    // index → key of every acknowledged write.
    let committed: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let committed = committed.clone();
            thread::spawn(move || {
                for n in 0..150 {
                    let key = format!("/w/d{}/k{}", (w + n) % 3, n % 7);
                    let r = request(port, "PUT", &format!("/v2/keys{key}"), Some("value=x"), &[])
                        .unwrap();
                    assert!(r.code() == 200 || r.code() == 201, "{}", r.body_str());
                    let idx = json_u64(&r.body_str(), "modifiedIndex").unwrap();
                    committed.lock().unwrap().insert(idx, key);
                }
            })
        })
        .collect();
    // Watchers start while writes are under way, from several indexes.
    thread::sleep(Duration::from_millis(50));
    let mid = {
        let r = request(port, "GET", "/v2/keys/", None, &[]).unwrap();
        r.header("X-Etcd-Index").unwrap().parse::<u64>().unwrap()
    };
    let specs = [
        ("/", true, 4u64),
        ("/w/d1", true, 4),
        ("/w", true, mid + 1),
        ("/w/d2/k3", false, mid / 2),
    ];
    let mut streams: Vec<_> = specs
        .iter()
        .map(|(k, rec, from)| {
            let t = format!("/v2/keys{k}?wait=true&stream=true&recursive={rec}&waitIndex={from}");
            open_stream(port, &t)
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let committed = committed.lock().unwrap().clone();
    assert_eq!(committed.len(), 600);
    for ((key, recursive, from), (conn, resp)) in specs.iter().zip(streams.iter_mut()) {
        let want: Vec<(u64, &String)> = committed
            .iter()
            .filter(|(i, k)| {
                **i >= *from
                    && (*k == key
                        || (*recursive && (*key == "/" || k.starts_with(&format!("{key}/")))))
            })
            .map(|(i, k)| (*i, k))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        conn.read_body(
            resp,
            "GET",
            deadline,
            BodyLimit {
                lines: Some(want.len()),
                idle: None,
            },
        )
        .unwrap();
        let body = resp.body_str();
        let got: Vec<(u64, String)> = body
            .lines()
            .map(|l| (json_u64(l, "modifiedIndex").unwrap(), json_key(l)))
            .collect();
        assert_eq!(
            got.len(),
            want.len(),
            "watch {key} from {from}: {} events, want {}",
            got.len(),
            want.len()
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.0, &g.1), (w.0, w.1), "watch {key} from {from}");
        }
        // Nothing more (no duplicate) arrives.
        let before = resp.body.len();
        conn.read_body(
            resp,
            "GET",
            Instant::now() + Duration::from_millis(300),
            BodyLimit::default(),
        )
        .unwrap();
        assert_eq!(resp.body.len(), before, "watch {key}: extra events");
    }
}

#[test]
fn a_directory_ttl_expires_the_subtree_as_one_event() {
    let s = Server::start().unwrap();
    let port = s.client_port;
    let r = request(port, "PUT", "/v2/keys/app?dir=true&ttl=1", None, &[]).unwrap();
    assert_eq!(r.code(), 201, "{}", r.body_str());
    for k in ["a", "b"] {
        let r = request(
            port,
            "PUT",
            &format!("/v2/keys/app/{k}?ttl=60"),
            Some("value=v"),
            &[],
        )
        .unwrap();
        assert_eq!(r.code(), 201);
    }
    let idx: u64 = request(port, "GET", "/v2/keys/", None, &[])
        .unwrap()
        .header("X-Etcd-Index")
        .unwrap()
        .parse()
        .unwrap();
    // A watcher on a child gets the directory's expire event.
    let t = Instant::now();
    let w = request(port, "GET", "/v2/keys/app/a?wait=true", None, &[]).unwrap();
    let body = w.body_str();
    assert!(
        body.starts_with("{\"action\":\"expire\",\"node\":{\"key\":\"/app\",\"dir\":true,"),
        "{body}"
    );
    assert_eq!(
        json_u64(&body, "modifiedIndex"),
        Some(idx + 1),
        "one index for the subtree: {body}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "expired late: {:?}",
        t.elapsed()
    );
    for k in ["/v2/keys/app", "/v2/keys/app/a", "/v2/keys/app/b"] {
        assert_eq!(
            request(port, "GET", k, None, &[]).unwrap().code(),
            404,
            "{k}"
        );
    }
    let r = request(port, "GET", "/v2/keys/", None, &[]).unwrap();
    assert_eq!(r.header("X-Etcd-Index").unwrap(), (idx + 1).to_string());
    let stats = request(port, "GET", "/v2/stats/store", None, &[])
        .unwrap()
        .body_str();
    assert!(stats.contains("\"expireCount\":1,"), "{stats}");
}

#[test]
fn a_stream_watcher_that_falls_behind_is_dropped_and_its_stream_ends() {
    let s = Server::start().unwrap();
    let port = s.client_port;
    let (mut conn, mut resp) =
        open_stream(port, "/v2/keys/big?wait=true&stream=true&recursive=true");
    // Large events the client does not read: socket buffers fill, then the
    // watcher's 100-event queue, and the server drops the watcher.
    let value = "v".repeat(60_000);
    let form = format!("value={value}");
    let mut c = Conn::connect(port, Duration::from_secs(5)).unwrap();
    for i in 0..600 {
        c.send(&build_request(
            port,
            "PUT",
            format!("/v2/keys/big/k{i}").as_bytes(),
            Some(form.as_bytes()),
            &[],
            true,
        ))
        .unwrap();
        let d = Instant::now() + Duration::from_secs(10);
        let mut r = c.read_head(d).unwrap().unwrap();
        c.read_body(&mut r, "PUT", d, BodyLimit::default()).unwrap();
        assert_eq!(r.code(), 201);
    }
    let stats = request(port, "GET", "/v2/stats/store", None, &[])
        .unwrap()
        .body_str();
    assert!(
        stats.contains("\"watchers\":0}"),
        "watcher still registered: {stats}"
    );
    // The client now reads: the stream ends (a terminated chunked body), and
    // what it did get is a prefix of the events, in order.
    conn.read_body(
        &mut resp,
        "GET",
        Instant::now() + Duration::from_secs(20),
        BodyLimit::default(),
    )
    .unwrap();
    assert!(!resp.timed_out, "stream did not end");
    let n = resp.body_str().lines().count();
    assert!((100..600).contains(&n), "{n} events before the drop");
    for (i, l) in resp.body_str().lines().enumerate() {
        assert_eq!(json_key(l), format!("/big/k{i}"));
    }
}

/// The last 1000 events are durable: after SIGKILL and restart, a watch
/// from any index in the window gets byte for byte the answer it got
/// before, and one below the window the same 401.
fn history_survives_a_restart(args: &[&str]) {
    let mut s = Server::start_with(args).unwrap();
    let port = s.client_port;
    let mut first = 0;
    // 1200 writes over several directories (and so several shards), a
    // delete of a directory among them.
    for n in 0..1200 {
        let r = if n == 700 {
            request(port, "DELETE", "/v2/keys/h/d3?recursive=true", None, &[]).unwrap()
        } else {
            let key = format!("/v2/keys/h/d{}/k{}", n % 5, n % 13);
            request(port, "PUT", &key, Some(&format!("value=v{n}")), &[]).unwrap()
        };
        assert!(matches!(r.code(), 200 | 201), "{}", r.body_str());
        if n == 0 {
            first = json_u64(&r.body_str(), "modifiedIndex").unwrap();
        }
    }
    let last = first + 1199;
    let mut asks: Vec<String> = Vec::new();
    for i in [
        first,
        last - 1000,
        last - 999,
        last - 500,
        last - 499,
        last - 5,
        last,
    ] {
        asks.push(format!("/v2/keys/h?wait=true&recursive=true&waitIndex={i}"));
        // Keys written again after these indexes (or, for d3, deleted with
        // its directory at last - 499).
        if i <= last - 499 {
            asks.push(format!("/v2/keys/h/d3/k1?wait=true&waitIndex={i}"));
            asks.push(format!(
                "/v2/keys/h/d1?wait=true&recursive=true&waitIndex={i}"
            ));
        }
    }
    let answers = |port: u16| -> Vec<(u16, String)> {
        asks.iter()
            .map(|q| {
                let r = request(port, "GET", q, None, &[]).unwrap();
                // The X-Etcd-Index of a history answer is the current index.
                (r.code(), r.body_str())
            })
            .collect()
    };
    let before = answers(port);
    assert!(
        before.iter().any(|(_, b)| b.contains("\"errorCode\":401")),
        "{before:?}"
    );
    s.restart().unwrap();
    let after = answers(port);
    for ((q, b), a) in asks.iter().zip(&before).zip(&after) {
        assert_eq!(a, b, "{q}: answered differently after the restart");
    }
}

#[test]
fn history_survives_a_restart_on_one_shard() {
    history_survives_a_restart(&["--shards", "1"]);
}

#[test]
fn history_survives_a_restart_on_four_shards() {
    history_survives_a_restart(&["--shards", "4"]);
}
