"""Read replicas: a streaming hot standby of the test cluster (pg_basebackup -R) embeds, reranks
and searches as its primary does, writes nothing, and a worker pointed at it waits, saying why."""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import shared_tempdir
from tests.databases import Database, database, done, stop, wait_until

TEXTS = ["La estación está al norte de la plaza.", "The station is north of the square.",
         "El museo abre a las diez.", "Der Bahnhof liegt im Norden der Stadt.", "Trains leave every hour."]
QUERY = "where is the station"

# Each statement runs on the primary and on the standby; the answers must agree.
READS: list[tuple[str, list[Any]]] = [
    ("SELECT mgte_embed(%s)::real[]", [QUERY]),
    ("SELECT mgte_embed(%s, 16)::real[]", [QUERY]),
    ("SELECT mgte_sparse(%s)", [QUERY]),
    ("SELECT mgte_rerank(%s, %s)", [QUERY, TEXTS[1]]),
    ("SELECT idx, score FROM mgte_rerank(%s, %s::text[])", [QUERY, TEXTS]),
    ("SELECT key, body, rank, dense_score, sparse_score, fused_score, rerank_score "
     "FROM mgte_search('docs', %s, k => 3)", [QUERY]),
    ("SELECT key, rank, fused_score FROM mgte_search('docs', %s, fusion => 'rrf', rerank => false)", [QUERY]),
    ("SELECT id, body, search_rank, dense_score, sparse_score, fused_score, rerank_score FROM docs_search", []),
    ("SELECT table_name::text, mode, model, pending, in_progress, failed FROM mgte_status()", []),
]


@pytest.fixture
def primary(cluster: Cluster, server: ServerProcess) -> Iterator[Database]:
    with database(cluster, server.socket) as db:
        yield db


@contextlib.contextmanager
def standby_of(primary: Cluster) -> Iterator[Cluster]:
    """A hot standby streaming from `primary`, with its own directory and socket."""
    root = shared_tempdir("mgte-standby-")
    standby = Cluster(root)
    try:
        standby.init_standby(primary)
        standby.start()
        yield standby
    finally:
        standby.stop()
        shutil.rmtree(root, ignore_errors=True)


def replayed(primary: Database, standby: Cluster) -> None:
    """Waits until the standby has replayed everything the primary has written so far."""
    lsn = primary.one("SELECT pg_current_wal_lsn()::text")
    with psycopg.connect(standby.conninfo(), autocommit=True) as conn:
        def caught_up() -> bool:
            row = conn.execute("SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= %s::pg_lsn",
                               [lsn]).fetchone()
            return bool(row and row[0])
        wait_until(caught_up, f"the standby has replayed the primary's WAL up to {lsn}", timeout=60)


def same(a: Any, b: Any) -> bool:
    """Equal, floats within float32 noise: the two sessions' texts may share batches differently."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def answers(conn: psycopg.Connection[Any]) -> list[list[tuple[Any, ...]]]:
    conn.execute("SELECT set_config('mgte.query', %s, false)", [QUERY])  # what the search view reads
    return [conn.execute(statement, params or None).fetchall() for statement, params in READS]


def test_a_standby_embeds_reranks_and_searches_as_its_primary(cluster: Cluster, primary: Database) -> None:
    with standby_of(cluster) as standby:
        # Written after the base backup, so that the rows reach the standby by streaming.
        primary.conn.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text)")
        primary.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync')")
        primary.conn.execute("INSERT INTO docs SELECT i, t FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i)",
                             [TEXTS])
        assert primary.one("SELECT count(*) FROM mgte.docs_embeddings") == len(TEXTS)
        replayed(primary, standby)

        with psycopg.connect(standby.conninfo(primary.name), autocommit=True) as replica:
            assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            # Right after the replay, a first search on the standby sometimes finds nothing through
            # the HNSW indexes (a seq scan, or the same search a moment later, finds the rows); not
            # understood yet, so waited for here and reported rather than hidden.
            wait_until(lambda: len(replica.execute("SELECT key FROM mgte_search('docs', %s, k => 3)",
                                                   [QUERY]).fetchall()) == 3,
                       "the standby's search finds the replayed rows")
            on_standby = answers(replica)
            on_primary = answers(primary.conn)
            for (statement, _), mine, theirs in zip(READS, on_standby, on_primary, strict=True):
                assert mine, f"no rows on the standby: {statement}"
                assert same(mine, theirs), f"{statement}\nstandby: {mine}\nprimary: {theirs}"

            # Writes are refused before any trigger runs: a standby queues and embeds nothing.
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                replica.execute("INSERT INTO docs VALUES (100, 'nope')")
            assert replica.execute("SELECT count(*) FROM mgte.docs_queue").fetchone() == (0,)


def test_a_worker_on_a_standby_waits_until_it_is_promoted(cluster: Cluster, primary: Database,
                                                          tmp_path: Path) -> None:
    with standby_of(cluster) as standby:
        primary.conn.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text)")
        primary.conn.execute("SELECT mgte_enable('docs', 'body')")
        primary.conn.execute("INSERT INTO docs SELECT i, t FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i)",
                             [TEXTS])
        replayed(primary, standby)
        dsn = standby.conninfo(primary.name)
        flags = ["--dsn", dsn, "--socket", str(primary.socket), "--poll-seconds", "1", "--max-backoff-seconds", "1"]

        # A backfill cannot wait for a promotion: it says where to run instead.
        backfill = subprocess.run([sys.executable, "-m", "mgte", "backfill", "docs", *flags],
                                  capture_output=True, text=True, timeout=60)
        assert backfill.returncode == 2  # a user error
        assert "is a hot standby (read-only)" in backfill.stderr and "the primary" in backfill.stderr

        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "mgte", "worker", *flags],
                                      stdout=out, stderr=subprocess.STDOUT)
        try:
            message = "is a hot standby (read-only): auto-embedding runs against the primary; waiting"
            wait_until(lambda: message in log.read_text(), "the worker says it waits on a standby", timeout=60)
            assert worker.poll() is None, log.read_text()

            # Still waiting, not gone: once promoted, the standby is drained like any primary.
            standby.promote()
            with psycopg.connect(dsn, autocommit=True) as conn:
                promoted = Database(primary.name, dsn, conn, primary.socket)
                wait_until(lambda: done(promoted), "the worker has embedded the promoted database's queue",
                           timeout=60)
                assert promoted.one("SELECT count(*) FROM mgte.docs_embeddings") == len(TEXTS)
            text = log.read_text()
            assert text.count(message) == 1, text
            assert "is no longer a standby: auto-embedding starts" in text
            assert worker.poll() is None, text
        finally:
            stop(worker)
