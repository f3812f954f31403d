//! A client written from docs/PROTOCOL.md alone, against a real fleet.
//!
//! It uses only the generated protobuf types, opaque-ke's public API with
//! the documented configuration, and the constructions of the spec (HPKE,
//! HKDF, ChaCha20-Poly1305 from their crates) — none of `vault-client`'s or
//! `vault_protocol`'s code. It registers, recovers the same K, sees a
//! wrong password counted, interoperates with `vaultctl`, and decrypts a
//! backup that `vaultctl backup encrypt` wrote.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hpke::{Deserializable, Serializable};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use rand::RngCore;
use rand::rngs::OsRng;
use vault_proto::v1::{
    RecoverFinishRequest, RecoverStartRequest, RegisterFinishRequest, RegisterStartRequest,
    UserStatusRequest,
};
use vault_testkit::{FleetSpec, Template, TestFleet};

/// §1: the OPAQUE configuration.
struct Spec;
impl opaque_ke::CipherSuite for Spec {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

const CONTEXT: &[u8] = b"bkv/v2";

/// §2: the reference client's fast Argon2id profile (any KSF works, as long
/// as registration and recovery agree; this one lets vaultctl --ksf fast
/// recover what this client registered).
fn ksf() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(256, 1, 1, Some(64)).expect("params");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

fn hkdf_sha512(ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<sha2::Sha512>::new(None, ikm)
        .expand(info, &mut out)
        .expect("hkdf");
    out
}

fn seal(key: &[u8; 32], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    out.extend(
        ChaCha20Poly1305::new(Key::from_slice(key))
            .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
            .expect("seal"),
    );
    out
}

fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    ensure!(sealed.len() >= 28, "too short");
    let (nonce, ct) = sealed.split_at(12);
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| anyhow::anyhow!("does not open"))
}

fn request_id() -> Vec<u8> {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    id.to_vec()
}

fn main() -> ExitCode {
    vault_testkit::run_fleet_tests(
        3,
        vec![(
            "a_client_written_from_the_spec_registers_recovers_and_decrypts",
            spec_client,
        )],
    )
}

