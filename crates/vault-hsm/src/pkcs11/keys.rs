//! The vault's key objects on a token: their labels, the templates they are
//! created with, and how they are found and described.

use std::collections::BTreeMap;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::blob::KekVersion;
use crate::error::DeviceError;
use crate::report::KeyAttributes;

/// Object labels. The vault finds every key by label, never by handle or slot.
pub(crate) const KEK_LABEL_PREFIX: &str = "bkv-kek-v";
pub(crate) const ATTESTATION_LABEL: &str = "bkv-attestation";
/// The operator's bundle-signing key pair (on an operator token only).
pub(crate) const OPERATOR_LABEL: &str = "bkv-operator";
pub(crate) const TRANSPORT_LABEL: &str = "bkv-transport";
/// The TLS identity key pair (node tokens and the operator token).
pub(crate) const TLS_LABEL: &str = "bkv-tls";

pub(crate) const PEER_TRANSPORT_LABEL: &str = "bkv-transport-peer";

/// Associated data of the KEK check value: AES-GCM with an all-zero IV over
/// no plaintext and this label. The tag identifies the key without revealing
/// it, and no real seal uses a zero IV on purpose (IVs come from the RNG).
pub(crate) const KCV_AAD: &[u8] = b"backup-key-vault kek check value v1";
/// Bytes of the GCM tag that form the check value.
const KCV_LEN: usize = 8;

pub(crate) fn kek_label(version: KekVersion) -> String {
    format!("{KEK_LABEL_PREFIX}{}", version.0)
}

/// The version a KEK label names: exactly `bkv-kek-v<N>` (no sign, no
/// leading zero), so that two objects can never both pass for one version.
fn kek_version_of(label: &str) -> Option<KekVersion> {
    label
        .strip_prefix(KEK_LABEL_PREFIX)
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .map(KekVersion)
        .filter(|v| kek_label(*v) == label)
}

/// Label of the data objects that record a KEK version destroyed on this
/// token (one object per version, its value the version, big-endian):
/// never removed by this code, and undestroyable where the token supports
/// it. A destroyed version is never used, imported or made again here.
pub(crate) const KEK_DESTROYED_LABEL: &str = "bkv-kek-destroyed";

/// The KEK versions destroyed on this token.
pub(crate) fn destroyed_keks(
    session: &Session,
) -> Result<std::collections::BTreeSet<u32>, DeviceError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(KEK_DESTROYED_LABEL.as_bytes().to_vec()),
        ])
        .map_err(|e| DeviceError::from_cryptoki("find destroyed KEK versions", e))?;
    let mut out = std::collections::BTreeSet::new();
    for handle in handles {
        let value = session
            .get_attributes(handle, &[AttributeType::Value])
            .map_err(|e| DeviceError::from_cryptoki("read destroyed KEK versions", e))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default();
        let v: [u8; 4] = value.as_slice().try_into().map_err(|_| {
            DeviceError::local(
                "read destroyed KEK versions",
                "a record of a destroyed version is not 4 bytes",
            )
        })?;
        out.insert(u32::from_be_bytes(v));
    }
    Ok(out)
}

/// Records that KEK `version` was destroyed on this token (a read-write,
/// logged-in session), in an object that is undestroyable where the token
/// allows it.
pub(crate) fn record_destroyed_kek(
    session: &Session,
    version: KekVersion,
) -> Result<(), DeviceError> {
    if destroyed_keks(session)?.contains(&version.0) {
        return Ok(());
    }
    let template = |destroyable: Option<bool>| {
        let mut t = vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(false),
            Attribute::Label(KEK_DESTROYED_LABEL.as_bytes().to_vec()),
            Attribute::Value(version.0.to_be_bytes().to_vec()),
        ];
        t.extend(destroyable.map(Attribute::Destroyable));
        t
    };
    match session.create_object(&template(Some(false))) {
        Ok(_) => Ok(()),
        // A token without CKA_DESTROYABLE: the record still holds against
        // every import by this code; a PIN holder could remove it.
        Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::AttributeTypeInvalid
            | cryptoki::error::RvError::AttributeValueInvalid
            | cryptoki::error::RvError::TemplateInconsistent,
            _,
        )) => session
            .create_object(&template(None))
            .map(drop)
            .map_err(|e| DeviceError::from_cryptoki("record a destroyed KEK version", e)),
        Err(e) => Err(DeviceError::from_cryptoki(
            "record a destroyed KEK version",
            e,
        )),
    }
}

/// Every object labelled as KEK `version` (normally one).
pub(crate) fn kek_objects(
    session: &Session,
    version: KekVersion,
) -> Result<Vec<ObjectHandle>, DeviceError> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(kek_label(version).into_bytes()),
        ])
        .map_err(|e| DeviceError::from_cryptoki("find KEK", e))
}

/// Attributes every KEK carries, generated or received: sensitive, usable
/// only for AES-GCM encrypt and decrypt, and — when extractable at all —
/// wrappable only under a key that the security officer marked trusted.
pub(crate) fn kek_template(version: KekVersion, extractable: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::WrapWithTrusted(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![MechanismType::AES_GCM]),
        Attribute::Label(kek_label(version).into_bytes()),
        Attribute::Id(version.0.to_be_bytes().to_vec()),
    ]
}

/// Every KEK on the token, by version.
pub(crate) fn find_keks(
    session: &Session,
) -> Result<BTreeMap<KekVersion, ObjectHandle>, DeviceError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ])
        .map_err(|e| DeviceError::from_cryptoki("find KEKs", e))?;
    let destroyed = destroyed_keks(session)?;
    let mut keks = BTreeMap::new();
    for handle in handles {
        if let Some(version) = kek_version_of(&label_of(session, handle)?)
            && !destroyed.contains(&version.0)
        {
            keks.insert(version, handle);
        }
    }
    Ok(keks)
}

