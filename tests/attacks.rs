//! The attack suite: a malicious frontend (it holds a frontend certificate,
//! relays and replays anything, calls any frontend method with any bytes)
//! against a real fleet (node processes, RocksDB, SoftHSM tokens, mutual
//! TLS). Each test performs one adversary move and states the measure it
//! checks: "password guesses testable ≤ attempts committed", or "no state
//! change without the right credential".
//!
//! The attacker here never runs our client library: it speaks the frontend
//! API with the generated protobuf types and does the app's cryptography
//! with `vault_protocol::client` only where it plays an honest app whose
//! messages it then abuses.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use hkdf::Hkdf;
use prost::Message;
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::Sha512;
use tonic::transport::Channel;
use vault_proto::v1::error_detail::Kind;
use vault_proto::v1::frontend_client::FrontendClient;
use vault_proto::v1::user_status_reply::State;
use vault_proto::v1::{
    DeleteRequest, ErrorDetail, RecoverFinishRequest, RecoverStartReply, RecoverStartRequest,
    RegisterFinishRequest, RegisterStartRequest, UserStatusReply, UserStatusRequest,
};
use vault_protocol::client::{Login, RegisterStartAnswer, Registration, argon2id};
use vault_testkit::{FleetSpec, Template, TestFleet};
use vault_types::{FleetId, Generation, UserId};

type TestResult = anyhow::Result<()>;

fn main() -> ExitCode {
    let tests: Vec<(&str, vault_testkit::FleetTest)> = vec![
        (
            "register_start_is_not_an_oracle_for_the_live_records_oprf",
            register_start_is_not_an_oracle_for_the_live_records_oprf,
        ),
        (
            "a_replayed_register_finish_does_not_undo_a_lockout",
            a_replayed_register_finish_does_not_undo_a_lockout,
        ),
        (
            "a_replayed_register_finish_does_not_undo_a_delete",
            a_replayed_register_finish_does_not_undo_a_delete,
        ),
        (
            "a_replayed_register_finish_does_not_bring_back_an_old_password",
            a_replayed_register_finish_does_not_bring_back_an_old_password,
        ),
        (
            "max_attempts_tampered_in_transit_is_not_what_the_fleet_stores",
            max_attempts_tampered_in_transit_is_not_what_the_fleet_stores,
        ),
        (
            "replayed_recover_starts_open_one_session",
            replayed_recover_starts_open_one_session,
        ),
        (
            "a_full_session_table_refuses_before_committing_an_attempt",
            a_full_session_table_refuses_before_committing_an_attempt,
        ),
        (
            "a_replayed_recover_start_gives_no_ke2_under_a_new_registration",
            a_replayed_recover_start_gives_no_ke2_under_a_new_registration,
        ),
        (
            "a_retried_register_finish_gets_its_first_answer",
            a_retried_register_finish_gets_its_first_answer,
        ),
        (
            "a_ke3_for_another_users_session_changes_nothing",
            a_ke3_for_another_users_session_changes_nothing,
        ),
        (
            "wrong_ke3s_count_and_the_last_one_locks",
            wrong_ke3s_count_and_the_last_one_locks,
        ),
        (
            "a_replay_past_the_session_ttl_opens_no_session",
            a_replay_past_the_session_ttl_opens_no_session,
        ),
        (
            "a_success_forgives_no_guess_granted_after_it",
            a_success_forgives_no_guess_granted_after_it,
        ),
        (
            "malformed_frontend_calls_are_invalid_arguments_with_a_detail",
            malformed_frontend_calls_are_invalid_arguments_with_a_detail,
        ),
        (
            "a_wrong_length_ke3_is_refused_and_leaves_the_session_intact",
            a_wrong_length_ke3_is_refused_and_leaves_the_session_intact,
        ),
        (
            "malformed_sealed_registrations_are_refused_and_store_nothing",
            malformed_sealed_registrations_are_refused_and_store_nothing,
        ),
        (
            "a_captured_registration_nonce_cannot_be_registered_again",
            a_captured_registration_nonce_cannot_be_registered_again,
        ),
        (
            "a_stale_registration_is_refused_before_its_evaluation_is_checked",
            a_stale_registration_is_refused_before_its_evaluation_is_checked,
        ),
        (
            "an_evaluation_swapped_at_registration_gives_no_offline_test",
            an_evaluation_swapped_at_registration_gives_no_offline_test,
        ),
        (
            "a_withheld_registration_does_not_undo_a_later_lockout_or_delete",
            a_withheld_registration_does_not_undo_a_later_lockout_or_delete,
        ),
        (
            "idle_connections_are_closed_and_capped",
            idle_connections_are_closed_and_capped,
        ),
        (
            "handshake_floods_from_one_address_are_rate_limited",
            handshake_floods_from_one_address_are_rate_limited,
        ),
        (
            "unknown_methods_share_one_metrics_label",
            unknown_methods_share_one_metrics_label,
        ),
    ];
    vault_testkit::run_fleet_tests(3, tests)
}

const CONVERGE: Duration = Duration::from_secs(30);
/// The app's Argon2id profile in these tests (public: an attacker knows it).
const KSF: (u32, u32, u32) = (256, 1, 1);

fn rt() -> tokio::runtime::Runtime {
    vault_testkit::client::runtime()
}

