//! [`HaproxyAgent`]: the port HAProxy's `agent-check` reads a host's
//! weight from.
//!
//! HAProxy connects to the agent port every `agent-inter` and reads one
//! line of words (its configuration manual, "agent-check"): a percentage
//! sets the server's weight relative to its configured one, `drain` stops
//! new connections to it, `ready` cancels a drain, `up` marks it up. The
//! agent answers from the host's load:
//!
//! - `drain` when no worker of the host has been eligible for new
//!   connections for [`DRAIN_AFTER`] (every worker hangs in a handler, or
//!   drains): one scheduler pass without one is not enough, since a machine
//!   short of CPU can miss a tick;
//! - otherwise `up` and a weight from the host's headroom: `100%` idle,
//!   down to `1%` saturated (one minus [`HostLoad::utilization`]);
//! - with `ready` as well for a minute after a `drain` and after the agent
//!   starts (a previous process of the host may have drained it), so every
//!   balancer polling it sees the recovery: HAProxy leaves a drained server
//!   drained until an agent says `ready`. Outside those minutes the agent
//!   does not say `ready`, so a drain set by an operator on HAProxy's CLI
//!   stays.
//!
//! The agent runs on a thread of its own, not on a worker: it must answer
//! `drain` when every worker hangs. It stops once every server it reports
//! on has stopped.

use std::{
    fmt, io,
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    time::{Duration, Instant},
};

use hermes_runtime::{HostLoad, LoadSource};
use tokio::io::AsyncWriteExt;

/// How long no worker must have been eligible before the agent says
/// `drain`.
pub const DRAIN_AFTER: Duration = Duration::from_millis(500);

/// How long after a `drain` (and after the agent starts) its answers also
/// say `ready`.
pub const READY_WINDOW: Duration = Duration::from_secs(60);

/// How often the agent looks whether its servers still run.
const ALIVE_CHECK: Duration = Duration::from_millis(200);

/// A bound agent port, ready to be given to
/// [`Serve::with_haproxy_agent`](crate::serve::Serve::with_haproxy_agent).
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// use hermes_tower::orca::HaproxyAgent;
///
/// let agent = HaproxyAgent::bind("0.0.0.0:5555")?;
/// println!("agent-check on {}", agent.local_addr()?);
/// hermes_tower::serve("0.0.0.0:8080", app).with_haproxy_agent(agent).await
/// # }
/// ```
///
/// and in `haproxy.cfg`, for each server:
///
/// ```text
/// server web1 192.0.2.11:8080 check weight 100 agent-check agent-port 5555 agent-inter 500ms
/// ```
pub struct HaproxyAgent {
    listener: TcpListener,
}

impl fmt::Debug for HaproxyAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaproxyAgent").field("addr", &self.listener.local_addr().ok()).finish()
    }
}

impl HaproxyAgent {
    /// Binds the agent port on `addr` (port 0: the kernel picks one; see
    /// [`HaproxyAgent::local_addr`]).
    ///
    /// # Errors
    /// The bind error.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Ok(Self { listener: TcpListener::bind(addr)? })
    }

    /// The address the agent answers on.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers on a thread of its own from the load of `sources` (one per
    /// address the application serves), until every one of them stops.
    pub(crate) fn start(self, sources: Vec<LoadSource>) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("hermes-agent".to_owned()).spawn(move || {
            runtime.block_on(serve(self.listener, sources));
        })?;
        Ok(())
    }
}

impl From<TcpListener> for HaproxyAgent {
    /// An agent answering on a listener of your own.
    fn from(listener: TcpListener) -> Self {
        Self { listener }
    }
}

/// The accept loop: one answer per connection, then close.
async fn serve(listener: TcpListener, sources: Vec<LoadSource>) {
    let addr = listener.local_addr().ok();
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(?addr, error = %e, "the HAProxy agent cannot serve its port");
            return;
        }
    };
    let mut answers = Answers::new(Instant::now());
    let mut alive = tokio::time::interval(ALIVE_CHECK);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut conn, _)) = accepted else { continue };
                let loads: Vec<HostLoad> = sources.iter().filter_map(LoadSource::current).collect();
                let line = answers.next(&loads, Instant::now());
                // The peer reads one line and closes; a peer that went away
                // is nobody's loss.
                let _ = conn.write_all(line.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
            _ = alive.tick() => {
                if !sources.iter().any(LoadSource::is_alive) {
                    tracing::debug!(?addr, "every server stopped; the HAProxy agent stops");
                    return;
                }
            }
        }
    }
}

/// What the agent says, and since when it says `ready`.
#[derive(Debug)]
pub(crate) struct Answers {
    /// Until when answers say `ready`.
    ready_until: Instant,
}

impl Answers {
    /// An agent that started at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self { ready_until: now + READY_WINDOW }
    }

    /// The line for the servers' `loads` (none: every server stopped).
    pub(crate) fn next(&mut self, loads: &[HostLoad], now: Instant) -> String {
        let drain_after = DRAIN_AFTER.as_nanos() as u64;
        if loads.iter().all(|l| l.eligible == 0 && l.ineligible_ns >= drain_after) {
            self.ready_until = now + READY_WINDOW;
            return "drain\n".to_owned();
        }
        let headroom = loads.iter().map(HostLoad::headroom).fold(1.0, f64::min);
        let weight = weight_percent(headroom);
        if now < self.ready_until { format!("up ready {weight}%\n") } else { format!("up {weight}%\n") }
    }
}

/// The weight for a headroom: 1 to 100 percent (0 would drain the server,
/// which only `drain` does).
pub(crate) fn weight_percent(headroom: f64) -> u32 {
    ((headroom * 100.0).round() as u32).clamp(1, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(eligible: u32, utilization: f64) -> HostLoad {
        let ineligible_ns = if eligible == 0 { DRAIN_AFTER.as_nanos() as u64 } else { 0 };
        HostLoad {
            eligible,
            ineligible_ns,
            workers: 2,
            worker_utilization: utilization,
            ..HostLoad::default()
        }
    }

    #[test]
    fn the_weight_follows_the_headroom_and_no_eligible_worker_drains() {
        let start = Instant::now();
        let mut answers = Answers::new(start);
        let later = start + READY_WINDOW + Duration::from_secs(1);
        assert_eq!(answers.next(&[load(2, 0.25)], start), "up ready 75%\n", "ready after a start");
        assert_eq!(answers.next(&[load(2, 0.25)], later), "up 75%\n");
        assert_eq!(answers.next(&[load(1, 1.5)], later), "up 1%\n", "saturated is 1%, not a drain");
        let moment = HostLoad { ineligible_ns: 1_000_000, ..load(0, 0.9) };
        assert_eq!(
            answers.next(&[moment], later),
            "up 10%\n",
            "a tick without an eligible worker is no drain"
        );
        assert_eq!(answers.next(&[load(0, 0.0)], later), "drain\n");
        assert_eq!(answers.next(&[], later), "drain\n", "no server left");
        let after = later + Duration::from_secs(2);
        assert_eq!(answers.next(&[load(2, 0.0)], after), "up ready 100%\n", "ready again after a drain");
        assert_eq!(
            answers.next(&[load(2, 0.5), load(0, 0.0)], after),
            "up ready 50%\n",
            "any server eligible"
        );
    }
}
