//! The workers: one task per client, each doing the workload's operations
//! on its own user until the clock, the operation limit or its pool runs
//! out, with a progress line every second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use vault_client::{Client, ClientError};
use vault_types::UserId;

use crate::{PASSWORD, Workload};

/// Latencies of successful operations and errors by kind, over all workers.
pub struct Totals {
    /// Microseconds per successful operation.
    pub latency: Histogram<u64>,
    /// Failed operations by [`error_kind`].
    pub errors: BTreeMap<String, u64>,
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Unavailable(_) => "unavailable".into(),
        ClientError::WrongPassword { .. } => "wrong_password".into(),
        ClientError::Locked => "locked".into(),
        ClientError::NotFound => "not_found".into(),
        ClientError::SessionExpired => "session_expired".into(),
        ClientError::Conflict => "conflict".into(),
        other => format!("other: {other}"),
    }
}

/// Registers `per_worker` fresh users for each worker, concurrently (one
/// task per worker); their names extend the worker's user id.
pub async fn register_pools(
    client: &Arc<Client>,
    users: &[UserId],
    per_worker: usize,
    cap: u32,
) -> anyhow::Result<Vec<Vec<UserId>>> {
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            let (client, base) = (client.clone(), u.as_str().to_owned());
            tokio::spawn(async move {
                let mut pool = Vec::with_capacity(per_worker);
                for j in 0..per_worker {
                    let user = UserId::new(format!("{base}-d{j}"))?;
                    client.register(&user, PASSWORD, cap).await?;
                    pool.push(user);
                }
                anyhow::Ok(pool)
            })
        })
        .collect();
    let mut pools = Vec::with_capacity(tasks.len());
    for t in tasks {
        pools.push(t.await??);
    }
    Ok(pools)
}

/// What the workers share.
struct Shared {
    client: Arc<Client>,
    totals: Mutex<Totals>,
    done: AtomicU64,
    stop: AtomicBool,
    running: AtomicU64,
    /// When the last worker finished (µs after the start): the run's
    /// length, also when the delete pools run out between two progress
    /// lines.
    finished_at: AtomicU64,
    start: Instant,
    limit: u64,
    cap: u32,
}

/// One worker's state: its user, its delete pool, its wrong guesses left.
struct Worker {
    index: u64,
    user: UserId,
    pool: Vec<UserId>,
    ops: u64,
    wrong_left: u32,
}

impl Worker {
    /// The next operation of `workload` for this worker.
    fn next(&mut self, workload: Workload) -> Workload {
        let op = match workload {
            Workload::Mixed => match (self.ops + self.index) % 11 {
                0 => Workload::Register,
                1 => Workload::RecoverWrong,
                2 => Workload::Status,
                _ => Workload::Recover,
            },
            other => other,
        };
        self.ops += 1;
        op
    }

    async fn perform(
        &mut self,
        client: &Client,
        op: Workload,
        cap: u32,
    ) -> Result<(), ClientError> {
        let user = &self.user;
        match op {
            Workload::Register => client.register(user, PASSWORD, cap).await.map(drop),
            Workload::RegisterNew => {
                let new = UserId::new(format!("{}-{}", user.as_str(), self.ops))
                    .map_err(|e| ClientError::Other(e.to_string()))?;
                client.register(&new, PASSWORD, cap).await.map(drop)
            }
            Workload::Recover => client.recover(user, PASSWORD).await.map(drop),
            Workload::RecoverWrong if !self.pool.is_empty() => {
                let u = self.pool.pop().unwrap_or_else(|| user.clone());
                match client.recover(&u, b"wrong").await {
                    Err(ClientError::WrongPassword { .. }) => Ok(()),
                    Ok(_) => Err(ClientError::Other("a wrong password recovered".into())),
                    Err(e) => Err(e),
                }
            }
            // `mixed` past its pool guesses on the worker's own user.
            Workload::RecoverWrong | Workload::RecoverWrongOneUser => {
                if self.wrong_left <= 1 {
                    // Keep the record alive: a success resets the count.
                    let _ = client.recover(user, PASSWORD).await;
                    self.wrong_left = cap;
                }
                self.wrong_left -= 1;
                match client.recover(user, b"wrong").await {
                    Err(ClientError::WrongPassword { .. }) => Ok(()),
                    Ok(_) => Err(ClientError::Other("a wrong password recovered".into())),
                    Err(e) => Err(e),
                }
            }
            Workload::Status => client.status(user).await.map(drop),
            Workload::Delete => match self.pool.pop() {
                Some(u) => client.delete(&u).await,
                None => Ok(()),
            },
            Workload::Mixed => Ok(()),
        }
    }

