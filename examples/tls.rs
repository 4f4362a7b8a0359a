//! HTTPS on Hermes dispatch: a self-signed certificate made at start,
//! HTTP/2 and HTTP/1.1 by ALPN, the certificate reloaded on `SIGHUP`.
//!
//! ```text
//! cargo run --release --example tls
//! curl --cacert /tmp/hermes-tls-example/cert.pem https://127.0.0.1:3443/            # HTTP/2
//! curl --http1.1 --cacert /tmp/hermes-tls-example/cert.pem https://127.0.0.1:3443/  # HTTP/1.1
//! kill -HUP <pid>   # rereads cert.pem and key.pem (replace them first)
//! ```
//!
//! The certificate and key are written to `hermes-tls-example/` under the
//! system's temporary directory (the path is printed). Stop with ctrl-c.

use std::net::SocketAddr;

use hermes_tower::serve::RustlsConfig;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    hermes_examples::init_logging();
    let dir = std::env::temp_dir().join("hermes-tls-example");
    let files = hermes_examples::tls::self_signed_pem_files(&dir)?;
    let tls = RustlsConfig::from_pem_file(&files.cert, &files.key)?;
    tls.reload_on_sighup()?;
    println!("certificate: {} (key {})", files.cert.display(), files.key.display());
    println!("try: curl --cacert {} https://127.0.0.1:3443/", files.cert.display());

    let app = hermes_examples::tls::app();
    hermes_tower::serve("127.0.0.1:3443", app.into_make_service_with_connect_info::<SocketAddr>())
        .with_tls(tls)
        .await
}
