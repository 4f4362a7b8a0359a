//! The `tls` example's application ([`app`]) and its self-signed
//! certificate ([`self_signed_pem_files`]), made with `rcgen` and written as
//! PEM files as a real deployment would have them; shared with the
//! example's tests.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use axum::{Router, extract::ConnectInfo, http::Request, routing::get};

/// The example's application: `GET /` greets the client by its address,
/// names the worker that served it and the HTTP version ALPN chose. Serve
/// it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn app() -> Router {
    Router::new().route("/", get(hello))
}

async fn hello(ConnectInfo(peer): ConnectInfo<SocketAddr>, request: Request<axum::body::Body>) -> String {
    let worker = hermes_runtime::context::current().map_or("-".to_owned(), |w| w.id().to_string());
    format!("Hello {peer} from Hermes worker {worker} over {:?}\n", request.version())
}

/// The PEM files of a certificate and its key.
#[derive(Clone, Debug)]
pub struct PemFiles {
    /// The certificate (also the root a client trusts: it is self-signed).
    pub cert: PathBuf,
    /// The private key (PKCS#8).
    pub key: PathBuf,
}

/// Makes a self-signed certificate for `127.0.0.1` and `localhost` and
/// writes it and its key to `cert.pem` and `key.pem` in `dir` (created if
/// missing; the key file is readable by its owner only).
///
/// ```no_run
/// let files = hermes_examples::tls::self_signed_pem_files(&std::env::temp_dir().join("hermes-tls"))?;
/// let tls = hermes_tower::serve::RustlsConfig::from_pem_file(&files.cert, &files.key)?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// When the directory or the files cannot be written, or `rcgen` fails.
pub fn self_signed_pem_files(dir: &Path) -> io::Result<PemFiles> {
    use std::{fs, os::unix::fs::OpenOptionsExt};

    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(io::Error::other)?;
    fs::create_dir_all(dir)?;
    let files = PemFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    fs::write(&files.cert, certified.cert.pem())?;
    let mut key =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&files.key)?;
    io::Write::write_all(&mut key, certified.signing_key.serialize_pem().as_bytes())?;
    Ok(files)
}
