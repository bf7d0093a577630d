//! `kardia-loadtest`: the HM9000 load harness for etcd v2 API servers.
//!
//! This file owns the command line (clap) and the orchestration: it resolves
//! which systems to run against (`--target` URLs, or kardia / etcd / the null
//! server started by the harness, `--compare` = kardia and etcd), runs the chosen
//! workload on each in turn with identical parameters, and hands the collected
//! [`report::SystemRun`]s to the table, JSON and SVG writers. Servers it starts
//! are always stopped: on return (their `Drop`), on Ctrl-C (first press ends the
//! run early and reports, a second kills them and exits), and by
//! `PR_SET_PDEATHSIG` if the harness itself dies. Exit code: 0 clean, 1 some
//! request failed, 2 a system could not be run, 3 interrupted.

mod conn;
mod engine;
mod freshness;
mod http;
mod nullserver;
mod report;
mod servers;
mod stats;
mod validate;
mod workload;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use report::{FindMax, Report, SystemRun, Trial};
use servers::{Kind, ServerOpts, System};
use stats::Live;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::hm9000::{self, HmSpec};
use workload::raw::{RawKind, RawSpec};
use workload::watch::{self, WatchSpec};

#[derive(Parser, Debug)]
#[command(
    name = "kardia-loadtest",
    version,
    about = "HM9000 heartbeat-workload load harness for etcd v2 API servers (kardia, etcd)",
    after_help = "Examples:\n  kardia-loadtest hm9000 --compare\n  kardia-loadtest put --server etcd -c 64 --ttl 30 --keys 10000\n  kardia-loadtest get --null-server --pin\n  kardia-loadtest hm9000 --preset cold-start --find-max --server etcd"
)]
struct Cli {
    #[command(subcommand)]
    workload: WorkloadCmd,
    #[command(flatten)]
    common: Common,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ServerArg {
    Kardia,
    Etcd,
    Null,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Run against servers already listening at these client URLs
    /// (default http://127.0.0.1:2379 when nothing else is chosen).
    #[arg(long, global = true, value_name = "URL", value_delimiter = ',')]
    target: Vec<String>,
    /// Start these systems (one after another) and run against each.
    #[arg(long, global = true, value_enum, value_delimiter = ',')]
    server: Vec<ServerArg>,
    /// Side by side: start kardia and etcd with equal settings and compare.
    #[arg(long, global = true)]
    compare: bool,
    /// Run against the built-in null responder (measures the harness itself).
    #[arg(long, global = true)]
    null_server: bool,
    /// Cluster members per started system (1 or 3).
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
    members: u8,
    /// Pin the client to CPU 0 and servers to the other CPUs.
    #[arg(long, global = true)]
    pin: bool,
    /// apt-get install Debian's etcd-server if `etcd` is not on PATH.
    #[arg(long, global = true)]
    install_etcd: bool,
    /// kardia binary (default: <target-dir>/release/kardia, built if missing).
    #[arg(long, global = true, value_name = "PATH")]
    kardia_bin: Option<PathBuf>,
    /// etcd binary (default: `etcd` on PATH).
    #[arg(long, global = true, value_name = "PATH")]
    etcd_bin: Option<PathBuf>,
    /// Extra kardia flags, e.g. "--shards 2". Repeat it to compare several
    /// kardia configurations in one run (each is started in turn).
    #[arg(long, global = true, value_name = "ARGS", allow_hyphen_values = true)]
    kardia_args: Vec<String>,
    /// Never run cargo to build a missing kardia binary.
    #[arg(long, global = true)]
    no_build: bool,
    /// Measured time per system (default 10s; hm9000 30s).
    #[arg(long, short = 'd', global = true, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Connections (closed loop: requests in flight). Default 64; recursive-get 4;
    /// hm9000: in-flight limit per HM9000 process, 30.
    #[arg(long, short = 'c', global = true)]
    concurrency: Option<usize>,
    /// Requests in flight per connection (HTTP pipelining depth).
    #[arg(long, global = true, default_value_t = 1)]
    pipeline: usize,
    /// Open loop: total requests/s, latency measured from the intended send time.
    /// (watch: the writer's PUTs/s, default 100.)
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// Client threads.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Print the results as JSON on stdout (no table).
    #[arg(long, global = true)]
    json: bool,
    /// Report file (SVG). Default: <target dir>/loadtest-reports/<workload>-<unix time>.svg
    #[arg(long, global = true, value_name = "PATH")]
    report: Option<PathBuf>,
    /// Do not write a report file.
    #[arg(long, global = true)]
    no_report: bool,
    /// Check key and value of every Nth response body (0 = never).
    #[arg(long, global = true, default_value_t = 100)]
    check_every: u64,
    /// Seed for key names, phases and churn.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// No progress line.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug, Clone)]
enum WorkloadCmd {
    /// The HM9000 model: listener syncs, analyzer/sender lists, locks (spec section 8).
    Hm9000(HmArgs),
    /// PUTs: distinct keys, or `--keys N` overwritten.
    Put(PutArgs),
    /// GETs of pre-filled keys.
    Get(GetArgs),
    /// Recursive GETs of a pre-filled directory.
    RecursiveGet(ListArgs),
    /// Watchers long-polling one directory while a writer PUTs into it.
    Watch(WatchArgs),
    /// GETs and PUTs over a pre-filled key set.
    Mixed(MixedArgs),
    /// Only serve the null responder (to measure other clients, e.g. wrk, against it).
    ServeNull(ServeNullArgs),
}

#[derive(Args, Debug, Clone)]
struct ServeNullArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: String,
    /// Pin the responder thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

#[derive(Args, Debug, Clone)]
struct HmArgs {
    /// small (20×50), default (100×100), large (300×100), production (1500×20, K=2),
    /// stress (1000×100), cold-start (100×100 from an empty store).
    #[arg(long, default_value = "default")]
    preset: String,
    /// D: DEAs.
    #[arg(long)]
    deas: Option<usize>,
    /// I: instances per DEA.
    #[arg(long, alias = "instances-per-dea")]
    per_dea: Option<usize>,
    /// K: instances per app.
    #[arg(long)]
    per_app: Option<usize>,
    /// Fraction of instance records rewritten per heartbeat period.
    #[arg(long)]
    churn: Option<f64>,
    /// Start from an empty store: every instance is written in its DEA's first heartbeat.
    #[arg(long)]
    cold_start: bool,
    /// S in /hm/v<S>.
    #[arg(long, default_value_t = 4)]
    schema: u32,
    /// Search for the largest deployment (scaling DEAs) whose every flush stays fresh.
    #[arg(long)]
    find_max: bool,
    /// Upper bound of the --find-max search, in instances.
    #[arg(long, default_value_t = 400_000)]
    max_instances: u64,
    /// Length of one --find-max trial (default 15s cold start, 25s warm).
    #[arg(long, value_parser = humantime::parse_duration)]
    trial_duration: Option<Duration>,
}

#[derive(Args, Debug, Clone)]
struct PutArgs {
    /// Overwrite a key set of this size instead of writing distinct keys.
    #[arg(long)]
    keys: Option<u64>,
    /// TTL in seconds.
    #[arg(long)]
    ttl: Option<u32>,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
}

#[derive(Args, Debug, Clone)]
struct GetArgs {
    /// Keys to read (pre-filled).
    #[arg(long, default_value_t = 1)]
    keys: u64,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Send go-etcd's quorum=true&recursive=false&sorted=false.
    #[arg(long)]
    quorum: bool,
}

#[derive(Args, Debug, Clone)]
struct ListArgs {
    /// Keys in the directory (pre-filled).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    #[arg(long)]
    quorum: bool,
}

#[derive(Args, Debug, Clone)]
struct WatchArgs {
    /// Long-polling watchers (one connection each).
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Keys the writer cycles through.
    #[arg(long, default_value_t = 100)]
    keys: u64,
}

#[derive(Args, Debug, Clone)]
struct MixedArgs {
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Fraction of GETs.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    #[arg(long)]
    ttl: Option<u32>,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    #[arg(long)]
    quorum: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

fn main() {
    std::process::exit(real_main());
}

fn workload_name(w: &WorkloadCmd) -> &'static str {
    match w {
        WorkloadCmd::Hm9000(_) => "hm9000",
        WorkloadCmd::Put(_) => "put",
        WorkloadCmd::Get(_) => "get",
        WorkloadCmd::RecursiveGet(_) => "recursive-get",
        WorkloadCmd::Watch(_) => "watch",
        WorkloadCmd::Mixed(_) => "mixed",
        WorkloadCmd::ServeNull(_) => "serve-null",
    }
}

fn systems(c: &Common) -> Vec<Kind> {
    let mut out = Vec::new();
    let mut add = |k: Kind| {
        if !out.contains(&k) {
            out.push(k);
        }
    };
    // Each `--kardia-args` value is one kardia configuration, run in turn.
    let configs: Vec<String> = if c.kardia_args.is_empty() {
        vec![String::new()]
    } else {
        c.kardia_args.clone()
    };
    let kardias = || configs.iter().map(|a| Kind::Kardia(a.clone()));
    if c.compare {
        kardias().for_each(&mut add);
        add(Kind::Etcd);
    }
    for s in &c.server {
        match s {
            ServerArg::Kardia => kardias().for_each(&mut add),
            ServerArg::Etcd => add(Kind::Etcd),
            ServerArg::Null => add(Kind::Null),
        }
    }
    if c.null_server {
        add(Kind::Null);
    }
    if !c.target.is_empty() {
        add(Kind::External(c.target.clone()));
    }
    if out.is_empty() {
        out.push(Kind::External(vec!["http://127.0.0.1:2379".into()]));
    }
    out
}

fn real_main() -> i32 {
    let cli = Cli::parse();
    let c = &cli.common;
    if let WorkloadCmd::ServeNull(a) = &cli.workload {
        return serve_null(a, c.duration);
    }
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
            STOP.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupted: finishing the current run (Ctrl-C again to abort)");
        } else {
            servers::kill_all_children();
            std::process::exit(130);
        }
    });
    let mut notes = Vec::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (client_cpus, server_cpus): (Vec<usize>, Vec<usize>) = if c.pin {
        if cpus >= 2 {
            notes.push(format!(
                "pinned: client on CPU 0, servers on CPU 1-{}",
                cpus - 1
            ));
            (vec![0], (1..cpus).collect())
        } else {
            notes.push("--pin ignored: only one CPU".into());
            (Vec::new(), Vec::new())
        }
    } else {
        (Vec::new(), Vec::new())
    };
    let opts = ServerOpts {
        members: usize::from(c.members),
        server_cpus,
        install_etcd: c.install_etcd,
        kardia_bin: c.kardia_bin.clone(),
        etcd_bin: c.etcd_bin.clone(),
        no_build: c.no_build,
    };
    let name = workload_name(&cli.workload);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_watch = stop.clone();
    std::thread::spawn(move || loop {
        if STOP.load(Ordering::Relaxed) {
            stop_watch.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    let mut runs = Vec::new();
    let mut exit = 0;
    for (i, kind) in systems(c).iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut run = SystemRun {
            label: kind.label(),
            members: usize::from(c.members),
            ..Default::default()
        };
        if matches!(kind, Kind::Null | Kind::External(_)) {
            run.members = 1;
        }
        if !c.quiet && !c.json {
            eprintln!("== {name} against {} ==", run.label);
        }
        match servers::start(kind, &opts) {
            Err(e) => {
                eprintln!("{}: not run: {e}", run.label);
                run.failure = Some(e);
                exit = exit.max(2);
            }
            Ok(mut sys) => {
                run.version = sys.version.clone();
                execute(
                    &cli.workload,
                    c,
                    &mut sys,
                    kind,
                    &opts,
                    &mut run,
                    i as u64,
                    &client_cpus,
                    &stop,
                );
                if run.server_rss_bytes.is_none() {
                    run.server_rss_bytes = sys.rss_bytes();
                }
                sys.stop();
                if run.has_errors() {
                    exit = exit.max(1);
                }
            }
        }
        runs.push(run);
    }
    if stop.load(Ordering::Relaxed) {
        notes.push("interrupted by Ctrl-C: results cover the time run".into());
        exit = 3;
    }
    if runs.iter().any(|r| r.label == "null") {
        notes.push("null server: validation checks status only".into());
    }
    let params = serde_json::json!({
        "workload": format!("{:?}", cli.workload),
        "duration_s": c.duration.map(|d| d.as_secs_f64()),
        "concurrency": c.concurrency,
        "pipeline": c.pipeline,
        "rate": c.rate,
        "threads": c.threads,
        "members": c.members,
        "pin": c.pin,
        "seed": c.seed,
        "cpus": cpus,
    });
    let mut report = Report {
        workload: name.to_string(),
        params,
        runs,
        report_file: None,
        notes,
    };
    if !c.no_report && report.runs.iter().any(|r| r.summary.is_some()) {
        let path = c.report.clone().unwrap_or_else(|| {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            servers::target_dir()
                .join("loadtest-reports")
                .join(format!("{name}-{unix}.svg"))
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        match report::write_svg(&report, &path) {
            Ok(()) => report.report_file = Some(path.display().to_string()),
            Err(e) => report
                .notes
                .push(format!("could not write report {}: {e}", path.display())),
        }
    }
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print!("{}", report::table(&report));
        match exit {
            1 => println!("RESULT: requests FAILED (see errors above)"),
            2 => println!("RESULT: a system could not be run (see above)"),
            3 => println!("RESULT: interrupted"),
            _ => {}
        }
    }
    exit
}

/// Serves the null responder until Ctrl-C or `--duration`.
fn serve_null(a: &ServeNullArgs, duration: Option<Duration>) -> i32 {
    if !a.listen.starts_with("127.") && !a.listen.starts_with("localhost") {
        eprintln!("serve-null listens on loopback only");
        return 2;
    }
    let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    let server = match nullserver::NullServer::start_on(&a.listen, a.cpu) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", a.listen);
            return 2;
        }
    };
    eprintln!("null server on http://{} (Ctrl-C to stop)", server.addr);
    let until = duration.map(|d| Instant::now() + d);
    while !STOP.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
        std::thread::sleep(Duration::from_millis(100));
    }
    0
}

