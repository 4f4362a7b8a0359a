//! HTTPS through `hermes_tower::serve(..).with_tls(..)` on a real Hermes
//! server, with a real rustls client: ALPN `h2` and `http/1.1`, the
//! certificate reloaded without a restart, a slow request in flight on the
//! worker that did the handshake, and handshakes that fail or stall without
//! stopping the accept loop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{Router, extract::State, routing::get};
use hermes_runtime::{Builder, ServerHandle, Snapshot};
use hermes_test_support::{
    client::{h1_over, h2_over},
    server::{shutdown, two_workers},
    wait::eventually_some as eventually,
};
use hermes_tower::serve::RustlsConfig;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM, cert DER).
fn self_signed() -> (String, String, CertificateDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("rcgen");
    (certified.cert.pem(), certified.signing_key.serialize_pem(), certified.cert.der().clone())
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hermes-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        Self(dir)
    }

    fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, contents).expect("write a PEM file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client_config(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(config).connect(name, tcp).await
}

/// Sends `GET path` over an established TLS connection, in the protocol ALPN chose.
async fn get_over(tls: TlsStream<TcpStream>, path: &str) -> (hyper::Version, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = hyper::Request::get(path).header("host", "127.0.0.1").body(Empty::<Bytes>::new()).unwrap();
    let response = if h2 {
        h2_over(tls).await.send_request(request).await.expect("h2 request")
    } else {
        h1_over(tls).await.send_request(request).await.expect("h1 request")
    };
    assert_eq!(response.status(), 200, "{response:?}");
    let version = response.version();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (version, String::from_utf8_lossy(&body).into_owned())
}

fn app(gate: Arc<Notify>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello over tls" }))
        .route(
            "/slow",
            get(|State(gate): State<Arc<Notify>>| async move {
                gate.notified().await;
                let worker = hermes_runtime::context::current().expect("on a worker").id();
                format!("slow on {worker}")
            }),
        )
        .with_state(gate)
}

/// A one-worker HTTPS server of [`app`] on `tls`, its gate never opened.
fn one_worker(tls: &RustlsConfig) -> ServerHandle {
    let mut builder = Builder::new();
    builder.workers(1);
    hermes_tower::serve("127.0.0.1:0", app(Arc::new(Notify::new())))
        .with_builder(builder)
        .with_tls(tls.clone())
        .start()
        .expect("start the server")
}

/// Waits (up to `within`) for the server to close `conn` without a byte of
/// answer.
async fn closed_unanswered(conn: &mut TcpStream, within: Duration, what: &str) {
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(within, conn.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what} is still open after {within:?}"));
    assert_eq!(read.unwrap_or(0), 0, "{what} is answered before it is closed");
}

fn worker_with(s: &Snapshot, cond: impl Fn(&hermes_runtime::WorkerSnapshot) -> bool) -> Option<usize> {
    s.workers.iter().find(|w| cond(w)).map(|w| w.id)
}

