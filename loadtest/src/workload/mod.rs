//! Workload models, and the bulk loader they share for pre-filling a store.
//!
//! `raw` holds the single-operation workloads (put, get, recursive-get, mixed),
//! `watch` the watcher fan-out, `hm9000` the Health Manager model with its
//! freshness accounting. Each takes its parameters from the CLI, talks to a
//! [`crate::servers::System`] through the engine or its own actors, and returns a
//! [`crate::stats::Recorder`] plus workload-specific results. [`fill`] writes a
//! numbered key set before a measured run (not measured itself).

pub mod hm9000;
pub mod raw;
pub mod watch;

use crate::conn::Client;
use crate::validate::{check, Expect};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// A short random tag that keeps one run's keys apart from earlier runs'.
pub fn run_id(seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6c6f_6164_7465_7374);
    format!("{:06x}", rng.u32(..) & 0xff_ffff)
}

/// Renders request number `n` into the buffer.
pub type Render = Rc<dyn Fn(u64, &mut Vec<u8>)>;

/// Writes requests `0..count` (rendered by `render`) with `conns` connections,
/// each expected to succeed as `expect`. Returns the number of failures.
pub fn fill(
    addrs: &[SocketAddr],
    conns: usize,
    count: u64,
    expect: Expect,
    lenient: bool,
    timeout: Duration,
    render: Render,
) -> u64 {
    if count == 0 {
        return 0;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let next = Rc::new(Cell::new(0u64));
        let failures = Rc::new(Cell::new(0u64));
        let conns = conns.clamp(1, count as usize);
        let mut tasks = Vec::new();
        for c in 0..conns {
            let next = next.clone();
            let failures = failures.clone();
            let addr = addrs[c % addrs.len()];
            let render = render.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut client = Client::new(addr, timeout);
                let mut buf = Vec::with_capacity(512);
                loop {
                    let n = next.get();
                    if n >= count {
                        break;
                    }
                    next.set(n + 1);
                    buf.clear();
                    render(n, &mut buf);
                    let ok = match client.call(&buf).await {
                        Ok(resp) => check(expect, &resp, lenient).is_ok(),
                        Err(_) => false,
                    };
                    if !ok {
                        failures.set(failures.get() + 1);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        failures.get()
    })
}
