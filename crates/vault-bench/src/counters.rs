//! What a run reads from outside itself: the nodes' `/metrics` counters
//! before and after (fsyncs, log appends, batching, calls served by
//! method), and this process's CPU time.

use std::collections::BTreeMap;
use std::time::Duration;

use vault_fleet::config::Fleet;

/// Longer than the nodes' metrics refresh (200 ms).
pub const GAUGE_REFRESH: Duration = Duration::from_millis(300);

/// A node's `/metrics` page, or `None` when it does not answer.
fn metrics_page(addr: &std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(1)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    Some(text)
}

/// What the run reads from the nodes' `/metrics` before and after.
pub struct Counters {
    /// By node id: (synced writes, log entries appended, log appends,
    /// batches applied, proposals applied).
    pub storage: BTreeMap<u64, [f64; 6]>,
    /// Calls served, by method (`Frontend/RecoverStart`,
    /// `Peer/AppendEntries`, ...), summed over the nodes and outcomes.
    pub rpcs: BTreeMap<String, f64>,
}

/// Every node's counters now (a node that does not answer is left out).
pub fn counters(fleet: &Fleet) -> Counters {
    let mut out = Counters {
        storage: BTreeMap::new(),
        rpcs: BTreeMap::new(),
    };
    for n in fleet.nodes.values() {
        let Some(text) = metrics_page(&n.metrics_addr) else {
            continue;
        };
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        out.storage.insert(
            n.id,
            [
                value("bkv_storage_synced_writes{"),
                value("bkv_storage_log_entries_appended{"),
                value("bkv_storage_log_appends{"),
                value("bkv_raft_batches_applied{"),
                value("bkv_raft_proposals_applied{"),
                value("bkv_checkpoint_writes{"),
            ],
        );
        // bkv_rpc_total{code="OK",method="Peer/Forward",node="1"} 4900
        for line in text.lines().filter(|l| l.starts_with("bkv_rpc_total{")) {
            let method = line
                .split("method=\"")
                .nth(1)
                .and_then(|m| m.split('"').next());
            let count = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(method), Some(count)) = (method, count) {
                *out.rpcs.entry(method.to_owned()).or_default() += count;
            }
        }
    }
    out
}

/// CPU seconds this process has used (user + system), from /proc.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

impl Counters {
    /// Per node, from `before` to `self`: fsyncs per appended log entry,
    /// entries per log append (how many share one fsync: the group-commit
    /// factor), proposals per entry (the batching factor) and HSM
    /// checkpoint writes per fsync.
    pub fn storage_since(&self, before: &Counters) -> BTreeMap<u64, serde_json::Value> {
        self.storage
            .iter()
            .filter_map(|(id, after)| {
                let before = before.storage.get(id)?;
                let d = |i: usize| after[i] - before[i];
                (d(1) > 0.0).then(|| {
                    (
                        *id,
                        serde_json::json!({
                            "fsyncs_per_entry": d(0) / d(1),
                            "entries_per_log_append": d(1) / d(2).max(1.0),
                            "entries": d(1),
                            "proposals_per_entry": d(4) / d(3).max(1.0),
                            "checkpoint_writes_per_fsync": d(5) / d(0).max(1.0),
                        }),
                    )
                })
            })
            .collect()
    }

    /// Calls the nodes served per operation, by method, from `before` to
    /// `self`: the client's own calls and what the nodes say to each other
    /// (forwards, AppendEntries, read indexes) for each of `ops`.
    pub fn rpcs_per_op_since(&self, before: &Counters, ops: u64) -> BTreeMap<String, f64> {
        self.rpcs
            .iter()
            .filter_map(|(method, after)| {
                let d = after - before.rpcs.get(method).copied().unwrap_or(0.0);
                (d > 0.0 && ops > 0).then(|| (method.clone(), d / ops as f64))
            })
            .collect()
    }
}