/// The single object of `class` labelled `label`, if any.
pub(crate) fn find_one(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<ObjectHandle>, DeviceError> {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| DeviceError::from_cryptoki("find key", e))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(DeviceError::local(
            "find key",
            format!(
                "{} objects are labelled {label:?}; expected one",
                found.len()
            ),
        )),
    }
}

fn label_of(session: &Session, handle: ObjectHandle) -> Result<String, DeviceError> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::Label])
        .map_err(|e| DeviceError::from_cryptoki("read key label", e))?;
    Ok(attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
            _ => None,
        })
        .unwrap_or_default())
}

/// The check value of a KEK (see [`KCV_AAD`]).
pub(crate) fn check_value(session: &Session, kek: ObjectHandle) -> Result<String, DeviceError> {
    let mut iv = [0u8; 12];
    let params = GcmParams::new(&mut iv, KCV_AAD, 128u64.into())
        .map_err(|e| DeviceError::from_cryptoki("compute KEK check value", e))?;
    let tag = session
        .encrypt(&Mechanism::AesGcm(params), kek, &[])
        .map_err(|e| DeviceError::from_cryptoki("compute KEK check value", e))?;
    Ok(hex::encode(&tag[..KCV_LEN.min(tag.len())]))
}

/// Reads the attributes that the key report shows.
pub(crate) fn describe(
    session: &Session,
    handle: ObjectHandle,
    role: &str,
) -> Result<KeyAttributes, DeviceError> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::Label,
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
                AttributeType::Local,
                AttributeType::WrapWithTrusted,
            ],
        )
        .map_err(|e| DeviceError::from_cryptoki("read key attributes", e))?;
    let mut out = KeyAttributes {
        label: String::new(),
        role: role.to_owned(),
        class: String::new(),
        key_type: String::new(),
        kek_version: None,
        check_value: None,
        sensitive: None,
        extractable: None,
        never_extractable: None,
        always_sensitive: None,
        local: None,
        wrap_with_trusted: None,
    };
    for attr in attrs {
        match attr {
            Attribute::Label(l) => out.label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Class(c) => out.class = class_name(c),
            Attribute::KeyType(k) => out.key_type = key_type_name(k),
            Attribute::Sensitive(b) => out.sensitive = Some(b),
            Attribute::Extractable(b) => out.extractable = Some(b),
            Attribute::NeverExtractable(b) => out.never_extractable = Some(b),
            Attribute::AlwaysSensitive(b) => out.always_sensitive = Some(b),
            Attribute::Local(b) => out.local = Some(b),
            Attribute::WrapWithTrusted(b) => out.wrap_with_trusted = Some(b),
            _ => {}
        }
    }
    if role == "kek" {
        out.kek_version = kek_version_of(&out.label).map(|v| v.0);
        out.check_value = Some(check_value(session, handle)?);
    }
    Ok(out)
}

fn class_name(class: ObjectClass) -> String {
    match class {
        ObjectClass::SECRET_KEY => "secret".into(),
        ObjectClass::PRIVATE_KEY => "private".into(),
        ObjectClass::PUBLIC_KEY => "public".into(),
        other => format!("{other}"),
    }
}

fn key_type_name(key_type: KeyType) -> String {
    match key_type {
        KeyType::AES => "AES".into(),
        KeyType::EC => "EC".into(),
        KeyType::RSA => "RSA".into(),
        other => format!("{other}"),
    }
}

/// Every vault key on the token, described, in a stable order.
pub(crate) fn describe_all(session: &Session) -> Result<Vec<KeyAttributes>, DeviceError> {
    let mut keys = Vec::new();
    for handle in find_keks(session)?.into_values() {
        keys.push(describe(session, handle, "kek")?);
    }
    for (label, role) in [
        (ATTESTATION_LABEL, "attestation"),
        (TRANSPORT_LABEL, "transport"),
        (OPERATOR_LABEL, "operator"),
        (TLS_LABEL, "tls"),
    ] {
        if let Some(handle) = find_one(session, ObjectClass::PRIVATE_KEY, label)? {
            keys.push(describe(session, handle, role)?);
        }
    }
    if let Some(handle) = find_one(
        session,
        ObjectClass::SECRET_KEY,
        crate::checkpoint::MAC_LABEL,
    )? {
        keys.push(describe(session, handle, "checkpoint-mac")?);
    }
    // CA keys, one pair per fleet the operator token serves.
    let private = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .map_err(|e| DeviceError::from_cryptoki("find keys", e))?;
    for handle in private {
        let label = label_of(session, handle)?;
        let role = if label.starts_with(crate::token_key::FLEET_CA_PREFIX) {
            "fleet-ca"
        } else if label.starts_with(crate::token_key::FRONTEND_CA_PREFIX) {
            "frontend-ca"
        } else {
            continue;
        };
        keys.push(describe(session, handle, role)?);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_labels_round_trip() {
        assert_eq!(kek_label(KekVersion(7)), "bkv-kek-v7");
        assert_eq!(kek_version_of("bkv-kek-v7"), Some(KekVersion(7)));
        assert_eq!(kek_version_of("bkv-kek-v0"), None);
        assert_eq!(kek_version_of("bkv-kek-vx"), None);
        assert_eq!(kek_version_of("other"), None);
    }
}
