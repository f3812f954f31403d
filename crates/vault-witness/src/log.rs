//! The witness's durable, append-only log and its rules.
//!
//! File layout (`log.v1`): the 16-byte magic `BKV-WITNESS-LOG1`, then one
//! record per entry: `u32 length || u32 CRC-32 of payload || payload`,
//! payload = `u64 timestamp_ms || bundle bytes` (big-endian). A record is
//! written and `fdatasync`ed before the witness answers, so an
//! acknowledged entry survives a crash. On open, a last record that is cut
//! short or fails its checksum is a write that was never acknowledged: it
//! is reported and cut off. A bad record with data after it is damage, and
//! the log refuses to open.
//!
//! Tree heads are not stored: entry `i`'s head is
//! `(i + 1, timestamp_i, root of entries 0..=i)`, and Ed25519 signatures are
//! deterministic, so the heads are re-derived byte for byte on open.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use vault_transparency::bundle::{self, Bundle};
use vault_transparency::head::TreeHead;
use vault_transparency::{Hash, merkle};

const MAGIC: &[u8; 16] = b"BKV-WITNESS-LOG1";
/// Largest bundle accepted (a bundle with 64 nodes is about 6 KiB).
pub const MAX_BUNDLE: usize = 64 * 1024;

/// Why a log does not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged before its last record.
    #[error(
        "{path}: damaged record at byte {offset} with data after it; refusing to open (restore the log from a copy)"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
    },
    /// The file is not a witness log, or its entries break the rules.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Why a submission is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Not a bundle.
    #[error("{0}")]
    Malformed(String),
    /// The witness signed another bundle for this fleet and epoch.
    #[error("the witness already signed a different bundle for fleet {fleet:?} epoch {epoch}")]
    Equivocation {
        /// The fleet.
        fleet: String,
        /// The epoch.
        epoch: u64,
    },
    /// The epoch does not grow.
    #[error("fleet {fleet:?}: epoch {got} does not exceed the logged epoch {last}")]
    EpochNotIncreasing {
        /// The fleet.
        fleet: String,
        /// Latest logged.
        last: u64,
        /// Submitted.
        got: u64,
    },
    /// The epoch skips ahead: each epoch of a fleet is the one after the
    /// last logged (the first is 1), so no bundle can leave the chain
    /// without a next (an epoch of `u64::MAX` strands every pinned app).
    #[error(
        "fleet {fleet:?}: epoch {got} does not follow the logged epoch {last} (the next is {last} + 1)"
    )]
    EpochGap {
        /// The fleet.
        fleet: String,
        /// Latest logged (0: none).
        last: u64,
        /// Submitted.
        got: u64,
    },
    /// The bundle does not name the previous bundle's digest.
    #[error(
        "fleet {fleet:?}: previous_digest does not match the last logged bundle (epoch {last}); expected {expected}"
    )]
    BrokenChain {
        /// The fleet.
        fleet: String,
        /// Latest logged epoch (0: none).
        last: u64,
        /// The digest expected (hex).
        expected: String,
    },
    /// Writing failed; nothing was acknowledged.
    #[error("the witness could not store the entry: {0}")]
    Storage(String),
}

/// What an append (or its retry) gives back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The witness's signature over the bundle bytes.
    pub witness_signature: Vec<u8>,
    /// The bundle's leaf index.
    pub index: u64,
    /// The latest tree head.
    pub head: TreeHead,
    /// The leaf's audit path in `head`'s tree.
    pub inclusion_proof: Vec<Hash>,
    /// The bundle was logged already.
    pub existing: bool,
}

/// What opening found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries in the log.
    pub entries: u64,
    /// Bytes of a torn last record that were cut off (0: none).
    pub torn_bytes: u64,
}

/// The log, open for appends.
pub struct WitnessLog {
    path: PathBuf,
    file: File,
    len: u64,
    key: SigningKey,
    entries: Vec<Vec<u8>>,
    leaves: Vec<Hash>,
    heads: Vec<TreeHead>,
    /// Per fleet: the last logged epoch and its digest.
    fleets: BTreeMap<String, (u64, Hash)>,
    /// A write failed half-way and could not be undone: refuse appends.
    poisoned: bool,
}

