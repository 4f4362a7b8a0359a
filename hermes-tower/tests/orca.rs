//! ORCA load reports on a real Hermes server over real sockets: a gRPC
//! call's trailers carry `endpoint-load-metrics-bin` (read by tonic's
//! client, decoded as `xds.data.orca.v3.OrcaLoadReport`), an HTTP response
//! carries `endpoint-load-metrics` in each format Envoy parses, a failed
//! call counts in the report's error rate, and the out-of-band stream sends
//! its reports at the interval the client asks for, never below the
//! server's minimum.

use std::{
    collections::HashMap,
    future::IntoFuture,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::get};
use base64::Engine as _;
use hermes_test_support::{
    http,
    server::{shutdown, two_workers},
    wait::{TIMEOUT, poll_async, poll_every},
};
use hermes_tower::orca::{
    OrcaFormat, OrcaLoadReport, OrcaLoadReportRequest, STREAM_CORE_METRICS, TRAILER,
    report::{ProtoDuration, metric},
};
use prost::Message as _;
use tonic::{service::Routes, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_prost::ProstCodec;

/// A channel to `addr`, once the server listens.
async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("URI");
    poll_async(TIMEOUT, Duration::from_millis(5), async || endpoint.connect().await.ok())
        .await
        .expect("the server listens")
}

/// A gRPC server of two workers with the health service (`""` serving,
/// `"gone"` unknown: a `NOT_FOUND` call) and ORCA on, per request and out
/// of band (minimum `min`); its address.
fn grpc_server(min: Duration) -> (tokio::task::JoinHandle<std::io::Result<()>>, SocketAddr, impl FnOnce()) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        hermes_tower::serve_tonic(listener, || Routes::new(tonic_health::server::health_reporter().1))
            .with_builder(two_workers())
            .with_orca(OrcaFormat::Bin)
            .with_orca_service(min)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    (serving, addr, move || {
        let _ = stop.send(());
    })
}

fn decode(base64: &[u8]) -> OrcaLoadReport {
    let bytes = base64::engine::general_purpose::STANDARD.decode(base64).expect("base64");
    OrcaLoadReport::decode(bytes.as_slice()).expect("an OrcaLoadReport")
}

#[tokio::test]
async fn a_grpc_calls_trailers_carry_a_parseable_orca_report() {
    let (serving, addr, stop) = grpc_server(Duration::from_millis(100));
    let mut health = HealthClient::new(channel(addr).await);
    // The first report after both workers serve says so; calls before that
    // may carry the report of a refresh before the second started.
    let report = poll_async(TIMEOUT, Duration::from_millis(10), async || {
        let response = health.check(HealthCheckRequest { service: String::new() }).await.expect("check");
        // tonic's client merges the trailers into the response's metadata.
        let value = response.metadata().get_bin(TRAILER).expect("the report trailer");
        let report = decode(value.as_encoded_bytes());
        (report.named_metrics.get(metric::WORKERS) == Some(&2.0)).then_some(report)
    })
    .await
    .expect("a report of two serving workers");
    for name in [metric::IN_FLIGHT, metric::ELIGIBLE_WORKERS, metric::QUEUE_DEPTH] {
        assert!(report.named_metrics.contains_key(name), "{name} in {report:?}");
    }
    assert!(report.named_metrics[metric::ELIGIBLE_WORKERS] >= 1.0, "{report:?}");
    assert!(report.application_utilization >= report.cpu_utilization, "{report:?}");

    // Calls are counted in the rate; a failed one (NOT_FOUND, answered
    // trailers-only) carries the report too, and counts in the errors.
    let report = poll_async(TIMEOUT, Duration::from_millis(10), async || {
        let status = health.check(HealthCheckRequest { service: "gone".into() }).await.expect_err("unknown");
        assert_eq!(status.code(), tonic::Code::NotFound);
        let report = decode(status.metadata().get_bin(TRAILER).expect("the report").as_encoded_bytes());
        (report.eps > 0.0 && report.rps_fractional > 0.0).then_some(report)
    })
    .await
    .expect("the errors in the report's rate");
    assert!(report.eps <= report.rps_fractional, "{report:?}");
    stop();
    serving.await.expect("server task").expect("served");
}

/// The reports of one `StreamCoreMetrics` call asking for `interval`, with
/// the time each arrived.
async fn stream_reports(addr: SocketAddr, interval: Duration, n: usize) -> Vec<(Instant, OrcaLoadReport)> {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.expect("ready");
    let request = OrcaLoadReportRequest {
        report_interval: Some(ProtoDuration {
            seconds: interval.as_secs() as i64,
            nanos: interval.subsec_nanos() as i32,
        }),
        request_cost_names: Vec::new(),
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(STREAM_CORE_METRICS);
    let codec = ProstCodec::<OrcaLoadReportRequest, OrcaLoadReport>::default();
    let mut stream = grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await
        .expect("the stream")
        .into_inner();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let report = stream.message().await.expect("a report").expect("the stream goes on");
        out.push((Instant::now(), report));
    }
    out
}

