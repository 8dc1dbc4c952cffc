"""DDL on an enabled table: every way a row enters, leaves or changes reaches its embeddings.

PostgreSQL fires a statement's triggers on the relation it names only, pgoutput sends no
partition's own TRUNCATE for a table published as its root, partitions attached, detached or
dropped move rows without any DML, and ALTER COLUMN ... TYPE ... USING rewrites texts without
any: each way is exercised here, by alice, a plain role who owns the table. mgte's functions
name the table and its columns, so renames are followed or refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from mgte.doctor import diagnose
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import Checkpoints, running_server
from tests.databases import Connection, Database, database, stop, wait_until
from tests.test_security import WORKER, connect, roles, start_worker

__all__ = ["roles"]  # the fixture, imported for pytest


@pytest.fixture
def db(cluster: Cluster, server: ServerProcess, roles: None) -> Iterator[Database]:
    with database(cluster, server.socket) as fresh:
        fresh.conn.execute("CREATE SCHEMA alice AUTHORIZATION alice")
        yield fresh


def current(db: Database, table: str = "alice.docs") -> bool:
    """Every row of the table (partitions included) has the embedding of its text, and
    nothing else is stored."""
    embeddings = db.one("SELECT embeddings::text FROM mgte.enabled")
    return bool(db.one(
        f"SELECT (SELECT count(*) FROM {table}) = (SELECT count(*) FROM {embeddings}) "
        f"AND NOT EXISTS (SELECT FROM {table} d LEFT JOIN {embeddings} e USING (id) "
        "                WHERE e.text_md5 IS DISTINCT FROM md5(d.body))"))


def stored_ids(db: Database) -> set[int]:
    return {int(r[0]) for r in db.conn.execute("SELECT id FROM mgte.docs_embeddings").fetchall()}


def triggers(db: Database, table: str) -> set[str]:
    return {str(r[0]) for r in db.conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass",
                                               [table]).fetchall()}


ASYNC = {"mgte_insert", "mgte_update", "mgte_delete", "mgte_truncate"}


def embedded_docs(db: Database, alice: Connection) -> None:
    """alice.docs, a plain table of 5 rows, enabled by alice, its rows embedded by a worker."""
    alice.execute("CREATE TABLE alice.docs (id bigint PRIMARY KEY, body text)")
    alice.execute("INSERT INTO alice.docs SELECT g, 'document ' || g FROM generate_series(1, 5) g")
    alice.execute("SELECT mgte_enable('alice.docs', 'body')")
    start_worker(db)
    wait_until(lambda: current(db), "embedded")


@pytest.mark.parametrize("mode", ["async", "logical"])
def test_writes_to_partitions_and_partitions_that_come_and_go_reach_the_embeddings(db: Database, mode: str) -> None:
    with connect(db, "alice") as alice:
        alice.execute("CREATE TABLE alice.docs (id bigint PRIMARY KEY, body text NOT NULL) PARTITION BY RANGE (id)")
        alice.execute("CREATE TABLE alice.docs_low PARTITION OF alice.docs FOR VALUES FROM (0) TO (100)")
        # A partition that is partitioned itself: its leaves are written to directly too.
        alice.execute("CREATE TABLE alice.docs_high PARTITION OF alice.docs FOR VALUES FROM (100) TO (300) "
                      "PARTITION BY RANGE (id)")
        alice.execute("CREATE TABLE alice.docs_high_a PARTITION OF alice.docs_high FOR VALUES FROM (100) TO (200)")
        alice.execute("CREATE TABLE alice.docs_high_b PARTITION OF alice.docs_high FOR VALUES FROM (200) TO (300)")
        alice.execute("INSERT INTO alice.docs SELECT g, 'document ' || g FROM generate_series(95, 104) g")
        alice.execute("SELECT mgte_enable('alice.docs', 'body', mode => %s)", [mode])
        start_worker(db)
        wait_until(lambda: current(db), "the rows of every partition are embedded")
        assert db.one("SELECT mgte._publication_intact()") is (mode == "logical")

        # Written to the partitions themselves, at both levels.
        alice.execute("INSERT INTO alice.docs_low VALUES (1, 'into the partition')")
        alice.execute("INSERT INTO alice.docs_high_b VALUES (250, 'into a partition of a partition')")
        alice.execute("UPDATE alice.docs_high_a SET body = 'updated in the partition' WHERE id = 101")
        alice.execute("UPDATE alice.docs_high SET body = 'updated one level up' WHERE id = 102")
        alice.execute("DELETE FROM alice.docs_low WHERE id = 96")
        wait_until(lambda: current(db), "writes to the partitions are embedded")
        assert 96 not in stored_ids(db) and {1, 250} <= stored_ids(db)

        # A partition created after mgte_enable catches its writes too.
        alice.execute("CREATE TABLE alice.docs_top PARTITION OF alice.docs FOR VALUES FROM (300) TO (400)")
        alice.execute("INSERT INTO alice.docs_top VALUES (301, 'into a new partition')")
        wait_until(lambda: current(db), "a new partition's rows are embedded")

        # A partition's own TRUNCATE takes its rows' embeddings along, and no others.
        alice.execute("TRUNCATE alice.docs_high_a")
        wait_until(lambda: current(db), "a truncated partition's rows are no longer stored")
        assert not any(100 <= i < 200 for i in stored_ids(db)) and 250 in stored_ids(db)

        # Attached with its rows; detached with them; dropped with them.
        alice.execute("CREATE TABLE alice.docs_more (LIKE alice.docs)")
        alice.execute("INSERT INTO alice.docs_more SELECT g, 'attached ' || g FROM generate_series(400, 404) g")
        alice.execute("ALTER TABLE alice.docs ATTACH PARTITION alice.docs_more FOR VALUES FROM (400) TO (500)")
        wait_until(lambda: current(db), "an attached partition's rows are embedded")
        assert {400, 404} <= stored_ids(db)
        alice.execute("ALTER TABLE alice.docs DETACH PARTITION alice.docs_top")
        wait_until(lambda: current(db), "a detached partition's rows are no longer stored")
        assert 301 not in stored_ids(db)
        # The detached table is alice's own again: mgte has no trigger left on it.
        assert db.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'alice.docs_top'::regclass") == 0
        alice.execute("INSERT INTO alice.docs_top VALUES (302, 'not a partition any more')")
        alice.execute("DROP TABLE alice.docs_more")
        wait_until(lambda: current(db), "a dropped partition's rows are no longer stored")
        assert 400 not in stored_ids(db) and 302 not in stored_ids(db)
        assert db.one("SELECT count(*) FROM mgte.compare_requests") == 0
        assert "made again" not in db.worker_logs()  # the publication was as mgte made it throughout

        alice.execute("TRUNCATE alice.docs")
        wait_until(lambda: db.one("SELECT count(*) FROM mgte.docs_embeddings") == 0, "the whole table is truncated")


def test_mode_switches_and_a_reembed_move_the_partitions_triggers_along(
        db: Database, checkpoints: Checkpoints) -> None:
    with connect(db, "alice") as alice:
        alice.execute("CREATE TABLE alice.docs (id bigint PRIMARY KEY, body text NOT NULL) PARTITION BY LIST (id)")
        alice.execute("CREATE TABLE alice.docs_odd PARTITION OF alice.docs FOR VALUES IN (1, 3, 5)")
        alice.execute("CREATE TABLE alice.docs_rest PARTITION OF alice.docs DEFAULT")
        alice.execute("INSERT INTO alice.docs SELECT g, 'document ' || g FROM generate_series(1, 6) g")
        alice.execute("SELECT mgte_enable('alice.docs', 'body')")
        assert triggers(db, "alice.docs") == triggers(db, "alice.docs_odd") == ASYNC
        alice.execute("SELECT mgte_enable('alice.docs', 'body', mode => 'logical')")
        assert triggers(db, "alice.docs") == set() and triggers(db, "alice.docs_odd") == {"mgte_truncate"}
        alice.execute("SELECT mgte_enable('alice.docs', 'body', mode => 'async')")
        assert triggers(db, "alice.docs_odd") == triggers(db, "alice.docs_rest") == ASYNC
        worker = db.start_worker("--dsn", f"{db.conninfo} user={WORKER}")
        wait_until(lambda: current(db), "embedded with the first model")
        stop(worker)

        new_model = str(checkpoints.embedding_original)
        with running_server(checkpoints.embedding_original) as new_server:
            alice.execute("SELECT mgte_reembed('alice.docs', model => %s)", [new_model])
            assert triggers(db, "alice.docs_odd") == ASYNC | {f"mgte_next_{e}" for e in
                                                              ("insert", "update", "delete", "truncate")}
            alice.execute("UPDATE alice.docs_odd SET body = 'changed in the partition' WHERE id = 3")
            db.start_worker("--dsn", f"{db.conninfo} user={WORKER}", "--socket", str(new_server.socket))
            wait_until(lambda: db.one("SELECT model FROM mgte.enabled") == new_model, "the second set takes over")
            assert triggers(db, "alice.docs") == triggers(db, "alice.docs_odd") == triggers(db, "alice.docs_rest") \
                == ASYNC
            alice.execute("INSERT INTO alice.docs_rest VALUES (8, 'written to a partition after the take-over')")
            wait_until(lambda: current(db), "every row has the new model's embedding of its text")
            embeddings = db.one("SELECT embeddings::text FROM mgte.enabled")
            assert db.one(f"SELECT count(*) FROM {embeddings} WHERE model = %s", new_model) == 7


def refused(conn: Connection, statement: str, sqlstate: str) -> str:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(statement)
    assert raised.value.sqlstate == sqlstate, f"{statement}: {raised.value}"
    assert raised.value.diag.message_hint
    return f"{raised.value.diag.message_primary} ({raised.value.diag.message_hint})"


def test_what_mgte_cannot_follow_is_refused_with_what_to_do(db: Database) -> None:
    """A partition or a table in an inheritance tree: its triggers would miss writes, those
    through the partitioned table or a parent's UPDATE and DELETE of its children's rows. A
    table whose policies bind its owner: mgte would miss rows."""
    with connect(db, "alice") as alice:
        alice.execute("CREATE TABLE alice.docs (id bigint PRIMARY KEY, body text) PARTITION BY RANGE (id)")
        alice.execute("CREATE TABLE alice.docs_low PARTITION OF alice.docs FOR VALUES FROM (0) TO (100)")
        message = refused(alice, "SELECT mgte_enable('alice.docs_low', 'body')", "42809")
        assert "alice.docs_low is a partition of alice.docs" in message and "enable alice.docs instead" in message

        # An enabled table may not become a partition afterwards either.
        alice.execute("CREATE TABLE alice.docs_more (id bigint PRIMARY KEY, body text)")
        alice.execute("SELECT mgte_enable('alice.docs_more', 'body')")
        attach = "ALTER TABLE alice.docs ATTACH PARTITION alice.docs_more FOR VALUES FROM (100) TO (200)"
        message = refused(alice, attach, "42809")
        assert "mgte_disable('alice.docs_more')" in message
        assert db.one("SELECT relispartition FROM pg_class WHERE oid = 'alice.docs_more'::regclass") is False

        alice.execute("CREATE TABLE alice.notes (id bigint PRIMARY KEY, body text)")
        alice.execute("CREATE TABLE alice.notes_child () INHERITS (alice.notes)")
        message = refused(alice, "SELECT mgte_enable('alice.notes', 'body')", "0A000")
        assert "its child alice.notes_child" in message and "PARTITION BY" in message
        refused(alice, "SELECT mgte_enable('alice.notes_child', 'body')", "0A000")
        refused(alice, "CREATE TABLE alice.docs_more_child () INHERITS (alice.docs_more)", "0A000")
        assert db.one("SELECT to_regclass('alice.docs_more_child')") is None
        refused(alice, "ALTER TABLE alice.docs_more INHERIT alice.notes", "0A000")

        # Policies forced on the owner would hide rows from mgte, which reads as the owner.
        alice.execute("ALTER TABLE alice.docs_more ENABLE ROW LEVEL SECURITY")  # not forced: fine
        message = refused(alice, "ALTER TABLE alice.docs_more FORCE ROW LEVEL SECURITY", "55000")
        assert "NO FORCE ROW LEVEL SECURITY" in message
        alice.execute("CREATE TABLE alice.secret (id bigint PRIMARY KEY, body text)")
        alice.execute("ALTER TABLE alice.secret ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        refused(alice, "SELECT mgte_enable('alice.secret', 'body')", "55000")

        # Partitions of an enabled partitioned table are welcome.
        alice.execute("SELECT mgte_enable('alice.docs', 'body')")
        alice.execute("CREATE TABLE alice.docs_high PARTITION OF alice.docs FOR VALUES FROM (200) TO (300)")
        assert db.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'alice.docs_high'::regclass") == 4

        # Only a partition's drop asks for a comparison, however the triggers dropped are named.
        db.conn.execute("CREATE SCHEMA eve AUTHORIZATION eve")
        with connect(db, "eve") as eve:
            eve.execute("CREATE TABLE eve.t (id int)")
            eve.execute("CREATE FUNCTION eve.nothing() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'")
            eve.execute("CREATE TRIGGER mgte_insert AFTER INSERT ON eve.t FOR EACH STATEMENT "
                        "EXECUTE FUNCTION eve.nothing()")
            eve.execute("DROP TABLE eve.t")
        assert db.one("SELECT count(*) FROM mgte.compare_requests") == 0
        alice.execute("DROP TABLE alice.docs_high")
        assert db.conn.execute("SELECT tbl::text FROM mgte.compare_requests").fetchall() == [("alice.docs",)]
        status = alice.execute("SELECT compare_requested IS NOT NULL FROM mgte_status('alice.docs')").fetchone()
        assert status == (True,)
        assert db.one("SELECT count(*) FROM mgte.partitions") == 1  # docs_low


def test_a_rewritten_column_is_embedded_again_and_renames_are_followed_or_refused(db: Database) -> None:
    with connect(db, "alice") as alice:
        embedded_docs(db, alice)

        # Every text changes, and no trigger fires.
        alice.execute("ALTER TABLE alice.docs ALTER COLUMN body TYPE varchar(100) USING upper(body)")
        wait_until(lambda: current(db), "the rewritten texts are embedded")

        # The table and its schema renamed: writes go on reaching the embeddings.
        alice.execute("ALTER TABLE alice.docs RENAME TO papers")
        alice.execute("INSERT INTO alice.papers VALUES (6, 'written after the table was renamed')")
        wait_until(lambda: current(db, "alice.papers"), "a write to the renamed table is embedded")
        db.conn.execute("ALTER SCHEMA alice RENAME TO alicia")
        alice.execute("UPDATE alicia.papers SET body = 'written after the schema was renamed' WHERE id = 1")
        wait_until(lambda: current(db, "alicia.papers"), "a write to the table in the renamed schema is embedded")
        assert len(alice.execute("SELECT * FROM mgte_search('alicia.papers', 'written', k => 3)").fetchall()) == 3

        # Its text and key columns cannot be renamed or dropped under it, nor its primary key.
        for statement in ("ALTER TABLE alicia.papers RENAME COLUMN body TO content",
                          "ALTER TABLE alicia.papers DROP COLUMN body",
                          "ALTER TABLE alicia.papers RENAME COLUMN id TO paper_id",
                          "ALTER TABLE alicia.papers DROP CONSTRAINT docs_pkey"):
            message = refused(alice, statement, "2BP01")
            assert "mgte_disable('alicia.papers')" in message
        alice.execute("ALTER TABLE alicia.papers DROP CONSTRAINT docs_pkey, ADD PRIMARY KEY (id)")  # rebuilt
        alice.execute("INSERT INTO alicia.papers VALUES (7, 'written after the refusals')")
        wait_until(lambda: current(db, "alicia.papers"), "writes still reach the embeddings")


def test_resync_mends_triggers_disabled_or_dropped_by_hand_and_what_they_missed(
        db: Database, server: ServerProcess) -> None:
    with connect(db, "alice") as alice:
        embedded_docs(db, alice)
        alice.execute("ALTER TABLE alice.docs DISABLE TRIGGER mgte_insert")
        alice.execute("DROP TRIGGER mgte_update ON alice.docs")
        alice.execute("INSERT INTO alice.docs VALUES (6, 'inserted while its trigger was disabled')")
        alice.execute("UPDATE alice.docs SET body = 'updated without a trigger' WHERE id = 1")
        capture = [c for c in diagnose(db.conninfo, str(server.socket)) if c.check == "capture"]
        assert [(c.status, c.table) for c in capture] == [("fail", "alice.docs")]
        assert "mgte_insert on alice.docs" in capture[0].message and "mgte_update on alice.docs" in capture[0].message
        with connect(db, "eve") as eve, pytest.raises(psycopg.Error) as raised:
            eve.execute("SELECT mgte_resync('alice.docs')")
        assert raised.value.sqlstate == "42501"
        alice.execute("SELECT mgte_resync('alice.docs')")
        wait_until(lambda: current(db), "what the triggers missed is embedded")
        assert [c for c in diagnose(db.conninfo, str(server.socket)) if c.check == "capture"] == []
        alice.execute("UPDATE alice.docs SET body = 'updated through the trigger made again' WHERE id = 2")
        wait_until(lambda: current(db), "the triggers work again")

