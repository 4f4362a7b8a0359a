//! [`Serve`]: an application about to be served by Hermes servers, with the
//! options every protocol shares (server settings, the layer, stats, TLS,
//! timeouts, connection limits, addresses, shutdown, upgrades), and how it
//! starts: one server per address, each worker serving through the
//! [`Protocol`].

use std::{fmt, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use hermes_runtime::{Builder, HermesListener, ServerHandle};
use tokio::signal::unix::{SignalKind, signal as unix_signal};

#[cfg(feature = "tls")]
use super::tls::RustlsConfig;
use super::{
    IntoBindAddr, ServeFuture,
    body::MinDataRate,
    protocol::{Protocol, WorkerSettings},
    signals::{StopSignals, shutdown_all_on, shutdown_all_when, upgrade_on},
};
use crate::hermes::HermesLayer;

/// An application about to be served by a Hermes server; made by
/// [`serve()`](super::serve()) (axum) or [`serve_tonic`](super::serve_tonic)
/// (gRPC), which differ only in their protocol `P`.
///
/// Await it to serve until ctrl-c or `SIGTERM` (or the future given to
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown)), or
/// [`start`](Serve::start) it for a [`ServerHandle`].
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use hermes_runtime::Builder;
///
/// # async fn run() -> std::io::Result<()> {
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let mut builder = Builder::new();
/// builder.workers(2);
/// let handle = hermes_tower::serve("127.0.0.1:0", app)
///     .with_builder(builder)
///     .with_stats()
///     .start()?;
/// println!("http://{}/_hermes/stats (mode {})", handle.local_addr(), handle.mode());
/// handle.shutdown();
/// # Ok(())
/// # }
/// ```
#[must_use = "a Serve does nothing until it is awaited or started"]
pub struct Serve<A, P> {
    addr: A,
    /// More addresses ([`Serve::also_bind`]), resolved when given.
    also: Vec<io::Result<SocketAddr>>,
    pub(super) protocol: P,
    builder: Builder,
    pub(crate) settings: WorkerSettings,
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    upgrades: bool,
}

impl<A, P> fmt::Debug for Serve<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("builder", &self.builder)
            .field("settings", &self.settings)
            .field("graceful_shutdown", &self.signal.is_some())
            .field("upgrades", &self.upgrades)
            .finish_non_exhaustive()
    }
}

impl<A, P> Serve<A, P> {
    /// `protocol` on `addr`, with every option at its default.
    pub(super) fn new(addr: A, protocol: P) -> Self {
        Self {
            addr,
            also: Vec::new(),
            protocol,
            builder: Builder::new(),
            settings: WorkerSettings::default(),
            signal: None,
            upgrades: false,
        }
    }

    /// The same options, with another protocol.
    pub(super) fn map_protocol<Q>(self, f: impl FnOnce(P) -> Q) -> Serve<A, Q> {
        Serve {
            addr: self.addr,
            also: self.also,
            protocol: f(self.protocol),
            builder: self.builder,
            settings: self.settings,
            signal: self.signal,
            upgrades: self.upgrades,
        }
    }

    /// The server's settings (workers, mode, `require_ebpf`, drain timeout,
    /// the worker runtimes, ...). Its address is replaced by the one given
    /// to [`serve()`](super::serve()). Default: [`Builder::new()`].
    pub fn with_builder(mut self, builder: Builder) -> Self {
        self.builder = builder;
        self
    }

    /// The layer put around each connection's service, for other settings
    /// than the default ones (such as [`HermesLayer::service_time`]).
    /// Default: [`HermesLayer::new()`].
    pub fn with_layer(mut self, layer: HermesLayer) -> Self {
        self.settings.layer = Some(layer);
        self
    }

    /// Serves the application as it is, without [`HermesLayer`] (for an
    /// app that adds the layer itself). Without the layer the table has no
    /// in-flight counts, and the scheduler sees only connections, accept
    /// queues and heartbeats.
    pub fn without_layer(mut self) -> Self {
        self.settings.layer = None;
        self
    }

