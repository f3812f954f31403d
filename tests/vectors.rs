//! The test vectors in docs/test-vectors/, recomputed two ways: from the
//! constructions as docs/PROTOCOL.md states them (HKDF and
//! ChaCha20-Poly1305 called directly here), and by the vault's own code
//! (`vault_protocol`, `vault_client::backup`) fed the same fixed
//! inputs. Both must match the files byte for byte.
//!
//! Regenerate the files (only when the spec changes on purpose):
//! `BKV_WRITE_VECTORS=1 cargo test --workspace --test vectors`.

use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use serde_json::{Value, json};
use vault_types::UserId;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/test-vectors")
}

fn h(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing")),
    )
    .expect("hex")
}

/// HKDF-SHA512 (RFC 5869) with no salt, 32 bytes out.
fn hkdf_sha512(ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<sha2::Sha512>::new(None, ikm)
        .expand(info, &mut out)
        .expect("hkdf");
    out
}

/// HKDF-SHA256 (RFC 5869), 32 bytes out.
fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<sha2::Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .expect("hkdf");
    out
}

/// ChaCha20-Poly1305 (RFC 8439): returns ciphertext ‖ tag.
fn seal(key: &[u8; 32], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(Nonce::from_slice(nonce), Payload { msg, aad })
        .expect("seal")
}

/// An RNG that hands out fixed bytes (the vectors' nonces).
struct Fixed(Vec<u8>);

impl rand::RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        unimplemented_rng()
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented_rng()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(
            dest.len() <= self.0.len(),
            "the vector has too few random bytes"
        );
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

fn unimplemented_rng() -> ! {
    panic!("the vault's constructions draw bytes, never integers")
}

impl rand::CryptoRng for Fixed {}

/// Compares `computed` with the file, or writes it with BKV_WRITE_VECTORS.
fn check(name: &str, computed: &Value) -> Value {
    let path = dir().join(name);
    if std::env::var_os("BKV_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(dir()).expect("mkdir");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(computed).expect("json") + "\n",
        )
        .expect("write");
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("vector file")).expect("json");
    assert_eq!(
        &stored, computed,
        "{name}: the spec's construction disagrees with the stored vector"
    );
    stored
}

#[test]
fn enc_k_vector() {
    let user = "alice@example";
    let export_key: Vec<u8> = (0u8..64).collect();
    let k: [u8; 32] = core::array::from_fn(|i| 0xa0 ^ i as u8);
    let nonce: Vec<u8> = (0x10u8..0x1c).collect();
    let wrap_key = hkdf_sha512(&export_key, b"bkv/v1/backup-key-wrap");
    let mut enc_k = nonce.clone();
    enc_k.extend(seal(&wrap_key, &nonce, user.as_bytes(), &k));
    let v = check(
        "enc-k.json",
        &json!({
            "construction": "enc_K, docs/PROTOCOL.md section 4",
            "user_id": user,
            "export_key": hex::encode(&export_key),
            "k": hex::encode(k),
            "nonce": hex::encode(&nonce),
            "wrap_key": hex::encode(wrap_key),
            "enc_k": hex::encode(&enc_k),
        }),
    );
    // The vault's own code, fed the same nonce.
    let uid = UserId::new(user).expect("user");
    let ours = vault_protocol::wrap_key(&mut Fixed(h(&v, "nonce")), &h(&v, "export_key"), &uid, &k);
    assert_eq!(ours, h(&v, "enc_k"));
    let back = vault_protocol::unwrap_key(&export_key, &uid, &ours).expect("unwrap");
    assert_eq!(*back, k);
}

#[test]
fn recover_answer_vector() {
    let user = "alice@example";
    let session_key: Vec<u8> = (0u8..64).map(|i| i.wrapping_mul(3)).collect();
    let enc_k: Vec<u8> = (0u8..60).map(|i| 0x55 ^ i).collect();
    let nonce: Vec<u8> = (0x30u8..0x3c).collect();
    let answer_key = hkdf_sha512(&session_key, b"bkv/v1/recover-response");
    let mut answer = nonce.clone();
    answer.extend(seal(&answer_key, &nonce, user.as_bytes(), &enc_k));
    let v = check(
        "recover-answer.json",
        &json!({
            "construction": "the RecoverFinish answer, docs/PROTOCOL.md section 5",
            "user_id": user,
            "session_key": hex::encode(&session_key),
            "enc_k": hex::encode(&enc_k),
            "nonce": hex::encode(&nonce),
            "answer_key": hex::encode(answer_key),
            "answer": hex::encode(&answer),
        }),
    );
    let uid = UserId::new(user).expect("user");
    let ours = vault_protocol::seal_answer(&mut Fixed(h(&v, "nonce")), &session_key, &uid, &enc_k);
    assert_eq!(ours, h(&v, "answer"));
    assert_eq!(
        *vault_protocol::open_answer(&session_key, &uid, &ours).expect("open"),
        enc_k
    );
}

