//! Loading a PKCS#11 module once per process and finding a token by label.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;
use secrecy::SecretBox;

use crate::error::{DeviceError, OpenError};
use crate::report::TokenReport;
use crate::secret::SecretBytes;

/// Loaded modules, kept for the life of the process. PKCS#11 allows one
/// `C_Initialize` per process, and finalising one handle would pull the rug
/// from every other user of the same module, so handles are shared and
/// never finalised.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// Loads and initialises `path`, or returns the handle loaded before.
pub(crate) fn load_module(path: &Path) -> Result<Pkcs11, OpenError> {
    if !path.is_file() {
        return Err(OpenError::ModuleNotFound {
            path: path.to_owned(),
        });
    }
    let modules = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut modules = modules.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let load_err = |e: CkError| OpenError::ModuleLoad {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let ctx = Pkcs11::new(path).map_err(load_err)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(load_err(e)),
    }
    modules.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// One token of a loaded module, found by its label.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) ctx: Pkcs11,
    pub(crate) slot: Slot,
    pub(crate) label: String,
}

impl Token {
    /// Finds the initialised token labelled `label` in the module at `module`.
    pub(crate) fn find(module: &Path, label: &str) -> Result<Token, OpenError> {
        let ctx = load_module(module)?;
        let slots = ctx
            .get_slots_with_initialized_token()
            .map_err(|e| DeviceError::from_cryptoki("list token slots", e))?;
        let mut available = Vec::new();
        for slot in slots {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| DeviceError::from_cryptoki("read token info", e))?;
            let found = info.label().trim_end();
            if found == label {
                return Ok(Token {
                    ctx,
                    slot,
                    label: label.to_owned(),
                });
            }
            available.push(found.to_owned());
        }
        Err(OpenError::TokenNotFound {
            label: label.to_owned(),
            module: module.to_owned(),
            available,
        })
    }

    /// Opens a session; `rw` for one that may create or destroy objects.
    pub(crate) fn session(&self, rw: bool) -> Result<Session, DeviceError> {
        let opened = if rw {
            self.ctx.open_rw_session(self.slot)
        } else {
            self.ctx.open_ro_session(self.slot)
        };
        opened.map_err(|e| DeviceError::from_cryptoki("open session", e))
    }

    /// Logs the user in. PKCS#11 login state belongs to the application, not
    /// the session, so "already logged in" is success.
    pub(crate) fn login_user(&self, session: &Session, pin: &SecretBytes) -> Result<(), OpenError> {
        self.login(session, UserType::User, pin)
    }

    /// Logs the security officer in.
    pub(crate) fn login_so(&self, session: &Session, pin: &SecretBytes) -> Result<(), OpenError> {
        self.login(session, UserType::So, pin)
    }

    fn login(&self, session: &Session, who: UserType, pin: &SecretBytes) -> Result<(), OpenError> {
        let raw: RawAuthPin = SecretBox::new(Box::new(pin.expose().to_vec()));
        match session.login_with_raw(who, &raw) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(OpenError::WrongPin {
                label: self.label.clone(),
            }),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(OpenError::PinLocked {
                label: self.label.clone(),
            }),
            Err(e) => Err(DeviceError::from_cryptoki("log in", e).into()),
        }
    }

    /// The token's identity.
    pub(crate) fn report(&self) -> Result<TokenReport, DeviceError> {
        let info = self
            .ctx
            .get_token_info(self.slot)
            .map_err(|e| DeviceError::from_cryptoki("read token info", e))?;
        Ok(TokenReport {
            label: info.label().trim_end().to_owned(),
            manufacturer: info.manufacturer_id().trim_end().to_owned(),
            model: info.model().trim_end().to_owned(),
            serial: info.serial_number().trim_end().to_owned(),
            firmware: info.firmware_version().to_string(),
            hardware: info.hardware_version().to_string(),
        })
    }
}
