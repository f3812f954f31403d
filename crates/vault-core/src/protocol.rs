//! The recovery protocol's cryptography (design brief §3), both sides, with
//! no I/O: the node's server steps and the app's client steps agree here on
//! every label, identifier and byte format.
//!
//! - OPAQUE (opaque-ke, [`Suite`]): credential identifier = user id; the
//!   identities bound into the envelope and the key exchange are the user id
//!   (client) and the fleet id (server); context `bkv/v1`.
//! - `enc_K = nonce ‖ ChaCha20-Poly1305(HKDF-SHA512(export_key,
//!   "bkv/v1/backup-key-wrap"), K, aad = user id)`, made by the app.
//! - `RegisterFinish` payload `{RegistrationUpload, enc_K}` is HPKE-sealed by
//!   the app to the fleet (RFC 9180 base mode, X25519-HKDF-SHA256,
//!   HKDF-SHA256, ChaCha20-Poly1305; info `bkv/v1/register-finish`, aad =
//!   fleet id ‖ 0 ‖ user id), so the frontend relays only ciphertext.
//! - The `RecoverFinish` answer is `enc_K` under ChaCha20-Poly1305 with a key
//!   derived from the OPAQUE session key (HKDF-SHA512, info
//!   `bkv/v1/recover-response`), so the frontend cannot read even `enc_K`.
//!
//! Randomness is a parameter ([`rand_core::CryptoRng`]); the node passes one
//! seeded from its HSM, the app `OsRng`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha512;
use vault_types::{FleetId, Generation, UserId};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::opaque::Suite;

type HpkeKem = hpke::kem::X25519HkdfSha256;
type HpkeKdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;

/// OPAQUE context string of this protocol version.
pub const CONTEXT: &[u8] = b"bkv/v1";
/// HPKE `info` of the `RegisterFinish` payload.
pub const HPKE_INFO: &[u8] = b"bkv/v1/register-finish";
/// HKDF info of the key that wraps K under the OPAQUE export key.
pub const WRAP_INFO: &[u8] = b"bkv/v1/backup-key-wrap";
/// HKDF info of the key that protects the `RecoverFinish` answer.
pub const RESPONSE_INFO: &[u8] = b"bkv/v1/recover-response";

/// Largest OPAQUE message any call accepts (the largest, KE2, is 320 bytes
/// with this suite).
pub const MAX_OPAQUE_MESSAGE: usize = 512;
/// Largest HPKE-sealed `RegisterFinish` payload accepted.
pub const MAX_SEALED_PAYLOAD: usize = 2048;
/// Length of the backup key K.
pub const KEY_LEN: usize = 32;
/// Length of an HPKE X25519 public key.
pub const HPKE_PUBLIC_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const FORMAT_V1: u8 = 1;

/// A protocol step failed. The messages name the step, never a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A message does not parse, or is too large.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The password is wrong (the client saw it at KE2), or KE3 is wrong
    /// (the server saw it).
    #[error("wrong password")]
    WrongPassword,
    /// Decryption failed: the data was changed, or is for another user or
    /// key.
    #[error("{0} does not open")]
    Unauthentic(&'static str),
    /// A primitive refused its input (should not happen with valid input).
    #[error("{0} failed")]
    Internal(&'static str),
}

fn hkdf_key(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA512's output limit.
    let _ = Hkdf::<Sha512>::new(None, ikm).expand(info, key.as_mut());
    key
}

fn aead_seal(
    rng: &mut (impl CryptoRng + RngCore),
    key: &[u8; 32],
    plaintext: &[u8],
    aad: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // ChaCha20-Poly1305 encryption only fails past 256 GiB.
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

fn aead_open(
    key: &[u8; 32],
    sealed: &[u8],
    aad: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(ProtocolError::Malformed(what));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| ProtocolError::Unauthentic(what))
}

fn identifiers<'a>(user: &'a UserId, fleet: &'a FleetId) -> Identifiers<'a> {
    Identifiers {
        client: Some(user.as_str().as_bytes()),
        server: Some(fleet.as_str().as_bytes()),
    }
}

fn hpke_aad(fleet: &FleetId, user: &UserId) -> Vec<u8> {
    let mut aad = fleet.as_str().as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(user.as_str().as_bytes());
    aad
}

fn bounded<'a>(bytes: &'a [u8], max: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
    if bytes.len() > max {
        Err(ProtocolError::Malformed(what))
    } else {
        Ok(bytes)
    }
}