#[tokio::test]
async fn https_serves_h2_and_http1_by_alpn_and_reloads_the_certificate_without_restart() {
    let dir = TempDir::new("alpn-reload");
    let (cert_a, key_a, der_a) = self_signed();
    let (cert_path, key_path) = (dir.write("cert.pem", &cert_a), dir.write("key.pem", &key_a));
    let tls = RustlsConfig::from_pem_file(&cert_path, &key_path).expect("load the PEM files");
    let gate = Arc::new(Notify::new());
    let handle = hermes_tower::serve("127.0.0.1:0", app(gate.clone()))
        .with_builder(two_workers())
        .with_tls(tls.clone())
        .start()
        .expect("start the server");
    let addr = handle.local_addr();

    // ALPN: h2 when offered first, http/1.1 when alone.
    for (offer, expect_alpn, expect_version) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], b"h2".as_slice(), hyper::Version::HTTP_2),
        (&[b"h2".as_slice()][..], b"h2", hyper::Version::HTTP_2),
        (&[b"http/1.1".as_slice()][..], b"http/1.1", hyper::Version::HTTP_11),
    ] {
        let conn = tls_connect(addr, client_config(&der_a, offer)).await.expect("TLS handshake");
        assert_eq!(conn.get_ref().1.alpn_protocol(), Some(expect_alpn));
        let (version, body) = get_over(conn, "/").await;
        assert_eq!((version, body.as_str()), (expect_version, "hello over tls"));
    }

    // A slow HTTP/2 request is in flight on one worker, the one that made
    // the handshake and holds the connection; it answers from that worker.
    let conn = tls_connect(addr, client_config(&der_a, &[b"h2"])).await.expect("TLS handshake");
    let slow = tokio::spawn(get_over(conn, "/slow"));
    let worker = eventually("the slow TLS request in flight", || {
        worker_with(&handle.snapshot(), |w| w.in_flight == 1)
    })
    .await;
    let during = handle.snapshot();
    assert_eq!(during.workers[worker].open_connections, 1, "{during:?}");
    assert_eq!(during.workers.iter().map(|w| w.in_flight).sum::<u32>(), 1, "{during:?}");
    gate.notify_one();
    let (version, body) = slow.await.expect("client task");
    assert_eq!((version, body), (hyper::Version::HTTP_2, format!("slow on {worker}")));
    eventually("the slow request finished", || {
        (handle.snapshot().workers[worker].in_flight == 0).then_some(())
    })
    .await;

    // An HTTP/2 connection opened before the reload.
    let before = tls_connect(addr, client_config(&der_a, &[b"h2"])).await.expect("TLS handshake");
    let mut before = h2_over(before).await;

    // Reload: certificate B from the same files, without a restart.
    let (cert_b, key_b, der_b) = self_signed();
    dir.write("cert.pem", &cert_b);
    dir.write("key.pem", &key_b);
    tls.reload().expect("reload the PEM files");
    assert_eq!(tls.stats().reloads, 1);
    let conn =
        tls_connect(addr, client_config(&der_b, &[b"h2"])).await.expect("the new certificate is served");
    assert_eq!(conn.get_ref().1.peer_certificates().expect("server certificate")[0], der_b);
    assert_eq!(get_over(conn, "/").await.1, "hello over tls");
    // A client trusting only the old certificate is refused; the server
    // counts the failed handshake and goes on.
    let failed_before = tls.stats().failed;
    let refused = tls_connect(addr, client_config(&der_a, &[b"h2"])).await;
    assert!(refused.is_err(), "the old certificate is still served");
    eventually("the failed handshake counted", || (tls.stats().failed > failed_before).then_some(())).await;
    // The connection established before the reload is unaffected.
    let request = hyper::Request::get("/").header("host", "127.0.0.1").body(Empty::<Bytes>::new()).unwrap();
    let response = before.send_request(request).await.expect("request on the old connection");
    assert_eq!(response.status(), 200);

    // A bad reload is refused and loses nothing.
    dir.write("key.pem", "not a key");
    let e = tls.reload().expect_err("a bad key is refused");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("key.pem"), "the error names the file: {e}");
    let conn = tls_connect(addr, client_config(&der_b, &[b"http/1.1"])).await.expect("still certificate B");
    assert_eq!(get_over(conn, "/").await, (hyper::Version::HTTP_11, "hello over tls".to_string()));
    assert_eq!(tls.stats().reloads, 1);

    drop(before);
    shutdown(handle).await;
}

#[tokio::test]
async fn stalled_and_broken_handshakes_are_closed_and_counted_while_serving_goes_on() {
    let (cert, key, der) = self_signed();
    let tls = RustlsConfig::from_pem(cert.as_bytes(), key.as_bytes())
        .expect("parse the PEM")
        .handshake_timeout(Duration::from_millis(300));
    let handle = one_worker(&tls);
    let addr = handle.local_addr();

    // A client that connects and says nothing: closed at the timeout.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // Meanwhile, on the same single worker, a real client is served.
    let conn =
        tls_connect(addr, client_config(&der, &[b"h2"])).await.expect("TLS handshake beside a stalled one");
    assert_eq!(get_over(conn, "/").await.1, "hello over tls");
    closed_unanswered(&mut silent, Duration::from_secs(5), "the stalled handshake").await;
    assert_eq!(tls.stats().timed_out, 1);

    // Plain HTTP on the TLS port: a failed handshake, counted.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut rest)).await.expect("closed");
    eventually("the failed handshake counted", || (tls.stats().failed == 1).then_some(())).await;

    // The accept loop is alive.
    let conn = tls_connect(addr, client_config(&der, &[b"http/1.1"])).await.expect("TLS handshake");
    assert_eq!(get_over(conn, "/").await.1, "hello over tls");
    assert_eq!(tls.stats().timed_out, 1);
    shutdown(handle).await;
}

