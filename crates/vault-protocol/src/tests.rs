use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

use super::client::{Login, Registration, argon2id};
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

fn register(f: &FleetSecrets, rng: &mut ChaCha20Rng, who: &UserId, password: &[u8]) -> Registered {
    let ksf = argon2id(64, 1, 1).unwrap();
    let k = [9u8; 32];
    let (reg, request) = Registration::start(rng, password).unwrap();
    let response = f.register_start(who, &request).unwrap();
    let out = reg
        .finish(
            rng,
            password,
            &response,
            who,
            f.fleet(),
            f.hpke_public_key(),
            &ksf,
            &k,
        )
        .unwrap();
    assert_eq!(out.server_public_key, f.opaque_public_key());
    let record = f.register_finish(who, &out.sealed).unwrap();
    assert_eq!(record.enc_k, *out.enc_k);
    Registered { record, k }
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
    let ksf = argon2id(64, 1, 1).unwrap();
    let (reg, request) = Registration::start(&mut rng, b"pw").unwrap();
    let response = f.register_start(&carol, &request).unwrap();
    let sealed = reg
        .finish(
            &mut rng,
            b"pw",
            &response,
            &carol,
            f.fleet(),
            f.hpke_public_key(),
            &ksf,
            &[1; 32],
        )
        .unwrap()
        .sealed;
    assert_eq!(
        f.register_finish(&user("dave"), &sealed).err(),
        Some(ProtocolError::Unauthentic("sealed registration"))
    );
    let other = FleetSecrets::new(
        FleetId::new("other").unwrap(),
        &suite::new_server_setup([1; 32]),
        &new_hpke_key([2; 32]),
    )
    .unwrap();
    assert!(other.register_finish(&carol, &sealed).is_err());
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(f.register_finish(&carol, &flipped).is_err());
    assert!(f.register_finish(&carol, &sealed).is_ok());
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
                f.register_start(&eve, bad),
                Err(ProtocolError::Malformed(_))
            ),
            "{}",
            bad.len()
        );
        assert!(matches!(
            f.login_start(&mut rng, &eve, &reg.record, bad),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(f.register_finish(&eve, bad).is_err());
    }
    assert!(StoredRecord::decode(&[2, 0]).is_err());
    assert!(StoredRecord::decode(&[]).is_err());
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
