//! The node's steps: `RegisterStart`, `RegisterFinish`, and KE2/KE3 of a
//! recovery, over the fleet's unsealed secrets.

use hkdf::Hkdf;
use hpke::{Deserializable, Kem as _, OpModeR, Serializable};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha512;
use vault_types::{FleetId, Generation, UserId};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{
    HpkeAead, HpkeKdf, HpkeKem, credential_identifier, hpke_aad, identifiers, new_nonce,
    nonce_is_valid, seal_answer,
};
use crate::formats::{RegisterPayload, StoredRecord};
use crate::suite::Suite;
use crate::{
    CONTEXT, HPKE_INFO, HPKE_PUBLIC_KEY_LEN, KE1_LEN, KE3_LEN, NONCE_LEN, ProtocolError,
    REGISTRATION_REQUEST_LEN, SEALED_REGISTRATION_LEN,
};

/// HKDF info of the key that authenticates registration nonces.
const NONCE_KEY_INFO: &[u8] = b"bkv/v2/registration-nonce-key";

fn exactly<'a>(bytes: &'a [u8], len: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(ProtocolError::Malformed(what))
    }
}

/// Checks that `ke1` is a well-formed KE1 (96 bytes, valid points),
/// without any secret: a node calls this before it commits an attempt, so
/// junk never costs one.
pub fn check_ke1(ke1: &[u8]) -> Result<(), ProtocolError> {
    CredentialRequest::<Suite>::deserialize(exactly(ke1, KE1_LEN, "KE1")?)
        .map(drop)
        .map_err(|_| ProtocolError::Malformed("KE1"))
}

/// Checks that `ke3` has KE3's length (64 bytes, a MAC): a node calls this
/// before it takes the session, so a malformed KE3 neither ends the
/// session nor counts as a wrong password.
pub fn check_ke3(ke3: &[u8]) -> Result<(), ProtocolError> {
    exactly(ke3, KE3_LEN, "KE3").map(drop)
}

/// The fleet's secrets, unsealed in a node's memory: the OPAQUE server
/// setup, the HPKE private key, and the key that authenticates
/// registration nonces (derived from the setup). Zeroized on drop (by the
/// libraries' own types and [`Zeroizing`]).
pub struct FleetSecrets {
    fleet: FleetId,
    setup: ServerSetup<Suite>,
    hpke_sk: <HpkeKem as hpke::Kem>::PrivateKey,
    nonce_key: Zeroizing<[u8; 64]>,
    hpke_pk: Vec<u8>,
    opaque_pk: Vec<u8>,
}

impl std::fmt::Debug for FleetSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetSecrets {{ fleet: {:?}, .. }}", self.fleet.as_str())
    }
}

/// `RegisterStart`'s answer.
#[derive(Debug)]
pub struct RegisterStarted {
    /// The OPAQUE `RegistrationResponse`, under this registration's own
    /// OPRF key.
    pub response: Vec<u8>,
    /// The registration nonce `n` the app seals back.
    pub nonce: [u8; NONCE_LEN],
}

/// What `RegisterFinish` opened: the record to seal, and the
/// compare-and-set generation and budget from the app's sealed payload.
#[derive(Debug)]
pub struct OpenedRegistration {
    /// The record the node seals in its HSM.
    pub record: StoredRecord,
    /// The generation the app registers over.
    pub expected_generation: Generation,
    /// The app's budget of wrong guesses.
    pub max_attempts: u32,
}

