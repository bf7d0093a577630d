//! The load engine for the raw workloads: many keep-alive connections driven
//! closed-loop (a fixed number in flight) or open-loop (a fixed rate).
//!
//! Requests enter from a per-connection [`ConnSource`], which appends pre-rendered
//! bytes to the connection's write buffer and returns a small [`ReqMeta`] (class,
//! expectation, key number). Responses are validated on the spot and recorded in
//! the thread's [`Recorder`]; [`run`] returns the merged recorder. Each client
//! thread runs a tokio current-thread runtime with one task per connection. In
//! open-loop mode every connection owns `rate / conns` of the schedule, and
//! latency is measured from each request's *intended* send time, so a stalled
//! server is charged for the requests it delayed (no coordinated omission).

use crate::conn::{read_error_kind, Conn};
use crate::stats::{Live, Recorder};
use crate::validate::{check, check_node, ErrorKind, Expect, NodeCheck};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// What the engine needs to know about a request it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqMeta {
    /// Index into the workload's class names.
    pub class: u8,
    pub expect: Expect,
    /// The key number (for sampled value checks).
    pub n: u64,
}

/// A per-connection request generator.
pub trait ConnSource {
    /// Appends the next request to `out` and describes it.
    fn next(&mut self, out: &mut Vec<u8>) -> ReqMeta;
    /// The body check for a sampled response to `meta`, if the workload has one.
    fn node_check(&self, meta: &ReqMeta) -> Option<NodeCheck>;
}

/// How to drive the connections.
#[derive(Clone, Debug)]
pub struct LoadCfg {
    /// Server addresses; connections are spread over them round-robin.
    pub addrs: Vec<SocketAddr>,
    pub conns: usize,
    /// Requests in flight per connection (1 = no pipelining).
    pub pipeline: usize,
    /// Open-loop total rate (requests/s); `None` = closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub timeout: Duration,
    pub threads: usize,
    /// Check the body of every Nth response per connection (0 = never).
    pub check_every: u64,
    /// Status-only validation (null server).
    pub lenient: bool,
    /// Pin client thread i to `cpus[i % len]`.
    pub cpus: Vec<usize>,
}

struct ConnCtx {
    t0: Instant,
    deadline: Instant,
    cfg: LoadCfg,
    rec: Rc<RefCell<Recorder>>,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
}

