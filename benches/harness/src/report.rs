//! Figures per peer, the markdown table, the SVG chart and the JSON summary of a scenario.
//!
//! A scenario may run several times (`--repeat`): each peer then has one [`PeerResult`] per run,
//! gathered in a [`PeerRow`], whose table shows the median of each figure and whose spread table
//! shows every run's value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::{Value, json};

use crate::peer::{BASELINE, Peer};
use crate::stats;

/// Where one labelled stream's traffic landed in one run (e.g. the heavy tenant of `skew`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// The stream's label.
    pub label: String,
    /// Connections per worker, in worker order.
    pub conns: Vec<u64>,
    /// Successful requests per worker, in worker order.
    pub requests: Vec<u64>,
    /// The stream's own p99 (ms), and that of every other stream of the run together: in
    /// `skew`, the heavy tenant's own tail and the light tenant's.
    pub p99_ms: Option<f64>,
    pub others_p99_ms: Option<f64>,
}

/// What one peer achieved in one run of a scenario.
#[derive(Debug, Clone, Default)]
pub struct PeerResult {
    /// The mode the server reported (first line, or the snapshot when it differs, e.g. a fallback).
    pub mode: String,
    /// Why the peer produced no figures, when it did not.
    pub failure: Option<String>,
    pub ok: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Per-worker connection counts: SD and max/mean, and where they came from.
    pub conn_sd: Option<f64>,
    pub conn_max_mean: Option<f64>,
    pub conn_source: &'static str,
    /// Per-worker busy time over the run: SD in milliseconds.
    pub busy_sd_ms: Option<f64>,
    pub slow: u64,
    pub errors: u64,
    /// Failures by kind, for the notes under the table.
    pub error_kinds: String,
    /// Arrivals scheduled per second of the window.
    pub offered_rps: f64,
    /// The generator's wake-up lateness: p99 and max, in milliseconds.
    pub wake_p99_ms: f64,
    pub wake_max_ms: f64,
    /// CPU the server used during the run, as a share of its workers (1.0: every worker busy).
    pub server_cpu: Option<f64>,
    /// CPU the generator used during the run, as a share of one core.
    pub generator_cpu: Option<f64>,
    /// Where the labelled streams landed.
    pub placements: Vec<Placement>,
    /// Free-form remarks (hung worker, cross-checks).
    pub notes: Vec<String>,
}

impl PeerResult {
    /// True when the peer answered at least one request.
    pub fn served(&self) -> bool {
        self.failure.is_none() && self.ok > 0
    }
}

/// One peer's runs of one scenario, in run order.
#[derive(Debug, Clone)]
pub struct PeerRow {
    pub peer: Peer,
    pub runs: Vec<PeerResult>,
    /// Remarks about the peer as a whole (e.g. a cross-check run once).
    pub notes: Vec<String>,
}

/// A figure of one run, `None` when the run has none.
type Figure = fn(&PeerResult) -> Option<f64>;

impl PeerRow {
    /// A row without runs yet.
    pub fn new(peer: Peer) -> Self {
        Self { peer, runs: Vec::new(), notes: Vec::new() }
    }

    /// The runs that served.
    pub fn served_runs(&self) -> impl Iterator<Item = &PeerResult> {
        self.runs.iter().filter(|r| r.served())
    }

    /// True when at least one run served.
    pub fn served(&self) -> bool {
        self.served_runs().next().is_some()
    }

    /// True when every run served.
    pub fn served_every_run(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(PeerResult::served)
    }

    /// Why no run produced figures, when none did.
    pub fn failure(&self) -> Option<String> {
        if self.served() {
            return None;
        }
        let mut why: Vec<String> = self.runs.iter().filter_map(|r| r.failure.clone()).collect();
        why.dedup();
        Some(if why.is_empty() { "no run".to_owned() } else { why.join("; ") })
    }

