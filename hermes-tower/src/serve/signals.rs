//! Stopping and upgrading started servers: on ctrl-c or `SIGTERM`
//! ([`shutdown_on_signal`]), on a future of the application's own
//! ([`shutdown_when`]), and upgrading on `SIGUSR2` ([`upgrade_on_sigusr2`]).

use std::{io, time::Duration};

use hermes_runtime::{ServerHandle, WorkerStatus};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Serves until ctrl-c (`SIGINT`) or `SIGTERM`, then shuts `handle`'s server
/// down gracefully and resolves once every worker has stopped; also resolves
/// when every worker stopped by itself. A second signal during the drain
/// resolves at once, leaving the remaining workers to end with the process.
///
/// Call it from a Tokio runtime (its blocking pool waits for the workers).
/// Called there, it installs the signal handlers at once, before the future
/// is first polled: a signal that arrives in between (a supervisor's stop
/// right after the address is printed) stops the server instead of killing
/// the process.
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     let app = Router::new().route("/", get(|| async { "hello" }));
///     let handle = hermes_tower::serve("127.0.0.1:3000", app).start()?;
///     println!("mode: {}", handle.mode());
///     hermes_tower::serve::shutdown_on_signal(handle).await
/// }
/// ```
///
/// # Errors
/// When the signal handlers cannot be installed (the server is then shut
/// down before returning).
pub fn shutdown_on_signal(handle: ServerHandle) -> impl Future<Output = io::Result<()>> + Send {
    // Outside a runtime the handlers cannot be installed yet: then they are
    // installed on the first poll.
    let early = tokio::runtime::Handle::try_current().ok().map(|_| StopSignals::install());
    async move {
        let signals = early.unwrap_or_else(StopSignals::install);
        shutdown_all_on(vec![handle], signals).await
    }
}

/// `SIGINT` and `SIGTERM` as streams. The one-line serve installs them
/// before it starts the server: from then on either signal is caught by
/// Tokio's handler and waits in the stream, so one that arrives while the
/// workers start (a supervisor's stop right after the start) stops the
/// server instead of killing the process.
pub(crate) struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Installs both handlers (from a Tokio runtime with signals enabled).
    pub(crate) fn install() -> io::Result<Self> {
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    /// The next `SIGINT` or `SIGTERM`, logged.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT"),
            _ = self.terminate.recv() => tracing::info!("SIGTERM"),
        }
    }
}

/// [`shutdown_on_signal`] for several servers (one per address), stopped
/// together, with handlers installed earlier (an error: they could not be,
/// and the servers are shut down at once).
pub(crate) async fn shutdown_all_on(
    handles: Vec<ServerHandle>,
    signals: io::Result<StopSignals>,
) -> io::Result<()> {
    let StopSignals { mut interrupt, mut terminate } = match signals {
        Ok(s) => s,
        Err(e) => {
            shutdown_all(handles).await?;
            return Err(e);
        }
    };
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting the Hermes server down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting the Hermes server down"),
        () = all_stopped(&handles) => return join_all(handles).await,
    }
    let mut done = std::pin::pin!(shutdown_all(handles));
    tokio::select! {
        result = &mut done => result,
        _ = interrupt.recv() => {
            tracing::warn!("second signal: not waiting for the workers to drain");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::warn!("second signal: not waiting for the workers to drain");
            Ok(())
        }
    }
}

/// Shuts `handle`'s server down gracefully once `signal` resolves, and
/// resolves once every worker has stopped; also resolves when every worker
/// stopped by itself. [`Serve::with_graceful_shutdown`](super::Serve::with_graceful_shutdown) awaits this.
///
/// Call it from a Tokio runtime (its blocking pool waits for the workers).
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let handle = hermes_tower::serve("127.0.0.1:3000", app).start()?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// # drop(stop);
/// hermes_tower::serve::shutdown_when(handle, async move {
///     let _ = stopped.await;
/// })
/// .await
/// # }
/// ```
///
/// # Errors
/// When the task waiting for the workers panicked.
pub async fn shutdown_when<F>(handle: ServerHandle, signal: F) -> io::Result<()>
where
    F: Future<Output = ()>,
{
    shutdown_all_when(vec![handle], signal).await
}

/// [`shutdown_when`] for several servers (one per address), stopped together.
pub(crate) async fn shutdown_all_when<F>(handles: Vec<ServerHandle>, signal: F) -> io::Result<()>
where
    F: Future<Output = ()>,
{
    tokio::select! {
        () = signal => tracing::info!("shutdown signal: shutting the Hermes server down"),
        () = all_stopped(&handles) => return join_all(handles).await,
    }
    shutdown_all(handles).await
}

/// Shuts every server down at once (each on the blocking pool) and waits for all.
async fn shutdown_all(handles: Vec<ServerHandle>) -> io::Result<()> {
    let tasks: Vec<_> =
        handles.into_iter().map(|h| tokio::task::spawn_blocking(move || h.shutdown())).collect();
    for task in tasks {
        task.await.map_err(io::Error::other)?;
    }
    Ok(())
}

