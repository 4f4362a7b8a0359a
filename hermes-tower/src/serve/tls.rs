//! TLS for [`serve()`](super::serve()): [`RustlsConfig`], a rustls server
//! configuration that can be reloaded while serving, with the settings of
//! the per-worker handshakes (run by `handshake.rs`).
//!
//! Built on `tokio-rustls` directly rather than an `axum-server` acceptor:
//! the connections must keep going through `axum::serve` (it alone can call
//! the make-services that `axum::serve` accepts, such as
//! `into_make_service_with_connect_info`) and must stay the worker's own
//! counted [`HermesStream`]s; `axum-server` brings its own serve loop and
//! listener instead. The handshake is `tokio-rustls`' (what `axum-server`
//! uses too); this module adds only where it runs, its timeout, and the
//! reload.
//!
//! The crypto provider is rustls' `ring` one, chosen explicitly (not the
//! process default), so a build never needs `aws-lc-rs` and its cmake.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The ALPN protocols offered by the configurations made from PEM: HTTP/2
/// first, then HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A rustls server configuration for [`Serve::with_tls`](super::Serve::with_tls),
/// replaceable while the server runs: each handshake takes the
/// configuration current when its connection was accepted, so a reload
/// (a renewed certificate) applies to new connections without a restart and
/// leaves established ones alone.
///
/// Clones share the configuration: keep one to reload it. Made from PEM
/// files (or bytes), a configuration offers ALPN `h2` and `http/1.1` and uses
/// rustls' `ring` provider with its safe default protocol versions.
///
/// ```no_run
/// use hermes_tower::serve::RustlsConfig;
///
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let tls = RustlsConfig::from_pem_file("cert.pem", "key.pem")?;
/// tls.reload_on_sighup()?; // `kill -HUP` rereads cert.pem and key.pem
/// hermes_tower::serve("0.0.0.0:443", app).with_tls(tls).await
/// # }
/// ```
#[derive(Clone)]
pub struct RustlsConfig {
    pub(super) shared: Arc<Shared>,
    pub(super) first_byte_timeout: Duration,
    pub(super) handshake_timeout: Duration,
    pub(super) max_handshakes: usize,
}

pub(super) struct Shared {
    pub(super) config: ArcSwap<ServerConfig>,
    /// The files read by [`RustlsConfig::reload`], when made from files.
    files: Option<(PathBuf, PathBuf)>,
    pub(super) failed: AtomicU64,
    pub(super) timed_out: AtomicU64,
    pub(super) evicted: AtomicU64,
    reloads: AtomicU64,
}

/// Counters of a [`RustlsConfig`], summed over every worker using it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Handshakes that failed (a client that does not trust the
    /// certificate, no common protocol or ALPN, a client that went away).
    pub failed: u64,
    /// Handshakes stopped by a timeout: the first-byte timeout (a client
    /// that sent nothing) or the handshake timeout.
    pub timed_out: u64,
    /// Connections that had sent nothing, closed to give their handshake
    /// slot to a new connection (see [`RustlsConfig::max_handshakes`]).
    pub evicted: u64,
    /// Successful reloads.
    pub reloads: u64,
}

impl fmt::Debug for RustlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustlsConfig")
            .field("files", &self.shared.files)
            .field("alpn", &self.shared.config.load().alpn_protocols)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("stats", &self.stats())
            .finish()
    }
}

