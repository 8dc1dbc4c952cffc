"""Auto-embedding throughput and the cost it adds to INSERT, each against a baseline of the same run.

    .venv/bin/python -m bench.auto_embed [--rows 20000] [--model tiny|full] [--workers 1]
        [--connections 4] [--server-per-worker] [--mode async|logical] [--json PATH]

  1. INSERT ... SELECT of --rows rows into a plain table, and into the same table with
     mgte_enable (--mode, async by default): the statement's own duration, median of --repeat runs.
  2. Rows/s from the start of that INSERT to the last embedding stored by the `mgte worker`s,
     against two limits measured in the same run:
     - the Python client embedding the same texts directly (dense + sparse, in batches of
       the worker's size), one client per server the workers use, at once;
     - the store limit: the same rows' embeddings (the workers' own results) stored into a
       fresh copy of the embeddings table, with the same indexes, by one INSERT ... SELECT,
       and by as many concurrent INSERTs as the workers have settle connections. With HNSW
       indexes this, not the model, is what a small model on a small machine is bound by.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import psycopg

from bench.common import bench_database, full_size_checkpoint
from mgte.server_process import ServerProcess

TEXT = ("'document ' || g || ' about trains, stations, glaciers and the price of coffee in ' || (g %% 97) "
        "|| repeat(' and more', {padding})")


def insert_seconds(db: psycopg.Connection[Any], text: str, rows: int) -> float:
    started = time.perf_counter()
    db.execute(f"INSERT INTO docs (id, body) SELECT g, {text} FROM generate_series(1, %s) g", [rows])
    return time.perf_counter() - started


def reset(db: psycopg.Connection[Any], mode: str | None, indexes: bool = True) -> None:
    """A fresh docs table, enabled in `mode` (None: plain)."""
    db.execute("DROP TABLE IF EXISTS docs")
    db.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    if mode is not None:
        db.execute("SELECT mgte_enable('docs', 'body', indexes => %s, mode => %s)", [indexes, mode])


def direct_seconds(servers: list[ServerProcess], texts: list[str], batch_size: int) -> float:
    """The texts embedded by one client per server at once, each server an equal share."""
    def run(server: ServerProcess, share: list[str]) -> None:
        with server.client(timeout=None) as client:
            for i in range(0, len(share), batch_size):
                client.encode(share[i:i + batch_size], dense=True, sparse=True, sparse_ids=True)

    for server in servers:
        with server.client(timeout=None) as client:
            client.embed(["warm up"])
    started = time.perf_counter()
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(run, servers, [texts[i::len(servers)] for i in range(len(servers))]))
    return time.perf_counter() - started


def store_seconds(conninfo: str, sessions: int) -> float:
    """The workers' results (mgte.docs_embeddings) stored again into a fresh copy of their
    table with the same indexes, by `sessions` concurrent INSERT ... SELECT statements, each
    of an equal share of the rows."""
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS store_copy")
        db.execute("CREATE TABLE store_copy (LIKE mgte.docs_embeddings INCLUDING ALL)")
        db.execute("CHECKPOINT")  # the worker run's dirty pages are not this measurement's

    def store(share: int) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("INSERT INTO store_copy SELECT * FROM mgte.docs_embeddings WHERE id %% %s = %s",
                         [sessions, share])

    started = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(store, range(sessions)))
    elapsed = time.perf_counter() - started
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute("DROP TABLE store_copy")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--model", default="tiny", help="tiny, or full for a random full-size model")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--padding", type=int, default=0, help="append ' and more' this many times to each text")
    parser.add_argument("--no-indexes", action="store_true", help="mgte_enable(..., indexes => false)")
    parser.add_argument("--connections", type=int, default=4, help="each worker's --connections")
    parser.add_argument("--server-per-worker", action="store_true",
                        help="each worker embeds with a server of its own, not all with one")
    parser.add_argument("--mode", choices=["async", "logical"], default="async", help="mgte_enable's mode")
    parser.add_argument("--json", help="also write every number to this file")
    args = parser.parse_args()
    model = str(full_size_checkpoint()) if args.model == "full" else args.model
    text = TEXT.format(padding=args.padding)

    with bench_database(model) as bench, ExitStack() as stack:
        servers = [bench.server]
        if args.server_per_worker:
            for i in range(1, args.workers):
                server = ServerProcess.start(model, bench.root / f"mgte-{i}.sock", bench.root / f"server-{i}.log")
                stack.callback(server.stop)
                servers.append(server)
        db = bench.db
        plain, enabled = [], []
        for _ in range(args.repeat):
            reset(db, None)
            plain.append(insert_seconds(db, text, args.rows))
            reset(db, args.mode)
            enabled.append(insert_seconds(db, text, args.rows))
        reset(db, None)

        texts = [row[0] for row in db.execute(
            f"SELECT {text} FROM generate_series(1, %s) g ORDER BY g", [args.rows]).fetchall()]
        direct = direct_seconds(servers, texts, args.batch_size)

        reset(db, args.mode, indexes=not args.no_indexes)
        workers = [subprocess.Popen(
            [sys.executable, "-m", "mgte", "worker", "--dsn", bench.conninfo,
             "--socket", str(servers[i % len(servers)].socket), "--batch-size", str(args.batch_size),
             "--connections", str(args.connections), "--log-level", "warning"]) for i in range(args.workers)]
        try:
            time.sleep(2)  # workers connected and listening
            started = time.perf_counter()
            insert_seconds(db, text, args.rows)
            # Every row stored (in logical mode the queue is empty until the worker reads the slot).
            while True:
                row = db.execute("SELECT count(*) FROM mgte.docs_embeddings").fetchone()
                if row is not None and row[0] == args.rows:
                    break
                time.sleep(0.05)
            auto = time.perf_counter() - started
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait()
        stored_row = db.execute("SELECT count(*) FROM mgte.docs_embeddings").fetchone()
        stored = stored_row[0] if stored_row else 0
        store_one = store_seconds(bench.conninfo, 1)
        store_sessions = args.workers * args.connections
        store_many = store_seconds(bench.conninfo, store_sessions)

    p, e = statistics.median(plain), statistics.median(enabled)
    rate = {"direct": args.rows / direct, "auto": args.rows / auto, "store_one_insert": stored / store_one,
            "store_concurrent_inserts": stored / store_many}
    bound_one = min(rate["direct"], rate["store_one_insert"])
    bound_many = min(rate["direct"], rate["store_concurrent_inserts"])
    print(f"model {args.model}, {args.rows} rows of {len(texts[0].encode())}+ bytes, {args.workers} worker(s) with "
          f"{len(servers)} server(s), {args.connections} connection(s) each, batch {args.batch_size}, "
          f"{'no HNSW indexes' if args.no_indexes else 'HNSW indexes'}")
    print(f"  INSERT...SELECT, plain table            {p * 1000:8.1f} ms (median of {args.repeat})")
    print(f"  INSERT...SELECT, mgte_enable ({args.mode:7s}) {e * 1000:8.1f} ms   {e / p:5.2f}x plain")
    print(f"  client embedding the texts directly     {rate['direct']:8.0f} rows/s   ({len(servers)} client(s))")
    print(f"  store limit, one INSERT                 {rate['store_one_insert']:8.0f} rows/s")
    print(f"  store limit, {store_sessions:2d} INSERTs at once        {rate['store_concurrent_inserts']:8.0f} rows/s")
    print(f"  INSERT to last embedding stored         {rate['auto']:8.0f} rows/s   "
          f"{rate['auto'] / rate['direct']:5.2f}x direct, {rate['auto'] / bound_one:5.2f}x min(direct, one INSERT), "
          f"{rate['auto'] / bound_many:5.2f}x min(direct, {store_sessions} INSERTs)   ({stored} stored)")
    if args.json:
        result = {"model": args.model, "mode": args.mode, "rows": args.rows, "workers": args.workers,
                  "servers": len(servers),
                  "connections": args.connections, "batch_size": args.batch_size, "indexes": not args.no_indexes,
                  "insert_plain_ms": p * 1000, "insert_enabled_ms": e * 1000, "stored": stored,
                  "store_sessions": store_sessions, "rows_per_second": rate,
                  "auto_to_direct": rate["auto"] / rate["direct"], "auto_to_bound_one_insert": rate["auto"] / bound_one,
                  "auto_to_bound_concurrent_inserts": rate["auto"] / bound_many}
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
