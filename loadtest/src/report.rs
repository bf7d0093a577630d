//! Output: the side-by-side table, the JSON document and the SVG report file.
//!
//! A [`Report`] collects one [`SystemRun`] per system under test (its
//! [`Summary`], server CPU/RSS, workload extras such as freshness or watch
//! counts, or why it could not run). [`print_table`] writes the human table
//! (ratios first/second when two systems ran), `serde_json` serialises the same
//! struct for `--json`, and [`write_svg`] draws, with plotters' SVG backend,
//! throughput over time, latency percentiles over time, the latency
//! distribution and (for hm9000) the listener's batch time per flush, every
//! system on the same axes.

use crate::freshness::{Flush, FreshnessSummary};
use crate::stats::Summary;
use crate::workload::watch::WatchResult;
use plotters::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// One trial of `--find-max`.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    pub deas: usize,
    pub instances: u64,
    pub fresh: bool,
    pub batch_p99_ms: f64,
    pub batch_max_ms: f64,
    pub errors: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FindMax {
    pub trials: Vec<Trial>,
    /// Largest deployment (instances) whose every flush was inside the window.
    pub largest_fresh: Option<u64>,
    /// Smallest deployment tried that was not.
    pub smallest_stale: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SystemRun {
    pub label: String,
    pub version: Option<String>,
    pub members: usize,
    /// Why the system could not be run (then `summary` is None).
    pub failure: Option<String>,
    pub summary: Option<Summary>,
    pub server_cpu_s: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub prefill_failures: u64,
    pub freshness: Option<FreshnessSummary>,
    #[serde(skip)]
    pub flushes: Vec<Flush>,
    pub watch: Option<WatchResult>,
    pub find_max: Option<FindMax>,
    /// HM9000 model parameters and predicted steady-state rates.
    pub model: Option<serde_json::Value>,
}

impl SystemRun {
    /// Server CPU per successful request, µs.
    pub fn cpu_us_per_req(&self) -> Option<f64> {
        let s = self.summary.as_ref()?;
        let cpu = self.server_cpu_s?;
        (s.ok > 0).then(|| cpu * 1e6 / s.ok as f64)
    }

    pub fn has_errors(&self) -> bool {
        self.prefill_failures > 0 || self.summary.as_ref().is_some_and(|s| s.errors > 0)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: String,
    pub params: serde_json::Value,
    pub runs: Vec<SystemRun>,
    pub report_file: Option<String>,
    pub notes: Vec<String>,
}

fn us(v: u64) -> String {
    if v >= 10_000_000 {
        format!("{:.1} s", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1e3)
    } else if v >= 1_000 {
        format!("{:.2} ms", v as f64 / 1e3)
    } else {
        format!("{v} µs")
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 || (v.fract() == 0.0 && v >= 0.0) {
        let i = v.round() as u64;
        let s = i.to_string();
        let mut out = String::new();
        for (k, c) in s.chars().enumerate() {
            if k > 0 && (s.len() - k).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.2}")
    }
}

/// One table row: label, one cell per system, and an optional numeric value per
/// system for the ratio column.
struct Row {
    label: String,
    cells: Vec<String>,
    values: Vec<Option<f64>>,
}

fn row(
    label: &str,
    runs: &[SystemRun],
    f: impl Fn(&SystemRun) -> Option<(String, Option<f64>)>,
) -> Option<Row> {
    let got: Vec<_> = runs.iter().map(&f).collect();
    if got.iter().all(Option::is_none) {
        return None;
    }
    Some(Row {
        label: label.to_string(),
        cells: got
            .iter()
            .map(|g| {
                g.as_ref()
                    .map(|x| x.0.clone())
                    .unwrap_or_else(|| "-".into())
            })
            .collect(),
        values: got.iter().map(|g| g.as_ref().and_then(|x| x.1)).collect(),
    })
}

/// Renders the table as text.
pub fn table(report: &Report) -> String {
    let runs = &report.runs;
    let mut rows: Vec<Row> = Vec::new();
    let sum = |r: &SystemRun| r.summary.clone();
    let mut push = |r: Option<Row>| {
        if let Some(r) = r {
            rows.push(r);
        }
    };
    push(row("result", runs, |r| {
        Some((
            match (&r.failure, &r.summary) {
                (Some(_), _) => "NOT RUN".into(),
                (None, Some(s)) if s.errors > 0 || r.prefill_failures > 0 => "ERRORS".into(),
                (None, Some(_)) => "ok".into(),
                _ => "-".into(),
            },
            None,
        ))
    }));
    push(row("version", runs, |r| {
        r.version.clone().map(|v| (v, None))
    }));
    push(row("requests ok", runs, |r| {
        sum(r).map(|s| (num(s.ok as f64), Some(s.ok as f64)))
    }));
    push(row("errors", runs, |r| {
        sum(r).map(|s| (num(s.errors as f64), None))
    }));
    push(row("throughput (req/s)", runs, |r| {
        sum(r).map(|s| (num(s.throughput), Some(s.throughput)))
    }));
    type Pick = fn(&crate::stats::Percentiles) -> u64;
    let lat: [(&str, Pick); 6] = [
        ("latency p50", |p| p.p50),
        ("latency p90", |p| p.p90),
        ("latency p99", |p| p.p99),
        ("latency p99.9", |p| p.p999),
        ("latency max", |p| p.max),
        ("service p99 (from send)", |p| p.p99),
    ];
    for (i, (label, pick)) in lat.iter().enumerate() {
        push(row(label, runs, |r| {
            sum(r).map(|s| {
                let p = if i == 5 { s.service } else { s.latency };
                (us(pick(&p)), Some(pick(&p) as f64))
            })
        }));
    }
    push(row("server CPU (s)", runs, |r| {
        r.server_cpu_s.map(|c| (format!("{c:.2}"), Some(c)))
    }));
    push(row("server CPU / req", runs, |r| {
        r.cpu_us_per_req().map(|c| (format!("{c:.1} µs"), Some(c)))
    }));
    push(row("server RSS at end", runs, |r| {
        r.server_rss_bytes
            .map(|b| (format!("{:.0} MB", b as f64 / 1e6), Some(b as f64)))
    }));
    push(row("value checks (sampled)", runs, |r| {
        sum(r).map(|s| (num(s.sampled_value_checks as f64), None))
    }));
    push(row("prefill failures", runs, |r| {
        (r.prefill_failures > 0).then(|| (num(r.prefill_failures as f64), None))
    }));
    // HM9000: predicted vs measured rates.
    let model = |r: &SystemRun, k: &str| {
        r.model
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_f64())
    };
    let measured = |r: &SystemRun, write: bool| {
        r.summary.as_ref().map(|s| {
            s.classes
                .iter()
                .filter(|c| {
                    (c.name.contains("PUT")
                        || c.name.contains("DELETE")
                        || c.name.contains("CAS")
                        || c.name.contains("create"))
                        == write
                })
                .map(|c| (c.ok + c.errors) as f64)
                .sum::<f64>()
                / s.elapsed_s
        })
    };
    push(row("model writes/s (measured)", runs, |r| {
        model(r, "expected_writes_per_s").map(|e| {
            let got = measured(r, true).unwrap_or(0.0);
            // A cold start adds N/H instance PUTs per second for the first period.
            let cell = match model(r, "cold_start_extra_writes_per_s") {
                Some(extra) if extra > 0.0 => format!("{extra:.0}+{e:.1} ({got:.1})"),
                _ => format!("{e:.1} ({got:.1})"),
            };
            (cell, None)
        })
    }));
    push(row("model reads/s (measured)", runs, |r| {
        model(r, "expected_reads_per_s").map(|e| {
            (
                format!("{e:.1} ({:.1})", measured(r, false).unwrap_or(0.0)),
                None,
            )
        })
    }));
    // Freshness.
    let fr = |r: &SystemRun| r.freshness.clone();
    push(row("instances", runs, |r| {
        fr(r).map(|f| (num(f.instances as f64), None))
    }));
    push(row("flushes (late / failed)", runs, |r| {
        fr(r).map(|f| (format!("{} ({} / {})", f.flushes, f.late, f.failed), None))
    }));
    push(row("flush batch p50", runs, |r| {
        fr(r).map(|f| (format!("{:.1} ms", f.batch_p50_ms), Some(f.batch_p50_ms)))
    }));
    push(row("flush batch p99", runs, |r| {
        fr(r).map(|f| (format!("{:.1} ms", f.batch_p99_ms), Some(f.batch_p99_ms)))
    }));
    push(row("flush batch max", runs, |r| {
        fr(r).map(|f| (format!("{:.1} ms", f.batch_max_ms), Some(f.batch_max_ms)))
    }));
    push(row("max writes / flush", runs, |r| {
        fr(r).map(|f| (num(f64::from(f.max_writes_per_flush)), None))
    }));
    push(row("all flushes fresh", runs, |r| {
        fr(r).map(|f| (if f.all_fresh { "yes" } else { "NO" }.into(), None))
    }));
    push(row("HM9000 view: fresh from", runs, |r| {
        fr(r).map(|f| match f.hm_fresh_from_s {
            Some(t) => (format!("t={t:.1}s"), None),
            None => ("never".into(), None),
        })
    }));
    push(row("largest fresh deployment", runs, |r| {
        if let Some(fm) = &r.find_max {
            return Some(match fm.largest_fresh {
                Some(n) => (format!("{} instances", num(n as f64)), Some(n as f64)),
                None => ("none".into(), None),
            });
        }
        fr(r).map(|f| {
            if f.all_fresh {
                (
                    format!(">= {} instances", num(f.instances as f64)),
                    Some(f.instances as f64),
                )
            } else {
                (format!("< {} instances", num(f.instances as f64)), None)
            }
        })
    }));
    push(row("first stale deployment", runs, |r| {
        r.find_max.as_ref().and_then(|fm| {
            fm.smallest_stale
                .map(|n| (format!("{} instances", num(n as f64)), None))
        })
    }));
    // Watch.
    push(row("watch events delivered", runs, |r| {
        r.watch.as_ref().map(|w| {
            (
                format!(
                    "{} / {}",
                    num(w.events_delivered as f64),
                    num(w.events_expected as f64)
                ),
                None,
            )
        })
    }));
    push(row("watch events missed", runs, |r| {
        r.watch
            .as_ref()
            .map(|w| (num(w.events_missed as f64), None))
    }));

    let ratio = runs.len() == 2 && runs.iter().all(|r| r.summary.is_some());
    let mut headers: Vec<String> = runs
        .iter()
        .map(|r| {
            if r.members > 1 {
                format!("{} ({}m)", r.label, r.members)
            } else {
                r.label.clone()
            }
        })
        .collect();
    if ratio {
        headers.push(format!("{}/{}", runs[0].label, runs[1].label));
    }
    let lw = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(10)
        .max(8);
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.cells.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    if ratio {
        let w = widths.len() - 1;
        widths[w] = widths[w].max(7);
    }
    let mut out = String::new();
    let _ = write!(out, "{:lw$}", report.workload);
    for (h, w) in headers.iter().zip(&widths) {
        let _ = write!(out, "  {h:>w$}");
    }
    out.push('\n');
    let total = lw + widths.iter().map(|w| w + 2).sum::<usize>();
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in &rows {
        let _ = write!(out, "{:lw$}", r.label);
        for (c, w) in r.cells.iter().zip(&widths) {
            let _ = write!(out, "  {c:>w$}");
        }
        if ratio {
            let cell = match (r.values[0], r.values[1]) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => String::new(),
            };
            let _ = write!(out, "  {cell:>w$}", w = widths[widths.len() - 1]);
        }
        out.push('\n');
    }
    // Per-class detail and problems.
    for r in runs {
        if let Some(f) = &r.failure {
            let _ = writeln!(out, "\n{}: NOT RUN: {f}", r.label);
            continue;
        }
        let Some(s) = &r.summary else { continue };
        if s.classes.len() > 1 {
            let _ = writeln!(out, "\n{} by request class:", r.label);
            let _ = writeln!(
                out,
                "  {:26} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
                "class", "ok", "404/412", "errors", "rate/s", "p50", "p99"
            );
            for c in &s.classes {
                let _ = writeln!(
                    out,
                    "  {:26} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}",
                    c.name,
                    c.ok,
                    c.expected_misses,
                    c.errors,
                    num(c.rate),
                    us(c.latency.p50),
                    us(c.latency.p99)
                );
            }
        }
        if s.errors > 0 {
            let kinds: Vec<String> = s
                .error_kinds
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(
                out,
                "\n{}: {} ERRORS ({})",
                r.label,
                s.errors,
                kinds.join(", ")
            );
        }
        if r.prefill_failures > 0 {
            let _ = writeln!(
                out,
                "{}: {} prefill writes FAILED",
                r.label, r.prefill_failures
            );
        }
        if let Some(fm) = &r.find_max {
            let _ = writeln!(out, "\n{} --find-max trials:", r.label);
            for t in &fm.trials {
                let _ = writeln!(
                    out,
                    "  {:>5} DEAs {:>9} instances  {}  batch p99 {:>8.1} ms  max {:>8.1} ms  errors {}",
                    t.deas,
                    t.instances,
                    if t.fresh { "fresh" } else { "STALE" },
                    t.batch_p99_ms,
                    t.batch_max_ms,
                    t.errors
                );
            }
        }
    }
    for n in &report.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if let Some(p) = &report.report_file {
        let _ = writeln!(out, "report: {p}");
    }
    out
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Writes the report as one SVG file.
pub fn write_svg(report: &Report, path: &Path) -> DrawResult {
    let runs: Vec<&SystemRun> = report.runs.iter().filter(|r| r.summary.is_some()).collect();
    let with_flushes = runs.iter().any(|r| !r.flushes.is_empty());
    let panels = if with_flushes { 4 } else { 3 };
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (1100, 330 * panels as u32 + 40)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "kardia-loadtest {} — {}",
            report.workload,
            report
                .runs
                .iter()
                .map(|r| r.label.as_str())
                .collect::<Vec<_>>()
                .join(" vs ")
        );
        let (top, body) = root.split_vertically(40);
        top.draw(&Text::new(title, (20, 12), ("sans-serif", 20).into_font()))?;
        let areas = body.split_evenly((panels, 1));
        throughput_chart(&areas[0], &runs)?;
        latency_time_chart(&areas[1], &runs)?;
        distribution_chart(&areas[2], &runs)?;
        if with_flushes {
            flush_chart(&areas[3], &runs)?;
        }
        root.present()?;
    }
    std::fs::write(path, svg)?;
    Ok(())
}

