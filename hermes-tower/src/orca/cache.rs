//! [`Reports`]: a worker's per-request ORCA values, encoded once per
//! refresh of the host's load (once per tick), not once per request.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hermes_runtime::LoadSource;
use http::HeaderValue;

use super::{OrcaFormat, report::OrcaLoadReport};

/// The encoded report of one refresh of the host's load.
#[derive(Debug)]
struct Encoded {
    generation: u64,
    /// `endpoint-load-metrics` in the configured format (HTTP).
    header: HeaderValue,
    /// `endpoint-load-metrics-bin`: the serialized report in base64 (gRPC).
    trailer: HeaderValue,
}

/// The ORCA values one worker puts on its responses, with the host's load
/// they come from and the errors counted into it. Made on the worker's
/// thread; shared by its connections.
#[derive(Debug)]
pub(crate) struct Reports {
    source: LoadSource,
    format: OrcaFormat,
    encoded: ArcSwap<Encoded>,
}

impl Reports {
    /// The reports of the current worker's server in `format`, or `None`
    /// outside a Hermes worker (the layer then adds nothing).
    pub(crate) fn for_current_worker(format: OrcaFormat) -> Option<Arc<Self>> {
        let source = hermes_runtime::context::current()?.load_source()?;
        let encoded = ArcSwap::from_pointee(encode(&source, format));
        Some(Arc::new(Self { source, format, encoded }))
    }

    /// The header value of the latest refresh. Per request: two `arc-swap`
    /// loads and a reference-count increment on the value's bytes, no
    /// allocation and no lock, except on the first request after a refresh
    /// (once per tick), which encodes the new report.
    pub(crate) fn header(&self) -> HeaderValue {
        self.current(|e| e.header.clone())
    }

    /// The trailer value of the latest refresh, as [`Reports::header`].
    pub(crate) fn trailer(&self) -> HeaderValue {
        self.current(|e| e.trailer.clone())
    }

    /// Counts one failed response into the host's error rate.
    pub(crate) fn count_error(&self) {
        self.source.count_error();
    }

    fn current(&self, pick: impl FnOnce(&Encoded) -> HeaderValue) -> HeaderValue {
        let generation = self.source.load().generation;
        let encoded = self.encoded.load();
        if encoded.generation == generation {
            return pick(&encoded);
        }
        drop(encoded);
        let fresh = Arc::new(encode(&self.source, self.format));
        let value = pick(&fresh);
        self.encoded.store(fresh);
        value
    }
}

/// The values of the load `source` publishes now.
fn encode(source: &LoadSource, format: OrcaFormat) -> Encoded {
    let load = source.load();
    let report = OrcaLoadReport::from_load(&load);
    Encoded {
        generation: load.generation,
        header: value(report.header_value(format)),
        trailer: value(report.to_base64()),
    }
}

/// A header value made of `s`, whose clones share its bytes. Reports are
/// ASCII (decimals, field names, base64), always valid.
fn value(s: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).unwrap_or_else(|_| HeaderValue::from_static(""))
}