    /// The modes the runs reported, e.g. `hermes`, or `hermes/kernel-hash` when they differ.
    pub fn mode(&self) -> String {
        let mut modes: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !modes.contains(&r.mode.as_str()) {
                modes.push(&r.mode);
            }
        }
        if modes.is_empty() { self.peer.to_string() } else { modes.join("/") }
    }

    /// A figure of every run that served, in run order.
    pub fn values(&self, f: Figure) -> Vec<f64> {
        self.served_runs().filter_map(f).collect()
    }

    /// A figure of every run, `None` for the runs that did not serve.
    pub fn per_run(&self, f: Figure) -> Vec<Option<f64>> {
        self.runs.iter().map(|r| if r.served() { f(r) } else { None }).collect()
    }

    /// The median of a figure over the runs that served.
    pub fn median(&self, f: Figure) -> Option<f64> {
        stats::median(&self.values(f))
    }
}

/// The figures of the table and the summary.
pub mod fig {
    use super::PeerResult;

    pub fn rps(r: &PeerResult) -> Option<f64> {
        Some(r.throughput)
    }
    pub fn p50(r: &PeerResult) -> Option<f64> {
        Some(r.p50_ms)
    }
    pub fn p99(r: &PeerResult) -> Option<f64> {
        Some(r.p99_ms)
    }
    pub fn p999(r: &PeerResult) -> Option<f64> {
        Some(r.p999_ms)
    }
    pub fn max(r: &PeerResult) -> Option<f64> {
        Some(r.max_ms)
    }
    pub fn conn_sd(r: &PeerResult) -> Option<f64> {
        r.conn_sd
    }
    pub fn conn_max_mean(r: &PeerResult) -> Option<f64> {
        r.conn_max_mean
    }
    pub fn busy_sd(r: &PeerResult) -> Option<f64> {
        r.busy_sd_ms
    }
    pub fn slow(r: &PeerResult) -> Option<f64> {
        Some(r.slow as f64)
    }
    pub fn errors(r: &PeerResult) -> Option<f64> {
        Some(r.errors as f64)
    }
    pub fn offered(r: &PeerResult) -> Option<f64> {
        Some(r.offered_rps)
    }
    pub fn wake_p99(r: &PeerResult) -> Option<f64> {
        Some(r.wake_p99_ms)
    }
    pub fn wake_max(r: &PeerResult) -> Option<f64> {
        Some(r.wake_max_ms)
    }
    pub fn server_cpu(r: &PeerResult) -> Option<f64> {
        r.server_cpu
    }
    pub fn generator_cpu(r: &PeerResult) -> Option<f64> {
        r.generator_cpu
    }
}

/// A figure and its ratio to the baseline's, e.g. `12.3 (1.05×)`.
fn with_ratio(value: Option<f64>, base: Option<f64>, digits: usize) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) => match base {
            Some(b) if b > 0.0 => format!("{v:.digits$} ({:.2}×)", v / b),
            _ => format!("{v:.digits$}"),
        },
    }
}

