//! Checkpoints: LMDB synced off the executor, then the WAL it covers
//! released.
//!
//! The store is written without syncing (`NO_SYNC`); the WAL holds every
//! acknowledged entry from the last completed checkpoint on. The raft loop
//! calls [`Checkpointer::poll`] once per pass: when a WAL segment has
//! filled, or after `--checkpoint-interval` with progress, it syncs LMDB on
//! a blocking thread; when that finishes, it releases the sealed segments
//! whose entries are all applied (at once if the WAL writer is idle, else
//! the writer does after its round). In: the
//! store's applied index and the WAL's sealed segments. Out: synced pages
//! and released segments; a failed sync is fatal for the shard.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{persist::Persister, Error};
use crate::shard::Shard;

/// One shard's checkpoint schedule (see the module text).
pub struct Checkpointer {
    interval: Duration,
    last: Instant,
    /// The applied index the last checkpoint started at.
    covered: u64,
    running: bool,
    /// Filled by the blocking sync with the applied index it made durable.
    done: Rc<RefCell<Option<Result<u64, String>>>>,
    /// Segments up to this applied index may be released.
    release_at: Option<u64>,
}

impl Checkpointer {
    pub fn new(interval: Duration, applied: u64) -> Checkpointer {
        Checkpointer {
            interval,
            last: Instant::now(),
            covered: applied,
            running: false,
            done: Rc::default(),
            release_at: None,
        }
    }

    /// Collect a finished sync, release what it covers, and start the next
    /// one when due.
    pub async fn poll(&mut self, shard: &Shard, persist: &Persister) -> Result<(), Error> {
        let finished = self.done.borrow_mut().take();
        if let Some(r) = finished {
            self.running = false;
            match r {
                Ok(durable) => self.release_at = Some(durable),
                Err(e) => {
                    return Err(Error::Store(crate::store::Error::Corrupt(format!(
                        "checkpoint: {e}"
                    ))))
                }
            }
        }
        // Drop log segments the checkpoint covers (now if the writer is
        // idle, else by the writer after its round).
        if let Some(durable) = self.release_at.take() {
            persist.release_after(durable).await?;
        }
        // Checkpoint when a WAL segment has filled (to free it) or, with
        // progress, after the interval. Each checkpoint's writeback delays
        // the WAL syncs around it, so they are kept rare: about once per
        // 64 MiB of log. Segments roll only when full.
        let applied = shard.store.borrow().applied().0;
        let sealed = persist.sealed_segments();
        let due = applied > self.covered && (sealed > 0 || self.last.elapsed() >= self.interval);
        if !self.running && due {
            self.last = Instant::now();
            self.covered = applied;
            self.running = true;
            let done = self.done.clone();
            let sync = crate::store::checkpoint(shard.store.borrow().env());
            glommio::spawn_local(async move {
                let r = glommio::executor()
                    .spawn_blocking(move || sync().map(|_| applied).map_err(|e| e.to_string()))
                    .await;
                *done.borrow_mut() = Some(r);
            })
            .detach();
        }
        Ok(())
    }
}
