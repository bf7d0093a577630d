//! The data dir's identity file, `kardia.id`: which member and cluster the
//! directory belongs to.
//!
//! Written once when a data dir is created; checked at every start so that a
//! dir is never silently reused under another name or cluster (the 2013 seed
//! scenario's pitfall), and so that a directory that is not kardia's is never
//! touched.

use std::path::Path;

pub const FILE: &str = "kardia.id";
const MAGIC: &str = "kardia-data-dir v1";

/// What a data dir records about its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub shards: usize,
    /// Depth of the placement units (`store::Placement`; 0: none, as data
    /// dirs written before units existed). `None` in a request: the default
    /// for a new data dir, whatever an existing one has.
    pub unit_depth: Option<usize>,
}

/// The unit depth of a new data dir: HM9000's application directories
/// (`/hm/v4/apps/actual/<app>,<ver>`) are at depth 5.
pub const DEFAULT_UNIT_DEPTH: usize = 5;

/// Load the identity of `dir`, creating it when the dir is new or empty.
/// Returns a message for the operator when the dir belongs to someone else:
/// another member name, another shard count, or — when the flags name a
/// cluster of several members (`check_cluster`) — another cluster.
pub fn load_or_create(
    dir: &Path,
    want: &Identity,
    check_cluster: bool,
) -> Result<Identity, String> {
    let file = dir.join(FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let have = parse(&text).ok_or_else(|| {
                format!(
                    "{} is not a valid kardia identity file; refusing to use data dir {}",
                    file.display(),
                    dir.display()
                )
            })?;
            if have.name != want.name {
                return Err(format!(
                    "data dir {} belongs to member {:?} (id {:x}), not {:?}: start with --name {} to use it, or give this member another --data-dir",
                    dir.display(),
                    have.name,
                    have.member_id,
                    want.name,
                    have.name
                ));
            }
            if check_cluster && have.cluster_id != want.cluster_id {
                return Err(format!(
                    "data dir {} belongs to cluster {:x}, but the flags describe cluster {:x} (check --initial-cluster and --initial-cluster-token), or use another --data-dir",
                    dir.display(),
                    have.cluster_id,
                    want.cluster_id
                ));
            }
            if want.shards != 0 && have.shards != want.shards {
                return Err(format!(
                    "data dir {} has {} shard(s); start it with --shards {} or without the flag, or change it while the member is stopped: kardia reshard --data-dir {} --shards {}",
                    dir.display(),
                    have.shards,
                    have.shards,
                    dir.display(),
                    want.shards
                ));
            }
            if want.unit_depth.is_some() && have.unit_depth != want.unit_depth {
                return Err(format!(
                    "data dir {} has unit depth {}; start it with --unit-depth {} or without the flag, or change it while the member is stopped: kardia reshard --data-dir {} --shards {} --unit-depth {}",
                    dir.display(),
                    have.unit_depth.unwrap_or(0),
                    have.unit_depth.unwrap_or(0),
                    dir.display(),
                    have.shards,
                    want.unit_depth.unwrap_or(0)
                ));
            }
            Ok(have)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Ok(mut rd) = std::fs::read_dir(dir) {
                if let Some(Ok(ent)) = rd.next() {
                    return Err(format!(
                        "data dir {} is not empty and is not a kardia data dir (found {:?}); refusing to touch it — give an empty or new --data-dir",
                        dir.display(),
                        ent.file_name()
                    ));
                }
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
            let mut want = want.clone();
            if want.shards == 0 {
                // One shard: with placement units two win HM9000's cold
                // start, but one wins its steady state (listings that span
                // shards cost more) and GETs (docs/performance.md);
                // `--shards N` opts in to more.
                want.shards = 1;
            }
            want.unit_depth.get_or_insert(DEFAULT_UNIT_DEPTH);
            write(dir, &want)?;
            Ok(want)
        }
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// The identity recorded in `dir` (an existing data dir).
pub fn read(dir: &Path) -> Result<Identity, String> {
    let file = dir.join(FILE);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("{}: {e} (not a kardia data dir?)", file.display()))?;
    parse(&text).ok_or_else(|| format!("{} is not a valid kardia identity file", file.display()))
}

/// Write `id` as the identity file of `dir` (atomically: a temporary file,
/// synced, renamed over, and the directory synced).
pub fn write(dir: &Path, id: &Identity) -> Result<(), String> {
    let text = format!(
        "{MAGIC}\nname={}\nmember_id={:x}\ncluster_id={:x}\nshards={}\nunit_depth={}\n",
        id.name,
        id.member_id,
        id.cluster_id,
        id.shards,
        id.unit_depth.unwrap_or(0)
    );
    let tmp = dir.join("kardia.id.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| e.to_string())?;
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    super::powercut::synced_dir(dir);
    Ok(())
}

/// Hold `dir` for this process: an exclusive lock on its identity file,
/// released when the returned file is closed (at exit, whatever the cause).
/// A second kardia, or `kardia reshard`, on the same data dir is refused.
pub fn lock(dir: &Path) -> Result<std::fs::File, String> {
    let file = dir.join(FILE);
    let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "data dir {} is in use by another kardia process: stop it first, or give this one another --data-dir",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", file.display())),
    }
}

fn parse(text: &str) -> Option<Identity> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let (mut name, mut mid, mut cid, mut shards) = (None, None, None, None);
    let mut unit_depth = Some(0);
    for l in lines {
        let (k, v) = l.split_once('=')?;
        match k {
            "name" => name = Some(v.to_string()),
            "member_id" => mid = u64::from_str_radix(v, 16).ok(),
            "cluster_id" => cid = u64::from_str_radix(v, 16).ok(),
            "shards" => shards = v.parse().ok(),
            "unit_depth" => unit_depth = Some(v.parse().ok()?),
            _ => {}
        }
    }
    Some(Identity {
        name: name?,
        member_id: mid?,
        cluster_id: cid?,
        shards: shards?,
        unit_depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_name_and_foreign_dirs() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        let me = Identity {
            name: "a".into(),
            member_id: 1,
            cluster_id: 2,
            shards: 1,
            unit_depth: Some(3),
        };
        assert_eq!(load_or_create(&dir, &me, true).unwrap(), me);
        assert_eq!(load_or_create(&dir, &me, true).unwrap(), me);
        let other = Identity {
            name: "b".into(),
            ..me.clone()
        };
        let err = load_or_create(&dir, &other, true).unwrap_err();
        assert!(err.contains("belongs to member \"a\""), "{err}");
        let foreign = d.path().join("foreign");
        std::fs::create_dir_all(foreign.join("member")).unwrap();
        assert!(load_or_create(&foreign, &me, true)
            .unwrap_err()
            .contains("not a kardia data dir"));
    }

    #[test]
    fn keeps_its_unit_depth() {
        let d = tempfile::tempdir().unwrap();
        let auto = Identity {
            name: "a".into(),
            member_id: 1,
            cluster_id: 2,
            shards: 2,
            unit_depth: None,
        };
        let made = load_or_create(d.path(), &auto, true).unwrap();
        assert_eq!(made.unit_depth, Some(DEFAULT_UNIT_DEPTH));
        assert_eq!(load_or_create(d.path(), &auto, true).unwrap(), made);
        let other = Identity {
            unit_depth: Some(2),
            ..auto.clone()
        };
        let err = load_or_create(d.path(), &other, true).unwrap_err();
        assert!(err.contains("has unit depth 5"), "{err}");
        // A data dir from before units has none.
        let old = "kardia-data-dir v1\nname=a\nmember_id=1\ncluster_id=2\nshards=2\n";
        assert_eq!(parse(old).unwrap().unit_depth, Some(0));
    }
}
