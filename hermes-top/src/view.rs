//! The terminal view: redrawn as reads come in, scrolled and sorted with
//! the keys the bottom line lists (`q` quits).

use std::{io, sync::mpsc::Receiver, time::Duration, time::Instant};

use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
};

use crate::{
    fetch::{Fetcher, Sample},
    history::History,
    order::Order,
    screen::{Screen, page_rows},
};

/// How long the view waits for a key before it looks for new reads.
const KEY_WAIT: Duration = Duration::from_millis(100);

/// Runs the view of what `fetcher` reads every `interval` until `q`.
///
/// # Errors
/// When the terminal cannot be set up or drawn on.
pub fn run(fetcher: Fetcher, interval: Duration, order: Order) -> io::Result<()> {
    let url = fetcher.uri().to_string();
    let mut terminal = ratatui::try_init().map_err(|e| {
        io::Error::new(e.kind(), format!("setting up the terminal: {e} (--once prints plain text)"))
    })?;
    let samples = fetcher.spawn(interval);
    let result = View { url, history: History::default(), order, first: 0 }.run(&mut terminal, &samples);
    ratatui::restore();
    result
}

/// The view's state between frames.
struct View {
    url: String,
    history: History,
    order: Order,
    /// The first row shown.
    first: usize,
}

impl View {
    fn run(mut self, terminal: &mut DefaultTerminal, samples: &Receiver<Sample>) -> io::Result<()> {
        loop {
            while let Ok(sample) = samples.try_recv() {
                self.history.push(sample);
            }
            let mut rows = self.history.rows();
            self.order.sort(&mut rows);
            let page = page_rows(terminal.size()?.height, true);
            self.first = self.first.min(rows.len().saturating_sub(page));
            terminal.draw(|frame| {
                let screen = Screen {
                    url: &self.url,
                    history: &self.history,
                    rows: &rows,
                    order: self.order,
                    first: self.first,
                    keys: true,
                    now: Instant::now(),
                };
                frame.render_widget(screen, frame.area());
            })?;
            if event::poll(KEY_WAIT)?
                && let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
                && self.key(key, page, rows.len()).is_break()
            {
                return Ok(());
            }
        }
    }

    /// Acts on `key`; breaks on the keys that quit.
    fn key(&mut self, key: KeyEvent, page: usize, rows: usize) -> std::ops::ControlFlow<()> {
        let last = rows.saturating_sub(page);
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return std::ops::ControlFlow::Break(()),
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return std::ops::ControlFlow::Break(());
            }
            KeyCode::Char('s') => self.order = Order::new(self.order.key.next()),
            KeyCode::Char('r') => self.order.descending = !self.order.descending,
            KeyCode::Down | KeyCode::Char('j') => self.first = (self.first + 1).min(last),
            KeyCode::Up | KeyCode::Char('k') => self.first = self.first.saturating_sub(1),
            KeyCode::PageDown | KeyCode::Char(' ') => self.first = (self.first + page.max(1)).min(last),
            KeyCode::PageUp => self.first = self.first.saturating_sub(page.max(1)),
            KeyCode::Home | KeyCode::Char('g') => self.first = 0,
            KeyCode::End | KeyCode::Char('G') => self.first = last,
            _ => {}
        }
        std::ops::ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyEvent;

    use super::*;
    use crate::order::SortKey;

    fn press(view: &mut View, code: KeyCode, page: usize, rows: usize) -> bool {
        view.key(KeyEvent::new(code, KeyModifiers::NONE), page, rows).is_break()
    }

    #[test]
    fn keys_page_through_the_rows_sort_and_quit() {
        let mut view = View {
            url: String::new(),
            history: History::default(),
            order: Order::new(SortKey::Id),
            first: 0,
        };
        let (page, rows) = (10, 25);
        assert!(!press(&mut view, KeyCode::PageDown, page, rows));
        assert_eq!(view.first, 10);
        press(&mut view, KeyCode::PageDown, page, rows);
        assert_eq!(view.first, 15, "the last page is full");
        press(&mut view, KeyCode::Up, page, rows);
        assert_eq!(view.first, 14);
        press(&mut view, KeyCode::Home, page, rows);
        assert_eq!(view.first, 0);
        press(&mut view, KeyCode::End, page, rows);
        assert_eq!(view.first, 15);
        press(&mut view, KeyCode::Char('s'), page, rows);
        assert_eq!(view.order, Order { key: SortKey::InFlight, descending: true });
        press(&mut view, KeyCode::Char('r'), page, rows);
        assert!(!view.order.descending);
        assert!(press(&mut view, KeyCode::Char('q'), page, rows));
        assert!(view.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), page, rows).is_break());
    }
}
