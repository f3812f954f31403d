//! The witness's directory: its signing key and its TLS material.
//!
//! ```text
//! <dir>/witness.key      Ed25519 seed (hex), mode 600
//! <dir>/witness.pub      Ed25519 public key (hex): what apps and auditors pin
//! <dir>/tls/ca.pem       the witness's own CA (clients trust it)
//! <dir>/tls/ca.key
//! <dir>/tls/server.pem   witness.vault.internal, issued by that CA
//! <dir>/tls/server.key
//! <dir>/log.v1           the log (see crate::log)
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use rand::RngCore;
use vault_fleet::identity::Identity;
use vault_fleet::pki::{Authority, write_file};
use vault_fleet::tls::CertFiles;
use zeroize::Zeroizing;

/// File names in a witness directory.
pub struct WitnessDir(pub PathBuf);

impl WitnessDir {
    /// The signing key file.
    pub fn key(&self) -> PathBuf {
        self.0.join("witness.key")
    }
    /// The public key file.
    pub fn public(&self) -> PathBuf {
        self.0.join("witness.pub")
    }
    /// The witness CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.0.join("tls/ca.pem")
    }
    /// The server certificate and key.
    pub fn server(&self) -> CertFiles {
        CertFiles {
            cert: self.0.join("tls/server.pem"),
            key: self.0.join("tls/server.key"),
        }
    }
    /// The log file.
    pub fn log(&self) -> PathBuf {
        self.0.join("log.v1")
    }

    /// Creates the key and TLS material where missing; keeps what exists.
    /// Returns the public key (hex).
    pub fn init(&self) -> Result<String> {
        std::fs::create_dir_all(self.0.join("tls"))
            .with_context(|| format!("create {}", self.0.display()))?;
        if !self.key().exists() {
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(seed.as_mut());
            let text = Zeroizing::new(hex::encode(seed.as_ref()));
            write_file(&self.key(), text.as_bytes(), 0o600)?;
        }
        let key = self.signing_key()?;
        let public = hex::encode(key.verifying_key().as_bytes());
        write_file(&self.public(), format!("{public}\n").as_bytes(), 0o644)?;
        let ca_key = self.0.join("tls/ca.key");
        if !self.ca().exists() || !ca_key.exists() || !self.server().cert.exists() {
            let (ca, ca_key_pem) = Authority::generate("vault witness CA")?;
            let issued = ca.issue(&Identity::Witness)?;
            write_file(&ca_key, ca_key_pem.as_bytes(), 0o600)?;
            write_file(&self.ca(), ca.cert_pem().as_bytes(), 0o644)?;
            write_file(&self.server().key, issued.key_pem.as_bytes(), 0o600)?;
            write_file(&self.server().cert, issued.cert_pem.as_bytes(), 0o644)?;
        }
        Ok(public)
    }

    /// Loads the signing key.
    pub fn signing_key(&self) -> Result<SigningKey> {
        load_key(&self.key())
    }
}

fn load_key(path: &Path) -> Result<SigningKey> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("read the witness key {}", path.display()))?,
    );
    let mut seed = Zeroizing::new([0u8; 32]);
    if hex::decode_to_slice(text.trim(), seed.as_mut()).is_err() {
        bail!("{} is not a 32-byte hex Ed25519 seed", path.display());
    }
    Ok(SigningKey::from_bytes(&seed))
}
