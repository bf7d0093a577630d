//! Measurement: latency histograms, per-second time series and error counts.
//!
//! Each client thread owns a [`Recorder`]; connection tasks push one completed
//! request at a time into it ([`Recorder::record`]) with its class (an index into
//! the workload's named request classes), completion instant, latency and
//! validation result. Latencies are microseconds in HdrHistograms (3 significant
//! figures overall, 2 per second). At the end the per-thread recorders are
//! [`Recorder::merge`]d and turned into a serialisable [`Summary`]. A shared
//! [`Live`] block of atomics feeds the progress line while the run is going.

use crate::validate::{ErrorKind, Outcome};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Highest latency a histogram tracks (µs); larger values are clamped.
pub const MAX_LATENCY_US: u64 = 120_000_000;

/// Counters read by the progress line.
#[derive(Default, Debug)]
pub struct Live {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
}

impl Live {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

fn hist(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("valid histogram bounds")
}

/// One request class (e.g. "presence PUT").
#[derive(Clone)]
pub struct ClassStats {
    pub name: String,
    pub ok: u64,
    /// Anticipated 404/412 outcomes (counted as successes).
    pub expected_misses: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// One second of the run (by completion time).
#[derive(Clone)]
pub struct Second {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

/// Per-thread accumulator.
#[derive(Clone)]
pub struct Recorder {
    pub t0: Instant,
    pub classes: Vec<ClassStats>,
    pub seconds: Vec<Second>,
    pub errors: BTreeMap<ErrorKind, u64>,
    pub latency: Histogram<u64>,
    /// Latency from the actual send (differs from `latency` only in open loop).
    pub service: Histogram<u64>,
    /// Value checks performed on sampled responses.
    pub sampled: u64,
}

impl Recorder {
    pub fn new(t0: Instant, class_names: &[&str]) -> Self {
        Recorder {
            t0,
            classes: class_names
                .iter()
                .map(|n| ClassStats {
                    name: n.to_string(),
                    ok: 0,
                    expected_misses: 0,
                    errors: 0,
                    latency: hist(3),
                })
                .collect(),
            seconds: Vec::new(),
            errors: BTreeMap::new(),
            latency: hist(3),
            service: hist(3),
            sampled: 0,
        }
    }

    fn second(&mut self, at: Instant) -> &mut Second {
        let s = at.saturating_duration_since(self.t0).as_secs() as usize;
        while self.seconds.len() <= s {
            self.seconds.push(Second {
                ok: 0,
                errors: 0,
                latency: hist(2),
            });
        }
        &mut self.seconds[s]
    }

