//! The SVG chart of a scenario.

use std::io;
use std::path::Path;

use plotters::prelude::*;

use super::ScenarioReport;
use super::figures::{Figure, PeerRow, fig};

/// Writes the SVG chart of one scenario: throughput, and p50/p99/p99.9 per peer (medians, with
/// the p99's min–max over the runs as a whisker when there are several).
pub(super) fn svg(path: &Path, report: &ScenarioReport<'_>) -> io::Result<()> {
    let served: Vec<&PeerRow> = report.rows.iter().filter(|r| r.served()).collect();
    draw(path, report.name, &served).map_err(|e| io::Error::other(format!("drawing {}: {e}", path.display())))
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
