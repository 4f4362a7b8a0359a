//! A progress bar per run (scenario, peer, repetition) while its load runs: how far into the
//! measurement window it is, then the wait for the last responses. Drawn with `indicatif` on
//! stderr, beside the run lines, only when stdout is a terminal: a redirected or CI run prints
//! its plain lines alone, and its generator does no drawing.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar moves.
const TICK: Duration = Duration::from_millis(100);

/// One run's bar; cleared when dropped.
#[derive(Debug)]
pub struct RunProgress {
    /// `None` when stdout is not a terminal.
    bar: Option<ProgressBar>,
    window: Duration,
}

impl RunProgress {
    /// A bar named `label` over a measurement window of `window`.
    pub fn new(label: String, window: Duration) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(window.as_millis() as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("  {prefix} [{bar:40.cyan/blue}] {percent:>3}% {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label);
            bar.set_message(format!("of {:.0} s", window.as_secs_f64()));
            bar
        });
        Self { bar, window }
    }

    /// Runs `load`, moving the bar with the time into the window.
    pub async fn during<F: Future>(&self, load: F) -> F::Output {
        let Some(bar) = &self.bar else { return load.await };
        let start = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tokio::pin!(load);
        loop {
            tokio::select! {
                out = &mut load => return out,
                _ = tick.tick() => {
                    let elapsed = start.elapsed();
                    bar.set_position(elapsed.min(self.window).as_millis() as u64);
                    if elapsed >= self.window {
                        bar.set_message("waiting for the last responses");
                    }
                }
            }
        }
    }
}

impl Drop for RunProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
