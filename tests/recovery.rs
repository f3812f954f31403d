//! Password-protected key recovery end to end, on real fleets (real node
//! processes, RocksDB, SoftHSM tokens, mutual TLS): the frontend API, the
//! client library and `vaultctl`.
//!
//! Some tests play the app by hand (`vault_protocol::client` over a
//! raw frontend client) to reach what the library hides: request ids,
//! sessions, and every byte a relaying frontend sees.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use prost::Message;
use rand::RngCore;
use rand::rngs::OsRng;
use tonic::transport::Channel;
use vault_client::{ClientError, Status};
use vault_proto::v1::error_detail::Kind;
use vault_proto::v1::frontend_client::FrontendClient;
use vault_proto::v1::{
    DeleteRequest, GetFleetBundleRequest, RecoverFinishRequest, RecoverStartReply,
    RecoverStartRequest, RegisterFinishRequest, RegisterStartRequest, UserStatusRequest,
};
use vault_protocol::client::{
    Login, RegisterStartAnswer, Registration, RegistrationOutput, argon2id,
};
use vault_testkit::{FleetSpec, Template, TestFleet};
use vault_types::{FleetId, Generation, UserId};

type TestResult = anyhow::Result<()>;

fn main() -> ExitCode {
    let tests: Vec<(&str, vault_testkit::FleetTest)> = vec![
        (
            "right_password_recovers_exactly_k_and_the_backup_decrypts",
            right_password_recovers_exactly_k_and_the_backup_decrypts,
        ),
        (
            "wrong_passwords_lock_the_record_and_a_success_resets_the_count",
            wrong_passwords_lock_the_record_and_a_success_resets_the_count,
        ),
        (
            "re_registration_bumps_the_generation_and_an_old_session_cannot_finish",
            re_registration_bumps_the_generation_and_an_old_session_cannot_finish,
        ),
        (
            "a_retried_recover_start_costs_one_attempt_and_another_ke1_is_refused",
            a_retried_recover_start_costs_one_attempt_and_another_ke1_is_refused,
        ),
        (
            "recovery_works_after_the_leader_that_took_the_registration_is_killed",
            recovery_works_after_the_leader_that_took_the_registration_is_killed,
        ),
        (
            "a_relaying_frontend_and_the_disks_never_see_the_apps_secrets",
            a_relaying_frontend_and_the_disks_never_see_the_apps_secrets,
        ),
        (
            "malformed_and_oversized_inputs_are_invalid_and_the_node_keeps_serving",
            malformed_and_oversized_inputs_are_invalid_and_the_node_keeps_serving,
        ),
    ];
    vault_testkit::run_fleet_tests(3, tests)
}

const CONVERGE: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    vault_testkit::client::runtime()
}

