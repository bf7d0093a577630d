//! The HM9000 model (spec `hm9000-workload.md` section 8, era E2).
//!
//! [`HmSpec`] holds the parameters (D DEAs × I instances, K instances per app,
//! churn, periods, the 30-request concurrency limit) and the presets. [`Model`]
//! is the pure part: DEA heartbeat phases, instance records and the plan of one
//! listener sync ([`Model::plan`]), and [`Keys`] renders every request of the
//! model as go-etcd would send it (sorted query, form body, `%2C` in keys).
//! [`run`] plays the actors against a server on one tokio current-thread runtime:
//! the listener (a sync per second, fanned out over C connections, then the
//! freshness GET+PUT and metric PUTs), analyzer and sender (every 10 s,
//! sequential recursive GETs), fetcher (every 60 s), metrics server (every 30 s)
//! and the lock owners/contenders (CAS every 5 s / 4 s). It returns the
//! [`Recorder`] and one [`Flush`] per listener sync for the freshness verdict.
//! The shredder (hourly) and the API server (user driven) are not modelled.

use crate::conn::Client;
use crate::freshness::{self, Flush, FreshnessSummary};
use crate::http::{self, form_escape};
use crate::stats::{Live, Recorder};
use crate::validate::{check, check_node, ErrorKind, Expect, NodeCheck, Outcome};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CLASSES: &[&str] = &[
    "presence PUT",
    "instance PUT",
    "instance DELETE",
    "freshness GET",
    "freshness PUT/DELETE",
    "metric PUT",
    "metric GET",
    "list apps/actual",
    "list apps/desired",
    "list dea-presence",
    "list crashes/start/stop",
    "crash+start PUT",
    "message DELETE",
    "desired PUT",
    "lock CAS",
    "lock contender CAS",
    "lock create",
];
const C_PRESENCE: usize = 0;
const C_INST_PUT: usize = 1;
const C_INST_DEL: usize = 2;
const C_FRESH_GET: usize = 3;
const C_FRESH_PUT: usize = 4;
const C_METRIC_PUT: usize = 5;
const C_METRIC_GET: usize = 6;
const C_LIST_ACTUAL: usize = 7;
const C_LIST_DESIRED: usize = 8;
const C_LIST_PRESENCE: usize = 9;
const C_LIST_OTHER: usize = 10;
const C_CRASH_PUT: usize = 11;
const C_MSG_DEL: usize = 12;
const C_DESIRED_PUT: usize = 13;
const C_LOCK_CAS: usize = 14;
const C_LOCK_CONTEND: usize = 15;
const C_LOCK_CREATE: usize = 16;

/// Of the churned instance records, the fraction that are replaced by a new
/// instance (DELETE + PUT) rather than rewritten in place (assumption).
pub const REPLACE_FRACTION: f64 = 0.2;
/// Of the rewritten records, the fraction whose new state is CRASHED (spec: 10 %).
pub const CRASHED_FRACTION: f64 = 0.1;
/// Metric key names (helpers/metricsaccountant).
pub const METRICS: [&str; 10] = [
    "StartCrashed",
    "StartMissing",
    "StartEvacuating",
    "StopDuplicate",
    "StopExtra",
    "StopEvacuationComplete",
    "DesiredStateSyncTimeInMilliseconds",
    "ActualStateListenerStoreUsagePercentage",
    "SavedHeartbeats",
    "ReceivedHeartbeats",
];
/// Lock names (hm/*.go).
pub const LOCKS: [&str; 7] = [
    "Analyzer",
    "Fetcher",
    "Sender",
    "Shredder",
    "listener",
    "evacuator",
    "metrics-server",
];
/// Most messages the analyzer writes / the sender handles per cycle.
pub const MESSAGE_LIMIT: usize = 60;

#[derive(Clone, Debug, Serialize)]
pub struct HmSpec {
    pub preset: String,
    /// D: DEAs.
    pub deas: usize,
    /// I: instances per DEA.
    pub per_dea: usize,
    /// K: instances per app.
    pub per_app: usize,
    /// Fraction of instance records rewritten per heartbeat period.
    pub churn: f64,
    /// S in `/hm/v<S>`.
    pub schema: u32,
    /// H: DEA heartbeat period.
    pub heartbeat: Duration,
    /// Listener flush interval (the freshness window).
    pub sync: Duration,
    /// C: in-flight requests per HM9000 process.
    pub concurrency: usize,
    /// Start from an empty store (every instance new in its DEA's first heartbeat).
    pub cold_start: bool,
    pub analyze_period: Duration,
    pub fetch_period: Duration,
    pub cache_refresh: Duration,
    pub scrape_period: Duration,
    /// L: locks; V: HM VMs (V-1 contenders per lock).
    pub locks: usize,
    pub vms: usize,
    pub seed: u64,
}

impl HmSpec {
    pub fn preset(name: &str) -> Option<HmSpec> {
        let (deas, per_dea, per_app, churn, cold) = match name {
            "small" => (20, 50, 1, 0.0, false),
            "default" => (100, 100, 1, 0.005, false),
            "large" => (300, 100, 1, 0.005, false),
            "production" => (1500, 20, 2, 0.01, false),
            "stress" => (1000, 100, 1, 0.01, false),
            "cold-start" => (100, 100, 1, 0.005, true),
            _ => return None,
        };
        Some(HmSpec {
            preset: name.to_string(),
            deas,
            per_dea,
            per_app,
            churn,
            schema: 4,
            heartbeat: Duration::from_secs(10),
            sync: Duration::from_secs(1),
            concurrency: 30,
            cold_start: cold,
            analyze_period: Duration::from_secs(10),
            fetch_period: Duration::from_secs(60),
            cache_refresh: Duration::from_secs(20),
            scrape_period: Duration::from_secs(30),
            locks: 7,
            vms: 2,
            seed: 1,
        })
    }

    pub fn instances(&self) -> u64 {
        (self.deas * self.per_dea) as u64
    }

    pub fn apps(&self) -> u64 {
        self.instances().div_ceil(self.per_app.max(1) as u64)
    }

    fn h(&self) -> f64 {
        self.heartbeat.as_secs_f64()
    }

