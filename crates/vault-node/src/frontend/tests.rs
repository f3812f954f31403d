//! The frontend's unit-test helpers.

use rand::SeedableRng;
use vault_protocol::client::{Login, RegisterStartAnswer, Registration, argon2id};
use vault_types::FleetId;

/// A real OPAQUE login state (for the session table's tests).
pub(crate) fn login_state() -> vault_protocol::ServerLoginState {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let fleet = FleetId::new("f").unwrap();
    let secrets = vault_protocol::FleetSecrets::new(
        fleet.clone(),
        &vault_protocol::suite::new_server_setup([1; 32]),
        &vault_protocol::new_hpke_key([2; 32]),
    )
    .unwrap();
    let user = vault_types::UserId::new("u").unwrap();
    let ksf = argon2id(8, 1, 1).unwrap();
    let (reg, request) = Registration::start(&mut rng, b"pw").unwrap();
    let started = secrets
        .register_start(&mut rng, &user, vault_types::Generation(0), &request)
        .unwrap();
    let out = reg
        .finish(
            &mut rng,
            b"pw",
            &RegisterStartAnswer {
                response: &started.response,
                nonce: &started.nonce,
                generation: vault_types::Generation(0),
            },
            &user,
            &fleet,
            secrets.hpke_public_key(),
            &ksf,
            3,
            &[0; 32],
        )
        .unwrap();
    let opened = secrets
        .register_finish(&user, &out.sealed, vault_types::Generation(0))
        .unwrap();
    let (_, ke1) = Login::start(&mut rng, b"pw").unwrap();
    secrets
        .login_start(&mut rng, &user, &opened.record, &ke1)
        .unwrap()
        .1
}
