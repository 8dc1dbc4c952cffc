"""The queue protocol of sql/auto_embed.sql, one interleaving at a time.

The test plays the worker (the table's _claim, the real server, the table's _settle) and
holds its transactions open while other sessions write, so that each ordering happens for
sure: a session that must wait is seen waiting on a lock in pg_stat_activity before the
test goes on. No sleeps decide an order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from mgte.client import Client
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from mgte.worker import Outcome, Row, Settler, claim_rows, enabled_tables, register_vectors, settle_arguments
from mgte_udf.records import FIELDS, records
from tests.databases import Connection, Database, database, wait_until

ROWS = 6


@pytest.fixture
def db(cluster: Cluster, server: ServerProcess) -> Iterator[Database]:
    with database(cluster, server.socket) as fresh:
        fresh.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
        fresh.conn.execute("SELECT mgte_enable('docs', 'body')")
        fresh.conn.execute("INSERT INTO docs SELECT g, 'document ' || g FROM generate_series(1, %s) g", [ROWS])
        register_vectors(fresh.conn)
        yield fresh


class Session:
    """Another connection, whose statements run on a thread so that they may block."""

    def __init__(self, db: Database) -> None:
        self.conn: Connection = psycopg.connect(db.conninfo, autocommit=True)
        register_vectors(self.conn)
        self.pid = self.conn.info.backend_pid
        self._thread = ThreadPoolExecutor(max_workers=1)
        self._observer = db

    def run(self, query: str, *params: Any) -> Future[list[tuple[Any, ...]]]:
        def run() -> list[tuple[Any, ...]]:
            cursor = self.conn.execute(query, params or None)
            return cursor.fetchall() if cursor.description else []
        return self._thread.submit(run)

    def wait_until_blocked(self) -> None:
        wait_until(lambda: self._observer.one(
            "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = %s", self.pid),
            "the other session waits for a lock", timeout=30)

    def close(self) -> None:
        self._thread.shutdown()
        self.conn.close()


@pytest.fixture
def other(db: Database) -> Iterator[Session]:
    session = Session(db)
    yield session
    session.close()


def claim(conn: Connection, lease_seconds: float = 600) -> list[Row]:
    return [Row(*row) for row in conn.execute(
        "SELECT key, lease::text, attempts, body, body_md5 FROM mgte.docs_claim(100, %s)", [lease_seconds])]


def embed(client: Client, rows: list[Row]) -> list[Outcome]:
    encoded = client.encode([r.body for r in rows], dense=True, sparse=True, sparse_ids=True)
    return [Outcome(row, "stored", record=record)
            for row, record in zip(rows, records(encoded, 250048), strict=True)]


def settle_statement(outcomes: list[Outcome]) -> tuple[str, tuple[Any, ...]]:
    return "SELECT stored, failed, released FROM mgte.docs_settle(%b, %b, %b)", settle_arguments(outcomes)


def from_another_model(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        assert outcome.record is not None
        outcome.record = dataclasses.replace(outcome.record, model="some-other-model")


def settle(conn: Connection, outcomes: list[Outcome]) -> tuple[int, int, int]:
    query, params = settle_statement(outcomes)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def drain(db: Database, client: Client) -> None:
    """What a worker does until the queue is empty."""
    for _ in range(10):
        rows = claim(db.conn)
        if not rows:
            return
        settle(db.conn, embed(client, rows))
    raise AssertionError("the queue did not empty")


def assert_final(db: Database, client: Client) -> None:
    """Every row with a text has exactly the embedding of that text; nothing else is stored
    or queued."""
    assert db.one("SELECT count(*) FROM mgte.docs_queue") == 0
    texts: dict[int, str] = dict(db.conn.execute("SELECT id, body FROM docs WHERE body IS NOT NULL").fetchall())
    stored = {row[0]: row[1:] for row in db.conn.execute(
        "SELECT id, text_md5, embedding::text FROM mgte.docs_embeddings").fetchall()}
    assert set(stored) == set(texts)
    vectors = client.embed(list(texts.values()))
    for (key, text), vector in zip(texts.items(), vectors, strict=True):
        md5 = db.one("SELECT md5(%s)", text)
        assert stored[key][0] == md5, f"row {key} holds the embedding of another text"
        got = [float(v) for v in stored[key][1].strip("[]").split(",")]
        # The stored vector came from another batch shape than this one.
        assert max(abs(a - b) for a, b in zip(got, vector, strict=True)) < 1e-4


def queued(db: Database) -> dict[int, bool]:
    """Queue entries: key -> whether a lease holds it."""
    return dict(db.conn.execute("SELECT id, lease IS NOT NULL FROM mgte.docs_queue").fetchall())


def test_a_text_changed_after_the_claim_is_given_back_at_once(db: Database, client: Client) -> None:
    rows = claim(db.conn)
    assert len(rows) == ROWS and all(queued(db).values())
    db.conn.execute("UPDATE docs SET body = 'changed while leased' WHERE id = 1")
    assert settle(db.conn, embed(client, rows)) == (ROWS - 1, 0, 1)
    assert queued(db) == {1: False}  # claimable now, not when the lease runs out
    assert db.one("SELECT count(*) FROM mgte.docs_embeddings WHERE id = 1") == 0
    again = claim(db.conn)
    assert [(r.key, r.body) for r in again] == [({"id": 1}, "changed while leased")]
    assert settle(db.conn, embed(client, again)) == (1, 0, 0)
    assert_final(db, client)


def test_a_write_that_holds_the_entry_is_seen_by_the_settle(db: Database, client: Client, other: Session) -> None:
    """The write commits while the settle waits for its lock: the settle must compare with
    the text committed then, not with the one its statement started with."""
    outcomes = embed(client, claim(db.conn))
    other.conn.execute("BEGIN")
    other.conn.execute("UPDATE docs SET body = 'written during the settle' WHERE id = 2")
    worker = Session(db)
    try:
        query, params = settle_statement(outcomes)
        settling = worker.run(query, *params)
        worker.wait_until_blocked()
        other.conn.execute("COMMIT")
        assert settling.result(timeout=30) == [(ROWS - 1, 0, 1)]
    finally:
        worker.close()
    assert queued(db) == {2: False}
    drain(db, client)
    assert_final(db, client)


def test_a_write_waiting_on_the_settle_queues_its_row_again(db: Database, client: Client, other: Session) -> None:
    outcomes = embed(client, claim(db.conn))
    with db.conn.transaction():
        assert settle(db.conn, outcomes) == (ROWS, 0, 0)
        writing = other.run("UPDATE docs SET body = 'written after the settle' WHERE id = 3")
        other.wait_until_blocked()
    writing.result(timeout=30)
    assert queued(db) == {3: False}
    drain(db, client)
    assert_final(db, client)


def test_a_delete_waiting_on_the_settle_removes_what_it_stored(db: Database, client: Client,
                                                               other: Session) -> None:
    outcomes = embed(client, claim(db.conn))
    with db.conn.transaction():
        assert settle(db.conn, outcomes) == (ROWS, 0, 0)
        deleting = other.run("DELETE FROM docs WHERE id = 4")
        other.wait_until_blocked()
    deleting.result(timeout=30)
    assert db.one("SELECT count(*) FROM mgte.docs_embeddings WHERE id = 4") == 0
    assert_final(db, client)


def test_sync_mode_waits_for_a_settle_and_wins(db: Database, client: Client, other: Session) -> None:
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync')")
    outcomes = embed(client, claim(db.conn))
    with db.conn.transaction():
        assert settle(db.conn, outcomes) == (ROWS, 0, 0)
        writing = other.run("UPDATE docs SET body = 'embedded by the statement' WHERE id = 5")
        other.wait_until_blocked()
    writing.result(timeout=30)
    assert queued(db) == {}
    assert_final(db, client)


# Each rewrite, and how many of the claimed rows still hold the text the worker embedded
# under the lease it holds (the others must not be stored).
REWRITES: dict[str, tuple[list[str], int]] = {
    "delete and insert another text": (["DELETE FROM docs WHERE id = 1", "INSERT INTO docs VALUES (1, 'reborn')"],
                                       ROWS - 1),
    "delete and insert the same text": (["DELETE FROM docs WHERE id = 1",
                                         "INSERT INTO docs VALUES (1, 'document 1')"], ROWS - 1),
    "truncate and insert": (["TRUNCATE docs", "INSERT INTO docs VALUES (1, 'after the truncate')"], 0),
    "text to NULL and back": (["UPDATE docs SET body = NULL WHERE id = 1",
                               "UPDATE docs SET body = 'back again' WHERE id = 1"], ROWS - 1),
    "text to NULL": (["UPDATE docs SET body = NULL WHERE id = 1"], ROWS - 1),
    "key change": (["UPDATE docs SET id = 100 WHERE id = 1"], ROWS - 1),
    "key swap": (["UPDATE docs SET id = -1 WHERE id = 1", "UPDATE docs SET id = 1 WHERE id = 2",
                  "UPDATE docs SET id = 2 WHERE id = -1"], ROWS - 2),
}


@pytest.mark.parametrize(("statements", "still_current"), REWRITES.values(), ids=REWRITES.keys())
def test_a_row_rewritten_during_the_lease_ends_with_its_final_text(db: Database, client: Client,
                                                                    statements: list[str], still_current: int) -> None:
    rows = claim(db.conn)
    for statement in statements:
        db.conn.execute(statement)
    stored, failed, _ = settle(db.conn, embed(client, rows))
    assert (stored, failed) == (still_current, 0)
    drain(db, client)
    assert_final(db, client)


def test_a_stale_lease_stores_nothing(db: Database, client: Client) -> None:
    """A worker whose lease ran out and was taken over stores nothing, and the row is stored
    once, by the worker holding the lease."""
    first = claim(db.conn, lease_seconds=0.001)
    wait_until(lambda: db.one("SELECT bool_and(leased_until < now()) FROM mgte.docs_queue"), "the lease ran out")
    second = claim(db.conn)
    assert {r.body for r in second} == {r.body for r in first} and {r.lease for r in second}.isdisjoint(
        r.lease for r in first)
    assert settle(db.conn, embed(client, first)) == (0, 0, 0)
    assert db.one("SELECT count(*) FROM mgte.docs_embeddings") == 0
    assert settle(db.conn, embed(client, second)) == (ROWS, 0, 0)
    assert_final(db, client)


def test_failures_count_attempts_and_dead_letter(db: Database, client: Client) -> None:
    rows = {r.key["id"]: r for r in claim(db.conn)}
    outcomes = [Outcome(rows[1], "failed", error="rejected: bad input"),
                Outcome(rows[2], "retry", error="failed alone"),
                Outcome(rows[3], "released", error="server down")]
    assert settle(db.conn, outcomes + embed(client, [rows[4], rows[5], rows[6]])) == (3, 1, 2)
    assert db.conn.execute("SELECT id, attempts, error, text_md5 = md5('document 1') "
                           "FROM mgte.docs_failed").fetchall() == [(1, 1, "rejected: bad input", True)]
    assert db.conn.execute("SELECT id, attempts, last_error, lease IS NULL FROM mgte.docs_queue "
                           "ORDER BY id").fetchall() == [(2, 1, "failed alone", True), (3, 0, "server down", True)]
    db.conn.execute("UPDATE docs SET body = 'a new text' WHERE id IN (1, 2)")  # a new text: new tries
    assert db.conn.execute("SELECT id, attempts, last_error FROM mgte.docs_queue ORDER BY id").fetchall() \
        == [(1, 0, None), (2, 0, None), (3, 0, "server down")]
    assert db.one("SELECT count(*) FROM mgte.docs_failed") == 0
    drain(db, client)
    assert_final(db, client)


def test_truncate_empties_the_embeddings_queue_and_dead_letters(db: Database, client: Client) -> None:
    rows = claim(db.conn)
    settle(db.conn, [*embed(client, rows[:-1]), Outcome(rows[-1], "failed", error="rejected")])
    db.conn.execute("INSERT INTO docs VALUES (100, 'queued')")
    assert [db.one(f"SELECT count(*) FROM mgte.docs_{t}") for t in ("embeddings", "failed", "queue")] == \
        [ROWS - 1, 1, 1]
    db.conn.execute("TRUNCATE docs")
    assert [db.one(f"SELECT count(*) FROM mgte.docs_{t}") for t in ("embeddings", "failed", "queue")] == [0, 0, 0]


def test_a_settle_refuses_the_vectors_of_another_model(db: Database, client: Client) -> None:
    drain(db, client)
    model = db.one("SELECT model FROM mgte.enabled")
    assert model == client.info()["model"]["id"]
    db.conn.execute("UPDATE docs SET body = 'to re-embed' WHERE id = 1")
    outcomes = embed(client, claim(db.conn))
    from_another_model(outcomes)
    with pytest.raises(psycopg.Error) as raised:
        settle(db.conn, outcomes)
    assert raised.value.sqlstate == "55000"
    assert "some-other-model" in str(raised.value) and model in str(raised.value)


def test_sql_reads_the_fields_python_writes(db: Database) -> None:
    """The names an EmbeddingRecord travels under are the columns SQL reads."""
    encode_columns = db.one("SELECT proargnames FROM pg_proc WHERE oid = 'mgte._encode'::regproc")
    assert encode_columns[-len(FIELDS) - 1:] == ["mgte_ord", *FIELDS]
    settle = db.one("SELECT prosrc FROM pg_proc WHERE oid = 'mgte.docs_settle'::regproc")
    assert all(f"m.{name}" in settle for name in FIELDS)


def test_the_worker_gives_back_a_batch_the_table_refuses_for_its_model(db: Database, client: Client) -> None:
    """The served model changed while a batch was embedded: the worker's settle stores
    nothing and gives the rows back at once, instead of leaving them leased."""
    drain(db, client)
    db.conn.execute("UPDATE docs SET body = 'to re-embed' WHERE id IN (1, 2)")
    table = next(t for t in enabled_tables(db.conn) if t.name == "docs")
    with Settler([db.conn]) as settler:
        outcomes = embed(client, claim_rows(db.conn, table, 10, 600))
        from_another_model(outcomes)
        result = settler.settle(table, outcomes, 0.0).result()
    assert (result.stored, result.failed, result.released) == (0, 0, 2)
    assert queued(db) == {1: False, 2: False}
    assert "some-other-model" in db.one("SELECT last_error FROM mgte.docs_queue WHERE id = 1")
