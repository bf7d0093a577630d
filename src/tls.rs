//! TLS for the client port and the peer transport: the configurations
//! etcd's flags describe (`--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth`, and their `--peer-*` forms), and the connection
//! stream that is either plain TCP or TLS over it.
//!
//! Certificates and keys enter as PEM files at start ([`server_config`],
//! [`peer_configs`]; rustls with the ring provider); bytes of a connection
//! enter and leave through [`Stream`], which the HTTP front end and the
//! peer transport read and write the same way in every case. Handshakes
//! are asynchronous (futures-rustls over glommio's TCP stream): they never
//! block an executor.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The client port's TLS files, from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle that client certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate from `trusted_ca_file`.
    pub client_cert_auth: bool,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // ring: rustls deprecates it for lacking post-quantum key exchange, but
    // the alternative (aws-lc-rs) needs cmake and a longer build.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &std::path::Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{flag} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &std::path::Path, flag: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn roots(path: &std::path::Path, flag: &str) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(path, flag)? {
        roots
            .add(c)
            .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A server configuration: `cert`/`key`, and client certificates checked
/// against `ca` when `client_auth`. `flags` names the flags in errors.
fn server(
    cert: &std::path::Path,
    key_file: &std::path::Path,
    ca: Option<&std::path::Path>,
    client_auth: bool,
    flags: [&str; 3],
) -> Result<rustls::ServerConfig, String> {
    let p = provider();
    let builder = rustls::ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (ca, client_auth) {
        (Some(ca), true) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots(ca, flags[2])?,
                p,
            )
            .build()
            .map_err(|e| format!("{} {}: {e}", flags[2], ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => {
            return Err(format!(
                "client certificate auth needs {} (the CA client certificates must chain to)",
                flags[2]
            ))
        }
        _ => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs(cert, flags[0])?, key(key_file, flags[1])?)
        .map_err(|e| format!("{}/{}: {e}", flags[0], flags[1]))
}

/// Build the client port's server configuration; errors name the flag, the
/// file and the problem.
pub fn server_config(t: &ClientTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = server(
        &t.cert_file,
        &t.key_file,
        t.trusted_ca_file.as_deref(),
        t.client_cert_auth,
        ["--cert-file", "--key-file", "--trusted-ca-file"],
    )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The peer transport's TLS files, from the `--peer-*` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle other members' certificates must chain to (required).
    pub trusted_ca_file: PathBuf,
    /// Refuse members that present no certificate from it.
    pub client_cert_auth: bool,
}

/// Both sides of the peer transport: a member accepts connections (server)
/// and dials the others (client, presenting its certificate).
pub struct PeerConfigs {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

pub fn peer_configs(t: &PeerTls) -> Result<PeerConfigs, String> {
    let flags = [
        "--peer-cert-file",
        "--peer-key-file",
        "--peer-trusted-ca-file",
    ];
    let server = server(
        &t.cert_file,
        &t.key_file,
        Some(&t.trusted_ca_file),
        t.client_cert_auth,
        flags,
    )?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(&t.trusted_ca_file, flags[2])?)
        .with_client_auth_cert(certs(&t.cert_file, flags[0])?, key(&t.key_file, flags[1])?)
        .map_err(|e| format!("{}/{}: {e}", flags[0], flags[1]))?;
    Ok(PeerConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The name a peer's certificate must carry: the host of its URL (an IP
/// address or a DNS name).
pub fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: not a name a certificate can carry: {e}"))
}

/// A connection: plain TCP, or TLS over it (accepted, or dialled).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The common name of the certificate a client presented, which
    /// `--client-cert-auth` verified: v2 auth takes it as the user when a
    /// request has no `Authorization` header, as etcd does. Only the leaf:
    /// other certificates a client sends need not be part of the chain the
    /// verifier built (etcd reads only verified chains). Empty without TLS
    /// or client certificates.
    pub fn client_names(&self) -> Vec<String> {
        let Stream::Tls(s) = self else {
            return Vec::new();
        };
        let certs = s.get_ref().1.peer_certificates().unwrap_or_default();
        certs
            .iter()
            .take(1)
            .filter_map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
                // Go keeps the last CN of the subject.
                let cn = cert.subject().iter_common_name().last()?;
                cn.as_str().ok().map(str::to_string)
            })
            .collect()
    }

    /// The TCP connection underneath (timeouts, options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::TlsClient(s) => s.get_ref().0,
        }
    }

    /// TLS records may wait in the session until flushed.
    pub fn needs_flush(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
