//! Command-line and environment configuration.
//!
//! Accepts etcd's 2.x/3.x flags with one or two dashes (`--name x`,
//! `-name=x`), each also as an `ETCD_*` environment variable, the 0.4-era
//! flags mapped as spec 10.2 describes, and kardia's own limits. Flags win
//! over the environment. Go-style flags do not fit clap's model (single-dash
//! long names), hence this small parser. Errors are one line naming the
//! flag; the binary exits with code 2 on them.

use std::path::PathBuf;
use std::time::Duration;

use crate::http::Limits;

/// Everything a member needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: String,
    pub initial_cluster_token: String,
    pub heartbeat: Duration,
    pub election: Duration,
    pub shards: usize,
    /// `--unit-depth` (None: the data dir's, or the default for a new one).
    pub unit_depth: Option<usize>,
    /// TLS for https:// client URLs (`--cert-file`, `--key-file`, ...).
    pub client_tls: Option<crate::tls::ClientTls>,
    /// TLS for the peer transport (`--peer-cert-file`, ...).
    pub peer_tls: Option<crate::tls::PeerTls>,
    pub history: usize,
    pub map_size: usize,
    /// How often the store is synced to disk (and the WAL it covers freed).
    pub checkpoint_interval: Duration,
    /// Size of a WAL segment (each filled segment triggers a checkpoint).
    pub wal_segment_bytes: u64,
    pub limits: Limits,
    pub log_level: String,
    pub force_new_cluster: bool,
    /// `--experimental-sharded-cluster`: a replicated member may run
    /// several shards, each its own raft group (issue #14; see
    /// docs/operations.md).
    pub sharded_cluster: bool,
    /// 0.x `-peers`: peer addresses of a running cluster to join.
    pub peers: Vec<String>,
    /// Applied raft entries kept for lagging followers (`--snapshot-count`).
    pub snapshot_count: u64,
}

impl Config {
    /// The flags describe a cluster of several members (or a join).
    pub fn clustered(&self) -> bool {
        let names: std::collections::BTreeSet<&str> = self
            .initial_cluster
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        names.len() > 1 || !self.peers.is_empty() || self.initial_cluster_state == "existing"
    }
}

/// The outcome of parsing: run, or print and exit.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Config>),
    Help,
    Version,
    /// `kardia check [DATA_DIR]`: verify a data dir offline.
    Check(PathBuf),
    /// `kardia reshard --data-dir DIR --shards N [--unit-depth K]`: change
    /// a stopped member's shard count or unit depth.
    Reshard {
        data_dir: PathBuf,
        shards: usize,
        unit_depth: Option<usize>,
    },
    /// `kardia mirror --from URL --to URL [...]`: copy an etcd v2 keyspace.
    Mirror(crate::mirror::Options),
    /// `kardia import --etcd-data-dir DIR --to URL [--prefix P]`: copy a
    /// stopped etcd member's v2 keyspace.
    Import(crate::import::Options),
}

const IMPORT_USAGE: &str =
    "usage: kardia import --etcd-data-dir /var/lib/etcd --to http://127.0.0.1:2379 [--prefix /hm]";

/// `kardia import`'s flags.
fn parse_import(args: &[String]) -> Result<Parsed, String> {
    let mut o = crate::import::Options {
        etcd_dir: PathBuf::new(),
        to: String::new(),
        prefix: "/".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = split_flag(a);
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or(IMPORT_USAGE)?,
        };
        match name {
            "etcd-data-dir" => o.etcd_dir = PathBuf::from(value),
            "to" => o.to = value.trim_end_matches('/').to_string(),
            "prefix" => o.prefix = format!("/{}", value.trim_matches('/')),
            _ => {
                return Err(format!(
                    "flag provided but not defined: {a}\n{IMPORT_USAGE}"
                ))
            }
        }
    }
    if o.etcd_dir.as_os_str().is_empty() || o.to.is_empty() {
        return Err(IMPORT_USAGE.into());
    }
    Ok(Parsed::Import(o))
}

const MIRROR_USAGE: &str = "usage: kardia mirror --from http://etcd:2379 --to http://127.0.0.1:2379 [--prefix /hm] [--until-idle SECONDS] [--verify]";