    /// Steady-state writes/s predicted by the model (spec 8.3 plus this model's
    /// replacement DELETEs and crash bookkeeping).
    pub fn expected_writes_per_s(&self) -> f64 {
        let h = self.h();
        let churned = self.churn * self.instances() as f64 / h;
        let crashes = churned * (1.0 - REPLACE_FRACTION) * CRASHED_FRACTION;
        let locks =
            self.locks as f64 / 5.0 + (self.vms.saturating_sub(1) * self.locks) as f64 / 4.0;
        self.deas as f64 / h                       // presence
            + churned * (1.0 + REPLACE_FRACTION)   // rewrites + replacement DELETEs
            + 1.0 / self.sync.as_secs_f64()        // actual-fresh bump
            + 2.0 / self.sync.as_secs_f64() + 1.0 / 30.0 // listener metrics
            + 10.0 / self.analyze_period.as_secs_f64() // sender metrics
            + 2.0 / self.fetch_period.as_secs_f64() // fetcher metric + desired-fresh
            + 3.0 * crashes                         // crash count + start PUT + sender DELETE
            + locks
    }

    /// Steady-state reads/s predicted by the model (spec 8.3).
    pub fn expected_reads_per_s(&self) -> f64 {
        let a = self.analyze_period.as_secs_f64();
        1.0 / self.sync.as_secs_f64()              // listener freshness GET
            + 8.0 / a                              // analyzer: 2 GETs + 6 lists
            + 18.0 / a                             // sender: 2 + 6 lists + 10 metric GETs
            + 16.0 / self.scrape_period.as_secs_f64()
            + 2.0 / self.cache_refresh.as_secs_f64()
            + 2.0 / self.fetch_period.as_secs_f64()
    }
}

/// One instance record's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inst {
    /// Bumped when the instance is replaced (new instance guid).
    pub gen: u32,
    pub crashed: bool,
    /// State timestamp, seconds after the run's unix start.
    pub ts: u32,
    pub written: bool,
}

/// One write of a listener sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Presence(u32),
    Put(u64),
    /// Delete instance `g` as it was at generation `gen`.
    Delete(u64, u32),
}

/// The pure part of the model: phases, instance records, sync plans.
pub struct Model {
    pub per_dea: usize,
    pub churn: f64,
    pub h: f64,
    /// Heartbeat phase of each DEA in `[0, H)` seconds.
    pub phases: Vec<f64>,
    pub inst: Vec<Inst>,
    /// Instances that turned CRASHED and await the analyzer.
    pub new_crashes: VecDeque<u64>,
    rng: fastrand::Rng,
}

impl Model {
    pub fn new(spec: &HmSpec) -> Model {
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let h = spec.h();
        let phases = (0..spec.deas).map(|_| rng.f64() * h).collect();
        let mut inst = vec![
            Inst {
                written: !spec.cold_start,
                ..Inst::default()
            };
            spec.deas * spec.per_dea
        ];
        for i in inst.iter_mut() {
            i.crashed = rng.f64() < CRASHED_FRACTION;
        }
        Model {
            per_dea: spec.per_dea,
            churn: spec.churn,
            h,
            phases,
            inst,
            new_crashes: VecDeque::new(),
            rng,
        }
    }

    /// DEAs heard in `(from, to]` seconds, with how many heartbeats each sent.
    pub fn heartbeats_in(&self, from: f64, to: f64) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for (d, &p) in self.phases.iter().enumerate() {
            let k = |t: f64| ((t - p) / self.h).floor() as i64;
            let n = k(to) - k(from);
            if n > 0 {
                out.push((d as u32, n as u32));
            }
        }
        out
    }

    /// The writes of one sync at `now_s` for the heartbeats heard.
    pub fn plan(&mut self, heard: &[(u32, u32)], now_s: u32) -> Vec<Job> {
        let mut jobs = Vec::new();
        for &(d, n) in heard {
            for _ in 0..n {
                jobs.push(Job::Presence(d));
            }
            let base = d as usize * self.per_dea;
            for g in base..base + self.per_dea {
                let rec = &mut self.inst[g];
                if !rec.written {
                    rec.written = true;
                    rec.ts = now_s;
                    jobs.push(Job::Put(g as u64));
                } else if self.rng.f64() < self.churn {
                    if self.rng.f64() < REPLACE_FRACTION {
                        jobs.push(Job::Delete(g as u64, rec.gen));
                        rec.gen += 1;
                        rec.crashed = false;
                    } else {
                        let crashed = self.rng.f64() < CRASHED_FRACTION;
                        if crashed && !rec.crashed {
                            self.new_crashes.push_back(g as u64);
                        }
                        rec.crashed = crashed;
                    }
                    rec.ts = now_s;
                    jobs.push(Job::Put(g as u64));
                }
            }
        }
        jobs
    }

    #[cfg(test)]
    pub fn written(&self) -> u64 {
        self.inst.iter().filter(|i| i.written).count() as u64
    }
}

/// Deterministic UUID text for (tag, a, b).
pub fn guid(seed: u64, tag: u64, a: u64, b: u64) -> [u8; 36] {
    let mut rng = fastrand::Rng::with_seed(
        seed ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ a.wrapping_mul(0xbf58_476d_1ce4_e5b9)
            ^ b.wrapping_mul(0x94d0_49bb_1331_11eb),
    );
    let id = uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid();
    let mut out = [0u8; 36];
    id.hyphenated().encode_lower(&mut out);
    out
}

const TAG_DEA: u64 = 1;
const TAG_APP: u64 = 2;
const TAG_VER: u64 = 3;
const TAG_INST: u64 = 4;
const TAG_LOCK: u64 = 5;

fn s(b: &[u8; 36]) -> &str {
    std::str::from_utf8(b).expect("uuid is ascii")
}

/// Renders the model's keys and requests exactly as go-etcd sends them.
#[derive(Clone, Debug)]
pub struct Keys {
    pub root: String,
    pub host: String,
    pub seed: u64,
    pub deas: usize,
    pub per_dea: usize,
    pub per_app: usize,
    pub unix0: u64,
    pub presence_ttl: u64,
}

/// Query go-etcd ≥ 2015 adds to a Get.
const GET_Q: &str = "?quorum=true&recursive=false&sorted=false";
/// Query of a ListRecursively.
const LIST_Q: &str = "?quorum=true&recursive=true&sorted=false";

impl Keys {
    pub fn new(spec: &HmSpec, host: &str, unix0: u64) -> Keys {
        Keys {
            root: format!("/hm/v{}", spec.schema),
            host: host.to_string(),
            seed: spec.seed,
            deas: spec.deas,
            per_dea: spec.per_dea,
            per_app: spec.per_app.max(1),
            unix0,
            presence_ttl: 3 * spec.heartbeat.as_secs().max(1),
        }
    }

    pub fn dea(&self, d: u64) -> [u8; 36] {
        guid(self.seed, TAG_DEA, d, 0)
    }