fn started(template: &Template) -> anyhow::Result<TestFleet> {
    let mut fleet = TestFleet::create(template, &FleetSpec::voters(3))?;
    fleet.start_all(1..=3)?;
    fleet.init()?;
    fleet.wait_converged(CONVERGE)?;
    Ok(fleet)
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

fn kind(status: &tonic::Status) -> Kind {
    vault_proto::errors::detail(status)
        .and_then(|d| Kind::try_from(d.kind).ok())
        .unwrap_or(Kind::Unspecified)
}

fn new_id() -> Vec<u8> {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    id.to_vec()
}

/// An app playing the protocol by hand, recording every message a relaying
/// frontend would see (requests and replies, as encoded on the wire).
struct App {
    fleet: FleetId,
    ksf: argon2::Argon2<'static>,
    relayed: Vec<Vec<u8>>,
}

impl App {
    fn new(fleet: &TestFleet) -> App {
        App {
            fleet: fleet.fleet().fleet_id.clone(),
            ksf: argon2id(256, 1, 1).expect("argon2"),
            relayed: Vec::new(),
        }
    }

    fn saw(&mut self, m: &impl Message) {
        self.relayed.push(m.encode_to_vec());
    }

    async fn register(
        &mut self,
        c: &mut FrontendClient<Channel>,
        who: &UserId,
        password: &[u8],
        k: &[u8; 32],
        max_attempts: u32,
    ) -> anyhow::Result<(RegistrationOutput, u64)> {
        let (state, request) = Registration::start(&mut OsRng, password)?;
        let req = RegisterStartRequest {
            user_id: who.as_str().into(),
            registration_request: request,
        };
        self.saw(&req);
        let start = c.register_start(req).await?.into_inner();
        self.saw(&start);
        let keys = start.fleet.context("fleet keys")?;
        let answer = RegisterStartAnswer {
            response: &start.registration_response,
            nonce: &start.registration_nonce,
            generation: Generation(start.generation),
        };
        let out = state.finish(
            &mut OsRng,
            password,
            &answer,
            who,
            &self.fleet,
            &keys.hpke_public_key,
            &self.ksf,
            max_attempts,
            k,
        )?;
        ensure!(out.server_public_key == keys.opaque_public_key);
        let req = RegisterFinishRequest {
            user_id: who.as_str().into(),
            sealed_registration: out.sealed.clone(),
            request_id: new_id(),
            ..Default::default()
        };
        self.saw(&req);
        let done = c.register_finish(req).await?.into_inner();
        self.saw(&done);
        Ok((out, done.generation))
    }

    async fn recover_start(
        &mut self,
        c: &mut FrontendClient<Channel>,
        who: &UserId,
        password: &[u8],
        request_id: &[u8],
    ) -> Result<(Login, Vec<u8>, RecoverStartReply), tonic::Status> {
        let (login, ke1) = Login::start(&mut OsRng, password).expect("login start");
        let reply = self.recover_start_with(c, who, &ke1, request_id).await?;
        Ok((login, ke1, reply))
    }

    async fn recover_start_with(
        &mut self,
        c: &mut FrontendClient<Channel>,
        who: &UserId,
        ke1: &[u8],
        request_id: &[u8],
    ) -> Result<RecoverStartReply, tonic::Status> {
        let req = RecoverStartRequest {
            user_id: who.as_str().into(),
            ke1: ke1.to_vec(),
            request_id: request_id.to_vec(),
        };
        self.saw(&req);
        let reply = c.recover_start(req).await?.into_inner();
        self.saw(&reply);
        Ok(reply)
    }

    /// A whole recovery on node `c`; returns K and the export key.
    async fn recover(
        &mut self,
        c: &mut FrontendClient<Channel>,
        who: &UserId,
        password: &[u8],
    ) -> anyhow::Result<([u8; 32], Vec<u8>)> {
        let (login, _, start) = self.recover_start(c, who, password, &new_id()).await?;
        let ok = login.finish(
            &mut OsRng,
            password,
            &start.ke2,
            who,
            &self.fleet,
            &self.ksf,
        )?;
        let req = RecoverFinishRequest {
            session_id: start.session_id,
            ke3: ok.ke3.clone(),
        };
        self.saw(&req);
        let fin = c.recover_finish(req).await?.into_inner();
        self.saw(&fin);
        let k = ok.open(&fin.sealed_key, who)?;
        Ok((*k, ok.export_key().to_vec()))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn right_password_recovers_exactly_k_and_the_backup_decrypts(template: &Template) -> TestResult {
    let fleet = started(template)?;
    let result = (|| {
        let rt = rt();
        let _entered = rt.enter();
        let client = fleet.client()?;
        let alice = user("alice");
        let k = rt.block_on(client.register(&alice, b"correct horse battery", 5))?;
        let again = rt.block_on(client.recover(&alice, b"correct horse battery"))?;
        ensure!(*again == *k, "recovered a different key");
        // A backup made with K opens with the recovered K, and only with it.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut sealed = Vec::new();
        vault_client::backup::encrypt(&k, &data[..], &mut sealed)?;
        let mut opened = Vec::new();
        vault_client::backup::decrypt(&again, &sealed[..], &mut opened)?;
        ensure!(opened == data);
        ensure!(vault_client::backup::decrypt(&[0u8; 32], &sealed[..], &mut Vec::new()).is_err());
        // The success's reset may land just after its answer (it was not
        // the last attempt: docs/PROTOCOL.md §5).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match rt.block_on(client.status(&alice))? {
                Status::Active {
                    attempts_left: 5,
                    max_attempts: 5,
                    ..
                } => break,
                Status::Active {
                    attempts_left: 4, ..
                } if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => bail!("status after a success: {other:?}"),
            }
        }

        // The same through vaultctl, with its exit codes.
        let dir = fleet.dir();
        let key1 = dir.join("bob.key");
        let key2 = dir.join("bob2.key");
        let out = fleet.vaultctl_stdin(
            &[
                "register",
                "--user",
                "bob",
                "--password-stdin",
                "--max-attempts",
                "2",
                "--key-out",
                key1.to_str().context("path")?,
            ],
            "s3cret\n",
        )?;
        ensure!(
            out.status.success(),
            "register: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = fleet.vaultctl_stdin(
            &[
                "recover",
                "--user",
                "bob",
                "--password-stdin",
                "--key-out",
                key2.to_str().context("path")?,
            ],
            "s3cret\n",
        )?;
        ensure!(
            out.status.success(),
            "recover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            std::fs::read(&key1)? == std::fs::read(&key2)?,
            "vaultctl recovered another key"
        );
        let plain = dir.join("plain.bin");
        std::fs::write(&plain, &data)?;
        let enc = dir.join("plain.bkv");
        let dec = dir.join("plain.out");
        fleet.vaultctl_ok(&[
            "backup",
            "encrypt",
            "--key-file",
            key1.to_str().context("p")?,
            "--in",
            plain.to_str().context("p")?,
            "--out",
            enc.to_str().context("p")?,
        ])?;
        fleet.vaultctl_ok(&[
            "backup",
            "decrypt",
            "--key-file",
            key2.to_str().context("p")?,
            "--in",
            enc.to_str().context("p")?,
            "--out",
            dec.to_str().context("p")?,
        ])?;
        ensure!(std::fs::read(&dec)? == data);
        let out =
            fleet.vaultctl_stdin(&["recover", "--user", "bob", "--password-stdin"], "nope\n")?;
        ensure!(
            out.status.code() == Some(3),
            "wrong password exit {:?}",
            out.status
        );
        ensure!(String::from_utf8_lossy(&out.stderr).contains("1 attempts left"));
        let out =
            fleet.vaultctl_stdin(&["recover", "--user", "nobody", "--password-stdin"], "x\n")?;
        ensure!(
            out.status.code() == Some(5),
            "unknown user exit {:?}",
            out.status
        );
        let out =
            fleet.vaultctl_stdin(&["recover", "--user", "bob", "--password-stdin"], "nope\n")?;
        ensure!(out.status.code() == Some(3));
        let out = fleet.vaultctl_stdin(
            &["recover", "--user", "bob", "--password-stdin"],
            "s3cret\n",
        )?;
        ensure!(out.status.code() == Some(4), "locked exit {:?}", out.status);
        Ok(())
    })();
    fleet.with_logs(result)
}

fn wrong_passwords_lock_the_record_and_a_success_resets_the_count(
    template: &Template,
) -> TestResult {
    let fleet = started(template)?;
    let result = (|| {
        let rt = rt();
        let _entered = rt.enter();
        let client = fleet.client()?;
        let carol = user("carol");
        let k = rt.block_on(client.register(&carol, b"right", 3))?;
        let wrong = |left: u32| -> TestResult {
            match rt.block_on(client.recover(&carol, b"wrong")) {
                Err(ClientError::WrongPassword { attempts_left }) if attempts_left == left => {
                    Ok(())
                }
                other => bail!("expected WrongPassword({left}), got {other:?}"),
            }
        };
        wrong(2)?;
        wrong(1)?;
        // One success in between restores the whole budget.
        ensure!(*rt.block_on(client.recover(&carol, b"right"))? == *k);
        wrong(2)?;
        wrong(1)?;
        wrong(0)?;
        match rt.block_on(client.recover(&carol, b"right")) {
            Err(ClientError::Locked) => {}
            other => bail!("after max_attempts wrong passwords: {other:?}"),
        }
        match rt.block_on(client.status(&carol))? {
            Status::Locked { .. } => {}
            other => bail!("status: {other:?}"),
        }
        // Registering again starts a new generation with a new key.
        let k2 = rt.block_on(client.register(&carol, b"right", 3))?;
        ensure!(*rt.block_on(client.recover(&carol, b"right"))? == *k2);
        // Deleted is gone for good.
        rt.block_on(client.delete(&carol))?;
        match rt.block_on(client.recover(&carol, b"right")) {
            Err(ClientError::NotFound) => Ok(()),
            other => bail!("after delete: {other:?}"),
        }
    })();
    fleet.with_logs(result)
}

fn re_registration_bumps_the_generation_and_an_old_session_cannot_finish(
    template: &Template,
) -> TestResult {
    let fleet = started(template)?;
    let result = rt().block_on(async {
        let mut c = fleet.frontend(2).await?;
        let mut app = App::new(&fleet);
        let dave = user("dave");
        let (_, g1) = app.register(&mut c, &dave, b"pw", &[1; 32], 5).await?;
        let (login, _, start) = app.recover_start(&mut c, &dave, b"pw", &new_id()).await?;
        ensure!(start.generation == g1);
        let (_, g2) = app.register(&mut c, &dave, b"pw", &[2; 32], 5).await?;
        ensure!(g2 == g1 + 1, "generation {g1} then {g2}");
        let ok = login.finish(&mut OsRng, b"pw", &start.ke2, &dave, &app.fleet, &app.ksf)?;
        let r = c
            .recover_finish(RecoverFinishRequest {
                session_id: start.session_id,
                ke3: ok.ke3.clone(),
            })
            .await;
        match r {
            Err(s) if kind(&s) == Kind::SessionExpired => {}
            other => bail!("an old-generation session finished: {other:?}"),
        }
        // The new generation answers with the new key.
        let (k, _) = app.recover(&mut c, &dave, b"pw").await?;
        ensure!(k == [2; 32]);
        // A session id from nowhere, or used twice, is expired.
        let r = c
            .recover_finish(RecoverFinishRequest {
                session_id: vec![7; 16],
                ke3: ok.ke3,
            })
            .await;
        ensure!(
            matches!(r, Err(ref s) if kind(s) == Kind::SessionExpired),
            "{r:?}"
        );
        Ok(())
    });
    fleet.with_logs(result)
}

fn a_retried_recover_start_costs_one_attempt_and_another_ke1_is_refused(
    template: &Template,
) -> TestResult {
    let fleet = started(template)?;
    let result = rt().block_on(async {
        let mut c1 = fleet.frontend(1).await?;
        let mut c3 = fleet.frontend(3).await?;
        let mut app = App::new(&fleet);
        let erin = user("erin");
        app.register(&mut c1, &erin, b"pw", &[3; 32], 4).await?;
        let id = new_id();
        let (login, ke1, first) = app.recover_start(&mut c1, &erin, b"pw", &id).await?;
        ensure!(first.attempts_left == 3);
        // The same id and KE1 again, even on another node: the same
        // attempt, no second one consumed.
        let again = app.recover_start_with(&mut c3, &erin, &ke1, &id).await?;
        ensure!(
            again.attempts_left == 3,
            "a retry consumed an attempt: {}",
            again.attempts_left
        );
        let status = c1
            .status(UserStatusRequest {
                user_id: "erin".into(),
            })
            .await?
            .into_inner();
        ensure!(
            status.attempts_left == 3,
            "status says {}",
            status.attempts_left
        );
        // The same id with another KE1 (another guess) is refused.
        let (_, other_ke1) = Login::start(&mut OsRng, b"guess")?;
        match app
            .recover_start_with(&mut c1, &erin, &other_ke1, &id)
            .await
        {
            Err(s)
                if s.code() == tonic::Code::InvalidArgument
                    && kind(&s) == Kind::InvalidArgument => {}
            other => bail!("a reused request id with a new KE1 got {other:?}"),
        }
        // The retried session works where it was made.
        let ok = login.finish(&mut OsRng, b"pw", &again.ke2, &erin, &app.fleet, &app.ksf)?;
        let fin = c3
            .recover_finish(RecoverFinishRequest {
                session_id: again.session_id,
                ke3: ok.ke3.clone(),
            })
            .await?
            .into_inner();
        ensure!(*ok.open(&fin.sealed_key, &erin)? == [3; 32]);
        Ok(())
    });
    fleet.with_logs(result)
}

fn recovery_works_after_the_leader_that_took_the_registration_is_killed(
    template: &Template,
) -> TestResult {
    let mut fleet = started(template)?;
    let result = (|| {
        let rt = rt();
        let _entered = rt.enter();
        let leader = fleet.wait_leader(&[1, 2, 3], CONVERGE)?;
        let client = fleet.client()?;
        let frank = user("frank");
        let k = rt.block_on(client.register(&frank, b"pw", 5))?;
        fleet.kill(leader)?;
        let rest: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
        fleet.wait_leader(&rest, Duration::from_secs(10))?;
        // The client tries the nodes in turn; the dead one is skipped.
        let again = rt.block_on(client.recover(&frank, b"pw"))?;
        ensure!(*again == *k, "recovered another key after the failover");
        Ok(())
    })();
    fleet.with_logs(result)
}

fn a_relaying_frontend_and_the_disks_never_see_the_apps_secrets(template: &Template) -> TestResult {
    let mut fleet = started(template)?;
    let result = (|| {
        let rt = rt();
        let password = b"a long and unusual passphrase 8713";
        let k = [0x4bu8; 32];
        let (out, export_key, relayed) = rt.block_on(async {
            let mut c = fleet.frontend(1).await?;
            let mut app = App::new(&fleet);
            let gina = user("gina");
            let (out, _) = app.register(&mut c, &gina, password, &k, 5).await?;
            let (k2, export_key) = app.recover(&mut c, &gina, password).await?;
            ensure!(k2 == k);
            anyhow::Ok((out, export_key, app.relayed))
        })?;
        ensure!(
            export_key == *out.export_key,
            "login and registration export keys differ"
        );
        let secrets: [(&str, &[u8]); 5] = [
            ("K", &k),
            ("the password", password),
            ("the export key", &export_key),
            ("the registration record", &out.upload),
            ("enc_K", &out.enc_k),
        ];
        let all: Vec<u8> = relayed.concat();
        ensure!(
            all.len() > 500,
            "the recorder saw too little ({} bytes)",
            all.len()
        );
        for (name, secret) in secrets {
            ensure!(!contains(&all, secret), "{name} crossed the frontend");
        }
        // Stop the nodes so everything is flushed, then read every byte
        // they keep.
        for id in 1..=3 {
            fleet.terminate(id, Duration::from_secs(15))?;
        }
        for id in 1..=3 {
            let disk = fleet.disk_and_logs(id)?;
            ensure!(
                disk.len() > 10_000,
                "node {id} keeps suspiciously little ({} bytes)",
                disk.len()
            );
            for (name, secret) in secrets {
                ensure!(
                    !contains(&disk, secret),
                    "{name} is on node {id}'s disk or in its log"
                );
            }
        }
        Ok(())
    })();
    fleet.with_logs(result)
}

fn malformed_and_oversized_inputs_are_invalid_and_the_node_keeps_serving(
    template: &Template,
) -> TestResult {
    let fleet = started(template)?;
    let result = rt().block_on(async {
        let mut c = fleet.frontend(2).await?;
        let mut app = App::new(&fleet);
        let hank = user("hank");
        app.register(&mut c, &hank, b"pw", &[5; 32], 5).await?;
        let big = vec![0xa5u8; 4096];
        let id = new_id();
        let mut outcomes: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();
        macro_rules! call {
            ($name:expr, $e:expr) => {
                outcomes.push(($name, $e.await.map(drop)))
            };
        }
        call!(
            "RegisterStart bad user",
            c.register_start(RegisterStartRequest {
                user_id: "".into(),
                registration_request: vec![1; 32]
            })
        );
        call!(
            "RegisterStart long user",
            c.register_start(RegisterStartRequest {
                user_id: "u".repeat(5000),
                registration_request: vec![1; 32]
            })
        );
        call!(
            "RegisterStart junk",
            c.register_start(RegisterStartRequest {
                user_id: "hank".into(),
                registration_request: vec![0xff; 32]
            })
        );
        call!(
            "RegisterStart oversized",
            c.register_start(RegisterStartRequest {
                user_id: "hank".into(),
                registration_request: big.clone()
            })
        );
        call!(
            "RegisterFinish junk",
            c.register_finish(RegisterFinishRequest {
                user_id: "hank".into(),
                sealed_registration: vec![1; 100],
                request_id: id.clone(),
                ..Default::default()
            })
        );
        call!(
            "RegisterFinish oversized",
            c.register_finish(RegisterFinishRequest {
                user_id: "hank".into(),
                sealed_registration: big.clone(),
                request_id: id.clone(),
                ..Default::default()
            })
        );
        call!(
            "RegisterFinish short id",
            c.register_finish(RegisterFinishRequest {
                user_id: "hank".into(),
                sealed_registration: vec![1; 100],
                request_id: vec![1; 3],
                ..Default::default()
            })
        );
        // Protocol v1's budget outside the seal is refused.
        let mut v1 = RegisterFinishRequest {
            user_id: "hank".into(),
            sealed_registration: vec![1; 100],
            request_id: id.clone(),
            ..Default::default()
        };
        #[expect(deprecated, reason = "the v1 field is what is tested")]
        {
            v1.max_attempts = 1000;
        }
        call!(
            "RegisterFinish with the v1 budget field",
            c.register_finish(v1)
        );
        call!(
            "RecoverStart junk KE1",
            c.recover_start(RecoverStartRequest {
                user_id: "hank".into(),
                ke1: vec![0xff; 96],
                request_id: new_id()
            })
        );
        call!(
            "RecoverStart oversized KE1",
            c.recover_start(RecoverStartRequest {
                user_id: "hank".into(),
                ke1: big.clone(),
                request_id: new_id()
            })
        );
        call!(
            "RecoverStart no id",
            c.recover_start(RecoverStartRequest {
                user_id: "hank".into(),
                ke1: vec![1; 96],
                request_id: vec![]
            })
        );
        call!(
            "RecoverFinish oversized KE3",
            c.recover_finish(RecoverFinishRequest {
                session_id: vec![1; 16],
                ke3: big.clone()
            })
        );
        call!(
            "RecoverFinish bad session",
            c.recover_finish(RecoverFinishRequest {
                session_id: vec![1; 3],
                ke3: vec![1; 64]
            })
        );
        call!(
            "Status bad user",
            c.status(UserStatusRequest {
                user_id: "bad user\n".into()
            })
        );
        call!(
            "Delete no id",
            c.delete(DeleteRequest {
                user_id: "hank".into(),
                request_id: vec![]
            })
        );
        for (name, outcome) in &outcomes {
            match outcome {
                Err(s)
                    if s.code() == tonic::Code::InvalidArgument
                        && kind(s) == Kind::InvalidArgument => {}
                other => bail!("{name}: expected InvalidArgument, got {other:?}"),
            }
        }
        // KE1 is parsed before an attempt is committed: junk costs none.
        let s = c
            .status(UserStatusRequest {
                user_id: "hank".into(),
            })
            .await?
            .into_inner();
        ensure!(
            s.attempts_left == 5,
            "malformed calls consumed attempts: {} left",
            s.attempts_left
        );
        // The node still serves.
        c.get_fleet_bundle(GetFleetBundleRequest {}).await?;
        let (k, _) = app.recover(&mut c, &hank, b"pw").await?;
        ensure!(k == [5; 32]);
        Ok(())
    });
    fleet.with_logs(result)
}
