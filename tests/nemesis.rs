//! Network faults between kardia members (issue #12, point 6): a nemesis
//! for a 3-member cluster whose members each run in their own Linux network
//! namespace on their own address (`10.213.<run>.1-3`, joined by veths to a
//! bridge; see `common::netns`). While clients in the hub namespace run
//! quorum reads, writes, CAS and deletes through every member (the faulty
//! ones included), one fault at a time is injected and healed: an isolated
//! leader, a minority/majority split, a one-way partition from the leader,
//! a bridge partition (one follower sees both others; leader and the other
//! follower are cut), flapping links, random packet loss between members,
//! a slow leader link (tc tbf), and a killed (SIGKILL) or frozen (SIGSTOP)
//! leader. Checked: the history
//! is linearizable (Wing–Gong, `common::linearizability`), including final
//! quorum reads through every member after healing, so no acknowledged
//! write is lost and no `quorum=true` read is stale; at most one member
//! claims leadership per raft term (sampled from `/debug/kardia/shards`
//! every 50 ms); every member serves a quorum write and a quorum read
//! within 5 s of healing; members converge to the same content. Each
//! scenario injects one short fault by default (the file takes about a
//! minute); `KARDIA_NEMESIS_SECS=N` runs N seconds of fault cycles per
//! scenario, `KARDIA_NEMESIS_FAULT_MS` fixes each fault's length, and
//! `KARDIA_NEMESIS_SEED` repeats a run. Needs root, `ip` and
//! `iptables` (`tc netem` is not available on the CI kernel): skipped
//! otherwise, a failure under `CI=true`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{error_code, serial, url_encode, value_of, CallError, FAST};
use common::linearizability::{check, partition_by_key, Clock, Kind, Op, Recorder};
use common::netns::{self, http_at, Lab, NetCluster};
use common::Rng;

/// The registers the clients work on.
const KEYS: [&str; 3] = ["/nemesis/a", "/nemesis/b", "/nemesis/c"];
/// The key of the recovery probe (its ops are checked too).
const PROBE_KEY: &str = "/nemesis/probe";
/// Concurrent clients; client `t` mostly uses member `t % 3`, so the
/// members a fault leaves healthy keep their load while the clients of a
/// cut-off member wait.
const CLIENTS: usize = 6;
/// How often a client picks a random member instead of its own; it skips
/// members that failed it in the last second (a client with failover).
const WANDER_PERCENT: u64 = 25;
/// A client gives up on a request after this (the outcome is then unknown).
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Every member serves a quorum write and read within this of healing.
const HEAL_BOUND: Duration = Duration::from_secs(5);
/// Upper bound on the requests of one client in one scenario.
const MAX_OPS_PER_CLIENT: usize = 20_000;
/// How often each member's role and term are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// The leader is cut from both followers; clients still reach it.
    IsolatedLeader,
    /// A follower is cut from the others (the leader keeps a majority).
    MinoritySplit,
    /// The followers drop everything the leader sends; it hears them.
    OneWayFromLeader,
    /// The leader and one follower are cut; the other follower sees both.
    BridgePartition,
    /// Members' links go down and up at random.
    FlappingLinks,
    /// Every member drops 20 % of the packets from the other members.
    RandomLoss,
    /// The leader's outgoing traffic is limited to 64 kbit/s (tc tbf).
    SlowLeaderLink,
    /// The leader is SIGKILLed and restarted.
    KillLeader,
    /// The leader is SIGSTOPped and continued.
    PauseLeader,
}

#[test]
fn isolated_leader() {
    nemesis(Scenario::IsolatedLeader);
}

#[test]
fn minority_majority_split() {
    nemesis(Scenario::MinoritySplit);
}

#[test]
fn one_way_partition_from_leader() {
    nemesis(Scenario::OneWayFromLeader);
}

#[test]
fn bridge_partition() {
    nemesis(Scenario::BridgePartition);
}

#[test]
fn flapping_links() {
    nemesis(Scenario::FlappingLinks);
}

#[test]
fn random_loss() {
    nemesis(Scenario::RandomLoss);
}

#[test]
fn slow_leader_link() {
    nemesis(Scenario::SlowLeaderLink);
}

