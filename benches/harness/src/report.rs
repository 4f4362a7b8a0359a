//! Figures per peer, the markdown table and the SVG chart of a scenario.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::peer::BASELINE;

/// What one peer achieved in one scenario.
#[derive(Debug, Clone, Default)]
pub struct PeerResult {
    pub peer: String,
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
    /// Free-form remarks (hung worker, cross-checks).
    pub notes: Vec<String>,
}

impl PeerResult {
    /// True when the peer answered at least one request.
    pub fn served(&self) -> bool {
        self.failure.is_none() && self.ok > 0
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

/// The markdown report of one scenario.
pub fn markdown(scenario: &str, description: &str, header: &str, results: &[PeerResult]) -> String {
    let base = results.iter().find(|r| r.peer == BASELINE && r.served());
    let b = |f: fn(&PeerResult) -> Option<f64>| base.and_then(f);
    let mut s = String::new();
    let _ = writeln!(s, "## Scenario `{scenario}`\n");
    let _ = writeln!(s, "{description}.\n");
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(
        s,
        "| peer | mode | req/s | p50 ms | p99 ms | p99.9 ms | conns/worker SD | conns max/mean | busy SD ms | >1 s | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        if let Some(f) = &r.failure {
            let _ =
                writeln!(s, "| {} | {} | failed: {} | | | | | | | | |", r.peer, r.mode, f.replace('|', "/"));
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.peer,
            r.mode,
            with_ratio(Some(r.throughput), b(|r| Some(r.throughput)), 0),
            with_ratio(Some(r.p50_ms), b(|r| Some(r.p50_ms)), 2),
            with_ratio(Some(r.p99_ms), b(|r| Some(r.p99_ms)), 2),
            with_ratio(Some(r.p999_ms), b(|r| Some(r.p999_ms)), 2),
            with_ratio(r.conn_sd, b(|r| r.conn_sd), 1),
            with_ratio(r.conn_max_mean, b(|r| r.conn_max_mean), 2),
            with_ratio(r.busy_sd_ms, b(|r| r.busy_sd_ms), 1),
            r.slow,
            r.errors,
        );
    }
    let _ = writeln!(
        s,
        "\nRatios in parentheses are against `{BASELINE}`. Latency runs from each request's scheduled \
         send time (open loop, Poisson arrivals), so stalls are not hidden by coordinated omission."
    );
    let mut notes = Vec::new();
    for r in results {
        if r.failure.is_some() {
            continue;
        }
        notes.push(format!(
            "`{}`: connection counts from {}; max latency {:.1} ms{}",
            r.peer,
            r.conn_source,
            r.max_ms,
            if r.error_kinds.is_empty() { String::new() } else { format!("; errors: {}", r.error_kinds) }
        ));
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
    s
}

/// Writes the SVG chart of one scenario: throughput, and p50/p99/p99.9 per peer.
pub fn svg(path: &Path, scenario: &str, results: &[PeerResult]) -> io::Result<()> {
    let served: Vec<&PeerResult> = results.iter().filter(|r| r.served()).collect();
    draw(path, scenario, &served).map_err(|e| io::Error::other(format!("drawing {}: {e}", path.display())))
}

/// A latency series of the chart: its name, colour and figure.
type Series = (&'static str, RGBColor, fn(&PeerResult) -> f64);

fn draw(path: &Path, scenario: &str, rs: &[&PeerResult]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("hermes-bench: {scenario}"), ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(360);
    let n = rs.len().max(1) as f64;
    let names: Vec<String> = rs.iter().map(|r| r.peer.clone()).collect();
    let label = move |x: &f64| {
        let i = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 1e-6 {
            names.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };

    let top = rs.iter().map(|r| r.throughput).fold(0.0, f64::max).max(1.0) * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput (req/s)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    chart.configure_mesh().disable_x_mesh().x_labels(rs.len() * 2 + 1).x_label_formatter(&label).draw()?;
    chart.draw_series(rs.iter().enumerate().map(|(i, r)| {
        Rectangle::new([(i as f64 + 0.2, 0.0), (i as f64 + 0.8, r.throughput)], BLUE.filled())
    }))?;

    // Logarithmic: a stalled peer's tail is three orders of magnitude above a healthy one's.
    let top = rs.iter().map(|r| r.p999_ms).fold(0.0, f64::max).max(0.1) * 1.5;
    let floor = rs.iter().map(|r| r.p50_ms).fold(f64::MAX, f64::min).clamp(0.01, top / 10.0) / 2.0;
    let mut chart = ChartBuilder::on(&right)
        .caption("latency (ms, log scale): p50, p99, p99.9", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..n, (floor..top).log_scale())?;
    chart.configure_mesh().disable_x_mesh().x_labels(rs.len() * 2 + 1).x_label_formatter(&label).draw()?;
    let series: [Series; 3] = [
        ("p50", GREEN, |r| r.p50_ms),
        ("p99", RGBColor(230, 150, 0), |r| r.p99_ms),
        ("p99.9", RED, |r| r.p999_ms),
    ];
    for (k, (name, color, f)) in series.into_iter().enumerate() {
        let x0 = 0.15 + 0.23 * k as f64;
        chart
            .draw_series(rs.iter().enumerate().map(move |(i, r)| {
                Rectangle::new(
                    [(i as f64 + x0, floor), (i as f64 + x0 + 0.22, f(r).max(floor))],
                    color.filled(),
                )
            }))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
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
    results: &[PeerResult],
) -> io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let md = out.join(format!("{scenario}.md"));
    let chart = out.join(format!("{scenario}.svg"));
    let mut text = markdown(scenario, description, header, results);
    let _ = writeln!(text, "\n![{scenario}]({scenario}.svg)");
    std::fs::write(&md, text)?;
    svg(&chart, scenario, results)?;
    Ok((md, chart))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(peer: &str, throughput: f64, p99: f64) -> PeerResult {
        PeerResult {
            peer: peer.to_owned(),
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

    #[test]
    fn table_has_ratios_against_hermes() {
        let md = markdown("light", "d", "h", &[result("hermes", 1000.0, 2.0), result("tokio", 900.0, 4.0)]);
        assert!(md.contains("| tokio | tokio | 900 (0.90×) | 1.00 (1.00×) | 4.00 (2.00×)"), "{md}");
    }

    #[test]
    fn writes_markdown_and_svg() {
        let dir = std::env::temp_dir().join(format!("hermes-bench-report-{}", std::process::id()));
        let (md, chart) =
            write(&dir, "light", "d", "h", &[result("hermes", 1000.0, 2.0), result("ntex", 1100.0, 1.0)])
                .unwrap();
        assert!(std::fs::read_to_string(md).unwrap().contains("ntex"));
        assert!(std::fs::read_to_string(chart).unwrap().starts_with("<svg"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
