//! The HSM conformance suite: what any [`Hsm`] implementation must do.
//!
//! Each check returns `Err(reason)` instead of panicking, so a harness can
//! report every failure by name. `tests/softhsm.rs` runs the suite against
//! SoftHSM2 through [`crate::Pkcs11Hsm`].

use std::collections::HashSet;
use std::sync::Arc;

use crate::asynchronous::AsyncHsm;
use crate::blob::{OVERHEAD, SealedBlob};
use crate::error::HsmError;
use crate::hsm::Hsm;
use crate::secret::SecretBytes;

/// What a check returns.
pub type CheckResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Associated data the suite seals under: the shape vault-core will use.
pub const AAD: &[u8] = b"kind=record;fleet=conformance;user=alice;generation=1";

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn sealed<H: Hsm>(hsm: &H, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
    hsm.seal(aad, plaintext).map_err(|e| format!("seal: {e}"))
}

/// Seal then unseal gives back the plaintext, for sizes from 0 to 64 KiB.
pub fn seal_round_trip<H: Hsm>(hsm: &H) -> CheckResult {
    for len in [
        0,
        1,
        15,
        16,
        17,
        32,
        255,
        1024,
        4096,
        16 * 1024,
        64 * 1024 - 1,
        64 * 1024,
    ] {
        let plain = pattern(len);
        let blob = sealed(hsm, AAD, &plain)?;
        ensure!(
            blob.len() == len + OVERHEAD,
            "blob of {len} bytes has length {}",
            blob.len()
        );
        let back = hsm
            .unseal(AAD, &blob)
            .map_err(|e| format!("unseal {len} bytes: {e}"))?;
        ensure!(
            back.expose() == plain.as_slice(),
            "{len}-byte round trip changed the data"
        );
    }
    Ok(())
}

/// Two seals of one plaintext differ (fresh IVs), and the IV is not zero.
pub fn seals_use_fresh_ivs<H: Hsm>(hsm: &H) -> CheckResult {
    let mut ivs = HashSet::new();
    for _ in 0..32 {
        let blob = sealed(hsm, AAD, b"same")?;
        let parsed = SealedBlob::parse(&blob).map_err(|e| e.to_string())?;
        ensure!(parsed.iv != &[0u8; 12], "seal used an all-zero IV");
        ensure!(ivs.insert(*parsed.iv), "seal repeated an IV");
    }
    Ok(())
}

/// Unsealing with different associated data fails as unauthentic.
pub fn aad_mismatch_fails<H: Hsm>(hsm: &H) -> CheckResult {
    let blob = sealed(hsm, AAD, b"the backup key wrapped")?;
    for other in [
        &b"kind=record;fleet=conformance;user=bob;generation=1"[..],
        b"kind=record;fleet=conformance;user=alice;generation=2",
        b"",
    ] {
        match hsm.unseal(other, &blob) {
            Err(HsmError::Unauthentic) => {}
            other_result => {
                return Err(format!(
                    "unseal with other AAD gave {:?}, expected Unauthentic",
                    other_result.map(|s| s.len())
                ));
            }
        }
    }
    Ok(())
}

/// Flipping any single bit of a blob makes unsealing fail with a typed error.
pub fn every_bit_flip_fails<H: Hsm>(hsm: &H) -> CheckResult {
    let blob = sealed(hsm, AAD, &pattern(24))?;
    for bit in 0..blob.len() * 8 {
        let mut bad = blob.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        match hsm.unseal(AAD, &bad) {
            Err(
                HsmError::Unauthentic
                | HsmError::UnsupportedBlobVersion(_)
                | HsmError::UnknownKekVersion(_)
                | HsmError::MalformedBlob(_),
            ) => {}
            Ok(_) => return Err(format!("blob with bit {bit} flipped unsealed")),
            Err(e) => return Err(format!("bit {bit} flipped gave an untyped error: {e}")),
        }
    }
    let truncated = &blob[..blob.len() - 1];
    ensure!(
        hsm.unseal(AAD, truncated).is_err(),
        "truncated blob unsealed"
    );
    ensure!(
        hsm.unseal(AAD, &blob[..5]).is_err(),
        "header-only blob unsealed"
    );
    Ok(())
}

