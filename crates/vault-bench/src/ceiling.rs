//! This machine's single-core ceilings, measured before a run with
//! `--ceiling`: OPAQUE server logins per second (the protocol's CPU cost)
//! and SoftHSM unseals and anti-rollback checkpoint writes per second (in
//! a throwaway token).

use std::time::{Duration, Instant};

use anyhow::Context;
use vault_hsm::softhsm::{self, SoftHsmDir};
use vault_types::{Generation, UserId};

use crate::PASSWORD;

/// This machine's single-core rates, measured before the run.
pub struct Ceiling {
    /// OPAQUE server logins per second on one core.
    pub opaque_logins_per_s: f64,
    /// SoftHSM unseals per second on one core.
    pub hsm_unseals_per_s: f64,
    /// SoftHSM anti-rollback checkpoint writes per second (each a new
    /// token object and the old one destroyed: files in the token dir).
    pub checkpoint_writes_per_s: f64,
}

/// Measures both ceilings (about four seconds), the HSM one in a throwaway
/// token in `dir`.
pub fn measure(dir: &SoftHsmDir) -> anyhow::Result<Ceiling> {
    eprintln!("measuring the single-core OPAQUE server ceiling (2 s)…");
    let opaque_logins_per_s = opaque_ceiling()?;
    eprintln!(
        "measuring single-core SoftHSM unseals and checkpoint writes (2 s each, a throwaway token)…"
    );
    let (hsm_unseals_per_s, checkpoint_writes_per_s) = hsm_ceiling(dir).context("HSM ceiling")?;
    eprintln!(
        "ceiling: {opaque_logins_per_s:.0} OPAQUE logins/s, {hsm_unseals_per_s:.0} unseals/s, {checkpoint_writes_per_s:.0} checkpoint writes/s on one core"
    );
    Ok(Ceiling {
        opaque_logins_per_s,
        hsm_unseals_per_s,
        checkpoint_writes_per_s,
    })
}

/// Single-core OPAQUE server logins per second (login_start + finish),
/// measured in-process for about two seconds.
fn opaque_ceiling() -> anyhow::Result<f64> {
    use rand::rngs::OsRng;
    use vault_protocol::client::{Login, RegisterStartAnswer, Registration, argon2id};
    use vault_protocol::{FleetSecrets, new_hpke_key};
    let fleet = vault_types::FleetId::new("ceiling")?;
    let secrets = FleetSecrets::new(
        fleet.clone(),
        &vault_protocol::suite::new_server_setup([1; 32]),
        &new_hpke_key([2; 32]),
    )?;
    let user = UserId::new("ceiling")?;
    let ksf = argon2id(256, 1, 1)?;
    let (reg, req) = Registration::start(&mut OsRng, PASSWORD)?;
    let started = secrets.register_start(&mut OsRng, &user, vault_types::Generation(0), &req)?;
    let out = reg.finish(
        &mut OsRng,
        PASSWORD,
        &RegisterStartAnswer {
            response: &started.response,
            nonce: &started.nonce,
            generation: vault_types::Generation(0),
        },
        &user,
        &fleet,
        secrets.hpke_public_key(),
        &ksf,
        10,
        &[0; 32],
    )?;
    let record = secrets
        .register_finish(&user, &out.sealed, Generation(0))?
        .record;
    // Client messages are prepared outside the timed loop.
    let mut inputs = Vec::new();
    for _ in 0..64 {
        let (login, ke1) = Login::start(&mut OsRng, PASSWORD)?;
        inputs.push((login, ke1));
    }
    let mut server_time = Duration::ZERO;
    let mut n = 0u64;
    let wall = Instant::now();
    while wall.elapsed() < Duration::from_secs(2) {
        let Some((login, ke1)) = inputs.pop() else {
            for _ in 0..64 {
                inputs.push(Login::start(&mut OsRng, PASSWORD)?);
            }
            continue;
        };
        let t = Instant::now();
        let (ke2, state) = secrets.login_start(&mut OsRng, &user, &record, &ke1)?;
        server_time += t.elapsed();
        let ok = login.finish(&mut OsRng, PASSWORD, &ke2, &user, &fleet, &ksf)?;
        let t = Instant::now();
        state.finish(&mut OsRng, &ok.ke3, &record.enc_k)?;
        server_time += t.elapsed();
        n += 1;
    }
    Ok(n as f64 / server_time.as_secs_f64())
}

/// Single-core SoftHSM unseals per second (AES-256-GCM of a stored
/// record's size under a fresh KEK) and checkpoint writes per second (a
/// node's mark-sized payload), each measured for about two seconds in a
/// throwaway token in `dir`.
fn hsm_ceiling(dir: &SoftHsmDir) -> anyhow::Result<(f64, f64)> {
    use std::os::unix::fs::PermissionsExt;
    use vault_hsm::provision::{InitRequest, init_token};
    use vault_hsm::{Hsm, HsmConfig, PinSource, Pkcs11Hsm, SecretBytes};
    let module = softhsm::find_module()?;
    let pin = |_| {
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        SecretBytes::new(hex::encode(b).into_bytes())
    };
    let (so_pin, user_pin) = (pin(()), pin(()));
    let label = "bench-ceiling";
    init_token(&InitRequest {
        module: &module,
        label,
        so_pin: &so_pin,
        user_pin: &user_pin,
        generate_kek: true,
    })?;
    let pin_file = dir.root().join("bench.pin");
    std::fs::write(&pin_file, user_pin.expose())?;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))?;
    let hsm = Pkcs11Hsm::open(&HsmConfig {
        module: module.clone(),
        token_label: label.to_owned(),
        pin: PinSource::File(pin_file),
        sessions: 1,
    })?;
    let aad = b"vault-bench ceiling";
    let blob = hsm.seal(aad, &[0x5a; RECORD_PLAINTEXT_LEN])?;
    let mut n = 0u64;
    let wall = Instant::now();
    while wall.elapsed() < Duration::from_secs(2) {
        hsm.unseal(aad, &blob)?;
        n += 1;
    }
    let unseals = n as f64 / wall.elapsed().as_secs_f64();
    let store = vault_hsm::CheckpointStore::open(&module, label, &user_pin)?;
    let mut payload = [0u8; CHECKPOINT_PAYLOAD_LEN];
    let mut n = 0u64;
    let wall = Instant::now();
    while wall.elapsed() < Duration::from_secs(2) {
        payload[..8].copy_from_slice(&n.to_be_bytes());
        store.write(&payload)?;
        n += 1;
    }
    Ok((unseals, n as f64 / wall.elapsed().as_secs_f64()))
}

/// About the size of an encoded checkpoint mark (vote, last log id,
/// applied log id and state digest).
const CHECKPOINT_PAYLOAD_LEN: usize = 96;

/// About the plaintext size of a stored user record (what RecoverStart
/// unseals).
const RECORD_PLAINTEXT_LEN: usize = 288;