fn started_with(template: &Template, spec: &FleetSpec) -> anyhow::Result<TestFleet> {
    let mut fleet = TestFleet::create(template, spec)?;
    fleet.start_all(1..=3)?;
    fleet.init()?;
    fleet.wait_converged(CONVERGE)?;
    Ok(fleet)
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

fn new_id() -> Vec<u8> {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    id.to_vec()
}

/// The error detail of a refusal, from the `google.rpc.Status` the node
/// puts in `grpc-status-details-bin` (or the bare `ErrorDetail` of
/// protocol v1).
fn detail(status: &tonic::Status) -> Option<ErrorDetail> {
    vault_proto::errors::detail(status)
}

fn kind(status: &tonic::Status) -> Kind {
    detail(status)
        .and_then(|d| Kind::try_from(d.kind).ok())
        .unwrap_or(Kind::Unspecified)
}

/// Runs one test body on a fresh fleet and a runtime.
fn on_fleet(
    template: &Template,
    body: impl FnOnce(&TestFleet, &tokio::runtime::Runtime) -> TestResult,
) -> TestResult {
    on_fleet_with(template, &[], body)
}

/// [`on_fleet`] with `[limits]` lines in the fleet file.
fn on_fleet_with(
    template: &Template,
    limits: &[&str],
    body: impl FnOnce(&TestFleet, &tokio::runtime::Runtime) -> TestResult,
) -> TestResult {
    let spec = FleetSpec {
        limits: limits.iter().map(|l| (*l).to_owned()).collect(),
        ..FleetSpec::voters(3)
    };
    let fleet = started_with(template, &spec)?;
    let rt = rt();
    let result = body(&fleet, &rt);
    fleet.with_logs(result)
}

async fn status(c: &mut FrontendClient<Channel>, who: &UserId) -> anyhow::Result<UserStatusReply> {
    Ok(c.status(UserStatusRequest {
        user_id: who.as_str().into(),
    })
    .await?
    .into_inner())
}

/// An honest app, whose messages the attacking frontend relays and keeps.
struct App {
    fleet: FleetId,
    ksf: argon2::Argon2<'static>,
}

/// What a frontend keeps of a registration it relayed.
struct Relayed {
    /// The app's `RegistrationRequest` (the frontend relayed it).
    request: Vec<u8>,
    start: vault_proto::v1::RegisterStartReply,
    finish: RegisterFinishRequest,
    /// What the app sealed (only a test that plays the app has these).
    upload: Vec<u8>,
    enc_k: Vec<u8>,
}

impl App {
    fn new(fleet: &TestFleet) -> App {
        App {
            fleet: fleet.fleet().fleet_id.clone(),
            ksf: argon2id(KSF.0, KSF.1, KSF.2).expect("argon2"),
        }
    }

    /// Registers `who` with `password` and `max_attempts`; the frontend
    /// relays honestly and keeps the `RegisterFinish` request.
    async fn register(
        &self,
        c: &mut FrontendClient<Channel>,
        who: &UserId,
        password: &[u8],
        max_attempts: u32,
    ) -> anyhow::Result<Relayed> {
        let (state, request) = Registration::start(&mut OsRng, password)?;
        let start = c
            .register_start(RegisterStartRequest {
                user_id: who.as_str().into(),
                registration_request: request.clone(),
            })
            .await?
            .into_inner();
        let keys = start.fleet.clone().context("fleet keys")?;
        let out = state.finish(
            &mut OsRng,
            password,
            &answer(&start),
            who,
            &self.fleet,
            &keys.hpke_public_key,
            &self.ksf,
            max_attempts,
            &[7; 32],
        )?;
        let finish = RegisterFinishRequest {
            user_id: who.as_str().into(),
            sealed_registration: out.sealed.clone(),
            request_id: new_id(),
            ..Default::default()
        };
        c.register_finish(finish.clone()).await?;
        Ok(Relayed {
            request,
            start,
            finish,
            upload: out.upload.to_vec(),
            enc_k: out.enc_k.to_vec(),
        })
    }

    /// A whole recovery; `Ok(true)` when K came back, `Ok(false)` when the
    /// password was wrong (KE2 did not open; the attempt is spent).
    async fn recover(
        &self,
        c: &mut FrontendClient<Channel>,
        who: &UserId,
        password: &[u8],
    ) -> anyhow::Result<bool> {
        let (login, ke1) = Login::start(&mut OsRng, password)?;
        let start = c
            .recover_start(RecoverStartRequest {
                user_id: who.as_str().into(),
                ke1,
                request_id: new_id(),
            })
            .await?
            .into_inner();
        let Ok(ok) = login.finish(
            &mut OsRng,
            password,
            &start.ke2,
            who,
            &self.fleet,
            &self.ksf,
        ) else {
            return Ok(false);
        };
        let fin = c
            .recover_finish(RecoverFinishRequest {
                session_id: start.session_id,
                ke3: ok.ke3.clone(),
            })
            .await?
            .into_inner();
        ensure!(*ok.open(&fin.sealed_key, who)? == [7; 32], "another K");
        Ok(true)
    }
}

/// What the app passes on from `RegisterStart`'s reply.
fn answer(r: &vault_proto::v1::RegisterStartReply) -> RegisterStartAnswer<'_> {
    RegisterStartAnswer {
        response: &r.registration_response,
        nonce: &r.registration_nonce,
        generation: Generation(r.generation),
    }
}

/// A KE1 whose blinded element is `blinded` (32 bytes) and whose nonce and
/// ephemeral key come from a real KE1: what a frontend can build.
fn ke1_with_blinded_element(blinded: &[u8]) -> Vec<u8> {
    let (_, mut ke1) = Login::start(&mut OsRng, b"anything").expect("login start");
    ke1[..32].copy_from_slice(&blinded[..32]);
    ke1
}

/// The offline test of one password guess against a KE2, given an OPRF
/// evaluation of the guess under the record's key obtained elsewhere: the
/// masking key of a registration finished with that evaluation unmasks
/// KE2's `masked_response` to the fleet's public key only for the right
/// password (RFC 9807 §6.3.2.3, the credential response pad).
fn guess_unmasks(upload: &[u8], ke2: &[u8], fleet_pk: &[u8]) -> bool {
    // RegistrationUpload = client_public_key (32) ‖ masking_key (64) ‖ envelope.
    let masking_key = &upload[32..96];
    // KE2 = evaluated (32) ‖ masking_nonce (32) ‖ masked_response (128) ‖ …
    let nonce = &ke2[32..64];
    let masked = &ke2[64..192];
    let hk = Hkdf::<Sha512>::from_prk(masking_key).expect("64-byte PRK");
    let mut info = nonce.to_vec();
    info.extend_from_slice(b"CredentialResponsePad");
    let mut pad = [0u8; 128];
    hk.expand(&info, &mut pad).expect("expand");
    let pk: Vec<u8> = masked[..32]
        .iter()
        .zip(&pad[..32])
        .map(|(a, b)| a ^ b)
        .collect();
    pk == fleet_pk
}

/// Measure: password guesses testable ≤ attempts committed. One KE2 (one
/// committed attempt) plus any number of free `RegisterStart` calls must
/// not let a frontend test a dictionary offline.
fn register_start_is_not_an_oracle_for_the_live_records_oprf(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            app.register(&mut c, &alice, b"hunter2 is right", 5).await?;

            // Same blinded element to RegisterStart and RecoverStart.
            let (_, probe) = Registration::start(&mut OsRng, b"a guess")?;
            let reg = c
                .register_start(RegisterStartRequest {
                    user_id: alice.as_str().into(),
                    registration_request: probe.clone(),
                })
                .await?
                .into_inner();
            let fleet_pk = reg.fleet.clone().context("fleet keys")?.opaque_public_key;
            let start = c
                .recover_start(RecoverStartRequest {
                    user_id: alice.as_str().into(),
                    ke1: ke1_with_blinded_element(&probe),
                    request_id: new_id(),
                })
                .await?
                .into_inner();
            let same_evaluation = reg.registration_response[..32] == start.ke2[..32];
            // The whole offline attack with that one KE2.
            let ksf = argon2id(KSF.0, KSF.1, KSF.2)?;
            let dictionary: [&[u8]; 6] = [
                b"123456",
                b"password",
                b"letmein",
                b"hunter2 is right",
                b"qwerty",
                b"dragon",
            ];
            let mut confirmed = Vec::new();
            for guess in dictionary {
                let (state, request) = Registration::start(&mut OsRng, guess)?;
                let answer = c
                    .register_start(RegisterStartRequest {
                        user_id: alice.as_str().into(),
                        registration_request: request,
                    })
                    .await?
                    .into_inner();
                let keys = answer.fleet.clone().context("fleet keys")?;
                let out = state.finish(
                    &mut OsRng,
                    guess,
                    &self::answer(&answer),
                    &alice,
                    &app.fleet,
                    &keys.hpke_public_key,
                    &ksf,
                    5,
                    &[0; 32],
                )?;
                if guess_unmasks(&out.upload, &start.ke2, &fleet_pk) {
                    confirmed.push(String::from_utf8_lossy(guess).into_owned());
                }
            }
            let s = status(&mut c, &alice).await?;
            ensure!(
                !same_evaluation && confirmed.is_empty(),
                "RegisterStart evaluated the blinded element under the live record's OPRF key: {same_evaluation}; \
                 {} dictionary words tested offline with {} attempt(s) committed, confirmed {confirmed:?}",
                dictionary.len(),
                s.max_attempts - s.attempts_left
            );
            Ok(())
        })
    })
}

/// Locks `who` out with wrong passwords.
async fn lock_out(
    app: &App,
    c: &mut FrontendClient<Channel>,
    who: &UserId,
    attempts: u32,
) -> TestResult {
    for _ in 0..attempts {
        ensure!(!app.recover(c, who, b"wrong password").await?);
    }
    // The app stopped at KE2 each time (the password was wrong), so the
    // last attempt is spent but unfinished: the next RecoverStart finds
    // the budget used up and locks the record.
    let next = recover_start(c, who, &Login::start(&mut OsRng, b"x")?.1, &new_id()).await;
    ensure!(
        matches!(&next, Err(s) if kind(s) == Kind::Locked),
        "after the budget: {next:?}"
    );
    let s = status(c, who).await?;
    ensure!(s.state == State::Locked as i32, "not locked: {s:?}");
    Ok(())
}

