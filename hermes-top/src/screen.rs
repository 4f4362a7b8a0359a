//! One frame of the view, [`Screen`]: four header lines (the server and the
//! last read, the list of eligible workers and its population over the last minute, the
//! kernel's counters, request placement), the workers' table (a page of
//! it), and the keys. The same widget draws the terminal view and the
//! plain text of `--once`.

use std::time::Instant;

use hermes_runtime::WorkerStatus;
use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Sparkline, Table, Widget},
};

use crate::{
    history::{Counter, History, WorkerRow},
    order::Order,
};

/// Lines above the table.
const HEADER_LINES: u16 = 4;
/// Columns of the list's population sparkline (one per second of the last minute).
const SPARK_COLUMNS: u16 = 60;
/// Width of a bar.
const BAR: usize = 8;

/// The rows of the workers' table that fit in a screen `height` lines high.
pub fn page_rows(height: u16, keys: bool) -> usize {
    usize::from(height.saturating_sub(HEADER_LINES + 1 + u16::from(keys)))
}

/// The lines a screen needs to show `rows` workers at once (for `--once`).
pub fn height_for(rows: usize) -> u16 {
    HEADER_LINES + 1 + u16::try_from(rows).unwrap_or(u16::MAX - HEADER_LINES - 1)
}

/// One frame of the view.
#[derive(Debug)]
pub struct Screen<'a> {
    /// The stats URL read.
    pub url: &'a str,
    /// What was read.
    pub history: &'a History,
    /// The workers' rows, sorted.
    pub rows: &'a [WorkerRow],
    /// Their order, for the footer.
    pub order: Order,
    /// The first row shown.
    pub first: usize,
    /// Whether to show the keys' line (the terminal view) or not (`--once`).
    pub keys: bool,
    /// The time of the frame.
    pub now: Instant,
}

impl Widget for Screen<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let [title, bitmap, kernel, placement, table, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(0),
            Constraint::Length(u16::from(self.keys)),
        ])
        .areas(area);
        Paragraph::new(self.title()).render(title, buf);
        self.render_bitmap(bitmap, buf);
        Paragraph::new(self.kernel()).render(kernel, buf);
        Paragraph::new(self.placement()).render(placement, buf);
        let shown = usize::from(table.height.saturating_sub(1));
        self.table(shown).render(table, buf);
        if self.keys {
            let last = (self.first + shown).min(self.rows.len());
            let text = format!(
                "q quit  s sort: {}  r reverse  ↑↓ PgUp PgDn Home End scroll  workers {}-{} of {}",
                self.order,
                (self.first + 1).min(last),
                last,
                self.rows.len()
            );
            Paragraph::new(Line::styled(text, Style::new().add_modifier(Modifier::REVERSED)))
                .render(keys, buf);
        }
    }
}

