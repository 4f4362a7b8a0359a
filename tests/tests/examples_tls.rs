//! The `tls` example's wiring: a certificate made by
//! `hermes_examples::tls::self_signed_pem_files`, loaded from its PEM files
//! and served by `hermes_tower::serve(..).with_tls(..)`, called by a rustls
//! client that trusts it, over HTTP/1.1 and HTTP/2.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::ConnectInfo, routing::get};
use hermes_runtime::Builder;
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

#[tokio::test]
async fn the_generated_certificate_serves_https_with_the_clients_address() {
    let dir = std::env::temp_dir().join(format!("hermes-examples-tls-{}", std::process::id()));
    let files = hermes_examples::tls::self_signed_pem_files(&dir).expect("make the certificate");
    let tls = RustlsConfig::from_pem_file(&files.cert, &files.key).expect("load it");
    let app = Router::new()
        .route("/", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }));
    let mut builder = Builder::new();
    builder.workers(2).pin_workers(false);
    let handle = hermes_tower::serve("127.0.0.1:0", app.into_make_service_with_connect_info::<SocketAddr>())
        .with_builder(builder)
        .with_tls(tls)
        .start()
        .expect("start");

    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&files.cert).expect("read the certificate")).expect("trust it");
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(handle.local_addr()).await.expect("connect");
    let me = tcp.local_addr().expect("client address");
    let mut conn = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(handle.local_addr().ip().into()), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    conn.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.expect("send");
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(&me.to_string()), "expected {me}: {response}");

    tokio::task::spawn_blocking(move || handle.shutdown()).await.expect("shutdown");
    let _ = std::fs::remove_dir_all(dir);
}