/// Replays a relayed `RegisterFinish` under a fresh request id (a frontend
/// can choose any).
async fn replay(
    c: &mut FrontendClient<Channel>,
    relayed: &Relayed,
) -> Result<tonic::Response<vault_proto::v1::RegisterFinishReply>, tonic::Status> {
    let mut again = relayed.finish.clone();
    again.request_id = new_id();
    c.register_finish(again).await
}

/// Measure: no state change without the right credential. After a
/// lockout, a replayed registration must not bring the record back.
fn a_replayed_register_finish_does_not_undo_a_lockout(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            let relayed = app.register(&mut c, &alice, b"right one", 2).await?;
            lock_out(&app, &mut c, &alice, 2).await?;
            let replayed = replay(&mut c, &relayed).await;
            let s = status(&mut c, &alice).await?;
            ensure!(
                replayed.is_err() && s.state == State::Locked as i32,
                "the replayed registration was accepted ({:?}) and the user is {s:?}",
                replayed.map(|r| r.into_inner())
            );
            ensure!(
                c.recover_start(RecoverStartRequest {
                    user_id: alice.as_str().into(),
                    ke1: Login::start(&mut OsRng, b"right one")?.1,
                    request_id: new_id(),
                })
                .await
                .is_err(),
                "a KE2 for a locked user"
            );
            Ok(())
        })
    })
}

/// Measure: no state change without the right credential. After a delete,
/// a replayed registration must not bring the record back.
fn a_replayed_register_finish_does_not_undo_a_delete(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(2).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            let relayed = app.register(&mut c, &alice, b"right one", 3).await?;
            c.delete(DeleteRequest {
                user_id: alice.as_str().into(),
                request_id: new_id(),
            })
            .await?;
            let replayed = replay(&mut c, &relayed).await;
            let s = status(&mut c, &alice).await?;
            ensure!(
                replayed.is_err() && s.state == State::Deleted as i32,
                "the replayed registration was accepted ({:?}) and the user is {s:?}",
                replayed.map(|r| r.into_inner())
            );
            Ok(())
        })
    })
}

/// Measure: no state change without the right credential. After a
/// password change, a replayed old registration must not bring back the
/// old password (and its K), nor reset the new record's budget.
fn a_replayed_register_finish_does_not_bring_back_an_old_password(
    template: &Template,
) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(3).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            let old = app.register(&mut c, &alice, b"old password", 3).await?;
            app.register(&mut c, &alice, b"new password", 3).await?;
            let before = status(&mut c, &alice).await?;
            let replayed = replay(&mut c, &old).await;
            let after = status(&mut c, &alice).await?;
            ensure!(
                replayed.is_err() && after.generation == before.generation,
                "the old registration replayed: {:?}, status {after:?}",
                replayed.map(|r| r.into_inner())
            );
            ensure!(
                !app.recover(&mut c, &alice, b"old password").await?,
                "the old password recovers"
            );
            ensure!(app.recover(&mut c, &alice, b"new password").await?);
            Ok(())
        })
    })
}

/// Measure: no state change without the right credential. The app asks
/// for 3 attempts; a frontend that changes that in transit (the field
/// protocol v1 had outside the seal, or the sealed bytes) must not get any
/// other budget stored.
fn max_attempts_tampered_in_transit_is_not_what_the_fleet_stores(
    template: &Template,
) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            let (state, request) = Registration::start(&mut OsRng, b"pw")?;
            let start = c
                .register_start(RegisterStartRequest {
                    user_id: alice.as_str().into(),
                    registration_request: request,
                })
                .await?
                .into_inner();
            let keys = start.fleet.clone().context("fleet keys")?;
            let out = state.finish(
                &mut OsRng,
                b"pw",
                &answer(&start),
                &alice,
                &app.fleet,
                &keys.hpke_public_key,
                &app.ksf,
                3,
                &[7; 32],
            )?;
            // The frontend asks for 10 in the v1 field...
            let mut outside = RegisterFinishRequest {
                user_id: alice.as_str().into(),
                sealed_registration: out.sealed.clone(),
                request_id: new_id(),
                ..Default::default()
            };
            #[expect(deprecated, reason = "the v1 field is the attack")]
            {
                outside.max_attempts = 10;
            }
            let tampered = c.register_finish(outside).await;
            let s = status(&mut c, &alice).await?;
            ensure!(
                s.state != State::Active as i32 || s.max_attempts == 3,
                "the fleet stored the frontend's budget: {s:?} (call: {:?})",
                tampered.map(|r| r.into_inner())
            );
            // ...and flips bits of the sealed payload (anywhere).
            for at in [40, 200, out.sealed.len() - 20] {
                let mut flipped = out.sealed.clone();
                flipped[at] ^= 0x01;
                let r = c
                    .register_finish(RegisterFinishRequest {
                        user_id: alice.as_str().into(),
                        sealed_registration: flipped,
                        request_id: new_id(),
                        ..Default::default()
                    })
                    .await;
                ensure!(r.is_err(), "a payload flipped at byte {at} registered");
            }
            ensure!(status(&mut c, &alice).await?.state == State::Unknown as i32);
            // The app's own request, relayed as it is, stores 3.
            c.register_finish(RegisterFinishRequest {
                user_id: alice.as_str().into(),
                sealed_registration: out.sealed.clone(),
                request_id: new_id(),
                ..Default::default()
            })
            .await?;
            let s = status(&mut c, &alice).await?;
            ensure!(s.max_attempts == 3 && s.attempts_left == 3, "{s:?}");
            Ok(())
        })
    })
}

/// The OPAQUE `RegistrationResponse` a frontend makes for blinded element
/// `blinded` under an OPRF key of its own (its own server setup), with the
/// fleet's public key in place of its own: what it relays instead of the
/// fleet's answer.
fn forged_response(blinded: &[u8], fleet_pk: &[u8]) -> Vec<u8> {
    use opaque_ke::{RegistrationRequest, ServerRegistration, ServerSetup};
    type Suite = vault_protocol::suite::Suite;
    let setup =
        ServerSetup::<Suite>::deserialize(&vault_protocol::suite::new_server_setup([0xaa; 32]))
            .expect("the frontend's own setup");
    let request = RegistrationRequest::<Suite>::deserialize(blinded).expect("request");
    let evaluated = ServerRegistration::<Suite>::start(&setup, request, b"frontend")
        .expect("evaluate")
        .message
        .serialize();
    let mut forged = evaluated[..32].to_vec();
    forged.extend_from_slice(fleet_pk);
    forged
}