/// A count, or a median of counts (which may be a half).
fn count(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// Values of every run, e.g. `21.3, 150.2, –`.
fn list(values: &[Option<f64>], digits: usize) -> String {
    values
        .iter()
        .map(|v| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".to_owned()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `min–max` of the values, or the one value.
fn range(values: &[f64], digits: usize) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match values.len() {
        0 => "–".to_owned(),
        1 => format!("{lo:.digits$}"),
        _ => format!("{lo:.digits$}–{hi:.digits$}"),
    }
}

/// `[2, 0]`.
fn vector(v: &[u64]) -> String {
    format!("[{}]", v.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
}

/// The markdown report of one scenario.
pub fn markdown(scenario: &str, description: &str, header: &str, rows: &[PeerRow]) -> String {
    let base = rows.iter().find(|r| r.peer == BASELINE && r.served());
    let b = |f: Figure| base.and_then(|r| r.median(f));
    let repeats = rows.iter().map(|r| r.runs.len()).max().unwrap_or(0);
    let mut s = String::new();
    let _ = writeln!(s, "## Scenario `{scenario}`\n");
    let _ = writeln!(s, "{description}.\n");
    let _ = writeln!(s, "{header}\n");
    if repeats > 1 {
        let _ = writeln!(
            s,
            "Each peer ran {repeats} times, the peers interleaved within each run; the table shows the \
             median of each figure, the spread table below every run's value.\n"
        );
    }
    let _ = writeln!(
        s,
        "| peer | mode | req/s | p50 ms | p99 ms | p99.9 ms | conns/worker SD | conns max/mean | busy SD ms | >1 s | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        if let Some(f) = r.failure() {
            let _ = writeln!(
                s,
                "| {} | {} | failed: {} | | | | | | | | |",
                r.peer,
                r.mode(),
                f.replace('|', "/")
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.peer,
            r.mode(),
            with_ratio(r.median(fig::rps), b(fig::rps), 0),
            with_ratio(r.median(fig::p50), b(fig::p50), 2),
            with_ratio(r.median(fig::p99), b(fig::p99), 2),
            with_ratio(r.median(fig::p999), b(fig::p999), 2),
            with_ratio(r.median(fig::conn_sd), b(fig::conn_sd), 1),
            with_ratio(r.median(fig::conn_max_mean), b(fig::conn_max_mean), 2),
            with_ratio(r.median(fig::busy_sd), b(fig::busy_sd), 1),
            count(r.median(fig::slow)),
            count(r.median(fig::errors)),
        );
    }
    let _ = writeln!(
        s,
        "\nRatios in parentheses are against `{BASELINE}`. Latency runs from each request's scheduled \
         send time (open loop, Poisson arrivals), so stalls are not hidden by coordinated omission."
    );
    if repeats > 1 {
        let _ = writeln!(s, "\n### Spread over {repeats} runs\n");
        let _ = writeln!(
            s,
            "| peer | req/s min–max | p50 ms min–max | p99 ms by run | >1 s by run | errors by run |"
        );
        let _ = writeln!(s, "|---|---:|---:|---|---|---|");
        for r in rows.iter().filter(|r| r.served()) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.peer,
                range(&r.values(fig::rps), 0),
                range(&r.values(fig::p50), 2),
                list(&r.per_run(fig::p99), 2),
                list(&r.per_run(fig::slow), 0),
                list(&r.per_run(fig::errors), 0),
            );
        }
    }
    let mut notes = Vec::new();
    for r in rows {
        if !r.served() {
            continue;
        }
        let conn_sources: Vec<&str> = dedup(r.served_runs().map(|x| x.conn_source));
        let max = r.values(fig::max).iter().copied().fold(0.0, f64::max);
        notes.push(format!(
            "`{}`: connection counts from {}; max latency {max:.1} ms",
            r.peer,
            conn_sources.join(" or ")
        ));
        notes.push(format!(
            "`{}`: offered {} req/s, completed {} req/s in the window; generator wake-up lateness p99 {} ms, \
             max {} ms; CPU: server {} of its workers, generator {} of a core{}",
            r.peer,
            count(r.median(fig::offered).map(f64::round)),
            count(r.median(fig::rps).map(f64::round)),
            r.median(fig::wake_p99).map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".to_owned()),
            r.median(fig::wake_max).map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".to_owned()),
            percent(r.median(fig::server_cpu)),
            percent(r.median(fig::generator_cpu)),
            if repeats > 1 { " (medians)" } else { "" },
        ));
        // Run-specific remarks: shown once when every run made them, else with their runs.
        let mut seen: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, run) in r.runs.iter().enumerate() {
            let mut texts = run.notes.clone();
            if !run.error_kinds.is_empty() {
                texts.push(format!("errors: {}", run.error_kinds));
            }
            if let Some(f) = &run.failure {
                texts.push(format!("failed: {f}"));
            }
            for t in texts {
                match seen.iter_mut().find(|(n, _)| *n == t) {
                    Some((_, runs)) => runs.push(i + 1),
                    None => seen.push((t, vec![i + 1])),
                }
            }
        }
        for (t, runs) in seen {
            if runs.len() == r.runs.len() {
                notes.push(format!("`{}`: {t}", r.peer));
            } else {
                let which = runs.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                notes.push(format!("`{}` (run {which}): {t}", r.peer));
            }
        }
        for n in &r.notes {
            notes.push(format!("`{}`: {n}", r.peer));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(s);
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    let placement = placement_notes(rows);
    if !placement.is_empty() {
        let _ = writeln!(s, "\n### Where the labelled streams landed\n");
        for n in placement {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "–".to_owned())
}

/// Per peer and label: each run's per-worker connections and requests with its p99, then the runs
/// grouped by the shape of the connection placement (counts sorted, largest first), so a bimodal
/// figure shows as two groups with their own p99s.
fn placement_notes(rows: &[PeerRow]) -> Vec<String> {
    let mut notes = Vec::new();
    for r in rows {
        let labels: Vec<&str> =
            dedup(r.served_runs().flat_map(|x| x.placements.iter().map(|p| p.label.as_str())));
        for label in labels {
            let mut runs = Vec::new();
            let mut shapes: Vec<(Vec<u64>, Vec<f64>)> = Vec::new();
            for (i, run) in r.runs.iter().enumerate() {
                let Some(p) = run.placements.iter().find(|p| p.label == label).filter(|_| run.served())
                else {
                    continue;
                };
                let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
                runs.push(format!(
                    "run {}: {} on {}, requests {}, p99 {:.2} ms ({label} {} ms, the others {} ms)",
                    i + 1,
                    label,
                    vector(&p.conns),
                    vector(&p.requests),
                    run.p99_ms,
                    ms(p.p99_ms),
                    ms(p.others_p99_ms),
                ));
                let mut shape = p.conns.clone();
                shape.sort_unstable_by(|a, b| b.cmp(a));
                match shapes.iter_mut().find(|(s, _)| *s == shape) {
                    Some((_, p99s)) => p99s.push(run.p99_ms),
                    None => shapes.push((shape, vec![run.p99_ms])),
                }
            }
            notes.push(format!("`{}`: {}", r.peer, runs.join("; ")));
            if r.runs.len() > 1 {
                let groups = shapes
                    .iter()
                    .map(|(shape, p99s)| {
                        format!(
                            "{} ×{} (p99 {} ms)",
                            vector(shape),
                            p99s.len(),
                            p99s.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" / ");
                notes.push(format!("`{}`: {label} connections per worker, largest first: {groups}", r.peer));
            }
        }
    }
    notes
}

/// One scenario's entry of `summary.json`: per peer the medians of `p99_ms`, `p50_ms`, `rps`,
/// `over_1s` and `errors` (`null` when no run served), each also per run (`..._runs`, `null` for a
/// run that failed), and the labelled streams' placement per run.
pub fn summary_json(description: &str, workers: usize, rows: &[PeerRow]) -> Value {
    let mut peers = serde_json::Map::new();
    for r in rows {
        let mut p = serde_json::Map::new();
        let figures: [(&str, Figure); 10] = [
            ("p99_ms", fig::p99),
            ("p50_ms", fig::p50),
            ("rps", fig::rps),
            ("over_1s", fig::slow),
            ("errors", fig::errors),
            ("p999_ms", fig::p999),
            ("offered_rps", fig::offered),
            ("generator_wake_p99_ms", fig::wake_p99),
            ("server_cpu", fig::server_cpu),
            ("generator_cpu", fig::generator_cpu),
        ];
        // Microseconds are the histograms' resolution: three decimals of a millisecond.
        let round = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
        for (name, f) in figures {
            p.insert(name.to_owned(), json!(round(r.median(f))));
            p.insert(format!("{name}_runs"), json!(r.per_run(f).into_iter().map(round).collect::<Vec<_>>()));
        }
        p.insert("mode".to_owned(), json!(r.mode()));
        p.insert("runs".to_owned(), json!(r.runs.len()));
        p.insert("runs_failed".to_owned(), json!(r.runs.iter().filter(|x| !x.served()).count()));
        let failures: Vec<String> = r.runs.iter().filter_map(|x| x.failure.clone()).collect();
        if !failures.is_empty() {
            p.insert("failures".to_owned(), json!(failures));
        }
        #[allow(clippy::type_complexity)]
        let mut by_label: BTreeMap<
            &str,
            (Vec<Value>, Vec<Value>, Vec<Option<f64>>, Vec<Option<f64>>),
        > = BTreeMap::new();
        for run in &r.runs {
            for pl in &run.placements {
                by_label.entry(&pl.label).or_default();
            }
        }
        for (label, (conns, requests, own, others)) in by_label.iter_mut() {
            for run in &r.runs {
                let pl = run.placements.iter().find(|p| p.label == *label).filter(|_| run.served());
                conns.push(json!(pl.map(|p| &p.conns)));
                requests.push(json!(pl.map(|p| &p.requests)));
                own.push(pl.and_then(|p| p.p99_ms));
                others.push(pl.and_then(|p| p.others_p99_ms));
            }
        }
        let median = |v: &[Option<f64>]| stats::median(&v.iter().flatten().copied().collect::<Vec<_>>());
        for (label, (conns, requests, own, others)) in by_label {
            p.insert(format!("{label}_conns_per_worker_runs"), Value::Array(conns));
            p.insert(format!("{label}_requests_per_worker_runs"), Value::Array(requests));
            p.insert(format!("{label}_p99_ms"), json!(round(median(&own))));
            p.insert(format!("{label}_p99_ms_runs"), json!(own.into_iter().map(round).collect::<Vec<_>>()));
            p.insert(format!("{label}_others_p99_ms"), json!(round(median(&others))));
            p.insert(
                format!("{label}_others_p99_ms_runs"),
                json!(others.into_iter().map(round).collect::<Vec<_>>()),
            );
        }
        peers.insert(r.peer.to_string(), Value::Object(p));
    }
    json!({
        "description": description,
        "workers": workers,
        "repeat": rows.iter().map(|r| r.runs.len()).max().unwrap_or(0),
        "peers": peers,
    })
}

/// Writes the SVG chart of one scenario: throughput, and p50/p99/p99.9 per peer (medians, with
/// the p99's min–max over the runs as a whisker when there are several).
pub fn svg(path: &Path, scenario: &str, rows: &[PeerRow]) -> io::Result<()> {
    let served: Vec<&PeerRow> = rows.iter().filter(|r| r.served()).collect();
    draw(path, scenario, &served).map_err(|e| io::Error::other(format!("drawing {}: {e}", path.display())))
}

/// A latency series of the chart: its name, colour and figure.
type Series = (&'static str, RGBColor, Figure);

fn draw(path: &Path, scenario: &str, rs: &[&PeerRow]) -> Result<(), Box<dyn std::error::Error>> {
    let med = |r: &PeerRow, f: Figure| r.median(f).unwrap_or(0.0);
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("hermes-bench: {scenario}"), ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(360);
    let n = rs.len().max(1) as f64;
    let names: Vec<String> = rs.iter().map(|r| r.peer.to_string()).collect();
    let label = move |x: &f64| {
        let i = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 1e-6 {
            names.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };

    let top = rs.iter().map(|r| med(r, fig::rps)).fold(0.0, f64::max).max(1.0) * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput (req/s)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    chart.configure_mesh().disable_x_mesh().x_labels(rs.len() * 2 + 1).x_label_formatter(&label).draw()?;
    chart.draw_series(rs.iter().enumerate().map(|(i, r)| {
        Rectangle::new([(i as f64 + 0.2, 0.0), (i as f64 + 0.8, med(r, fig::rps))], BLUE.filled())
    }))?;

    // Logarithmic: a stalled peer's tail is three orders of magnitude above a healthy one's.
    let highest = |f: Figure| rs.iter().flat_map(|r| r.values(f)).fold(0.0, f64::max);
    let top = highest(fig::p999).max(highest(fig::p99)).max(0.1) * 1.5;
    let floor = rs.iter().map(|r| med(r, fig::p50)).fold(f64::MAX, f64::min).clamp(0.01, top / 10.0) / 2.0;
    let mut chart = ChartBuilder::on(&right)
        .caption("latency (ms, log scale): p50, p99, p99.9", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..n, (floor..top).log_scale())?;
    chart.configure_mesh().disable_x_mesh().x_labels(rs.len() * 2 + 1).x_label_formatter(&label).draw()?;
    let series: [Series; 3] =
        [("p50", GREEN, fig::p50), ("p99", RGBColor(230, 150, 0), fig::p99), ("p99.9", RED, fig::p999)];
    for (k, (name, color, f)) in series.into_iter().enumerate() {
        let x0 = 0.15 + 0.23 * k as f64;
        chart
            .draw_series(rs.iter().enumerate().map(move |(i, r)| {
                Rectangle::new(
                    [(i as f64 + x0, floor), (i as f64 + x0 + 0.22, med(r, f).max(floor))],
                    color.filled(),
                )
            }))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    // The p99's spread over the runs.
    chart.draw_series(rs.iter().enumerate().filter(|(_, r)| r.values(fig::p99).len() > 1).map(
        |(i, r)| {
            let v = r.values(fig::p99);
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min).max(floor);
            let hi = v.iter().copied().fold(0.0, f64::max).max(floor);
            let x = i as f64 + 0.15 + 0.23 + 0.11;
            PathElement::new(vec![(x, lo), (x, hi)], BLACK.stroke_width(2))
        },
    ))?;
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    root.present()?;
    Ok(())
}

/// Writes the scenario's markdown and SVG into `out`; returns both paths.
pub fn write(
    out: &Path,
    scenario: &str,
    description: &str,
    header: &str,
    rows: &[PeerRow],
) -> io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let md = out.join(format!("{scenario}.md"));
    let chart = out.join(format!("{scenario}.svg"));
    let mut text = markdown(scenario, description, header, rows);
    let _ = writeln!(text, "\n![{scenario}]({scenario}.svg)");
    std::fs::write(&md, text)?;
    svg(&chart, scenario, rows)?;
    Ok((md, chart))
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    fn result(peer: &str, throughput: f64, p99: f64) -> PeerResult {
        PeerResult {
            mode: peer.to_owned(),
            ok: 10,
            throughput,
            p50_ms: 1.0,
            p99_ms: p99,
            p999_ms: p99 * 2.0,
            conn_source: "stats",
            ..Default::default()
        }
    }

    fn row(runs: Vec<PeerResult>) -> PeerRow {
        let peer = Peer::from_str(&runs[0].mode, false).expect("a peer's name");
        PeerRow { peer, runs, notes: Vec::new() }
    }

    #[test]
    fn table_has_ratios_against_hermes() {
        let md = markdown(
            "light",
            "d",
            "h",
            &[row(vec![result("hermes", 1000.0, 2.0)]), row(vec![result("tokio", 900.0, 4.0)])],
        );
        assert!(md.contains("| tokio | tokio | 900 (0.90×) | 1.00 (1.00×) | 4.00 (2.00×)"), "{md}");
        assert!(!md.contains("Spread over"), "{md}");
    }

    #[test]
    fn repeated_runs_show_medians_and_every_value() {
        let hermes = row(vec![
            result("hermes", 1000.0, 2.0),
            result("hermes", 1100.0, 8.0),
            result("hermes", 1050.0, 3.0),
        ]);
        let mut failed = result("tokio", 0.0, 0.0);
        failed.failure = Some("did not start".to_owned());
        let tokio = row(vec![result("tokio", 900.0, 4.0), failed, result("tokio", 950.0, 6.0)]);
        let md = markdown("mixed", "d", "h", &[hermes.clone(), tokio.clone()]);
        // Medians: hermes p99 3 of (2, 8, 3); tokio over its two served runs, (4 + 6) / 2 = 5.
        assert!(md.contains("| hermes | hermes | 1050 (1.00×) | 1.00 (1.00×) | 3.00 (1.00×)"), "{md}");
        assert!(md.contains("| tokio | tokio | 925 (0.88×) | 1.00 (1.00×) | 5.00 (1.67×)"), "{md}");
        assert!(md.contains("| hermes | 1000–1100 | 1.00–1.00 | 2.00, 8.00, 3.00 |"), "{md}");
        assert!(md.contains("| tokio | 900–950 | 1.00–1.00 | 4.00, –, 6.00 |"), "{md}");
        assert!(md.contains("`tokio` (run 2): failed: did not start"), "{md}");

        let v = summary_json("d", 2, &[hermes, tokio]);
        assert_eq!(v["workers"], 2);
        assert_eq!(v["peers"]["hermes"]["p99_ms"], 3.0);
        assert_eq!(v["peers"]["hermes"]["p99_ms_runs"], json!([2.0, 8.0, 3.0]));
        assert_eq!(v["peers"]["tokio"]["p99_ms"], 5.0);
        assert_eq!(v["peers"]["tokio"]["p99_ms_runs"], json!([4.0, null, 6.0]));
        assert_eq!(v["peers"]["tokio"]["runs_failed"], 1);
        for key in ["p99_ms", "p50_ms", "rps", "over_1s", "errors"] {
            assert!(v["peers"]["tokio"][key].is_number(), "{key}: {v}");
        }
    }

    #[test]
    fn placements_group_runs_by_shape() {
        let run = |conns: Vec<u64>, requests: Vec<u64>, p99: f64| {
            let mut r = result("hermes", 1000.0, p99);
            r.placements.push(Placement {
                label: "heavy".to_owned(),
                conns,
                requests,
                p99_ms: Some(p99 + 5.0),
                others_p99_ms: Some(p99 / 10.0),
            });
            r
        };
        let hermes = row(vec![
            run(vec![2, 0], vec![400, 0], 150.0),
            run(vec![1, 1], vec![210, 190], 21.0),
            run(vec![0, 2], vec![0, 399], 160.0),
        ]);
        let md = markdown("skew", "d", "h", std::slice::from_ref(&hermes));
        assert!(
            md.contains("run 1: heavy on [2, 0], requests [400, 0], p99 150.00 ms (heavy 155.00 ms, the others 15.00 ms)"),
            "{md}"
        );
        assert!(md.contains("[2, 0] ×2 (p99 150.0, 160.0 ms) / [1, 1] ×1 (p99 21.0 ms)"), "{md}");
        let v = summary_json("d", 2, &[hermes]);
        assert_eq!(v["peers"]["hermes"]["heavy_conns_per_worker_runs"], json!([[2, 0], [1, 1], [0, 2]]));
        assert_eq!(v["peers"]["hermes"]["heavy_requests_per_worker_runs"][1], json!([210, 190]));
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms_runs"], json!([155.0, 26.0, 165.0]));
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms"], 155.0);
        assert_eq!(v["peers"]["hermes"]["heavy_others_p99_ms"], 15.0);
    }

    #[test]
    fn stream_medians_of_an_even_count_are_the_mean_of_the_middle_two() {
        let run = |p99: f64| {
            let mut r = result("hermes", 1000.0, p99);
            r.placements.push(Placement {
                label: "heavy".to_owned(),
                p99_ms: Some(p99),
                ..Default::default()
            });
            r
        };
        let v = summary_json("d", 2, &[row(vec![run(10.0), run(20.0)])]);
        assert_eq!(v["peers"]["hermes"]["heavy_p99_ms"], 15.0);
        assert_eq!(v["peers"]["hermes"]["p99_ms"], 15.0);
    }

    #[test]
    fn writes_markdown_and_svg() {
        let dir = std::env::temp_dir().join(format!("hermes-bench-report-{}", std::process::id()));
        let rows = [
            row(vec![result("hermes", 1000.0, 2.0), result("hermes", 1000.0, 5.0)]),
            row(vec![result("ntex", 1100.0, 1.0), result("ntex", 1100.0, 1.5)]),
        ];
        let (md, chart) = write(&dir, "light", "d", "h", &rows).unwrap();
        assert!(std::fs::read_to_string(md).unwrap().contains("ntex"));
        assert!(std::fs::read_to_string(chart).unwrap().starts_with("<svg"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