#[test]
fn backup_file_vector() {
    let k: [u8; 32] = core::array::from_fn(|i| i as u8 * 7);
    let salt: [u8; 32] = core::array::from_fn(|i| 0xf0 ^ i as u8);
    let chunk = 16usize;
    let plaintext = b"a tiny backup that spans three chunks".to_vec();
    let file_key = hkdf_sha256(&salt, &k, b"bkv/v1/backup-file");
    let mut header = b"BKVBACK1".to_vec();
    header.extend((chunk as u32).to_be_bytes());
    header.extend(salt);
    let mut file = header.clone();
    let pieces: Vec<&[u8]> = plaintext.chunks(chunk).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        nonce[8] = u8::from(i == pieces.len() - 1);
        file.extend(seal(&file_key, &nonce, &header, piece));
    }
    let v = check(
        "backup-file.json",
        &json!({
            "construction": "backup file, docs/PROTOCOL.md section 9",
            "k": hex::encode(k),
            "salt": hex::encode(salt),
            "chunk_size": chunk,
            "plaintext": hex::encode(&plaintext),
            "file_key": hex::encode(file_key),
            "file": hex::encode(&file),
        }),
    );
    let mut ours = Vec::new();
    vault_client::backup::encrypt_with(&k, &salt, chunk, &plaintext[..], &mut ours)
        .expect("encrypt");
    assert_eq!(ours, h(&v, "file"));
    let mut back = Vec::new();
    vault_client::backup::decrypt(&k, &h(&v, "file")[..], &mut back).expect("decrypt");
    assert_eq!(back, plaintext);
}

/// `short`: a u16be length, then the bytes (docs/PROTOCOL.md section 11).
fn short(out: &mut Vec<u8>, b: &[u8]) {
    out.extend((b.len() as u16).to_be_bytes());
    out.extend(b);
}

/// A fleet-key bundle, encoded by hand from section 11.
fn bundle_by_hand(epoch: u64, previous: [u8; 32]) -> Vec<u8> {
    let mut b = b"BKV-FLEET-BUNDLE".to_vec();
    b.push(1);
    short(&mut b, b"example-fleet");
    b.extend(epoch.to_be_bytes());
    b.extend(1_800_000_000u64.to_be_bytes());
    b.extend(1_900_000_000u64.to_be_bytes());
    short(&mut b, &[0x11; 32]);
    short(&mut b, &[0x22; 32]);
    b.extend(previous);
    b.extend(2u16.to_be_bytes());
    for (id, dc) in [(1u64, "dc-a"), (2, "dc-b")] {
        b.extend(id.to_be_bytes());
        short(&mut b, dc.as_bytes());
        let mut key = vec![0x04];
        key.extend([id as u8; 64]);
        short(&mut b, &key);
    }
    b
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[test]
fn fleet_bundle_vector() {
    use ed25519_dalek::Signer as _;

    let witness = ed25519_dalek::SigningKey::from_bytes(&[0x57; 32]);
    let operator = p256::ecdsa::SigningKey::from_slice(&[0x0f; 32]).expect("key");
    let b1 = bundle_by_hand(1, [0; 32]);
    let b2 = bundle_by_hand(2, sha256(&[&b1]));
    // The witness log holds b1 and b2; b2 is leaf 1 of a tree of size 2.
    let (l1, l2) = (sha256(&[&[0], &b1]), sha256(&[&[0], &b2]));
    let root = sha256(&[&[1], &l1, &l2]);
    let witness_sig = witness.sign(&b2).to_bytes().to_vec();
    let mut countersigned = sha256(&[&b2]).to_vec();
    countersigned.extend(&witness_sig);
    let operator_sig: p256::ecdsa::Signature = operator.sign(&countersigned);
    let timestamp_ms = 1_800_000_123_456u64;
    let mut sth = b"BKV-WITNESS-STH-v1".to_vec();
    sth.extend(2u64.to_be_bytes());
    sth.extend(timestamp_ms.to_be_bytes());
    sth.extend(root);
    let sth_sig = witness.sign(&sth).to_bytes().to_vec();
    let mut signed = b"BKV-SIGNED-BUNDLE".to_vec();
    signed.push(1);
    signed.extend((b2.len() as u32).to_be_bytes());
    signed.extend(&b2);
    short(&mut signed, &witness_sig);
    short(&mut signed, &operator_sig.to_bytes());
    signed.extend(1u64.to_be_bytes());
    signed.extend(2u64.to_be_bytes());
    signed.extend(timestamp_ms.to_be_bytes());
    signed.extend(root);
    short(&mut signed, &sth_sig);
    signed.extend(1u16.to_be_bytes());
    signed.extend(l1);

    let v = check(
        "fleet-bundle-v1.json",
        &json!({
            "construction": "fleet-key bundle v1 and its signed container, docs/PROTOCOL.md section 11",
            "witness_ed25519_seed": hex::encode([0x57; 32]),
            "witness_public_key": hex::encode(witness.verifying_key().as_bytes()),
            "operator_p256_secret": hex::encode([0x0f; 32]),
            "operator_public_key": hex::encode(operator.verifying_key().to_encoded_point(false).as_bytes()),
            "bundle_epoch_1": hex::encode(&b1),
            "bundle_epoch_2": hex::encode(&b2),
            "bundle_epoch_2_digest": hex::encode(sha256(&[&b2])),
            "tree_root_size_2": hex::encode(root),
            "signed_bundle_epoch_2": hex::encode(&signed),
        }),
    );

    // The library agrees byte for byte, and accepts it.
    let parsed = vault_transparency::Bundle::parse(&b2).expect("parse");
    assert_eq!(parsed.encode().expect("encode"), b2);
    let container = vault_transparency::SignedBundle::parse(&signed).expect("container");
    assert_eq!(container.encode(), signed);
    let pins = vault_transparency::Pins::from_hex(
        v["witness_public_key"].as_str().expect("key"),
        v["operator_public_key"].as_str().expect("key"),
    )
    .expect("pins");
    let ok = pins
        .verify(&signed, "example-fleet", 1_850_000_000, 2)
        .expect("verifies");
    assert_eq!(ok.bundle.epoch, 2);
    assert_eq!(ok.digest.to_vec(), h(&v, "bundle_epoch_2_digest"));
}