// ------------------------------------------------------ the two AEAD layers

/// `enc_K`: K wrapped under the OPAQUE export key (docs/PROTOCOL.md).
pub fn wrap_key(
    rng: &mut (impl CryptoRng + RngCore),
    export_key: &[u8],
    user: &UserId,
    k: &[u8; KEY_LEN],
) -> Vec<u8> {
    aead_seal(
        rng,
        &hkdf_key(export_key, WRAP_INFO),
        k,
        user.as_str().as_bytes(),
    )
}

/// K from `enc_K` and the export key.
pub fn unwrap_key(
    export_key: &[u8],
    user: &UserId,
    enc_k: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, ProtocolError> {
    let k = aead_open(
        &hkdf_key(export_key, WRAP_INFO),
        enc_k,
        user.as_str().as_bytes(),
        "wrapped key",
    )?;
    let k: [u8; KEY_LEN] = k
        .as_slice()
        .try_into()
        .map_err(|_| ProtocolError::Malformed("wrapped key"))?;
    Ok(Zeroizing::new(k))
}

/// The `RecoverFinish` answer: `enc_K` under the OPAQUE session key
/// (docs/PROTOCOL.md).
pub fn seal_answer(
    rng: &mut (impl CryptoRng + RngCore),
    session_key: &[u8],
    user: &UserId,
    enc_k: &[u8],
) -> Vec<u8> {
    aead_seal(
        rng,
        &hkdf_key(session_key, RESPONSE_INFO),
        enc_k,
        user.as_str().as_bytes(),
    )
}

/// `enc_K` from a `RecoverFinish` answer and the session key.
pub fn open_answer(
    session_key: &[u8],
    user: &UserId,
    answer: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    aead_open(
        &hkdf_key(session_key, RESPONSE_INFO),
        answer,
        user.as_str().as_bytes(),
        "recovery answer",
    )
}

// ---------------------------------------------------------------- fleet keys

/// A new fleet HPKE private key, deterministic in `seed` (32 bytes of HSM
/// randomness), serialized.
pub fn new_hpke_key(seed: [u8; 32]) -> Zeroizing<Vec<u8>> {
    let seed = Zeroizing::new(seed);
    let (sk, _) = HpkeKem::derive_keypair(seed.as_ref());
    Zeroizing::new(sk.to_bytes().to_vec())
}

/// Associated data binding a sealed fleet HPKE key to its fleet.
pub fn hpke_key_aad(fleet: &FleetId) -> Vec<u8> {
    let mut aad = b"bkv/v1/hpke-key\0".to_vec();
    aad.extend_from_slice(fleet.as_str().as_bytes());
    aad
}

/// Associated data binding a sealed user record to what it is: its fleet,
/// user and generation. A blob moved to another user or generation fails
/// to open.
pub fn record_aad(fleet: &FleetId, user: &UserId, generation: Generation) -> Vec<u8> {
    let mut aad = b"bkv/v1/record\0".to_vec();
    aad.extend_from_slice(fleet.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(user.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&generation.0.to_be_bytes());
    aad
}

/// Checks that `ke1` is a well-formed KE1, without any secret: a node
/// calls this before it commits an attempt, so junk never costs one.
pub fn check_ke1(ke1: &[u8]) -> Result<(), ProtocolError> {
    CredentialRequest::<Suite>::deserialize(bounded(ke1, MAX_OPAQUE_MESSAGE, "KE1")?)
        .map(drop)
        .map_err(|_| ProtocolError::Malformed("KE1"))
}

/// The fleet's secrets, unsealed in a node's memory: the OPAQUE server
/// setup and the HPKE private key. Zeroized on drop (by the libraries'
/// own types and [`Zeroizing`]).
pub struct FleetSecrets {
    fleet: FleetId,
    setup: ServerSetup<Suite>,
    hpke_sk: <HpkeKem as hpke::Kem>::PrivateKey,
    hpke_pk: Vec<u8>,
    opaque_pk: Vec<u8>,
}

impl std::fmt::Debug for FleetSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetSecrets {{ fleet: {:?}, .. }}", self.fleet.as_str())
    }
}