#[test]
fn leader_killed() {
    nemesis(Scenario::KillLeader);
}

#[test]
fn leader_paused() {
    nemesis(Scenario::PauseLeader);
}

/// A member cut off for 20 s must serve again within 5 s of the cut being
/// healed. It used not to: the peer transport never noticed that an
/// established connection had stalled, so traffic resumed only at the next
/// TCP retransmission, whose interval doubles through the cut (5-7 s after
/// a 20 s cut, minutes after a longer one). Peer sockets now carry
/// TCP_USER_TIMEOUT (3 s), so the writer reconnects: measured 1.4 s.
#[test]
fn member_rejoins_within_5s_after_a_long_partition() {
    nemesis_with(Scenario::MinoritySplit, Some(Duration::from_secs(20)));
}

/// Members advertise their namespace addresses, and every member lists all
/// of them (the "cluster on external addresses" case), with the cluster
/// serving writes on those addresses.
#[test]
fn cluster_on_external_addresses() {
    let _serial = serial();
    if !netns::usable() {
        return;
    }
    let lab = Lab::create(3).unwrap_or_else(|e| panic!("creating namespaces: {e}"));
    let _hub = lab.enter_hub();
    let mut c = NetCluster::new(lab, FAST);
    c.start_all();
    wait_external_urls(&c);
    let l = c.wait_leader_agreed(Duration::from_secs(10));
    let r = c
        .http(l, "GET", "/v2/stats/leader", None, Duration::from_secs(2))
        .expect("stats/leader");
    assert_eq!(r.code(), 200, "{}", r.body_str());
    for i in 0..3 {
        let r = c
            .http(
                i,
                "PUT",
                &format!("/v2/keys/ext/{i}"),
                Some("value=v"),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| panic!("PUT via n{}: {e}\n{}", i + 1, c.logs()));
        assert!(matches!(r.code(), 200 | 201), "{}", r.body_str());
    }
    c.wait_converged(Duration::from_secs(10));
    // Nothing listens on loopback inside a member's namespace.
    let on_lo = netns::in_ns(&c.lab.nodes[0], || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], netns::CLIENT_PORT)),
            Duration::from_secs(1),
        )
        .is_ok()
    });
    assert!(!on_lo, "n1 listens on loopback although told its address");
}

// ---------------------------------------------------------------------------
// The run

/// Fault-phase length per scenario: one short fault unless
/// `KARDIA_NEMESIS_SECS` asks for more.
fn fault_secs() -> Option<f64> {
    std::env::var("KARDIA_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
}

/// A fixed fault-window length (`KARDIA_NEMESIS_FAULT_MS`) instead of
/// 2.5 s (one cycle) or 1.5-4.5 s (long runs).
fn fault_ms() -> Option<u64> {
    std::env::var("KARDIA_NEMESIS_FAULT_MS")
        .ok()
        .and_then(|s| s.parse().ok())
}

fn seed() -> u64 {
    match std::env::var("KARDIA_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(s) => {
            eprintln!("seed {s} (KARDIA_NEMESIS_SEED)");
            s | 1
        }
        None => common::time_seed(),
    }
}

/// Sets a flag when dropped, so client threads stop even if the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One observation of a member's role.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    member: usize,
    leader: bool,
    term: u64,
}

/// What one fault cycle measured.
#[derive(Debug)]
struct Cycle {
    what: String,
    /// The leader when the fault started, and its term.
    old_leader: usize,
    old_term: u64,
    injected: u64,
    /// Healing done (rules flushed, process restarted or continued).
    healed: u64,
    /// From healing until some member, and until every member, served a
    /// quorum write and a quorum read.
    first_served: Option<Duration>,
    all_served: Vec<Option<Duration>>,
}

fn nemesis(scenario: Scenario) {
    nemesis_with(scenario, None);
}