#[test]
fn bad_pem_files_are_reported_with_their_path() {
    let dir = TempDir::new("bad-pem");
    let (cert, _key, _) = self_signed();
    let (_, other_key, _) = self_signed();
    let cert_path = dir.write("cert.pem", &cert);
    let key_path = dir.write("key.pem", &other_key);
    let e = RustlsConfig::from_pem_file(&cert_path, &key_path).expect_err("the key does not match");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    let e = RustlsConfig::from_pem_file(Path::new("/nonexistent/cert.pem"), &key_path).expect_err("no file");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    let empty = dir.write("empty.pem", "");
    let e = RustlsConfig::from_pem_file(&empty, &key_path).expect_err("no certificate");
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    assert!(RustlsConfig::from_pem(cert.as_bytes(), b"nope").is_err());
}

#[tokio::test]
async fn sighup_rereads_the_pem_files() {
    let dir = TempDir::new("sighup");
    let (cert_a, key_a, _) = self_signed();
    let (cert_path, key_path) = (dir.write("cert.pem", &cert_a), dir.write("key.pem", &key_a));
    let tls = RustlsConfig::from_pem_file(&cert_path, &key_path).expect("load the PEM files");
    let task = tls.reload_on_sighup().expect("install the SIGHUP handler");
    let before = tls.current();
    let (cert_b, key_b, _) = self_signed();
    dir.write("cert.pem", &cert_b);
    dir.write("key.pem", &key_b);
    // SAFETY: `kill` on our own pid; the handler was installed above and
    // stays installed for the process's life, so SIGHUP cannot end it.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    eventually("the SIGHUP reload", || (tls.stats().reloads == 1).then_some(())).await;
    assert!(!Arc::ptr_eq(&before, &tls.current()), "a new configuration is served");
    task.abort();
}

#[tokio::test]
async fn at_max_handshakes_a_new_connection_takes_the_slot_of_the_oldest_silent_one() {
    let (cert, key, der) = self_signed();
    // The default timeouts: the silent clients would hold their slots for
    // seconds.
    let tls =
        RustlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).expect("parse the PEM").max_handshakes(2);
    let handle = one_worker(&tls);
    let addr = handle.local_addr();

    // Two silent clients take both handshake slots ...
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    eventually("the silent connections accepted", || {
        (handle.snapshot().workers[0].open_connections == 2).then_some(())
    })
    .await;
    // ... and a real client is served at once: it takes the oldest's slot.
    let started = std::time::Instant::now();
    let conn = tokio::time::timeout(Duration::from_secs(1), tls_connect(addr, client_config(&der, &[b"h2"])))
        .await
        .expect("a real client waits behind silent handshakes")
        .expect("TLS handshake");
    assert_eq!(get_over(conn, "/").await.1, "hello over tls");
    eprintln!("served {:?} after connecting, beside two silent handshakes in two slots", started.elapsed());
    closed_unanswered(&mut silent[0], Duration::from_secs(1), "the oldest silent connection").await;
    assert_eq!(tls.stats().evicted, 1, "{:?}", tls.stats());
    assert_eq!(tls.stats().timed_out, 0, "{:?}", tls.stats());
    shutdown(handle).await;
}

