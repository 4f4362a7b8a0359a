//! Keep-alive HTTP/1.1 streams: each connection carries its own arrival schedule, one request at
//! a time, and keeps its own tally until the end of the run.

use std::sync::Arc;

use hyper::Request;
use hyper::header::{HOST, HeaderValue};
use tokio::time::{Instant, sleep_until};

use super::client::{Body, Link};
use super::schedule::{Rng, origin};
use super::tally::Tally;
use super::task::{RunContext, Traffic};

/// One keep-alive HTTP/1.1 connection with its own arrival schedule.
pub(super) async fn keepalive_conn(ctx: Arc<RunContext>, mut traffic: Traffic, mut link: Link) {
    let mut tally = Tally::new(ctx.window.end);
    keepalive_loop(&ctx, &mut traffic, &mut link, &mut tally).await;
    ctx.recorder.merge(tally);
}

/// The request loop of [`keepalive_conn`], recording into the connection's own tally.
async fn keepalive_loop(ctx: &RunContext, traffic: &mut Traffic, link: &mut Link, tally: &mut Tally) {
    let (window, rate, rng) = (ctx.window, traffic.rate, &mut traffic.rng);
    let host = HeaderValue::from_str(&ctx.addr.to_string()).expect("an address is a valid header value");
    let mut first = true;
    let mut next = match rate {
        Some(r) => window.start + rng.gap(r),
        None => window.start,
    };
    sleep_until(window.start).await;
    while next < window.end {
        if Instant::now() > window.give_up {
            // Arrivals due in the window that could not even be sent.
            if let Some(rate) = rate {
                let mut unsent = 0;
                while next < window.end {
                    unsent += 1;
                    next += rng.gap(rate);
                }
                tally.schedule.offered += unsent;
                tally.errors("not sent", unsent);
            }
            return;
        }
        // Closed loop (no rate), the arrival is always due already: it only counts.
        tally.schedule.wait_for(next).await;
        let uri = traffic.mix.pick_uri(rng).clone();
        let scheduled = if rate.is_none() { Instant::now() } else { origin(next) };
        let mut req = Request::new(Body::new());
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, host.clone());
        let sent = link.send(req, ctx.request_timeout).await;
        if std::mem::take(&mut link.reopened) {
            first = true;
        }
        match sent {
            Ok(worker) => {
                tally.success(traffic.stream, scheduled, worker.as_ref(), first);
                first = false;
            }
            Err(e) => {
                tally.errors(&e, 1);
                // Reconnect for the next request.
                match Link::open(ctx.addr).await {
                    Ok(l) => {
                        *link = l;
                        first = true;
                    }
                    Err(e) => tally.errors(&e, 1),
                }
            }
        }
        next = advance(next, rate, rng);
    }
}

/// The arrival after `next`: a Poisson gap later, or now for a closed loop.
fn advance(next: Instant, rate: Option<f64>, rng: &mut Rng) -> Instant {
    match rate {
        Some(r) => next + rng.gap(r),
        None => Instant::now().max(next),
    }
}