/// [`nemesis`] with every fault lasting `fixed` (when given).
fn nemesis_with(scenario: Scenario, fixed: Option<Duration>) {
    let _serial = serial();
    if !netns::usable() {
        return;
    }
    let started = Instant::now();
    let seed = seed();
    let mut rng = Rng(seed);
    let lab = Lab::create(3).unwrap_or_else(|e| panic!("creating namespaces: {e}"));
    let hub = lab.hub.clone();
    let _hub = lab.enter_hub();
    let mut c = NetCluster::new(lab, FAST);
    c.start_all();
    wait_external_urls(&c);
    c.wait_leader_agreed(Duration::from_secs(10));
    eprintln!(
        "{scenario:?}: cluster up on {:?} in {:?}",
        c.addrs(),
        started.elapsed()
    );

    let long = fault_secs();
    let hard_deadline = Instant::now() + Duration::from_secs_f64(long.unwrap_or(0.0) + 90.0);
    let clock = Clock::new();
    let history = Arc::new(Recorder::default());
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let addrs = c.addrs();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let ctx = ClientCtx {
                t,
                seed: seed.wrapping_add(t as u64 * 0x51_7cc1_b727) | 1,
                hub: hub.clone(),
                addrs: addrs.clone(),
                clock,
                history: history.clone(),
                unexpected: unexpected.clone(),
                attempts: attempts.clone(),
                stop: stop.clone(),
                deadline: hard_deadline,
            };
            thread::spawn(move || client(ctx))
        })
        .collect();
    let samplers: Vec<_> = (0..addrs.len())
        .map(|i| {
            let (hub, addr, samples, stop) = (hub.clone(), addrs[i], samples.clone(), stop.clone());
            thread::spawn(move || sampler(i, &hub, addr, clock, &samples, &stop, hard_deadline))
        })
        .collect();

    // Faults.
    thread::sleep(Duration::from_millis(700));
    let phase = Instant::now();
    let mut cycles = Vec::new();
    loop {
        let window = fixed.unwrap_or_else(|| match (fault_ms(), long) {
            (Some(ms), _) => Duration::from_millis(ms),
            (None, None) => Duration::from_millis(2500),
            (None, Some(_)) => Duration::from_millis(1500 + rng.below(3000)),
        });
        cycles.push(fault_cycle(
            &mut c, scenario, &mut rng, window, &clock, &history,
        ));
        let done = match long {
            None => true,
            Some(secs) => phase.elapsed().as_secs_f64() >= secs,
        };
        if done || Instant::now() > hard_deadline {
            break;
        }
        thread::sleep(Duration::from_millis(500 + rng.below(1000)));
    }
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for h in clients {
        h.join().expect("client thread");
    }
    for h in samplers {
        h.join().expect("sampler thread");
    }

    // After the last heal: the same content everywhere, and a quorum read
    // of every key through every member, appended to the history (they
    // start after everything else ended: a lost acknowledged write or a
    // stale read shows up as a linearizability violation).
    c.wait_converged(Duration::from_secs(20));
    for key in KEYS.iter().copied().chain([PROBE_KEY]) {
        for i in 0..c.len() {
            let call = clock.now();
            let r = c.http(
                i,
                "GET",
                &format!("/v2/keys{key}?quorum=true"),
                None,
                Duration::from_secs(5),
            );
            let ret = clock.now();
            match r.as_ref().map(value_of) {
                Ok(Ok(got)) => history.push(Op::read(100 + i, key, call, ret, got.as_deref())),
                other => panic!(
                    "final quorum read of {key} via n{}: {other:?}\n{}",
                    i + 1,
                    c.logs()
                ),
            }
        }
    }

    // Verdicts.
    let samples = samples.lock().unwrap().clone();
    let attempts = attempts.lock().unwrap().clone();
    let report = report(scenario, &cycles, &samples, &attempts);
    eprintln!("{report}");
    let ops = history.take();
    let unknown = ops.iter().filter(|o| o.is_indeterminate()).count();
    eprintln!(
        "{scenario:?}: {} operations, {unknown} indeterminate, {} role samples",
        ops.len(),
        samples.len()
    );
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "{scenario:?} (seed {seed}): unexpected answers: {unexpected:?}\n{}",
        c.logs()
    );
    let mut leaders: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.leader) {
        leaders.entry(s.term).or_default().insert(s.member);
    }
    let two: Vec<_> = leaders.iter().filter(|(_, m)| m.len() > 1).collect();
    assert!(
        two.is_empty(),
        "{scenario:?} (seed {seed}): several leaders in one term: {two:?}\n{}",
        c.logs()
    );
    for (key, mut per_key) in partition_by_key(&ops) {
        let t = Instant::now();
        let verdict = check(&per_key);
        eprintln!("{key}: {} ops checked in {:?}", per_key.len(), t.elapsed());
        if let Err(e) = verdict {
            per_key.sort_by_key(|o| o.call);
            let dump: Vec<String> = per_key.iter().map(|o| format!("  {o}")).collect();
            panic!(
                "{scenario:?} (seed {seed}): {key}: {e}\n{report}\nfull history of {key} by call time:\n{}\n{}",
                dump.join("\n"),
                c.logs()
            );
        }
    }
    for cy in &cycles {
        let slow: Vec<String> = cy
            .all_served
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_none_or(|d| d > HEAL_BOUND))
            .map(|(i, d)| format!("n{} {d:?}", i + 1))
            .collect();
        assert!(
            slow.is_empty(),
            "{scenario:?} (seed {seed}): after healing {}, members not serving a quorum write and read within {HEAL_BOUND:?}: {slow:?}\n{report}\n{}",
            cy.what,
            c.logs()
        );
    }
    let acked = ops
        .iter()
        .filter(|o| o.ret.is_some() && !matches!(o.kind, Kind::Read { .. }))
        .count();
    assert!(
        acked >= 20,
        "{scenario:?}: only {acked} acknowledged writes\n{report}"
    );
    eprintln!("{scenario:?}: passed in {:?}", started.elapsed());
}

