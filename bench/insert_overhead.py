"""What auto-embedding costs the writer: INSERT into an enabled table against a plain one, next to
the designs it could have used, each against the plain table of the same run.

    .venv/bin/python -m bench.insert_overhead [--rows 5000] [--repeat 5]

For short (~75-byte) and ~1 KB texts, the median of --repeat runs of
  bulk    one INSERT ... SELECT of --rows rows
  single  --rows / 5 single-row INSERTs, each its own transaction, from one client
into `docs (id bigint PRIMARY KEY, body text)`:
  plain                 no trigger
  transition table      a statement trigger that does nothing but receive the new rows
  statement, keys       a statement trigger queueing the new keys (one queue row each)
  row, keys             a row trigger queueing the key of each new row
  mgte_enable           what mgte installs (a statement trigger, async)
  mgte_enable, logical  mode 'logical': no trigger, the slot made (mgte worker reads it)
The bench cluster runs with fsync off, so a commit costs less here than on a real server, and
the ratios for single-row INSERTs are upper bounds. It runs with wal_level = logical, for
every design alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import psycopg

from bench.common import bench_database

TEXTS = {
    # %% is psycopg's escape for %: these go into statements with parameters.
    "~75 bytes": "'document ' || g || ' about trains, stations, glaciers and the price of coffee in ' || (g %% 97)",
    "~1 KB": "'document ' || g || ' about trains, stations, glaciers and the price of coffee in ' || (g %% 97) "
             "|| repeat(' and more', 105)",
}
QUEUE = "CREATE TABLE q (id bigint PRIMARY KEY, enqueued_at timestamptz NOT NULL DEFAULT now())"
DESIGNS = {
    "plain": [],
    "transition table": [
        "CREATE FUNCTION bench_noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$",
        "CREATE TRIGGER t AFTER INSERT ON docs REFERENCING NEW TABLE AS n FOR EACH STATEMENT "
        "EXECUTE FUNCTION bench_noop()"],
    "statement, keys": [
        QUEUE,
        "CREATE FUNCTION bench_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
        "INSERT INTO q (id) SELECT id FROM n ON CONFLICT (id) DO UPDATE SET enqueued_at = now(); "
        "RETURN NULL; END$$",
        "CREATE TRIGGER t AFTER INSERT ON docs REFERENCING NEW TABLE AS n FOR EACH STATEMENT "
        "EXECUTE FUNCTION bench_enqueue()"],
    "row, keys": [
        QUEUE,
        "CREATE FUNCTION bench_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN "
        "INSERT INTO q (id) VALUES (NEW.id) ON CONFLICT (id) DO UPDATE SET enqueued_at = now(); "
        "RETURN NULL; END$$",
        "CREATE TRIGGER t AFTER INSERT ON docs FOR EACH ROW EXECUTE FUNCTION bench_enqueue()"],
    "mgte_enable": ["SELECT mgte_enable('docs', 'body')"],
    "mgte_enable, logical": ["SELECT mgte_enable('docs', 'body', mode => 'logical')", "SELECT mgte._logical_start()"],
}


def reset(db: psycopg.Connection[Any], design: list[str]) -> None:
    db.execute("DROP TABLE IF EXISTS docs CASCADE")  # mgte_disable's work too (its event trigger)
    db.execute("DROP TABLE IF EXISTS q")
    db.execute("DROP FUNCTION IF EXISTS bench_noop(), bench_enqueue()")
    db.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    for statement in design:
        db.execute(statement)


def bulk(db: psycopg.Connection[Any], text: str, rows: int) -> float:
    started = time.perf_counter()
    db.execute(f"INSERT INTO docs (id, body) SELECT g, {text} FROM generate_series(1, %s) g", [rows])
    return time.perf_counter() - started


def single(db: psycopg.Connection[Any], text: str, rows: int) -> float:
    statement = f"INSERT INTO docs (id, body) SELECT g, {text} FROM (SELECT %s::bigint AS g) s"
    started = time.perf_counter()
    for g in range(1, rows + 1):
        db.execute(statement, [g])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with bench_database("tiny") as bench:
        db = bench.db
        for label, text in TEXTS.items():
            for way, run, rows in (("bulk", bulk, args.rows), ("single", single, args.rows // 5)):
                plain = 0.0
                for name, design in DESIGNS.items():
                    times = []
                    for _ in range(args.repeat):
                        reset(db, design)
                        times.append(run(db, text, rows))
                    median = statistics.median(times)
                    plain = plain or median
                    print(f"{label:10s} {way:6s} {name:20s} {median * 1000:8.1f} ms for {rows} rows"
                          f"   {median / plain:5.2f}x plain", flush=True)
        db.execute("DROP TABLE IF EXISTS docs CASCADE")


if __name__ == "__main__":
    main()