impl std::fmt::Debug for WitnessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessLog")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

impl WitnessLog {
    /// Opens (or creates) the log at `path`, signing with `key`.
    pub fn open(path: &Path, key: SigningKey) -> Result<(WitnessLog, OpenReport), OpenError> {
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(path))?;
        if bytes.is_empty() {
            file.write_all(MAGIC).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
            if created && let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(path))?;
            }
            bytes.extend_from_slice(MAGIC);
        }
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(OpenError::Invalid {
                path: path.to_owned(),
                reason: "not a witness log (magic)".into(),
            });
        }
        let mut log = WitnessLog {
            path: path.to_owned(),
            file,
            len: MAGIC.len() as u64,
            key,
            entries: Vec::new(),
            leaves: Vec::new(),
            heads: Vec::new(),
            fleets: BTreeMap::new(),
            poisoned: false,
        };
        let mut at = MAGIC.len();
        let mut torn_bytes = 0;
        while at < bytes.len() {
            match record_at(&bytes, at) {
                Record::Ok { ts, bundle, next } => {
                    let bundle = bundle.to_vec();
                    log.check(&bundle).map_err(|e| OpenError::Invalid {
                        path: path.to_owned(),
                        reason: format!("entry {}: {e}", log.entries.len()),
                    })?;
                    log.remember(bundle, ts);
                    at = next;
                }
                Record::Torn => {
                    torn_bytes = (bytes.len() - at) as u64;
                    break;
                }
                Record::Damaged => {
                    return Err(OpenError::Damaged {
                        path: path.to_owned(),
                        offset: at as u64,
                    });
                }
            }
        }
        log.len = at as u64;
        if torn_bytes > 0 {
            log.file.set_len(log.len).map_err(io(path))?;
            log.file.sync_all().map_err(io(path))?;
        }
        log.file.seek(SeekFrom::End(0)).map_err(io(path))?;
        let report = OpenReport {
            entries: log.entries.len() as u64,
            torn_bytes,
        };
        Ok((log, report))
    }

    /// Checks the rules for appending `bytes` (not a retry).
    fn check(&self, bytes: &[u8]) -> Result<Bundle, SubmitError> {
        if bytes.len() > MAX_BUNDLE {
            return Err(SubmitError::Malformed(format!(
                "bundle of {} bytes is larger than {MAX_BUNDLE}",
                bytes.len()
            )));
        }
        let b = Bundle::parse(bytes).map_err(|e| SubmitError::Malformed(e.to_string()))?;
        match self.fleets.get(&b.fleet_id) {
            None if b.previous_digest != [0; 32] => Err(SubmitError::BrokenChain {
                fleet: b.fleet_id,
                last: 0,
                expected: hex::encode([0u8; 32]),
            }),
            None if b.epoch != 1 => Err(SubmitError::EpochGap {
                fleet: b.fleet_id,
                last: 0,
                got: b.epoch,
            }),
            None => Ok(b),
            Some(&(last, _)) if b.epoch == last => Err(SubmitError::Equivocation {
                fleet: b.fleet_id,
                epoch: last,
            }),
            Some(&(last, _)) if b.epoch < last => Err(SubmitError::EpochNotIncreasing {
                fleet: b.fleet_id,
                last,
                got: b.epoch,
            }),
            Some(&(last, _)) if Some(b.epoch) != last.checked_add(1) => {
                Err(SubmitError::EpochGap {
                    fleet: b.fleet_id,
                    last,
                    got: b.epoch,
                })
            }
            Some(&(last, digest)) if b.previous_digest != digest => Err(SubmitError::BrokenChain {
                fleet: b.fleet_id,
                last,
                expected: hex::encode(digest),
            }),
            Some(_) => Ok(b),
        }
    }

    fn remember(&mut self, bytes: Vec<u8>, ts: u64) {
        if let Ok(b) = Bundle::parse(&bytes) {
            self.fleets
                .insert(b.fleet_id, (b.epoch, bundle::digest(&bytes)));
        }
        self.leaves.push(merkle::leaf_hash(&bytes));
        self.entries.push(bytes);
        let size = self.leaves.len() as u64;
        self.heads.push(TreeHead::sign(
            &self.key,
            size,
            ts,
            merkle::root(&self.leaves),
        ));
    }

    /// Appends `bytes` (durably) and signs it; a resubmission of a logged
    /// bundle is answered from the log.
    pub fn append(&mut self, bytes: &[u8], now_ms: u64) -> Result<Appended, SubmitError> {
        if let Some(i) = self.entries.iter().position(|e| e == bytes) {
            return Ok(self.answer(i, true));
        }
        self.check(bytes)?;
        if self.poisoned {
            return Err(SubmitError::Storage(
                "an earlier write failed half-way; restart the witness".into(),
            ));
        }
        // Timestamps never go back, whatever the clock does.
        let ts = now_ms.max(self.heads.last().map_or(0, |h| h.timestamp_ms));
        let mut record = Vec::with_capacity(bytes.len() + 16);
        let payload_len = (bytes.len() + 8) as u32;
        let mut payload = ts.to_be_bytes().to_vec();
        payload.extend_from_slice(bytes);
        record.extend_from_slice(&payload_len.to_be_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        record.extend_from_slice(&payload);
        let written = self
            .file
            .write_all(&record)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Undo a partial record so the file stays a valid log.
            let undone = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(drop))
                .and_then(|()| self.file.sync_data());
            if undone.is_err() {
                self.poisoned = true;
            }
            return Err(SubmitError::Storage(e.to_string()));
        }
        self.len += record.len() as u64;
        self.remember(bytes.to_vec(), ts);
        Ok(self.answer(self.entries.len() - 1, false))
    }

    fn answer(&self, index: usize, existing: bool) -> Appended {
        let head = self.latest_head();
        Appended {
            witness_signature: self.key.sign(&self.entries[index]).to_bytes().to_vec(),
            index: index as u64,
            inclusion_proof: merkle::inclusion_proof(&self.leaves, index).unwrap_or_default(),
            head,
            existing,
        }
    }

    /// Entries in the log.
    pub fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The latest signed tree head (size 0, time 0 for an empty log).
    pub fn latest_head(&self) -> TreeHead {
        self.heads
            .last()
            .cloned()
            .unwrap_or_else(|| TreeHead::sign(&self.key, 0, 0, merkle::root(&[])))
    }

    /// Every head signed so far, ascending.
    pub fn heads(&self) -> &[TreeHead] {
        &self.heads
    }

    /// Entries `[start, end)`, clipped to the log.
    pub fn entries(&self, start: u64, end: u64) -> &[Vec<u8>] {
        let end = (end.min(self.size())) as usize;
        let start = (start as usize).min(end);
        &self.entries[start..end]
    }

    /// The audit path of `index` in the tree of the first `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if size > self.size() {
            return None;
        }
        merkle::inclusion_proof(&self.leaves[..size as usize], index as usize)
    }

    /// The consistency proof between the trees of `first` and `second`
    /// entries.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Option<Vec<Hash>> {
        if second > self.size() || first > second {
            return None;
        }
        merkle::consistency_proof(&self.leaves[..second as usize], first as usize)
    }
}

enum Record<'a> {
    Ok {
        ts: u64,
        bundle: &'a [u8],
        next: usize,
    },
    Torn,
    Damaged,
}

fn record_at(bytes: &[u8], at: usize) -> Record<'_> {
    let rest = &bytes[at..];
    if rest.len() < 8 {
        return Record::Torn;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if !(8..=MAX_BUNDLE + 8).contains(&len) {
        // A length the witness never writes: a torn append leaves zeros
        // (file extended, data not yet written); anything else is damage.
        return if rest.iter().all(|&b| b == 0) {
            Record::Torn
        } else {
            Record::Damaged
        };
    }
    if rest.len() < 8 + len {
        return Record::Torn;
    }
    let payload = &rest[8..8 + len];
    let next = at + 8 + len;
    if crc32fast::hash(payload) != crc {
        return if next == bytes.len() {
            Record::Torn
        } else {
            Record::Damaged
        };
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[..8]);
    Record::Ok {
        ts: u64::from_be_bytes(ts),
        bundle: &payload[8..],
        next,
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