/// `kardia mirror`'s flags.
fn parse_mirror(args: &[String]) -> Result<Parsed, String> {
    let mut o = crate::mirror::Options {
        from: String::new(),
        to: String::new(),
        prefix: "/".into(),
        verify: false,
        until_idle: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = split_flag(a);
        if name == "verify" {
            o.verify = true;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or(MIRROR_USAGE)?,
        };
        match name {
            "from" => o.from = value.trim_end_matches('/').to_string(),
            "to" => o.to = value.trim_end_matches('/').to_string(),
            "prefix" => {
                let p = format!("/{}", value.trim_matches('/'));
                o.prefix = p;
            }
            "until-idle" => {
                let s: u64 = value
                    .parse()
                    .map_err(|_| format!("invalid value {value:?} for flag -until-idle"))?;
                o.until_idle = Some(std::time::Duration::from_secs(s));
            }
            _ => {
                return Err(format!(
                    "flag provided but not defined: {a}\n{MIRROR_USAGE}"
                ))
            }
        }
    }
    if o.from.is_empty() || o.to.is_empty() {
        return Err(MIRROR_USAGE.into());
    }
    Ok(Parsed::Mirror(o))
}

/// A tool's flag: `-name`, `--name` or `--name=value` → (name, inline value).
fn split_flag(a: &str) -> (&str, Option<String>) {
    let flag = a.trim_start_matches('-');
    match flag.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (flag, None),
    }
}

const RESHARD_USAGE: &str =
    "usage: kardia reshard --data-dir DIR --shards N [--unit-depth K] (the member must be stopped)";

/// `kardia reshard`'s flags.
fn parse_reshard(args: &[String]) -> Result<Parsed, String> {
    let (mut dir, mut shards, mut depth) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = split_flag(a);
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or(RESHARD_USAGE)?,
        };
        let number = |v: &str| -> Result<usize, String> {
            v.parse()
                .map_err(|_| format!("invalid value {v:?} for flag -{name}"))
        };
        match name {
            "data-dir" => dir = Some(PathBuf::from(value)),
            "shards" => shards = Some(number(&value)?),
            "unit-depth" => depth = Some(number(&value)?),
            _ => {
                return Err(format!(
                    "flag provided but not defined: {a}\n{RESHARD_USAGE}"
                ))
            }
        }
    }
    let shards = shards.ok_or(RESHARD_USAGE)?;
    if !(1..=256).contains(&shards) {
        return Err(format!(
            "invalid value {shards} for flag -shards: 1 to 256 shards per member"
        ));
    }
    Ok(Parsed::Reshard {
        data_dir: dir.ok_or(RESHARD_USAGE)?,
        shards,
        unit_depth: depth.map(|d| d.min(64)),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Bool,
    /// Accepted for compatibility and ignored (with a value).
    IgnoredStr,
    /// Accepted for compatibility and ignored (boolean).
    IgnoredBool,
}

/// (flag name, kind, env var)
const FLAGS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("data-dir", Kind::Str),
    ("listen-client-urls", Kind::Str),
    ("advertise-client-urls", Kind::Str),
    ("listen-peer-urls", Kind::Str),
    ("initial-advertise-peer-urls", Kind::Str),
    ("initial-cluster", Kind::Str),
    ("initial-cluster-state", Kind::Str),
    ("initial-cluster-token", Kind::Str),
    ("heartbeat-interval", Kind::Str),
    ("election-timeout", Kind::Str),
    ("enable-v2", Kind::Bool),
    ("force-new-cluster", Kind::Bool),
    ("experimental-sharded-cluster", Kind::Bool),
    ("shards", Kind::Str),
    ("unit-depth", Kind::Str),
    ("history-size", Kind::Str),
    ("max-header-bytes", Kind::Str),
    ("max-body-bytes", Kind::Str),
    ("max-connections", Kind::Str),
    ("header-timeout", Kind::Str),
    ("idle-timeout", Kind::Str),
    ("map-size", Kind::Str),
    ("checkpoint-interval", Kind::Str),
    ("wal-segment-bytes", Kind::Str),
    ("log-level", Kind::Str),
    // Client TLS (3.x names; 0.4's -cert-file/-key-file/-ca-file).
    ("cert-file", Kind::Str),
    ("key-file", Kind::Str),
    ("trusted-ca-file", Kind::Str),
    ("client-cert-auth", Kind::Bool),
    ("ca-file", Kind::Str),
    // Peer TLS: refused with a message (not built yet).
    ("peer-cert-file", Kind::Str),
    ("peer-key-file", Kind::Str),
    ("peer-trusted-ca-file", Kind::Str),
    ("peer-client-cert-auth", Kind::Bool),
    ("peer-ca-file", Kind::Str),
    // etcd flags kardia accepts and ignores.
    ("snapshot-count", Kind::Str),
    ("cors", Kind::IgnoredStr),
    ("quota-backend-bytes", Kind::IgnoredStr),
    ("max-request-bytes", Kind::IgnoredStr),
    ("logger", Kind::IgnoredStr),
    ("log-outputs", Kind::IgnoredStr),
    ("auto-compaction-retention", Kind::IgnoredStr),
    ("debug", Kind::IgnoredBool),
    ("strict-reconfig-check", Kind::IgnoredBool),
    // 0.4-era flags (spec 10.2).
    ("addr", Kind::Str),
    ("bind-addr", Kind::Str),
    ("peer-addr", Kind::Str),
    ("peer-bind-addr", Kind::Str),
    ("peers", Kind::Str),
    ("f", Kind::Bool),
    ("force", Kind::Bool),
    ("snapshot", Kind::IgnoredBool),
    ("v", Kind::IgnoredBool),
    ("vv", Kind::IgnoredBool),
];

fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Parse `args` (without the program name) and the environment.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, String> {
    if args.first().map(String::as_str) == Some("mirror") {
        return parse_mirror(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("import") {
        return parse_import(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("reshard") {
        return parse_reshard(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("check") {
        return match &args[1..] {
            [] => Ok(Parsed::Check(PathBuf::from("default.etcd"))),
            [dir] => Ok(Parsed::Check(PathBuf::from(dir))),
            _ => Err("usage: kardia check [DATA_DIR]".into()),
        };
    }
    let mut vals: std::collections::HashMap<&'static str, String> = Default::default();
    // Environment first; flags override.
    for (name, _) in FLAGS {
        if let Some(v) = env(&env_name(name)) {
            vals.insert(name, v);
        }
    }
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err(format!(
                "unexpected argument {a:?} (flags start with - or --)"
            ));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        match name {
            "h" | "help" => return Ok(Parsed::Help),
            "version" => return Ok(Parsed::Version),
            _ => {}
        }
        let Some(&(fname, kind)) = FLAGS.iter().find(|(n, _)| *n == name) else {
            return Err(format!("unknown flag {a:?} (see --help)"));
        };
        let v = match kind {
            Kind::Bool | Kind::IgnoredBool => inline.unwrap_or_else(|| "true".into()),
            Kind::Str | Kind::IgnoredStr => match inline {
                Some(v) => v,
                None => {
                    let Some(v) = args.get(i) else {
                        return Err(format!("flag {a:?} needs a value"));
                    };
                    i += 1;
                    v.clone()
                }
            },
        };
        if matches!(kind, Kind::Bool | Kind::IgnoredBool) {
            parse_bool(fname, &v)?;
        }
        vals.insert(fname, v);
    }
    build(&vals).map(|c| Parsed::Run(Box::new(c)))
}

fn parse_bool(name: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {v:?} for flag -{name}")),
    }
}

fn num<T: std::str::FromStr>(
    vals: &std::collections::HashMap<&str, String>,
    name: &str,
    default: T,
) -> Result<T, String> {
    match vals.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("invalid value {v:?} for flag -{name}")),
    }
}

fn url_list(name: &str, v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for u in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        check_url(name, u)?;
        out.push(u.trim_end_matches('/').to_string());
    }
    if out.is_empty() {
        return Err(format!("flag -{name} needs at least one URL"));
    }
    Ok(out)
}

fn check_url(name: &str, u: &str) -> Result<(), String> {
    let rest = match (u.strip_prefix("http://"), u.strip_prefix("https://")) {
        (Some(r), _) | (None, Some(r)) => r,
        _ => {
            return Err(format!(
                "invalid URL {u:?} for flag -{name}: expected http://host:port or https://host:port"
            ))
        }
    };
    let hostport = rest.split('/').next().unwrap_or("");
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "invalid URL {u:?} for flag -{name}: expected http://host:port"
        )),
    }
}

/// `host:port` (0.4 style) → `http://host:port` (`https://` when
/// `tls`: a 0.4 member with `-cert-file` served TLS on `-addr`).
fn addr_url(name: &str, v: &str, tls: bool) -> Result<String, String> {
    let u = if v.starts_with("http://") || v.starts_with("https://") {
        v.to_string()
    } else if tls {
        format!("https://{v}")
    } else {
        format!("http://{v}")
    };
    check_url(name, &u)?;
    Ok(u)
}