/// Measure: password guesses testable ≤ attempts committed. A relaying
/// frontend answers the app's registration request with an OPRF evaluation
/// under a key of its own (keeping the fleet's public key, which is all the
/// app can check). If the fleet stored the record made from it, one KE2
/// (one committed attempt) would let the frontend test every password
/// offline: it can evaluate any guess itself, and KE2's masked response
/// depends on the record alone.
fn an_evaluation_swapped_at_registration_gives_no_offline_test(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            let password: &[u8] = b"hunter2 is right";
            // The app's registration, relayed with a forged evaluation.
            let (state, request) = Registration::start(&mut OsRng, password)?;
            let mut start = c
                .register_start(RegisterStartRequest {
                    user_id: alice.as_str().into(),
                    registration_request: request.clone(),
                })
                .await?
                .into_inner();
            let keys = start.fleet.clone().context("fleet keys")?;
            start.registration_response = forged_response(&request, &keys.opaque_public_key);
            let out = state.finish(
                &mut OsRng,
                password,
                &answer(&start),
                &alice,
                &app.fleet,
                &keys.hpke_public_key,
                &app.ksf,
                5,
                &[7; 32],
            )?;
            let registered = c
                .register_finish(RegisterFinishRequest {
                    user_id: alice.as_str().into(),
                    sealed_registration: out.sealed.clone(),
                    request_id: new_id(),
                    ..Default::default()
                })
                .await;
            if registered.is_err() {
                // Refused: nothing stored, nothing to attack.
                let s = status(&mut c, &alice).await?;
                ensure!(s.state == State::Unknown as i32, "{s:?}");
                return Ok(());
            }
            // One KE2, one committed attempt.
            let (_, ke1) = Login::start(&mut OsRng, b"anything")?;
            let ke2 = recover_start(&mut c, &alice, &ke1, &new_id()).await?.ke2;
            let dictionary: [&[u8]; 5] = [b"123456", b"letmein", b"hunter2 is right", b"qwerty", b"dragon"];
            let mut confirmed = Vec::new();
            for guess in dictionary {
                let (state, request) = Registration::start(&mut OsRng, guess)?;
                let forged = forged_response(&request, &keys.opaque_public_key);
                let out = state.finish(
                    &mut OsRng,
                    guess,
                    &RegisterStartAnswer {
                        response: &forged,
                        nonce: &[0; 32],
                        generation: Generation(0),
                    },
                    &alice,
                    &app.fleet,
                    &keys.hpke_public_key,
                    &app.ksf,
                    5,
                    &[0; 32],
                )?;
                if guess_unmasks(&out.upload, &ke2, &keys.opaque_public_key) {
                    confirmed.push(String::from_utf8_lossy(guess).into_owned());
                }
            }
            ensure!(
                confirmed.is_empty(),
                "the fleet stored a record built on the frontend's evaluation; with 1 attempt committed, {} words tested offline, confirmed {confirmed:?}",
                dictionary.len()
            );
            Ok(())
        })
    })
}

/// Measure: no state change without the right credential. The app changes
/// Alice's password; the frontend withholds the sealed registration, locks
/// Alice out (or deletes her), and then sends it: the lockout or delete
/// must stand.
fn a_withheld_registration_does_not_undo_a_later_lockout_or_delete(
    template: &Template,
) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let mut failures = Vec::new();
            for (who, end) in [("alice", "lockout"), ("bob", "delete")] {
                let who = user(who);
                app.register(&mut c, &who, b"old password", 2).await?;
                // The password change, sealed but withheld.
                let (state, request) = Registration::start(&mut OsRng, b"new password")?;
                let start = c
                    .register_start(RegisterStartRequest {
                        user_id: who.as_str().into(),
                        registration_request: request,
                    })
                    .await?
                    .into_inner();
                let keys = start.fleet.clone().context("fleet keys")?;
                let withheld = state.finish(
                    &mut OsRng,
                    b"new password",
                    &answer(&start),
                    &who,
                    &app.fleet,
                    &keys.hpke_public_key,
                    &app.ksf,
                    2,
                    &[7; 32],
                )?;
                if end == "lockout" {
                    lock_out(&app, &mut c, &who, 2).await?;
                } else {
                    c.delete(DeleteRequest {
                        user_id: who.as_str().into(),
                        request_id: new_id(),
                    })
                    .await?;
                }
                let before = status(&mut c, &who).await?;
                let late = c
                    .register_finish(RegisterFinishRequest {
                        user_id: who.as_str().into(),
                        sealed_registration: withheld.sealed,
                        request_id: new_id(),
                        ..Default::default()
                    })
                    .await;
                let after = status(&mut c, &who).await?;
                if late.is_ok() || after.state != before.state {
                    failures.push(format!(
                        "after a {end}, the withheld registration applied: {before:?} -> {after:?}"
                    ));
                }
            }
            ensure!(failures.is_empty(), "{}", failures.join("; "));
            Ok(())
        })
    })
}

/// Measure: password guesses testable ≤ attempts committed. A frontend
/// that relayed a victim's registration keeps its nonce `n`, and later
/// re-registers the victim with a password of its own under that same `n`:
/// the new record would share the old one's OPRF key, and every metered
/// guess on its own record (whose counter it resets at will) would be an
/// evaluation under the victim's old key. The fleet must refuse a nonce it
/// did not issue for that user and generation.
fn a_captured_registration_nonce_cannot_be_registered_again(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let (alice, bob) = (user("alice"), user("bob"));
            let victim = app
                .register(&mut c, &alice, b"victim's password", 5)
                .await?;
            let before = status(&mut c, &alice).await?;
            let mut accepted = Vec::new();
            // The victim's nonce (issued for generation 0) at generation 1,
            // and at 0; and a nonce issued for another user.
            let bobs = c
                .register_start(RegisterStartRequest {
                    user_id: bob.as_str().into(),
                    registration_request: Registration::start(&mut OsRng, b"x")?.1,
                })
                .await?
                .into_inner();
            for (what, nonce, generation) in [
                (
                    "the victim's nonce at the current generation",
                    victim.start.registration_nonce.clone(),
                    1,
                ),
                (
                    "the victim's nonce at its own generation",
                    victim.start.registration_nonce.clone(),
                    0,
                ),
                ("another user's nonce", bobs.registration_nonce.clone(), 1),
            ] {
                let (state, request) = Registration::start(&mut OsRng, b"attacker's")?;
                let fresh = c
                    .register_start(RegisterStartRequest {
                        user_id: alice.as_str().into(),
                        registration_request: request,
                    })
                    .await?
                    .into_inner();
                let keys = fresh.fleet.clone().context("fleet keys")?;
                let out = state.finish(
                    &mut OsRng,
                    b"attacker's",
                    &RegisterStartAnswer {
                        response: &fresh.registration_response,
                        nonce: &nonce,
                        generation: Generation(generation),
                    },
                    &alice,
                    &app.fleet,
                    &keys.hpke_public_key,
                    &app.ksf,
                    10,
                    &[9; 32],
                )?;
                let r = c
                    .register_finish(RegisterFinishRequest {
                        user_id: alice.as_str().into(),
                        sealed_registration: out.sealed,
                        request_id: new_id(),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    accepted.push(what);
                }
            }
            let after = status(&mut c, &alice).await?;
            ensure!(
                accepted.is_empty() && after == before,
                "registered with {accepted:?}: {before:?} -> {after:?}"
            );
            ensure!(app.recover(&mut c, &alice, b"victim's password").await?);
            Ok(())
        })
    })
}

