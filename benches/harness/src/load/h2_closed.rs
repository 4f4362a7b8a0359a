//! Closed-loop HTTP/2: each connection keeps a fixed number of streams in flight, each sending its
//! next request as soon as the last is answered (as h2load's `-m`); latency runs from the send.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::client::{H2Sender, exchange, request};
use super::tally::Tally;
use super::task::{RunContext, Traffic};

/// One long-lived HTTP/2 connection with `streams` requests in flight throughout the window.
pub(super) async fn h2_closed_conn(
    ctx: Arc<RunContext>,
    mut traffic: Traffic,
    sender: H2Sender,
    streams: usize,
) {
    // Set until the connection's first response: that one counts the connection for its worker.
    let first = Arc::new(AtomicBool::new(true));
    let mut loops = JoinSet::new();
    for _ in 0..streams {
        let rng = traffic.rng.fork();
        let own = Traffic { stream: traffic.stream, rate: None, mix: traffic.mix.clone(), rng };
        loops.spawn(stream_loop(ctx.clone(), own, sender.clone(), first.clone()));
    }
    while loops.join_next().await.is_some() {}
}

/// One stream's requests, back to back, recorded in a tally of its own and merged at the end.
async fn stream_loop(
    ctx: Arc<RunContext>,
    mut traffic: Traffic,
    mut sender: H2Sender,
    first: Arc<AtomicBool>,
) {
    let mut tally = Tally::new(ctx.window.end);
    sleep_until(ctx.window.start).await;
    while Instant::now() < ctx.window.end {
        let sent = Instant::now();
        // Counts the arrival; it is due at once, so there is no wait.
        tally.schedule.wait_for(sent).await;
        let path = traffic.mix.pick(&mut traffic.rng).to_owned();
        match exchange(sender.send_request(request(ctx.addr, &path, true, false)), ctx.request_timeout).await
        {
            Ok(worker) => {
                // Relaxed is enough: the swap alone decides which response is the first, and no
                // other memory is handed over through the flag.
                let first = first.swap(false, Ordering::Relaxed);
                tally.success(traffic.stream, sent, worker.as_ref(), first);
            }
            Err(e) => {
                tally.errors(&e, 1);
                if sender.is_closed() {
                    // The server closed the connection: this stream ends, counted as an error;
                    // the others on it end the same way.
                    tally.errors("connection closed", 1);
                    break;
                }
            }
        }
    }
    ctx.recorder.merge(tally);
}
