//! The percentile chart of a scenario: latency by percentile, one line per peer, both axes
//! logarithmic (the percentile axis as `1 / (1 - p)`, so that 90%, 99%, 99.9% and 99.99% are
//! equally spaced), beside the bars of `svg.rs`.

use std::io;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use plotters::prelude::*;

use super::ScenarioReport;
use super::figures::PeerRow;
use crate::peer::Peer;

/// The colour of each peer, in the order of [`Peer`]'s variants: the same in every chart.
const COLOURS: [RGBColor; 11] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
    RGBColor(44, 160, 44),
    RGBColor(31, 119, 180),
    RGBColor(0, 0, 0),
    RGBColor(188, 189, 34),
    RGBColor(227, 119, 194),
];

fn colour(peer: Peer) -> RGBColor {
    let i = Peer::value_variants().iter().position(|p| *p == peer).unwrap_or(0);
    COLOURS[i % COLOURS.len()]
}

/// Where the chart of report `name` goes.
pub(super) fn path(out: &Path, name: &str) -> PathBuf {
    out.join(format!("{name}-percentiles.svg"))
}

/// Writes the chart: for each peer that served, its latency at each percentile (the median over
/// its runs).
pub(super) fn svg(path: &Path, report: &ScenarioReport<'_>) -> io::Result<()> {
    let served: Vec<&PeerRow> = report.rows.iter().filter(|r| r.served()).collect();
    draw(path, report.name, &served).map_err(|e| io::Error::other(format!("drawing {}: {e}", path.display())))
}

/// The percentile axis' position of percentile `p`: `1 / (1 - p)`, 2 for the median, 100 for
/// the 99th.
fn position(p: f64) -> f64 {
    100.0 / (100.0 - p).max(1e-6)
}

/// The percentile at an axis position, as a label: `99.9%`.
fn label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let text = format!("{p:.4}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

fn draw(path: &Path, scenario: &str, rs: &[&PeerRow]) -> Result<(), Box<dyn std::error::Error>> {
    let lines: Vec<(Peer, Vec<(f64, f64)>)> = rs
        .iter()
        .map(|r| (r.peer, r.percentiles().into_iter().map(|(p, ms)| (position(p), ms)).collect()))
        .collect();
    let points = || lines.iter().flat_map(|(_, l)| l.iter());
    let right = points().map(|(x, _)| *x).fold(10.0, f64::max) * 1.5;
    let top = points().map(|(_, ms)| *ms).fold(0.1, f64::max) * 1.5;
    let floor = points().map(|(_, ms)| *ms).fold(f64::MAX, f64::min).clamp(0.001, top / 10.0) / 2.0;

    let root = SVGBackend::new(path, (700, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("hermes-bench: {scenario}, latency by percentile (ms, log scale)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d((1.5..right).log_scale(), (floor..top).log_scale())?;
    chart.configure_mesh().x_desc("percentile").y_desc("ms").x_label_formatter(&|x| label(*x)).draw()?;
    for (peer, line) in &lines {
        let color = colour(*peer);
        let line: Vec<(f64, f64)> = line.iter().map(|&(x, ms)| (x, ms.max(floor))).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(peer.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2)));
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_axis_spaces_the_nines_evenly() {
        assert_eq!(position(50.0), 2.0);
        assert!((position(99.0) - 100.0).abs() < 1e-9);
        assert!((position(99.9) / position(99.0) - 10.0).abs() < 1e-6);
        assert_eq!(label(2.0), "50%");
        assert_eq!(label(1000.0), "99.9%");
        assert_eq!(label(10.0), "90%");
        // Every peer has a colour of its own.
        let all: Vec<RGBColor> = Peer::value_variants().iter().map(|&p| colour(p)).collect();
        assert!(all.iter().enumerate().all(|(i, c)| !all[..i].contains(c)), "{all:?}");
    }
}