/// Joins every server (on the blocking pool).
async fn join_all(handles: Vec<ServerHandle>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || handles.into_iter().for_each(ServerHandle::join))
        .await
        .map_err(io::Error::other)
}

/// Resolves on ctrl-c (`SIGINT`) or `SIGTERM`: the default shutdown signals,
/// to combine with your own in [`Serve::with_graceful_shutdown`](super::Serve::with_graceful_shutdown).
///
/// ```no_run
/// # async fn run(app: axum::Router, token: tokio::sync::Notify) -> std::io::Result<()> {
/// hermes_tower::serve("127.0.0.1:3000", app)
///     .with_graceful_shutdown(async move {
///         tokio::select! {
///             _ = hermes_tower::serve::ctrl_c_or_sigterm() => {}
///             _ = token.notified() => {}
///         }
///     })
///     .await
/// # }
/// ```
///
/// # Errors
/// When the signal handlers cannot be installed.
pub async fn ctrl_c_or_sigterm() -> io::Result<()> {
    StopSignals::install()?.recv().await;
    Ok(())
}

/// Serves until `stop` resolves (then shuts down gracefully, as
/// [`shutdown_when`]), and upgrades on every `SIGUSR2`: the current binary
/// is started again with the same arguments and takes over the listeners
/// and the kernel state ([`ServerHandle::upgrade`]); once it serves, this
/// server drains and the future resolves. A failed upgrade is logged and
/// this server keeps serving (and waits for the next signal).
///
/// Call it from a Tokio runtime (its blocking pool runs the upgrade and
/// waits for the workers). The new process must start its server with
/// [`Builder::upgrade_from_env`](hermes_runtime::Builder::upgrade_from_env)
/// (what [`Serve::with_upgrades`](super::Serve::with_upgrades) sets).
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let mut builder = hermes_runtime::Builder::new();
/// builder.upgrade_from_env(true);
/// let handle = hermes_tower::serve("0.0.0.0:3000", app).with_builder(builder).start()?;
/// hermes_tower::serve::upgrade_on_sigusr2(handle, async {
///     let _ = hermes_tower::serve::ctrl_c_or_sigterm().await;
/// })
/// .await
/// # }
/// ```
///
/// # Errors
/// When the `SIGUSR2` handler cannot be installed (the server is then shut
/// down before returning), or the task waiting for the workers panicked.
pub async fn upgrade_on_sigusr2<F>(handle: ServerHandle, stop: F) -> io::Result<()>
where
    F: Future<Output = ()>,
{
    upgrade_on(handle, signal(SignalKind::user_defined2()), stop).await
}

/// [`upgrade_on_sigusr2`] with the `SIGUSR2` handler installed earlier (an
/// error: it could not be, and the server is shut down at once). Installed
/// before the server starts, or before it announces itself to whoever may
/// signal it, a `SIGUSR2` that comes in between waits in the stream:
/// unhandled, the signal would kill the process.
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// use tokio::signal::unix::{SignalKind, signal};
///
/// let usr2 = signal(SignalKind::user_defined2());
/// let mut builder = hermes_runtime::Builder::new();
/// builder.upgrade_from_env(true);
/// let handle = hermes_tower::serve("0.0.0.0:3000", app).with_builder(builder).start()?;
/// println!("serving on {}", handle.local_addr());
/// hermes_tower::serve::upgrade_on(handle, usr2, async {
///     let _ = hermes_tower::serve::ctrl_c_or_sigterm().await;
/// })
/// .await
/// # }
/// ```
///
/// # Errors
/// As [`upgrade_on_sigusr2`].
pub async fn upgrade_on<F>(handle: ServerHandle, usr2: io::Result<Signal>, stop: F) -> io::Result<()>
where
    F: Future<Output = ()>,
{
    let mut usr2 = match usr2 {
        Ok(s) => s,
        Err(e) => {
            tokio::task::spawn_blocking(move || handle.shutdown()).await.map_err(io::Error::other)?;
            return Err(e);
        }
    };
    let mut stop = std::pin::pin!(stop);
    let mut handle = handle;
    loop {
        tokio::select! {
            () = &mut stop => {
                tracing::info!("shutdown signal: shutting the Hermes server down");
                break;
            }
            () = all_stopped(std::slice::from_ref(&handle)) => {
                return tokio::task::spawn_blocking(move || handle.join()).await.map_err(io::Error::other);
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading the Hermes server");
                let (back, result) = tokio::task::spawn_blocking(move || {
                    let result = handle.upgrade(hermes_runtime::Upgrade::new());
                    (handle, result)
                })
                .await
                .map_err(io::Error::other)?;
                handle = back;
                match result {
                    Ok(done) => {
                        tracing::info!(successor = done.pid, "upgraded; draining");
                        break;
                    }
                    // Logged by the upgrade itself; keep serving.
                    Err(_) => continue,
                }
            }
        }
    }
    tokio::task::spawn_blocking(move || handle.shutdown()).await.map_err(io::Error::other)
}

/// Resolves once every worker of every handle has stopped.
async fn all_stopped(handles: &[ServerHandle]) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if handles.iter().all(|h| h.snapshot().workers.iter().all(|w| w.state == WorkerStatus::Stopped)) {
            return;
        }
    }
}