    /// Also serves the server's snapshot as JSON at `/_hermes/stats`
    /// ([`crate::stats_router`]), ahead of the application and outside the
    /// layer, so reading the stats does not count as load (and the
    /// application never sees that path). On a gRPC server it answers a GET
    /// over HTTP/2 (`curl --http2-prior-knowledge`), or over HTTP/1 when
    /// the tonic server accepts HTTP/1. Default: off: the one-line change
    /// must not add a path to an application's public surface.
    pub fn with_stats(mut self) -> Self {
        self.settings.stats = true;
        self
    }

    /// Sets `TCP_NODELAY` on every accepted connection, or not: the same
    /// as [`Builder::tcp_nodelay`] on the server's builder (what axum users
    /// do with `listener.tap_io(..)`; tonic ignores its own setting for
    /// connections it did not accept). Default: on.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.builder.tcp_nodelay(nodelay);
        self
    }

    /// Serves TLS: each worker runs the TLS handshakes of the connections
    /// it accepted (so their cost counts as that worker's load), then serves
    /// HTTP/2 or HTTP/1.1 as negotiated by ALPN (gRPC clients ask for
    /// `h2`). See [`RustlsConfig`] for the certificates, their reload and
    /// the handshake timeout.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, config: RustlsConfig) -> Self {
        self.settings.tls = Some(config);
        self
    }

    /// How long a client may take to send a whole request head, from its
    /// first byte: an HTTP/1 request line and headers, the HTTP/2 preface, an
    /// HTTP/2 header block (HEADERS and its CONTINUATIONs); a connection
    /// still short of it then is closed. `None` waits for ever. Default:
    /// [`DEFAULT_HEADER_READ_TIMEOUT`](super::DEFAULT_HEADER_READ_TIMEOUT)
    /// (30 s, hyper's own default when it has a timer).
    pub fn header_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.timeouts.header = timeout;
        self
    }

    /// How long a connection may stay open with no request in progress
    /// before it is closed: an HTTP/1 keep-alive connection between requests
    /// (nothing read or written), an HTTP/2 connection (a gRPC channel too)
    /// with no stream open, whatever PINGs or other frames it sends (as Go's
    /// HTTP/2 server counts it), a client that connected and sent nothing. A
    /// request is in progress from its head until its response's body ends,
    /// so neither a handler that takes long nor a quiet streamed response is
    /// cut by it. `None` keeps idle connections for ever. Default:
    /// [`DEFAULT_IDLE_TIMEOUT`](super::DEFAULT_IDLE_TIMEOUT) (60 s).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.timeouts.idle = timeout;
        self
    }

    /// The least rate at which a client must send a request body while its
    /// handler waits for it, after a grace period (see [`MinDataRate`]); a
    /// slower body fails the handler's read, so a client trickling a body
    /// holds neither the handler nor the connection. `None` waits for ever.
    /// `serve` only: gRPC streams may idle between messages (tonic's
    /// `timeout` bounds a call). Default: [`MinDataRate::DEFAULT`] (240
    /// bytes/s after 5 s).
    pub fn min_request_body_rate(mut self, rate: Option<MinDataRate>) -> Self {
        self.settings.body_rate = rate;
        self
    }

    /// Close each HTTP/1 keep-alive connection after it has served `max`
    /// requests (`Connection: close` on the last response), so that clients
    /// reconnect and the kernel places their new connections with the
    /// current table; `None` sets no limit. HTTP/2 connections are not
    /// closed: their streams are placed one by one. Each connection counts
    /// its own requests (with `serve_tonic`, those it serves over HTTP/1).
    /// Counted as `recycled` in the snapshot and metrics. Default: `None`.
    pub fn max_requests_per_connection(mut self, max: Option<u64>) -> Self {
        self.settings.limits.max_requests = max;
        self
    }

    /// Close each HTTP/1 keep-alive connection on its first response after
    /// it is `age` old (`Connection: close`), as
    /// [`Serve::max_requests_per_connection`] does after a count; `None`
    /// sets no limit. A gRPC server gives it to tonic as its
    /// `max_connection_age`: each connection that old is sent an HTTP/2
    /// GOAWAY, its calls in progress finish, and the client reconnects
    /// (not counted as `recycled`: tonic does not say when it sends one).
    /// As with tonic's own setting, a call the client hands to the
    /// connection just as its GOAWAY arrives fails on the client with
    /// `Cancelled` before it is sent, and may be retried. Default: `None`.
    pub fn max_connection_age(mut self, age: Option<Duration>) -> Self {
        self.settings.limits.max_age = age;
        self
    }

    /// Stops the server when `signal` resolves, in place of ctrl-c and
    /// `SIGTERM`: every worker stops accepting, finishes its requests (up to
    /// the drain timeout), and the future resolves. As with axum's
    /// `with_graceful_shutdown`, the signals are then yours to handle (see
    /// [`ctrl_c_or_sigterm`](super::ctrl_c_or_sigterm) to keep them).
    /// Applies to `.await`; [`start`](Serve::start) ignores it.
    ///
    /// ```no_run
    /// use axum::{Router, routing::get};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let app = Router::new().route("/", get(|| async { "hello" }));
    /// let server = hermes_tower::serve("127.0.0.1:3000", app).with_graceful_shutdown(async move {
    ///     let _ = stopped.await;
    /// });
    /// # drop(stop);
    /// server.await
    /// # }
    /// ```
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// Zero-downtime upgrades in one setting: on `SIGUSR2` the server starts
    /// the current binary again with the same arguments (install the new
    /// release at the same path first), hands it the listeners and the
    /// kernel state, and drains once the new process serves; the future
    /// then resolves (see [`hermes_runtime::upgrade`]). A process started
    /// that way takes over instead of binding anew
    /// ([`Builder::upgrade_from_env`]). When the new process fails to
    /// start or refuses, this server keeps serving and logs why. With
    /// [`Serve::start`], the handle's [`ServerHandle::upgrade`] does the
    /// same on demand, and [`upgrade_on_sigusr2`](super::upgrade_on_sigusr2)
    /// waits for the signals. One address only (not with
    /// [`Serve::also_bind`]).
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// hermes_tower::serve("0.0.0.0:3000", app).with_upgrades().await
    /// # }
    /// ```
    pub fn with_upgrades(mut self) -> Self {
        self.upgrades = true;
        self
    }

    /// Also listens on `addr` (IPv4 and IPv6, or another port), with its own
    /// server: its own workers (as many as the builder says, so two
    /// addresses run twice the threads), its own `SO_REUSEPORT` group and
    /// its own dispatch program attached to that group, all serving the same
    /// application. Awaiting serves every address and stops them together;
    /// [`Serve::start_all`] gives one handle per address.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// hermes_tower::serve("0.0.0.0:8080", app).also_bind("[::1]:8080").also_bind("0.0.0.0:8081").await
    /// # }
    /// ```
    pub fn also_bind(mut self, addr: impl IntoBindAddr) -> Self {
        self.also.push(addr.into_bind_addr());
        self
    }
}

