//! A small pool of PKCS#11 sessions, each used by one thread at a time.

use std::sync::{Condvar, Mutex};

use cryptoki::error::RvError;
use cryptoki::session::Session;

use crate::error::{DeviceError, HsmError, OpenError};
use crate::pkcs11::token::Token;
use crate::secret::SecretBytes;

/// Open, logged-in sessions. A caller takes one out, uses it on its own
/// thread and puts it back, so no session is ever shared between threads.
pub(crate) struct SessionPool {
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
}

impl SessionPool {
    /// Opens `size` sessions and logs the user in.
    pub(crate) fn open(token: &Token, pin: &SecretBytes, size: usize) -> Result<Self, OpenError> {
        let mut idle = Vec::with_capacity(size.max(1));
        for _ in 0..size.max(1) {
            let session = token.session(false)?;
            // Login belongs to the application: the first login covers every
            // session; later ones answer "already logged in", which is fine.
            token.login_user(&session, pin)?;
            idle.push(session);
        }
        Ok(SessionPool {
            idle: Mutex::new(idle),
            returned: Condvar::new(),
        })
    }

    /// Runs `f` with a session of its own. A session that the module says is
    /// gone is replaced by a freshly opened, logged-in one.
    pub(crate) fn with<T>(
        &self,
        token: &Token,
        pin: &SecretBytes,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let session = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(s) = idle.pop() {
                    break s;
                }
                idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = f(&session);
        let session = if session_gone(&result) {
            Self::reopen(token, pin).unwrap_or(session)
        } else {
            session
        };
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
        self.returned.notify_one();
        result
    }

    fn reopen(token: &Token, pin: &SecretBytes) -> Option<Session> {
        let session = token.session(false).ok()?;
        token.login_user(&session, pin).ok()?;
        Some(session)
    }
}

/// Whether `result` says the session is gone (closed, invalid, or logged
/// out): worth one reopen and retry.
pub(crate) fn session_gone<T>(result: &Result<T, HsmError>) -> bool {
    matches!(
        result,
        Err(HsmError::Device(DeviceError {
            rv: Some(
                RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::UserNotLoggedIn
            ),
            ..
        }))
    )
}
