//! The ORCA messages (`xds.data.orca.v3.OrcaLoadReport`, and the request
//! of the out-of-band service), written by hand with `prost`'s derive as
//! `tonic-prost-build` would generate them (so no `protoc` at build time),
//! and the encodings of a report: the serialized message, and the three
//! formats of the `endpoint-load-metrics` header that Envoy parses.
//!
//! The messages follow `xds/data/orca/v3/orca_load_report.proto` and
//! `xds/service/orca/v3/orca.proto` of the cncf/xds repository. The header
//! formats follow Envoy's `source/common/orca/orca_parser.cc`: a value
//! starting `TEXT ` is a comma-separated list of `name:value` pairs (field
//! names of the message, and `named_metrics.<key>`), `JSON ` the message in
//! the protobuf JSON mapping, `BIN ` the serialized message in base64
//! (standard alphabet, padded, as Envoy's `Base64::decode` expects). gRPC
//! clients read the serialized message from the `endpoint-load-metrics-bin`
//! trailer (gRFC A51), a binary header: base64 on the wire, which gRPC
//! implementations accept padded.

use std::{collections::HashMap, fmt::Write as _};

use base64::Engine as _;
use hermes_runtime::HostLoad;

/// The header (HTTP) and trailer (gRPC) that carry a per-request report.
pub const HEADER: &str = "endpoint-load-metrics";
/// The gRPC trailer that carries the serialized report, in base64.
pub const TRAILER: &str = "endpoint-load-metrics-bin";

/// The names of the named metrics a Hermes report carries.
pub mod metric {
    /// Requests in flight over the host's workers.
    pub const IN_FLIGHT: &str = "in_flight";
    /// Workers eligible for new connections (0: the host should be drained).
    pub const ELIGIBLE_WORKERS: &str = "eligible_workers";
    /// Connections waiting in the host's accept queues.
    pub const QUEUE_DEPTH: &str = "queue_depth";
    /// Workers serving.
    pub const WORKERS: &str = "workers";
}

/// `xds.data.orca.v3.OrcaLoadReport`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReport {
    /// CPU utilisation, a fraction of the CPU available (may exceed 1.0).
    #[prost(double, tag = "1")]
    pub cpu_utilization: f64,
    /// Memory utilisation, a fraction of the memory available.
    #[prost(double, tag = "2")]
    pub mem_utilization: f64,
    /// Deprecated in the proto for `rps_fractional`; never set here.
    #[prost(uint64, tag = "3")]
    pub rps: u64,
    /// Application-specific costs of the request.
    #[prost(map = "string, double", tag = "4")]
    pub request_cost: HashMap<String, f64>,
    /// Resource utilisations, fractions of what is available.
    #[prost(map = "string, double", tag = "5")]
    pub utilization: HashMap<String, f64>,
    /// Requests per second served by the endpoint.
    #[prost(double, tag = "6")]
    pub rps_fractional: f64,
    /// Errors per second served by the endpoint.
    #[prost(double, tag = "7")]
    pub eps: f64,
    /// Application-specific opaque metrics.
    #[prost(map = "string, double", tag = "8")]
    pub named_metrics: HashMap<String, f64>,
    /// Application-specific utilisation (gRPC's weighted round robin and
    /// Envoy's client-side weighted round robin prefer it to
    /// `cpu_utilization` when it is set).
    #[prost(double, tag = "9")]
    pub application_utilization: f64,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds past them.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl ProtoDuration {
    /// As a `Duration`; a negative one is zero.
    pub fn to_std(self) -> std::time::Duration {
        let secs = u64::try_from(self.seconds).unwrap_or(0);
        let nanos = u32::try_from(self.nanos).unwrap_or(0).min(999_999_999);
        if self.seconds < 0 { std::time::Duration::ZERO } else { std::time::Duration::new(secs, nanos) }
    }
}

/// `xds.service.orca.v3.OrcaLoadReportRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReportRequest {
    /// How often the client wants a report.
    #[prost(message, optional, tag = "1")]
    pub report_interval: Option<ProtoDuration>,
    /// The request costs wanted (Hermes reports none).
    #[prost(string, repeated, tag = "2")]
    pub request_cost_names: Vec<String>,
}

