//! Reading a server's `/_hermes/stats`: one `GET` on a fresh connection
//! (hyper-util's client, no keep-alive), its JSON read into the runtime's
//! [`Snapshot`], and a thread that does it every interval.
//!
//! A fresh connection per read, because Hermes places each new connection
//! on an eligible worker: a keep-alive connection would stay on the worker
//! that first took it, and a view of a worker stuck in a handler would
//! freeze with it. The cost is one accepted connection per read, which the
//! view shows like any other.

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hermes_runtime::Snapshot;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// The path of the stats endpoint, added to a URL given without a path.
const STATS_PATH: &str = "/_hermes/stats";

/// The largest answer read: a snapshot of 64 workers is a few kilobytes.
const MAX_BODY: usize = 4 << 20;

/// Checks a stats URL given by the user: `http://HOST:PORT[/PATH]`, the
/// path defaulting to `/_hermes/stats`.
///
/// # Errors
/// When it is not an `http://` URL with a host, saying what to give.
pub fn stats_uri(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url}: https is not supported; give the stats endpoint's plain http:// address"
            ));
        }
        _ => return Err(format!("{url}: give an http:// URL, such as http://127.0.0.1:3000{STATS_PATH}")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{url}: the URL has no host"));
    };
    match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("" | "/") => {
            format!("http://{authority}{STATS_PATH}").parse().map_err(|e| format!("{url}: {e}"))
        }
        Some(_) => Ok(uri),
    }
}

/// One read of the stats: when it was taken, and the snapshot or why none came.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the answer (or the failure) came.
    pub at: Instant,
    /// The snapshot, or what went wrong, for the screen.
    pub result: Result<Snapshot, String>,
}

/// Reads the stats of one server.
#[derive(Debug)]
pub struct Fetcher {
    uri: Uri,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
    runtime: tokio::runtime::Runtime,
}

impl Fetcher {
    /// A reader of `uri` (see [`stats_uri`]) whose reads give up after
    /// `timeout`; over HTTP/2 with prior knowledge when `http2` (the stats
    /// of a `serve_tonic` server, on its gRPC port).
    ///
    /// # Errors
    /// When its runtime cannot start.
    pub fn new(uri: Uri, timeout: Duration, http2: bool) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = Client::builder(TokioExecutor::new())
            // No idle connection kept: every read opens its own (see the module's docs).
            .pool_max_idle_per_host(0)
            .http2_only(http2)
            .build_http();
        Ok(Self { uri, timeout, client, runtime })
    }

    /// The URL read.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Reads the stats once.
    pub fn sample(&self) -> Sample {
        let result = self.runtime.block_on(async {
            tokio::time::timeout(self.timeout, self.get())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
        });
        Sample { at: Instant::now(), result }
    }

    async fn get(&self) -> Result<Snapshot, String> {
        let request = Request::get(self.uri.clone())
            .header(header::USER_AGENT, concat!("hermes-top/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| describe(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            return Err(format!("answered {status}: {}", text.trim()));
        }
        serde_json::from_slice(&body).map_err(|e| format!("the answer is not a Hermes snapshot: {e}"))
    }

    /// Reads the stats every `interval` on a thread of its own, until the
    /// receiver is dropped.
    pub fn spawn(self, interval: Duration) -> mpsc::Receiver<Sample> {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("hermes-top-fetch".to_owned())
            .spawn(move || {
                let mut next = Instant::now();
                loop {
                    if tx.send(self.sample()).is_err() {
                        return;
                    }
                    next += interval;
                    // A read slower than the interval does not pile reads up.
                    next = next.max(Instant::now());
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
            .expect("start the thread that reads the stats");
        rx
    }
}

/// A client error with its causes (hyper's own message is often only
/// "client error (Connect)").
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::stats_uri;

    #[test]
    fn a_url_without_a_path_reads_the_stats_path() {
        assert_eq!(stats_uri("http://127.0.0.1:3000").unwrap(), "http://127.0.0.1:3000/_hermes/stats");
        assert_eq!(stats_uri("http://127.0.0.1:3000/").unwrap(), "http://127.0.0.1:3000/_hermes/stats");
        assert_eq!(stats_uri("http://[::1]:3000/stats").unwrap(), "http://[::1]:3000/stats");
    }

    #[test]
    fn other_urls_are_refused_saying_what_to_give() {
        assert!(stats_uri("https://127.0.0.1:3000/").unwrap_err().contains("https is not supported"));
        assert!(stats_uri("127.0.0.1:3000").unwrap_err().contains("give an http:// URL"));
        assert!(stats_uri("http://").unwrap_err().contains("not a URL"));
    }
}
