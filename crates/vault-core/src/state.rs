//! [`VaultState`] and `apply`.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use crate::lthash::LtHash;
use vault_types::codec::{self, CodecError, VALUE_V1};
use vault_types::{
    Command, CommandError, FleetId, GRANT_REPLAY_WINDOW_MS, Generation, MAX_PRELOAD_PER_ENTRY,
    PRELOAD_RECORD_LEN, Proposal, RequestId, Response, SealedBytes, Timestamp, UserId, UserStatus,
};

use crate::dedup::{DEFAULT_DEDUP_CAPACITY, DedupEntry, DedupTable, strip};
use crate::key::StateKey;
use crate::record::{Fleet, RecordStatus, UserRecord};

/// The replicated state of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultState {
    fleet: Option<Fleet>,
    users: BTreeMap<UserId, UserRecord>,
    dedup: DedupTable,
    /// The digest's parts, kept as the state changes so that
    /// [`VaultState::digest`] costs nothing however large the state (it
    /// answers every `Status` call): each persisted item's hash, and their
    /// sum.
    items_digest: ItemsDigest,
}

/// The state commitment ([`crate::lthash`]): an LtHash16 sum over every
/// persisted item, with each item's seed kept so that a change takes the
/// old item out and puts the new one in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ItemsDigest {
    sum: LtHash,
    items: HashMap<StateKey, [u8; 32]>,
}

impl ItemsDigest {
    /// Sets `key`'s item to `value` (`None`: the key is gone).
    fn set(&mut self, key: &StateKey, value: Option<&[u8]>) {
        if let Some(old) = self.items.remove(key) {
            self.sum.remove(&old);
        }
        if let Some(v) = value {
            let seed = LtHash::seed(&key.encode(), v);
            self.sum.add(&seed);
            self.items.insert(key.clone(), seed);
        }
    }

    fn digest(&self) -> [u8; 32] {
        self.sum.checksum()
    }
}

/// What applying one proposal did: the reply, and which persisted keys
/// changed with their new encoded value (write it, or delete the key when
/// it is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The reply for the client.
    pub reply: Result<Response, CommandError>,
    /// Keys whose value changed, and their new [`VaultState::value`].
    pub changed: Vec<(StateKey, Option<Vec<u8>>)>,
}

/// [`Applied`] before the changed keys' values are encoded.
struct Executed {
    reply: Result<Response, CommandError>,
    changed: Vec<StateKey>,
}

/// Why persisted state could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A key that no state key encodes to.
    #[error("unknown state key {0:02x?}")]
    UnknownKey(Vec<u8>),
    /// A value that does not decode.
    #[error("state value for {key:?}: {source}")]
    Value {
        /// Its key.
        key: StateKey,
        /// Why.
        source: CodecError,
    },
}

impl Default for VaultState {
    fn default() -> Self {
        VaultState::with_dedup_capacity(DEFAULT_DEDUP_CAPACITY)
    }
}

impl VaultState {
    /// An empty state whose dedup table keeps `capacity` request ids.
    pub fn with_dedup_capacity(capacity: usize) -> Self {
        VaultState {
            fleet: None,
            users: BTreeMap::new(),
            dedup: DedupTable::new(capacity),
            items_digest: ItemsDigest::default(),
        }
    }

    /// The fleet settings, once initialised.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    /// One user's record.
    pub fn user(&self, user: &UserId) -> Option<&UserRecord> {
        self.users.get(user)
    }

    /// The KEK version the fleet's secrets are sealed under (new records
    /// are sealed under it too), if the fleet exists.
    pub fn fleet_kek_version(&self) -> Option<u32> {
        self.fleet
            .as_ref()
            .and_then(|f| vault_types::sealed_kek_version(&f.sealed_server_setup.0))
    }