impl Screen<'_> {
    fn title(&self) -> Line<'static> {
        let mut spans = vec![Span::styled("hermes-top ", Style::new().add_modifier(Modifier::BOLD))];
        spans.push(Span::raw(self.url.to_owned()));
        match &self.history.latest {
            Some(latest) => {
                let s = &latest.snapshot;
                let (serving, eligible) = self.history.serving_and_eligible();
                spans.push(Span::raw(format!("  pid {}  mode {}", s.pid, s.mode)));
                if let Some(reason) = &s.mode_reason {
                    spans.push(Span::styled(format!(" ({reason})"), Style::new().fg(Color::Yellow)));
                }
                spans.push(Span::raw(format!(
                    "  {} workers: {serving} serving, {eligible} eligible  read {} ago",
                    s.workers.len(),
                    seconds(self.now.saturating_duration_since(latest.at).as_secs_f64())
                )));
            }
            None => spans.push(Span::raw("  waiting for the first snapshot")),
        }
        if let Some((_, error)) = &self.history.error {
            spans.push(Span::styled(format!("  no answer: {error}"), Style::new().fg(Color::Red)));
        }
        Line::from(spans)
    }

    fn render_bitmap(&self, area: Rect, buf: &mut Buffer) {
        let Some(latest) = &self.history.latest else { return };
        let s = &latest.snapshot;
        let age = if s.list_age_ms.is_finite() { seconds(s.list_age_ms / 1e3) } else { "never".to_owned() };
        let label = format!(
            "list: {} eligible, published {age} ago  eligible over the last minute ",
            s.eligible_count
        );
        let [text, spark] =
            Layout::horizontal([Constraint::Length(width_of(&label)), Constraint::Max(SPARK_COLUMNS)])
                .areas(area);
        Paragraph::new(label).render(text, buf);
        Sparkline::default()
            .data(self.history.population(usize::from(spark.width), self.now))
            .max(s.workers.len().max(1) as u64)
            .absent_value_symbol(" ")
            .style(Style::new().fg(Color::Green))
            .render(spark, buf);
    }

    fn kernel(&self) -> Line<'static> {
        let Some(k) = self.history.kernel() else { return Line::default() };
        let fallback = |gap: &str, name: &str, c: Counter| {
            let style =
                if c.per_s.is_some_and(|r| r > 0.0) { Style::new().fg(Color::Yellow) } else { Style::new() };
            Span::styled(format!("{gap}{name} {} ({}/s)", count(c.total), rate(c.per_s)), style)
        };
        Line::from(vec![
            Span::raw(format!("kernel: runs {} ({}/s)  fallbacks:", count(k.runs.total), rate(k.runs.per_s))),
            fallback(" ", "too_few", k.too_few),
            fallback("  ", "stale", k.stale),
            fallback("  ", "no_socket", k.no_socket),
            Span::raw(format!(
                "  migrated {}  dispatch lost {}",
                count(k.migrated.total),
                count(k.dispatch_lost.total)
            )),
        ])
    }

    fn placement(&self) -> Line<'static> {
        let Some(latest) = &self.history.latest else { return Line::default() };
        let p = &latest.snapshot.placement;
        if !p.enabled {
            return Line::raw("placement: off");
        }
        let target = p.target.map_or("-".to_owned(), |t| t.to_string());
        let offload = p.offload_threshold_us.map_or("off".to_owned(), |us| format!("≥ {us} µs"));
        Line::raw(format!("placement: on  target worker {target}  offload {offload}  lost {}", count(p.lost)))
    }

    fn table(&self, shown: usize) -> Table<'static> {
        let max_in_flight = self.rows.iter().map(|r| f64::from(r.now.in_flight)).fold(1.0, f64::max);
        let max_accepted = self.rows.iter().filter_map(|r| r.accepted_per_s).fold(1.0, f64::max);
        let rows = self.rows.iter().skip(self.first).take(shown).map(|r| {
            let w = &r.now;
            let util = f64::from(w.util_permille) / 10.0;
            let util_color = match util {
                u if u >= 85.0 => Color::Red,
                u if u > 50.0 => Color::Yellow,
                _ => Color::Green,
            };
            Row::new(vec![
                Cell::from(format!("{:>4}", w.id)),
                Cell::from(Span::styled(w.state.to_string(), Style::new().fg(state_color(w.state)))),
                if w.eligible {
                    Cell::from(Span::styled("yes", Style::new().fg(Color::Green)))
                } else {
                    Cell::from(Span::styled("no", Style::new().fg(Color::DarkGray)))
                },
                Cell::from(format!("{:>6}", heartbeat(w.heartbeat_age_ms))),
                bar_cell(f64::from(w.in_flight), max_in_flight, count(u64::from(w.in_flight)), Color::Cyan),
                bar_cell(util, 100.0, format!("{util:.0}%"), util_color),
                bar_cell(r.accepted_per_s.unwrap_or(0.0), max_accepted, rate(r.accepted_per_s), Color::Blue),
                Cell::from(format!("{:>6}", count(u64::from(w.open_connections)))),
                Cell::from(format!("{:>5}", count(u64::from(w.accept_queue)))),
                Cell::from(format!("{:>6}", rate(r.placed_in_per_s))),
                Cell::from(format!("{:>6}", rate(r.placed_out_per_s))),
                Cell::from(format!("{:>6}", rate(r.offloaded_per_s))),
                Cell::from(format!("{:>7}", count(w.refused))),
            ])
        });
        let header = Row::new(COLUMNS.map(|(name, _)| name)).style(Style::new().add_modifier(Modifier::BOLD));
        Table::new(rows, COLUMNS.map(|(_, width)| Constraint::Length(width))).header(header).column_spacing(1)
    }
}

/// The table's columns: heading and width.
const COLUMNS: [(&str, u16); 13] = [
    ("  id", 4),
    ("state", 8),
    ("elig", 4),
    ("  beat", 6),
    ("in-flight", BAR as u16 + 6),
    ("util", BAR as u16 + 6),
    ("accepted/s", BAR as u16 + 6),
    ("  open", 6),
    ("queue", 5),
    ("  in/s", 6),
    (" out/s", 6),
    ("offl/s", 6),
    ("refused", 7),
];

/// A bar of `value` out of `max`, then `label`, right-aligned after it.
fn bar_cell(value: f64, max: f64, label: String, color: Color) -> Cell<'static> {
    Cell::from(Line::from(vec![
        Span::styled(bar(value, max), Style::new().fg(color)),
        Span::raw(format!(" {label:>5}")),
    ]))
}

