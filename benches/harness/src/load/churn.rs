//! Fresh-connection streams: a new HTTP/1.1 connection per arrival (`connection: close`).

use std::sync::Arc;

use tokio::time::timeout;

use super::client::{exchange, h1_connect, request};
use super::schedule::origin;
use super::task::{PerRequest, RunContext, Traffic};

/// A Poisson stream that opens a new connection for every request, at most `cap` in flight.
pub(super) async fn fresh_stream(ctx: Arc<RunContext>, traffic: Traffic, cap: usize) {
    let mut arrivals = PerRequest::new(traffic, ctx.window, cap);
    while let Some((scheduled, permit)) = arrivals.next(&ctx.recorder).await {
        let path = arrivals.pick();
        let (ctx, stream) = (ctx.clone(), arrivals.stream());
        let scheduled = origin(scheduled);
        arrivals.spawn(async move {
            let _permit = permit;
            let limit = ctx.request_timeout;
            let work = async {
                let mut sender = h1_connect(ctx.addr).await?;
                exchange(sender.send_request(request(ctx.addr, &path, false, true)), limit).await
            };
            match timeout(limit, work).await {
                Ok(Ok(worker)) => ctx.recorder.success(stream, scheduled, worker.as_ref(), true),
                Ok(Err(e)) => ctx.recorder.error(&e),
                Err(_) => ctx.recorder.error("timeout"),
            }
        });
    }
    arrivals.finish(&ctx.recorder).await;
}