    /// Records one finished request. `latency` is from the intended send time,
    /// `service` from the actual one.
    pub fn record(
        &mut self,
        class: usize,
        done: Instant,
        latency: Duration,
        service: Duration,
        result: Result<Outcome, ErrorKind>,
        live: &Live,
    ) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        let sus = (service.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        let sec = self.second(done);
        match result {
            Ok(outcome) => {
                sec.ok += 1;
                let _ = sec.latency.record(us);
                let c = &mut self.classes[class];
                c.ok += 1;
                if outcome != Outcome::Ok {
                    c.expected_misses += 1;
                }
                let _ = c.latency.record(us);
                let _ = self.latency.record(us);
                let _ = self.service.record(sus);
                live.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => {
                sec.errors += 1;
                self.classes[class].errors += 1;
                *self.errors.entry(kind).or_insert(0) += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records an error not tied to a request (e.g. a failed connect).
    pub fn record_error(&mut self, class: usize, at: Instant, kind: ErrorKind, live: &Live) {
        self.second(at).errors += 1;
        self.classes[class].errors += 1;
        *self.errors.entry(kind).or_insert(0) += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (a, b) in self.classes.iter_mut().zip(&other.classes) {
            a.ok += b.ok;
            a.expected_misses += b.expected_misses;
            a.errors += b.errors;
            let _ = a.latency.add(&b.latency);
        }
        // Align seconds by absolute time.
        let shift = other.t0.saturating_duration_since(self.t0).as_secs() as usize;
        for (i, s) in other.seconds.iter().enumerate() {
            let at = self.t0 + Duration::from_secs((i + shift) as u64);
            let d = self.second(at);
            d.ok += s.ok;
            d.errors += s.errors;
            let _ = d.latency.add(&s.latency);
        }
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_insert(0) += v;
        }
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        self.sampled += other.sampled;
    }

    pub fn ok(&self) -> u64 {
        self.classes.iter().map(|c| c.ok).sum()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Summarises a run of `elapsed` wall time.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ok = self.ok();
        let errors = self.error_count();
        let whole = (elapsed.as_secs() as usize).min(self.seconds.len());
        Summary {
            elapsed_s: secs,
            requests: ok + errors,
            ok,
            errors,
            error_kinds: self
                .errors
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            throughput: ok as f64 / secs,
            latency: Percentiles::of(&self.latency),
            service: Percentiles::of(&self.service),
            classes: self
                .classes
                .iter()
                .filter(|c| c.ok + c.errors > 0)
                .map(|c| ClassSummary {
                    name: c.name.clone(),
                    ok: c.ok,
                    expected_misses: c.expected_misses,
                    errors: c.errors,
                    rate: c.ok as f64 / secs,
                    latency: Percentiles::of(&c.latency),
                })
                .collect(),
            series: self
                .seconds
                .iter()
                .take(whole.max(1))
                .enumerate()
                .map(|(i, s)| SecondPoint {
                    t: i as u64,
                    ok: s.ok,
                    errors: s.errors,
                    p50_us: s.latency.value_at_quantile(0.5),
                    p99_us: s.latency.value_at_quantile(0.99),
                    max_us: s.latency.max(),
                })
                .collect(),
            spectrum: spectrum(&self.latency),
            sampled_value_checks: self.sampled,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Latency at fixed quantiles for the distribution chart: (percentile, µs).
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    const QS: [f64; 16] = [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999,
        99.9999, 100.0,
    ];
    QS.iter()
        .map(|&q| (q, h.value_at_quantile(q / 100.0)))
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassSummary {
    pub name: String,
    pub ok: u64,
    pub expected_misses: u64,
    pub errors: u64,
    pub rate: f64,
    pub latency: Percentiles,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecondPoint {
    pub t: u64,
    pub ok: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Everything measured in one run against one system.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub elapsed_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: Vec<(String, u64)>,
    /// Successful requests per second.
    pub throughput: f64,
    /// From the intended send time (open loop) or the send (closed loop).
    pub latency: Percentiles,
    /// From the actual send.
    pub service: Percentiles,
    pub classes: Vec<ClassSummary>,
    pub series: Vec<SecondPoint>,
    pub spectrum: Vec<(f64, u64)>,
    pub sampled_value_checks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let t0 = Instant::now();
        let live = Live::default();
        let mut a = Recorder::new(t0, &["put", "get"]);
        let mut b = Recorder::new(t0, &["put", "get"]);
        for i in 0..1000u64 {
            let at = t0 + Duration::from_millis(i * 3); // 0..3 s
            a.record(
                0,
                at,
                Duration::from_micros(100 + i),
                Duration::from_micros(50),
                Ok(Outcome::Ok),
                &live,
            );
        }
        b.record(
            1,
            t0 + Duration::from_millis(500),
            Duration::from_micros(7),
            Duration::ZERO,
            Ok(Outcome::Missing),
            &live,
        );
        b.record(
            1,
            t0 + Duration::from_millis(2500),
            Duration::ZERO,
            Duration::ZERO,
            Err(ErrorKind::Timeout),
            &live,
        );
        a.merge(&b);
        assert_eq!(a.ok(), 1001);
        assert_eq!(a.error_count(), 1);
        assert_eq!(live.snapshot(), (1001, 1));
        assert_eq!(a.classes[1].expected_misses, 1);
        assert_eq!(a.seconds.len(), 3);
        assert_eq!(a.seconds[0].ok, 334 + 1);
        assert_eq!(a.seconds[2].errors, 1);
        let s = a.summary(Duration::from_secs(3));
        assert_eq!(s.requests, 1002);
        assert!((s.throughput - 1001.0 / 3.0).abs() < 1e-6);
        // p50 of 100..1099 µs plus one 7 µs sample: about 600 µs (3 significant figures).
        assert!((595..=605).contains(&s.latency.p50), "{}", s.latency.p50);
        assert_eq!(s.latency.max, a.latency.max());
        assert!(
            s.latency.p99 >= 1080 && s.latency.p99 <= 1100,
            "{}",
            s.latency.p99
        );
        assert_eq!(s.error_kinds, vec![("timeout".to_string(), 1)]);
        assert_eq!(s.series.len(), 3);
        assert_eq!(s.spectrum.first().unwrap().1, 7);
    }

    #[test]
    fn clamps_out_of_range() {
        let live = Live::default();
        let mut r = Recorder::new(Instant::now(), &["x"]);
        r.record(
            0,
            r.t0,
            Duration::from_secs(10_000),
            Duration::ZERO,
            Ok(Outcome::Ok),
            &live,
        );
        assert!(r.latency.max() >= MAX_LATENCY_US * 999 / 1000);
        assert_eq!(r.service.min(), 1);
    }
}