/// Waits until member n1 lists every member's namespace address as its
/// peer and client URL.
fn wait_external_urls(c: &NetCluster) {
    let want: Vec<String> = (0..c.len())
        .flat_map(|i| {
            let ip = c.lab.member_ip(i);
            [
                format!("http://{ip}:{}", netns::CLIENT_PORT),
                format!("http://{ip}:{}", netns::PEER_PORT),
            ]
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = c
            .http(0, "GET", "/v2/members", None, Duration::from_secs(2))
            .map(|r| r.body_str())
            .unwrap_or_default();
        if want.iter().all(|u| body.contains(u.as_str())) {
            assert!(
                !body.contains("127.0.0.1"),
                "members list loopback URLs: {body}"
            );
            return;
        }
        if Instant::now() > deadline {
            panic!("/v2/members does not list {want:?}: {body}\n{}", c.logs());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The current leader and its term (asked of the leader itself).
fn leader_and_term(c: &mut NetCluster) -> (usize, u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let l = c.wait_leader_agreed(Duration::from_secs(15));
        if let Some((true, term)) = c.role(l, Duration::from_secs(1)) {
            return (l, term);
        }
        if Instant::now() > deadline {
            panic!("leader n{} does not say it leads\n{}", l + 1, c.logs());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Injects one fault for `window`, heals it, and measures recovery.
fn fault_cycle(
    c: &mut NetCluster,
    scenario: Scenario,
    rng: &mut Rng,
    window: Duration,
    clock: &Clock,
    history: &Recorder,
) -> Cycle {
    let (leader, term) = leader_and_term(c);
    let followers: Vec<usize> = (0..c.len()).filter(|&i| i != leader).collect();
    let follower = followers[rng.below(followers.len() as u64) as usize];
    let (l, f) = (leader + 1, follower + 1);
    let injected = clock.now();
    let end = Instant::now() + window;
    let what = match scenario {
        Scenario::IsolatedLeader => {
            c.lab.isolate(leader);
            format!("leader n{l} isolated")
        }
        Scenario::MinoritySplit => {
            c.lab.isolate(follower);
            format!("follower n{f} isolated (leader n{l} keeps a majority)")
        }
        Scenario::OneWayFromLeader => {
            for &j in &followers {
                c.lab.drop_from(leader, j);
            }
            format!("followers drop what leader n{l} sends")
        }
        Scenario::BridgePartition => {
            c.lab.cut(leader, follower);
            let bridge = followers.iter().find(|&&j| j != follower).unwrap() + 1;
            format!("leader n{l} and n{f} cut, n{bridge} sees both")
        }
        Scenario::FlappingLinks => {
            let mut flips = Vec::new();
            while Instant::now() < end {
                let m = if rng.below(2) == 0 {
                    leader
                } else {
                    rng.below(c.len() as u64) as usize
                };
                c.lab.link(m, false);
                let down = 150 + rng.below(1100);
                thread::sleep(Duration::from_millis(down));
                c.lab.link(m, true);
                flips.push(format!("n{}:{down}ms", m + 1));
                thread::sleep(Duration::from_millis(50 + rng.below(300)));
            }
            format!("links flapped ({})", flips.join(" "))
        }
        Scenario::RandomLoss => {
            c.lab.loss(0.2);
            "20% loss between all members".to_string()
        }
        Scenario::SlowLeaderLink => {
            c.lab.slow(leader, "64kbit");
            format!("leader n{l} sends at most 64 kbit/s")
        }
        Scenario::KillLeader => {
            c.kill(leader);
            format!("leader n{l} SIGKILLed")
        }
        Scenario::PauseLeader => {
            c.stop(leader);
            format!("leader n{l} SIGSTOPped")
        }
    };
    eprintln!("fault: {what} (term {term})");
    let left = end.saturating_duration_since(Instant::now());
    thread::sleep(left);
    c.lab.heal();
    match scenario {
        Scenario::KillLeader => c.spawn(leader),
        Scenario::PauseLeader => c.cont(leader),
        _ => {}
    }
    let healed = clock.now();
    let healed_at = Instant::now();
    let (first_served, all_served) = probe(c, healed_at, clock, history);
    eprintln!("healed: first member serving after {first_served:?}, each member {all_served:?}");
    Cycle {
        what,
        old_leader: leader,
        old_term: term,
        injected,
        healed,
        first_served,
        all_served,
    }
}

/// After healing: through every member at once (a thread each), a quorum
/// write then a quorum read of the probe key (both recorded), repeated
/// until that member has served both or 10 s have passed. Returns when the
/// first member served, and when each did.
fn probe(
    c: &NetCluster,
    healed_at: Instant,
    clock: &Clock,
    history: &Recorder,
) -> (Option<Duration>, Vec<Option<Duration>>) {
    let limit = healed_at + Duration::from_secs(10);
    let hub = c.lab.hub.clone();
    let served: Vec<Option<Duration>> = thread::scope(|s| {
        let handles: Vec<_> = (0..c.len())
            .map(|i| {
                let (hub, addr) = (&hub, c.addr(i));
                s.spawn(move || {
                    let _in = netns::enter(hub).expect("enter hub");
                    let client = 90 + i;
                    for n in 1.. {
                        if Instant::now() >= limit {
                            return None;
                        }
                        let value = format!("p{i}-{n}");
                        let call = clock.now();
                        let w = http_at(
                            addr,
                            "PUT",
                            &format!("/v2/keys{PROBE_KEY}"),
                            Some(&format!("value={value}")),
                            Duration::from_secs(1),
                        );
                        let ret = clock.now();
                        let wrote = match &w {
                            Ok(r) if matches!(r.code(), 200 | 201) => {
                                history.push(Op::write(client, PROBE_KEY, call, Some(ret), &value));
                                true
                            }
                            Err(CallError::NotSent(_)) => false,
                            _ => {
                                history.push(Op::write(client, PROBE_KEY, call, None, &value));
                                false
                            }
                        };
                        if wrote {
                            let call = clock.now();
                            let r = http_at(
                                addr,
                                "GET",
                                &format!("/v2/keys{PROBE_KEY}?quorum=true"),
                                None,
                                Duration::from_secs(1),
                            );
                            let ret = clock.now();
                            if let Ok(Ok(got)) = r.as_ref().map(value_of) {
                                history.push(Op::read(
                                    client,
                                    PROBE_KEY,
                                    call,
                                    ret,
                                    got.as_deref(),
                                ));
                                return Some(healed_at.elapsed());
                            }
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                    None
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    let first = served.iter().flatten().min().copied();
    (first, served)
}

/// Per-cycle failover and recovery figures.
fn report(
    scenario: Scenario,
    cycles: &[Cycle],
    samples: &[Sample],
    attempts: &[Attempt],
) -> String {
    let mut out = format!("{scenario:?}: {} fault cycle(s)", cycles.len());
    for cy in cycles {
        // The first sample after the fault in which another member leads
        // in a later term.
        let failover = samples
            .iter()
            .filter(|s| {
                s.at >= cy.injected && s.leader && s.member != cy.old_leader && s.term > cy.old_term
            })
            .map(|s| s.at)
            .min()
            .map(|at| Duration::from_nanos(at - cy.injected));
        let terms: BTreeSet<u64> = samples
            .iter()
            .filter(|s| s.at >= cy.injected && s.at <= cy.healed)
            .map(|s| s.term)
            .collect();
        out.push_str(&format!(
            "\n  {} (leader n{} term {}): fault lasted {:?}; new leader after {}; terms seen {:?}; after healing first member served in {:?}, each member in {:?}",
            cy.what,
            cy.old_leader + 1,
            cy.old_term,
            Duration::from_nanos(cy.healed - cy.injected),
            failover.map_or("- (none during the fault)".to_string(), |d| format!("{d:?}")),
            terms,
            cy.first_served,
            cy.all_served
        ));
        // What clients got from each member while the fault lasted.
        for m in 0..cy.all_served.len() {
            let mut counts: BTreeMap<Answer, usize> = BTreeMap::new();
            for a in attempts
                .iter()
                .filter(|a| a.member == m && a.at >= cy.injected && a.at < cy.healed)
            {
                *counts.entry(a.answer).or_default() += 1;
            }
            out.push_str(&format!(
                "\n    clients via n{} during the fault: {counts:?}",
                m + 1
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Clients and samplers

struct ClientCtx {
    t: usize,
    seed: u64,
    hub: String,
    addrs: Vec<SocketAddrV4>,
    clock: Clock,
    history: Arc<Recorder>,
    unexpected: Arc<Mutex<Vec<String>>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

/// How a client request through a member ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    /// 2xx, or the 404/412 a CAS or delete may get.
    Served,
    /// A 5xx answer.
    Failed,
    /// Sent, but no answer within the client's timeout (or a reset).
    TimedOut,
    /// Could not connect.
    NotSent,
}

/// One client request, for the per-fault summary.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    at: u64,
    member: usize,
    answer: Answer,
}

/// One client: random quorum reads, writes, CAS and deletes on [`KEYS`]
/// through its own member (now and then another), recorded with their outcomes, until told to
/// stop (or its op or time bound).
fn client(ctx: ClientCtx) {
    let _in = netns::enter(&ctx.hub).expect("enter hub");
    let t = ctx.t;
    let mut rng = Rng(ctx.seed);
    let mut last_seen: BTreeMap<&str, String> = BTreeMap::new();
    let mut avoid_until = vec![Instant::now(); ctx.addrs.len()];
    for n in 1..=MAX_OPS_PER_CLIENT {
        if ctx.stop.load(Ordering::Relaxed) || Instant::now() > ctx.deadline {
            break;
        }
        let own = t % ctx.addrs.len();
        let now = Instant::now();
        let others: Vec<usize> = (0..ctx.addrs.len())
            .filter(|&m| m != own && avoid_until[m] <= now)
            .collect();
        let i = if !others.is_empty() && rng.below(100) < WANDER_PERCENT {
            others[rng.below(others.len() as u64) as usize]
        } else {
            own
        };
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let fresh = format!("c{t}-{n}");
        let (method, target, form, kind) = match rng.below(20) {
            0..=7 => (
                "GET",
                format!("/v2/keys{key}?quorum=true"),
                None,
                Kind::Read { got: None },
            ),
            8..=12 => (
                "PUT",
                format!("/v2/keys{key}"),
                Some(format!("value={fresh}")),
                Kind::Write {
                    value: fresh.clone(),
                },
            ),
            13..=18 => {
                let expect = last_seen
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| "none".to_string());
                (
                    "PUT",
                    format!("/v2/keys{key}?prevValue={}", url_encode(&expect)),
                    Some(format!("value={fresh}")),
                    Kind::Cas {
                        expect,
                        new: fresh.clone(),
                        ok: false,
                    },
                )
            }
            _ => (
                "DELETE",
                format!("/v2/keys{key}"),
                None,
                Kind::Delete { existed: false },
            ),
        };
        let call = ctx.clock.now();
        let r = http_at(
            ctx.addrs[i],
            method,
            &target,
            form.as_deref(),
            CLIENT_TIMEOUT,
        );
        let ret = ctx.clock.now();
        let note = |what: String| ctx.unexpected.lock().unwrap().push(what);
        let answer = match &r {
            Ok(r) if r.code() >= 500 => Answer::Failed,
            Ok(_) => Answer::Served,
            Err(CallError::NotSent(_)) => Answer::NotSent,
            Err(_) => Answer::TimedOut,
        };
        if answer != Answer::Served {
            avoid_until[i] = Instant::now() + Duration::from_secs(1);
        }
        ctx.attempts.lock().unwrap().push(Attempt {
            at: call,
            member: i,
            answer,
        });
        // Ok(Some(kind)): definite; Ok(None): indeterminate; Err(()): leave
        // out of the history.
        let outcome: Result<Option<Kind>, ()> = match (&kind, &r) {
            (_, Err(CallError::NotSent(_))) => Err(()),
            (Kind::Read { .. }, Ok(r)) => match value_of(r) {
                Ok(got) => Ok(Some(Kind::Read { got })),
                Err(e) => {
                    if r.code() < 500 {
                        note(format!("n{} GET {key}: {e}", i + 1));
                    }
                    Err(())
                }
            },
            (Kind::Read { .. }, Err(_)) => Err(()),
            (Kind::Write { .. }, Ok(r)) if matches!(r.code(), 200 | 201) => Ok(Some(kind.clone())),
            (Kind::Cas { expect, new, .. }, Ok(r)) if matches!(r.code(), 200 | 412 | 404) => {
                let ok = r.code() == 200;
                if !ok && !matches!(error_code(r), Some(100 | 101)) {
                    note(format!(
                        "n{} CAS {key}: {} {}",
                        i + 1,
                        r.code(),
                        r.body_str()
                    ));
                }
                Ok(Some(Kind::Cas {
                    expect: expect.clone(),
                    new: new.clone(),
                    ok,
                }))
            }
            (Kind::Delete { .. }, Ok(r)) if matches!(r.code(), 200 | 404) => {
                Ok(Some(Kind::Delete {
                    existed: r.code() == 200,
                }))
            }
            (_, Ok(r)) => {
                if r.code() < 500 {
                    note(format!(
                        "n{} {method} {target}: {} {}",
                        i + 1,
                        r.code(),
                        r.body_str()
                    ));
                }
                Ok(None)
            }
            (_, Err(_)) => Ok(None),
        };
        match outcome {
            Err(()) => {}
            Ok(Some(kind)) => {
                match &kind {
                    Kind::Read { got: Some(v) } => {
                        last_seen.insert(key, v.clone());
                    }
                    Kind::Write { value } => {
                        last_seen.insert(key, value.clone());
                    }
                    Kind::Cas { new, ok: true, .. } => {
                        last_seen.insert(key, new.clone());
                    }
                    _ => {}
                }
                ctx.history.push(Op::new(t, key, kind, call, Some(ret)));
            }
            Ok(None) => ctx.history.push(Op::new(t, key, kind, call, None)),
        }
        let pause = if r.is_err() || r.as_ref().is_ok_and(|r| r.code() >= 500) {
            20
        } else {
            rng.below(6)
        };
        thread::sleep(Duration::from_millis(pause));
    }
}

/// Polls member `i`'s role and term every [`SAMPLE_EVERY`] until told to
/// stop (or the deadline).
fn sampler(
    i: usize,
    hub: &str,
    addr: SocketAddrV4,
    clock: Clock,
    samples: &Mutex<Vec<Sample>>,
    stop: &AtomicBool,
    deadline: Instant,
) {
    let _in = netns::enter(hub).expect("enter hub");
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let at = clock.now();
        if let Some((leader, term)) = netns::role_at(addr, Duration::from_millis(300)) {
            samples.lock().unwrap().push(Sample {
                at,
                member: i,
                leader,
                term,
            });
        }
        thread::sleep(SAMPLE_EVERY);
    }
}