impl FleetSecrets {
    /// From the unsealed serialized server setup and HPKE private key.
    pub fn new(
        fleet: FleetId,
        setup: &[u8],
        hpke_sk: &[u8],
    ) -> Result<FleetSecrets, ProtocolError> {
        let setup = ServerSetup::<Suite>::deserialize(setup)
            .map_err(|_| ProtocolError::Malformed("server setup"))?;
        let hpke_sk = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(hpke_sk)
            .map_err(|_| ProtocolError::Malformed("HPKE private key"))?;
        let hpke_pk = HpkeKem::sk_to_pk(&hpke_sk).to_bytes().to_vec();
        let opaque_pk = setup.keypair().public().serialize().to_vec();
        Ok(FleetSecrets {
            fleet,
            setup,
            hpke_sk,
            hpke_pk,
            opaque_pk,
        })
    }

    /// The fleet id.
    pub fn fleet(&self) -> &FleetId {
        &self.fleet
    }

    /// The fleet's HPKE public key (apps seal `RegisterFinish` to it).
    pub fn hpke_public_key(&self) -> &[u8] {
        &self.hpke_pk
    }

    /// The fleet's OPAQUE server public key.
    pub fn opaque_public_key(&self) -> &[u8] {
        &self.opaque_pk
    }

    /// `RegisterStart`: the OPAQUE registration response. Stateless.
    pub fn register_start(&self, user: &UserId, request: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let request = RegistrationRequest::<Suite>::deserialize(bounded(
            request,
            MAX_OPAQUE_MESSAGE,
            "registration request",
        )?)
        .map_err(|_| ProtocolError::Malformed("registration request"))?;
        let response =
            ServerRegistration::<Suite>::start(&self.setup, request, user.as_str().as_bytes())
                .map_err(|_| ProtocolError::Malformed("registration request"))?;
        Ok(response.message.serialize().to_vec())
    }

