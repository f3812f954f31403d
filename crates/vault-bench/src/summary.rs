//! The run's summary: one line for people, JSON for scripts.

use std::collections::BTreeMap;

use crate::Args;
use crate::ceiling::Ceiling;
use crate::workers::Totals;

/// Everything the summary reports.
pub struct Summary<'a> {
    /// The command line.
    pub args: &'a Args,
    /// Latencies and errors.
    pub totals: &'a Totals,
    /// Seconds the workers ran.
    pub wall: f64,
    /// CPU seconds this process used meanwhile.
    pub cpu: f64,
    /// The machine's ceilings, with `--ceiling`.
    pub ceiling: Option<&'a Ceiling>,
    /// Nodes in the fleet.
    pub nodes: usize,
    /// Storage counters per node ([`crate::counters::Counters::storage_since`]).
    pub storage: BTreeMap<u64, serde_json::Value>,
    /// Calls served per operation by method.
    pub rpcs_per_op: BTreeMap<String, f64>,
}

impl Summary<'_> {
    fn ms(&self, q: f64) -> f64 {
        self.totals.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn throughput(&self) -> f64 {
        self.totals.latency.len() as f64 / self.wall
    }

    /// The summary as JSON (`--json`).
    pub fn json(&self) -> serde_json::Value {
        let tot = self.totals;
        let throughput = self.throughput();
        let c = self.ceiling;
        serde_json::json!({
            "workload": format!("{:?}", self.args.workload).to_lowercase(),
            "concurrency": self.args.concurrency,
            "seconds": self.wall,
            "ok": tot.latency.len(),
            "errors": tot.errors.values().sum::<u64>(),
            "errors_by_kind": tot.errors,
            "throughput_per_s": throughput,
            "latency_ms": { "p50": self.ms(0.5), "p90": self.ms(0.9), "p99": self.ms(0.99), "p99_9": self.ms(0.999), "max": tot.latency.max() as f64 / 1000.0 },
            "client_cpu_cores": self.cpu / self.wall,
            "ceiling_single_core_opaque_logins_per_s": c.map(|c| c.opaque_logins_per_s),
            "ceiling_single_core_hsm_unseals_per_s": c.map(|c| c.hsm_unseals_per_s),
            "ceiling_hsm_checkpoint_writes_per_s": c.map(|c| c.checkpoint_writes_per_s),
            "fraction_of_two_core_opaque_ceiling": c.map(|c| throughput / (2.0 * c.opaque_logins_per_s)),
            "fleet_nodes": self.nodes,
            "storage_by_node": self.storage,
            "rpcs_per_op": self.rpcs_per_op,
            "ksf": "fast (Argon2id 256 KiB, 1 pass)",
        })
    }

    /// The human summary on stdout.
    #[expect(clippy::print_stdout, reason = "the summary is the program's output")]
    pub fn print(&self) {
        let tot = self.totals;
        let ok = tot.latency.len();
        let errors: u64 = tot.errors.values().sum();
        let wall = self.wall;
        let throughput = self.throughput();
        println!(
            "{:?}: {ok} ok, {errors} errors in {wall:.1} s = {throughput:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2}; client CPU {:.2} cores",
            self.args.workload,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.cpu / wall
        );
        for (id, st) in &self.storage {
            println!(
                "node {id}: {:.2} fsyncs per log entry, {:.2} entries per log append, {:.2} proposals per entry, {:.2} HSM checkpoint writes per fsync",
                st["fsyncs_per_entry"].as_f64().unwrap_or(0.0),
                st["entries_per_log_append"].as_f64().unwrap_or(0.0),
                st["proposals_per_entry"].as_f64().unwrap_or(0.0),
                st["checkpoint_writes_per_fsync"].as_f64().unwrap_or(0.0)
            );
        }
        if !self.rpcs_per_op.is_empty() {
            let each: Vec<String> = self
                .rpcs_per_op
                .iter()
                .map(|(m, n)| format!("{m} {n:.2}"))
                .collect();
            println!(
                "calls served per operation (all nodes): {}",
                each.join(", ")
            );
        }
        if !tot.errors.is_empty() {
            println!("errors: {:?}", tot.errors);
        }
        if let Some(c) = self.ceiling {
            let o = c.opaque_logins_per_s;
            println!(
                "ceiling: {o:.0} OPAQUE server logins/s on one core ({:.0} on two), {:.0} SoftHSM unseals/s on one core, {:.0} SoftHSM checkpoint writes/s; this run reached {:.1}% of the two-core OPAQUE figure",
                2.0 * o,
                c.hsm_unseals_per_s,
                c.checkpoint_writes_per_s,
                100.0 * throughput / (2.0 * o)
            );
        }
    }
}
