//! The app side of the protocol. `ksf` is the Argon2id instance that
//! stretches the password; recovery must use the same parameters as the
//! registration did.

use hpke::{Deserializable, OpModeS, Serializable};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use rand_core::{CryptoRng, RngCore};
use vault_types::{FleetId, Generation, UserId};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{
    HpkeAead, HpkeKdf, HpkeKem, hpke_aad, identifiers, open_answer, unwrap_key, wrap_key,
};
use crate::formats::RegisterPayload;
use crate::suite::Suite;
use crate::{
    CONTEXT, HPKE_INFO, KE2_LEN, KEY_LEN, NONCE_LEN, ProtocolError, REGISTRATION_RESPONSE_LEN,
};

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
    /// The request sent, sealed back so the node can check the answer.
    request: Vec<u8>,
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
        let request = started.message.serialize().to_vec();
        Ok((
            Registration {
                state: started.state,
                request: request.clone(),
            },
            request,
        ))
    }

    /// Finishes it with `RegisterStart`'s answer: wraps `k` under the
    /// export key and seals `{upload, enc_K, n, g, max_attempts}` to the
    /// fleet's HPKE key, so the frontend can change none of it.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is a distinct protocol input"
    )]
    pub fn finish(
        self,
        rng: &mut (impl CryptoRng + RngCore),
        password: &[u8],
        answer: &RegisterStartAnswer<'_>,
        user: &UserId,
        fleet: &FleetId,
        fleet_hpke_pk: &[u8],
        ksf: &argon2::Argon2<'static>,
        max_attempts: u32,
        k: &[u8; KEY_LEN],
    ) -> Result<RegistrationOutput, ProtocolError> {
        let response = RegistrationResponse::<Suite>::deserialize(exactly(
            answer.response,
            REGISTRATION_RESPONSE_LEN,
            "registration response",
        )?)
        .map_err(|_| ProtocolError::Malformed("registration response"))?;
        let nonce: [u8; NONCE_LEN] = answer
            .nonce
            .try_into()
            .map_err(|_| ProtocolError::Malformed("registration nonce"))?;
        if max_attempts == 0 {
            return Err(ProtocolError::Malformed("max_attempts"));
        }
        let params = ClientRegistrationFinishParameters::new(identifiers(user, fleet), Some(ksf));
        let mut done = self
            .state
            .finish(rng, password, response, params)
            .map_err(|_| ProtocolError::Malformed("registration response"))?;
        let enc_k = wrap_key(rng, &done.export_key, user, k);
        let export_key = Zeroizing::new(done.export_key.to_vec());
        done.export_key.as_mut_slice().zeroize();
        let payload = RegisterPayload {
            request: self.request.clone(),
            response: answer.response.to_vec(),
            upload: done.message.serialize().to_vec(),
            enc_k: enc_k.clone(),
            nonce,
            generation: answer.generation,
            max_attempts,
        };
        let pk = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(fleet_hpke_pk)
            .map_err(|_| ProtocolError::Malformed("fleet HPKE key"))?;
        let (encapped, ct) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, HpkeKem, _>(
            &OpModeS::Base,
            &pk,
            HPKE_INFO,
            &payload.encode()?,
            &hpke_aad(fleet, user),
            rng,
        )
        .map_err(|_| ProtocolError::Internal("HPKE seal"))?;
        let mut sealed = encapped.to_bytes().to_vec();
        sealed.extend_from_slice(&ct);
        Ok(RegistrationOutput {
            sealed,
            server_public_key: done.server_s_pk.serialize().to_vec(),
            export_key,
            upload: Zeroizing::new(payload.upload.clone()),
            enc_k: Zeroizing::new(enc_k),
        })
    }
}

/// What `RegisterStart` answered, as the app passes it to
/// [`Registration::finish`].
#[derive(Clone, Copy, Debug)]
pub struct RegisterStartAnswer<'a> {
    /// The OPAQUE `RegistrationResponse` (64 bytes).
    pub response: &'a [u8],
    /// The registration nonce `n` (32 bytes), sealed back unchanged.
    pub nonce: &'a [u8],
    /// The user's current generation (0: never registered), sealed back
    /// unchanged: the registration applies only if it is still current.
    pub generation: Generation,
}

fn exactly<'a>(bytes: &'a [u8], len: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(ProtocolError::Malformed(what))
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
        let ke2 = CredentialResponse::<Suite>::deserialize(exactly(ke2, KE2_LEN, "KE2")?)
            .map_err(|_| ProtocolError::Malformed("KE2"))?;
        let params =
            ClientLoginFinishParameters::new(Some(CONTEXT), identifiers(user, fleet), Some(ksf));
        let mut done = self
            .state
            .finish(rng, password, ke2, params)
            .map_err(|e| match e {
                opaque_ke::errors::ProtocolError::InvalidLoginError => ProtocolError::WrongPassword,
                _ => ProtocolError::Malformed("KE2"),
            })?;
        let success = LoginSuccess {
            ke3: done.message.serialize().to_vec(),
            session_key: Zeroizing::new(done.session_key.to_vec()),
            export_key: Zeroizing::new(done.export_key.to_vec()),
            server_public_key: done.server_s_pk.serialize().to_vec(),
        };
        // opaque-ke's result does not zeroize itself.
        done.session_key.as_mut_slice().zeroize();
        done.export_key.as_mut_slice().zeroize();
        Ok(success)
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
