//! Backup files encrypted with K, streaming, in constant memory.
//!
//! Format (version 1):
//!
//! ```text
//! header:  "BKVBACK1" (8) ‖ chunk size, u32 BE (4) ‖ salt (32, random)
//! chunks:  ChaCha20-Poly1305(file_key, nonce_i, aad = header, plaintext_i)
//!          nonce_i = i as u64 BE (8) ‖ last (1: 0x01 for the final chunk) ‖ 0 0 0
//! file_key = HKDF-SHA256(ikm = K, salt, info = "bkv/v1/backup-file")
//! ```
//!
//! Every chunk but the last holds exactly `chunk size` plaintext bytes; the
//! last holds fewer (possibly none). Because each nonce carries the chunk's
//! position and whether it is the last, a dropped, repeated, reordered or
//! truncated chunk, data appended after the end, or a flipped bit anywhere
//! fails to decrypt with an error that says which chunk.

use std::io::{Read, Write};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The file's magic bytes.
pub const MAGIC: &[u8; 8] = b"BKVBACK1";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const HEADER: usize = 8 + 4 + 32;

/// Encrypting or decrypting a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The input is not a backup of this format.
    #[error("not a Backup Key Vault backup (bad header)")]
    NotABackup,
    /// A chunk does not authenticate: wrong key, or the file was changed,
    /// truncated, reordered or extended.
    #[error(
        "chunk {0} does not authenticate: wrong key, or the file was changed, truncated or reordered"
    )]
    Corrupt(u64),
}

fn file_key(k: &[u8; 32], salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is within HKDF-SHA256's limit.
    let _ = Hkdf::<Sha256>::new(Some(salt), k).expand(b"bkv/v1/backup-file", key.as_mut());
    key
}

fn nonce(i: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&i.to_be_bytes());
    n[8] = u8::from(last);
    n
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Encrypts `input` to `output` under `k`; returns the plaintext length.
pub fn encrypt(k: &[u8; 32], input: impl Read, output: impl Write) -> Result<u64, BackupError> {
    let mut salt = [0u8; 32];
    OsRng.fill_bytes(&mut salt);
    encrypt_with(k, &salt, CHUNK, input, output)
}

/// [`encrypt`] with a given salt and chunk size (1 byte to 16 MiB):
/// deterministic, for test vectors and other implementations' tests. Use
/// [`encrypt`] for backups.
pub fn encrypt_with(
    k: &[u8; 32],
    salt: &[u8; 32],
    chunk: usize,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<u64, BackupError> {
    let chunk = chunk.clamp(1, 16 << 20);
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(chunk as u32).to_be_bytes());
    header.extend_from_slice(salt);
    output.write_all(&header)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(file_key(k, salt).as_ref()));
    // Read one chunk ahead to know which chunk is the last.
    let mut current = Zeroizing::new(vec![0u8; chunk]);
    let mut next = Zeroizing::new(vec![0u8; chunk]);
    let mut len = fill(&mut input, &mut current)?;
    let (mut i, mut total) = (0u64, 0u64);
    loop {
        let next_len = if len == chunk {
            fill(&mut input, &mut next)?
        } else {
            0
        };
        let last = len < chunk || next_len == 0;
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce(i, last)),
                Payload {
                    msg: &current[..len],
                    aad: &header,
                },
            )
            .map_err(|_| BackupError::Corrupt(i))?;
        output.write_all(&ct)?;
        total += len as u64;
        if last {
            output.flush()?;
            return Ok(total);
        }
        std::mem::swap(&mut current, &mut next);
        len = next_len;
        i += 1;
    }
}

/// Decrypts a backup from `input` to `output` under `k`; returns the
/// plaintext length. On error, `output` holds a prefix of unauthenticated
/// length: write to a temporary file and keep it only on success.
pub fn decrypt(
    k: &[u8; 32],
    mut input: impl Read,
    mut output: impl Write,
) -> Result<u64, BackupError> {
    let mut header = [0u8; HEADER];
    if fill(&mut input, &mut header)? < HEADER || &header[..8] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let chunk = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if chunk == 0 || chunk > 16 << 20 {
        return Err(BackupError::NotABackup);
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(file_key(k, &header[12..]).as_ref()));
    let sealed = chunk + TAG;
    let mut current = vec![0u8; sealed];
    let mut next = vec![0u8; sealed];
    let mut len = fill(&mut input, &mut current)?;
    let (mut i, mut total) = (0u64, 0u64);
    loop {
        let next_len = if len == sealed {
            fill(&mut input, &mut next)?
        } else {
            0
        };
        let last = next_len == 0;
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&nonce(i, last)),
                    Payload {
                        msg: &current[..len],
                        aad: &header,
                    },
                )
                .map_err(|_| BackupError::Corrupt(i))?,
        );
        output.write_all(&plain)?;
        total += plain.len() as u64;
        if last {
            output.flush()?;
            return Ok(total);
        }
        std::mem::swap(&mut current, &mut next);
        len = next_len;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn enc(k: &[u8; 32], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(encrypt(k, data, &mut out).unwrap(), data.len() as u64);
        out
    }

    fn dec(k: &[u8; 32], data: &[u8]) -> Result<Vec<u8>, BackupError> {
        let mut out = Vec::new();
        decrypt(k, data, &mut out).map(|_| out)
    }

    #[test]
    fn round_trips_at_chunk_boundaries() {
        let k = [3u8; 32];
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = enc(&k, &data);
            assert_eq!(dec(&k, &sealed).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn truncation_reordering_extension_and_wrong_keys_fail() {
        let k = [4u8; 32];
        let data: Vec<u8> = (0..3 * CHUNK + 10).map(|i| (i % 253) as u8).collect();
        let sealed = enc(&k, &data);
        let c = CHUNK + TAG;
        // Cut after a whole chunk: the new last chunk was not sealed as last.
        assert!(matches!(
            dec(&k, &sealed[..HEADER + 2 * c]),
            Err(BackupError::Corrupt(1))
        ));
        // Cut inside a chunk.
        assert!(dec(&k, &sealed[..sealed.len() - 5]).is_err());
        // Swap chunks 0 and 1.
        let mut swapped = sealed.clone();
        swapped[HEADER..HEADER + c].copy_from_slice(&sealed[HEADER + c..HEADER + 2 * c]);
        swapped[HEADER + c..HEADER + 2 * c].copy_from_slice(&sealed[HEADER..HEADER + c]);
        assert!(matches!(dec(&k, &swapped), Err(BackupError::Corrupt(0))));
        // Append a chunk's worth of bytes.
        let mut longer = sealed.clone();
        longer.extend_from_slice(&sealed[HEADER..HEADER + c]);
        assert!(dec(&k, &longer).is_err());
        // Another key; a header that is not ours.
        assert!(matches!(
            dec(&[5u8; 32], &sealed),
            Err(BackupError::Corrupt(0))
        ));
        assert!(matches!(
            dec(&k, b"not a backup at all, clearly not"),
            Err(BackupError::NotABackup)
        ));
        let mut salt_changed = sealed.clone();
        salt_changed[20] ^= 1;
        assert!(dec(&k, &salt_changed).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_flipped_bit_is_caught(len in 0usize..(2 * CHUNK + 100), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let k = [6u8; 32];
            let data = vec![0x5au8; len];
            let mut sealed = enc(&k, &data);
            let at = pos.index(sealed.len());
            sealed[at] ^= 1 << bit;
            prop_assert!(dec(&k, &sealed).is_err());
        }
    }
}