impl ConnCtx {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Runs the load on `cfg.threads` threads; returns the merged recorder and the
/// measured wall time (from the common start to the last response).
pub fn run<S, F>(
    cfg: &LoadCfg,
    class_names: &[&str],
    make: F,
    live: &Arc<Live>,
    stop: &Arc<AtomicBool>,
) -> (Recorder, Duration)
where
    S: ConnSource + 'static,
    F: Fn(usize) -> S + Sync,
{
    let threads = cfg.threads.clamp(1, cfg.conns.max(1));
    // Connections are opened before t0 so that connect time is not measured.
    let t0 = Instant::now() + Duration::from_millis(100 + 2 * cfg.conns as u64);
    let make = &make;
    let recs: Vec<Recorder> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let cfg = cfg.clone();
                let live = live.clone();
                let stop = stop.clone();
                let names = class_names.to_vec();
                scope.spawn(move || {
                    if !cfg.cpus.is_empty() {
                        crate::servers::pin_current_thread(&[cfg.cpus[t % cfg.cpus.len()]]);
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    let rec = Rc::new(RefCell::new(Recorder::new(t0, &names)));
                    let ctx = Rc::new(ConnCtx {
                        t0,
                        deadline: t0 + cfg.duration,
                        cfg,
                        rec: rec.clone(),
                        live,
                        stop,
                    });
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async {
                        let mut tasks = Vec::new();
                        for c in (t..ctx.cfg.conns).step_by(threads) {
                            let src = make(c);
                            let ctx = ctx.clone();
                            let addr = ctx.cfg.addrs[c % ctx.cfg.addrs.len()];
                            tasks.push(tokio::task::spawn_local(async move {
                                match ctx.cfg.rate {
                                    None => closed_loop(addr, src, &ctx).await,
                                    Some(rate) => open_loop(addr, src, &ctx, c, rate).await,
                                }
                            }));
                        }
                        for t in tasks {
                            let _ = t.await;
                        }
                    });
                    drop(ctx);
                    Rc::try_unwrap(rec)
                        .ok()
                        .expect("tasks finished")
                        .into_inner()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let elapsed = Instant::now()
        .saturating_duration_since(t0)
        .min(cfg.duration + cfg.timeout);
    let mut all = recs.into_iter();
    let mut rec = all.next().expect("at least one thread");
    for r in all {
        rec.merge(&r);
    }
    let elapsed = if stop.load(Ordering::Relaxed) {
        elapsed
    } else {
        elapsed.max(cfg.duration)
    };
    (rec, elapsed)
}

/// Validates one response and records it.
#[allow(clippy::too_many_arguments)]
fn finish<S: ConnSource>(
    ctx: &ConnCtx,
    src: &S,
    meta: ReqMeta,
    resp: &crate::http::Resp<'_>,
    sample: bool,
    latency: Duration,
    service: Duration,
    done: Instant,
) {
    let mut result = check(meta.expect, resp, ctx.cfg.lenient);
    let mut rec = ctx.rec.borrow_mut();
    if sample && result.is_ok() && !ctx.cfg.lenient {
        if let Some(want) = src.node_check(&meta) {
            rec.sampled += 1;
            if let Err(e) = check_node(resp.body, &want) {
                result = Err(e);
            }
        }
    }
    rec.record(
        meta.class as usize,
        done,
        latency,
        service,
        result,
        &ctx.live,
    );
}

fn fail_all<T>(
    ctx: &ConnCtx,
    inflight: &mut VecDeque<T>,
    class: impl Fn(&T) -> u8,
    kind: ErrorKind,
) {
    let now = Instant::now();
    let mut rec = ctx.rec.borrow_mut();
    for item in inflight.drain(..) {
        rec.record_error(class(&item) as usize, now, kind, &ctx.live);
    }
}

async fn connect(addr: SocketAddr, ctx: &ConnCtx) -> Option<Conn> {
    loop {
        if Instant::now() >= ctx.deadline || ctx.stopping() {
            return None;
        }
        match tokio::time::timeout(ctx.cfg.timeout, Conn::connect(addr)).await {
            Ok(Ok(c)) => return Some(c),
            _ => {
                ctx.rec
                    .borrow_mut()
                    .record_error(0, Instant::now(), ErrorKind::Connect, &ctx.live);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Keeps `pipeline` requests in flight until the deadline, then drains.
async fn closed_loop<S: ConnSource>(addr: SocketAddr, mut src: S, ctx: &ConnCtx) {
    let depth = ctx.cfg.pipeline.max(1);
    let mut inflight: VecDeque<(Instant, ReqMeta)> = VecDeque::with_capacity(depth);
    let mut seq = 0u64;
    let every = ctx.cfg.check_every;
    'reconnect: while let Some(mut conn) = connect(addr, ctx).await {
        tokio::time::sleep_until(ctx.t0.into()).await;
        loop {
            let now = Instant::now();
            if now < ctx.deadline && !ctx.stopping() {
                while inflight.len() < depth {
                    let meta = src.next(&mut conn.wbuf);
                    inflight.push_back((now, meta));
                }
                if conn.send().await.is_err() {
                    fail_all(ctx, &mut inflight, |x| x.1.class, ErrorKind::Io);
                    continue 'reconnect;
                }
            }
            if inflight.is_empty() {
                return;
            }
            match tokio::time::timeout(ctx.cfg.timeout, conn.recv()).await {
                Ok(Ok(resp)) => {
                    let (sent, meta) = inflight.pop_front().expect("in flight");
                    let done = Instant::now();
                    seq += 1;
                    let sample = every > 0 && seq.is_multiple_of(every);
                    let lat = done - sent;
                    finish(ctx, &src, meta, &resp, sample, lat, lat, done);
                }
                Ok(Err(e)) => {
                    fail_all(ctx, &mut inflight, |x| x.1.class, read_error_kind(&e));
                    continue 'reconnect;
                }
                Err(_) => {
                    fail_all(ctx, &mut inflight, |x| x.1.class, ErrorKind::Timeout);
                    continue 'reconnect;
                }
            }
            // Handle every response that is already buffered before writing
            // again, so a pipelined connection costs one write per read batch.
            while !inflight.is_empty() {
                match conn.reader.try_next() {
                    Ok(Some(resp)) => {
                        let (sent, meta) = inflight.pop_front().expect("in flight");
                        let done = Instant::now();
                        seq += 1;
                        let sample = every > 0 && seq.is_multiple_of(every);
                        let lat = done - sent;
                        finish(ctx, &src, meta, &resp, sample, lat, lat, done);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        fail_all(ctx, &mut inflight, |x| x.1.class, read_error_kind(&e));
                        continue 'reconnect;
                    }
                }
            }
        }
    }
}

/// Sends on this connection's share of a fixed-rate schedule.
async fn open_loop<S: ConnSource>(
    addr: SocketAddr,
    src: S,
    ctx: &ConnCtx,
    index: usize,
    rate: f64,
) {
    let conns = ctx.cfg.conns.max(1);
    let per_conn = (rate / conns as f64).max(1e-3);
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    // Spread the connections' phases evenly over one interval.
    let next = Cell::new(ctx.t0 + interval.mul_f64(index as f64 / conns as f64));
    let src = RefCell::new(src);
    let depth = ctx.cfg.pipeline.max(1);
    let every = ctx.cfg.check_every;
    let mut seq = 0u64;
    // (intended, actual send, meta)
    let inflight: RefCell<VecDeque<(Instant, Instant, ReqMeta)>> =
        RefCell::new(VecDeque::with_capacity(depth));
    while next.get() < ctx.deadline && !ctx.stopping() {
        let Some(mut conn) = connect(addr, ctx).await else {
            return;
        };
        let (mut rd, mut wr) = conn.stream.split();
        let rr = &mut conn.reader;
        let wbuf = &mut conn.wbuf;
        let space = Notify::new();
        let more = Notify::new();
        let writer_done = Cell::new(false);
        let failed: Cell<Option<ErrorKind>> = Cell::new(None);
        let writer = async {
            loop {
                if failed.get().is_some() || next.get() >= ctx.deadline || ctx.stopping() {
                    break;
                }
                if inflight.borrow().len() >= depth {
                    space.notified().await;
                    continue;
                }
                let now = Instant::now();
                if next.get() > now {
                    tokio::time::sleep_until(next.get().into()).await;
                    continue;
                }
                {
                    let mut q = inflight.borrow_mut();
                    let mut s = src.borrow_mut();
                    while q.len() < depth && next.get() <= now && next.get() < ctx.deadline {
                        let meta = s.next(wbuf);
                        q.push_back((next.get(), now, meta));
                        next.set(next.get() + interval);
                    }
                }
                if wr.write_all(wbuf).await.is_err() {
                    failed.set(Some(ErrorKind::Io));
                    more.notify_one();
                    break;
                }
                wbuf.clear();
                more.notify_one();
            }
            writer_done.set(true);
            more.notify_one();
        };
        let reader = async {
            loop {
                if inflight.borrow().is_empty() {
                    if writer_done.get() || failed.get().is_some() {
                        break;
                    }
                    more.notified().await;
                    continue;
                }
                let kind = match tokio::time::timeout(ctx.cfg.timeout, rr.next(&mut rd)).await {
                    Ok(Ok(resp)) => {
                        let (intended, sent, meta) =
                            inflight.borrow_mut().pop_front().expect("in flight");
                        let done = Instant::now();
                        seq += 1;
                        let sample = every > 0 && seq.is_multiple_of(every);
                        finish(
                            ctx,
                            &*src.borrow(),
                            meta,
                            &resp,
                            sample,
                            done - intended,
                            done - sent,
                            done,
                        );
                        space.notify_one();
                        continue;
                    }
                    Ok(Err(e)) => read_error_kind(&e),
                    Err(_) => ErrorKind::Timeout,
                };
                failed.set(Some(kind));
                fail_all(ctx, &mut inflight.borrow_mut(), |x| x.2.class, kind);
                space.notify_one();
                break;
            }
        };
        tokio::join!(writer, reader);
        let mut q = inflight.borrow_mut();
        if !q.is_empty() {
            fail_all(
                ctx,
                &mut q,
                |x| x.2.class,
                failed.get().unwrap_or(ErrorKind::Io),
            );
        }
        if failed.get().is_none() {
            return;
        }
    }
}
