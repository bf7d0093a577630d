//! Freshness arithmetic for the HM9000 model.
//!
//! The listener records one [`Flush`] per 1-s sync (when it started, how long its
//! writes took, how long the whole batch including the freshness GET/PUT took,
//! and whether anything failed). [`summarize`] turns the list into a
//! [`FreshnessSummary`]: the strict criterion used by `--find-max` (every batch
//! finished inside the sync window without errors), flush-time percentiles, and
//! HM9000's own view, replayed from its rules: a timely sync bumps the
//! `actual-fresh` key (TTL 30 s, first timestamp preserved), a failed sync
//! deletes it, a late one leaves it to expire, and the store counts as fresh once
//! the key has existed for 30 s.

use serde::Serialize;
use std::time::Duration;

/// One listener sync.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Flush {
    /// Start, seconds since the run's t0.
    pub start_s: f64,
    /// Cache refresh + PUT/DELETE fan-out (what HM9000 compares with the window).
    pub sync_s: f64,
    /// The whole batch: sync plus freshness GET/PUT and metric PUTs.
    pub batch_s: f64,
    pub heartbeats: u32,
    pub writes: u32,
    pub failed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FreshnessSummary {
    pub instances: u64,
    pub flushes: u64,
    /// Batches that took at least the sync window.
    pub late: u64,
    /// Batches with at least one failed request.
    pub failed: u64,
    pub batch_p50_ms: f64,
    pub batch_p99_ms: f64,
    pub batch_max_ms: f64,
    pub max_writes_per_flush: u32,
    /// Every batch inside the window, none failed (and at least one flush).
    pub all_fresh: bool,
    /// HM9000's view: when the store became (or will become) fresh, if the
    /// freshness key survived to the end of the run.
    pub hm_fresh_from_s: Option<f64>,
    /// HM9000's view: times the freshness key was lost (expired or revoked).
    pub hm_freshness_lost: u64,
}

/// Percentile (0..=100) of a sorted slice by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(
    flushes: &[Flush],
    instances: u64,
    window: Duration,
    fresh_ttl: Duration,
) -> FreshnessSummary {
    let mut batch: Vec<f64> = flushes.iter().map(|f| f.batch_s * 1000.0).collect();
    batch.sort_by(f64::total_cmp);
    let late = flushes
        .iter()
        .filter(|f| f.batch_s >= window.as_secs_f64())
        .count() as u64;
    let failed = flushes.iter().filter(|f| f.failed).count() as u64;
    let (from, lost) = hm_view(flushes, window, fresh_ttl);
    FreshnessSummary {
        instances,
        flushes: flushes.len() as u64,
        late,
        failed,
        batch_p50_ms: percentile(&batch, 50.0),
        batch_p99_ms: percentile(&batch, 99.0),
        batch_max_ms: batch.last().copied().unwrap_or(0.0),
        max_writes_per_flush: flushes.iter().map(|f| f.writes).max().unwrap_or(0),
        all_fresh: !flushes.is_empty() && late == 0 && failed == 0,
        hm_fresh_from_s: from,
        hm_freshness_lost: lost,
    }
}

/// Replays HM9000's freshness rules. Returns (fresh-from time of the key alive
/// at the end, number of times the key was lost).
pub fn hm_view(flushes: &[Flush], window: Duration, fresh_ttl: Duration) -> (Option<f64>, u64) {
    let ttl = fresh_ttl.as_secs_f64();
    let mut created: Option<f64> = None;
    let mut last_bump = 0.0;
    let mut lost = 0;
    for f in flushes {
        let end_sync = f.start_s + f.sync_s;
        if created.is_some() && end_sync - last_bump > ttl {
            created = None; // expired before this sync ended
            lost += 1;
        }
        if f.failed {
            if created.take().is_some() {
                lost += 1;
            }
        } else if f.sync_s < window.as_secs_f64() {
            let bump = f.start_s + f.batch_s;
            created.get_or_insert(bump);
            last_bump = bump;
        }
    }
    (created.map(|c| c + ttl), lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flush(start_s: f64, batch_s: f64, failed: bool) -> Flush {
        Flush {
            start_s,
            sync_s: batch_s * 0.9,
            batch_s,
            heartbeats: 10,
            writes: 12,
            failed,
        }
    }
    const W: Duration = Duration::from_secs(1);
    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn all_timely_is_fresh_after_ttl() {
        let fl: Vec<_> = (0..40).map(|i| flush(i as f64, 0.05, false)).collect();
        let s = summarize(&fl, 10_000, W, TTL);
        assert!(s.all_fresh);
        assert_eq!(
            (s.flushes, s.late, s.failed, s.hm_freshness_lost),
            (40, 0, 0, 0)
        );
        assert!((s.hm_fresh_from_s.unwrap() - 30.05).abs() < 1e-9);
        assert!((s.batch_max_ms - 50.0).abs() < 1e-9);
        assert_eq!(s.max_writes_per_flush, 12);
    }

    #[test]
    fn one_late_batch_breaks_strict_but_not_hm_view() {
        let mut fl: Vec<_> = (0..10).map(|i| flush(i as f64, 0.05, false)).collect();
        fl[5].batch_s = 1.2;
        fl[5].sync_s = 1.1;
        let s = summarize(&fl, 1, W, TTL);
        assert!(!s.all_fresh);
        assert_eq!(s.late, 1);
        assert_eq!(s.hm_freshness_lost, 0);
        assert!(s.hm_fresh_from_s.is_some());
    }

    #[test]
    fn failure_revokes_and_restarts_the_clock() {
        let mut fl: Vec<_> = (0..10).map(|i| flush(i as f64, 0.1, false)).collect();
        fl[4].failed = true;
        let s = summarize(&fl, 1, W, TTL);
        assert_eq!((s.failed, s.hm_freshness_lost), (1, 1));
        // Re-created by the flush at t=5 (ends at 5.1): fresh from 35.1.
        assert!((s.hm_fresh_from_s.unwrap() - 35.1).abs() < 1e-9);
    }

    #[test]
    fn long_run_of_late_syncs_lets_the_key_expire() {
        let mut fl = vec![flush(0.0, 0.1, false)];
        // 40 s of syncs that each take 2 s: no bump, the key expires at 30.1 s.
        fl.extend((0..20).map(|i| flush(1.0 + 2.0 * i as f64, 2.0, false)));
        let (from, lost) = hm_view(&fl, W, TTL);
        assert_eq!((from, lost), (None, 1));
    }

    #[test]
    fn percentiles_by_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            (
                percentile(&v, 50.0),
                percentile(&v, 99.0),
                percentile(&v, 100.0)
            ),
            (50.0, 99.0, 100.0)
        );
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