fn invalid(what: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

fn pem_error(path: &Path, what: &str, e: rustls::pki_types::pem::Error) -> io::Error {
    match e {
        rustls::pki_types::pem::Error::Io(e) => {
            io::Error::new(e.kind(), format!("reading the {what} from {}: {e}", path.display()))
        }
        e => invalid(format!("parsing the {what} in {}: {e}", path.display())),
    }
}

fn read_pem_files(cert: &Path, key: &Path) -> io::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, "certificate chain", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, "certificate chain", e))?;
    if certs.is_empty() {
        return Err(invalid(format!("{} holds no PEM certificate", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, "private key", e))?;
    server_config(certs, key_der)
        .map_err(|e| invalid(format!("certificate {} with key {}: {e}", cert.display(), key.display())))
}

fn parse_pem(cert: &[u8], key: &[u8]) -> io::Result<ServerConfig> {
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("parsing the PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("the certificate PEM holds no certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| invalid(format!("parsing the PEM private key: {e}")))?;
    server_config(certs, key_der).map_err(invalid)
}

/// A server configuration on the `ring` provider with ALPN `h2`, `http/1.1`.
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

impl RustlsConfig {
    /// Default of [`RustlsConfig::first_byte_timeout`].
    pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
    /// Default of [`RustlsConfig::handshake_timeout`].
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of [`RustlsConfig::max_handshakes`].
    pub const DEFAULT_MAX_HANDSHAKES: usize = 256;

    fn new(config: Arc<ServerConfig>, files: Option<(PathBuf, PathBuf)>) -> Self {
        Self {
            shared: Arc::new(Shared {
                config: ArcSwap::new(config),
                files,
                failed: AtomicU64::new(0),
                timed_out: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                reloads: AtomicU64::new(0),
            }),
            first_byte_timeout: Self::DEFAULT_FIRST_BYTE_TIMEOUT,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: Self::DEFAULT_MAX_HANDSHAKES,
        }
    }

    /// Reads the certificate chain (PEM, leaf first) and the private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1) from files; [`RustlsConfig::reload`]
    /// reads the same files again.
    ///
    /// # Errors
    /// A file that cannot be read (its error kind kept), and `InvalidInput`
    /// naming the file for bad PEM, no certificate, or a key that does not
    /// match the certificate.
    pub fn from_pem_file(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<Self> {
        let (cert, key) = (cert.as_ref().to_path_buf(), key.as_ref().to_path_buf());
        let config = read_pem_files(&cert, &key)?;
        Ok(Self::new(Arc::new(config), Some((cert, key))))
    }

    /// The certificate chain and private key as PEM bytes.
    ///
    /// # Errors
    /// `InvalidInput` for bad PEM, no certificate, or a key that does not
    /// match the certificate.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> io::Result<Self> {
        Ok(Self::new(Arc::new(parse_pem(cert, key)?), None))
    }

    /// A configuration of your own (client authentication, several
    /// certificates by SNI, another provider). Its ALPN list is kept as it
    /// is: offer `h2` there for HTTP/2 (see [`ALPN`]).
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        Self::new(config, None)
    }

    /// How long a new connection may stay silent: one that has sent no
    /// byte of its ClientHello that long after it was accepted is closed
    /// and counted in [`TlsStats::timed_out`]. A real client sends its
    /// ClientHello with its first packet; a lost packet is sent again well
    /// within the default. Default: [`Self::DEFAULT_FIRST_BYTE_TIMEOUT`]
    /// (3 s).
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Self {
        self.first_byte_timeout = timeout;
        self
    }

    /// How long a handshake may take, from accept to its end
    /// (the ClientHello included); a connection still handshaking then is closed and
    /// counted in [`TlsStats::timed_out`], so slow clients cannot hold
    /// connections. Default: [`Self::DEFAULT_HANDSHAKE_TIMEOUT`] (10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many handshakes one worker runs at once, at least 1: its slots.
    /// With every slot taken, a new connection takes the slot of the
    /// connection that has waited longest without sending a byte (closed,
    /// counted in [`TlsStats::evicted`]), so idle sockets cannot keep real
    /// clients out; when every slot holds a handshake under way, the worker
    /// stops accepting until one finishes (the waiting connections stay in
    /// its accept queue, which the scheduler counts as load). Default:
    /// [`Self::DEFAULT_MAX_HANDSHAKES`] (256).
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n.max(1);
        self
    }

    /// Reads the files given to [`RustlsConfig::from_pem_file`] again and
    /// serves the new certificate on new connections.
    ///
    /// # Errors
    /// As [`RustlsConfig::from_pem_file`], and `InvalidInput` when the
    /// configuration was not made from files. On error the configuration in
    /// use is kept.
    pub fn reload(&self) -> io::Result<()> {
        let Some((cert, key)) = &self.shared.files else {
            return Err(invalid("this TLS configuration was not made from PEM files: nothing to reload"));
        };
        self.swap(read_pem_files(cert, key)?);
        Ok(())
    }

    /// Serves the certificate and key of these PEM files on new connections
    /// (they are not remembered for [`RustlsConfig::reload`]).
    ///
    /// # Errors
    /// As [`RustlsConfig::from_pem_file`]; on error the configuration in use
    /// is kept.
    pub fn reload_from_pem_file(&self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<()> {
        self.swap(read_pem_files(cert.as_ref(), key.as_ref())?);
        Ok(())
    }

    /// Serves this PEM certificate chain and key on new connections.
    ///
    /// # Errors
    /// As [`RustlsConfig::from_pem`]; on error the configuration in use is
    /// kept.
    pub fn reload_from_pem(&self, cert: &[u8], key: &[u8]) -> io::Result<()> {
        self.swap(parse_pem(cert, key)?);
        Ok(())
    }

    /// Serves this configuration on new connections.
    pub fn reload_from_config(&self, config: Arc<ServerConfig>) {
        self.shared.config.store(config);
        self.count_reload();
    }

    fn swap(&self, config: ServerConfig) {
        self.shared.config.store(Arc::new(config));
        self.count_reload();
    }

    fn count_reload(&self) {
        // Relaxed: a counter for stats; it orders nothing.
        self.shared.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(files = ?self.shared.files, "TLS configuration reloaded");
    }

    /// Calls [`RustlsConfig::reload`] on every `SIGHUP`, from a task spawned
    /// on the current Tokio runtime; a failed reload is logged as an error
    /// and the configuration in use kept. Abort the returned task to stop.
    ///
    /// # Errors
    /// When the `SIGHUP` handler cannot be installed.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn reload_on_sighup(&self) -> io::Result<tokio::task::JoinHandle<()>> {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match this.reload() {
                    Ok(()) => tracing::debug!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the current certificate")
                    }
                }
            }
        }))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.shared.config.load_full()
    }

    /// Handshake failures, timeouts, evictions and reloads so far.
    pub fn stats(&self) -> TlsStats {
        // Relaxed: independent counters read for display.
        TlsStats {
            failed: self.shared.failed.load(Ordering::Relaxed),
            timed_out: self.shared.timed_out.load(Ordering::Relaxed),
            evicted: self.shared.evicted.load(Ordering::Relaxed),
            reloads: self.shared.reloads.load(Ordering::Relaxed),
        }
    }
}
