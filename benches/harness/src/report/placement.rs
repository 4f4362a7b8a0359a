//! The notes on where the labelled streams landed (e.g. the heavy tenant of `skew`).

use super::figures::PeerRow;
use super::format::{dedup, vector};

/// Per peer and label: each run's per-worker connections and requests with its p99, then the runs
/// grouped by the shape of the connection placement (counts sorted, largest first), so a bimodal
/// figure shows as two groups with their own p99s.
pub(super) fn placement_notes(rows: &[PeerRow]) -> Vec<String> {
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
