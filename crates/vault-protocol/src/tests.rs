use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

use super::client::{Login, RegisterStartAnswer, Registration, RegistrationOutput, argon2id};
use super::*;
use crate::suite;
use vault_types::{FleetId, Generation, UserId};

fn fleet() -> FleetSecrets {
    let setup = suite::new_server_setup([1; 32]);
    let hpke = new_hpke_key([2; 32]);
    FleetSecrets::new(FleetId::new("f").unwrap(), &setup, &hpke).unwrap()
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

struct Registered {
    record: StoredRecord,
    k: [u8; 32],
}

/// The app's half of a registration at `generation` with `max` attempts,
/// answering `RegisterStart` with `started` (the nonce may be swapped by
/// the caller).
fn app_finish(
    f: &FleetSecrets,
    rng: &mut ChaCha20Rng,
    who: &UserId,
    password: &[u8],
    nonce: &[u8],
    generation: Generation,
) -> RegistrationOutput {
    let ksf = argon2id(64, 1, 1).unwrap();
    let (reg, request) = Registration::start(rng, password).unwrap();
    let started = f.register_start(rng, who, generation, &request).unwrap();
    let nonce = if nonce.is_empty() {
        &started.nonce[..]
    } else {
        nonce
    };
    reg.finish(
        rng,
        password,
        &RegisterStartAnswer {
            response: &started.response,
            nonce,
            generation,
        },
        who,
        f.fleet(),
        f.hpke_public_key(),
        &ksf,
        7,
        &[9; 32],
    )
    .unwrap()
}

fn register(f: &FleetSecrets, rng: &mut ChaCha20Rng, who: &UserId, password: &[u8]) -> Registered {
    let out = app_finish(f, rng, who, password, &[], Generation(0));
    assert_eq!(out.server_public_key, f.opaque_public_key());
    let opened = f.register_finish(who, &out.sealed, Generation(0)).unwrap();
    assert_eq!(opened.record.enc_k, *out.enc_k);
    assert_eq!(opened.expected_generation, Generation(0));
    assert_eq!(opened.max_attempts, 7);
    Registered {
        record: opened.record,
        k: [9; 32],
    }
}

#[test]
fn right_password_recovers_exactly_k() {
    let f = fleet();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let alice = user("alice");
    let reg = register(&f, &mut rng, &alice, b"correct horse");
    // The record survives its encoding (what the HSM seals).
    let record = StoredRecord::decode(&reg.record.encode()).unwrap();

    let ksf = argon2id(64, 1, 1).unwrap();
    let (login, ke1) = Login::start(&mut rng, b"correct horse").unwrap();
    let (ke2, state) = f.login_start(&mut rng, &alice, &record, &ke1).unwrap();
    let ok = login
        .finish(&mut rng, b"correct horse", &ke2, &alice, f.fleet(), &ksf)
        .unwrap();
    let answer = state.finish(&mut rng, &ok.ke3, &record.enc_k).unwrap();
    assert_eq!(*ok.open(&answer, &alice).unwrap(), reg.k);
    // The answer is not enc_K, and enc_K does not contain K.
    assert_ne!(answer, record.enc_k);
    assert!(!record.enc_k.windows(32).any(|w| w == reg.k));
}

#[test]
fn a_wrong_password_fails_at_ke2_and_a_forged_ke3_at_the_server() {
    let f = fleet();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let bob = user("bob");
    let reg = register(&f, &mut rng, &bob, b"right");
    let ksf = argon2id(64, 1, 1).unwrap();
    let (login, ke1) = Login::start(&mut rng, b"wrong").unwrap();
    let (ke2, state) = f.login_start(&mut rng, &bob, &reg.record, &ke1).unwrap();
    assert_eq!(
        login
            .finish(&mut rng, b"wrong", &ke2, &bob, f.fleet(), &ksf)
            .err(),
        Some(ProtocolError::WrongPassword)
    );
    // A KE3 not made with the password is refused by the server.
    assert_eq!(
        state.finish(&mut rng, &[7u8; 64], &reg.record.enc_k).err(),
        Some(ProtocolError::WrongPassword)
    );
    // Another user's identity does not fit the record either.
    let (login, ke1) = Login::start(&mut rng, b"right").unwrap();
    let (ke2, _) = f
        .login_start(&mut rng, &user("mallory"), &reg.record, &ke1)
        .unwrap();
    assert!(
        login
            .finish(&mut rng, b"right", &ke2, &bob, f.fleet(), &ksf)
            .is_err()
    );
}

#[test]
fn a_sealed_registration_opens_only_for_its_user_and_fleet() {
    let f = fleet();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let carol = user("carol");
    let sealed = app_finish(&f, &mut rng, &carol, b"pw", &[], Generation(0)).sealed;
    assert_eq!(
        f.register_finish(&user("dave"), &sealed, Generation(0))
            .err(),
        Some(ProtocolError::Unauthentic("sealed registration"))
    );
    let other = FleetSecrets::new(
        FleetId::new("other").unwrap(),
        &suite::new_server_setup([1; 32]),
        &new_hpke_key([2; 32]),
    )
    .unwrap();
    assert!(
        other
            .register_finish(&carol, &sealed, Generation(0))
            .is_err()
    );
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(f.register_finish(&carol, &flipped, Generation(0)).is_err());
    assert!(f.register_finish(&carol, &sealed, Generation(0)).is_ok());
}

#[test]
fn malformed_and_oversized_inputs_are_refused() {
    let f = fleet();
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let eve = user("eve");
    let reg = register(&f, &mut rng, &eve, b"pw");
    for bad in [&[][..], &[0u8; 5][..], &[0xffu8; 96][..], &[1u8; 4096][..]] {
        assert!(
            matches!(
                f.register_start(&mut rng, &eve, Generation(0), bad),
                Err(ProtocolError::Malformed(_))
            ),
            "{}",
            bad.len()
        );
        assert!(matches!(
            f.login_start(&mut rng, &eve, &reg.record, bad),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(f.register_finish(&eve, bad, Generation(0)).is_err());
    }
    assert!(StoredRecord::decode(&[2, 0]).is_err());
    assert!(StoredRecord::decode(&[]).is_err());
    // KE1 and KE3 have one length each.
    assert!(check_ke1(&[0u8; 95]).is_err());
    assert!(check_ke3(&[0u8; 63]).is_err() && check_ke3(&[0u8; 65]).is_err());
    assert!(check_ke3(&[0u8; 64]).is_ok());
}

#[test]
fn register_start_evaluates_under_a_key_no_record_has() {
    // Protocol v1's oracle: RegisterStart and a login evaluated the same
    // blinded element under the same OPRF key (credential identifier =
    // user id). Now each registration has its own.
    let f = fleet();
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let alice = user("alice");
    let reg = register(&f, &mut rng, &alice, b"pw");
    let (_, blinded) = Registration::start(&mut rng, b"guess").unwrap();
    let (_, mut ke1) = Login::start(&mut rng, b"anything").unwrap();
    ke1[..32].copy_from_slice(&blinded);
    let (ke2, _) = f.login_start(&mut rng, &alice, &reg.record, &ke1).unwrap();
    let mut evaluations = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let r = f
            .register_start(&mut rng, &alice, Generation(1), &blinded)
            .unwrap();
        assert_ne!(r.response[..32], ke2[..32], "the live record's evaluation");
        evaluations.insert(r.response[..32].to_vec());
    }
    assert_eq!(evaluations.len(), 10, "every RegisterStart has a fresh key");
}

#[test]
fn a_response_made_under_another_oprf_key_is_refused() {
    // A relay answers the app's request with its own evaluation (another
    // server setup) and the fleet's public key.
    let f = fleet();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let alice = user("alice");
    let relay = FleetSecrets::new(
        f.fleet().clone(),
        &suite::new_server_setup([0xaa; 32]),
        &new_hpke_key([2; 32]),
    )
    .unwrap();
    let ksf = argon2id(64, 1, 1).unwrap();
    let (reg, request) = Registration::start(&mut rng, b"pw").unwrap();
    let genuine = f
        .register_start(&mut rng, &alice, Generation(0), &request)
        .unwrap();
    let forged = relay
        .register_start(&mut rng, &alice, Generation(0), &request)
        .unwrap();
    let mut response = forged.response[..32].to_vec();
    response.extend_from_slice(f.opaque_public_key());
    let out = reg
        .finish(
            &mut rng,
            b"pw",
            &RegisterStartAnswer {
                response: &response,
                nonce: &genuine.nonce,
                generation: Generation(0),
            },
            &alice,
            f.fleet(),
            f.hpke_public_key(),
            &ksf,
            3,
            &[9; 32],
        )
        .unwrap();
    assert_eq!(
        out.server_public_key,
        f.opaque_public_key(),
        "the app cannot tell"
    );
    assert_eq!(
        f.register_finish(&alice, &out.sealed, Generation(0)).err(),
        Some(ProtocolError::Unauthentic("registration response"))
    );
}

#[test]
fn a_registration_nonce_is_only_good_for_its_user_and_generation() {
    let f = fleet();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (alice, bob) = (user("alice"), user("bob"));
    let ok = app_finish(&f, &mut rng, &alice, b"pw", &[], Generation(3));
    // As issued: opens.
    assert_eq!(
        f.register_finish(&alice, &ok.sealed, Generation(0))
            .unwrap()
            .expected_generation,
        Generation(3)
    );
    let (_, request) = Registration::start(&mut rng, b"pw").unwrap();
    let issued = f
        .register_start(&mut rng, &alice, Generation(3), &request)
        .unwrap()
        .nonce;
    // At another generation, for another user, or with a forged tag: no.
    let later = app_finish(&f, &mut rng, &alice, b"pw", &issued, Generation(4));
    let other = app_finish(&f, &mut rng, &bob, b"pw", &issued, Generation(3));
    let mut forged = issued;
    forged[31] ^= 1;
    let forged = app_finish(&f, &mut rng, &alice, b"pw", &forged, Generation(3));
    for (who, out) in [(&alice, later), (&bob, other), (&alice, forged)] {
        assert_eq!(
            f.register_finish(who, &out.sealed, Generation(0)).err(),
            Some(ProtocolError::Unauthentic("registration nonce"))
        );
    }
    // A nonce issued for this user and generation, but not the one the
    // response was made under, does not fit the response.
    let swapped = app_finish(&f, &mut rng, &alice, b"pw", &issued, Generation(3));
    assert_eq!(
        f.register_finish(&alice, &swapped.sealed, Generation(0))
            .err(),
        Some(ProtocolError::Unauthentic("registration response"))
    );
    // Once the user is past generation 3, a payload for it is stale before
    // anything is evaluated: the answer does not say whether its
    // evaluation fits the (maybe live) key.
    for out in [&ok, &swapped] {
        assert_eq!(
            f.register_finish(&alice, &out.sealed, Generation(4)).err(),
            Some(ProtocolError::Stale)
        );
    }
    assert!(f.register_finish(&alice, &ok.sealed, Generation(3)).is_ok());
    // Another fleet's nonces are not this fleet's.
    let other_fleet = FleetSecrets::new(
        f.fleet().clone(),
        &suite::new_server_setup([3; 32]),
        &new_hpke_key([2; 32]),
    )
    .unwrap();
    let theirs = app_finish(&other_fleet, &mut rng, &alice, b"pw", &[], Generation(0));
    assert!(
        f.register_finish(&alice, &theirs.sealed, Generation(0))
            .is_err()
    );
}

#[test]
fn record_aad_binds_fleet_user_and_generation() {
    let (f1, f2) = (FleetId::new("a").unwrap(), FleetId::new("b").unwrap());
    let base = record_aad(&f1, &user("u"), Generation(1));
    assert_ne!(base, record_aad(&f2, &user("u"), Generation(1)));
    assert_ne!(base, record_aad(&f1, &user("v"), Generation(1)));
    assert_ne!(base, record_aad(&f1, &user("u"), Generation(2)));
    assert_ne!(hpke_key_aad(&f1), suite::server_setup_aad(&f1));
}

#[test]
fn debug_output_shows_no_secrets() {
    let f = fleet();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let reg = register(&f, &mut rng, &user("x"), b"pw");
    let shown = format!("{f:?} {:?}", reg.record);
    assert_eq!(
        shown,
        "FleetSecrets { fleet: \"f\", .. } StoredRecord { .. }"
    );
}
