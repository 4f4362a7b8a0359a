//! The hang of a plan: a keep-alive connection of its own that blocks the worker behind it at the
//! hang's times.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::Hang;
use super::client::{H1Sender, exchange, h1_connect, request};
use super::task::Window;

/// The connection that blocks its worker, and the worker it landed on.
#[derive(Debug)]
pub(super) struct HangConn {
    sender: H1Sender,
    worker: String,
}

impl HangConn {
    /// Opens the connection before the window, and asks `/` once to learn its worker.
    pub(super) async fn open(addr: SocketAddr, limit: Duration) -> io::Result<HangConn> {
        let mut sender = h1_connect(addr).await.map_err(|e| io::Error::other(format!("{e} to {addr}")))?;
        let worker = exchange(sender.send_request(request(addr, "/", false, false)), limit)
            .await
            .map_err(|e| io::Error::other(format!("probing the hang connection: {e}")))?;
        let worker = worker.as_ref().and_then(|w| w.to_str().ok()).unwrap_or("?").to_owned();
        Ok(HangConn { sender, worker })
    }

    /// Blocks the worker at the hang's times; in between it sends a cheap request every second so
    /// that servers with an idle timeout keep the connection (and so the same worker). Returns
    /// the workers that served the blocks (in order, when they differ) and the number of blocks.
    pub(super) async fn run(self, addr: SocketAddr, hang: Hang, window: Window) -> (String, u64) {
        let HangConn { mut sender, worker } = self;
        let mut at = window.start + hang.first_at;
        let mut issued = 0u64;
        let path = format!("/block?ms={}", hang.block_ms);
        let limit = Duration::from_millis(hang.block_ms) + Duration::from_secs(10);
        let mut workers = vec![worker];
        while at < window.end {
            let keepalive = Instant::now() + Duration::from_secs(1);
            let blocking = keepalive >= at;
            sleep_until(if blocking { at } else { keepalive }).await;
            let req = request(addr, if blocking { &path } else { "/" }, false, false);
            let result = match sender.ready().await {
                Ok(()) => exchange(sender.send_request(req), limit).await,
                Err(_) => Err("closed".to_owned()),
            };
            match result {
                Ok(w) if blocking => {
                    let w = w.as_ref().and_then(|w| w.to_str().ok()).unwrap_or("?").to_owned();
                    if issued == 0 {
                        workers.clear();
                    }
                    if workers.last() != Some(&w) {
                        workers.push(w);
                    }
                    issued += 1;
                    at += hang.every;
                }
                Ok(_) => {}
                Err(_) => match h1_connect(addr).await {
                    // Lost the connection: open another (it may land on another worker).
                    Ok(s) => sender = s,
                    Err(_) => break,
                },
            }
        }
        (workers.join(" then "), issued)
    }
}