impl OrcaLoadReport {
    /// The report of a host's load: `cpu_utilization` the process's CPU
    /// share, `application_utilization` the host's utilisation as Hermes
    /// measures it (the larger of its workers' busy share and that CPU
    /// share: see [`HostLoad::utilization`]), `rps_fractional` and `eps` the
    /// rates, and the named metrics of [`metric`].
    pub fn from_load(load: &HostLoad) -> Self {
        let named_metrics = [
            (metric::IN_FLIGHT, load.in_flight),
            (metric::ELIGIBLE_WORKERS, load.eligible),
            (metric::QUEUE_DEPTH, load.queue_depth),
            (metric::WORKERS, load.workers),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), f64::from(v)))
        .collect();
        Self {
            cpu_utilization: finite(load.cpu_utilization),
            application_utilization: finite(load.utilization()),
            rps_fractional: finite(load.rps),
            eps: finite(load.eps),
            named_metrics,
            ..Self::default()
        }
    }

    /// The serialized message.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// The serialized message in base64 (standard alphabet, padded): the
    /// value of the `endpoint-load-metrics-bin` trailer.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// The `TEXT` form's pairs, without the prefix:
    /// `cpu_utilization:0.25,...,named_metrics.in_flight:3`. Named metrics
    /// are sorted by name, so equal reports give equal text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (name, value) in self.fields() {
            let _ = write!(out, "{}{name}:{}", if out.is_empty() { "" } else { "," }, number(value));
        }
        for (name, value) in self.sorted_named() {
            let _ = write!(out, ",named_metrics.{name}:{}", number(value));
        }
        out
    }

    /// The `JSON` form, without the prefix: the message in the protobuf
    /// JSON mapping (lowerCamelCase field names; zero fields left out, as
    /// that mapping prints them).
    pub fn to_json(&self) -> String {
        let mut map = serde_json::Map::new();
        for (name, value) in self.fields() {
            if value != 0.0 {
                map.insert(camel(name), serde_json::json!(value));
            }
        }
        if !self.named_metrics.is_empty() {
            let named: serde_json::Map<_, _> =
                self.sorted_named().map(|(k, v)| (k.to_owned(), serde_json::json!(v))).collect();
            map.insert("namedMetrics".to_owned(), serde_json::Value::Object(named));
        }
        serde_json::Value::Object(map).to_string()
    }

    /// The value of the `endpoint-load-metrics` header in `format`, its
    /// prefix included.
    pub fn header_value(&self, format: super::OrcaFormat) -> String {
        match format {
            super::OrcaFormat::Text => format!("TEXT {}", self.to_text()),
            super::OrcaFormat::Json => format!("JSON {}", self.to_json()),
            super::OrcaFormat::Bin => format!("BIN {}", self.to_base64()),
        }
    }

    /// The scalar fields Hermes sets, by their proto names.
    fn fields(&self) -> [(&'static str, f64); 4] {
        [
            ("cpu_utilization", self.cpu_utilization),
            ("application_utilization", self.application_utilization),
            ("rps_fractional", self.rps_fractional),
            ("eps", self.eps),
        ]
    }

    fn sorted_named(&self) -> impl Iterator<Item = (&str, f64)> {
        let mut named: Vec<_> = self.named_metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter()
    }
}

/// NaN and infinities are refused by Envoy's parser: report them as 0.
fn finite(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// A number in a header: at most six decimals, no exponent, no trailing
/// zeros (`0.25`, `1200`).
fn number(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" { "0".to_owned() } else { s.to_owned() }
}

/// `rps_fractional` → `rpsFractional`.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OrcaLoadReport {
        let load = HostLoad {
            workers: 2,
            eligible: 1,
            in_flight: 3,
            queue_depth: 4,
            worker_utilization: 0.5,
            cpu_utilization: 0.25,
            rps: 1200.0,
            eps: 0.5,
            ..HostLoad::default()
        };
        OrcaLoadReport::from_load(&load)
    }

    #[test]
    fn the_binary_form_decodes_to_the_same_report() {
        let report = sample();
        let bytes = base64::engine::general_purpose::STANDARD.decode(report.to_base64()).unwrap();
        let back: OrcaLoadReport = prost::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.application_utilization, 0.5, "the larger of the workers' and the CPU's share");
        assert_eq!(back.named_metrics["eligible_workers"], 1.0);
    }

    #[test]
    fn the_text_form_is_what_envoy_parses() {
        assert_eq!(
            sample().to_text(),
            "cpu_utilization:0.25,application_utilization:0.5,rps_fractional:1200,eps:0.5,\
             named_metrics.eligible_workers:1,named_metrics.in_flight:3,named_metrics.queue_depth:4,\
             named_metrics.workers:2"
        );
    }

    #[test]
    fn the_json_form_uses_the_protobuf_json_names() {
        let json: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(json["cpuUtilization"], 0.25);
        assert_eq!(json["applicationUtilization"], 0.5);
        assert_eq!(json["rpsFractional"], 1200.0);
        assert_eq!(json["namedMetrics"]["queue_depth"], 4.0);
    }

    #[test]
    fn numbers_are_plain_decimals() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1e-7), "0");
        assert_eq!(number(0.123_456_789), "0.123457");
        assert_eq!(number(1e9), "1000000000");
        assert_eq!(finite(f64::NAN), 0.0);
    }
}
