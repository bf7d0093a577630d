//! Large listings sent as they render (`v2::stream`), seen from outside:
//! the real binary on loopback, a 20 MB directory rewritten in order by a
//! writer while it is listed.
//!
//! * Over HTTP/1.1 a listing of several megabytes is chunked, as etcd's
//!   large answers are, whether or not writes are in flight; over HTTP/1.0
//!   it carries `Content-Length`.
//! * However slowly the client reads (past the server's patience, when the
//!   rest is rendered at once) the body is one read at its `X-Etcd-Index`:
//!   no node modified after it, and the writer's generations never rise
//!   along the listing.
//! * Clients that ask for the listing and never read, or go away in the
//!   middle of it, do not hold up the writer or the readers after them; a
//!   request pipelined behind a streamed listing is answered after it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::json::Json;
use common::{build_request, read_response, Conn, Response, Server};

/// Files in the listed directory, and each one's value size: a 20 MB
/// listing, larger than what the two ends' socket buffers hold, so a
/// client that stops reading stops the server's sends.
const FILES: usize = 2000;
const VALUE: usize = 10_000;

fn far() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// The value generation `g` gives file `i`: `g<gen>-i<i>-` and padding.
fn value(g: u64, i: usize) -> String {
    let head = format!("g{g:08}-i{i:04}-");
    format!("value={head}{}", "x".repeat(VALUE - head.len()))
}

const LISTING: &str = "/v2/keys/big?recursive=true";

/// A connection that has asked for the listing of `/big`.
fn ask(port: u16, keep_alive: bool) -> Conn {
    let mut c = Conn::connect(port, Duration::from_secs(10)).expect("connect");
    let wire = build_request(port, "GET", LISTING.as_bytes(), None, &[], keep_alive);
    c.send(&wire).expect("send the GET");
    c
}

fn target(i: usize) -> String {
    format!("/v2/keys/big/k{i:04}")
}

/// Check a listing of `/big` is one read at its `X-Etcd-Index`: every file
/// there, in order; none modified after that index; generations never
/// rising along the files (the writer rewrites them in order) and at most
/// one apart. Returns the newest generation seen.
fn check_one_read(r: &Response, what: &str) -> u64 {
    assert_eq!(r.code(), 200, "{what}: {}", r.body_str());
    assert_eq!(
        r.header("Transfer-Encoding"),
        Some("chunked"),
        "{what}: sent whole"
    );
    let index: u64 = r
        .header("X-Etcd-Index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no X-Etcd-Index"));
    let text = r.body_str();
    let json = Json::parse(&text).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    let nodes = match json.get("node").and_then(|n| n.get("nodes")) {
        Some(Json::Arr(a)) => a,
        _ => panic!("{what}: no nodes"),
    };
    assert_eq!(nodes.len(), FILES, "{what}: files listed");
    let mut gens = Vec::with_capacity(FILES);
    for (i, n) in nodes.iter().enumerate() {
        let key = n.get("key").and_then(Json::as_str).unwrap_or_default();
        assert_eq!(key, format!("/big/k{i:04}"), "{what}: file {i}");
        let modified = n.get("modifiedIndex").and_then(Json::as_u64).unwrap();
        assert!(
            modified <= index,
            "{what}: {key} modified at {modified}, after the read's index {index}"
        );
        let v = n.get("value").and_then(Json::as_str).unwrap_or_default();
        assert_eq!(v.len(), VALUE, "{what}: {key}'s value");
        assert!(v.contains(&format!("-i{i:04}-")), "{what}: {key}'s value");
        gens.push(v[1..9].parse::<u64>().unwrap());
    }
    let (newest, oldest) = (gens[0], gens[FILES - 1]);
    assert!(
        gens.windows(2).all(|w| w[0] >= w[1]) && newest - oldest <= 1,
        "{what}: generations along the listing are not one moment's: first {newest}, last \
         {oldest}, rises at {:?}",
        gens.windows(2)
            .position(|w| w[0] < w[1])
            .map(|p| (p, gens[p], gens[p + 1]))
    );
    newest
}