    /// How many live blobs (the fleet's two secrets, every active record)
    /// name each KEK version. Bytes that are not a sealed blob (`Preload`'s
    /// synthetic records) are counted under `None`. Tombstones hold no
    /// material.
    pub fn blobs_by_kek_version(&self) -> BTreeMap<Option<u32>, u64> {
        let mut out = BTreeMap::new();
        if let Some(f) = &self.fleet {
            for b in [&f.sealed_server_setup, &f.sealed_hpke_key] {
                *out.entry(vault_types::sealed_kek_version(&b.0))
                    .or_default() += 1;
            }
        }
        for r in self.users.values() {
            if let RecordStatus::Active { sealed_record, .. } = &r.status {
                *out.entry(vault_types::sealed_kek_version(&sealed_record.0))
                    .or_default() += 1;
            }
        }
        out
    }

    /// Up to `max` active records sealed under a KEK version other than
    /// `version` (and not synthetic), in user order from `after`
    /// (exclusive): what a rotation re-seals next.
    pub fn records_not_under(
        &self,
        version: u32,
        after: Option<&UserId>,
        max: usize,
    ) -> Vec<(UserId, Generation, SealedBytes)> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.users
            .range::<UserId, _>((start, Bound::Unbounded))
            .filter_map(|(u, r)| match &r.status {
                RecordStatus::Active { sealed_record, .. }
                    if vault_types::sealed_kek_version(&sealed_record.0)
                        .is_some_and(|v| v != version) =>
                {
                    Some((u.clone(), r.generation, sealed_record.clone()))
                }
                _ => None,
            })
            .take(max)
            .collect()
    }

    /// Number of user records, tombstones included.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// What `Status(user)` answers.
    pub fn status(&self, user: &UserId) -> UserStatus {
        match self.users.get(user) {
            None => UserStatus::Unknown,
            Some(r) => match &r.status {
                RecordStatus::Active {
                    max_attempts,
                    attempts_used,
                    ..
                } => UserStatus::Active {
                    generation: r.generation,
                    attempts_left: max_attempts.saturating_sub(*attempts_used),
                    max_attempts: *max_attempts,
                },
                RecordStatus::Locked { .. } => UserStatus::Locked {
                    generation: r.generation,
                },
                RecordStatus::Deleted { .. } => UserStatus::Deleted {
                    generation: r.generation,
                },
            },
        }
    }

    /// Applies the proposal at log `position` ([`crate::log_position`]:
    /// unique and increasing along the log). Pure and deterministic.
    pub fn apply(&mut self, position: u64, proposal: &Proposal) -> Applied {
        let executed = self.apply_inner(position, proposal);
        // Each changed item is encoded once: for the digest and for storage.
        let changed = executed
            .changed
            .into_iter()
            .map(|key| {
                let value = self.value(&key);
                self.items_digest.set(&key, value.as_deref());
                (key, value)
            })
            .collect();
        Applied {
            reply: executed.reply,
            changed,
        }
    }

    fn apply_inner(&mut self, index: u64, proposal: &Proposal) -> Executed {
        if let Some(req) = &proposal.request
            && let Some(seen) = self.dedup.get(&req.id)
        {
            let reply = if seen.digest == req.digest {
                self.replay(&proposal.command, seen, proposal.at)
            } else {
                // Never run a different body under a known id: it could
                // carry a second password guess under one attempt.
                Err(CommandError::RequestIdReused)
            };
            return Executed {
                reply,
                changed: Vec::new(),
            };
        }
        let mut changed = Vec::new();
        let reply = self.execute(&proposal.command, proposal.at, &mut changed);
        // A registration refused for its KEK changed nothing and must be
        // able to succeed on a retry under the same id (sealed again by a
        // node that applied the rotation): not recorded.
        let record = !matches!(reply, Err(CommandError::OldKek { .. }));
        if let Some(req) = proposal.request.as_ref().filter(|_| record) {
            let evicted = self.dedup.insert(
                req.id,
                DedupEntry {
                    index,
                    digest: req.digest,
                    reply: strip(&reply),
                    at: proposal.at,
                },
            );
            changed.push(StateKey::Dedup(req.id));
            changed.extend(evicted.into_iter().map(StateKey::Dedup));
        }
        Executed { reply, changed }
    }

    /// A recorded reply, with a granted attempt's sealed record read again
    /// from the live state: if the record was erased since, the replay says
    /// so instead of handing out material that no longer exists.
    fn replay(
        &self,
        command: &Command,
        seen: &DedupEntry,
        now: Timestamp,
    ) -> Result<Response, CommandError> {
        let recorded = &seen.reply;
        // How long after its grant a replay is still answered with it: the
        // session TTL the replaying node carries (an older build's
        // `BeginAttempt`: the fixed window).
        let (user, window) = match command {
            Command::BeginAttempt { user } => (user, GRANT_REPLAY_WINDOW_MS),
            Command::BeginAttemptTtl {
                user,
                session_ttl_ms,
            } => (user, (*session_ttl_ms).min(vault_types::MAX_SESSION_TTL_MS)),
            _ => return recorded.clone(),
        };
        let Ok(Response::AttemptGranted {
            generation,
            attempts_left,
            attempt,
            ..
        }) = recorded
        else {
            return recorded.clone();
        };
        match self.users.get(user) {
            // The grant's session can only be gone: it is older than a
            // session lives, or a success forgave it since (its serial is
            // among the forgiven ones, or past the newest: a number an
            // older build counted from a success). A replay then opens no
            // login state, so replaying old request ids holds no places
            // (issue 25).
            Some(UserRecord {
                generation: g,
                status:
                    RecordStatus::Active {
                        attempts_used,
                        grants,
                        ..
                    },
                ..
            }) if g == generation
                && (now.0.saturating_sub(seen.at.0) > window
                    || *attempt > *grants
                    || *attempt <= grants.saturating_sub(*attempts_used)) =>
            {
                Err(CommandError::GrantExpired)
            }
            Some(UserRecord {
                generation: g,
                status: RecordStatus::Active { sealed_record, .. },
                ..
            }) if g == generation => Ok(Response::AttemptGranted {
                generation: *generation,
                sealed_record: sealed_record.clone(),
                attempts_left: *attempts_left,
                attempt: *attempt,
            }),
            // Its attempt was consumed, then the record locked: say so,
            // so the node can tell the caller the attempt was spent.
            Some(UserRecord {
                status: RecordStatus::Locked { of },
                ..
            }) if of == generation => Err(CommandError::LockedAfterGrant),
            Some(UserRecord {
                status: RecordStatus::Deleted { of },
                ..
            }) if of == generation => Err(CommandError::NotFound),
            Some(r) => Err(CommandError::StaleGeneration {
                current: r.generation,
                given: *generation,
            }),
            None => Err(CommandError::NotFound),
        }
    }

    fn execute(
        &mut self,
        command: &Command,
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        match command {
            Command::InitFleet {
                fleet_id,
                sealed_server_setup,
                sealed_hpke_key,
                max_attempts_cap,
            } => self.init_fleet(
                fleet_id,
                (sealed_server_setup, sealed_hpke_key),
                *max_attempts_cap,
                at,
                changed,
            ),
            Command::SetBundle { bundle, epoch } => self.set_bundle(bundle, *epoch, changed),
            Command::Preload { first, count } => self.preload(*first, *count, at, changed),
            Command::Register {
                user,
                expected_generation,
                sealed_record,
                max_attempts,
            } => self.register(
                user,
                *expected_generation,
                sealed_record,
                *max_attempts,
                at,
                changed,
            ),
            Command::BeginAttempt { user } | Command::BeginAttemptTtl { user, .. } => {
                self.begin_attempt(user, at, changed)
            }
            Command::FinishAttempt {
                user,
                generation,
                success,
            } => self.finish_attempt(user, *generation, None, *success, at, changed),
            Command::FinishGrant {
                user,
                generation,
                attempt,
                success,
            } => self.finish_attempt(user, *generation, Some(*attempt), *success, at, changed),
            Command::Delete { user } => self.delete(user, at, changed),
            Command::Reseal {
                kek_version,
                fleet,
                records,
            } => self.reseal(*kek_version, fleet.as_ref(), records, at, changed),
        }
    }

    fn reseal(
        &mut self,
        version: u32,
        fleet_secrets: Option<&(SealedBytes, SealedBytes)>,
        records: &[(UserId, Generation, SealedBytes)],
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        let refuse = |why: String| Err(CommandError::Reseal(why));
        let fleet = self
            .fleet
            .as_mut()
            .ok_or(CommandError::FleetNotInitialized)?;
        if records.len() > vault_types::MAX_RESEAL_PER_ENTRY {
            return refuse(format!("{} records in one entry", records.len()));
        }
        let under = |b: &SealedBytes| vault_types::sealed_kek_version(&b.0) == Some(version);
        if let Some((setup, hpke)) = fleet_secrets {
            if !under(setup) || !under(hpke) {
                return refuse(format!(
                    "the fleet's secrets are not sealed under KEK v{version}"
                ));
            }
            // The fleet's version only moves forward: a replayed or late
            // entry of an earlier rotation cannot bring an old KEK back.
            let current = vault_types::sealed_kek_version(&fleet.sealed_server_setup.0);
            if current.is_some_and(|c| c > version) {
                return refuse(format!(
                    "the fleet is at KEK v{} already, after v{version}",
                    current.unwrap_or_default()
                ));
            }
            fleet.sealed_server_setup = setup.clone();
            fleet.sealed_hpke_key = hpke.clone();
            changed.push(StateKey::Fleet);
        } else if vault_types::sealed_kek_version(&fleet.sealed_server_setup.0) != Some(version) {
            // Records move only once the fleet has: new registrations are
            // sealed under the fleet's version, so every record converges.
            return refuse(format!(
                "the fleet's secrets are not under KEK v{version} yet"
            ));
        }
        let (mut replaced, mut skipped) = (0u32, 0u32);
        for (user, _, sealed) in records {
            if !under(sealed) {
                return refuse(format!(
                    "a record for {user} is not sealed under KEK v{version}"
                ));
            }
        }
        for (user, generation, sealed) in records {
            match self.users.get_mut(user) {
                Some(r) if r.generation == *generation => match &mut r.status {
                    RecordStatus::Active { sealed_record, .. } => {
                        *sealed_record = sealed.clone();
                        r.updated_at = at;
                        changed.push(StateKey::User(user.clone()));
                        replaced += 1;
                    }
                    _ => skipped += 1,
                },
                _ => skipped += 1,
            }
        }
        Ok(Response::Resealed {
            records: replaced,
            skipped,
            fleet: fleet_secrets.is_some(),
        })
    }

    fn init_fleet(
        &mut self,
        fleet_id: &FleetId,
        (sealed_server_setup, sealed_hpke_key): (&SealedBytes, &SealedBytes),
        cap: u32,
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        if self.fleet.is_some() {
            return Err(CommandError::FleetAlreadyInitialized);
        }
        if cap == 0 {
            return Err(CommandError::MaxAttemptsOutOfRange {
                requested: 0,
                cap: u32::MAX,
            });
        }
        self.fleet = Some(Fleet {
            fleet_id: fleet_id.clone(),
            sealed_server_setup: sealed_server_setup.clone(),
            sealed_hpke_key: sealed_hpke_key.clone(),
            max_attempts_cap: cap,
            bundle: None,
            created_at: at,
        });
        changed.push(StateKey::Fleet);
        Ok(Response::FleetInitialized {
            fleet_id: fleet_id.clone(),
        })
    }

    fn set_bundle(
        &mut self,
        bundle: &[u8],
        epoch: u64,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        let fleet = self
            .fleet
            .as_mut()
            .ok_or(CommandError::FleetNotInitialized)?;
        // Each bundle follows the one before: an epoch that jumps ahead
        // (u64::MAX, say) would leave no room for the next one and strand
        // apps pinned to the chain.
        let current = fleet.bundle.as_ref().map_or(0, |(e, _)| *e);
        if Some(epoch) != current.checked_add(1) {
            return Err(CommandError::EpochNotNext {
                current,
                given: epoch,
            });
        }
        fleet.bundle = Some((epoch, bundle.to_vec()));
        changed.push(StateKey::Fleet);
        Ok(Response::BundleSet { epoch })
    }

    fn preload(
        &mut self,
        first: u64,
        count: u32,
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        let cap = self.max_attempts_cap()?;
        if count == 0 || count > MAX_PRELOAD_PER_ENTRY {
            return Err(CommandError::PreloadCount {
                count,
                max: MAX_PRELOAD_PER_ENTRY,
            });
        }
        let mut added = 0;
        for n in first..first.saturating_add(u64::from(count)) {
            let Ok(user) = UserId::new(format!("preload-{n:010}")) else {
                continue;
            };
            if self.users.contains_key(&user) {
                continue;
            }
            // Synthetic, deterministic bytes: every replica stores the same.
            let mut record = Vec::with_capacity(PRELOAD_RECORD_LEN);
            let mut block: [u8; 32] = Sha256::digest(user.as_str().as_bytes()).into();
            while record.len() < PRELOAD_RECORD_LEN {
                record.extend_from_slice(&block);
                block = Sha256::digest(block).into();
            }
            record.truncate(PRELOAD_RECORD_LEN);
            // Format byte 0: never taken for a sealed blob (format 1), so
            // a KEK rotation walks past synthetic records instead of
            // trying to open them (one in 256 would otherwise start with
            // a 1 and name a random KEK version).
            record[0] = 0;
            let record = SealedBytes(record);
            self.insert_active(&user, Generation(1), &record, cap, at, changed);
            added += 1;
        }
        Ok(Response::Preloaded { added })
    }

    fn register(
        &mut self,
        user: &UserId,
        expected: Generation,
        sealed_record: &SealedBytes,
        max_attempts: u32,
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        let cap = self.max_attempts_cap()?;
        if max_attempts == 0 || max_attempts > cap {
            return Err(CommandError::MaxAttemptsOutOfRange {
                requested: max_attempts,
                cap,
            });
        }
        // Compare-and-set on the generation the app sealed into its
        // payload. Generations never go back, and a lockout or a delete
        // moves them too (the tombstone is a generation of its own), so a
        // registration sealed over a record applies at most once, and
        // never after that record locked or was deleted.
        let current = self.users.get(user).map_or(Generation(0), |r| r.generation);
        let next = current.0.checked_add(1);
        let (true, Some(next)) = (expected == current, next) else {
            return Err(CommandError::StaleGeneration {
                current,
                given: expected,
            });
        };
        // A record sealed under another KEK version than the fleet's: a
        // node that had not yet applied a rotation's first step sealed
        // under the old one, which may be destroyed soon (refused; a retry
        // through a node that has applied it succeeds), or a version from
        // nowhere. Bytes that are no sealed blob at all (which no node
        // makes) are no KEK's business: they open under no key, and a
        // rotation walks past them.
        if let (Some(fleet), Some(sealed)) = (
            self.fleet_kek_version(),
            vault_types::sealed_kek_version(&sealed_record.0),
        ) && sealed != fleet
        {
            return Err(CommandError::OldKek { fleet, sealed });
        }
        let generation = Generation(next);
        self.insert_active(user, generation, sealed_record, max_attempts, at, changed);
        Ok(Response::Registered { generation })
    }

    /// The fleet's cap on attempts (the fleet must be initialised).
    fn max_attempts_cap(&self) -> Result<u32, CommandError> {
        self.fleet
            .as_ref()
            .map(|f| f.max_attempts_cap)
            .ok_or(CommandError::FleetNotInitialized)
    }

    /// Stores a fresh active record with a full attempt budget.
    fn insert_active(
        &mut self,
        user: &UserId,
        generation: Generation,
        sealed_record: &SealedBytes,
        max_attempts: u32,
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) {
        self.users.insert(
            user.clone(),
            UserRecord {
                generation,
                status: RecordStatus::Active {
                    sealed_record: sealed_record.clone(),
                    max_attempts,
                    attempts_used: 0,
                    grants: 0,
                },
                registered_at: at,
                updated_at: at,
            },
        );
        changed.push(StateKey::User(user.clone()));
    }

    fn begin_attempt(
        &mut self,
        user: &UserId,
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        if self.fleet.is_none() {
            return Err(CommandError::FleetNotInitialized);
        }
        let record = self.users.get_mut(user).ok_or(CommandError::NotFound)?;
        let RecordStatus::Active {
            sealed_record,
            max_attempts,
            attempts_used,
            grants,
        } = &mut record.status
        else {
            return Err(tombstone_error(&record.status));
        };
        // Attempts were granted and never finished: the budget is spent. Or
        // 2^32 serials of one generation were used (as many successes in
        // between): a serial must never repeat, or a success could forgive
        // a grant made after it (issue 26 review).
        if *attempts_used >= *max_attempts || *grants == u32::MAX {
            record.bury(
                RecordStatus::Locked {
                    of: record.generation,
                },
                at,
            );
            changed.push(StateKey::User(user.clone()));
            return Err(CommandError::Locked);
        }
        *attempts_used += 1;
        *grants = (*grants + 1).max(*attempts_used);
        let reply = Response::AttemptGranted {
            generation: record.generation,
            sealed_record: sealed_record.clone(),
            attempts_left: *max_attempts - *attempts_used,
            attempt: *grants,
        };
        record.updated_at = at;
        changed.push(StateKey::User(user.clone()));
        Ok(reply)
    }

    /// Why an attempt of `generation` of `user` can no longer finish (the
    /// user is unknown, the generation locked, deleted or replaced since),
    /// or `None` while that generation is the active record. What a
    /// finish refuses with; the node asks it after a read barrier before it
    /// releases a success whose counter reset it commits in the background.
    pub fn finish_refusal(&self, user: &UserId, generation: Generation) -> Option<CommandError> {
        let Some(record) = self.users.get(user) else {
            return Some(CommandError::NotFound);
        };
        if record.generation != generation {
            // A session of a generation that has since locked or been
            // deleted says so rather than "stale".
            return Some(match record.status {
                RecordStatus::Locked { of } if of == generation => CommandError::Locked,
                RecordStatus::Deleted { of } if of == generation => CommandError::NotFound,
                _ => CommandError::StaleGeneration {
                    current: record.generation,
                    given: generation,
                },
            });
        }
        match &record.status {
            RecordStatus::Active { .. } => None,
            other => Some(tombstone_error(other)),
        }
    }

    /// `attempt`: the grant's serial (`FinishGrant`), or `None` for an
    /// older build's `FinishAttempt`, whose success forgives every attempt.
    fn finish_attempt(
        &mut self,
        user: &UserId,
        generation: Generation,
        attempt: Option<u32>,
        success: bool,
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        if let Some(refused) = self.finish_refusal(user, generation) {
            return Err(refused);
        }
        let record = self.users.get_mut(user).ok_or(CommandError::NotFound)?;
        let RecordStatus::Active {
            max_attempts,
            attempts_used,
            grants,
            ..
        } = &mut record.status
        else {
            return Err(tombstone_error(&record.status));
        };
        // A grant this generation never made (a serial past the newest), or
        // an old-format finish with no attempt counted, finishes nothing.
        let forgiven_through = match attempt {
            Some(a) if a == 0 || a > *grants => return Err(CommandError::NoAttemptInProgress),
            Some(a) => a,
            None if *attempts_used == 0 => return Err(CommandError::NoAttemptInProgress),
            None => *grants,
        };
        let max = *max_attempts;
        let (attempts_left, locked) = if success {
            // The counted attempts are the newest `attempts_used` grants:
            // forgive those up to this one's serial, none granted after.
            *attempts_used = (*attempts_used).min(grants.saturating_sub(forgiven_through));
            if attempt.is_none() {
                // An older build's finish also restarted the serials (its
                // records kept none): the bytes it wrote, so a log applied
                // by either build leaves the same state (issue 26 review).
                *grants = 0;
            }
            (max - *attempts_used, false)
        } else if *attempts_used >= max {
            (0, true)
        } else {
            (max - *attempts_used, false)
        };
        let reply = Response::AttemptFinished {
            generation,
            success,
            attempts_left,
            locked,
        };
        record.updated_at = at;
        if locked {
            // The last attempt failed: erase the material.
            record.bury(RecordStatus::Locked { of: generation }, at);
        }
        changed.push(StateKey::User(user.clone()));
        Ok(reply)
    }

    fn delete(
        &mut self,
        user: &UserId,
        at: Timestamp,
        changed: &mut Vec<StateKey>,
    ) -> Result<Response, CommandError> {
        let record = self.users.get_mut(user).ok_or(CommandError::NotFound)?;
        if !matches!(record.status, RecordStatus::Deleted { .. }) {
            record.bury(
                RecordStatus::Deleted {
                    of: record.generation,
                },
                at,
            );
            changed.push(StateKey::User(user.clone()));
        }
        Ok(Response::Deleted)
    }

    /// The persisted value of `key`, or `None` when the key holds nothing.
    pub fn value(&self, key: &StateKey) -> Option<Vec<u8>> {
        let encoded = match key {
            StateKey::Fleet => codec::encode(VALUE_V1, self.fleet.as_ref()?),
            StateKey::User(u) => self.users.get(u)?.encode(),
            StateKey::Dedup(id) => self.dedup.get(id)?.encode(),
        };
        // Encoding plain in-memory data into a Vec cannot fail.
        encoded.ok()
    }

    /// Every persisted key and value: the fleet, users in id order, dedup
    /// entries in id order.
    pub fn items(&self) -> impl Iterator<Item = (StateKey, Vec<u8>)> + '_ {
        let fleet = self.fleet.is_some().then_some(StateKey::Fleet);
        let users = self.users.keys().map(|u| StateKey::User(u.clone()));
        let dedup = self.dedup.iter().map(|(id, _)| StateKey::Dedup(*id));
        fleet
            .into_iter()
            .chain(users)
            .chain(dedup)
            .filter_map(|k| self.value(&k).map(|v| (k, v)))
    }

    /// Rebuilds a state from persisted items.
    pub fn from_items(
        dedup_capacity: usize,
        items: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, StateError> {
        let mut state = VaultState::with_dedup_capacity(dedup_capacity);
        let mut dedup = Vec::new();
        for (k, v) in items {
            let key = StateKey::decode(&k).ok_or(StateError::UnknownKey(k))?;
            let bad = |source| StateError::Value {
                key: key.clone(),
                source,
            };
            match &key {
                StateKey::Fleet => {
                    state.fleet = Some(codec::decode("fleet", VALUE_V1, &v).map_err(bad)?)
                }
                StateKey::User(u) => {
                    let record = UserRecord::decode(&v).map_err(bad)?;
                    state.users.insert(u.clone(), record);
                }
                StateKey::Dedup(id) => {
                    let entry = DedupEntry::decode(&v).map_err(bad)?;
                    dedup.push((*id, entry));
                }
            }
        }
        dedup.sort_by_key(|(_, e)| e.index);
        for (id, entry) in dedup {
            state.dedup.insert(id, entry);
        }
        state.items_digest = state.digest_from_scratch_parts();
        Ok(state)
    }

    fn digest_from_scratch_parts(&self) -> ItemsDigest {
        let mut d = ItemsDigest::default();
        for (k, v) in self.items() {
            d.set(&k, Some(&v));
        }
        d
    }

    /// The state commitment: an LtHash16 of every persisted key and value
    /// ([`crate::lthash`]), kept up to date by [`Self::apply`] so this costs
    /// one SHA-256 of 2 KiB: equal on two replicas exactly when their states
    /// are equal, and collision resistant, so a forged state cannot match
    /// the commitment an HSM checkpoint recorded.
    pub fn digest(&self) -> [u8; 32] {
        self.items_digest.digest()
    }

    /// [`Self::digest`] computed again from every item (what the kept
    /// digest must always equal; for tests).
    pub fn digest_from_scratch(&self) -> [u8; 32] {
        self.digest_from_scratch_parts().digest()
    }

    /// Number of remembered request ids.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Whether `id` is remembered.
    pub fn remembers(&self, id: &RequestId) -> bool {
        self.dedup.get(id).is_some()
    }

    /// What is remembered of request `id`: the digest of its body and its
    /// reply (a granted attempt's without its sealed record).
    pub fn remembered(&self, id: &RequestId) -> Option<&DedupEntry> {
        self.dedup.get(id)
    }
}

/// What a command on an erased record answers: a deleted user looks like
/// one never registered; a locked one says so.
fn tombstone_error(status: &RecordStatus) -> CommandError {
    match status {
        RecordStatus::Deleted { .. } => CommandError::NotFound,
        _ => CommandError::Locked,
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
