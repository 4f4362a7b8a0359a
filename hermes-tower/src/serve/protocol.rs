//! [`Protocol`]: how each worker of a [`Serve`](super::Serve) serves its
//! listener ([`Http`](super::Http) for axum, [`Grpc`](super::Grpc) for
//! tonic), and the [`WorkerSettings`] both are given.

use std::{io, time::Duration};

use hermes_runtime::HermesListener;

#[cfg(feature = "tls")]
use super::tls::RustlsConfig;
use super::{body::MinDataRate, listener::WorkerListener, timeouts::Timeouts};
use crate::{hermes::HermesLayer, orca::LoadReports, place::ConnectionLimits};

/// How long a draining worker keeps answering on idle HTTP/1 keep-alive
/// connections (each answer with `Connection: close`) before it closes
/// those still idle.
pub(crate) const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);

/// What every worker serves with, besides the application.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub(crate) layer: Option<HermesLayer>,
    pub(crate) stats: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<RustlsConfig>,
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: ConnectionLimits,
    pub(crate) body_rate: Option<MinDataRate>,
    /// Load reports for the balancers in front (see [`crate::orca`]).
    pub(crate) reports: LoadReports,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            layer: Some(HermesLayer::new()),
            stats: false,
            #[cfg(feature = "tls")]
            tls: None,
            timeouts: Timeouts::default(),
            limits: ConnectionLimits::default(),
            body_rate: Some(MinDataRate::DEFAULT),
            reports: LoadReports::default(),
        }
    }
}

impl WorkerSettings {
    /// The worker's listener, with TLS and the timeouts.
    pub(crate) fn listener(&self, listener: HermesListener) -> WorkerListener {
        WorkerListener::with(
            listener,
            #[cfg(feature = "tls")]
            self.tls.clone(),
            self.timeouts,
        )
    }

    /// Refuses a zero timeout, limit or rate (`None` turns one off).
    pub(crate) fn validate(&self) -> io::Result<()> {
        let Timeouts { header, idle } = self.timeouts;
        let ConnectionLimits { max_requests, max_age } = self.limits;
        let rate = self.body_rate.unwrap_or_default();
        for (name, zero) in [
            ("header_read_timeout", header.is_some_and(|t| t.is_zero())),
            ("idle_timeout", idle.is_some_and(|t| t.is_zero())),
            ("max_requests_per_connection", max_requests == Some(0)),
            ("max_connection_age", max_age.is_some_and(|t| t.is_zero())),
            ("min_request_body_rate's bytes_per_second", rate.bytes_per_second() == 0),
            ("min_request_body_rate's grace", rate.grace().is_zero()),
        ] {
            if zero {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} must not be zero (None sets no limit)"),
                ));
            }
        }
        self.reports.validate()
    }
}

mod sealed {
    use std::{future::Future, pin::Pin};

    use hermes_runtime::HermesListener;

    use super::WorkerSettings;

    /// What a [`Protocol`](super::Protocol) does; implemented by this crate
    /// only.
    pub trait Sealed: Send + Sync + 'static {
        /// The worker's serve future: serves `listener` with `settings`
        /// until the worker drains.
        fn serve_worker(
            &self,
            listener: HermesListener,
            settings: &WorkerSettings,
        ) -> Pin<Box<dyn Future<Output = ()>>>;
    }
}

pub(crate) use sealed::Sealed;

/// How each worker serves its connections: [`Http`](super::Http) (axum) or
/// [`Grpc`](super::Grpc) (tonic). Implemented by this crate only.
pub trait Protocol: Sealed {}

impl<T: Sealed> Protocol for T {}