/// `value / max` as a bar [`BAR`] wide, in eighths of a cell; a value above
/// zero shows at least one eighth.
fn bar(value: f64, max: f64) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let fraction = if max > 0.0 { (value / max).clamp(0.0, 1.0) } else { 0.0 };
    let mut eighths = (fraction * (BAR * 8) as f64).round() as usize;
    if value > 0.0 {
        eighths = eighths.max(1);
    }
    let mut text = "█".repeat(eighths / 8) + PARTS[eighths % 8];
    let drawn = eighths.div_ceil(8);
    text.extend(std::iter::repeat_n(' ', BAR - drawn));
    text
}

fn state_color(state: WorkerStatus) -> Color {
    match state {
        WorkerStatus::Serving => Color::Green,
        WorkerStatus::Starting => Color::Cyan,
        WorkerStatus::Draining => Color::Yellow,
        WorkerStatus::Stopped => Color::Red,
    }
}

/// A count in at most five characters: `999`, `12.3k`, `4.5M`.
fn count(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..10_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// A rate per second, or `-` when there is none yet.
fn rate(per_s: Option<f64>) -> String {
    match per_s {
        None => "-".to_owned(),
        Some(r) if r >= 10_000.0 => count(r.round() as u64),
        Some(r) if r >= 10.0 || r == 0.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

/// A heartbeat's age: `3ms`, `1.2s`, or `never`.
fn heartbeat(ms: f64) -> String {
    if !ms.is_finite() {
        "never".to_owned()
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        seconds(ms / 1e3)
    }
}

/// Seconds, short: `0.3s`, `12s`.
fn seconds(s: f64) -> String {
    if s < 10.0 { format!("{s:.1}s") } else { format!("{s:.0}s") }
}

/// Columns `text` takes on a terminal (every character here is one column wide).
fn width_of(text: &str) -> u16 {
    u16::try_from(text.chars().count()).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_eighths_and_show_any_value_above_zero() {
        assert_eq!(bar(0.0, 4.0), " ".repeat(BAR));
        assert_eq!(bar(4.0, 4.0), "█".repeat(BAR));
        assert_eq!(bar(2.0, 4.0), "████    ");
        assert_eq!(bar(0.001, 4.0), "▏       ");
        assert_eq!(bar(9.0, 4.0), "█".repeat(BAR), "clamped");
        assert!(bar(1.0, 3.0).chars().count() == BAR);
    }

    #[test]
    fn a_page_of_many_workers_shows_its_rows_and_where_it_is() {
        use std::time::Duration;

        use hermes_runtime::{Snapshot, WorkerSnapshot};

        use crate::{fetch::Sample, order::SortKey};

        let now = Instant::now();
        let workers: Vec<_> = (0..100)
            .map(|id| WorkerSnapshot {
                id,
                state: WorkerStatus::Serving,
                in_flight: (id % 7) as u32,
                ..Default::default()
            })
            .collect();
        let mut history = History::default();
        let snapshot =
            Snapshot { pid: 9, eligible_count: 3, eligible: vec![0, 1, 3], workers, ..Default::default() };
        history.push(Sample { at: now - Duration::from_secs(1), result: Ok(snapshot.clone()) });
        history.push(Sample { at: now, result: Ok(snapshot) });
        let order = Order::new(SortKey::Id);
        let rows = history.rows();
        let area = Rect::new(0, 0, 120, 20);
        let mut buf = Buffer::empty(area);
        Screen {
            url: "http://test/_hermes/stats",
            history: &history,
            rows: &rows,
            order,
            first: 10,
            keys: true,
            now,
        }
        .render(area, &mut buf);
        let lines: Vec<String> = (0..area.height)
            .map(|y| (0..area.width).map(|x| buf[(x, y)].symbol()).collect::<String>().trim_end().to_owned())
            .collect();
        let shown = page_rows(area.height, true);
        assert_eq!(shown, 14);
        assert!(
            lines[0].contains("pid 9") && lines[0].contains("100 workers: 100 serving, 0 eligible"),
            "{lines:#?}"
        );
        assert!(lines[1].starts_with("list: 3 eligible"), "{lines:#?}");
        assert!(lines[5].trim_start().starts_with("10 serving"), "the page starts at row 11: {lines:#?}");
        assert!(lines[5 + shown - 1].trim_start().starts_with("23 serving"), "{lines:#?}");
        assert!(
            lines[19].contains("sort: id ↑") && lines[19].ends_with("workers 11-24 of 100"),
            "{lines:#?}"
        );
    }

    #[test]
    fn figures_fit_their_columns() {
        assert_eq!(count(9_999), "9999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(45_000_000), "45.0M");
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(0.0)), "0");
        assert_eq!(rate(Some(2.54)), "2.5");
        assert_eq!(rate(Some(120.4)), "120");
        assert_eq!(heartbeat(f64::INFINITY), "never");
        assert_eq!(heartbeat(3.4), "3ms");
        assert_eq!(heartbeat(2500.0), "2.5s");
    }
}