#[tokio::test]
async fn a_connection_that_sends_no_byte_is_closed_at_the_first_byte_timeout() {
    let (cert, key, _) = self_signed();
    let tls = RustlsConfig::from_pem(cert.as_bytes(), key.as_bytes())
        .expect("parse the PEM")
        .first_byte_timeout(Duration::from_millis(200));
    let handle = one_worker(&tls);
    let mut silent = TcpStream::connect(handle.local_addr()).await.expect("connect");
    let started = std::time::Instant::now();
    // Well before the 10 s handshake timeout.
    closed_unanswered(&mut silent, Duration::from_secs(2), "the silent connection").await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150), "closed after {took:?}");
    assert_eq!(tls.stats().timed_out, 1, "{:?}", tls.stats());
    shutdown(handle).await;
}

#[tokio::test]
async fn at_max_handshakes_a_handshake_under_way_keeps_its_slot_until_it_ends() {
    let (cert, key, der) = self_signed();
    let tls = RustlsConfig::from_pem(cert.as_bytes(), key.as_bytes())
        .expect("parse the PEM")
        .handshake_timeout(Duration::from_millis(500))
        .max_handshakes(1);
    let handle = one_worker(&tls);
    let addr = handle.local_addr();

    // A client that sent the first byte of a ClientHello takes the one
    // handshake slot ...
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(&[0x16]).await.expect("the first byte of a TLS record");
    eventually("the slow connection accepted", || {
        (handle.snapshot().workers[0].open_connections == 1).then_some(())
    })
    .await;
    // ... so a real client's handshake starts only once it timed out.
    let conn = tls_connect(addr, client_config(&der, &[b"h2"])).await.expect("TLS handshake");
    assert_eq!(tls.stats().timed_out, 1, "the second handshake ran before the first ended");
    assert_eq!(get_over(conn, "/").await.1, "hello over tls");
    shutdown(handle).await;
}

/// Over TLS with ALPN `h2`, the HTTP/2 timeouts apply as with prior
/// knowledge (`h2_timeouts.rs`): pings alone do not keep a connection
/// open past the idle timeout, and a header block left open is closed at
/// the header read timeout.
#[test]
fn over_tls_h2_pings_alone_and_an_open_header_block_are_closed_at_their_timeouts() {
    use hermes_test_support::rawh2::{END_STREAM, GET_ROOT, RawH2, frame, kind};

    let (header, idle, slack) =
        (Duration::from_millis(300), Duration::from_millis(900), Duration::from_millis(300));
    let (cert, key, der) = self_signed();
    let tls = RustlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).expect("parse the PEM");
    let handle = hermes_tower::serve("127.0.0.1:0", app(Arc::new(Notify::new())))
        .with_builder(two_workers())
        .with_tls(tls)
        .header_read_timeout(Some(header))
        .idle_timeout(Some(idle))
        .start()
        .expect("start the server");
    let addr = handle.local_addr();
    let connect = || {
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
        let name = ServerName::IpAddress(addr.ip().into());
        let session = rustls::ClientConnection::new(client_config(&der, &[b"h2"]), name).expect("session");
        let conn = RawH2::handshake(rustls::StreamOwned::new(session, tcp)).expect("HTTP/2 over TLS");
        assert_eq!(conn_alpn(&conn), Some(&b"h2"[..]));
        conn
    };
    fn conn_alpn(
        conn: &RawH2<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
    ) -> Option<&[u8]> {
        conn.get_ref().conn.alpn_protocol()
    }

    let since = std::time::Instant::now();
    let mut pinging = connect();
    let took =
        pinging.ping_until_closed(idle * 3, since).expect("a TLS connection that only pings stays open");
    eprintln!("h2 over TLS, pings alone: closed {took:?} after connecting (idle timeout {idle:?})");
    assert!(took >= idle && took <= idle + slack, "closed after {took:?}");

    let mut open_block = connect();
    let since = std::time::Instant::now();
    open_block.send(&frame(kind::HEADERS, END_STREAM, 1, &GET_ROOT)).expect("send HEADERS");
    let took = open_block.closed_within(idle * 3, since).expect("an open header block stays open");
    eprintln!("h2 over TLS, header block left open: closed {took:?} after it (header timeout {header:?})");
    assert!(took >= header && took <= header + slack, "closed after {took:?}");
    handle.shutdown();
}