fn build(vals: &std::collections::HashMap<&str, String>) -> Result<Config, String> {
    let get = |n: &str| vals.get(n).map(String::as_str);
    let name = get("name").unwrap_or("default").to_string();
    if name.is_empty() {
        return Err("flag -name must not be empty".into());
    }
    let data_dir = PathBuf::from(
        get("data-dir")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{name}.etcd")),
    );

    // 0.4 flags map onto the 2.x ones (spec 10.2). kardia listens where it
    // advertises unless a bind address is given (never silently on 0.0.0.0).
    let tls0 = get("cert-file").is_some();
    let addr = get("addr").map(|v| addr_url("addr", v, tls0)).transpose()?;
    let bind = get("bind-addr")
        .map(|v| addr_url("bind-addr", v, tls0))
        .transpose()?;
    // Peer TLS (0.4's -peer-ca-file also asks for member certificates).
    let peer_tls = match (get("peer-cert-file"), get("peer-key-file")) {
        (Some(c), Some(k)) => Some(crate::tls::PeerTls {
            cert_file: PathBuf::from(c),
            key_file: PathBuf::from(k),
            trusted_ca_file: get("peer-trusted-ca-file")
                .or(get("peer-ca-file"))
                .map(PathBuf::from)
                .ok_or("peer TLS needs --peer-trusted-ca-file (the CA the other members' certificates chain to)")?,
            client_cert_auth: get("peer-client-cert-auth")
                .map(|v| parse_bool("peer-client-cert-auth", v))
                .transpose()?
                .unwrap_or(false)
                || get("peer-ca-file").is_some(),
        }),
        (None, None) => None,
        _ => return Err("give both --peer-cert-file and --peer-key-file".into()),
    };
    let ptls = peer_tls.is_some();
    let peer_addr = get("peer-addr")
        .map(|v| addr_url("peer-addr", v, ptls))
        .transpose()?;
    let peer_bind = get("peer-bind-addr")
        .map(|v| addr_url("peer-bind-addr", v, ptls))
        .transpose()?;

    let listen_client_urls = match (get("listen-client-urls"), &bind, &addr) {
        (Some(v), _, _) => url_list("listen-client-urls", v)?,
        (None, Some(b), _) => vec![b.clone()],
        (None, None, Some(a)) => vec![a.clone()],
        _ => vec![
            "http://127.0.0.1:2379".into(),
            "http://127.0.0.1:4001".into(),
        ],
    };
    let advertise_client_urls = match (get("advertise-client-urls"), &addr) {
        (Some(v), _) => url_list("advertise-client-urls", v)?,
        (None, Some(a)) => vec![a.clone()],
        _ => listen_client_urls
            .iter()
            .map(|u| u.replace("://0.0.0.0:", "://127.0.0.1:"))
            .collect(),
    };
    let initial_advertise_peer_urls = match (get("initial-advertise-peer-urls"), &peer_addr) {
        (Some(v), _) => url_list("initial-advertise-peer-urls", v)?,
        (None, Some(p)) => vec![p.clone()],
        _ => vec!["http://localhost:2380".into()],
    };
    let listen_peer_urls = match (get("listen-peer-urls"), &peer_bind, &peer_addr) {
        (Some(v), _, _) => url_list("listen-peer-urls", v)?,
        (None, Some(b), _) => vec![b.clone()],
        (None, None, Some(p)) => vec![p.clone()],
        _ => vec!["http://127.0.0.1:2380".into()],
    };
    let initial_cluster = match get("initial-cluster") {
        Some(v) => {
            let mut out = Vec::new();
            for part in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (n, u) = part
                    .split_once('=')
                    .ok_or_else(|| format!("invalid value {part:?} in flag -initial-cluster: expected name=http://host:port"))?;
                check_url("initial-cluster", u)?;
                out.push((n.to_string(), u.to_string()));
            }
            if !out.iter().any(|(n, _)| *n == name) {
                return Err(format!(
                    "flag -initial-cluster has no entry for this member's name {name:?} (add {name}=<peer URL>)"
                ));
            }
            out
        }
        None => initial_advertise_peer_urls
            .iter()
            .map(|u| (name.clone(), u.clone()))
            .collect(),
    };
    // Every peer URL speaks the transport's one language.
    for u in listen_peer_urls
        .iter()
        .chain(&initial_advertise_peer_urls)
        .chain(initial_cluster.iter().map(|(_, u)| u))
    {
        match (u.starts_with("https://"), ptls) {
            (false, true) => {
                return Err(format!(
                    "peer URL {u}: with --peer-cert-file every peer URL is https://"
                ))
            }
            (true, false) => {
                return Err(format!(
                    "peer URL {u}: https:// peer URLs need --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"
                ))
            }
            _ => {}
        }
    }
    let mut peers = Vec::new();
    for p in get("peers")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let u = addr_url("peers", p, false)?;
        peers.push(crate::cluster::transport::host_port(&u).to_string());
    }
    let state = get("initial-cluster-state").unwrap_or("new").to_string();
    if state != "new" && state != "existing" {
        return Err(format!(
            "invalid value {state:?} for flag -initial-cluster-state (new or existing)"
        ));
    }
    let heartbeat_ms: u64 = num(vals, "heartbeat-interval", 100)?;
    let election_ms: u64 = num(vals, "election-timeout", 1000)?;
    if heartbeat_ms == 0 || election_ms < heartbeat_ms * 2 {
        return Err(format!(
            "flag -election-timeout ({election_ms}) must be at least twice -heartbeat-interval ({heartbeat_ms})"
        ));
    }
    // 0 = automatic: the data dir's count, or one for a new one.
    let mut shards: usize = num(vals, "shards", 0)?;
    if shards > 256 {
        return Err(format!(
            "invalid value {shards} for flag -shards: at most 256 shards per member"
        ));
    }
    let names: std::collections::BTreeSet<&str> =
        initial_cluster.iter().map(|(n, _)| n.as_str()).collect();
    let sharded_cluster = get("experimental-sharded-cluster")
        .map(|v| parse_bool("experimental-sharded-cluster", v))
        .transpose()?
        .unwrap_or(false);
    // Joining a cluster (-peers, or added through the members API): a
    // sharded member without --shards / --unit-depth adopts the cluster's
    // layout (`cluster::Layout`).
    let joining = !peers.is_empty() || state == "existing";
    // 0.x-style members (`-peer-addr`) are meant to be clustered: like
    // members of a cluster, they run one shard unless told otherwise.
    if shards == 0 && peer_addr.is_some() && !(sharded_cluster && joining) {
        shards = 1;
    }
    let clustered = names.len() > 1 || joining;
    if clustered && !sharded_cluster {
        // A replicated member runs one shard (see docs/architecture.md).
        if shards > 1 {
            return Err(format!(
                "flag -shards {shards} with several members: a replicated member runs one shard unless started with --experimental-sharded-cluster (use --shards 1)"
            ));
        }
        shards = 1;
    }
    // Client TLS: used on https:// listeners (etcd 3.4's rule); 0.4's
    // -ca-file also asks for client certificates.
    let https = listen_client_urls.iter().any(|u| u.starts_with("https://"));
    let client_cert_auth = get("client-cert-auth")
        .map(|v| parse_bool("client-cert-auth", v))
        .transpose()?
        .unwrap_or(false)
        || get("ca-file").is_some();
    let client_tls = match (get("cert-file"), get("key-file")) {
        (Some(c), Some(k)) => Some(crate::tls::ClientTls {
            cert_file: PathBuf::from(c),
            key_file: PathBuf::from(k),
            trusted_ca_file: get("trusted-ca-file").or(get("ca-file")).map(PathBuf::from),
            client_cert_auth,
        }),
        (None, None) if https => {
            return Err("an https:// client URL needs --cert-file and --key-file".into())
        }
        (None, None) => None,
        _ => return Err("give both --cert-file and --key-file".into()),
    };
    let mut limits = Limits::default();
    limits.max_head = num(vals, "max-header-bytes", limits.max_head)?;
    limits.max_body = num(vals, "max-body-bytes", limits.max_body + (64 << 10))?;
    limits.max_connections = num(vals, "max-connections", limits.max_connections)?;
    limits.head_timeout = Duration::from_millis(num(vals, "header-timeout", 10_000u64)?);
    limits.idle_timeout = Duration::from_millis(num(vals, "idle-timeout", 300_000u64)?);
    let force = ["f", "force", "force-new-cluster"]
        .iter()
        .filter_map(|n| get(n))
        .any(|v| parse_bool("force", v).unwrap_or(false));
    Ok(Config {
        name,
        data_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state: state,
        initial_cluster_token: get("initial-cluster-token")
            .unwrap_or("etcd-cluster")
            .to_string(),
        heartbeat: Duration::from_millis(heartbeat_ms),
        election: Duration::from_millis(election_ms),
        shards,
        client_tls,
        peer_tls,
        unit_depth: match get("unit-depth") {
            None => None,
            Some(_) => Some(num::<usize>(vals, "unit-depth", 0)?.min(64)),
        },
        history: num(vals, "history-size", 1000)?,
        map_size: num::<usize>(vals, "map-size", 64 << 30)?,
        wal_segment_bytes: num(vals, "wal-segment-bytes", crate::storage::wal::SEGMENT_SIZE)?
            .max(64 << 10),
        checkpoint_interval: Duration::from_millis(
            num(vals, "checkpoint-interval", 60_000u64)?.max(10),
        ),
        limits,
        log_level: get("log-level").unwrap_or("info").to_string(),
        force_new_cluster: force,
        sharded_cluster,
        peers,
        snapshot_count: num::<u64>(vals, "snapshot-count", 100_000)?.max(10),
    })
}