    async fn run(mut self, shared: Arc<Shared>, workload: Workload) {
        while !shared.stop.load(Ordering::Relaxed) {
            if workload.ends_with_pool() && self.pool.is_empty() {
                break;
            }
            let op = self.next(workload);
            let t = Instant::now();
            let result = self.perform(&shared.client, op, shared.cap).await;
            let micros = t.elapsed().as_micros().max(1) as u64;
            let mut tot = shared.totals.lock().await;
            match result {
                Ok(()) => {
                    let _ = tot.latency.record(micros);
                }
                Err(e) => *tot.errors.entry(error_kind(&e)).or_default() += 1,
            }
            drop(tot);
            if shared.done.fetch_add(1, Ordering::Relaxed) + 1 >= shared.limit {
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
        shared
            .finished_at
            .fetch_max(shared.start.elapsed().as_micros() as u64, Ordering::Relaxed);
        shared.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the workers did.
pub struct Driven {
    /// Their latencies and errors.
    pub totals: Totals,
    /// Seconds from the start until the last worker finished.
    pub wall: f64,
}

/// Runs one worker per user (with its delete pool) until `duration`, the
/// operation `limit`, or every worker is done; prints progress every
/// second.
pub fn drive(
    rt: &tokio::runtime::Runtime,
    client: Arc<Client>,
    workload: Workload,
    users: Vec<UserId>,
    pools: Vec<Vec<UserId>>,
    (duration, limit, cap): (Duration, u64, u32),
) -> anyhow::Result<Driven> {
    let start = Instant::now();
    let deadline = start + duration;
    let shared = Arc::new(Shared {
        client,
        totals: Mutex::new(Totals {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            errors: BTreeMap::new(),
        }),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        running: AtomicU64::new(users.len() as u64),
        finished_at: AtomicU64::new(0),
        start,
        limit,
        cap,
    });
    let workers: Vec<_> = users
        .into_iter()
        .zip(pools)
        .enumerate()
        .map(|(index, (user, pool))| {
            let worker = Worker {
                index: index as u64,
                user,
                pool,
                ops: 0,
                wrong_left: cap,
            };
            rt.spawn(worker.run(shared.clone(), workload))
        })
        .collect();
    let mut last = 0;
    while Instant::now() < deadline
        && !shared.stop.load(Ordering::Relaxed)
        && shared.running.load(Ordering::Relaxed) > 0
    {
        // A progress line every second; checking every 50 ms whether the
        // workers are done (delete pools can run out within a second).
        let tick = Instant::now()
            + Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()));
        while Instant::now() < tick && shared.running.load(Ordering::Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let now = shared.done.load(Ordering::Relaxed);
        eprintln!(
            "  {:>5.1} s  {:>8} ops  {:>7} ops/s",
            start.elapsed().as_secs_f64(),
            now,
            now - last
        );
        last = now;
    }
    shared.stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for w in workers {
            let _ = w.await;
        }
    });
    let wall = (shared.finished_at.load(Ordering::Relaxed) as f64 / 1e6).max(1e-6);
    let totals = rt.block_on(async {
        let mut t = shared.totals.lock().await;
        Totals {
            latency: t.latency.clone(),
            errors: std::mem::take(&mut t.errors),
        }
    });
    Ok(Driven { totals, wall })
}