/// Measure: password guesses testable ≤ attempts committed (no answer
/// depends on a live record's OPRF key but a metered KE2). A frontend kept
/// the victim's registration nonce `n`, issued for generation 0 and live
/// since. It seals payloads of its own under `n` at generation 0: a request
/// X and a claimed evaluation Y, once the fleet's true `k·X` and once
/// another point. If the fleet checked "Y = k·X" under the live key before
/// refusing the stale generation, the two answers would differ: an
/// unmetered decision oracle for the victim's key, asked as often as the
/// frontend likes.
fn a_stale_registration_is_refused_before_its_evaluation_is_checked(
    template: &Template,
) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            let victim = app.register(&mut c, &alice, b"victim's password", 5).await?;
            let keys = victim.start.fleet.clone().context("fleet keys")?;
            let before = status(&mut c, &alice).await?;
            let truth = victim.start.registration_response.clone();
            let other = forged_response(&victim.request, &keys.opaque_public_key);
            ensure!(truth != other, "the forged evaluation is the fleet's");
            let mut answers = Vec::new();
            for response in [&truth, &other] {
                let x = Exchanged {
                    request: &victim.request,
                    response,
                };
                let plain = v2_payload(
                    2,
                    &x,
                    &victim.upload,
                    &victim.enc_k,
                    &victim.start.registration_nonce,
                    0,
                    &[],
                );
                let sealed = seal_to_fleet(&keys.hpke_public_key, &app.fleet, &alice, &plain);
                let r = c
                    .register_finish(RegisterFinishRequest {
                        user_id: alice.as_str().into(),
                        sealed_registration: sealed,
                        request_id: new_id(),
                        ..Default::default()
                    })
                    .await;
                answers.push(match r {
                    Ok(reply) => format!("OK {:?}", reply.into_inner()),
                    Err(e) => format!("{:?} {:?} {}", e.code(), kind(&e), e.message()),
                });
            }
            ensure!(
                answers[0] == answers[1],
                "the answer tells whether Y = k·X under the live record's key: with the true evaluation {:?}, with another {:?}",
                answers[0],
                answers[1]
            );
            ensure!(answers[0].starts_with("Aborted Conflict"), "{answers:?}");
            ensure!(status(&mut c, &alice).await? == before);
            ensure!(app.recover(&mut c, &alice, b"victim's password").await?);
            Ok(())
        })
    })
}

async fn recover_start(
    c: &mut FrontendClient<Channel>,
    who: &UserId,
    ke1: &[u8],
    request_id: &[u8],
) -> Result<RecoverStartReply, tonic::Status> {
    Ok(c.recover_start(RecoverStartRequest {
        user_id: who.as_str().into(),
        ke1: ke1.to_vec(),
        request_id: request_id.to_vec(),
    })
    .await?
    .into_inner())
}

/// Measure: a replay consumes nothing, also no node memory. 200 replays
/// of one RecoverStart (same request id, same KE1) on one node must hold
/// one login state, answer the same KE2, and cost one attempt.
fn replayed_recover_starts_open_one_session(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            app.register(&mut c, &alice, b"pw", 5).await?;
            let (_, ke1) = Login::start(&mut OsRng, b"pw")?;
            let id = new_id();
            let first = recover_start(&mut c, &alice, &ke1, &id).await?;
            let mut sessions = std::collections::BTreeSet::new();
            sessions.insert(first.session_id.clone());
            let mut ke2s = std::collections::BTreeSet::new();
            ke2s.insert(first.ke2.clone());
            for _ in 0..199 {
                let again = recover_start(&mut c, &alice, &ke1, &id).await?;
                ke2s.insert(again.ke2);
                sessions.insert(again.session_id);
            }
            let s = status(&mut c, &alice).await?;
            ensure!(
                sessions.len() == 1 && ke2s.len() == 1,
                "200 replays opened {} login states on one node, with {} different KE2s",
                sessions.len(),
                ke2s.len()
            );
            ensure!(s.attempts_left == 4, "attempts: {s:?}");
            Ok(())
        })
    })
}

/// Measure: replays hold no places. With the fleet's session TTL at 2 s,
/// a RecoverStart replayed 4 s later on another node was
/// answered from the dedup table with the old grant for up to 60 s, and
/// opened a new login state each time (issue 25: replays expire with the
/// session TTL, whatever it is).
fn a_replay_past_the_session_ttl_opens_no_session(template: &Template) -> TestResult {
    on_fleet_with(template, &["session_ttl_s = 2"], |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            app.register(&mut c, &alice, b"pw", 5).await?;
            let (_, ke1) = Login::start(&mut OsRng, b"a guess")?;
            let id = new_id();
            let first = recover_start(&mut c, &alice, &ke1, &id).await?;
            ensure!(
                first.session_ttl_seconds == 2,
                "TTL {}",
                first.session_ttl_seconds
            );
            tokio::time::sleep(Duration::from_secs(4)).await;
            // On a node that never saw the request (the first one remembers
            // it finished): the fleet's dedup table answers.
            let mut c2 = fleet.frontend(2).await?;
            let replayed = recover_start(&mut c2, &alice, &ke1, &id).await;
            ensure!(
                matches!(&replayed, Err(s) if kind(s) == Kind::SessionExpired),
                "a replay after the session TTL answered {:?}",
                replayed.map(|r| r.session_id)
            );
            ensure!(status(&mut c, &alice).await?.attempts_left == 4);
            Ok(())
        })
    })
}

/// Measure: no attempt is spent without a KE2. A frontend fills one
/// node's login-state table (here 3 places, 2 per user) with recoveries of
/// users of its own; a user who then types the right password on that node
/// may be refused, but must not lose an attempt for it. One user's
/// recoveries are bounded on a node too, and refused before a commit.
fn a_full_session_table_refuses_before_committing_an_attempt(template: &Template) -> TestResult {
    on_fleet_with(
        template,
        &["max_sessions = 3", "sessions_per_user = 2"],
        |fleet, rt| {
            rt.block_on(async {
                let mut c = fleet.frontend(1).await?;
                let app = App::new(fleet);
                let victim = user("victim");
                app.register(&mut c, &victim, b"right", 5).await?;
                let mallory: Vec<UserId> = (0..2).map(|i| user(&format!("mallory-{i}"))).collect();
                for m in &mallory {
                    app.register(&mut c, m, b"mallory", 10).await?;
                }
                // Per user: two sessions, then refused before a commit.
                for _ in 0..2 {
                    let (_, ke1) = Login::start(&mut OsRng, b"x")?;
                    recover_start(&mut c, &mallory[0], &ke1, &new_id()).await?;
                }
                let left = status(&mut c, &mallory[0]).await?.attempts_left;
                let (_, ke1) = Login::start(&mut OsRng, b"x")?;
                let third = recover_start(&mut c, &mallory[0], &ke1, &new_id()).await;
                ensure!(
                    matches!(&third, Err(s) if s.code() == tonic::Code::ResourceExhausted
                        && !detail(s).is_some_and(|d| d.attempt_committed)),
                    "a third session of one user: {third:?}"
                );
                ensure!(
                    status(&mut c, &mallory[0]).await?.attempts_left == left,
                    "the refused third recovery cost an attempt"
                );
                // The table: the third place, then full.
                let (_, ke1) = Login::start(&mut OsRng, b"x")?;
                recover_start(&mut c, &mallory[1], &ke1, &new_id()).await?;
                let before = status(&mut c, &victim).await?;
                let (_, ke1) = Login::start(&mut OsRng, b"right")?;
                let r = recover_start(&mut c, &victim, &ke1, &new_id()).await;
                let after = status(&mut c, &victim).await?;
                ensure!(
                    matches!(&r, Err(s) if s.code() == tonic::Code::ResourceExhausted),
                    "the full node answered {r:?}"
                );
                ensure!(
                    after.attempts_left == before.attempts_left,
                    "refused by the full table, and the attempt was spent: {before:?} -> {after:?}"
                );
                // Another node serves the victim.
                let mut c2 = fleet.frontend(2).await?;
                ensure!(app.recover(&mut c2, &victim, b"right").await?);
                Ok(())
            })
        },
    )
}

