//! What an HSM says about itself and its keys: the raw material of
//! deployment evidence.

use serde::{Deserialize, Serialize};

/// The token and every vault key on it, with the attributes that decide
/// whether a key can ever leave the HSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyReport {
    /// The token.
    pub token: TokenReport,
    /// The vault's keys, in a stable order (KEKs by version, then the
    /// attestation and transport keys).
    pub keys: Vec<KeyAttributes>,
}

/// Identity of a token, as the token reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenReport {
    /// CKA label of the token.
    pub label: String,
    /// Manufacturer id.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware version, `major.minor`.
    pub firmware: String,
    /// Hardware version, `major.minor`.
    pub hardware: String,
}

/// One key object and the attributes that matter for the vault's claims.
///
/// A boolean is `None` when the token did not report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAttributes {
    /// The object's CKA_LABEL.
    pub label: String,
    /// What the vault uses it for: `kek`, `attestation`, `transport`.
    pub role: String,
    /// `secret`, `private` or `public`.
    pub class: String,
    /// `AES`, `EC`, `RSA`.
    pub key_type: String,
    /// KEK version, for KEKs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kek_version: Option<u32>,
    /// A check value that identifies a KEK without revealing it (see
    /// `KCV_AAD`): two HSMs hold the same KEK iff their check values match.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub check_value: Option<String>,
    /// CKA_SENSITIVE: the value can never be read in plaintext.
    pub sensitive: Option<bool>,
    /// CKA_EXTRACTABLE: the key may be wrapped (exported encrypted).
    pub extractable: Option<bool>,
    /// CKA_NEVER_EXTRACTABLE: the key has never been extractable.
    pub never_extractable: Option<bool>,
    /// CKA_ALWAYS_SENSITIVE: the key has always been sensitive.
    pub always_sensitive: Option<bool>,
    /// CKA_LOCAL: the key was generated on this token (false for a copy
    /// received in a ceremony).
    pub local: Option<bool>,
    /// CKA_WRAP_WITH_TRUSTED: the key may be wrapped only under keys the
    /// security officer marked trusted.
    pub wrap_with_trusted: Option<bool>,
}

impl KeyAttributes {
    /// `true` when nothing on the token lets this key out unencrypted.
    pub fn never_leaves_in_plaintext(&self) -> bool {
        self.sensitive == Some(true)
    }

    /// `true` when the key can leave the token at most wrapped under a key
    /// the security officer trusted.
    pub fn export_needs_trusted_key(&self) -> bool {
        self.extractable == Some(false) || self.wrap_with_trusted == Some(true)
    }
}