pub const USAGE: &str = "\
kardia: a replicated key-value server speaking the etcd v2 HTTP API

usage: kardia [flags]      (flags take one or two dashes; each is also ETCD_<NAME>)
       kardia check [DATA_DIR]   verify a (stopped) member's data dir: every
                                 record's checksum, the tree, the WAL; exit 1 if damaged
       kardia reshard --data-dir DIR --shards N [--unit-depth K]
                                 change a stopped member's shard count
       kardia mirror --from URL --to URL [--prefix P] [--until-idle S] [--verify]
                                 copy a live etcd v2 keyspace and follow it
       kardia import --etcd-data-dir DIR --to URL [--prefix P]
                                 copy a stopped etcd 3.4/3.5 member's v2 keyspace

  --name NAME                       member name (default \"default\")
  --data-dir DIR                    data directory (default \"<name>.etcd\")
  --listen-client-urls URLS         client listen URLs (default http://127.0.0.1:2379,http://127.0.0.1:4001)
  --advertise-client-urls URLS      client URLs told to clients (default: the listen URLs)
  --listen-peer-urls URLS           peer listen URLs (default http://127.0.0.1:2380)
  --initial-advertise-peer-urls U   this member's peer URLs (default http://localhost:2380)
  --initial-cluster N=URL,...       bootstrap membership (default <name>=<advertise peer URL>)
  --initial-cluster-state new|existing
  --initial-cluster-token TOKEN     (default etcd-cluster)
  --heartbeat-interval MS           (default 100)
  --election-timeout MS             (default 1000)
  --snapshot-count N                applied entries kept for lagging members (default 100000, at most 64 MiB)
  --force-new-cluster               keep the data, forget the other members, serve alone
  --enable-v2                       accepted (the v2 API is always on)
  --experimental-sharded-cluster    let a cluster member run --shards N, each shard its
                                    own raft group; every member runs the same --shards
                                    and --unit-depth (see docs/operations.md)
  --shards N                        shards (executors) per member (default: the data
                                    dir's count, or 1 for a new data dir; a cluster
                                    member has 1)
  --unit-depth K                    nodes at depth K or deeper are placed by their
                                    first K path components, so a directory there and
                                    everything below it live on one shard (default 5
                                    for a new data dir: HM9000's application
                                    directories; 0: every directory on every shard)
  --history-size N                  watch event history window (default 1000, as etcd)
  --max-header-bytes N              request head limit, 431 above (default 1048576)
  --max-body-bytes N                request body limit, 413 above (default 10551296)
  --max-connections N               open client connections (default 10000)
  --header-timeout MS               a request head must arrive within this (default 10000)
  --idle-timeout MS                 idle keep-alive connections close after this (default 300000)
  --map-size BYTES                  LMDB map size per shard (default 64 GiB, sparse)
  --checkpoint-interval MS          sync the store to disk at least this often (default 60000;
                                    also whenever a WAL segment fills)
  --wal-segment-bytes N             WAL segment size (default 67108864)
  --log-level LEVEL                 error|warn|info|debug (default info)
  --cert-file FILE, --key-file FILE TLS certificate chain and key (PEM) for the
                                    https:// client URLs
  --trusted-ca-file FILE            CA bundle (PEM) client certificates must chain to
  --client-cert-auth                refuse clients without such a certificate
                                    (0.4: -cert-file, -key-file, -ca-file; -ca-file
                                    also turns on client-cert-auth)

0.4-era flags: -name -data-dir -addr -bind-addr -peer-addr -peer-bind-addr -f/-force
  -peers HOST:PORT,...              join a running cluster through any of these peer addresses
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Config, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args, &|_| None)? {
            Parsed::Run(c) => Ok(*c),
            _ => Err("not run".into()),
        }
    }

    #[test]
    fn defaults_and_dashes() {
        let c = p(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(
            c.listen_client_urls,
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:4001"]
        );
        let c = p(&["-name", "n1", "--data-dir=/tmp/x", "--enable-v2"]).unwrap();
        assert_eq!(
            (c.name.as_str(), c.data_dir.to_str().unwrap()),
            ("n1", "/tmp/x")
        );
    }

    #[test]
    fn cluster_flags() {
        // 0.x: -peers takes peer addresses; a clustered member runs one shard.
        let c = p(&[
            "-peer-addr",
            "127.0.0.1:7002",
            "-peers",
            "127.0.0.1:7001, 10.0.0.2:7001",
        ])
        .unwrap();
        assert_eq!(c.peers, vec!["127.0.0.1:7001", "10.0.0.2:7001"]);
        assert_eq!(c.shards, 1);
        assert!(c.clustered());
        // -peer-addr alone: still one shard, so the member can be joined.
        assert_eq!(p(&["-peer-addr", "127.0.0.1:7001"]).unwrap().shards, 1);
        assert_eq!(p(&[]).unwrap().shards, 0);
        let ic = "a=http://127.0.0.1:1,b=http://127.0.0.1:2";
        let c = p(&[
            "--name",
            "a",
            "--initial-cluster",
            ic,
            "--snapshot-count",
            "50",
        ])
        .unwrap();
        assert_eq!((c.shards, c.snapshot_count), (1, 50));
        let e = p(&["--name", "a", "--initial-cluster", ic, "--shards", "2"]).unwrap_err();
        assert!(e.contains("one shard"), "{e}");
        assert!(p(&["-peers", "not a url"]).is_err());
        // A sharded newcomer leaves its layout open (it adopts the
        // cluster's); a sharded seed runs one shard unless told otherwise.
        let peers = ["-peer-addr", "127.0.0.1:7002", "-peers", "127.0.0.1:7001"];
        let flag = "--experimental-sharded-cluster";
        assert_eq!(p(&[&peers[..], &[flag]].concat()).unwrap().shards, 0);
        assert_eq!(p(&peers).unwrap().shards, 1);
        assert_eq!(
            p(&["-peer-addr", "127.0.0.1:7001", flag]).unwrap().shards,
            1
        );
        let c = p(&[
            "--name",
            "a",
            "--initial-cluster",
            ic,
            "--shards",
            "2",
            flag,
        ])
        .unwrap();
        assert!(c.sharded_cluster && c.shards == 2);
    }

    #[test]
    fn legacy_flags_map() {
        let c = p(&[
            "-name",
            "node0",
            "-addr",
            "127.0.0.1:4001",
            "-peer-addr",
            "127.0.0.1:7001",
        ])
        .unwrap();
        assert_eq!(c.advertise_client_urls, vec!["http://127.0.0.1:4001"]);
        assert_eq!(c.listen_client_urls, vec!["http://127.0.0.1:4001"]);
        assert_eq!(
            c.initial_cluster,
            vec![("node0".to_string(), "http://127.0.0.1:7001".to_string())]
        );
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(p(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(p(&["--heartbeat-interval", "x"])
            .unwrap_err()
            .contains("-heartbeat-interval"));
        assert!(p(&["--listen-client-urls", "127.0.0.1:1"])
            .unwrap_err()
            .contains("-listen-client-urls"));
        assert!(p(&["--enable-v2=maybe"]).unwrap_err().contains("enable-v2"));
    }

    #[test]
    fn env_and_flag_precedence() {
        let env = |k: &str| (k == "ETCD_NAME").then(|| "fromenv".to_string());
        let Parsed::Run(c) = parse(&[], &env).unwrap() else {
            panic!()
        };
        assert_eq!(c.name, "fromenv");
        let Parsed::Run(c) = parse(&["--name".into(), "flag".into()], &env).unwrap() else {
            panic!()
        };
        assert_eq!(c.name, "flag");
    }
}