/// A blob naming a KEK version the HSM does not hold fails as such.
pub fn unknown_kek_version_fails<H: Hsm>(hsm: &H) -> CheckResult {
    let mut blob = sealed(hsm, AAD, b"x")?;
    let unknown = hsm.current_kek_version().0 + 1000;
    blob[1..5].copy_from_slice(&unknown.to_be_bytes());
    match hsm.unseal(AAD, &blob) {
        Err(HsmError::UnknownKekVersion(v)) if v == unknown => Ok(()),
        other => Err(format!(
            "unseal under unknown KEK gave {:?}",
            other.map(|s| s.len())
        )),
    }
}

/// Oversized plaintext is refused before it reaches the device.
pub fn oversized_plaintext_is_refused<H: Hsm>(hsm: &H) -> CheckResult {
    let big = vec![0u8; crate::blob::MAX_PLAINTEXT + 1];
    match hsm.seal(AAD, &big) {
        Err(HsmError::TooLarge { .. }) => Ok(()),
        other => Err(format!("oversized seal gave {:?}", other.map(|b| b.len()))),
    }
}

/// Signatures verify in software under the attestation public key, and do
/// not verify for another message.
pub fn sign_and_verify<H: Hsm>(hsm: &H) -> CheckResult {
    let key = hsm.attestation_public_key();
    ensure!(
        key.0.len() == 65 && key.0[0] == 4,
        "attestation key is not SEC1 uncompressed P-256"
    );
    for msg in [&b""[..], b"deployment evidence", &pattern(5000)] {
        let sig = hsm.sign(msg).map_err(|e| format!("sign: {e}"))?;
        ensure!(
            sig.0.len() == 64,
            "signature is {} bytes, expected 64",
            sig.0.len()
        );
        key.verify(msg, &sig).map_err(|e| format!("verify: {e}"))?;
        let mut other = msg.to_vec();
        other.push(0);
        ensure!(
            key.verify(&other, &sig).is_err(),
            "signature verified for another message"
        );
    }
    Ok(())
}

/// Random bytes come back filled and different each time.
pub fn random_bytes<H: Hsm>(hsm: &H) -> CheckResult {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    hsm.random(&mut a).map_err(|e| format!("random: {e}"))?;
    hsm.random(&mut b).map_err(|e| format!("random: {e}"))?;
    ensure!(a != [0u8; 32] && a != b, "random bytes repeat or are zero");
    Ok(())
}

/// The key report names the token and shows every KEK sensitive and never
/// exportable except wrapped under a trusted key, and the attestation key
/// and TLS keys sensitive, never extractable and generated on the token.
pub fn key_report_shows_protected_keys<H: Hsm>(hsm: &H) -> CheckResult {
    let report = hsm.key_report().map_err(|e| format!("key report: {e}"))?;
    ensure!(!report.token.serial.is_empty(), "token serial is empty");
    ensure!(!report.token.model.is_empty(), "token model is empty");
    let keks: Vec<_> = report.keys.iter().filter(|k| k.role == "kek").collect();
    ensure!(!keks.is_empty(), "report lists no KEK");
    for kek in keks {
        ensure!(
            kek.sensitive == Some(true),
            "KEK {} is not sensitive",
            kek.label
        );
        ensure!(
            kek.export_needs_trusted_key(),
            "KEK {} is exportable under untrusted keys",
            kek.label
        );
        ensure!(
            kek.check_value.as_ref().is_some_and(|c| c.len() == 16),
            "KEK {} has no check value",
            kek.label
        );
    }
    let att = report
        .keys
        .iter()
        .find(|k| k.role == "attestation")
        .ok_or("report lists no attestation key")?;
    ensure!(
        att.sensitive == Some(true)
            && att.extractable == Some(false)
            && att.never_extractable == Some(true),
        "attestation key attributes are {att:?}"
    );
    ensure!(
        att.local == Some(true),
        "attestation key was not generated on the token"
    );
    let tls = report
        .keys
        .iter()
        .find(|k| k.role == "tls")
        .ok_or("report lists no TLS key")?;
    ensure!(
        tls.sensitive == Some(true)
            && tls.extractable == Some(false)
            && tls.never_extractable == Some(true)
            && tls.local == Some(true),
        "TLS key attributes are {tls:?}"
    );
    Ok(())
}

