//! The notes under a scenario's table: per peer, where its figures came from, the load it was
//! offered and the CPU it used, and the remarks of its runs.

use super::figures::{PeerRow, fig};
use super::format::{count, dedup, percent};

/// The notes on one peer that served; `repeats` is the most runs any peer made.
pub(super) fn peer_notes(r: &PeerRow, repeats: usize) -> Vec<String> {
    let mut notes = Vec::new();
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
    notes
}
