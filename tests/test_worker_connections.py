"""`mgte worker --connections N`: several batches of one table settled at once, on
connections of their own, with real PostgreSQL, servers and worker processes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from array import array
from collections.abc import Iterator

import psycopg
import pytest

from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import Checkpoints, shared_tempdir, start_server
from tests.databases import Database, database, done, wait_until
from tests.test_auto_embed import assert_all_embedded, make_docs


@pytest.fixture
def strict_server(checkpoints: Checkpoints) -> Iterator[ServerProcess]:
    """A server of this test's own, that rejects any request over 4 KiB as bad input."""
    running = start_server(checkpoints.embedding_native, "--max-request-bytes", "4096",
                           socket_dir=shared_tempdir("mgte-connections-"))
    yield running
    running.stop()


def vectors(db: Database, query: str) -> dict[int, list[float]]:
    return {key: array("f", [float(x) for x in text.strip("[]").split(",")]).tolist()
            for key, text in db.conn.execute(query).fetchall()}


def worker_sessions(db: Database) -> int:
    return int(db.one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND application_name = 'mgte worker'"))


def stored_in_logs(db: Database) -> int:
    """Rows stored, summed over the worker's line per settled batch."""
    return sum(int(n) for n in re.findall(r"docs: \d+ rows: (\d+) stored", db.worker_logs()))


def test_three_connections_store_each_row_once_with_the_vectors_of_mgte_embed(
        cluster: Cluster, strict_server: ServerProcess) -> None:
    with database(cluster, strict_server.socket) as db:
        make_docs(db, 300)
        db.conn.execute("INSERT INTO docs (id, body) VALUES (301, repeat('x', 5000)), (302, repeat('y', 6000))")
        db.start_worker("--batch-size", "7", "--connections", "3")
        wait_until(lambda: done(db) and db.status("docs")["failed"] == 2, "the queue is drained")
        assert worker_sessions(db) == 3 + 2  # the settles', the claims' and the listener's

        assert db.one("SELECT count(*) FROM mgte.docs_embeddings") == 300
        assert stored_in_logs(db) == 300  # none stored twice
        assert_all_embedded(db, 300, check_vectors=0)
        got = vectors(db, "SELECT id, embedding::text FROM mgte.docs_embeddings")
        expected = vectors(db, "SELECT id, mgte_embed(body)::text FROM docs WHERE id <= 300")
        assert got.keys() == expected.keys()
        for key, vector in got.items():
            # Another batch shape changes the float rounding, nothing more.
            assert vector == pytest.approx(expected[key], abs=1e-5), key
        failed = db.conn.execute("SELECT id, attempts, error FROM mgte.docs_failed ORDER BY id").fetchall()
        assert [(key, attempts) for key, attempts, _ in failed] == [(301, 1), (302, 1)]
        assert all("over the limit" in error for _, _, error in failed)


def test_an_update_racing_a_settle_is_never_stored_stale_while_the_other_connections_go_on(
        cluster: Cluster, strict_server: ServerProcess) -> None:
    """The worker claims a batch; a write changes one of its texts and holds the queue entry
    before the batch is settled; the settle waits for it, sees the new text when it commits,
    and stores the rest of the batch but not that row, which is embedded again. Meanwhile the
    worker's other connections settle every other batch.

    The order is forced: the worker's first table is locked, so that its pass stops after
    asking the server which model it serves; the server is then stopped (SIGSTOP), so that
    the first batch of docs stays claimed and unsettled until the write holds its row."""
    rows, batch = 120, 10
    with database(cluster, strict_server.socket) as db:
        make_docs(db, 0, table="a_first")  # drained before docs: the tables go by name
        make_docs(db, rows)
        with psycopg.connect(db.conninfo, autocommit=True) as gate, \
                psycopg.connect(db.conninfo, autocommit=True) as writer:
            gate.execute("BEGIN")
            gate.execute("LOCK TABLE mgte.a_first_queue IN EXCLUSIVE MODE")
            db.start_worker("--batch-size", str(batch), "--connections", "3")
            wait_until(lambda: blocked_by(db, gate.info.backend_pid), "the worker waits to claim from a_first")
            strict_server.process.send_signal(signal.SIGSTOP)
            try:
                gate.execute("COMMIT")
                wait_until(lambda: db.status("docs")["in_progress"] == batch, "the first batch of docs is claimed")
                changed = db.one("SELECT min(id) FROM mgte.docs_queue WHERE lease IS NOT NULL")
                writer.execute("BEGIN")
                writer.execute("UPDATE docs SET body = 'written while its batch was embedded' WHERE id = %s",
                               [changed])
            finally:
                strict_server.process.send_signal(signal.SIGCONT)
            wait_until(lambda: blocked_by(db, writer.info.backend_pid), "the settle waits for the write")
            # The other connections go on: all but the waiting batch are stored.
            wait_until(lambda: db.one("SELECT count(*) FROM mgte.docs_embeddings") == rows - batch,
                       "the other batches are stored")
            writer.execute("COMMIT")
        wait_until(lambda: done(db), "the changed row is embedded again")
        assert_all_embedded(db, rows)
        assert db.one("SELECT text_md5 = md5('written while its batch was embedded') FROM mgte.docs_embeddings "
                      "WHERE id = %s", changed)
        assert stored_in_logs(db) == rows  # the changed row once, from its new text
        assert db.status("docs")["failed"] == 0


def blocked_by(db: Database, pid: int) -> bool:
    """Whether a session of the worker waits for a lock that session `pid` holds."""
    return bool(db.one("SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name = 'mgte worker' AND %s = ANY(pg_blocking_pids(pid))", pid))


def test_backfill_with_several_connections_counts_each_row_once(cluster: Cluster,
                                                                strict_server: ServerProcess) -> None:
    with database(cluster, strict_server.socket) as db:
        make_docs(db, 200)
        out = subprocess.run([sys.executable, "-m", "mgte", "backfill", "docs", "--dsn", db.conninfo,
                              "--socket", str(db.socket), "--batch-size", "9", "--connections", "4"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "200/200 rows" in out.stderr and "docs: done, 200 rows" in out.stderr
        assert_all_embedded(db, 200)
