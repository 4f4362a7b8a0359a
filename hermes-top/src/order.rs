//! The order of the workers' rows: [`SortKey`] (what `s` cycles through and
//! `--sort` names) and its direction.

use std::{cmp::Ordering, fmt};

use clap::ValueEnum;

use crate::history::WorkerRow;

/// What the rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Worker id.
    Id,
    /// Requests in flight.
    InFlight,
    /// Smoothed utilisation.
    Util,
    /// Connections accepted per second.
    Accepted,
    /// Requests placed in and out per second.
    Placed,
    /// Requests offloaded per second.
    Offloaded,
    /// Open connections.
    Open,
    /// Heartbeat age (a stuck worker's grows).
    Heartbeat,
}

impl SortKey {
    /// The next key, for `s`.
    pub fn next(self) -> Self {
        let all = Self::value_variants();
        let at = all.iter().position(|k| *k == self).unwrap_or(0);
        all[(at + 1) % all.len()]
    }

    /// Whether the rows go largest first unless reversed: every key but the id.
    pub fn descending_by_default(self) -> bool {
        self != SortKey::Id
    }

    fn value(self, row: &WorkerRow) -> f64 {
        let w = &row.now;
        match self {
            SortKey::Id => w.id as f64,
            SortKey::InFlight => f64::from(w.in_flight),
            SortKey::Util => f64::from(w.util_permille),
            SortKey::Accepted => row.accepted_per_s.unwrap_or(0.0),
            SortKey::Placed => row.placed_in_per_s.unwrap_or(0.0) + row.placed_out_per_s.unwrap_or(0.0),
            SortKey::Offloaded => row.offloaded_per_s.unwrap_or(0.0),
            SortKey::Open => f64::from(w.open_connections),
            SortKey::Heartbeat => w.heartbeat_age_ms,
        }
    }
}

impl fmt::Display for SortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().expect("no key is hidden").get_name())
    }
}

/// A sort: the key and whether largest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// What the rows are sorted by.
    pub key: SortKey,
    /// Largest first.
    pub descending: bool,
}

impl Order {
    /// `key` in its default direction.
    pub fn new(key: SortKey) -> Self {
        Self { key, descending: key.descending_by_default() }
    }

    /// Sorts `rows`; ties keep id order.
    pub fn sort(self, rows: &mut [WorkerRow]) {
        rows.sort_by(|a, b| {
            let by_key = self.key.value(a).partial_cmp(&self.key.value(b)).unwrap_or(Ordering::Equal);
            let by_key = if self.descending { by_key.reverse() } else { by_key };
            by_key.then(a.now.id.cmp(&b.now.id))
        });
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key, if self.descending { "↓" } else { "↑" })
    }
}

#[cfg(test)]
mod tests {
    use hermes_runtime::WorkerSnapshot;

    use super::*;

    fn row(id: usize, in_flight: u32) -> WorkerRow {
        WorkerRow {
            now: WorkerSnapshot { id, in_flight, ..Default::default() },
            accepted_per_s: None,
            placed_in_per_s: None,
            placed_out_per_s: None,
            offloaded_per_s: None,
            refused_per_s: None,
        }
    }

    #[test]
    fn sorts_largest_first_ties_by_id_and_reverses() {
        let mut rows = vec![row(0, 1), row(1, 5), row(2, 1), row(3, 0)];
        let mut order = Order::new(SortKey::InFlight);
        order.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.now.id).collect::<Vec<_>>(), [1, 0, 2, 3]);
        order.descending = false;
        order.sort(&mut rows);
        assert_eq!(rows.iter().map(|r| r.now.id).collect::<Vec<_>>(), [3, 0, 2, 1]);
        assert_eq!(order.to_string(), "in-flight ↑");
    }

    #[test]
    fn s_cycles_through_every_key() {
        let mut key = SortKey::Id;
        let mut seen = vec![key];
        loop {
            key = key.next();
            if key == SortKey::Id {
                break;
            }
            seen.push(key);
        }
        assert_eq!(seen, SortKey::value_variants());
    }
}
