#!/usr/bin/env python3
"""Sums `perf script -F comm,pid,ip,sym,dso` samples by component and process.

Usage: profile-categories.py PERF_SCRIPT_OUTPUT PID=NAME [PID=NAME ...]

Each sample is put in the first component whose pattern matches its symbol
or shared object; samples of the named processes are also summed per
process. Prints two tables (percent of all samples on the machine).
"""
import collections
import re
import sys

# First match wins: specific libraries before the generic buckets.
COMPONENTS = [
    ("idle", r"pv_native_safe_halt|intel_idle|acpi_idle|default_idle"),
    ("HSM (SoftHSM, its OpenSSL)", r"softhsm|libcrypto|cryptoki"),
    ("OPAQUE (curve25519, voprf, opaque-ke)", r"curve25519|voprf|opaque_ke|Scalar52|FieldElement|EdwardsPoint|RistrettoPoint|subtle::"),
    ("Argon2id / BLAKE2 (client KSF)", r"argon2|blake2|Blake2"),
    ("SHA-2 / HMAC / HKDF", r"sha2::|sha512|sha256|hmac|hkdf|digest::"),
    ("TLS (rustls, ring)", r"rustls|ring_core|ring::"),
    ("Raft (openraft)", r"openraft"),
    ("RocksDB", r"rocksdb|crc32c"),
    ("gRPC (h2, hyper, tonic, http, tower)", r"h2::|hyper|tonic|http::|tower|matchit|httparse|bytes::|axum"),
    ("protobuf (prost)", r"prost"),
    ("tokio", r"tokio|mio::|futures"),
    ("x509 / ASN.1 (peer certificates)", r"asn1|x509|der_parser|der::"),
    ("logging (tracing)", r"tracing|nu_ansi|core::fmt"),
    ("metrics (prometheus)", r"prometheus"),
    ("allocator and memcpy (libc)", r"malloc|free|memmove|memcpy|memset|memcmp|realloc|unlink_chunk|consolidate|__rdl|alloc::"),
    ("kernel: scheduler, futex", r"finish_task_switch|schedule|futex|_raw_spin_unlock_irq|try_to_wake|select_task|enqueue|dequeue|pick_next|switch_"),
    ("kernel: TCP/IP (loopback)", r"tcp|ip_|skb|net_rx|softirq|sock|napi|loopback|__dev_queue"),
    ("kernel: disk, fsync", r"ext4|jbd2|blk|nvme|iowrite|virtio|bio_|submit_|fsync|file_write|filemap"),
]


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    names = dict(a.split("=", 1) for a in sys.argv[2:])
    compiled = [(n, re.compile(p)) for n, p in COMPONENTS]
    total = 0
    by_component = collections.Counter()
    by_process = collections.defaultdict(collections.Counter)
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(None, 3)
            if len(parts) < 4:
                continue
            comm, pid, _ip, rest = parts
            total += 1
            component = "other"
            if comm == "swapper":
                component = "idle"
            else:
                for name, rx in compiled:
                    if rx.search(rest):
                        component = name
                        break
            if component == "other":
                if "[kernel" in rest:
                    component = "kernel: other"
                elif "libc" in rest:
                    component = "libc: other"
                else:
                    component = "other (our code, std, serde, generic code)"
            by_component[component] += 1
            by_process[names.get(pid, "everything else")][component] += 1
    if total == 0:
        print("no samples", file=sys.stderr)
        return 1
    pct = lambda n: 100.0 * n / total  # noqa: E731
    print(f"{total} samples over the whole machine (all cores)\n")
    print("| component | share of the machine |")
    print("|---|---|")
    for name, n in by_component.most_common():
        print(f"| {name} | {pct(n):.1f} % |")
    print()
    print("| process | share | its largest components |")
    print("|---|---|---|")
    for proc, c in sorted(by_process.items(), key=lambda kv: -sum(kv[1].values())):
        top = ", ".join(f"{k} {pct(v):.1f}" for k, v in c.most_common(5))
        print(f"| {proc} | {pct(sum(c.values())):.1f} % | {top} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