    /// (app, version, index within app) of instance `g` (slot-major, so the
    /// instances of one app sit on different DEAs).
    pub fn app_of(&self, g: u64) -> (u64, u64) {
        let d = g / self.per_dea as u64;
        let slot = g % self.per_dea as u64;
        let global = slot * self.deas as u64 + d;
        (global / self.per_app as u64, global % self.per_app as u64)
    }

    pub fn app_key(&self, app: u64) -> ([u8; 36], [u8; 36]) {
        (
            guid(self.seed, TAG_APP, app, 0),
            guid(self.seed, TAG_VER, app, 0),
        )
    }

    pub fn instance_guid(&self, g: u64, gen: u32) -> [u8; 36] {
        guid(self.seed, TAG_INST, g, u64::from(gen))
    }

    /// etcd key of instance `g` (decoded form, as in responses).
    pub fn instance_key(&self, g: u64, gen: u32) -> String {
        let (app, _) = self.app_of(g);
        let (a, v) = self.app_key(app);
        format!(
            "{}/apps/actual/{},{}/{}",
            self.root,
            s(&a),
            s(&v),
            s(&self.instance_guid(g, gen))
        )
    }

    /// CSV value of instance `g`: `index,STATE,timestamp.0,dea`.
    pub fn instance_value(&self, g: u64, rec: &Inst) -> String {
        let (_, idx) = self.app_of(g);
        let state = if rec.crashed { "CRASHED" } else { "RUNNING" };
        let dea = self.dea(g / self.per_dea as u64);
        format!(
            "{idx},{state},{}.0,{}",
            self.unix0 + u64::from(rec.ts),
            s(&dea)
        )
    }

    fn start(&self, method: &str, path: &str, out: &mut Vec<u8>) {
        let _ = write!(out, "{method} {path}");
    }

    fn finish(&self, body: Option<&str>, out: &mut Vec<u8>) {
        let _ = write!(out, " HTTP/1.1\r\nHost: {}\r\n", self.host);
        match body {
            Some(b) => {
                let _ = write!(
                    out,
                    "Content-Type: {}\r\nContent-Length: {}\r\n\r\n{b}",
                    http::FORM_CONTENT_TYPE,
                    b.len()
                );
            }
            None => out.extend_from_slice(b"\r\n"),
        }
    }

    /// go-etcd form body: `ttl` (when non-zero) before `value`.
    fn body(value: &str, ttl: u64) -> String {
        if ttl > 0 {
            format!("ttl={ttl}&value={}", form_escape(value))
        } else {
            format!("value={}", form_escape(value))
        }
    }

    pub fn presence_put(&self, d: u64, out: &mut Vec<u8>) {
        let dea = self.dea(d);
        self.start(
            "PUT",
            &format!("/v2/keys{}/dea-presence/{}", self.root, s(&dea)),
            out,
        );
        self.finish(Some(&Self::body(s(&dea), self.presence_ttl)), out);
    }

    pub fn instance_put(&self, g: u64, rec: &Inst, out: &mut Vec<u8>) {
        let (app, _) = self.app_of(g);
        let (a, v) = self.app_key(app);
        let inst = self.instance_guid(g, rec.gen);
        self.start(
            "PUT",
            &format!(
                "/v2/keys{}/apps/actual/{}%2C{}/{}",
                self.root,
                s(&a),
                s(&v),
                s(&inst)
            ),
            out,
        );
        self.finish(Some(&Self::body(&self.instance_value(g, rec), 0)), out);
    }

    pub fn instance_delete(&self, g: u64, gen: u32, out: &mut Vec<u8>) {
        let (app, _) = self.app_of(g);
        let (a, v) = self.app_key(app);
        let inst = self.instance_guid(g, gen);
        self.start(
            "DELETE",
            &format!(
                "/v2/keys{}/apps/actual/{}%2C{}/{}?dir=false&recursive=true",
                self.root,
                s(&a),
                s(&v),
                s(&inst)
            ),
            out,
        );
        self.finish(None, out);
    }

    pub fn desired_put(&self, app: u64, out: &mut Vec<u8>) {
        let (a, v) = self.app_key(app);
        self.start(
            "PUT",
            &format!("/v2/keys{}/apps/desired/{}%2C{}", self.root, s(&a), s(&v)),
            out,
        );
        self.finish(
            Some(&Self::body(&format!("{},STARTED,STAGED", self.per_app), 0)),
            out,
        );
    }

    /// GET of `<root>/<rel>` (recursive for lists).
    pub fn get(&self, rel: &str, recursive: bool, out: &mut Vec<u8>) {
        let q = if recursive { LIST_Q } else { GET_Q };
        self.start("GET", &format!("/v2/keys{}/{rel}{q}", self.root), out);
        self.finish(None, out);
    }

    /// PUT of `<root>/<rel>` with an already-unescaped value.
    pub fn put(&self, rel: &str, value: &str, ttl: u64, out: &mut Vec<u8>) {
        self.start("PUT", &format!("/v2/keys{}/{rel}", self.root), out);
        self.finish(Some(&Self::body(value, ttl)), out);
    }

    pub fn delete(&self, rel: &str, out: &mut Vec<u8>) {
        self.start(
            "DELETE",
            &format!("/v2/keys{}/{rel}?dir=false&recursive=true", self.root),
            out,
        );
        self.finish(None, out);
    }

    fn crash_rel(&self, app: u64, idx: u64) -> String {
        let (a, v) = self.app_key(app);
        format!("apps/crashes/{}%2C{}/{idx}", s(&a), s(&v))
    }

    fn start_rel(&self, app: u64, idx: u64) -> String {
        let (a, v) = self.app_key(app);
        format!("start/{}-{}-{idx}", s(&a), s(&v))
    }

    pub fn lock_uuid(&self, lock: usize, holder: usize) -> [u8; 36] {
        guid(self.seed ^ self.unix0, TAG_LOCK, lock as u64, holder as u64)
    }

    pub fn lock_name(lock: usize) -> String {
        LOCKS
            .get(lock)
            .map(|n| n.to_string())
            .unwrap_or_else(|| format!("lock{lock}"))
    }

    /// `PUT /hm/locks/<name>?prevExist=false` (create) or `?prevValue=<uuid>` (CAS).
    pub fn lock_put(&self, lock: usize, holder: usize, create: bool, out: &mut Vec<u8>) {
        let id = self.lock_uuid(lock, holder);
        let q = if create {
            "?prevExist=false".to_string()
        } else {
            format!("?prevValue={}", s(&id))
        };
        self.start(
            "PUT",
            &format!("/v2/keys/hm/locks/{}{q}", Self::lock_name(lock)),
            out,
        );
        self.finish(Some(&Self::body(s(&id), 10)), out);
    }