fn throughput_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[&SystemRun],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.summary
                .as_ref()
                .map(|s| {
                    s.series
                        .iter()
                        .map(|p| (p.t as f64 + 0.5, p.ok as f64))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let xmax = series.iter().flatten().map(|p| p.0).fold(1.0, f64::max) + 0.5;
    let ymax = series.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput (successful requests per second)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("req/s")
        .draw()?;
    for (i, (r, pts)) in runs.iter().zip(series).enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn latency_time_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[&SystemRun],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let pts = |r: &SystemRun, f: fn(&crate::stats::SecondPoint) -> u64| -> Vec<(f64, f64)> {
        r.summary
            .as_ref()
            .map(|s| {
                s.series
                    .iter()
                    .filter(|p| p.ok > 0)
                    .map(|p| (p.t as f64 + 0.5, (f(p) as f64 / 1000.0).max(0.001)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let all: Vec<(f64, f64)> = runs.iter().flat_map(|r| pts(r, |p| p.max_us)).collect();
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max) + 0.5;
    let ymax = all.iter().map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let ymin = runs
        .iter()
        .flat_map(|r| pts(r, |p| p.p50_us))
        .map(|p| p.1)
        .fold(ymax, f64::min)
        .max(0.001)
        / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Latency per second: p50 (thin), p99 (thick), max (dotted) — ms, log scale",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("ms")
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart.draw_series(LineSeries::new(pts(r, |p| p.p50_us), c.stroke_width(1)))?;
        chart
            .draw_series(LineSeries::new(pts(r, |p| p.p99_us), c.stroke_width(3)))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(
            pts(r, |p| p.max_us)
                .into_iter()
                .map(|p| Circle::new(p, 2, c.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// x position of percentile `q` on a "nines" axis: -log10(1 - q/100).
fn nines(q: f64) -> f64 {
    -(1.0 - (q / 100.0).min(0.999_999)).log10()
}

fn distribution_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[&SystemRun],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let pts = |r: &SystemRun| -> Vec<(f64, f64)> {
        r.summary
            .as_ref()
            .map(|s| {
                s.spectrum
                    .iter()
                    .map(|&(q, v)| (nines(q), (v as f64 / 1000.0).max(0.001)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let all: Vec<(f64, f64)> = runs.iter().flat_map(|r| pts(r)).collect();
    let ymax = all.iter().map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let ymin = all.iter().map(|p| p.1).fold(ymax, f64::min).max(0.001) / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Latency distribution (ms, log) by percentile",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..6.0, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_labels(7)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0".into(),
            1 => "90".into(),
            2 => "99".into(),
            3 => "99.9".into(),
            4 => "99.99".into(),
            5 => "99.999".into(),
            _ => "99.9999".into(),
        })
        .draw()?;
    for (i, r) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts(r), c.stroke_width(2)))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn flush_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[&SystemRun],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let all: Vec<(f64, f64)> = runs
        .iter()
        .flat_map(|r| r.flushes.iter().map(|f| (f.start_s, f.batch_s * 1000.0)))
        .collect();
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max) + 1.0;
    let ymax = all.iter().map(|p| p.1).fold(1000.0, f64::max) * 2.0;
    let ymin = all.iter().map(|p| p.1).fold(ymax, f64::min).max(0.01) / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "HM9000 listener: batch time per 1-s flush (ms, log); black line = freshness window",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("ms")
        .draw()?;
    chart.draw_series(LineSeries::new(
        vec![(0.0, 1000.0), (xmax, 1000.0)],
        BLACK.stroke_width(1),
    ))?;
    for (i, r) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = r
            .flushes
            .iter()
            .map(|f| (f.start_s, (f.batch_s * 1000.0).max(0.01)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_and_latencies() {
        assert_eq!(
            (num(1234567.4), num(99.5), num(100.0)),
            (
                "1,234,567".to_string(),
                "99.50".to_string(),
                "100".to_string()
            )
        );
        assert_eq!(
            (us(999), us(1500), us(25_000), us(12_000_000)),
            (
                "999 µs".into(),
                "1.50 ms".into(),
                "25.0 ms".into(),
                "12.0 s".into()
            )
        );
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
    }
}