impl<A: IntoBindAddr, P: Protocol> Serve<A, P> {
    /// Binds the address, starts the workers and returns at once.
    ///
    /// Nothing stops the server on a signal: call
    /// [`ServerHandle::shutdown`], or pass the handle to
    /// [`shutdown_on_signal`](super::shutdown_on_signal) or
    /// [`shutdown_when`](super::shutdown_when). Dropping the handle stops
    /// the server too (without waiting); [`ServerHandle::detach`] keeps it
    /// running.
    ///
    /// # Errors
    /// The address's resolution error; `InvalidInput` naming the setting
    /// for a zero timeout or limit (`None` turns one off); and
    /// [`Builder::build`]'s and [`hermes_runtime::Server::serve`]'s errors
    /// (a bad setting, the bind error, a refused dispatch program with
    /// `require_ebpf`).
    pub fn start(self) -> io::Result<ServerHandle> {
        if !self.also.is_empty() {
            return Err(invalid(
                "Serve::start serves one address; with Serve::also_bind, call Serve::start_all",
            ));
        }
        let mut handles = self.start_all()?;
        Ok(handles.remove(0))
    }

    /// Starts one server per address (the one given to
    /// [`serve()`](super::serve()) first, then those of
    /// [`Serve::also_bind`]) and returns their handles in that order, at
    /// once; see [`Serve::start`].
    ///
    /// # Errors
    /// As [`Serve::start`], for any address; the servers already started
    /// are then stopped.
    pub fn start_all(mut self) -> io::Result<Vec<ServerHandle>> {
        self.settings.validate()?;
        let agent = self.settings.reports.agent.take();
        let mut addrs = vec![self.addr.into_bind_addr()?];
        for addr in self.also {
            addrs.push(addr?);
        }
        if self.upgrades && addrs.len() > 1 {
            return Err(invalid(
                "Serve::with_upgrades hands over one server: it cannot be combined with Serve::also_bind",
            ));
        }
        let mut builder = self.builder;
        if self.upgrades {
            builder.upgrade_from_env(true);
        }
        let protocol = Arc::new(self.protocol);
        let mut handles = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let mut builder = builder.clone();
            // On an error, the handles started so far drop: their servers stop.
            let server = builder.bind(addr).build()?;
            let (protocol, settings) = (protocol.clone(), self.settings.clone());
            let handle =
                server.serve(move |listener: HermesListener| protocol.serve_worker(listener, &settings))?;
            log_start(&handle);
            handles.push(handle);
        }
        if let Some(agent) = agent {
            agent.start(handles.iter().map(ServerHandle::load_source).collect())?;
        }
        Ok(handles)
    }
}