    /// Unconditional lock PUT (taking over a lock left by an earlier run).
    pub fn lock_set(&self, lock: usize, holder: usize, out: &mut Vec<u8>) {
        let id = self.lock_uuid(lock, holder);
        self.start(
            "PUT",
            &format!("/v2/keys/hm/locks/{}", Self::lock_name(lock)),
            out,
        );
        self.finish(Some(&Self::body(s(&id), 10)), out);
    }
}

/// Results of one HM9000 run.
pub struct HmOutcome {
    pub rec: Recorder,
    pub elapsed: Duration,
    pub flushes: Vec<Flush>,
    pub freshness: FreshnessSummary,
    pub prefill_failures: u64,
}

struct Hm {
    keys: Keys,
    spec: HmSpec,
    t0: Instant,
    deadline: Instant,
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    lenient: bool,
    check_every: u64,
    model: RefCell<Model>,
    rec: RefCell<Recorder>,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
    flushes: RefCell<Vec<Flush>>,
    /// Instance records the store should hold (successful PUTs of new records minus DELETEs).
    records: Cell<i64>,
    /// Listener writes sent but not yet answered (tolerance of the leaf count check).
    pending: Cell<i64>,
    puts: Cell<u64>,
    pending_starts: RefCell<Vec<(u64, u64)>>,
    fresh_ts: Cell<Option<u64>>,
}

impl Hm {
    fn over(&self) -> bool {
        Instant::now() >= self.deadline || self.stop.load(Ordering::Relaxed)
    }

    fn now_s(&self) -> f64 {
        Instant::now()
            .saturating_duration_since(self.t0)
            .as_secs_f64()
    }

    fn client(&self, i: usize) -> Client {
        Client::new(self.addrs[i % self.addrs.len()], self.timeout)
    }

    /// Sends one request, validates, records. Returns the outcome.
    async fn exec(
        &self,
        client: &mut Client,
        class: usize,
        req: &[u8],
        expect: Expect,
        node: Option<NodeCheck>,
    ) -> Result<Outcome, ErrorKind> {
        let sent = Instant::now();
        let done;
        let result = match client.call(req).await {
            Ok(resp) => {
                done = Instant::now();
                let mut r = check(expect, &resp, self.lenient);
                if let (Ok(Outcome::Ok), Some(want), false) = (r, &node, self.lenient) {
                    self.rec.borrow_mut().sampled += 1;
                    if let Err(e) = check_node(resp.body, want) {
                        r = Err(e);
                    }
                }
                r
            }
            Err(k) => {
                done = Instant::now();
                Err(k)
            }
        };
        self.rec
            .borrow_mut()
            .record(class, done, done - sent, done - sent, result, &self.live);
        result
    }

    fn sample(&self) -> bool {
        let n = self.puts.get() + 1;
        self.puts.set(n);
        self.check_every > 0 && n.is_multiple_of(self.check_every)
    }

    async fn job(&self, client: &mut Client, job: Job, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        self.pending.set(self.pending.get() + 1);
        let res = match job {
            Job::Presence(d) => {
                self.keys.presence_put(u64::from(d), buf);
                let check = self.sample().then(|| {
                    let dea = self.keys.dea(u64::from(d));
                    NodeCheck::KeyValue {
                        key: format!("{}/dea-presence/{}", self.keys.root, s(&dea)),
                        value: Some(s(&dea).to_string()),
                    }
                });
                self.exec(client, C_PRESENCE, buf, Expect::Set, check).await
            }
            Job::Put(g) => {
                let rec = self.model.borrow().inst[g as usize];
                self.keys.instance_put(g, &rec, buf);
                let check = self.sample().then(|| NodeCheck::KeyValue {
                    key: self.keys.instance_key(g, rec.gen),
                    value: Some(self.keys.instance_value(g, &rec)),
                });
                let r = self.exec(client, C_INST_PUT, buf, Expect::Set, check).await;
                // 201 = a new record (cold start or replacement).
                if r.is_ok() && client_created(client) {
                    self.records.set(self.records.get() + 1);
                }
                r
            }
            Job::Delete(g, gen) => {
                self.keys.instance_delete(g, gen, buf);
                let r = self
                    .exec(client, C_INST_DEL, buf, Expect::Delete, None)
                    .await;
                if r.is_ok() {
                    self.records.set(self.records.get() - 1);
                }
                r
            }
        };
        self.pending.set(self.pending.get() - 1);
        res.is_ok()
    }

    fn actual_check(&self) -> Option<NodeCheck> {
        if self.lenient {
            return None;
        }
        let slack = self.pending.get().max(0) + self.spec.concurrency as i64;
        let n = self.records.get();
        Some(NodeCheck::Leaves {
            key: format!("{}/apps/actual", self.keys.root),
            min: (n - slack).max(0) as u64,
            max: (n + slack).max(0) as u64,
        })
    }

    async fn list(&self, client: &mut Client, class: usize, rel: &str, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        self.keys.get(rel, true, buf);
        let check = if rel == "apps/actual" && self.records.get() > 0 {
            self.actual_check()
        } else {
            None
        };
        self.exec(client, class, buf, Expect::GetOrMissing, check)
            .await
            .is_ok()
    }

    async fn get(
        &self,
        client: &mut Client,
        class: usize,
        rel: &str,
        buf: &mut Vec<u8>,
    ) -> Result<Outcome, ErrorKind> {
        buf.clear();
        self.keys.get(rel, false, buf);
        self.exec(client, class, buf, Expect::GetOrMissing, None)
            .await
    }

    async fn put(
        &self,
        client: &mut Client,
        class: usize,
        rel: &str,
        value: &str,
        ttl: u64,
        buf: &mut Vec<u8>,
    ) -> bool {
        buf.clear();
        self.keys.put(rel, value, ttl, buf);
        self.exec(client, class, buf, Expect::Set, None)
            .await
            .is_ok()
    }

    /// The four lists of `GetApps`.
    async fn get_apps(&self, client: &mut Client, buf: &mut Vec<u8>) {
        self.list(client, C_LIST_DESIRED, "apps/desired", buf).await;
        self.list(client, C_LIST_ACTUAL, "apps/actual", buf).await;
        self.list(client, C_LIST_PRESENCE, "dea-presence", buf)
            .await;
        self.list(client, C_LIST_OTHER, "apps/crashes", buf).await;
    }

