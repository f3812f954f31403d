//! The node's steps: `RegisterStart`, `RegisterFinish`, and KE2/KE3 of a
//! recovery, over the fleet's unsealed secrets.

use hpke::{Deserializable, Kem as _, OpModeR, Serializable};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand_core::{CryptoRng, RngCore};
use vault_types::{FleetId, UserId};
use zeroize::Zeroizing;

use crate::crypto::{HpkeAead, HpkeKdf, HpkeKem, bounded, hpke_aad, identifiers, seal_answer};
use crate::formats::{RegisterPayload, StoredRecord};
use crate::suite::Suite;
use crate::{
    CONTEXT, HPKE_INFO, HPKE_PUBLIC_KEY_LEN, MAX_OPAQUE_MESSAGE, MAX_SEALED_PAYLOAD, ProtocolError,
};

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
