//! Disk blocks for the store's map, allocated ahead of LMDB.
//!
//! The store runs LMDB with `WRITE_MAP`: `data.mdb` is a sparse file of
//! `--map-size` and a commit is a memory write. A page LMDB writes into a
//! hole needs a block from the filesystem *at that moment*; on a full disk
//! the kernel answers with SIGBUS, which kills the process. So the blocks
//! LMDB may use next are allocated before it can touch them: `Space` keeps
//! `data.mdb` allocated (`fallocate`) up to [`AHEAD`] beyond LMDB's last
//! used page, growing it in the background (on a blocking thread) when less
//! than [`LOW`] is left, and never taking the filesystem's reserve
//! (`storage::disk`). LMDB only ever writes below its next page number
//! (pages freed by old transactions are reused from below it), so a write
//! transaction that dirties at most the allocated headroom cannot fault.
//!
//! The raft loop asks [`Space::room`] with an estimate of what a batch can
//! write before it executes it; when the headroom cannot be grown to cover
//! it, `room` fails and the shard stops cleanly (writes get 300, `/health`
//! 503, reads go on) instead of dying. Data enters as the environment (its
//! last used page, read from memory: no syscall on the request path) and
//! leaves as "go" or a message for the operator.

use std::cell::Cell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Env;

use crate::storage::disk;

/// How far beyond LMDB's last used page `data.mdb` is kept allocated.
pub const AHEAD: u64 = 64 << 20;
/// Grow in the background once less than this is left.
pub const LOW: u64 = 16 << 20;
/// Headroom no estimate may count on: LMDB's own bookkeeping (the free
/// list, meta data) in a transaction.
pub const MARGIN: u64 = 1 << 20;
/// How often a growth that found no space is tried again in the background.
const RETRY: Duration = Duration::from_secs(1);

/// The allocated headroom of one store.
pub struct Space {
    env: Env,
    file: Arc<File>,
    path: PathBuf,
    /// Bytes from the start of `data.mdb` known to be allocated.
    allocated: Rc<Cell<u64>>,
    /// A background growth is running.
    busy: Rc<Cell<bool>>,
    /// No background growth before this (after one found no space).
    quiet_until: Rc<Cell<Instant>>,
    /// The filesystem cannot allocate (no `fallocate`): no guard.
    unsupported: bool,
    /// Spare space background growth leaves for the WAL's next segment.
    keep: u64,
    /// The map size (nothing beyond it is ever written).
    map: u64,
}

/// LMDB's page size (the OS page size, which LMDB uses for new files).
fn page() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Bytes of `data.mdb` LMDB uses: up to its last page, plus one.
pub fn used(env: &Env) -> u64 {
    let info = env.info();
    (info.last_page_number as u64 + 2) * page()
}

/// Allocate `file` (data.mdb, on the filesystem of `dir`) from `from` (the
/// end of its allocated part) towards `want`, never past the map. What is
/// only wanted takes at most half the filesystem's spare space (the WAL
/// needs room too, and `keep` bytes of it are left for its next segment);
/// what `must` be allocated may take all of it; neither takes the reserve. Fails with `ENOSPC`, allocating nothing, when `must`
/// cannot be reached. Returns the new end of the allocated part. Blocking.
fn grow(
    file: &File,
    dir: &Path,
    from: u64,
    (must, want): (u64, u64),
    map: u64,
    keep: u64,
) -> std::io::Result<u64> {
    let (must, want) = (must.min(map), want.min(map));
    if from >= want.max(must) {
        return Ok(from);
    }
    let spare = disk::usage(dir)?.spare();
    let end = want
        .min(from.saturating_add(spare.saturating_sub(keep) / 2))
        .max(must.min(from.saturating_add(spare)));
    if end < must {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    if end > from {
        disk::allocate(file, from, end - from)?;
    }
    Ok(end.max(from))
}

/// Allocate the used part of `data.mdb` (it has no holes unless the file
/// was copied sparsely; then its blocks are needed anyway) and return where
/// it ends. Already allocated blocks cost nothing.
fn allocate_used(file: &File, used: u64, map: u64) -> std::io::Result<u64> {
    let used = used.min(map);
    disk::allocate(file, 0, used)?;
    Ok(used)
}

/// Allocate the used part of the store in `dir` and some headroom, before
/// its first write transaction (at open, on the opening thread). Fails only
/// when not even [`MARGIN`] beyond the used part can be allocated.
pub fn prepare(dir: &Path, env: &Env) -> std::io::Result<()> {
    let path = dir.join("data.mdb");
    let file = File::options().read(true).write(true).open(&path)?;
    let used = used(env);
    let map = env.info().map_size as u64;
    let r = allocate_used(&file, used, map)
        .and_then(|from| grow(&file, dir, from, (used + MARGIN, used + 2 * MARGIN), map, 0));
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(no_space(&path, e, used + MARGIN)),
        Ok(_) => Ok(()),
    }
}

