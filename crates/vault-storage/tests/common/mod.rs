//! Helpers shared by the storage tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use openraft::{CommittedLeaderId, EntryPayload, LogId};
use vault_storage::Entry;
use vault_types::{
    Batch, Command, FleetId, Generation, Proposal, RequestDigest, RequestId, RequestMeta,
    SealedBytes, Timestamp, UserId,
};

pub fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn entry(index: u64, proposal: Proposal) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Batch(vec![proposal])),
    }
}

pub fn init_fleet() -> Proposal {
    Proposal {
        request: None,
        at: Timestamp(1),
        command: Command::InitFleet {
            fleet_id: FleetId::new("storage-test").expect("fleet id"),
            sealed_server_setup: SealedBytes(vec![0x5e; 48]),
            sealed_hpke_key: SealedBytes(vec![0xdd; 40]),
            max_attempts_cap: 10,
        },
    }
}

/// A deterministic workload: proposal `i` (1-based; 1 is InitFleet) of a
/// mix of registrations and attempts over 20 users.
pub fn workload(i: u64) -> Proposal {
    if i == 1 {
        return init_fleet();
    }
    let user = UserId::new(format!("user-{}", i % 20)).expect("user id");
    let command = match i % 5 {
        // The k-th registration of user u (i % 20 == u; i = 1 is InitFleet,
        // so user 0 and 1 first register at 20 and 21) expects generation k.
        0 | 1 => Command::Register {
            user,
            expected_generation: Generation({
                let u = i % 20;
                let first = if u < 2 { u + 20 } else { u };
                (i - first) / 20
            }),
            sealed_record: SealedBytes(vec![(i % 251) as u8; 64]),
            max_attempts: 3,
        },
        2 | 3 => Command::BeginAttempt { user },
        _ => Command::FinishAttempt {
            user,
            generation: Generation(1),
            success: i.is_multiple_of(3),
        },
    };
    Proposal {
        request: Some(RequestMeta {
            id: RequestId(u128::from(i).to_be_bytes()),
            digest: RequestDigest([(i % 7) as u8; 32]),
        }),
        at: Timestamp(i),
        command,
    }
}
