"""Auto-embedding throughput and the cost it adds to INSERT, each against a baseline of the same run.

    .venv/bin/python -m bench.auto_embed [--rows 20000] [--model tiny|full] [--workers 1]

  1. INSERT ... SELECT of --rows rows into a plain table, and into the same table with
     mgte_enable (async): the statement's own duration, median of --repeat runs.
  2. Rows/s from the start of that INSERT to the last embedding stored by `mgte worker`,
     against the Python client embedding the same texts directly (dense + sparse, in
     batches of the worker's size).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

import psycopg

from bench.common import bench_database, full_size_checkpoint

TEXT = ("'document ' || g || ' about trains, stations, glaciers and the price of coffee in ' || (g %% 97) "
        "|| repeat(' and more', {padding})")


def insert_seconds(db: psycopg.Connection[Any], text: str, rows: int) -> float:
    started = time.perf_counter()
    db.execute(f"INSERT INTO docs (id, body) SELECT g, {text} FROM generate_series(1, %s) g", [rows])
    return time.perf_counter() - started


def reset(db: psycopg.Connection[Any], enabled: bool, indexes: bool = True) -> None:
    db.execute("DROP TABLE IF EXISTS docs")
    db.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    if enabled:
        db.execute("SELECT mgte_enable('docs', 'body', indexes => %s)", [indexes])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--model", default="tiny", help="tiny, or full for a random full-size model")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--padding", type=int, default=0, help="append ' and more' this many times to each text")
    parser.add_argument("--no-indexes", action="store_true", help="mgte_enable(..., indexes => false)")
    args = parser.parse_args()
    model = str(full_size_checkpoint()) if args.model == "full" else args.model
    text = TEXT.format(padding=args.padding)

    with bench_database(model) as bench:
        db = bench.db
        plain, enabled = [], []
        for _ in range(args.repeat):
            reset(db, enabled=False)
            plain.append(insert_seconds(db, text, args.rows))
            reset(db, enabled=True)
            enabled.append(insert_seconds(db, text, args.rows))
        reset(db, enabled=False)

        texts = [row[0] for row in db.execute(
            f"SELECT {text} FROM generate_series(1, %s) g ORDER BY g", [args.rows]).fetchall()]
        with bench.server.client(timeout=None) as client:
            client.embed(["warm up"])
            started = time.perf_counter()
            for i in range(0, len(texts), args.batch_size):
                client.encode(texts[i:i + args.batch_size], dense=True, sparse=True, sparse_ids=True)
            direct = time.perf_counter() - started

        reset(db, enabled=True, indexes=not args.no_indexes)
        workers = [subprocess.Popen(
            [sys.executable, "-m", "mgte", "worker", "--dsn", bench.conninfo, "--socket", str(bench.server.socket),
             "--batch-size", str(args.batch_size), "--log-level", "warning"]) for _ in range(args.workers)]
        try:
            time.sleep(2)  # workers connected and listening
            started = time.perf_counter()
            insert_seconds(db, text, args.rows)
            while True:
                row = db.execute("SELECT pending + in_progress FROM mgte_status('docs')").fetchone()
                if row is not None and row[0] == 0:
                    break
                time.sleep(0.05)
            auto = time.perf_counter() - started
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait()
        stored = db.execute("SELECT count(*) FROM mgte.docs_embeddings").fetchone()

    p, e = statistics.median(plain), statistics.median(enabled)
    print(f"model {args.model}, {args.rows} rows of {len(texts[0].encode())}+ bytes, {args.workers} worker(s), "
          f"batch {args.batch_size}, {'no HNSW indexes' if args.no_indexes else 'HNSW indexes'}")
    print(f"  INSERT...SELECT, plain table            {p * 1000:8.1f} ms (median of {args.repeat})")
    print(f"  INSERT...SELECT, mgte_enable (async)    {e * 1000:8.1f} ms   {e / p:5.2f}x plain")
    print(f"  client embedding the texts directly     {args.rows / direct:8.0f} rows/s")
    print(f"  INSERT to last embedding stored         {args.rows / auto:8.0f} rows/s   "
          f"{direct / auto:5.2f}x direct   ({stored[0] if stored else 0} stored)")


if __name__ == "__main__":
    main()