#[test]
fn a_large_listing_streams_as_one_read_however_slowly_it_is_read() {
    let server = Server::start().expect("start kardia");
    let port = server.client_port;
    // Fill, pipelined 100 at a time.
    let mut c = Conn::connect(port, Duration::from_secs(10)).expect("connect");
    for batch in 0..FILES / 100 {
        let mut wire = Vec::new();
        for i in batch * 100..(batch + 1) * 100 {
            let body = value(0, i);
            wire.extend(build_request(
                port,
                "PUT",
                target(i).as_bytes(),
                Some(body.as_bytes()),
                &[],
                true,
            ));
        }
        c.send(&wire).expect("send PUTs");
        for _ in 0..100 {
            let r = read_response(&mut c, "PUT", far()).expect("a PUT's answer");
            assert_eq!(r.code(), 201, "{}", r.body_str());
        }
    }
    let get = || read_response(&mut ask(port, false), "GET", far()).expect("the listing");
    // Quiet: chunked over HTTP/1.1, the same body as HTTP/1.0's, which is
    // sized.
    let r11 = get();
    assert_eq!(r11.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r11.header("Content-Length"), None);
    assert!(r11.body.len() > FILES * VALUE, "{} bytes", r11.body.len());
    check_one_read(&r11, "quiet HTTP/1.1");
    let mut c = Conn::connect(port, Duration::from_secs(10)).expect("connect");
    c.send(format!("GET {LISTING} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let r10 = read_response(&mut c, "GET", far()).expect("the HTTP/1.0 listing");
    assert_eq!(
        r10.header("Content-Length"),
        Some(&*r11.body.len().to_string())
    );
    assert!(r10.body == r11.body, "HTTP/1.0 and HTTP/1.1 bodies differ");

    // A writer rewrites the files in order, one generation after another.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        thread::spawn(move || {
            let mut c = Conn::connect(port, Duration::from_secs(10)).expect("connect");
            let mut g = 1;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..FILES {
                    let body = value(g, i);
                    let r = common::request_on(&mut c, port, "PUT", &target(i), Some(&body), far())
                        .expect("a PUT");
                    assert_eq!(r.code(), 200, "{}", r.body_str());
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                g += 1;
            }
        })
    };
    while writes.load(Ordering::Relaxed) < 100 {
        thread::sleep(Duration::from_millis(10));
    }
    for round in 0..5 {
        check_one_read(&get(), &format!("read at once, round {round}"));
    }
    // Clients that ask and never read (each holds its answer; none holds
    // the writer or the others up).
    let mut idle: Vec<Conn> = (0..4).map(|_| ask(port, true)).collect();
    // A slow reader: its head, then nothing for twice the server's patience
    // (1 s) while the writer goes on, then the rest.
    let mut c = ask(port, false);
    let mut r = c.read_head(far()).unwrap().expect("a head");
    let before = writes.load(Ordering::Relaxed);
    thread::sleep(Duration::from_secs(2));
    let during = writes.load(Ordering::Relaxed) - before;
    assert!(
        during > 100,
        "{during} writes while a client sat on a listing"
    );
    c.read_body(&mut r, "GET", far(), Default::default())
        .unwrap();
    assert!(!r.timed_out, "the slow read timed out");
    check_one_read(&r, "slow read");
    // A client that goes away in the middle of its listing.
    for _ in 0..3 {
        let mut c = ask(port, true);
        c.read_head(far()).unwrap().expect("a head");
    }
    // A small request pipelined behind a streamed listing is answered
    // after it, on the same connection.
    let mut c = Conn::connect(port, Duration::from_secs(10)).expect("connect");
    let mut wire = build_request(port, "GET", LISTING.as_bytes(), None, &[], true);
    wire.extend(build_request(
        port,
        "GET",
        target(7).as_bytes(),
        None,
        &[],
        true,
    ));
    c.send(&wire).unwrap();
    check_one_read(
        &read_response(&mut c, "GET", far()).unwrap(),
        "pipelined before a small GET",
    );
    let small = read_response(&mut c, "GET", far()).unwrap();
    assert_eq!(small.code(), 200, "{}", small.body_str());
    assert!(small.body_str().contains("\"key\":\"/big/k0007\""));
    // The clients that never read are still owed a correct answer.
    for (n, c) in idle.iter_mut().enumerate() {
        let r = read_response(c, "GET", far()).expect("an idle client's listing");
        check_one_read(&r, &format!("idle client {n}"));
    }
    for round in 0..3 {
        check_one_read(&get(), &format!("read at once after, round {round}"));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}
