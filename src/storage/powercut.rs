//! Power-cut simulation, for tests: a second copy of the data dir, the
//! *image*, that holds exactly what the fsyncs so far made durable. It is off
//! unless the environment variable [`ENV`] names an image directory when the
//! member starts; then every durability point of a shard reports here:
//!
//! - a WAL write (`O_DSYNC`) copies the range it made durable ([`synced_range`]);
//! - a directory sync mirrors that directory's names ([`synced_dir`]): a
//!   file that is new or was replaced (another inode) is copied whole — the
//!   code syncs every file before the directory that names it — and a
//!   removed one is removed;
//! - an LMDB checkpoint copies `data.mdb` as it is when the checkpoint is
//!   decided (on the executor, so between transactions) and puts the copy
//!   in place when `force_sync` has returned ([`checkpoint_begin`],
//!   [`checkpoint_done`]). Pages LMDB wrote between checkpoints are never
//!   in the image: the model in which the kernel wrote none of them back.
//!
//! A test kills the member at any moment and starts one on the image: what a
//! machine that lost power would boot with (docs/architecture.md, *The
//! crash-consistency model*). The copies are blocking calls on the executor;
//! that is acceptable in a test and never happens otherwise (one branch).

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The variable naming the image directory.
pub const ENV: &str = "KARDIA_POWERCUT_IMAGE";

/// LMDB's files: copied only at checkpoints (`lock.mdb` never).
const LMDB_FILES: [&str; 2] = ["data.mdb", "lock.mdb"];

struct Sim {
    root: PathBuf,
    image: PathBuf,
    /// The inode each image file was copied from, by image path.
    inodes: Mutex<HashMap<PathBuf, u64>>,
}

static SIM: OnceLock<Option<Sim>> = OnceLock::new();

/// Turn the simulation on if [`ENV`] is set (once, at start).
pub fn init(data_dir: &Path) -> Result<(), String> {
    let sim = match std::env::var_os(ENV) {
        None => None,
        Some(image) => {
            let image = PathBuf::from(image);
            std::fs::create_dir_all(&image).map_err(|e| format!("{}: {e}", image.display()))?;
            std::fs::create_dir_all(data_dir)
                .map_err(|e| format!("{}: {e}", data_dir.display()))?;
            tracing::warn!(image = %image.display(), "power-cut simulation on (tests only)");
            Some(Sim {
                root: data_dir.canonicalize().map_err(|e| e.to_string())?,
                image: image.canonicalize().map_err(|e| e.to_string())?,
                inodes: Mutex::new(HashMap::new()),
            })
        }
    };
    let _ = SIM.set(sim);
    Ok(())
}

fn sim() -> Option<&'static Sim> {
    SIM.get().and_then(Option::as_ref)
}

impl Sim {
    /// Where `path` (a file or directory under the data dir) is in the image.
    fn mapped(&self, path: &Path) -> Option<PathBuf> {
        let abs = match path.canonicalize() {
            Ok(p) => p,
            // A file that is already gone: map its directory.
            Err(_) => path.parent()?.canonicalize().ok()?.join(path.file_name()?),
        };
        Some(self.image.join(abs.strip_prefix(&self.root).ok()?))
    }

    fn copy_whole(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let tmp = to.with_extension("powercut-tmp");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(&tmp, to)
    }
}

/// `len` bytes of `path` from `offset` were made durable.
pub fn synced_range(path: &Path, offset: u64, len: u64) {
    let Some(s) = sim() else { return };
    let Some(to) = s.mapped(path) else { return };
    let r = (|| -> std::io::Result<()> {
        let mut buf = vec![0u8; len as usize];
        std::fs::File::open(path)?.read_exact_at(&mut buf, offset)?;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&to)?;
        f.write_all_at(&buf, offset)
    })();
    if let Err(e) = r {
        tracing::error!(path = %path.display(), error = %e, "power-cut image: range not copied");
    }
}

/// The names in directory `dir` were made durable.
pub fn synced_dir(dir: &Path) {
    let Some(s) = sim() else { return };
    let Some(to) = s.mapped(dir) else { return };
    let r = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&to)?;
        let mut inodes = s.inodes.lock().expect("power-cut inodes");
        let mut present = Vec::new();
        for ent in std::fs::read_dir(dir)? {
            let ent = ent?;
            let name = ent.file_name();
            let meta = match ent.metadata() {
                Ok(m) => m,
                Err(_) => continue, // removed meanwhile
            };
            present.push(name.clone());
            if meta.is_dir() {
                std::fs::create_dir_all(to.join(&name))?;
                continue;
            }
            if LMDB_FILES.iter().any(|f| name == *f) {
                continue;
            }
            let target = to.join(&name);
            if inodes.get(&target) != Some(&meta.ino()) || !target.exists() {
                s.copy_whole(&ent.path(), &target)?;
                inodes.insert(target, meta.ino());
            }
        }
        for ent in std::fs::read_dir(&to)? {
            let ent = ent?;
            let name = ent.file_name();
            if !present.contains(&name) && ent.file_type()?.is_file() {
                std::fs::remove_file(ent.path())?;
                inodes.remove(&ent.path());
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        tracing::error!(dir = %dir.display(), error = %e, "power-cut image: directory not mirrored");
    }
}

/// A checkpoint of the LMDB environment in `env_dir`, which uses the first
/// `used()` bytes of its file, is about to sync: copy the file as it is now
/// (call between transactions; the preallocated rest stays a hole). The copy
/// takes effect at [`checkpoint_done`].
pub fn checkpoint_begin(env_dir: &Path, used: impl FnOnce() -> u64) -> Option<PathBuf> {
    let s = sim()?;
    let used = used();
    let to = s.mapped(env_dir)?;
    let pending = to.join("data.mdb.powercut-pending");
    let r = (|| -> std::io::Result<()> {
        use std::io::Read;
        std::fs::create_dir_all(&to)?;
        let from = std::fs::File::open(env_dir.join("data.mdb"))?;
        let len = from.metadata()?.len();
        let mut out = std::fs::File::create(&pending)?;
        std::io::copy(&mut from.take(used.min(len)), &mut out)?;
        out.set_len(len)
    })();
    match r {
        Ok(()) => Some(pending),
        Err(e) => {
            tracing::error!(dir = %env_dir.display(), error = %e, "power-cut image: store not copied");
            None
        }
    }
}

/// The checkpoint begun with [`checkpoint_begin`] is durable.
pub fn checkpoint_done(pending: Option<PathBuf>) {
    if let Some(p) = pending {
        if let Err(e) = std::fs::rename(&p, p.with_file_name("data.mdb")) {
            tracing::error!(error = %e, "power-cut image: store copy not put in place");
        }
    }
}
