//! Chaos testing of a vault fleet (design brief §4 and §9).
//!
//! A run starts a real multi-process fleet on loopback (RocksDB, SoftHSM,
//! mutual TLS) whose peer links go through a fault-injecting proxy, puts
//! client load on it ([`workload`]), plays a scenario's steps — SIGKILL,
//! SIGSTOP, rolling restarts, partitions, one-way loss, delays, a kill in
//! the middle of a recovery — heals everything, recovers every acknowledged
//! user once more, and checks the history ([`checker`]):
//!
//! 1. guess bound: KE2s received between two resets ≤ `max_attempts`;
//! 2. durability: every acknowledged registration recovers its K (or its
//!    lock is explained by the attempts the history may have spent);
//! 3. monotonic counters: attempts left only fall between resets;
//! 4. convergence: every node reaches the same digest at the same index;
//! 5. availability: the time from each fault to the next write a client
//!    saw.
//!
//! [`scenario`] describes the scenario files, [`runner`] runs one.

pub mod checker;
pub mod history;
pub mod runner;
pub mod scenario;
pub mod workload;

pub use runner::{Options, Report, run};
pub use scenario::Scenario;
