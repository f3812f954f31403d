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
    own: &CertFiles,
    client_ca: &Path,
    auth: ClientAuth,
) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsFileError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(&read(&own.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&own.cert, format!("certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&own.key)?)
        .map_err(|e| invalid(&own.key, format!("private key PEM: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(client_ca)?) {
        let ca = ca.map_err(|e| invalid(client_ca, format!("CA PEM: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| invalid(client_ca, format!("CA certificate: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    );
    let verifier = match auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|e| invalid(client_ca, format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&own.cert, format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&own.key, format!("certificate and key: {e}")))?;
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
