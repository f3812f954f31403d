//! The sealed-blob format.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       4     KEK version, big-endian
//! 5       12    AES-GCM IV, drawn from the HSM's RNG
//! 17      n+16  AES-256-GCM ciphertext of the n plaintext bytes, then the tag
//! ```
//!
//! The GCM associated data is the 5-byte header (version and KEK version)
//! followed by the caller's associated data, so neither the header nor the
//! context the caller binds in (kind, fleet, user, generation) can be changed
//! without the tag failing.

use crate::error::HsmError;

/// The only format version this build writes and reads.
pub const BLOB_FORMAT_V1: u8 = 1;
/// Length of the AES-GCM IV.
pub const IV_LEN: usize = 12;
/// Length of the AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Version byte plus KEK version.
pub const HEADER_LEN: usize = 1 + 4;
/// Header, IV and tag: what sealing adds to the plaintext.
pub const OVERHEAD: usize = HEADER_LEN + IV_LEN + TAG_LEN;
/// The largest plaintext that may be sealed. Vault records are a few hundred
/// bytes; the bound keeps one request from tying up an HSM session.
pub const MAX_PLAINTEXT: usize = 1 << 20;

/// A version of the fleet key-encryption key. Version numbers start at 1
/// and only grow; rotation adds a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KekVersion(pub u32);

/// A parsed view of a sealed blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedBlob<'a> {
    /// The KEK version it was sealed under.
    pub kek_version: KekVersion,
    /// The 12-byte IV.
    pub iv: &'a [u8; IV_LEN],
    /// Ciphertext followed by the tag.
    pub ciphertext: &'a [u8],
    header: &'a [u8],
}

impl<'a> SealedBlob<'a> {
    /// Parses `bytes` without decrypting anything.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, HsmError> {
        let Some(&version) = bytes.first() else {
            return Err(HsmError::MalformedBlob("empty"));
        };
        if version != BLOB_FORMAT_V1 {
            return Err(HsmError::UnsupportedBlobVersion(version));
        }
        if bytes.len() < OVERHEAD {
            return Err(HsmError::MalformedBlob("shorter than header, IV and tag"));
        }
        let (header, rest) = bytes.split_at(HEADER_LEN);
        let (iv, ciphertext) = rest.split_at(IV_LEN);
        let kek = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        Ok(SealedBlob {
            kek_version: KekVersion(kek),
            iv: iv.try_into().map_err(|_| HsmError::MalformedBlob("IV"))?,
            ciphertext,
            header,
        })
    }

    /// The GCM associated data for this blob and the caller's `aad`.
    pub fn gcm_aad(&self, aad: &[u8]) -> Vec<u8> {
        gcm_aad(self.header, aad)
    }
}

/// The 5-byte header for `kek_version`.
pub fn header(kek_version: KekVersion) -> [u8; HEADER_LEN] {
    let v = kek_version.0.to_be_bytes();
    [BLOB_FORMAT_V1, v[0], v[1], v[2], v[3]]
}

/// Header then the caller's associated data.
pub fn gcm_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + aad.len());
    out.extend_from_slice(header);
    out.extend_from_slice(aad);
    out
}

/// Lays out a blob from its parts.
pub fn assemble(kek_version: KekVersion, iv: &[u8; IV_LEN], ciphertext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + IV_LEN + ciphertext.len());
    out.extend_from_slice(&header(kek_version));
    out.extend_from_slice(iv);
    out.extend_from_slice(ciphertext);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_assemble() {
        let iv = [7u8; IV_LEN];
        let ct = [9u8; TAG_LEN + 3];
        let bytes = assemble(KekVersion(0x0102_0304), &iv, &ct);
        assert_eq!(bytes.len(), OVERHEAD + 3);
        let blob = SealedBlob::parse(&bytes).expect("parse");
        assert_eq!(blob.kek_version, KekVersion(0x0102_0304));
        assert_eq!(blob.iv, &iv);
        assert_eq!(blob.ciphertext, &ct);
        assert_eq!(blob.gcm_aad(b"ctx"), b"\x01\x01\x02\x03\x04ctx");
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!(
            SealedBlob::parse(&[]),
            Err(HsmError::MalformedBlob("empty"))
        );
        assert_eq!(
            SealedBlob::parse(&[2; 40]),
            Err(HsmError::UnsupportedBlobVersion(2))
        );
        assert!(matches!(
            SealedBlob::parse(&[1; OVERHEAD - 1]),
            Err(HsmError::MalformedBlob(_))
        ));
    }
}
