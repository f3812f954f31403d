//! The transport key pair (`bkv-transport`): RSA-3072, its private half
//! sensitive, never extractable, and able only to unwrap. It receives the
//! fleet KEK in a ceremony.
//!
//! It is replaced whenever a KEK version is destroyed: a ceremony file kept
//! from before (KEKs wrapped under the old public key) must not open on
//! this token again, even for a PIN holder who removed the token's record
//! of the destroyed version. Each pair carries in `CKA_ID` its *epoch*: the
//! highest KEK version destroyed when it was made (none, for the pair made
//! at provisioning). A pair whose epoch is below the highest destroyed
//! version is replaced.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

use crate::error::DeviceError;
use crate::pkcs11::keys::TRANSPORT_LABEL;

/// The label of a replacement pair while it is being made. A crash leaves
/// it behind; the next replacement finishes or restarts the swap.
const NEXT_LABEL: &str = "bkv-transport-next";

/// Generates a transport key pair labelled `label` for `epoch`.
pub(crate) fn generate(session: &Session, label: &str, epoch: u32) -> Result<(), DeviceError> {
    let label = label.as_bytes().to_vec();
    let id = epoch.to_be_bytes().to_vec();
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::ModulusBits(crate::provision::TRANSPORT_KEY_BITS.into()),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Wrap(true),
        Attribute::Encrypt(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Label(label.clone()),
        Attribute::Id(id.clone()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Derive(false),
        Attribute::Label(label),
        Attribute::Id(id),
    ];
    session
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
        .map_err(|e| DeviceError::from_cryptoki("generate transport key", e))?;
    Ok(())
}

fn labelled(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, DeviceError> {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .map_err(|e| DeviceError::from_cryptoki("find transport key", e))
}

fn destroy_all(session: &Session, handles: Vec<ObjectHandle>) -> Result<(), DeviceError> {
    for h in handles {
        session
            .destroy_object(h)
            .map_err(|e| DeviceError::from_cryptoki("destroy transport key", e))?;
    }
    Ok(())
}

/// The lowest epoch among the current pair's objects (an `CKA_ID` that is
/// not 4 bytes, as on pairs made before epochs existed, counts as 0).
fn epoch_of(session: &Session, handles: &[ObjectHandle]) -> Result<u32, DeviceError> {
    let mut lowest = u32::MAX;
    for &h in handles {
        let id = session
            .get_attributes(h, &[AttributeType::Id])
            .map_err(|e| DeviceError::from_cryptoki("read transport key id", e))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Id(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default();
        let epoch = <[u8; 4]>::try_from(id.as_slice()).map_or(0, u32::from_be_bytes);
        lowest = lowest.min(epoch);
    }
    Ok(lowest)
}

/// Makes sure the token's transport pair is of epoch `epoch` or later:
/// otherwise makes a new pair, destroys the old one, and gives the new one
/// the transport label. Finishes a swap a crash interrupted. Returns
/// whether a new pair was made. Needs a read-write, logged-in session.
pub(crate) fn bring_up_to(session: &Session, epoch: u32) -> Result<bool, DeviceError> {
    let current = labelled(session, TRANSPORT_LABEL)?;
    let next = labelled(session, NEXT_LABEL)?;
    if current.is_empty() && next.len() == 2 {
        // A crash between destroying the old pair and relabelling the new.
        relabel(session, &next)?;
        return bring_up_to(session, epoch);
    }
    // A crash before the old pair went: start the swap again.
    destroy_all(session, next)?;
    if !current.is_empty() && epoch_of(session, &current)? >= epoch {
        return Ok(false);
    }
    generate(session, NEXT_LABEL, epoch)?;
    destroy_all(session, current)?;
    relabel(session, &labelled(session, NEXT_LABEL)?)?;
    Ok(true)
}

fn relabel(session: &Session, handles: &[ObjectHandle]) -> Result<(), DeviceError> {
    for &h in handles {
        session
            .update_attributes(h, &[Attribute::Label(TRANSPORT_LABEL.as_bytes().to_vec())])
            .map_err(|e| DeviceError::from_cryptoki("label the new transport key", e))?;
    }
    Ok(())
}
