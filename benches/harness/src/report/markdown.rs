//! The markdown report of a scenario: the table of medians, the spread over the runs, and the
//! notes under them.

use std::fmt::Write as _;

use super::ScenarioReport;
use super::figures::{Figure, fig};
use super::format::{count, list, percent, range, with_ratio};
use super::notes::peer_notes;
use super::placement::placement_notes;
use crate::peer::BASELINE;

/// The markdown report of one scenario.
pub(super) fn markdown(report: &ScenarioReport<'_>) -> String {
    let ScenarioReport { name: scenario, description, header, rows } = *report;
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
        "| peer | mode | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | delivered | conns/worker SD | conns max/mean | busy SD ms | >1 s | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        if let Some(f) = r.failure() {
            let _ = writeln!(
                s,
                "| {} | {} | failed: {} | | | | | | | | | | |",
                r.peer,
                r.mode(),
                f.replace('|', "/")
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.peer,
            r.mode(),
            with_ratio(r.median(fig::rps), b(fig::rps), 0),
            with_ratio(r.median(fig::p50), b(fig::p50), 2),
            with_ratio(r.median(fig::p99), b(fig::p99), 2),
            with_ratio(r.median(fig::p999), b(fig::p999), 2),
            with_ratio(r.median(fig::cpu_us_per_req), b(fig::cpu_us_per_req), 1),
            percent(r.median(fig::delivered)),
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
         send time (open loop, Poisson arrivals), so stalls are not hidden by coordinated omission; in \
         a closed loop, from its send. CPU µs/req: the server process's user and system time over the \
         run per successful request. Delivered: the share of the offered rate completed in the window \
         (– for a closed loop, which offers what the server takes)."
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
    let notes: Vec<String> =
        rows.iter().filter(|r| r.served()).flat_map(|r| peer_notes(r, repeats)).collect();
    if !notes.is_empty() {
        let _ = writeln!(s);
        bullets(&mut s, &notes);
    }
    let placement = placement_notes(rows);
    if !placement.is_empty() {
        let _ = writeln!(s, "\n### Where the labelled streams landed\n");
        bullets(&mut s, &placement);
    }
    s
}

/// Appends `items` as a markdown list.
fn bullets(s: &mut String, items: &[String]) {
    for item in items {
        let _ = writeln!(s, "- {item}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{repeated, report, result, row, skewed};
    use super::*;
    use crate::peer::Peer;

    #[test]
    fn table_has_ratios_against_hermes() {
        let rows = [row(vec![result(Peer::Hermes, 1000.0, 2.0)]), row(vec![result(Peer::Tokio, 900.0, 4.0)])];
        let md = markdown(&report("light", &rows));
        assert!(md.contains("| tokio | tokio | 900 (0.90×) | 1.00 (1.00×) | 4.00 (2.00×)"), "{md}");
        // p99.9, CPU per request and the share delivered (none: the fixture's runs are closed).
        assert!(md.contains("| 8.00 (2.00×) | 25.0 (1.00×) | – |"), "{md}");
        assert!(!md.contains("Spread over"), "{md}");
    }

    #[test]
    fn repeated_runs_show_medians_and_every_value() {
        let md = markdown(&report("mixed", &repeated()));
        // Medians: hermes p99 3 of (2, 8, 3); tokio over its two served runs, (4 + 6) / 2 = 5.
        assert!(md.contains("| hermes | hermes | 1050 (1.00×) | 1.00 (1.00×) | 3.00 (1.00×)"), "{md}");
        assert!(md.contains("| tokio | tokio | 925 (0.88×) | 1.00 (1.00×) | 5.00 (1.67×)"), "{md}");
        assert!(md.contains("| hermes | 1000–1100 | 1.00–1.00 | 2.00, 8.00, 3.00 |"), "{md}");
        assert!(md.contains("| tokio | 900–950 | 1.00–1.00 | 4.00, –, 6.00 |"), "{md}");
        assert!(md.contains("`tokio` (run 2): failed: did not start"), "{md}");
    }

    #[test]
    fn placements_group_runs_by_shape() {
        let md = markdown(&report("skew", &[skewed()]));
        assert!(
            md.contains("run 1: heavy on [2, 0], requests [400, 0], p99 150.00 ms (heavy 155.00 ms, the others 15.00 ms)"),
            "{md}"
        );
        assert!(md.contains("[2, 0] ×2 (p99 150.0, 160.0 ms) / [1, 1] ×1 (p99 21.0 ms)"), "{md}");
    }
}