/// Shows a live progress line until dropped.
struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(label: String, live: Arc<Live>, quiet: bool) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = (!quiet).then(|| {
            std::thread::spawn(move || {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {msg}")
                        .expect("template"),
                );
                bar.set_prefix(label);
                let started = Instant::now();
                let mut last = (0u64, Instant::now());
                while !d.load(Ordering::Relaxed) {
                    let (ok, err) = live.snapshot();
                    let now = Instant::now();
                    let rate =
                        (ok - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-3);
                    if now.duration_since(last.1) >= Duration::from_millis(500) {
                        last = (ok, now);
                    }
                    let avg = ok as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!(
                        "ok {ok}  errors {err}  ~{rate:.0}/s now, {avg:.0}/s avg"
                    ));
                    bar.tick();
                    std::thread::sleep(Duration::from_millis(200));
                }
                bar.finish_and_clear();
            })
        });
        Progress { done, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the workload against one ready system and fills `run`.
#[allow(clippy::too_many_arguments)]
fn execute(
    cmd: &WorkloadCmd,
    c: &Common,
    sys: &mut System,
    kind: &Kind,
    server_opts: &ServerOpts,
    run: &mut SystemRun,
    index: u64,
    client_cpus: &[usize],
    stop: &Arc<AtomicBool>,
) {
    let addrs = sys.addrs.clone();
    let host = addrs[0].to_string();
    let lenient = sys.label == "null";
    let live = Arc::new(Live::default());
    let seed = c.seed.wrapping_add(index);
    let run_id = workload::run_id(
        seed ^ std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64,
    );
    let quiet = c.quiet || c.json;
    let cpu_before = |s: &System| s.cpu_seconds();
    match cmd {
        WorkloadCmd::Hm9000(a) => {
            let Some(mut spec) = HmSpec::preset(&a.preset) else {
                run.failure = Some(format!("unknown preset {}", a.preset));
                return;
            };
            spec.deas = a.deas.unwrap_or(spec.deas).max(1);
            spec.per_dea = a.per_dea.unwrap_or(spec.per_dea).max(1);
            spec.per_app = a.per_app.unwrap_or(spec.per_app).max(1);
            spec.churn = a.churn.unwrap_or(spec.churn);
            spec.cold_start |= a.cold_start;
            spec.schema = a.schema;
            spec.seed = seed;
            spec.concurrency = c.concurrency.unwrap_or(30).max(1);
            let opts = hm9000::RunOpts {
                duration: c.duration.unwrap_or(Duration::from_secs(30)),
                timeout: c.timeout,
                host,
                lenient,
                check_every: c.check_every,
                cpu: client_cpus.first().copied(),
            };
            notes_model(&spec, run);
            if a.find_max {
                let trial = a.trial_duration.unwrap_or(if spec.cold_start {
                    Duration::from_secs(15)
                } else {
                    Duration::from_secs(25)
                });
                find_max(
                    &spec,
                    &opts,
                    trial,
                    a.max_instances,
                    sys,
                    kind,
                    server_opts,
                    run,
                    &live,
                    stop,
                    quiet,
                );
                return;
            }
            let prepared = hm9000::prepare(&spec, &addrs, &opts);
            let cpu0 = cpu_before(sys);
            let progress = Progress::start(
                format!("{} hm9000 {}", run.label, spec.preset),
                live.clone(),
                quiet,
            );
            let out = hm9000::run(&spec, &addrs, &opts, prepared, &live, stop);
            drop(progress);
            run.server_cpu_s = sys.cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
            run.prefill_failures = out.prefill_failures;
            run.summary = Some(out.rec.summary(out.elapsed));
            run.freshness = Some(out.freshness);
            run.flushes = out.flushes;
        }
        WorkloadCmd::Watch(a) => {
            let spec = WatchSpec {
                watchers: a.watchers.max(1),
                rate: c.rate.unwrap_or(100.0),
                keys: a.keys.max(1),
                duration: c.duration.unwrap_or(Duration::from_secs(10)),
                timeout: c.timeout,
                run_id,
                host,
                lenient,
            };
            let cpu0 = cpu_before(sys);
            let progress = Progress::start(format!("{} watch", run.label), live.clone(), quiet);
            let (rec, elapsed, result) = watch::run(&spec, &addrs, &live, stop);
            drop(progress);
            run.server_cpu_s = sys.cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
            run.summary = Some(rec.summary(elapsed));
            run.watch = Some(result);
        }
        _ => {
            let (kind, keys, ttl, value_size, read_ratio, quorum) = match cmd {
                WorkloadCmd::Put(a) => (RawKind::Put, a.keys, a.ttl, a.value_size, 0.0, false),
                WorkloadCmd::Get(a) => (
                    RawKind::Get,
                    Some(a.keys),
                    None,
                    a.value_size,
                    1.0,
                    a.quorum,
                ),
                WorkloadCmd::RecursiveGet(a) => (
                    RawKind::RecursiveGet,
                    Some(a.keys),
                    None,
                    a.value_size,
                    1.0,
                    a.quorum,
                ),
                WorkloadCmd::Mixed(a) => (
                    RawKind::Mixed,
                    Some(a.keys),
                    a.ttl,
                    a.value_size,
                    a.read_ratio,
                    a.quorum,
                ),
                WorkloadCmd::Hm9000(_) | WorkloadCmd::Watch(_) | WorkloadCmd::ServeNull(_) => {
                    unreachable!("handled above")
                }
            };
            let default_conns = if kind == RawKind::RecursiveGet { 4 } else { 64 };
            let conns = c.concurrency.unwrap_or(default_conns).max(1);
            let spec = RawSpec {
                kind,
                keys,
                ttl,
                value_size,
                read_ratio,
                quorum,
                run_id,
                host,
                conns,
                seed,
            };
            run.prefill_failures = spec.prefill(&addrs, lenient, c.timeout);
            let cfg = engine::LoadCfg {
                addrs: addrs.clone(),
                conns,
                pipeline: c.pipeline.max(1),
                rate: c.rate,
                duration: c.duration.unwrap_or(Duration::from_secs(10)),
                timeout: c.timeout,
                threads: c.threads.max(1),
                check_every: c.check_every,
                lenient,
                cpus: client_cpus.to_vec(),
            };
            let cpu0 = cpu_before(sys);
            let progress = Progress::start(
                format!("{} {}", run.label, workload_name(cmd)),
                live.clone(),
                quiet,
            );
            let (rec, elapsed) = engine::run(
                &cfg,
                workload::raw::CLASSES,
                |conn| spec.source(conn),
                &live,
                stop,
            );
            drop(progress);
            run.server_cpu_s = sys.cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
            run.summary = Some(rec.summary(elapsed));
        }
    }
}

/// Records what the model predicts, for comparison with the measured rates.
fn notes_model(spec: &HmSpec, run: &mut SystemRun) {
    run.model = Some(serde_json::json!({
        "deas": spec.deas,
        "instances_per_dea": spec.per_dea,
        "instances_per_app": spec.per_app,
        "instances": spec.instances(),
        "churn": spec.churn,
        "cold_start": spec.cold_start,
        "concurrency": spec.concurrency,
        "expected_writes_per_s": spec.expected_writes_per_s(),
        "cold_start_extra_writes_per_s": if spec.cold_start {
            spec.instances() as f64 / spec.heartbeat.as_secs_f64()
        } else {
            0.0
        },
        "expected_reads_per_s": spec.expected_reads_per_s(),
    }));
}

/// `--find-max`: grows the deployment (DEAs × I) by doubling until a trial goes
/// stale, then bisects to within ~15 %. Each trial uses a fresh schema
/// namespace (`/hm/v<S+trial>`) on the same server.
#[allow(clippy::too_many_arguments)]
fn find_max(
    base: &HmSpec,
    opts: &hm9000::RunOpts,
    trial_len: Duration,
    max_instances: u64,
    sys: &mut System,
    kind: &Kind,
    server_opts: &ServerOpts,
    run: &mut SystemRun,
    live: &Arc<Live>,
    stop: &Arc<AtomicBool>,
    quiet: bool,
) {
    let mut fm = FindMax::default();
    let per_dea = base.per_dea.max(1) as u64;
    let max_deas = (max_instances / per_dea).max(1) as usize;
    let mut lo: Option<usize> = None; // largest fresh DEA count
    let mut hi: Option<usize> = None; // smallest stale DEA count
    let mut deas = base.deas.min(max_deas);
    // (outcome, server CPU seconds and RSS of that trial)
    type Kept = (hm9000::HmOutcome, Option<f64>, Option<u64>);
    let mut best: Option<Kept> = None;
    let mut last: Option<Kept> = None;
    for trial in 0..12u32 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Every trial starts from a fresh server (the store of earlier trials
        // would otherwise slow later ones); external targets are reused.
        if trial > 0 && !matches!(kind, Kind::External(_)) {
            sys.stop();
            match servers::start(kind, server_opts) {
                Ok(fresh) => *sys = fresh,
                Err(e) => {
                    run.failure = Some(format!("restart for trial {} failed: {e}", trial + 1));
                    break;
                }
            }
        }
        let addrs = &sys.addrs.clone();
        let mut o = opts.clone();
        o.host = addrs[0].to_string();
        let mut spec = base.clone();
        spec.deas = deas;
        spec.schema = base.schema + 1 + trial;
        o.duration = trial_len;
        let progress = Progress::start(
            format!(
                "{} find-max trial {} ({} instances)",
                run.label,
                trial + 1,
                spec.instances()
            ),
            live.clone(),
            quiet,
        );
        let prepared = hm9000::prepare(&spec, addrs, &o);
        let cpu0 = sys.cpu_seconds();
        let out = hm9000::run(&spec, addrs, &o, prepared, live, stop);
        let cpu = sys.cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
        let rss = sys.rss_bytes();
        drop(progress);
        let errors = out.rec.error_count() + out.prefill_failures;
        let fresh = out.freshness.all_fresh && errors == 0;
        fm.trials.push(Trial {
            deas,
            instances: spec.instances(),
            fresh,
            batch_p99_ms: out.freshness.batch_p99_ms,
            batch_max_ms: out.freshness.batch_max_ms,
            errors,
        });
        if !quiet {
            eprintln!(
                "  trial {}: {} instances: {}",
                trial + 1,
                spec.instances(),
                if fresh { "fresh" } else { "stale" }
            );
        }
        if fresh {
            lo = Some(lo.map_or(deas, |l| l.max(deas)));
            best = Some((out, cpu, rss));
        } else {
            hi = Some(hi.map_or(deas, |h| h.min(deas)));
            last = Some((out, cpu, rss));
        }
        deas = match (lo, hi) {
            (Some(l), None) if l >= max_deas => break,
            (Some(l), None) => (l * 2).min(max_deas),
            (None, Some(h)) if h <= 1 => break,
            (None, Some(h)) => (h / 2).max(1),
            (Some(l), Some(h)) if (h as f64) <= l as f64 * 1.15 || h - l <= 1 => break,
            (Some(l), Some(h)) => (l + h) / 2,
            (None, None) => break,
        };
    }
    fm.largest_fresh = lo.map(|d| d as u64 * per_dea);
    fm.smallest_stale = hi.map(|d| d as u64 * per_dea);
    // The table shows the largest fresh trial (or the last stale one).
    if let Some((out, cpu, rss)) = best.or(last) {
        run.server_cpu_s = cpu;
        run.server_rss_bytes = rss;
        run.prefill_failures = out.prefill_failures;
        run.summary = Some(out.rec.summary(out.elapsed));
        run.freshness = Some(out.freshness);
        run.flushes = out.flushes;
    }
    run.find_max = Some(fm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kardia_args_give_one_system_per_configuration() {
        let cli = Cli::try_parse_from([
            "kardia-loadtest",
            "hm9000",
            "--compare",
            "--kardia-args",
            "--shards 1",
            "--kardia-args",
            "--shards 2",
        ])
        .unwrap();
        let sys = systems(&cli.common);
        assert_eq!(
            sys,
            vec![
                Kind::Kardia("--shards 1".into()),
                Kind::Kardia("--shards 2".into()),
                Kind::Etcd
            ]
        );
        assert_eq!(sys[1].label(), "kardia --shards 2");
    }

    #[test]
    fn cli_parses_global_flags_after_the_workload() {
        let cli = Cli::try_parse_from([
            "kardia-loadtest",
            "hm9000",
            "--compare",
            "--members",
            "3",
            "--duration",
            "5s",
        ])
        .unwrap();
        assert!(cli.common.compare);
        assert_eq!(cli.common.members, 3);
        assert_eq!(cli.common.duration, Some(Duration::from_secs(5)));
        assert_eq!(
            systems(&cli.common),
            vec![Kind::Kardia(String::new()), Kind::Etcd]
        );
        let cli = Cli::try_parse_from([
            "kardia-loadtest",
            "put",
            "--keys",
            "10000",
            "--ttl",
            "30",
            "-c",
            "64",
            "--null-server",
        ])
        .unwrap();
        assert_eq!(systems(&cli.common), vec![Kind::Null]);
        let cli = Cli::try_parse_from(["kardia-loadtest", "get"]).unwrap();
        assert_eq!(
            systems(&cli.common),
            vec![Kind::External(vec!["http://127.0.0.1:2379".into()])]
        );
        assert!(Cli::try_parse_from(["kardia-loadtest", "put", "--members", "0"]).is_err());
    }
}
