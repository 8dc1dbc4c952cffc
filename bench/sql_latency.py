"""Latency of one `mgte_embed` call from SQL, against the same call from Python and `SELECT 1`.

    .venv/bin/python -m bench.sql_latency [--model tiny] [--calls 500]

Starts a private cluster and a server, then times each statement `--calls` times from one
session (p50/p95/p99 in ms) and, with pgbench (the PostgreSQL tool), the throughput of 1 and
8 concurrent sessions calling mgte_embed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import bench_database
from mgte.pgcluster import Cluster

QUERY = "¿Dónde está la estación de tren más cercana?"


def timed(call: Callable[[], object], n: int) -> list[float]:
    for _ in range(20):
        call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def pgbench_tps(cluster: Cluster, clients: int, seconds: int, workdir: Path) -> float:
    script = workdir / "embed.sql"
    script.write_text(f"SELECT mgte_embed('{QUERY}');\n")
    script.chmod(0o644)
    command = [str(cluster.bindir / "pgbench"), "-n", "-f", str(script), "-c", str(clients), "-j", str(clients),
               "-T", str(seconds), "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", cluster.user,
               "mgte_bench"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("tps"))
    return float(line.split()[2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    with bench_database(args.model) as bench, bench.server.client() as client:
        db = bench.db
        results = {
            "SELECT 1 (baseline)": timed(lambda: db.execute("SELECT 1").fetchone(), args.calls),
            "Client.embed([text]) in Python": timed(lambda: client.embed([QUERY]), args.calls),
            "SELECT mgte_embed(text)": timed(lambda: db.execute("SELECT mgte_embed(%s)", [QUERY]).fetchone(),
                                             args.calls),
        }
        print(f"model {args.model}, {args.calls} calls each, {os.cpu_count()} CPUs")
        for name, samples in results.items():
            q = statistics.quantiles(samples, n=100)
            print(f"  {name:34s} p50 {q[49]:6.2f} ms   p95 {q[94]:6.2f} ms   p99 {q[98]:6.2f} ms")
        for clients in (1, 8):
            tps = pgbench_tps(bench.cluster, clients, args.seconds, bench.root)
            print(f"  pgbench, {clients} session(s), SELECT mgte_embed(text): {tps:8.0f} calls/s")
        batching = client.info()["batching"]
        print(f"  server batching: {batching['sequences']} sequences in {batching['batches']} batches, "
              f"largest {batching['largest_batch']}, {batching['multi_request_batches']} shared by requests")


if __name__ == "__main__":
    main()
