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
