//! TLS settings for the node's servers and clients (rustls through tonic).
//!
//! Mutual TLS everywhere: a server always asks for a client certificate and
//! refuses a handshake without one from the CA it trusts; a client checks
//! the server's certificate against the fleet CA *and* the node name it
//! expects (`node-<id>.vault.internal`), so a node cannot pose as another.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity as TonicIdentity, ServerTlsConfig};

use crate::identity::node_dns_name;

/// Installs rustls's `ring` provider for the process. Call once at start:
/// with more than one provider compiled in, rustls refuses to pick one and
/// tonic's TLS server panics. A second call is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate and key on disk (PEM).
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Loading TLS material failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct TlsFileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub source: std::io::Error,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        path: path.to_owned(),
        source,
    })
}

impl CertFiles {
    fn identity(&self) -> Result<TonicIdentity, TlsFileError> {
        Ok(TonicIdentity::from_pem(read(&self.cert)?, read(&self.key)?))
    }
}

fn invalid(path: &Path, what: String) -> TlsFileError {
    TlsFileError {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    }
}

/// Whether a server requires a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every connection presents one (nodes' ports).
    Required,
    /// One may be presented, and then must chain to the CA (the witness:
    /// reads are public, submissions need the operator's).
    Optional,
}

/// rustls server settings for [`crate::serve::incoming`]: present `own`
/// (its PEM certificate chain and key), require (or accept) a client
/// certificate that chains to the CA in `client_ca`, speak HTTP/2 (ALPN
/// `h2`, as gRPC clients expect), TLS 1.2 and 1.3 with the `ring` provider.
pub fn rustls_server_config(
    own: &TlsIdentity,
    client_ca: &Path,
    auth: ClientAuth,
) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsFileError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots(client_ca)?),
        provider.clone(),
    );
    let verifier = match auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|e| invalid(client_ca, format!("client verifier: {e}")))?;
    let certified = own.certified(&provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&own.cert, format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(std::sync::Arc::new(rustls::sign::SingleCertAndKey::from(
            certified,
        )));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// Server settings: present `own`, require a client certificate from the CA
/// in `client_ca`.
pub fn server_config(own: &CertFiles, client_ca: &Path) -> Result<ServerTlsConfig, TlsFileError> {
    Ok(ServerTlsConfig::new()
        .identity(own.identity()?)
        .client_ca_root(Certificate::from_pem(read(client_ca)?)))
}

/// Client settings for calling node `node_id`: present `own`, and accept
/// only a certificate of that node from the CA in `server_ca`.
pub fn client_config_for_node(
    own: &CertFiles,
    server_ca: &Path,
    node_id: u64,
) -> Result<ClientTlsConfig, TlsFileError> {
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(server_ca)?))
        .identity(own.identity()?)
        .domain_name(node_dns_name(node_id)))
}

/// Where the private key of a TLS identity is.
#[derive(Clone)]
pub enum KeySource {
    /// A PEM file (frontends; test identities).
    File(PathBuf),
    /// A key that signs elsewhere: a node's or the operator's key in its
    /// HSM (`vault_hsm::TokenKey::rustls`). There is no key file.
    Signer(std::sync::Arc<dyn rustls::sign::SigningKey>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "File({})", p.display()),
            KeySource::Signer(_) => f.write_str("Signer(..)"),
        }
    }
}

/// A certificate chain on disk and the key that goes with it.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key.
    pub key: KeySource,
}

impl TlsIdentity {
    /// A certificate and key in PEM files.
    pub fn files(cert: &Path, key: &Path) -> TlsIdentity {
        TlsIdentity {
            cert: cert.to_owned(),
            key: KeySource::File(key.to_owned()),
        }
    }

    fn certified(
        &self,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, TlsFileError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(&read(&self.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&self.cert, format!("certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(invalid(&self.cert, "no certificate in the file".into()));
        }
        let key = match &self.key {
            KeySource::File(path) => {
                let der = PrivateKeyDer::from_pem_slice(&read(path)?)
                    .map_err(|e| invalid(path, format!("private key PEM: {e}")))?;
                provider
                    .key_provider
                    .load_private_key(der)
                    .map_err(|e| invalid(path, format!("private key: {e}")))?
            }
            KeySource::Signer(k) => k.clone(),
        };
        let certified = rustls::sign::CertifiedKey::new(chain, key);
        // A certificate for another key (a token made again, a stale
        // file) would fail every handshake; say so at start instead.
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(invalid(
                    &self.cert,
                    format!(
                        "the certificate does not name this key ({e}): issue it again with `vaultctl pki init`"
                    ),
                ));
            }
        }
        Ok(std::sync::Arc::new(certified))
    }
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsFileError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(ca)?) {
        let c = c.map_err(|e| invalid(ca, format!("CA PEM: {e}")))?;
        roots
            .add(c)
            .map_err(|e| invalid(ca, format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// rustls client settings: trust the CA in `server_ca`, present
/// `identity` when given, speak HTTP/2 (ALPN `h2`).
pub fn rustls_client_config(
    identity: Option<&TlsIdentity>,
    server_ca: &Path,
) -> Result<std::sync::Arc<rustls::ClientConfig>, TlsFileError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(server_ca, format!("TLS versions: {e}")))?
        .with_root_certificates(roots(server_ca)?);
    let mut config = match identity {
        Some(id) => builder.with_client_cert_resolver(std::sync::Arc::new(
            rustls::sign::SingleCertAndKey::from(id.certified(&provider)?),
        )),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// Connects TCP (no Nagle, optionally from `local`), then TLS with
/// `config`, expecting `server_name` in the server's certificate: tonic's
/// connector when the client's key is not a file (tonic's own TLS takes
/// PEM only).
#[derive(Clone)]
pub struct TlsConnector {
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    local: Option<std::net::IpAddr>,
}

impl TlsConnector {
    /// A connector presenting `config`'s identity to a server named
    /// `server_name`.
    pub fn new(
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
        local: Option<std::net::IpAddr>,
    ) -> Result<TlsConnector, String> {
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("server name {server_name:?}: {e}"))?;
        Ok(TlsConnector {
            config,
            server_name,
            local,
        })
    }

    /// A lazily connected channel to `addr` (host:port) through this
    /// connector; `endpoint` sets timeouts and the like.
    pub fn channel(
        self,
        addr: &str,
        endpoint: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let e = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?;
        Ok(endpoint(e).connect_with_connector_lazy(self))
    }
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
            let host = uri.host().ok_or_else(|| bad("no host"))?;
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let addr = tokio::net::lookup_host((host, port))
                .await?
                .next()
                .ok_or_else(|| bad("no address"))?;
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(ip) = this.local {
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
            }
            socket.set_nodelay(true)?;
            let tcp = socket.connect(addr).await?;
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.server_name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