/// The mean gap between the reports after the first.
fn mean_gap(reports: &[(Instant, OrcaLoadReport)]) -> Duration {
    let gaps = reports.windows(2).map(|w| w[1].0 - w[0].0);
    gaps.sum::<Duration>() / (reports.len() as u32 - 1)
}

#[tokio::test]
async fn the_out_of_band_stream_reports_at_the_requested_interval_and_not_below_the_minimum() {
    let (serving, addr, stop) = grpc_server(Duration::from_millis(100));
    // Above the minimum: the client's interval.
    let reports = stream_reports(addr, Duration::from_millis(250), 5).await;
    let gap = mean_gap(&reports);
    assert!(gap >= Duration::from_millis(245), "reports every {gap:?}, asked for 250 ms");
    assert!(gap < Duration::from_millis(500), "reports every {gap:?}, asked for 250 ms");
    assert!(reports.iter().all(|(_, r)| r.named_metrics.contains_key(metric::ELIGIBLE_WORKERS)));
    // Below it: the minimum.
    let reports = stream_reports(addr, Duration::from_millis(10), 5).await;
    let gap = mean_gap(&reports);
    assert!(gap >= Duration::from_millis(98), "reports every {gap:?}, the minimum is 100 ms");
    assert!(gap < Duration::from_millis(250), "reports every {gap:?}, the minimum is 100 ms");
    stop();
    serving.await.expect("server task").expect("served");
}

#[test]
fn a_zero_minimum_interval_is_refused() {
    let err =
        hermes_tower::serve_tonic("127.0.0.1:0", || Routes::new(tonic_health::server::health_reporter().1))
            .with_orca_service(Duration::ZERO)
            .start()
            .expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("with_orca_service"), "{err}");
}

/// The pairs of a `TEXT` value, as Envoy's parser splits them.
fn text_pairs(text: &str) -> HashMap<String, f64> {
    text.split(',')
        .map(|pair| {
            let (name, value) = pair.split_once(':').expect("name:value");
            (name.trim().to_owned(), value.trim().parse().expect("a number"))
        })
        .collect()
}

#[tokio::test]
async fn an_http_response_carries_the_orca_header_in_each_format() {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/fail", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "failed") }));
    for format in [OrcaFormat::Text, OrcaFormat::Json, OrcaFormat::Bin] {
        let handle = hermes_tower::serve("127.0.0.1:0", app.clone())
            .with_builder(two_workers())
            .with_orca(format)
            .start()
            .expect("start");
        let addr = handle.local_addr();
        // Until the failed responses (every other one) are in the error
        // rate of a report of two workers; `5xx` responses carry it too.
        let report = tokio::task::spawn_blocking(move || {
            poll_every(TIMEOUT, Duration::from_millis(10), || {
                assert_eq!(http::get(addr, "/").expect("GET /").status, 200);
                let response = http::get(addr, "/fail").expect("GET /fail");
                assert_eq!(response.status, 500);
                let value = response.header("endpoint-load-metrics").expect("the header").to_owned();
                let report = match format {
                    OrcaFormat::Text => {
                        let pairs = text_pairs(value.strip_prefix("TEXT ").expect("TEXT prefix"));
                        let named = |k: &str| pairs.get(&format!("named_metrics.{k}")).copied();
                        OrcaLoadReport {
                            cpu_utilization: pairs["cpu_utilization"],
                            application_utilization: pairs["application_utilization"],
                            rps_fractional: pairs["rps_fractional"],
                            eps: pairs["eps"],
                            named_metrics: [metric::WORKERS, metric::ELIGIBLE_WORKERS, metric::IN_FLIGHT]
                                .into_iter()
                                .filter_map(|k| named(k).map(|v| (k.to_owned(), v)))
                                .collect(),
                            ..OrcaLoadReport::default()
                        }
                    }
                    OrcaFormat::Json => {
                        let json: serde_json::Value =
                            serde_json::from_str(value.strip_prefix("JSON ").expect("JSON prefix"))
                                .expect("JSON");
                        let num = |k: &str| json[k].as_f64().unwrap_or(0.0);
                        let named = json["namedMetrics"].as_object().expect("namedMetrics");
                        OrcaLoadReport {
                            cpu_utilization: num("cpuUtilization"),
                            application_utilization: num("applicationUtilization"),
                            rps_fractional: num("rpsFractional"),
                            eps: num("eps"),
                            named_metrics: named
                                .iter()
                                .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
                                .collect(),
                            ..OrcaLoadReport::default()
                        }
                    }
                    OrcaFormat::Bin => decode(value.strip_prefix("BIN ").expect("BIN prefix").as_bytes()),
                };
                // Both rates of the same window: a report refreshed between
                // a success's and a failure's completion counts the failure
                // only, so wait for one that counts both.
                (report.named_metrics.get(metric::WORKERS) == Some(&2.0)
                    && report.eps > 0.0
                    && report.rps_fractional > report.eps)
                    .then_some(report)
            })
        })
        .await
        .expect("client thread")
        .unwrap_or_else(|| {
            panic!("no {format:?} report of two workers with both the requests and the errors counted")
        });
        assert!(report.named_metrics.contains_key(metric::ELIGIBLE_WORKERS), "{format:?}: {report:?}");
        shutdown(handle).await;
    }
}