    async fn sleep_until_s(&self, at_s: f64) -> bool {
        let at = self.t0 + Duration::from_secs_f64(at_s.max(0.0));
        if at >= self.deadline {
            return false;
        }
        tokio::time::sleep_until(at.into()).await;
        !self.over()
    }
}

/// Whether the client's last response was a 201 (a created key).
fn client_created(client: &Client) -> bool {
    client.last_status() == Some(201)
}

/// Fans `jobs` out over the pool's connections, at most one in flight each.
async fn fan_out(hm: &Rc<Hm>, jobs: Vec<Job>, pool: &Rc<RefCell<Vec<Client>>>) -> bool {
    if jobs.is_empty() {
        return true;
    }
    let workers = pool.borrow().len().min(jobs.len());
    let queue = Rc::new(RefCell::new(VecDeque::from(jobs)));
    let ok = Rc::new(Cell::new(true));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (hm, queue, ok, pool) = (hm.clone(), queue.clone(), ok.clone(), pool.clone());
        let mut client = pool
            .borrow_mut()
            .pop()
            .expect("pool has a client per worker");
        tasks.push(tokio::task::spawn_local(async move {
            let mut buf = Vec::with_capacity(512);
            loop {
                let job = queue.borrow_mut().pop_front();
                let Some(job) = job else { break };
                if !hm.job(&mut client, job, &mut buf).await {
                    ok.set(false);
                }
            }
            pool.borrow_mut().push(client);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    ok.get()
}

async fn listener(hm: Rc<Hm>) {
    let c = hm.spec.concurrency.max(1);
    let pool = Rc::new(RefCell::new(
        (0..c).map(|i| hm.client(i)).collect::<Vec<_>>(),
    ));
    let mut meta = hm.client(0);
    let mut buf = Vec::with_capacity(1024);
    let tsync = hm.spec.sync.as_secs_f64();
    let mut collected = -1e-9;
    let mut tick = 1u64;
    let mut cache_at: Option<f64> = None;
    let mut usage_at = 0.0;
    loop {
        if !hm.sleep_until_s(tick as f64 * tsync).await {
            break;
        }
        let start = Instant::now();
        let now_s = hm.now_s();
        let heard = hm.model.borrow().heartbeats_in(collected, now_s);
        collected = now_s;
        tick = (now_s / tsync).floor() as u64 + 1;
        if heard.is_empty() {
            continue;
        }
        let mut ok = true;
        if cache_at.is_none_or(|c| now_s - c >= hm.spec.cache_refresh.as_secs_f64()) {
            ok &= hm
                .list(&mut meta, C_LIST_ACTUAL, "apps/actual", &mut buf)
                .await;
            ok &= hm
                .list(&mut meta, C_LIST_PRESENCE, "dea-presence", &mut buf)
                .await;
            cache_at = Some(now_s);
        }
        let jobs = hm.model.borrow_mut().plan(&heard, now_s as u32);
        let writes = jobs.len() as u32;
        ok &= fan_out(&hm, jobs, &pool).await;
        let sync = start.elapsed();
        if !ok {
            buf.clear();
            hm.keys.delete("actual-fresh", &mut buf);
            let _ = hm
                .exec(&mut meta, C_FRESH_PUT, &buf, Expect::DeleteOrMissing, None)
                .await;
            hm.fresh_ts.set(None);
        } else if sync < hm.spec.sync {
            let r = hm
                .get(&mut meta, C_FRESH_GET, "actual-fresh", &mut buf)
                .await;
            let ts = match (r, hm.fresh_ts.get()) {
                (Ok(Outcome::Ok), Some(ts)) => ts,
                _ => hm.keys.unix0 + now_s as u64,
            };
            hm.fresh_ts.set(Some(ts));
            ok &= hm
                .put(
                    &mut meta,
                    C_FRESH_PUT,
                    "actual-fresh",
                    &format!("{{\"timestamp\":{ts}}}"),
                    30,
                    &mut buf,
                )
                .await;
        }
        let n = heard.len();
        hm.put(
            &mut meta,
            C_METRIC_PUT,
            "metrics/SavedHeartbeats",
            &format!("{n}.00000"),
            0,
            &mut buf,
        )
        .await;
        hm.put(
            &mut meta,
            C_METRIC_PUT,
            "metrics/ReceivedHeartbeats",
            &format!("{n}.00000"),
            0,
            &mut buf,
        )
        .await;
        if now_s - usage_at >= 30.0 {
            usage_at = now_s;
            let pct = sync.as_secs_f64() / tsync * 100.0;
            hm.put(
                &mut meta,
                C_METRIC_PUT,
                "metrics/ActualStateListenerStoreUsagePercentage",
                &format!("{pct:.5}"),
                0,
                &mut buf,
            )
            .await;
        }
        hm.flushes.borrow_mut().push(Flush {
            start_s: start.saturating_duration_since(hm.t0).as_secs_f64(),
            sync_s: sync.as_secs_f64(),
            batch_s: start.elapsed().as_secs_f64(),
            heartbeats: heard.iter().map(|h| h.1).sum(),
            writes,
            failed: !ok,
        });
    }
}

async fn analyzer(hm: Rc<Hm>, phase: f64) {
    let mut client = hm.client(1);
    let mut buf = Vec::with_capacity(1024);
    let period = hm.spec.analyze_period.as_secs_f64();
    let mut at = phase;
    while hm.sleep_until_s(at).await {
        let _ = hm
            .get(&mut client, C_FRESH_GET, "desired-fresh", &mut buf)
            .await;
        let _ = hm
            .get(&mut client, C_FRESH_GET, "actual-fresh", &mut buf)
            .await;
        hm.get_apps(&mut client, &mut buf).await;
        hm.list(&mut client, C_LIST_OTHER, "start", &mut buf).await;
        hm.list(&mut client, C_LIST_OTHER, "stop", &mut buf).await;
        let crashed: Vec<u64> = {
            let mut m = hm.model.borrow_mut();
            let n = m.new_crashes.len().min(MESSAGE_LIMIT);
            m.new_crashes.drain(..n).collect()
        };
        for g in crashed {
            let (app, idx) = hm.keys.app_of(g);
            let now = hm.keys.unix0 + hm.now_s() as u64;
            let (a, v) = hm.keys.app_key(app);
            let crash = format!(
                "{{\"droplet\":\"{}\",\"version\":\"{}\",\"instance_index\":{idx},\"crash_count\":1,\"created_at\":{now}}}",
                s(&a),
                s(&v)
            );
            hm.put(
                &mut client,
                C_CRASH_PUT,
                &hm.keys.crash_rel(app, idx),
                &crash,
                1920,
                &mut buf,
            )
            .await;
            let msg = format!(
                "{{\"message_id\":\"{}\",\"send_on\":{now},\"sent_on\":0,\"keep_alive\":0,\"droplet\":\"{}\",\"version\":\"{}\",\"index\":{idx},\"priority\":1,\"skip_verification\":false,\"start_reason\":\"Crashed\"}}",
                s(&guid(hm.keys.seed, 9, g, now)),
                s(&a),
                s(&v)
            );
            if hm
                .put(
                    &mut client,
                    C_CRASH_PUT,
                    &hm.keys.start_rel(app, idx),
                    &msg,
                    0,
                    &mut buf,
                )
                .await
            {
                hm.pending_starts.borrow_mut().push((app, idx));
            }
        }
        at += period;
    }
}

async fn sender(hm: Rc<Hm>, phase: f64) {
    let mut client = hm.client(2);
    let mut buf = Vec::with_capacity(1024);
    let period = hm.spec.analyze_period.as_secs_f64();
    let mut at = phase;
    while hm.sleep_until_s(at).await {
        let _ = hm
            .get(&mut client, C_FRESH_GET, "desired-fresh", &mut buf)
            .await;
        let _ = hm
            .get(&mut client, C_FRESH_GET, "actual-fresh", &mut buf)
            .await;
        hm.list(&mut client, C_LIST_OTHER, "start", &mut buf).await;
        hm.list(&mut client, C_LIST_OTHER, "stop", &mut buf).await;
        hm.get_apps(&mut client, &mut buf).await;
        for m in METRICS {
            let _ = hm
                .get(&mut client, C_METRIC_GET, &format!("metrics/{m}"), &mut buf)
                .await;
        }
        for m in METRICS {
            hm.put(
                &mut client,
                C_METRIC_PUT,
                &format!("metrics/{m}"),
                "0.00000",
                0,
                &mut buf,
            )
            .await;
        }
        let sent: Vec<(u64, u64)> = {
            let mut p = hm.pending_starts.borrow_mut();
            let n = p.len().min(MESSAGE_LIMIT);
            p.drain(..n).collect()
        };
        for (app, idx) in sent {
            buf.clear();
            hm.keys.delete(&hm.keys.start_rel(app, idx), &mut buf);
            let _ = hm
                .exec(&mut client, C_MSG_DEL, &buf, Expect::DeleteOrMissing, None)
                .await;
        }
        at += period;
    }
}

async fn fetcher(hm: Rc<Hm>, phase: f64) {
    let c = hm.spec.concurrency.max(1);
    let mut client = hm.client(3);
    let mut buf = Vec::with_capacity(1024);
    let mut at = phase;
    let mut first = true;
    while hm.sleep_until_s(at).await {
        let started = Instant::now();
        hm.list(&mut client, C_LIST_DESIRED, "apps/desired", &mut buf)
            .await;
        if first && hm.spec.cold_start {
            // First fetch on an empty store writes every desired entry, C in flight.
            let apps = hm.spec.apps();
            let next = Rc::new(Cell::new(0u64));
            let mut tasks = Vec::new();
            for w in 0..c.min(apps as usize) {
                let (hm, next) = (hm.clone(), next.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let mut cl = hm.client(w);
                    let mut buf = Vec::with_capacity(512);
                    while !hm.over() {
                        let app = next.get();
                        if app >= apps {
                            break;
                        }
                        next.set(app + 1);
                        buf.clear();
                        hm.keys.desired_put(app, &mut buf);
                        let _ = hm
                            .exec(&mut cl, C_DESIRED_PUT, &buf, Expect::Set, None)
                            .await;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        first = false;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        hm.put(
            &mut client,
            C_METRIC_PUT,
            "metrics/DesiredStateSyncTimeInMilliseconds",
            &format!("{ms:.5}"),
            0,
            &mut buf,
        )
        .await;
        let _ = hm
            .get(&mut client, C_FRESH_GET, "desired-fresh", &mut buf)
            .await;
        let ts = hm.keys.unix0;
        hm.put(
            &mut client,
            C_FRESH_PUT,
            "desired-fresh",
            &format!("{{\"timestamp\":{ts}}}"),
            120,
            &mut buf,
        )
        .await;
        at += hm.spec.fetch_period.as_secs_f64();
    }
}

async fn metrics_server(hm: Rc<Hm>, phase: f64) {
    let mut client = hm.client(4);
    let mut buf = Vec::with_capacity(1024);
    let mut at = phase;
    while hm.sleep_until_s(at).await {
        for m in METRICS {
            let _ = hm
                .get(&mut client, C_METRIC_GET, &format!("metrics/{m}"), &mut buf)
                .await;
        }
        let _ = hm
            .get(&mut client, C_FRESH_GET, "desired-fresh", &mut buf)
            .await;
        let _ = hm
            .get(&mut client, C_FRESH_GET, "actual-fresh", &mut buf)
            .await;
        hm.get_apps(&mut client, &mut buf).await;
        at += hm.spec.scrape_period.as_secs_f64();
    }
}

/// Holder 0 owns `lock`; holders 1.. contend for it.
async fn lock_holder(hm: Rc<Hm>, lock: usize, holder: usize, phase: f64) {
    let mut client = hm.client(5 + holder);
    let mut buf = Vec::with_capacity(512);
    let owner = holder == 0;
    if !hm.sleep_until_s(phase).await {
        return;
    }
    buf.clear();
    hm.keys.lock_put(lock, holder, true, &mut buf);
    let created = hm
        .exec(&mut client, C_LOCK_CREATE, &buf, Expect::Create, None)
        .await;
    if owner && created == Ok(Outcome::Conflict) {
        // Left over from an earlier run: take it over.
        buf.clear();
        hm.keys.lock_set(lock, holder, &mut buf);
        let _ = hm
            .exec(&mut client, C_LOCK_CREATE, &buf, Expect::Set, None)
            .await;
    }
    let period = if owner { 5.0 } else { 4.0 };
    let mut at = phase + period;
    while hm.sleep_until_s(at).await {
        buf.clear();
        hm.keys.lock_put(lock, holder, false, &mut buf);
        if owner {
            let _ = hm
                .exec(&mut client, C_LOCK_CAS, &buf, Expect::Cas, None)
                .await;
        } else {
            let _ = hm
                .exec(&mut client, C_LOCK_CONTEND, &buf, Expect::CasFail, None)
                .await;
        }
        at += period;
    }
}

/// Writes the steady-state store (instances, presence, desired, freshness,
/// metrics) before a warm run. Returns failures.
pub fn prefill(
    spec: &HmSpec,
    keys: &Keys,
    addrs: &[SocketAddr],
    lenient: bool,
    timeout: Duration,
) -> u64 {
    let model = Model::new(spec);
    let inst = Rc::new(model.inst);
    let k = Rc::new(keys.clone());
    let mut failures = 0;
    let (k1, i1) = (k.clone(), inst.clone());
    failures += crate::workload::fill(
        addrs,
        64,
        spec.instances(),
        Expect::Set,
        lenient,
        timeout,
        Rc::new(move |g, out| k1.instance_put(g, &i1[g as usize], out)),
    );
    let k2 = k.clone();
    failures += crate::workload::fill(
        addrs,
        64,
        spec.deas as u64,
        Expect::Set,
        lenient,
        timeout,
        Rc::new(move |d, out| k2.presence_put(d, out)),
    );
    let k3 = k.clone();
    failures += crate::workload::fill(
        addrs,
        64,
        spec.apps(),
        Expect::Set,
        lenient,
        timeout,
        Rc::new(move |a, out| k3.desired_put(a, out)),
    );
    let k4 = k.clone();
    let unix0 = keys.unix0;
    failures += crate::workload::fill(
        addrs,
        4,
        12,
        Expect::Set,
        lenient,
        timeout,
        Rc::new(move |i, out| match i {
            0 => k4.put(
                "actual-fresh",
                &format!("{{\"timestamp\":{unix0}}}"),
                30,
                out,
            ),
            1 => k4.put(
                "desired-fresh",
                &format!("{{\"timestamp\":{unix0}}}"),
                120,
                out,
            ),
            _ => k4.put(
                &format!("metrics/{}", METRICS[i as usize - 2]),
                "0.00000",
                0,
                out,
            ),
        }),
    );
    failures
}

/// Options of one run that are not part of the model.
#[derive(Clone, Debug)]
pub struct RunOpts {
    pub duration: Duration,
    pub timeout: Duration,
    pub host: String,
    pub lenient: bool,
    pub check_every: u64,
    pub cpu: Option<usize>,
}

/// The store as a run starts from: when it was written and how many prefill
/// writes failed.
#[derive(Clone, Copy, Debug)]
pub struct Prepared {
    pub unix0: u64,
    pub prefill_failures: u64,
}

/// Prefills the steady-state store (not for cold starts). Call before measuring.
pub fn prepare(spec: &HmSpec, addrs: &[SocketAddr], opts: &RunOpts) -> Prepared {
    let unix0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let keys = Keys::new(spec, &opts.host, unix0);
    let prefill_failures = if spec.cold_start {
        0
    } else {
        prefill(spec, &keys, addrs, opts.lenient, opts.timeout)
    };
    Prepared {
        unix0,
        prefill_failures,
    }
}

pub fn run(
    spec: &HmSpec,
    addrs: &[SocketAddr],
    opts: &RunOpts,
    prepared: Prepared,
    live: &Arc<Live>,
    stop: &Arc<AtomicBool>,
) -> HmOutcome {
    if let Some(cpu) = opts.cpu {
        crate::servers::pin_current_thread(&[cpu]);
    }
    let keys = Keys::new(spec, &opts.host, prepared.unix0);
    let prefill_failures = prepared.prefill_failures;
    let t0 = Instant::now() + Duration::from_millis(200);
    let model = Model::new(spec);
    let records = if spec.cold_start {
        0
    } else {
        spec.instances() as i64
    };
    let hm = Rc::new(Hm {
        keys,
        spec: spec.clone(),
        t0,
        deadline: t0 + opts.duration,
        addrs: addrs.to_vec(),
        timeout: opts.timeout,
        lenient: opts.lenient,
        check_every: opts.check_every,
        model: RefCell::new(model),
        rec: RefCell::new(Recorder::new(t0, CLASSES)),
        live: live.clone(),
        stop: stop.clone(),
        flushes: RefCell::new(Vec::new()),
        records: Cell::new(records),
        pending: Cell::new(0),
        puts: Cell::new(0),
        pending_starts: RefCell::new(Vec::new()),
        fresh_ts: Cell::new(None),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut rng = fastrand::Rng::with_seed(spec.seed ^ 0x5eed);
        let a = spec.analyze_period.as_secs_f64();
        let mut tasks = vec![
            tokio::task::spawn_local(listener(hm.clone())),
            tokio::task::spawn_local(analyzer(hm.clone(), rng.f64() * a)),
            tokio::task::spawn_local(sender(hm.clone(), rng.f64() * a)),
            tokio::task::spawn_local(fetcher(hm.clone(), 0.5)),
            tokio::task::spawn_local(metrics_server(
                hm.clone(),
                rng.f64() * spec.scrape_period.as_secs_f64(),
            )),
        ];
        for lock in 0..spec.locks {
            for holder in 0..spec.vms.max(1) {
                // Owners start first so the contenders find the lock taken.
                let phase = rng.f64() * 0.5 + if holder == 0 { 0.0 } else { 1.0 };
                tasks.push(tokio::task::spawn_local(lock_holder(
                    hm.clone(),
                    lock,
                    holder,
                    phase,
                )));
            }
        }
        // Cycles in progress at the deadline may finish within the timeout.
        let cutoff = hm.deadline + opts.timeout;
        for t in &mut tasks {
            if tokio::time::timeout_at(cutoff.into(), &mut *t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        if !hm.stop.load(Ordering::Relaxed) {
            tokio::time::sleep_until(hm.deadline.into()).await;
        }
    });
    let elapsed = opts
        .duration
        .min(Instant::now().saturating_duration_since(t0));
    let hm = Rc::try_unwrap(hm).ok().expect("actors finished");
    let flushes = hm.flushes.into_inner();
    let freshness = freshness::summarize(
        &flushes,
        spec.instances(),
        spec.sync,
        Duration::from_secs(30),
    );
    HmOutcome {
        rec: hm.rec.into_inner(),
        elapsed,
        flushes,
        freshness,
        prefill_failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> HmSpec {
        HmSpec::preset(name).unwrap()
    }

    #[test]
    fn presets_match_the_spec_table() {
        let d = spec("default");
        assert_eq!(
            (d.deas, d.per_dea, d.instances(), d.apps()),
            (100, 100, 10_000, 10_000)
        );
        assert_eq!(
            (spec("large").instances(), spec("production").apps()),
            (30_000, 15_000)
        );
        assert!(spec("cold-start").cold_start && !d.cold_start);
        assert!(HmSpec::preset("nope").is_none());
        // Spec 8.3: ≈ 22 writes/s and ≈ 4.3 reads/s at the default preset (our
        // model adds replacement DELETEs and crash bookkeeping: ≈ 23.6).
        let w = d.expected_writes_per_s();
        assert!((22.0..24.5).contains(&w), "{w}");
        let r = d.expected_reads_per_s();
        assert!((4.0..4.8).contains(&r), "{r}");
        // Spec: ≈ 52 at large; + 3 replacement DELETEs + 3.6 crash bookkeeping.
        let w = spec("large").expected_writes_per_s();
        assert!((58.0..59.5).contains(&w), "{w}");
    }

    #[test]
    fn each_dea_heartbeats_once_per_period() {
        let sp = spec("default");
        let m = Model::new(&sp);
        let mut count = vec![0u32; sp.deas];
        let mut t = -1e-9;
        for s in 1..=30 {
            for (d, n) in m.heartbeats_in(t, s as f64) {
                count[d as usize] += n;
            }
            t = s as f64;
        }
        assert!(count.iter().all(|&c| c == 3), "30 s = 3 heartbeats each");
        // A 2.5-period window (a very late sync) collects 2 or 3 per DEA.
        let late = m.heartbeats_in(0.0, 25.0);
        assert!(late.iter().all(|&(_, n)| (2..=3).contains(&n)));
    }

    #[test]
    fn cold_start_writes_every_instance_in_the_first_period() {
        let sp = spec("cold-start");
        let mut m = Model::new(&sp);
        let mut puts = 0u64;
        let mut presence = 0u64;
        let mut t = -1e-9;
        for s in 1..=10 {
            let heard = m.heartbeats_in(t, s as f64);
            t = s as f64;
            let jobs = m.plan(&heard, s);
            let p = jobs
                .iter()
                .filter(|j| matches!(j, Job::Presence(_)))
                .count() as u64;
            let n = jobs.iter().filter(|j| matches!(j, Job::Put(_))).count() as u64;
            // Each 1-s batch ≈ N/H = 1000 instance PUTs (phases are random).
            assert!(n <= 2500, "batch {s}: {n}");
            presence += p;
            puts += n;
        }
        assert_eq!((presence, puts), (100, 10_000));
        assert_eq!(m.written(), 10_000);
    }

    #[test]
    fn steady_churn_rate() {
        let sp = spec("large");
        let mut m = Model::new(&sp);
        let (mut puts, mut dels) = (0u64, 0u64);
        let mut t = -1e-9;
        for s in 1..=100 {
            let heard = m.heartbeats_in(t, s as f64);
            t = s as f64;
            for j in m.plan(&heard, s) {
                match j {
                    Job::Put(_) => puts += 1,
                    Job::Delete(..) => dels += 1,
                    Job::Presence(_) => {}
                }
            }
        }
        // churn·N/H = 15/s for 100 s, of which 20 % are replacements.
        let per_s = puts as f64 / 100.0;
        assert!((13.0..17.0).contains(&per_s), "{per_s}");
        let frac = dels as f64 / puts as f64;
        assert!((0.12..0.28).contains(&frac), "{frac}");
    }

    #[test]
    fn key_layout_and_request_format() {
        let sp = spec("production");
        let k = Keys::new(&sp, "127.0.0.1:2379", 1_389_829_493);
        let mut out = Vec::new();
        k.presence_put(7, &mut out);
        let text = String::from_utf8(out).unwrap();
        let dea = String::from_utf8(k.dea(7).to_vec()).unwrap();
        assert!(
            text.starts_with(&format!(
                "PUT /v2/keys/hm/v4/dea-presence/{dea} HTTP/1.1\r\n"
            )),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/x-www-form-urlencoded; param=value\r\n"));
        assert!(text.ends_with(&format!("\r\n\r\nttl=30&value={dea}")));

        let rec = Inst {
            gen: 0,
            crashed: false,
            ts: 0,
            written: true,
        };
        let mut out = Vec::new();
        k.instance_put(3, &rec, &mut out);
        let text = String::from_utf8(out).unwrap();
        let key = k.instance_key(3, 0);
        let wire = key.replacen(',', "%2C", 1);
        assert!(
            text.starts_with(&format!("PUT /v2/keys{wire} HTTP/1.1")),
            "{text}"
        );
        assert!(
            key.starts_with("/hm/v4/apps/actual/")
                && key.len() == "/hm/v4/apps/actual/".len() + 36 + 1 + 36 + 1 + 36
        );
        assert_eq!(
            k.instance_value(3, &rec),
            format!(
                "{},RUNNING,1389829493.0,{dea0}",
                k.app_of(3).1,
                dea0 = s(&k.dea(0))
            )
        );
        assert!(text.ends_with(&format!(
            "value={}",
            form_escape(&k.instance_value(3, &rec))
        )));

        // K = 2: the two instances of an app are on different DEAs.
        let (app_a, idx_a) = k.app_of(0);
        let (app_b, idx_b) = k.app_of(sp.per_dea as u64);
        assert_eq!((app_a, idx_a, app_b, idx_b), (0, 0, 0, 1));

        let mut out = Vec::new();
        k.get("apps/actual", true, &mut out);
        assert!(out.starts_with(
            b"GET /v2/keys/hm/v4/apps/actual?quorum=true&recursive=true&sorted=false HTTP/1.1\r\n"
        ));
        let mut out = Vec::new();
        k.lock_put(0, 1, false, &mut out);
        let text = String::from_utf8(out).unwrap();
        let id = s(&k.lock_uuid(0, 1)).to_string();
        assert!(text.starts_with(&format!(
            "PUT /v2/keys/hm/locks/Analyzer?prevValue={id} HTTP/1.1"
        )));
        assert!(text.ends_with(&format!("ttl=10&value={id}")));
        let mut out = Vec::new();
        k.instance_delete(3, 2, &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("?dir=false&recursive=true HTTP/1.1"));
    }

    #[test]
    fn guids_are_stable_and_distinct() {
        assert_eq!(guid(1, 2, 3, 4), guid(1, 2, 3, 4));
        assert_ne!(guid(1, 2, 3, 4), guid(1, 2, 3, 5));
        let g = guid(9, 9, 9, 9);
        assert_eq!(
            (g[8], g[13], g[14], g[18], g[23]),
            (b'-', b'-', b'4', b'-', b'-')
        );
    }
}