/// `a` unseals what `b` sealed and the other way round: they hold the same
/// KEK (after a ceremony).
pub fn cross_unseal<A: Hsm, B: Hsm>(a: &A, b: &B) -> CheckResult {
    let from_a = sealed(a, AAD, b"sealed by a")?;
    let from_b = sealed(b, AAD, b"sealed by b")?;
    let at_b = b
        .unseal(AAD, &from_a)
        .map_err(|e| format!("b unsealing a's blob: {e}"))?;
    let at_a = a
        .unseal(AAD, &from_b)
        .map_err(|e| format!("a unsealing b's blob: {e}"))?;
    ensure!(at_b.expose() == b"sealed by a", "b read a's blob wrongly");
    ensure!(at_a.expose() == b"sealed by b", "a read b's blob wrongly");
    Ok(())
}

/// `tasks` concurrent seal/unseal tasks through [`AsyncHsm`] all succeed.
pub fn concurrent_seal_unseal<H: Hsm>(hsm: Arc<H>, tasks: usize) -> CheckResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("start runtime: {e}"))?;
    let hsm = AsyncHsm::new(hsm);
    rt.block_on(async move {
        let mut handles = Vec::with_capacity(tasks);
        for i in 0..tasks {
            let hsm = hsm.clone();
            handles.push(tokio::spawn(async move {
                let aad = format!("task={i}").into_bytes();
                let plain = pattern(64 + i);
                for round in 0..8 {
                    let blob = hsm
                        .seal(aad.clone(), SecretBytes::new(plain.clone()))
                        .await
                        .map_err(|e| format!("task {i} round {round} seal: {e}"))?;
                    let back = hsm
                        .unseal(aad.clone(), blob)
                        .await
                        .map_err(|e| format!("task {i} round {round} unseal: {e}"))?;
                    ensure!(
                        back.expose() == plain.as_slice(),
                        "task {i} got other data back"
                    );
                }
                Ok::<(), String>(())
            }));
        }
        for handle in handles {
            handle.await.map_err(|e| format!("task died: {e}"))??;
        }
        Ok(())
    })
}

/// One check of one HSM.
pub type Check<H> = fn(&H) -> CheckResult;

/// The single-HSM checks, by name, for a harness to run one by one.
pub fn single_hsm_checks<H: Hsm>() -> Vec<(&'static str, Check<H>)> {
    vec![
        ("seal_round_trip_0_to_64k", seal_round_trip::<H>),
        ("seals_use_fresh_ivs", seals_use_fresh_ivs::<H>),
        ("aad_mismatch_fails", aad_mismatch_fails::<H>),
        ("every_bit_flip_fails", every_bit_flip_fails::<H>),
        ("unknown_kek_version_fails", unknown_kek_version_fails::<H>),
        (
            "oversized_plaintext_is_refused",
            oversized_plaintext_is_refused::<H>,
        ),
        ("sign_and_verify", sign_and_verify::<H>),
        ("random_bytes", random_bytes::<H>),
        (
            "key_report_shows_protected_keys",
            key_report_shows_protected_keys::<H>,
        ),
    ]
}