    /// `RegisterFinish`: opens the app's HPKE-sealed payload and returns the
    /// record to seal and store (the OPAQUE password file and `enc_K`).
    pub fn register_finish(
        &self,
        user: &UserId,
        sealed: &[u8],
    ) -> Result<StoredRecord, ProtocolError> {
        let sealed = bounded(sealed, MAX_SEALED_PAYLOAD, "sealed registration")?;
        if sealed.len() < HPKE_PUBLIC_KEY_LEN {
            return Err(ProtocolError::Malformed("sealed registration"));
        }
        let (encapped, ct) = sealed.split_at(HPKE_PUBLIC_KEY_LEN);
        let encapped = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(encapped)
            .map_err(|_| ProtocolError::Malformed("sealed registration"))?;
        let plain = Zeroizing::new(
            hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
                &OpModeR::Base,
                &self.hpke_sk,
                &encapped,
                HPKE_INFO,
                ct,
                &hpke_aad(&self.fleet, user),
            )
            .map_err(|_| ProtocolError::Unauthentic("sealed registration"))?,
        );
        let payload = RegisterPayload::decode(&plain)?;
        let upload = RegistrationUpload::<Suite>::deserialize(bounded(
            &payload.upload,
            MAX_OPAQUE_MESSAGE,
            "registration upload",
        )?)
        .map_err(|_| ProtocolError::Malformed("registration upload"))?;
        let password_file = ServerRegistration::<Suite>::finish(upload);
        Ok(StoredRecord {
            password_file: password_file.serialize().to_vec(),
            enc_k: payload.enc_k.clone(),
        })
    }

    /// `RecoverStart`, after `BeginAttempt` is committed: KE2 and the login
    /// state to keep for `RecoverFinish`.
    pub fn login_start(
        &self,
        rng: &mut (impl CryptoRng + RngCore),
        user: &UserId,
        record: &StoredRecord,
        ke1: &[u8],
    ) -> Result<(Vec<u8>, ServerLoginState), ProtocolError> {
        let ke1 = CredentialRequest::<Suite>::deserialize(bounded(ke1, MAX_OPAQUE_MESSAGE, "KE1")?)
            .map_err(|_| ProtocolError::Malformed("KE1"))?;
        let password_file = ServerRegistration::<Suite>::deserialize(&record.password_file)
            .map_err(|_| ProtocolError::Malformed("stored record"))?;
        let params = ServerLoginParameters {
            context: Some(CONTEXT),
            identifiers: identifiers(user, &self.fleet),
        };
        let started = ServerLogin::start(
            rng,
            &self.setup,
            Some(password_file),
            ke1,
            user.as_str().as_bytes(),
            params,
        )
        .map_err(|_| ProtocolError::Malformed("KE1"))?;
        Ok((
            started.message.serialize().to_vec(),
            ServerLoginState {
                state: started.state,
                user: user.clone(),
                fleet: self.fleet.clone(),
            },
        ))
    }
}

/// What a node keeps between `RecoverStart` and `RecoverFinish`.
pub struct ServerLoginState {
    state: ServerLogin<Suite>,
    user: UserId,
    fleet: FleetId,
}

impl std::fmt::Debug for ServerLoginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerLoginState { .. }")
    }
}

impl ServerLoginState {
    /// Checks KE3. On success returns the answer to send: `enc_K` sealed
    /// under the session key.
    pub fn finish(
        self,
        rng: &mut (impl CryptoRng + RngCore),
        ke3: &[u8],
        enc_k: &[u8],
    ) -> Result<Vec<u8>, ProtocolError> {
        let ke3 =
            CredentialFinalization::<Suite>::deserialize(bounded(ke3, MAX_OPAQUE_MESSAGE, "KE3")?)
                .map_err(|_| ProtocolError::Malformed("KE3"))?;
        let params = ServerLoginParameters {
            context: Some(CONTEXT),
            identifiers: identifiers(&self.user, &self.fleet),
        };
        let done = self
            .state
            .finish(ke3, params)
            .map_err(|_| ProtocolError::WrongPassword)?;
        Ok(seal_answer(rng, &done.session_key, &self.user, enc_k))
    }
}

// ------------------------------------------------------------------ formats

/// What the node seals in its HSM and stores per user: the OPAQUE password
/// file and `enc_K`. Zeroized on drop.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct StoredRecord {
    /// `ServerRegistration`, serialized.
    pub password_file: Vec<u8>,
    /// The app's wrapped K.
    pub enc_k: Vec<u8>,
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredRecord { .. }")
    }
}

impl StoredRecord {
    /// Versioned bytes (the plaintext that the HSM seals).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        // Two byte strings always encode.
        Zeroizing::new(postcard::to_extend(self, vec![FORMAT_V1]).unwrap_or_default())
    }

    /// From [`StoredRecord::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<StoredRecord, ProtocolError> {
        match bytes.split_first() {
            Some((&FORMAT_V1, rest)) => {
                postcard::from_bytes(rest).map_err(|_| ProtocolError::Malformed("stored record"))
            }
            _ => Err(ProtocolError::Malformed("stored record")),
        }
    }
}

