//! Crash safety: a child process appends log entries and reports each one
//! openraft would consider durable; the parent SIGKILLs it mid-stream,
//! reopens the store and finds every acknowledged entry.
//!
//! The binary is its own child: with `BKV_CRASH_WRITER_DIR` set it runs the
//! writer instead of the tests.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};

use libtest_mimic::{Arguments, Failed, Trial};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{EntryPayload, RaftLogReader, Vote};

use common::{entry, workload};

const WRITER_ENV: &str = "BKV_CRASH_WRITER_DIR";
/// The writer stops by itself after this many entries.
const MAX_ENTRIES: u64 = 20_000;

fn main() -> ExitCode {
    if let Some(dir) = std::env::var_os(WRITER_ENV) {
        return writer(std::path::Path::new(&dir));
    }
    let args = Arguments::from_args();
    let trials = [40u64, 250, 700]
        .into_iter()
        .map(|kill_after| {
            Trial::test(
                format!("crash::acked_appends_survive_sigkill_after_{kill_after}"),
                move || crash_round(kill_after),
            )
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn writer(dir: &std::path::Path) -> ExitCode {
    use std::io::Write;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let (mut log, _sm) = match vault_storage::open(dir) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("open store: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut out = std::io::stdout().lock();
        let mut next = 1;
        while next <= MAX_ENTRIES {
            // Groups of 1 to 4 entries per append, as openraft hands them.
            let last = (next + next % 4).min(MAX_ENTRIES);
            if let Err(e) = log
                .blocking_append((next..=last).map(|i| entry(i, workload(i))))
                .await
            {
                eprintln!("append {next}..={last}: {e}");
                return ExitCode::FAILURE;
            }
            if let Err(e) = log.save_vote(&Vote::new(last, 1)).await {
                eprintln!("save vote: {e}");
                return ExitCode::FAILURE;
            }
            // Printed only once the append and the vote returned: acknowledged.
            if writeln!(out, "acked {last}")
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            next = last + 1;
        }
        ExitCode::SUCCESS
    })
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn crash_round(kill_after: u64) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut child = KillOnDrop(
        Command::new(exe)
            .env(WRITER_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().ok_or("no child stdout")?;
    let mut acked = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        acked = line
            .strip_prefix("acked ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unexpected writer output {line:?}"))?;
        if acked >= kill_after {
            // SIGKILL while the writer is in the middle of later appends.
            child.0.kill()?;
            break;
        }
    }
    child.0.wait()?;
    if acked < kill_after {
        return Err(format!("writer stopped after {acked} entries, before the kill point").into());
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut log, _sm) = vault_storage::open(dir.path()).map_err(|e| e.to_string())?;
        let state = log.get_log_state().await.map_err(|e| e.to_string())?;
        let last = state.last_log_id.map_or(0, |l| l.index);
        if last < acked {
            return Err(format!("acknowledged up to {acked}, but the log ends at {last}"));
        }
        let entries = log.try_get_log_entries(1..=acked).await.map_err(|e| e.to_string())?;
        if entries.len() as u64 != acked {
            return Err(format!("{} entries of {acked} acknowledged survived", entries.len()));
        }
        for (i, e) in (1..).zip(&entries) {
            match &e.payload {
                EntryPayload::Normal(b) if b.0 == [workload(i)] && e.log_id.index == i => {}
                other => return Err(format!("entry {i} came back as {other:?}")),
            }
        }
        let vote = log.read_vote().await.map_err(|e| e.to_string())?;
        if vote.is_none_or(|v| v.leader_id().term < acked) {
            return Err(format!("vote saved before entry {acked} was lost: {vote:?}"));
        }
        eprintln!("  killed after {acked} acknowledged entries; the log holds {last}, all acknowledged ones intact");
        Ok(())
    })?;
    Ok(())
}