/// Measure: password guesses testable ≤ attempts committed. A RecoverStart
/// replayed after the user registered again must not release a KE2 under
/// the new record (that would be a guess the new record never counted).
fn a_replayed_recover_start_gives_no_ke2_under_a_new_registration(
    template: &Template,
) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c1 = fleet.frontend(1).await?;
            let mut c2 = fleet.frontend(2).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            app.register(&mut c1, &alice, b"first", 5).await?;
            let (_, ke1) = Login::start(&mut OsRng, b"a guess")?;
            let id = new_id();
            let first = recover_start(&mut c1, &alice, &ke1, &id).await?;
            app.register(&mut c1, &alice, b"second", 5).await?;
            let before = status(&mut c1, &alice).await?;
            // On another node (no login state of it there) and on the same.
            // Issue 25: on the same node the cached answer (the old
            // record's KE2) came back; docs/PROTOCOL.md §6 says
            // SESSION_EXPIRED, and now both nodes say it.
            for (name, c) in [("another node", &mut c2), ("the same node", &mut c1)] {
                match recover_start(c, &alice, &ke1, &id).await {
                    Ok(r) => anyhow::bail!(
                        "{name}: the replay was answered (the first KE2 again: {}) after the user registered again",
                        r.ke2 == first.ke2
                    ),
                    Err(s) => ensure!(
                        kind(&s) == Kind::SessionExpired,
                        "{name}: refused as {:?}: {}",
                        kind(&s),
                        s.message()
                    ),
                }
            }
            let after = status(&mut c1, &alice).await?;
            ensure!(
                after.attempts_left == before.attempts_left,
                "the replay consumed an attempt of the new record: {before:?} -> {after:?}"
            );
            Ok(())
        })
    })
}

/// Issue 25: a `RegisterFinish` retried with the same request id and the
/// same bytes after it succeeded (its answer lost on the way) gets the
/// first execution's answer, as docs/PROTOCOL.md §6 promises; it was
/// CONFLICT, and a client could not learn that its registration had
/// succeeded. The retry changes nothing.
fn a_retried_register_finish_gets_its_first_answer(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c1 = fleet.frontend(1).await?;
            let mut c2 = fleet.frontend(2).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            let relayed = app.register(&mut c1, &alice, b"right one", 3).await?;
            let before = status(&mut c1, &alice).await?;
            for c in [&mut c1, &mut c2] {
                let again = c.register_finish(relayed.finish.clone()).await;
                match again {
                    Ok(r) => ensure!(
                        r.get_ref().generation == before.generation,
                        "the retry answered another generation: {:?} (status {before:?})",
                        r.into_inner()
                    ),
                    Err(s) => {
                        anyhow::bail!("the retry was refused as {:?}: {}", kind(&s), s.message())
                    }
                }
            }
            let after = status(&mut c1, &alice).await?;
            ensure!(
                after == before,
                "the retry changed the user: {before:?} -> {after:?}"
            );
            Ok(())
        })
    })
}

/// Measure: no state change without the right credential. Bob's valid KE3
/// (the frontend relayed Bob's own login) sent into Alice's session must
/// not finish Alice's attempt as a success, nor reset her counter.
fn a_ke3_for_another_users_session_changes_nothing(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let (alice, bob) = (user("alice"), user("bob"));
            app.register(&mut c, &alice, b"alice pw", 5).await?;
            app.register(&mut c, &bob, b"bob pw", 5).await?;
            ensure!(!app.recover(&mut c, &alice, b"wrong").await?);
            // Alice's session, opened by the frontend with a guess.
            let (_, ke1_a) = Login::start(&mut OsRng, b"a guess")?;
            let alice_session = recover_start(&mut c, &alice, &ke1_a, &new_id()).await?;
            // Bob's genuine login, relayed.
            let (login_b, ke1_b) = Login::start(&mut OsRng, b"bob pw")?;
            let bob_start = recover_start(&mut c, &bob, &ke1_b, &new_id()).await?;
            let ok_b = login_b.finish(
                &mut OsRng,
                b"bob pw",
                &bob_start.ke2,
                &bob,
                &app.fleet,
                &app.ksf,
            )?;
            let crossed = c
                .recover_finish(RecoverFinishRequest {
                    session_id: alice_session.session_id.clone(),
                    ke3: ok_b.ke3.clone(),
                })
                .await;
            ensure!(crossed.is_err(), "Bob's KE3 finished Alice's session");
            let s = status(&mut c, &alice).await?;
            ensure!(
                s.attempts_left == 3,
                "Alice's counter after the crossed KE3: {s:?}"
            );
            Ok(())
        })
    })
}

/// Measure: password guesses testable ≤ attempts committed. A wrong KE3
/// that is not the last attempt commits nothing (its attempt was counted
/// when `BeginAttempt` committed, before KE2 left); the count must still
/// fall with each guess, and the last wrong KE3 must lock the record.
fn wrong_ke3s_count_and_the_last_one_locks(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let carol = user("carol");
            app.register(&mut c, &carol, b"right", 3).await?;
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (_, ke1) = Login::start(&mut OsRng, b"a guess")?;
                let s = recover_start(&mut c, &carol, &ke1, &new_id()).await?;
                let finished = c
                    .recover_finish(RecoverFinishRequest {
                        session_id: s.session_id,
                        ke3: vec![7; 64],
                    })
                    .await;
                let answer = match finished {
                    Ok(_) => "recovered".to_owned(),
                    Err(e) => format!("{:?}", kind(&e)),
                };
                let st = status(&mut c, &carol).await?;
                seen.push((answer, st.state, st.attempts_left));
            }
            let expected = vec![
                ("WrongPassword".to_owned(), State::Active as i32, 2),
                ("WrongPassword".to_owned(), State::Active as i32, 1),
                ("Locked".to_owned(), State::Locked as i32, 0),
            ];
            ensure!(
                seen == expected,
                "wrong KE3s: {seen:?}, expected {expected:?}"
            );
            let (_, ke1) = Login::start(&mut OsRng, b"right")?;
            ensure!(
                recover_start(&mut c, &carol, &ke1, &new_id())
                    .await
                    .is_err(),
                "a locked record answered a KE2"
            );
            Ok(())
        })
    })
}

/// Waits for `who`'s attempts left to settle at `expected`; more than
/// that at any read is an attempt given back.
async fn settles_at(
    c: &mut FrontendClient<Channel>,
    who: &UserId,
    expected: u32,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = status(c, who).await?.attempts_left;
        ensure!(
            left <= expected,
            "{what}: {left} attempts left, expected {expected}: a guess was forgiven"
        );
        if left == expected {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{what}: {left} attempts left, never {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A genuine login up to its KE3: the session and the KE3 that opens it.
async fn genuine_start(
    c: &mut FrontendClient<Channel>,
    app: &App,
    who: &UserId,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let (login, ke1) = Login::start(&mut OsRng, b"right")?;
    let start = recover_start(c, who, &ke1, &new_id()).await?;
    let ok = login.finish(&mut OsRng, b"right", &start.ke2, who, &app.fleet, &app.ksf)?;
    Ok((start.session_id, ok.ke3.clone()))
}

/// Sends a genuine login's KE3; the sealed K must come back.
async fn genuine_finish(
    c: &mut FrontendClient<Channel>,
    (session_id, ke3): (Vec<u8>, Vec<u8>),
) -> anyhow::Result<()> {
    let fin = c
        .recover_finish(RecoverFinishRequest { session_id, ke3 })
        .await?
        .into_inner();
    ensure!(!fin.sealed_key.is_empty(), "a success without a sealed K");
    Ok(())
}

/// A frontend's guess: a RecoverStart whose KE2 it keeps; no KE3 follows.
async fn guess_start(c: &mut FrontendClient<Channel>, who: &UserId) -> anyhow::Result<()> {
    let (_, ke1) = Login::start(&mut OsRng, b"a guess")?;
    recover_start(c, who, &ke1, &new_id()).await?;
    Ok(())
}

/// Measure: password guesses testable ≤ attempts committed, around the
/// user's own logins. While a genuine recovery sits between its KE2 and
/// its KE3, the frontend relaying it opens recoveries of its own with
/// guesses (the KE2 is all an offline test needs; no KE3 has to follow).
/// The user's success resets the counter: it may forgive the attempts
/// granted up to its own, never the guesses granted after it, and a
/// success that arrives late (after a newer one) forgives nothing newer.
fn a_success_forgives_no_guess_granted_after_it(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let dave = user("dave");
            app.register(&mut c, &dave, b"right", 5).await?;
            // The user's login, then two guesses of the frontend's.
            let a = genuine_start(&mut c, &app, &dave).await?;
            guess_start(&mut c, &dave).await?;
            guess_start(&mut c, &dave).await?;
            genuine_finish(&mut c, a).await?;
            settles_at(&mut c, &dave, 3, "after the user's success").await?;
            // Two genuine logins; the newer finishes first, then a guess,
            // then the older one's success arrives.
            let d = genuine_start(&mut c, &app, &dave).await?;
            let e = genuine_start(&mut c, &app, &dave).await?;
            genuine_finish(&mut c, e).await?;
            settles_at(&mut c, &dave, 5, "after the newer success").await?;
            guess_start(&mut c, &dave).await?;
            genuine_finish(&mut c, d).await?;
            settles_at(&mut c, &dave, 4, "after the late success").await?;
            Ok(())
        })
    })
}