fn no_space(path: &Path, e: std::io::Error, need: u64) -> std::io::Error {
    if !disk::is_no_space(&e) {
        return e;
    }
    let free = disk::usage(path.parent().unwrap_or(path)).map_or(0, |u| u.free);
    std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        format!(
            "no space left on device for {}: it needs {} allocated, {} free; free space on \
             that filesystem and start again",
            path.display(),
            disk::human(need),
            disk::human(free)
        ),
    )
}

impl Space {
    /// The guard of the store `env` (whose data.mdb [`prepare`] allocated
    /// at open). Measures the allocated part on a blocking thread.
    /// Background growth leaves `keep` bytes of spare space (the WAL's
    /// next segment).
    pub async fn open(env: &Env, keep: u64) -> std::io::Result<Space> {
        let dir = env.path().to_path_buf();
        let path = dir.join("data.mdb");
        let used = used(env);
        let map = env.info().map_size as u64;
        let p = path.clone();
        let (file, r) = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<_> {
                let file = File::options().read(true).write(true).open(&p)?;
                // What `prepare` allocated at open (allocating it again
                // costs nothing); growth goes on in the background.
                let r = allocate_used(&file, used, map).map(|from| {
                    grow(&file, &dir, from, (from, used + 2 * MARGIN), map, keep).unwrap_or(from)
                });
                Ok((file, r))
            })
            .await?;
        let (allocated, unsupported) = match r {
            Ok(end) => (end, false),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(
                    file = %path.display(),
                    "this filesystem cannot preallocate (no fallocate): a full disk will stop \
                     kardia with SIGBUS"
                );
                (map, true)
            }
            // Not even the used part: writes stop at the first batch.
            Err(_) => (0, false),
        };
        Ok(Space {
            env: env.clone(),
            file: Arc::new(file),
            path,
            allocated: Rc::new(Cell::new(allocated)),
            busy: Rc::default(),
            quiet_until: Rc::new(Cell::new(Instant::now())),
            unsupported,
            keep,
            map,
        })
    }

    /// The whole map is allocated.
    fn all_allocated(&self) -> bool {
        self.allocated.get() >= self.map
    }

    /// Allocated bytes beyond LMDB's last used page.
    pub fn headroom(&self) -> u64 {
        self.allocated.get().saturating_sub(used(&self.env))
    }

    /// Make sure a write transaction may dirty `need` more bytes: at once
    /// when the headroom covers it (the common case: two loads and a
    /// compare), else after growing the allocation (off the executor). An
    /// error says why it cannot: the shard must not write.
    pub async fn room(&self, need: u64) -> Result<(), String> {
        if self.unsupported || self.headroom() >= need + MARGIN || self.all_allocated() {
            self.tend();
            return Ok(());
        }
        while self.busy.get() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let used = used(&self.env);
        // Past the map LMDB refuses by itself (MDB_MAP_FULL): no hole there.
        let must = (used + need + MARGIN).min(self.map);
        if self.allocated.get() >= must {
            return Ok(());
        }
        let grown = self.grow_to(must, used + need + AHEAD).await;
        if self.allocated.get() >= must {
            return Ok(());
        }
        let free = disk::usage(self.path.parent().unwrap_or(&self.path));
        let why = match (grown, free) {
            (Err(e), _) if !disk::is_no_space(&e) => e.to_string(),
            (_, Ok(u)) => format!(
                "{} free, {} of it kept in reserve",
                disk::human(u.free),
                disk::human(u.reserve())
            ),
            (_, Err(e)) => e.to_string(),
        };
        Err(format!(
            "no space left on device for {}: the next write needs {} allocated beyond \
             the store's {} ({why}); writes stop: free space on that filesystem and \
             restart",
            self.path.display(),
            disk::human(must - used),
            disk::human(used),
        ))
    }

    /// Grow in the background when the headroom runs low (at most once a
    /// second while the filesystem has no spare space).
    pub fn tend(&self) {
        if self.unsupported
            || self.all_allocated()
            || self.busy.get()
            || self.headroom() >= LOW
            || Instant::now() < self.quiet_until.get()
        {
            return;
        }
        let used = used(&self.env);
        let fut = self.grow_task(0, used + AHEAD);
        glommio::spawn_local(async move {
            let _ = fut.await;
        })
        .detach();
    }

    async fn grow_to(&self, must: u64, want: u64) -> std::io::Result<()> {
        self.grow_task(must, want).await
    }

    /// One growth on a blocking thread; `busy` while it runs.
    fn grow_task(
        &self,
        must: u64,
        want: u64,
    ) -> impl std::future::Future<Output = std::io::Result<()>> {
        self.busy.set(true);
        let (file, dir) = (self.file.clone(), self.path.parent().map(Path::to_path_buf));
        let (allocated, busy, quiet) = (
            self.allocated.clone(),
            self.busy.clone(),
            self.quiet_until.clone(),
        );
        let from = allocated.get();
        let (map, keep) = (self.map, self.keep);
        async move {
            let dir = dir.unwrap_or_default();
            let r = glommio::executor()
                .spawn_blocking(move || grow(&file, &dir, from, (must, want), map, keep))
                .await;
            busy.set(false);
            match r {
                Ok(end) => {
                    allocated.set(allocated.get().max(end));
                    if end < want.min(map) {
                        quiet.set(Instant::now() + RETRY);
                    }
                    Ok(())
                }
                Err(e) => {
                    quiet.set(Instant::now() + RETRY);
                    Err(e)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path) -> Env {
        let mut eo = heed::EnvOpenOptions::new().read_txn_without_tls();
        eo.map_size(32 << 20).max_dbs(1);
        // SAFETY: a fresh directory, opened once.
        unsafe {
            eo.flags(heed::EnvFlags::WRITE_MAP | heed::EnvFlags::NO_SYNC);
            eo.open(dir).unwrap()
        }
    }

    fn allocated_bytes(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn the_map_is_allocated_ahead_of_lmdb() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path());
        prepare(dir.path(), &env).unwrap();
        let data = dir.path().join("data.mdb");
        let blocks = allocated_bytes(&data);
        if blocks < 2 * MARGIN {
            // A filesystem without fallocate (the guard is off).
            return;
        }
        assert!(blocks <= 4 * MARGIN, "{blocks}");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let space = Space::open(&env, 0).await.unwrap();
                assert!(space.headroom() >= MARGIN);
                // A need beyond the headroom grows the allocation first.
                space.room(8 << 20).await.unwrap();
                assert!(space.headroom() >= (8 << 20) + MARGIN);
                assert!(allocated_bytes(&dir.path().join("data.mdb")) >= 8 << 20);
                // Never beyond the map (LMDB refuses to grow past it).
                space.room(1 << 30).await.unwrap();
                assert!(allocated_bytes(&dir.path().join("data.mdb")) <= 33 << 20);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