impl<A, P> std::future::IntoFuture for Serve<A, P>
where
    A: IntoBindAddr + Send + 'static,
    P: Protocol,
{
    type Output = io::Result<()>;
    type IntoFuture = ServeFuture;

    fn into_future(mut self) -> ServeFuture {
        let signal = self.signal.take();
        let upgrades = self.upgrades;
        // A listener given is closed now, as `axum::serve` and tonic's
        // `serve` consume theirs.
        let this = self.resolved();
        ServeFuture::new(async move {
            let this = this?;
            // The handlers go in before the workers start, so that a signal
            // sent as soon as the server answers is not missed.
            let stop = match signal {
                Some(signal) => Ok(signal),
                None => Err(StopSignals::install()),
            };
            let usr2 = upgrades.then(|| unix_signal(SignalKind::user_defined2()));
            // Loading the program, binding and the start-up wait block: on
            // the blocking pool, not on the caller's executor thread.
            let mut handles =
                tokio::task::spawn_blocking(move || this.start_all()).await.map_err(io::Error::other)??;
            if let Some(usr2) = usr2 {
                // One server (checked by `start_all`).
                let handle = handles.remove(0);
                return upgrade_on(handle, usr2, async move {
                    match stop {
                        Ok(signal) => signal.await,
                        Err(Ok(mut signals)) => signals.recv().await,
                        Err(Err(e)) => {
                            tracing::error!(error = %e, "no SIGINT/SIGTERM handler");
                            std::future::pending::<()>().await;
                        }
                    }
                })
                .await;
            }
            match stop {
                Ok(signal) => shutdown_all_when(handles, signal).await,
                Err(signals) => shutdown_all_on(handles, signals).await,
            }
        })
    }
}

impl<A: IntoBindAddr, P> Serve<A, P> {
    /// The same, with the first address resolved (a listener given is
    /// closed).
    fn resolved(self) -> io::Result<Serve<SocketAddr, P>> {
        Ok(Serve {
            addr: self.addr.into_bind_addr()?,
            also: self.also,
            protocol: self.protocol,
            builder: self.builder,
            settings: self.settings,
            signal: self.signal,
            upgrades: self.upgrades,
        })
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// Logs where the server listens and its mode (with the fallback's reason).
fn log_start(handle: &ServerHandle) {
    match handle.mode_reason() {
        Some(reason) => tracing::info!(
            addr = %handle.local_addr(),
            mode = %handle.mode(),
            reason,
            "Hermes server started without its dispatch program"
        ),
        None => tracing::info!(addr = %handle.local_addr(), mode = %handle.mode(), "Hermes server started"),
    }
}
