//! HTTP/2 streams: a few long-lived connections, each arrival a multiplexed stream of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Instant;

use super::client::{H2Sender, exchange, h2_connect, request};
use super::schedule::origin;
use super::task::{PerRequest, RunContext, Traffic};

/// One long-lived HTTP/2 connection; each arrival is its own multiplexed stream, at most `cap` in
/// flight.
pub(super) async fn h2_conn(ctx: Arc<RunContext>, traffic: Traffic, mut sender: H2Sender, cap: usize) {
    let mut arrivals = PerRequest::new(traffic, ctx.window, cap);
    // Set until the connection's first response: that one counts the connection for its worker.
    let mut first = Arc::new(AtomicBool::new(true));
    while let Some((scheduled, permit)) = arrivals.next(&ctx.recorder).await {
        if sender.is_closed() {
            match h2_connect(ctx.addr).await {
                Ok(s) => {
                    sender = s;
                    first = Arc::new(AtomicBool::new(true));
                }
                Err(e) => {
                    ctx.recorder.error(&e);
                    continue;
                }
            }
        }
        let path = arrivals.pick();
        let (mut s, ctx, first, stream) = (sender.clone(), ctx.clone(), first.clone(), arrivals.stream());
        let scheduled = origin(scheduled);
        arrivals.spawn(async move {
            let _permit = permit;
            let limit = ctx.request_timeout;
            let limit =
                limit.min(ctx.window.give_up.saturating_duration_since(Instant::now()).max(limit / 4));
            match exchange(s.send_request(request(ctx.addr, &path, true, false)), limit).await {
                Ok(worker) => {
                    // Relaxed is enough: the swap alone decides which response is the first, and
                    // no other memory is handed over through the flag.
                    let first = first.swap(false, Ordering::Relaxed);
                    ctx.recorder.success(stream, scheduled, worker.as_ref(), first);
                }
                Err(e) => ctx.recorder.error(&e),
            }
        });
    }
    arrivals.finish(&ctx.recorder).await;
}