impl FleetSecrets {
    /// From the unsealed serialized server setup and HPKE private key.
    pub fn new(
        fleet: FleetId,
        setup: &[u8],
        hpke_sk: &[u8],
    ) -> Result<FleetSecrets, ProtocolError> {
        let mut nonce_key = Zeroizing::new([0u8; 64]);
        Hkdf::<Sha512>::new(None, setup)
            .expand(NONCE_KEY_INFO, nonce_key.as_mut())
            .map_err(|_| ProtocolError::Internal("nonce key"))?;
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
            nonce_key,
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

    /// `RegisterStart` for `user`, whose current generation is
    /// `generation`: draws a fresh registration nonce `n` bound to (user,
    /// generation) and answers the OPAQUE request under the OPRF key of
    /// credential identifier `user ‖ 0x00 ‖ n`, a key no stored record
    /// has. Stateless.
    pub fn register_start(
        &self,
        rng: &mut (impl CryptoRng + RngCore),
        user: &UserId,
        generation: Generation,
        request: &[u8],
    ) -> Result<RegisterStarted, ProtocolError> {
        let request = RegistrationRequest::<Suite>::deserialize(exactly(
            request,
            REGISTRATION_REQUEST_LEN,
            "registration request",
        )?)
        .map_err(|_| ProtocolError::Malformed("registration request"))?;
        let nonce = new_nonce(rng, &self.nonce_key, user, generation);
        let response = ServerRegistration::<Suite>::start(
            &self.setup,
            request,
            &credential_identifier(user, &nonce),
        )
        .map_err(|_| ProtocolError::Malformed("registration request"))?;
        Ok(RegisterStarted {
            response: response.message.serialize().to_vec(),
            nonce,
        })
    }

    /// `RegisterFinish`: opens the app's HPKE-sealed payload, parses it
    /// strictly, checks that its nonce was issued for this user at the
    /// generation it names, and returns the record to seal with the
    /// payload's generation and budget.
    ///
    /// `newest` is the newest generation the caller knows for the user. A
    /// payload for an older one is refused as [`ProtocolError::Stale`]
    /// before the OPRF evaluation is checked: its nonce may be the live
    /// record's, and "does the claimed evaluation match" would then be an
    /// unmetered answer about the live key.
    pub fn register_finish(
        &self,
        user: &UserId,
        sealed: &[u8],
        newest: Generation,
    ) -> Result<OpenedRegistration, ProtocolError> {
        let sealed = exactly(sealed, SEALED_REGISTRATION_LEN, "sealed registration")?;
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
        if !nonce_is_valid(&self.nonce_key, user, payload.generation, &payload.nonce) {
            return Err(ProtocolError::Unauthentic("registration nonce"));
        }
        if payload.generation < newest {
            return Err(ProtocolError::Stale);
        }
        // The app built its record on the response it received. Unless that
        // is the fleet's own evaluation of the app's request under this
        // registration's key (a deterministic function of both), a relay
        // answered with an OPRF key of its own, and would test passwords
        // offline against the record: refuse it.
        let request = RegistrationRequest::<Suite>::deserialize(&payload.request)
            .map_err(|_| ProtocolError::Malformed("registration request"))?;
        let expected = ServerRegistration::<Suite>::start(
            &self.setup,
            request,
            &credential_identifier(user, &payload.nonce),
        )
        .map_err(|_| ProtocolError::Malformed("registration request"))?;
        if expected.message.serialize().as_slice() != payload.response.as_slice() {
            return Err(ProtocolError::Unauthentic("registration response"));
        }
        let upload = RegistrationUpload::<Suite>::deserialize(&payload.upload)
            .map_err(|_| ProtocolError::Malformed("registration upload"))?;
        let password_file = ServerRegistration::<Suite>::finish(upload);
        Ok(OpenedRegistration {
            record: StoredRecord {
                password_file: password_file.serialize().to_vec(),
                enc_k: payload.enc_k.clone(),
                nonce: payload.nonce,
            },
            expected_generation: payload.generation,
            max_attempts: payload.max_attempts,
        })
    }

    /// `RecoverStart`, after `BeginAttempt` is committed: KE2 (under the
    /// record's own OPRF key) and the login state to keep for
    /// `RecoverFinish`.
    pub fn login_start(
        &self,
        rng: &mut (impl CryptoRng + RngCore),
        user: &UserId,
        record: &StoredRecord,
        ke1: &[u8],
    ) -> Result<(Vec<u8>, ServerLoginState), ProtocolError> {
        let ke1 = CredentialRequest::<Suite>::deserialize(exactly(ke1, KE1_LEN, "KE1")?)
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
            &credential_identifier(user, &record.nonce),
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
    /// Checks KE3 (64 bytes; see [`check_ke3`]). On success returns the
    /// answer to send: `enc_K` sealed under the session key, which is
    /// zeroized here.
    pub fn finish(
        self,
        rng: &mut (impl CryptoRng + RngCore),
        ke3: &[u8],
        enc_k: &[u8],
    ) -> Result<Vec<u8>, ProtocolError> {
        let ke3 = CredentialFinalization::<Suite>::deserialize(exactly(ke3, KE3_LEN, "KE3")?)
            .map_err(|_| ProtocolError::Malformed("KE3"))?;
        let params = ServerLoginParameters {
            context: Some(CONTEXT),
            identifiers: identifiers(&self.user, &self.fleet),
        };
        let mut done = self
            .state
            .finish(ke3, params)
            .map_err(|_| ProtocolError::WrongPassword)?;
        let answer = seal_answer(rng, &done.session_key, &self.user, enc_k);
        done.session_key.as_mut_slice().zeroize();
        Ok(answer)
    }
}
