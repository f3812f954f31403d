//! Async access to an [`Hsm`] without blocking the runtime.

use std::sync::Arc;

use crate::attestation::AttestationSignature;
use crate::error::{DeviceError, HsmError};
use crate::hsm::Hsm;
use crate::secret::SecretBytes;

/// An [`Hsm`] for async code: every call runs on tokio's blocking pool, so
/// a slow device never stalls the tasks that drive Raft and gRPC.
#[derive(Debug)]
pub struct AsyncHsm<H> {
    inner: Arc<H>,
}

impl<H> Clone for AsyncHsm<H> {
    fn clone(&self) -> Self {
        AsyncHsm {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<H: Hsm> AsyncHsm<H> {
    /// Wraps a shared HSM.
    pub fn new(inner: Arc<H>) -> Self {
        AsyncHsm { inner }
    }

    /// The HSM, for calls that do not touch the device (public keys).
    pub fn blocking(&self) -> &H {
        &self.inner
    }

    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: FnOnce(&H) -> Result<T, HsmError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                HsmError::Device(DeviceError::local(op, format!("HSM task failed: {e}")))
            })?
    }

    /// [`Hsm::seal`] off the runtime.
    pub async fn seal(&self, aad: Vec<u8>, plaintext: SecretBytes) -> Result<Vec<u8>, HsmError> {
        self.run("seal", move |h| h.seal(&aad, plaintext.expose()))
            .await
    }

    /// [`Hsm::seal_under`] off the runtime.
    pub async fn seal_under(
        &self,
        version: crate::KekVersion,
        aad: Vec<u8>,
        plaintext: SecretBytes,
    ) -> Result<Vec<u8>, HsmError> {
        self.run("seal", move |h| {
            h.seal_under(version, &aad, plaintext.expose())
        })
        .await
    }

    /// [`Hsm::refresh_keks`] off the runtime.
    pub async fn refresh_keks(&self) -> Result<Vec<crate::KekVersion>, HsmError> {
        self.run("find KEKs", |h| h.refresh_keks()).await
    }

    /// [`Hsm::destroy_kek`] off the runtime.
    pub async fn destroy_kek(&self, version: crate::KekVersion) -> Result<(), HsmError> {
        self.run("destroy KEK", move |h| h.destroy_kek(version))
            .await
    }

    /// [`Hsm::unseal`] off the runtime.
    pub async fn unseal(&self, aad: Vec<u8>, blob: Vec<u8>) -> Result<SecretBytes, HsmError> {
        self.run("unseal", move |h| h.unseal(&aad, &blob)).await
    }

    /// [`Hsm::sign`] off the runtime.
    pub async fn sign(&self, message: Vec<u8>) -> Result<AttestationSignature, HsmError> {
        self.run("sign", move |h| h.sign(&message)).await
    }

    /// [`Hsm::random`] off the runtime.
    pub async fn random(&self, len: usize) -> Result<SecretBytes, HsmError> {
        self.run("random", move |h| {
            let mut out = vec![0u8; len];
            h.random(&mut out)?;
            Ok(SecretBytes::new(out))
        })
        .await
    }
}
