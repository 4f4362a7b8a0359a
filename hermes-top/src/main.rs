//! `hermes-top`: a live per-worker view of a running Hermes server in the
//! terminal, read from its stats endpoint (`/_hermes/stats`).
//!
//! ```text
//! cargo run --release -p hermes-top -- http://127.0.0.1:3000/_hermes/stats
//! cargo install --path hermes-top && hermes-top http://127.0.0.1:3000
//! hermes-top --once http://127.0.0.1:3000     # one frame as plain text
//! ```
//!
//! One row per worker: its state and eligibility, heartbeat age, bars for
//! requests in flight, utilisation and connections accepted per second,
//! open connections, accept queue, requests placed in and out and
//! offloaded per second, refused connections. Above the rows: the list of eligible workers
//! and how many workers it held over the last minute, the kernel program's
//! runs and fallbacks, request placement. Rates are differences between
//! two reads. Modules: [`fetch`] (the reads), [`history`] (the reads kept
//! and the rates), [`order`] (sorting), [`screen`] (one frame), [`view`]
//! (the terminal loop and its keys).

mod fetch;
mod history;
mod order;
mod screen;
mod view;

use std::{process::ExitCode, thread, time::Duration, time::Instant};

use clap::Parser;
use ratatui::{buffer::Buffer, layout::Rect, widgets::Widget};

use crate::{
    fetch::{Fetcher, stats_uri},
    history::History,
    order::{Order, SortKey},
    screen::{Screen, height_for},
};

/// A live per-worker view of a running Hermes server, read from its stats
/// endpoint (`hermes_tower::serve(..).with_stats()` mounts it).
///
/// Keys: q quits, s changes the sort, r reverses it, arrows, PgUp, PgDn,
/// Home and End scroll.
#[derive(Debug, Parser)]
#[command(name = "hermes-top", version)]
struct Args {
    /// The server's stats URL, `http://HOST:PORT/_hermes/stats` (without a
    /// path, `/_hermes/stats` is read).
    url: String,
    /// Print one frame as plain text and exit (two reads, --interval apart,
    /// for the rates); exits 1 when a read fails.
    #[arg(long)]
    once: bool,
    /// Seconds between reads.
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = seconds)]
    interval: Duration,
    /// Seconds a read may take before it counts as no answer.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = seconds)]
    timeout: Duration,
    /// Read over HTTP/2 with prior knowledge (the stats of a `serve_tonic`
    /// server, on its gRPC port).
    #[arg(long)]
    http2: bool,
    /// What the rows are sorted by at first (largest first but for the id).
    #[arg(long, value_enum, default_value_t = SortKey::Id)]
    sort: SortKey,
    /// With --once: the frame's width in columns.
    #[arg(long, value_name = "COLUMNS", default_value_t = 120, requires = "once")]
    width: u16,
}

/// A number of seconds above zero, at most an hour.
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 3600.0 => Ok(Duration::from_secs_f64(x)),
        Ok(_) => Err(format!("{s} is not a number of seconds above 0 and at most 3600")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = stats_uri(&args.url)
        .and_then(|uri| Fetcher::new(uri, args.timeout, args.http2).map_err(|e| e.to_string()))
        .and_then(|fetcher| {
            let order = Order::new(args.sort);
            if args.once {
                once(&fetcher, args.interval, order, args.width).map(|text| print!("{text}"))
            } else {
                view::run(fetcher, args.interval, order).map_err(|e| e.to_string())
            }
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes-top: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One frame as plain text, `width` columns wide, every worker shown: two
/// reads `interval` apart (rates need both).
fn once(fetcher: &Fetcher, interval: Duration, order: Order, width: u16) -> Result<String, String> {
    let mut history = History::default();
    for read in 0..2 {
        if read > 0 {
            thread::sleep(interval);
        }
        let sample = fetcher.sample();
        if let Err(e) = &sample.result {
            return Err(format!("{}: {e}", fetcher.uri()));
        }
        history.push(sample);
    }
    let mut rows = history.rows();
    order.sort(&mut rows);
    let area = Rect::new(0, 0, width, height_for(rows.len()));
    let mut buf = Buffer::empty(area);
    let url = fetcher.uri().to_string();
    let screen = Screen {
        url: &url,
        history: &history,
        rows: &rows,
        order,
        first: 0,
        keys: false,
        now: Instant::now(),
    };
    screen.render(area, &mut buf);
    Ok(plain_text(&buf))
}

/// The buffer's lines, without styles or trailing blanks.
fn plain_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut text = String::new();
    for y in area.top()..area.bottom() {
        let line: String = (area.left()..area.right()).map(|x| buf[(x, y)].symbol()).collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}