/// The plaintext of the HPKE-sealed `RegisterFinish` payload.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct RegisterPayload {
    upload: Vec<u8>,
    enc_k: Vec<u8>,
}

impl RegisterPayload {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(postcard::to_extend(self, vec![FORMAT_V1]).unwrap_or_default())
    }

    fn decode(bytes: &[u8]) -> Result<RegisterPayload, ProtocolError> {
        match bytes.split_first() {
            Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest)
                .map_err(|_| ProtocolError::Malformed("registration payload")),
            _ => Err(ProtocolError::Malformed("registration payload")),
        }
    }
}

// ------------------------------------------------------------------- client

/// The app side of the protocol. `ksf` is the Argon2id instance that
/// stretches the password; recovery must use the same parameters as the
/// registration did.
pub mod client {
    use super::*;

    /// Argon2id with `m_kib` KiB of memory, `t` passes, `p` lanes.
    pub fn argon2id(m_kib: u32, t: u32, p: u32) -> Result<argon2::Argon2<'static>, ProtocolError> {
        let params = argon2::Params::new(m_kib, t, p, Some(64))
            .map_err(|_| ProtocolError::Internal("Argon2 parameters"))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }

    /// Registration, first half: the request to send.
    pub struct Registration {
        state: ClientRegistration<Suite>,
    }

    impl Registration {
        /// Starts a registration with `password`; returns the state and the
        /// `RegistrationRequest` for `RegisterStart`.
        pub fn start(
            rng: &mut (impl CryptoRng + RngCore),
            password: &[u8],
        ) -> Result<(Registration, Vec<u8>), ProtocolError> {
            let started = ClientRegistration::<Suite>::start(rng, password)
                .map_err(|_| ProtocolError::Internal("OPAQUE registration"))?;
            Ok((
                Registration {
                    state: started.state,
                },
                started.message.serialize().to_vec(),
            ))
        }

        /// Finishes it with the server's response: wraps `k` under the export
        /// key and seals `{upload, enc_K}` to the fleet's HPKE key.
        #[expect(
            clippy::too_many_arguments,
            reason = "each is a distinct protocol input"
        )]
        pub fn finish(
            self,
            rng: &mut (impl CryptoRng + RngCore),
            password: &[u8],
            response: &[u8],
            user: &UserId,
            fleet: &FleetId,
            fleet_hpke_pk: &[u8],
            ksf: &argon2::Argon2<'static>,
            k: &[u8; KEY_LEN],
        ) -> Result<RegistrationOutput, ProtocolError> {
            let response = RegistrationResponse::<Suite>::deserialize(bounded(
                response,
                MAX_OPAQUE_MESSAGE,
                "registration response",
            )?)
            .map_err(|_| ProtocolError::Malformed("registration response"))?;
            let params =
                ClientRegistrationFinishParameters::new(identifiers(user, fleet), Some(ksf));
            let done = self
                .state
                .finish(rng, password, response, params)
                .map_err(|_| ProtocolError::Malformed("registration response"))?;
            let enc_k = wrap_key(rng, &done.export_key, user, k);
            let payload = RegisterPayload {
                upload: done.message.serialize().to_vec(),
                enc_k: enc_k.clone(),
            };
            let pk = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(fleet_hpke_pk)
                .map_err(|_| ProtocolError::Malformed("fleet HPKE key"))?;
            let (encapped, ct) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, HpkeKem, _>(
                &OpModeS::Base,
                &pk,
                HPKE_INFO,
                &payload.encode(),
                &hpke_aad(fleet, user),
                rng,
            )
            .map_err(|_| ProtocolError::Internal("HPKE seal"))?;
            let mut sealed = encapped.to_bytes().to_vec();
            sealed.extend_from_slice(&ct);
            Ok(RegistrationOutput {
                sealed,
                server_public_key: done.server_s_pk.serialize().to_vec(),
                export_key: Zeroizing::new(done.export_key.to_vec()),
                upload: Zeroizing::new(payload.upload.clone()),
                enc_k: Zeroizing::new(enc_k),
            })
        }
    }

    /// What a finished registration gives the app.
    pub struct RegistrationOutput {
        /// The HPKE-sealed payload for `RegisterFinish` (safe to relay).
        pub sealed: Vec<u8>,
        /// The server's OPAQUE public key (check it against the bundle).
        pub server_public_key: Vec<u8>,
        /// The app's secret: the OPAQUE export key.
        pub export_key: Zeroizing<Vec<u8>>,
        /// The app's secret: the OPAQUE registration upload (the record).
        pub upload: Zeroizing<Vec<u8>>,
        /// The app's secret: K wrapped under the export key.
        pub enc_k: Zeroizing<Vec<u8>>,
    }

    /// Recovery, first half: KE1.
    pub struct Login {
        state: ClientLogin<Suite>,
    }

    /// What the client has after a KE2 that its password opened.
    pub struct LoginSuccess {
        /// KE3, for `RecoverFinish`.
        pub ke3: Vec<u8>,
        session_key: Zeroizing<Vec<u8>>,
        export_key: Zeroizing<Vec<u8>>,
        /// The server's OPAQUE public key (to check against the bundle).
        pub server_public_key: Vec<u8>,
    }

    impl Login {
        /// Starts a login with `password`; returns the state and KE1.
        pub fn start(
            rng: &mut (impl CryptoRng + RngCore),
            password: &[u8],
        ) -> Result<(Login, Vec<u8>), ProtocolError> {
            let started = ClientLogin::<Suite>::start(rng, password)
                .map_err(|_| ProtocolError::Internal("OPAQUE login"))?;
            Ok((
                Login {
                    state: started.state,
                },
                started.message.serialize().to_vec(),
            ))
        }

        /// Checks KE2 with the password. A wrong password is
        /// [`ProtocolError::WrongPassword`]: the caller must not send KE3.
        pub fn finish(
            self,
            rng: &mut (impl CryptoRng + RngCore),
            password: &[u8],
            ke2: &[u8],
            user: &UserId,
            fleet: &FleetId,
            ksf: &argon2::Argon2<'static>,
        ) -> Result<LoginSuccess, ProtocolError> {
            let ke2 =
                CredentialResponse::<Suite>::deserialize(bounded(ke2, MAX_OPAQUE_MESSAGE, "KE2")?)
                    .map_err(|_| ProtocolError::Malformed("KE2"))?;
            let params = ClientLoginFinishParameters::new(
                Some(CONTEXT),
                identifiers(user, fleet),
                Some(ksf),
            );
            let done = self
                .state
                .finish(rng, password, ke2, params)
                .map_err(|e| match e {
                    opaque_ke::errors::ProtocolError::InvalidLoginError => {
                        ProtocolError::WrongPassword
                    }
                    _ => ProtocolError::Malformed("KE2"),
                })?;
            Ok(LoginSuccess {
                ke3: done.message.serialize().to_vec(),
                session_key: Zeroizing::new(done.session_key.to_vec()),
                export_key: Zeroizing::new(done.export_key.to_vec()),
                server_public_key: done.server_s_pk.serialize().to_vec(),
            })
        }
    }

    impl LoginSuccess {
        /// The app's secret: the OPAQUE export key of this login.
        pub fn export_key(&self) -> &[u8] {
            &self.export_key
        }

        /// Opens the `RecoverFinish` answer and unwraps K.
        pub fn open(
            &self,
            answer: &[u8],
            user: &UserId,
        ) -> Result<Zeroizing<[u8; KEY_LEN]>, ProtocolError> {
            let enc_k = open_answer(&self.session_key, user, answer)?;
            unwrap_key(&self.export_key, user, &enc_k)
        }

        /// The app's secret: the OPAQUE session key of this login.
        pub fn session_key(&self) -> &[u8] {
            &self.session_key
        }
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
