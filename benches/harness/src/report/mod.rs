//! The reports of a scenario: the markdown table, the SVG chart and the entry of `summary.json`.
//!
//! A scenario may run several times (`--repeat`): each peer then has one [`PeerResult`] per run,
//! gathered in a [`PeerRow`], whose table shows the median of each figure and whose spread table
//! shows every run's value.

mod figures;
mod format;
mod markdown;
mod notes;
mod percentiles;
mod placement;
mod summary;
mod svg;

#[cfg(test)]
mod fixtures;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

pub use self::figures::{PERCENTILES, PeerResult, PeerRow, Placement, fig};
pub use self::summary::{Summary, has_every_figure};

/// One scenario's results, as every report of it shows them.
#[derive(Debug, Clone, Copy)]
pub struct ScenarioReport<'a> {
    /// The scenario's name, e.g. `skew`.
    pub name: &'a str,
    pub description: &'a str,
    /// What every report starts with: the command, the machine, how heavy work is emulated.
    pub header: &'a str,
    /// One row per peer, in the order asked for.
    pub rows: &'a [PeerRow],
}

/// Writes the scenario's markdown and SVG charts (`NAME.svg`, the bars, and
/// `NAME-percentiles.svg`, latency by percentile) into `out`; returns the markdown's and the bars'
/// paths.
pub fn write(out: &Path, report: &ScenarioReport<'_>) -> io::Result<(PathBuf, PathBuf)> {
    let name = report.name;
    std::fs::create_dir_all(out)?;
    let md = out.join(format!("{name}.md"));
    let chart = out.join(format!("{name}.svg"));
    let by_percentile = percentiles::path(out, name);
    let mut text = markdown::markdown(report);
    let _ = writeln!(text, "\n![{name}]({name}.svg) ![{name} by percentile]({name}-percentiles.svg)");
    std::fs::write(&md, text)?;
    svg::svg(&chart, report)?;
    percentiles::svg(&by_percentile, report)?;
    Ok((md, chart))
}

#[cfg(test)]
mod tests {
    use super::fixtures::{result, row};
    use super::*;
    use crate::peer::Peer;

    #[test]
    fn writes_markdown_and_svg() {
        let dir = std::env::temp_dir().join(format!("hermes-bench-report-{}", std::process::id()));
        let rows = [
            row(vec![result(Peer::Hermes, 1000.0, 2.0), result(Peer::Hermes, 1000.0, 5.0)]),
            row(vec![result(Peer::Ntex, 1100.0, 1.0), result(Peer::Ntex, 1100.0, 1.5)]),
        ];
        let report = ScenarioReport { name: "light", description: "d", header: "h", rows: &rows };
        let (md, chart) = write(&dir, &report).unwrap();
        let text = std::fs::read_to_string(md).unwrap();
        assert!(text.contains("ntex"));
        assert!(text.contains("(light-percentiles.svg)"), "{text}");
        assert!(std::fs::read_to_string(chart).unwrap().starts_with("<svg"));
        let by_percentile = std::fs::read_to_string(dir.join("light-percentiles.svg")).unwrap();
        assert!(by_percentile.starts_with("<svg"));
        // One line per peer, named in the legend.
        for peer in ["hermes", "ntex"] {
            assert!(by_percentile.contains(peer), "{peer}: {by_percentile}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