/// Calls `/vault.v1.Frontend/<method>` on node 1 with `body` as the raw
/// protobuf bytes.
async fn raw_call(
    fleet: &TestFleet,
    method: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = fleet
        .frontend_channel(1)
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let path = format!("/vault.v1.Frontend/{method}")
        .parse()
        .map_err(|_| tonic::Status::unknown("path"))?;
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Sends and receives raw bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Checks that `result` is a refusal with code `code` and an error detail
/// of kind `want`.
fn refused_as(
    what: &str,
    result: Result<Vec<u8>, tonic::Status>,
    code: tonic::Code,
    want: Kind,
) -> TestResult {
    match result {
        Ok(_) => bail!("{what}: accepted"),
        Err(s) if s.code() == code && kind(&s) == want => Ok(()),
        Err(s) => bail!(
            "{what}: {:?} with detail {:?} ({}), expected {code:?} with {want:?}",
            s.code(),
            detail(&s),
            s.message()
        ),
    }
}

/// Undecodable protobuf, a user id that is not UTF-8, and a message over
/// the size limit are the caller's error and say so with a detail.
fn malformed_frontend_calls_are_invalid_arguments_with_a_detail(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            // Field 1 (user_id) as a length-delimited string cut short.
            refused_as(
                "undecodable protobuf",
                raw_call(fleet, "Status", vec![0x0a, 0x10, b'a']).await,
                tonic::Code::InvalidArgument,
                Kind::InvalidArgument,
            )?;
            // Field 1 (user_id) holding bytes that are not UTF-8.
            refused_as(
                "a non-UTF-8 user id",
                raw_call(fleet, "Status", vec![0x0a, 0x02, 0xff, 0xfe]).await,
                tonic::Code::InvalidArgument,
                Kind::InvalidArgument,
            )?;
            let huge = UserStatusRequest {
                user_id: "a".repeat(100 << 10),
            };
            refused_as(
                "a 100 KiB message",
                raw_call(fleet, "Status", huge.encode_to_vec()).await,
                tonic::Code::OutOfRange,
                Kind::InvalidArgument,
            )?;
            // The node still serves.
            let mut c = fleet.frontend(1).await?;
            status(&mut c, &user("still-serving")).await?;
            Ok(())
        })
    })
}

/// A KE3 of the wrong length is malformed, not a wrong password: it must
/// not end the session or be counted; the right KE3 still recovers.
fn a_wrong_length_ke3_is_refused_and_leaves_the_session_intact(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let alice = user("alice");
            app.register(&mut c, &alice, b"pw", 5).await?;
            let (login, ke1) = Login::start(&mut OsRng, b"pw")?;
            let start = recover_start(&mut c, &alice, &ke1, &new_id()).await?;
            let ok = login.finish(&mut OsRng, b"pw", &start.ke2, &alice, &app.fleet, &app.ksf)?;
            for len in [1usize, 63, 65, 512] {
                let r = c
                    .recover_finish(RecoverFinishRequest {
                        session_id: start.session_id.clone(),
                        ke3: vec![0x42; len],
                    })
                    .await
                    .map(|r| r.into_inner().sealed_key);
                refused_as(
                    &format!("a {len}-byte KE3"),
                    r,
                    tonic::Code::InvalidArgument,
                    Kind::InvalidArgument,
                )?;
            }
            let fin = c
                .recover_finish(RecoverFinishRequest {
                    session_id: start.session_id.clone(),
                    ke3: ok.ke3.clone(),
                })
                .await
                .context("the right KE3 after the malformed ones")?
                .into_inner();
            ensure!(*ok.open(&fin.sealed_key, &alice)? == [7; 32]);
            // The success's reset may land just after its answer.
            settles_at(&mut c, &alice, 5, "after the right KE3").await?;
            Ok(())
        })
    })
}

/// The request and response a sealed registration carries back.
struct Exchanged<'a> {
    request: &'a [u8],
    response: &'a [u8],
}

/// A sealed-registration plaintext in protocol v2's framing (`0x02 ‖
/// request ‖ response ‖ upload ‖ enc_K ‖ n ‖ u64be g ‖ u32be max`), with
/// any field bytes and `trailing` bytes after it.
fn v2_payload(
    version: u8,
    x: &Exchanged<'_>,
    upload: &[u8],
    enc_k: &[u8],
    nonce: &[u8],
    g: u64,
    trailing: &[u8],
) -> Vec<u8> {
    let mut p = vec![version];
    p.extend_from_slice(x.request);
    p.extend_from_slice(x.response);
    p.extend_from_slice(upload);
    p.extend_from_slice(enc_k);
    p.extend_from_slice(nonce);
    p.extend_from_slice(&g.to_be_bytes());
    p.extend_from_slice(&5u32.to_be_bytes());
    p.extend_from_slice(trailing);
    p
}

/// Protocol v1's framing: LEB128 lengths (here with a non-minimal one).
fn v1_payload(upload: &[u8], enc_k: &[u8]) -> Vec<u8> {
    let mut p = vec![1u8, 0xc0, 0x81, 0x00];
    p.extend_from_slice(upload);
    p.push(enc_k.len() as u8);
    p.extend_from_slice(enc_k);
    p
}

/// HPKE-seals `plaintext` to the fleet as an app would (the frontend has
/// the fleet's public key, so it can seal anything).
fn seal_to_fleet(hpke_pk: &[u8], fleet: &FleetId, who: &UserId, plaintext: &[u8]) -> Vec<u8> {
    use hpke::{Deserializable, Serializable};
    type Kem = hpke::kem::X25519HkdfSha256;
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(hpke_pk).expect("HPKE key");
    let mut aad = fleet.as_str().as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(who.as_str().as_bytes());
    let (enc, ct) =
        hpke::single_shot_seal::<hpke::aead::ChaCha20Poly1305, hpke::kdf::HkdfSha256, Kem, _>(
            &hpke::OpModeS::Base,
            &pk,
            b"bkv/v2/register-finish",
            plaintext,
            &aad,
            &mut OsRng,
        )
        .expect("seal");
    let mut out = enc.to_bytes().to_vec();
    out.extend_from_slice(&ct);
    out
}

