//! The `tls` example's wiring: its application (`hermes_examples::tls::app`)
//! with a certificate made by `hermes_examples::tls::self_signed_pem_files`,
//! loaded from its PEM files and served by `hermes_tower::serve(..).with_tls(..)`
//! at the example's defaults, called by a rustls client that trusts it: over
//! HTTP/1.1, and within a second while 1200 idle TCP connections (more than
//! every worker's handshake slots) are open to its port.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use hermes_runtime::{Builder, ServerHandle};
use hermes_tower::serve::RustlsConfig;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

/// The example's server on a port of its own, its certificate in `dir`;
/// returns the handle and the certificate's path.
fn start(dir: &Path, builder: Builder) -> (ServerHandle, PathBuf) {
    let files = hermes_examples::tls::self_signed_pem_files(dir).expect("make the certificate");
    let tls = RustlsConfig::from_pem_file(&files.cert, &files.key).expect("load it");
    let app = hermes_examples::tls::app().into_make_service_with_connect_info::<SocketAddr>();
    let handle =
        hermes_tower::serve("127.0.0.1:0", app).with_builder(builder).with_tls(tls).start().expect("start");
    (handle, files.cert)
}

/// `GET /` over HTTP/1.1 on a new TLS connection that trusts `cert`: the
/// client's address and the whole response.
async fn https_get(addr: SocketAddr, cert: &Path) -> (SocketAddr, String) {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert).expect("read the certificate")).expect("trust it");
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let me = tcp.local_addr().expect("client address");
    let mut conn = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    conn.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.expect("send");
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response).await;
    (me, response)
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hermes-examples-tls-{name}-{}", std::process::id()))
}

#[tokio::test]
async fn the_generated_certificate_serves_https_with_the_clients_address() {
    let dir = temp_dir("address");
    let mut builder = Builder::new();
    builder.workers(2);
    let (handle, cert) = start(&dir, builder);
    let (me, response) = https_get(handle.local_addr(), &cert).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(&format!("Hello {me} from Hermes worker")), "expected {me}: {response}");
    tokio::task::spawn_blocking(move || handle.shutdown()).await.expect("shutdown");
    let _ = std::fs::remove_dir_all(dir);
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `n` (up to the
/// hard limit): the client's idle sockets and the server's share it.
fn raise_nofile(n: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` and `setrlimit` read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        if limit.rlim_cur < n {
            limit.rlim_cur = n.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
        }
    }
    assert!(limit.rlim_cur >= n, "RLIMIT_NOFILE's hard limit {} is under {n}", limit.rlim_max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_1200_idle_tcp_connections_a_tls_client_is_served_within_a_second() {
    const IDLE: usize = 1200;
    raise_nofile(4096);
    let dir = temp_dir("idle");
    // The example's defaults: a worker per CPU, pinned only where the process
    // was given its cores, every timeout at its default.
    let (handle, cert) = start(&dir, Builder::new());
    let addr = handle.local_addr();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.expect("an idle connection"));
    }
    let started = Instant::now();
    let (_, response) = tokio::time::timeout(Duration::from_secs(1), https_get(addr, &cert))
        .await
        .unwrap_or_else(|_| panic!("no answer within 1 s beside {IDLE} idle connections"));
    let took = started.elapsed();
    eprintln!("with {IDLE} idle TCP connections open, a TLS GET / was answered in {took:?}");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(idle);
    tokio::task::spawn_blocking(move || handle.shutdown()).await.expect("shutdown");
    let _ = std::fs::remove_dir_all(dir);
}