fn spec_client(template: &Template) -> anyhow::Result<()> {
    let mut fleet = TestFleet::create(template, &FleetSpec::voters(3))?;
    fleet.start_all(1..=3)?;
    fleet.init()?;
    fleet.wait_converged(Duration::from_secs(30))?;
    let rt = vault_testkit::client::runtime();
    let user = "ivy";
    let password = b"spec-only password";
    let mut k = [0u8; 32];
    OsRng.fill_bytes(&mut k);

    rt.block_on(async {
        let mut c = fleet.frontend(1).await?;
        // --- register (§1, §3, §4)
        let start = ClientRegistration::<Spec>::start(&mut OsRng, password)?;
        let reply = c
            .register_start(RegisterStartRequest {
                user_id: user.into(),
                registration_request: start.message.serialize().to_vec(),
            })
            .await?
            .into_inner();
        let keys = reply.fleet.context("fleet keys")?;
        let ids = Identifiers {
            client: Some(user.as_bytes()),
            server: Some(keys.fleet_id.as_bytes()),
        };
        let ksf = ksf();
        let done = start.state.finish(
            &mut OsRng,
            password,
            RegistrationResponse::deserialize(&reply.registration_response)?,
            ClientRegistrationFinishParameters::new(ids, Some(&ksf)),
        )?;
        ensure!(done.server_s_pk.serialize().to_vec() == keys.opaque_public_key);
        let enc_k = seal(
            &hkdf_sha512(&done.export_key, b"bkv/v1/backup-key-wrap"),
            user.as_bytes(),
            &k,
        );
        // §3: version 2, then fixed-size fields, nothing else.
        let upload = done.message.serialize().to_vec();
        ensure!(upload.len() == 192 && enc_k.len() == 60);
        ensure!(reply.registration_nonce.len() == 32);
        let mut payload = vec![2u8];
        payload.extend(start.message.serialize());
        payload.extend(&reply.registration_response);
        payload.extend(&upload);
        payload.extend(&enc_k);
        payload.extend(&reply.registration_nonce);
        payload.extend(reply.generation.to_be_bytes());
        payload.extend(4u32.to_be_bytes());
        ensure!(payload.len() == 393);
        type Kem = hpke::kem::X25519HkdfSha256;
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&keys.hpke_public_key)
            .map_err(|e| anyhow::anyhow!("fleet HPKE key: {e:?}"))?;
        let mut aad = keys.fleet_id.as_bytes().to_vec();
        aad.push(0);
        aad.extend(user.as_bytes());
        let (encapped, ct) =
            hpke::single_shot_seal::<hpke::aead::ChaCha20Poly1305, hpke::kdf::HkdfSha256, Kem, _>(
                &hpke::OpModeS::Base,
                &pk,
                b"bkv/v2/register-finish",
                &payload,
                &aad,
                &mut OsRng,
            )
            .map_err(|e| anyhow::anyhow!("HPKE seal: {e:?}"))?;
        let mut sealed = encapped.to_bytes().to_vec();
        sealed.extend(ct);
        let reg = c
            .register_finish(RegisterFinishRequest {
                user_id: user.into(),
                sealed_registration: sealed,
                request_id: request_id(),
                ..Default::default()
            })
            .await?
            .into_inner();
        ensure!(reply.generation == 0, "a new user's generation is 0");
        ensure!(reg.generation == 1 && reg.max_attempts == 4);

        // --- recover (§5, §6)
        let login = ClientLogin::<Spec>::start(&mut OsRng, password)?;
        let started = c
            .recover_start(RecoverStartRequest {
                user_id: user.into(),
                ke1: login.message.serialize().to_vec(),
                request_id: request_id(),
            })
            .await?
            .into_inner();
        ensure!(started.attempts_left == 3);
        let finished = login.state.finish(
            &mut OsRng,
            password,
            CredentialResponse::deserialize(&started.ke2)?,
            ClientLoginFinishParameters::new(Some(CONTEXT), ids, Some(&ksf)),
        )?;
        // §11.4 step 8: KE3 goes only to the bundle's server key.
        ensure!(finished.server_s_pk.serialize().to_vec() == keys.opaque_public_key);
        let answer = c
            .recover_finish(RecoverFinishRequest {
                session_id: started.session_id,
                ke3: finished.message.serialize().to_vec(),
            })
            .await?
            .into_inner();
        let enc_k_back = open(
            &hkdf_sha512(&finished.session_key, b"bkv/v1/recover-response"),
            user.as_bytes(),
            &answer.sealed_key,
        )?;
        let k_back = open(
            &hkdf_sha512(&finished.export_key, b"bkv/v1/backup-key-wrap"),
            user.as_bytes(),
            &enc_k_back,
        )?;
        ensure!(k_back == k, "the spec client recovered another key");

        // --- a wrong password is detected at KE2 and still counted (§7)
        let login = ClientLogin::<Spec>::start(&mut OsRng, b"not it")?;
        let started = c
            .recover_start(RecoverStartRequest {
                user_id: user.into(),
                ke1: login.message.serialize().to_vec(),
                request_id: request_id(),
            })
            .await?
            .into_inner();
        let wrong = login.state.finish(
            &mut OsRng,
            b"not it",
            CredentialResponse::deserialize(&started.ke2)?,
            ClientLoginFinishParameters::new(Some(CONTEXT), ids, Some(&ksf)),
        );
        ensure!(
            matches!(
                wrong,
                Err(opaque_ke::errors::ProtocolError::InvalidLoginError)
            ),
            "a wrong password opened KE2"
        );
        // §5: the success's reset may land after its answer (it was not
        // the last attempt); it never forgives the guess granted after it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let status = c
                .status(UserStatusRequest {
                    user_id: user.into(),
                })
                .await?
                .into_inner();
            ensure!(
                status.attempts_left <= 3,
                "the wrong guess was not counted: {}",
                status.attempts_left
            );
            if status.attempts_left == 3 {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the success's reset never landed: {} left",
                status.attempts_left
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // §10: a user never seen is OK with state UNKNOWN, not an error.
        let unknown = c
            .status(UserStatusRequest {
                user_id: "nobody-ever".into(),
            })
            .await?
            .into_inner();
        ensure!(
            unknown.state == vault_proto::v1::user_status_reply::State::Unknown as i32,
            "unknown user: {unknown:?}"
        );
        anyhow::Ok(())
    })?;

    // --- vaultctl (the reference client) recovers what the spec client registered
    let key_file = fleet.dir().join("ivy.key");
    let out = fleet.vaultctl_stdin(
        &[
            "recover",
            "--user",
            user,
            "--password-stdin",
            "--key-out",
            key_file.to_str().context("path")?,
        ],
        "spec-only password\n",
    )?;
    ensure!(
        out.status.success(),
        "vaultctl recover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(std::fs::read_to_string(&key_file)?.trim() == hex::encode(k));

    // --- decrypt a backup that vaultctl wrote (§9)
    let plain: Vec<u8> = (0..150_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let (pin, penc) = (fleet.dir().join("b.plain"), fleet.dir().join("b.bkv"));
    std::fs::write(&pin, &plain)?;
    fleet.vaultctl_ok(&[
        "backup",
        "encrypt",
        "--key-file",
        key_file.to_str().context("p")?,
        "--in",
        pin.to_str().context("p")?,
        "--out",
        penc.to_str().context("p")?,
    ])?;
    let file = std::fs::read(&penc)?;
    ensure!(
        decrypt_backup(&k, &file)? == plain,
        "the spec's backup decryption differs"
    );
    for id in 1..=3 {
        fleet.terminate(id, Duration::from_secs(15))?;
    }
    Ok(())
}

/// §9, from the spec: header, HKDF-SHA256 file key, chunks with
/// index ‖ last-flag nonces and the header as associated data.
fn decrypt_backup(k: &[u8; 32], file: &[u8]) -> anyhow::Result<Vec<u8>> {
    ensure!(file.len() >= 44 && &file[..8] == b"BKVBACK1", "bad header");
    let header = &file[..44];
    let chunk = u32::from_be_bytes(header[8..12].try_into()?) as usize;
    let mut file_key = [0u8; 32];
    Hkdf::<sha2::Sha256>::new(Some(&header[12..44]), k)
        .expand(b"bkv/v1/backup-file", &mut file_key)
        .map_err(|_| anyhow::anyhow!("hkdf"))?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&file_key));
    let pieces: Vec<&[u8]> = file[44..].chunks(chunk + 16).collect();
    if pieces.is_empty() {
        bail!("no chunks");
    }
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        nonce[8] = u8::from(i == pieces.len() - 1);
        out.extend(
            cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: piece,
                        aad: header,
                    },
                )
                .map_err(|_| anyhow::anyhow!("chunk {i} does not open"))?,
        );
    }
    Ok(out)
}