/// Measure: no state change without the right credential. A sealed
/// registration whose fields are malformed (a wrapped key of the wrong
/// size, an upload of the wrong size, trailing bytes, the old framing with
/// a non-minimal length, another version) would store a record whose K can
/// never come back: refused, and nothing is stored.
fn malformed_sealed_registrations_are_refused_and_store_nothing(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let app = App::new(fleet);
            let mut failures = Vec::new();
            for (i, what) in [
                "an empty wrapped key",
                "a 59-byte wrapped key",
                "a 1000-byte wrapped key",
                "a 193-byte upload",
                "trailing bytes",
                "protocol v1's framing with a non-minimal length",
                "version 3 at the right length",
            ]
            .into_iter()
            .enumerate()
            {
                let who = user(&format!("victim-{i}"));
                // A real upload for this user, cut or padded to the size.
                let (state, request) = Registration::start(&mut OsRng, b"pw")?;
                let request_sent = request.clone();
                let start = c
                    .register_start(RegisterStartRequest {
                        user_id: who.as_str().into(),
                        registration_request: request,
                    })
                    .await?
                    .into_inner();
                let keys = start.fleet.clone().context("keys")?;
                let out = state.finish(
                    &mut OsRng,
                    b"pw",
                    &answer(&start),
                    &who,
                    &app.fleet,
                    &keys.hpke_public_key,
                    &app.ksf,
                    5,
                    &[7; 32],
                )?;
                let (up, ek, n) = (
                    &out.upload[..],
                    &out.enc_k[..],
                    &start.registration_nonce[..],
                );
                let g = start.generation;
                let x = Exchanged {
                    request: &request_sent,
                    response: &start.registration_response,
                };
                let plain = match i {
                    0 => v2_payload(2, &x, up, &[], n, g, &[]),
                    1 => v2_payload(2, &x, up, &ek[..59], n, g, &[]),
                    2 => v2_payload(2, &x, up, &[0; 1000], n, g, &[]),
                    3 => v2_payload(2, &x, &[up, &[0][..]].concat(), ek, n, g, &[]),
                    4 => v2_payload(2, &x, up, ek, n, g, &[0, 0, 0]),
                    5 => v1_payload(up, ek),
                    _ => v2_payload(3, &x, up, ek, n, g, &[]),
                };
                let sealed = seal_to_fleet(&keys.hpke_public_key, &app.fleet, &who, &plain);
                let r = c
                    .register_finish(RegisterFinishRequest {
                        user_id: who.as_str().into(),
                        sealed_registration: sealed,
                        request_id: new_id(),
                        ..Default::default()
                    })
                    .await;
                let s = status(&mut c, &who).await?;
                if r.is_ok() || s.state != State::Unknown as i32 {
                    failures.push(format!("{what}: accepted, user {s:?}"));
                } else if let Err(e) = r
                    && (e.code() != tonic::Code::InvalidArgument
                        || kind(&e) != Kind::InvalidArgument)
                {
                    failures.push(format!("{what}: refused as {:?} {:?}", e.code(), kind(&e)));
                }
            }
            ensure!(failures.is_empty(), "{}", failures.join("; "));
            Ok(())
        })
    })
}

/// Reads from `stream` until EOF or an error; how long that took, or
/// `None` if it stayed open past `within`.
fn closed_within(mut stream: std::net::TcpStream, within: Duration) -> Option<Duration> {
    use std::io::Read;
    let t = std::time::Instant::now();
    stream.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return None;
            }
            Err(_) => return Some(t.elapsed()),
        }
    }
}

/// Measure: a network attacker cannot make a node's HSM sign without bound.
/// Every TLS handshake costs the node an HSM signature before the caller
/// shows a certificate; one source address opening connection after
/// connection gets `handshakes_per_second` of them (here 5) and a burst of
/// as many, and the rest are closed before any TLS work.
fn handshake_floods_from_one_address_are_rate_limited(template: &Template) -> TestResult {
    on_fleet_with(template, &["handshakes_per_second = 5"], |fleet, rt| {
        rt.block_on(async {
            // Let the fleet's own start-up connections age out of the bucket.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let t = std::time::Instant::now();
            let mut shaken = 0u32;
            for _ in 0..30 {
                if fleet.frontend_channel(1).await.is_ok() {
                    shaken += 1;
                }
            }
            let allowed = 5.0 + 5.0 * t.elapsed().as_secs_f64() + 1.0;
            ensure!(
                f64::from(shaken) <= allowed,
                "one address completed {shaken} of 30 TLS handshakes in {:?} (an HSM signature each); at most {allowed:.0} allowed",
                t.elapsed()
            );
            // A second later it is served again.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let mut c = fleet.frontend(1).await?;
            status(&mut c, &user("nobody")).await?;
            Ok(())
        })
    })
}

/// Measure: a frontend's connections cannot hold a node. A TCP connection
/// that never starts TLS is closed within the handshake timeout; silent
/// connections past the handshake cap (a quarter of the places) are closed
/// at once; past the connection cap, a new connection is closed at once;
/// and the node serves real calls once the holders let go.
fn idle_connections_are_closed_and_capped(template: &Template) -> TestResult {
    on_fleet_with(
        template,
        &["handshake_timeout_ms = 1500", "max_connections = 8"],
        |fleet, rt| {
            let addr = fleet
                .fleet()
                .node(1)
                .map_err(anyhow::Error::msg)?
                .frontend_addr;
            let connect = || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            // One silent connection: closed by the handshake timeout.
            let silent = connect()?;
            let took = closed_within(silent, Duration::from_secs(10));
            ensure!(
                took.is_some_and(|t| t >= Duration::from_millis(1000)),
                "a connection that never started TLS: closed after {took:?} (timeout 1.5 s)"
            );
            // Two silent connections fill the handshake cap (8 / 4); a
            // third is closed at once.
            let shaking: Vec<_> = (0..2).map(|_| connect()).collect::<Result<_, _>>()?;
            std::thread::sleep(Duration::from_millis(200));
            let third = closed_within(connect()?, Duration::from_millis(900));
            ensure!(
                third.is_some(),
                "a third silent connection stayed open (cap 2)"
            );
            drop(shaking);
            // (The node notices the closed handshakes on its next read.)
            std::thread::sleep(Duration::from_millis(300));
            // Eight established TLS connections fill the port; a ninth
            // connection is closed at once.
            rt.block_on(async {
                let mut held = Vec::new();
                for _ in 0..8 {
                    held.push(fleet.frontend_channel(1).await?);
                }
                let ninth = tokio::task::spawn_blocking(move || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                        .map(|s| closed_within(s, Duration::from_millis(900)))
                })
                .await??;
                ensure!(
                    ninth.is_some(),
                    "a ninth connection past a cap of 8 stayed open"
                );
                drop(held);
                // The node serves again once they are gone.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let ok = async {
                        let mut c = fleet.frontend(1).await?;
                        status(&mut c, &user("still-serving")).await
                    }
                    .await;
                    match ok {
                        Ok(_) => return Ok(()),
                        Err(e) if std::time::Instant::now() > deadline => {
                            bail!("the node does not serve after the flood: {e:#}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
        },
    )
}

/// Measure: a frontend cannot grow a node's memory through its metrics.
/// Calls to methods that do not exist are counted under one label, not
/// one label per path.
fn unknown_methods_share_one_metrics_label(template: &Template) -> TestResult {
    on_fleet(template, |fleet, rt| {
        rt.block_on(async {
            let mut names = Vec::new();
            for i in 0..20 {
                let name = format!("NoSuchMethod{i}x{}", OsRng.next_u32());
                let r = raw_call(fleet, &name, Vec::new()).await;
                ensure!(
                    matches!(&r, Err(s) if s.code() == tonic::Code::Unimplemented),
                    "{name}: {r:?}"
                );
                names.push(name);
            }
            let text = fleet.metrics(1)?;
            for name in &names {
                ensure!(
                    !text.contains(name.as_str()),
                    "{name} became a metrics label"
                );
            }
            ensure!(
                text.contains("method=\"unknown\""),
                "no method=\"unknown\" series:\n{text}"
            );
            Ok(())
        })
    })
}
