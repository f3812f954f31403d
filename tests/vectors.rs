//! The test vectors in docs/test-vectors/, recomputed two ways: from the
//! constructions as docs/PROTOCOL.md states them (HKDF and
//! ChaCha20-Poly1305 called directly here), and by the vault's own code
//! (`vault_core::protocol`, `vault_client::backup`) fed the same fixed
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
    let ours =
        vault_core::protocol::wrap_key(&mut Fixed(h(&v, "nonce")), &h(&v, "export_key"), &uid, &k);
    assert_eq!(ours, h(&v, "enc_k"));
    let back = vault_core::protocol::unwrap_key(&export_key, &uid, &ours).expect("unwrap");
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
    let ours =
        vault_core::protocol::seal_answer(&mut Fixed(h(&v, "nonce")), &session_key, &uid, &enc_k);
    assert_eq!(ours, h(&v, "answer"));
    assert_eq!(
        *vault_core::protocol::open_answer(&session_key, &uid, &ours).expect("open"),
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
