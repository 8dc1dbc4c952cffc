"""Logical mode: no trigger on the table; `mgte worker` reads its changes through a logical
decoding slot. Real PostgreSQL (wal_level = logical), real servers, real workers."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mgte.doctor import diagnose
from mgte.logical import decode
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import Checkpoints, running_server, shared_tempdir
from tests.databases import Database, database, stop, wait_until
from tests.test_auto_embed import assert_all_embedded, make_docs


@pytest.fixture
def db(cluster: Cluster, server: ServerProcess) -> Iterator[Database]:
    with database(cluster, server.socket) as fresh:
        yield fresh


def current(db: Database, table: str = "docs") -> bool:
    """Every row with a text has the embedding of that text, and nothing else is stored:
    in logical mode the queue may be empty before the worker has read a write."""
    embeddings = db.one("SELECT embeddings::text FROM mgte.enabled WHERE tbl = %s::regclass", table)
    return bool(db.one(
        f"SELECT (SELECT count(*) FROM {table} WHERE body IS NOT NULL) = (SELECT count(*) FROM {embeddings}) "
        f"AND NOT EXISTS (SELECT FROM {table} d LEFT JOIN {embeddings} e USING (id) "
        "                 WHERE d.body IS NOT NULL AND e.text_md5 IS DISTINCT FROM md5(d.body))"))


def embedded_at(db: Database) -> dict[int, Any]:
    return dict(db.conn.execute("SELECT id, embedded_at FROM mgte.docs_embeddings").fetchall())


def triggers(db: Database) -> set[str]:
    return {row[0] for row in db.conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs'::regclass")}


def slots(db: Database) -> list[str]:
    return [row[0] for row in db.conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()").fetchall()]


def test_every_write_reaches_the_embeddings_without_a_trigger(db: Database) -> None:
    make_docs(db, 20, enable=False)
    db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    assert triggers(db) == set()
    assert db.conn.execute("SELECT pubname, attnames FROM pg_publication_tables "
                           "WHERE tablename = 'docs'").fetchall() == [("mgte_changes", ["id"])]
    assert db.status("docs")["mode"] == "logical"
    worker = db.start_worker()
    wait_until(lambda: current(db), "the rows there before are embedded")
    assert_all_embedded(db, 20)
    first = embedded_at(db)

    # Writes that leave the text alone re-embed nothing; the change after them tells when
    # the worker has read them, since the slot hands writes on in commit order.
    db.conn.execute("UPDATE docs SET n = n + 1")
    db.conn.execute("UPDATE docs SET body = body WHERE id <= 10")
    db.conn.execute("UPDATE docs SET body = 'changed' WHERE id = 3")
    wait_until(lambda: current(db), "the changed text is embedded")
    after = embedded_at(db)
    assert [i for i in first if after[i] != first[i]] == [3]

    db.conn.execute("UPDATE docs SET body = NULL WHERE id = 4")
    db.conn.execute("DELETE FROM docs WHERE id = 5")
    db.conn.execute("UPDATE docs SET id = 106 WHERE id = 6")  # a key that moves
    db.conn.execute("INSERT INTO docs (id, body) SELECT g, 'new ' || g FROM generate_series(21, 25) g")
    with db.conn.transaction():  # a row deleted and inserted again in one transaction
        db.conn.execute("DELETE FROM docs WHERE id = 7")
        db.conn.execute("INSERT INTO docs (id, body) VALUES (7, 'reborn')")
    wait_until(lambda: current(db), "every write is embedded")
    assert db.one("SELECT count(*) FROM mgte.docs_embeddings WHERE id IN (4, 5, 6)") == 0
    assert_all_embedded(db, 23)

    db.conn.execute("TRUNCATE docs")
    db.conn.execute("INSERT INTO docs (id, body) VALUES (1, 'after the truncate')")
    wait_until(lambda: current(db), "the truncate and the row after it are applied")
    assert_all_embedded(db, 1)
    assert db.status("docs")["failed"] == 0
    assert "Traceback" not in db.worker_logs()

    # The last table to leave logical mode takes the slot along, so no WAL is kept for it.
    assert slots(db) != []
    db.conn.execute("SELECT mgte_disable('docs')")
    wait_until(lambda: slots(db) == [], "the slot is dropped")
    stop(worker)


def test_a_lost_slot_is_made_again_and_only_what_changed_is_embedded(db: Database) -> None:
    make_docs(db, 20)
    db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    worker = db.start_worker()
    wait_until(lambda: current(db), "embedded")
    stop(worker)
    first = embedded_at(db)
    db.conn.execute("UPDATE docs SET body = 'changed while no worker ran' WHERE id IN (1, 2)")
    db.conn.execute("DELETE FROM docs WHERE id = 3")
    db.conn.execute("INSERT INTO docs (id, body) VALUES (21, 'new while no worker ran')")
    # The slot is gone with what it held, as when a DBA drops it or max_slot_wal_keep_size
    # invalidates it.
    db.conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE database = current_database()")
    db.start_worker()
    wait_until(lambda: current(db), "the table is brought up to date")
    after = embedded_at(db)
    assert sorted(i for i in after if after[i] != first.get(i)) == [1, 2, 21]
    assert "made the logical decoding slot" in db.worker_logs()
    assert_all_embedded(db, 20)


def test_switching_modes_loses_no_write(db: Database) -> None:
    make_docs(db, 10)
    worker = db.start_worker()
    wait_until(lambda: current(db), "embedded in async mode")
    db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    assert triggers(db) == set()
    db.conn.execute("UPDATE docs SET body = 'written in logical mode' WHERE id = 1")
    wait_until(lambda: current(db), "the write in logical mode is embedded")
    stop(worker)

    # Left in the slot when the table leaves logical mode, and the slot goes with it: the
    # switch brings the table up to date.
    db.conn.execute("UPDATE docs SET body = 'written just before the switch' WHERE id = 2")
    db.conn.execute("DELETE FROM docs WHERE id = 3")
    db.one("SELECT mgte_enable('docs', 'body', mode => 'async')")
    assert triggers(db) == {"mgte_insert", "mgte_update", "mgte_delete", "mgte_truncate"}
    assert slots(db) == []
    assert db.status("docs")["pending"] == 1
    assert db.one("SELECT count(*) FROM mgte.docs_embeddings WHERE id = 3") == 0
    db.start_worker()
    wait_until(lambda: current(db), "the write before the switch is embedded")
    assert_all_embedded(db, 9)


def test_reembed_in_logical_mode_keeps_both_sets_current(
        cluster: Cluster, server: ServerProcess, checkpoints: Checkpoints) -> None:
    with database(cluster, server.socket) as db:
        make_docs(db, 10)
        db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
        db.start_worker()
        wait_until(lambda: current(db), "embedded with the first model")
        new_model = str(checkpoints.embedding_original)
        with running_server(checkpoints.embedding_original) as new_server:
            db.conn.execute("SELECT mgte_reembed('docs', model => %s)", [new_model])
            assert triggers(db) == set()
            db.conn.execute("UPDATE docs SET body = 'changed during the re-embedding' WHERE id = 1")
            db.conn.execute("DELETE FROM docs WHERE id = 2")
            db.start_worker("--socket", str(new_server.socket))
            wait_until(lambda: db.one("SELECT model FROM mgte.enabled") == new_model, "the second set takes over")
            assert triggers(db) == set()
            db.conn.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(new_server.socket)])
            wait_until(lambda: current(db), "every row has the new model's embedding of its text")
            assert_all_embedded(db, 9)


def test_a_partitioned_table_is_read_as_one(db: Database) -> None:
    db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text) PARTITION BY RANGE (id)")
    db.conn.execute("CREATE TABLE docs_low PARTITION OF docs FOR VALUES FROM (MINVALUE) TO (100)")
    db.conn.execute("CREATE TABLE docs_high PARTITION OF docs FOR VALUES FROM (100) TO (MAXVALUE)")
    db.conn.execute("INSERT INTO docs (id, body) SELECT g, 'document ' || g FROM generate_series(95, 104) g")
    db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    db.start_worker()
    wait_until(lambda: current(db), "the rows of both partitions are embedded")
    db.conn.execute("UPDATE docs SET id = 150, body = 'moved to the other partition' WHERE id = 96")
    db.conn.execute("UPDATE docs_high SET body = 'written to the partition itself' WHERE id = 101")
    db.conn.execute("DELETE FROM docs_low WHERE id = 97")
    db.conn.execute("INSERT INTO docs (id, body) VALUES (300, 'new')")
    wait_until(lambda: current(db), "writes through the table and its partitions are embedded")
    assert db.one("SELECT count(*) FROM mgte.docs_embeddings WHERE id IN (96, 97)") == 0
    assert_all_embedded(db, 10)


def test_a_publication_changed_or_dropped_by_hand_is_made_again(db: Database) -> None:
    make_docs(db, 6, enable=False)
    db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    db.start_worker()
    wait_until(lambda: current(db), "embedded")
    published = "SELECT pubname, attnames FROM pg_publication_tables"
    # Taken out of the publication, the table's writes would no longer reach the slot.
    db.conn.execute("ALTER PUBLICATION mgte_changes DROP TABLE docs")
    db.conn.execute("UPDATE docs SET body = 'written while out of the publication' WHERE id = 1")
    wait_until(lambda: current(db), "the write made while the table was out of the publication is embedded")
    assert db.conn.execute(published).fetchall() == [("mgte_changes", ["id"])]
    # Published with every column, or with a delete left out.
    db.conn.execute("ALTER PUBLICATION mgte_changes SET TABLE docs")
    db.conn.execute("ALTER PUBLICATION mgte_changes SET (publish = 'insert, update')")
    db.conn.execute("DELETE FROM docs WHERE id = 2")
    wait_until(lambda: current(db), "the delete made while the publication left deletes out is applied")
    assert db.conn.execute(published).fetchall() == [("mgte_changes", ["id"])]
    # Dropped, the publication would fail every read of the slot, for good.
    db.conn.execute("DROP PUBLICATION mgte_changes")
    db.conn.execute("UPDATE docs SET body = 'written without a publication' WHERE id = 3")
    wait_until(lambda: current(db), "the write made without a publication is embedded")
    db.conn.execute("UPDATE docs SET body = 'written once it was made again' WHERE id = 4")
    wait_until(lambda: current(db), "writes are read from the slot again")
    assert db.conn.execute(published).fetchall() == [("mgte_changes", ["id"])]
    assert "made again" in db.worker_logs()
    assert_all_embedded(db, 5)


def test_a_table_a_subscription_writes_is_embedded_in_logical_mode_only(
        cluster: Cluster, server: ServerProcess, db: Database) -> None:
    """The apply worker of a logical replication subscription fires no statement-level
    trigger; its changes are in the WAL, where logical mode reads them."""
    subscription = f"{db.name}_docs"
    with database(cluster, server.socket) as origin:
        origin.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
        origin.conn.execute("INSERT INTO docs SELECT g, 'document ' || g FROM generate_series(1, 5) g")
        origin.conn.execute("CREATE PUBLICATION docs_out FOR TABLE docs")
        # Within one cluster a subscription cannot make its own slot: it would wait for itself.
        origin.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [subscription])
        db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
        db.conn.execute("SELECT mgte_enable('docs', 'body')")  # before the table was subscribed
        name = sql.Identifier(subscription)
        db.conn.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION docs_out "
                                "WITH (create_slot = false, slot_name = {})").format(
            name, sql.Literal(origin.conninfo), sql.Literal(subscription)))
        try:
            wait_until(lambda: db.one("SELECT count(*) FROM docs") == 5, "the subscription copies the rows")
            capture = [c for c in diagnose(db.conninfo, str(server.socket)) if c.check == "capture"]
            assert [(c.status, c.table) for c in capture] == [("fail", "docs")]
            assert "mode => 'logical'" in (capture[0].fix or "")
            with pytest.raises(psycopg.Error) as raised:
                db.conn.execute("SELECT mgte_enable('docs', 'body')")
            assert raised.value.sqlstate == "55000"
            assert "mode => 'logical'" in (raised.value.diag.message_hint or "")
            db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
            db.start_worker()
            wait_until(lambda: current(db), "the copied rows are embedded")
            assert [c for c in diagnose(db.conninfo, str(server.socket)) if c.check == "capture"] == []
            origin.conn.execute("INSERT INTO docs VALUES (6, 'inserted at the origin')")
            origin.conn.execute("UPDATE docs SET body = 'updated at the origin' WHERE id = 1")
            origin.conn.execute("DELETE FROM docs WHERE id = 2")
            wait_until(lambda: db.one("SELECT count(*) FROM docs WHERE id IN (2, 6)") == 1, "the writes are applied")
            wait_until(lambda: current(db), "the applied writes are embedded")
            assert_all_embedded(db, 5)
        finally:
            for statement in ("ALTER SUBSCRIPTION {} DISABLE", "ALTER SUBSCRIPTION {} SET (slot_name = NONE)",
                              "DROP SUBSCRIPTION {}"):
                db.conn.execute(sql.SQL(statement).format(name))
            wait_until(lambda: origin.one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active",
                                          subscription) == 0, "the subscription lets go of its slot")
            origin.conn.execute("SELECT pg_drop_replication_slot(%s)", [subscription])


def test_dump_and_restore_keep_logical_mode_working(cluster: Cluster, db: Database) -> None:
    make_docs(db, 10, enable=False)
    db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    worker = db.start_worker()
    wait_until(lambda: current(db), "embedded")
    stop(worker)
    db.conn.execute("UPDATE docs SET body = 'changed before the dump' WHERE id = 1")  # still in the slot
    dump = db.socket.parent / f"{db.name}.dump"
    subprocess.run([str(cluster.bindir / "pg_dump"), "--format", "custom", "--file", str(dump),
                    "--dbname", db.conninfo], check=True)
    with database(cluster, db.socket) as restored:
        restored.conn.execute("DROP EXTENSION mgte CASCADE")  # pg_restore recreates it
        subprocess.run([str(cluster.bindir / "pg_restore"), "--dbname", restored.conninfo, str(dump)], check=True)
        assert triggers(restored) == set() and slots(restored) == []
        assert restored.conn.execute("SELECT pubname, attnames FROM pg_publication_tables").fetchall() == [
            ("mgte_changes", ["id"])]
        restored.conn.execute("UPDATE docs SET body = 'changed after the restore' WHERE id = 2")
        restored.start_worker()  # makes the restored database's slot and brings docs up to date
        wait_until(lambda: current(restored), "the restored table is brought up to date")
        assert_all_embedded(restored, 10)
        restored.conn.execute("UPDATE docs SET body = 'read from the new slot' WHERE id = 3")
        wait_until(lambda: current(restored), "a write after that is read from the new slot")


def test_drop_extension_takes_the_slot_and_the_publication_along(db: Database) -> None:
    make_docs(db, 5, enable=False)
    db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    worker = db.start_worker()
    wait_until(lambda: current(db), "embedded")
    assert len(slots(db)) == 1
    db.conn.execute("DROP EXTENSION mgte CASCADE")  # the worker goes on reading the slot meanwhile
    assert slots(db) == []
    assert db.conn.execute("SELECT pubname FROM pg_publication").fetchall() == []
    stop(worker)  # after more passes, none of which may have made the slot again
    assert slots(db) == []


def test_a_broken_slot_keeps_no_other_table_from_being_embedded(db: Database) -> None:
    make_docs(db, 5)
    make_docs(db, 5, table="notes", enable=False)
    db.one("SELECT mgte_enable('notes', 'body', mode => 'logical')")
    worker = db.start_worker()
    wait_until(lambda: current(db) and current(db, "notes"), "both tables are embedded")
    stop(worker)
    # A slot of mgte's name that speaks another output plugin: every read of it fails.
    db.conn.execute("SELECT pg_drop_replication_slot(mgte._logical_slot())")
    db.conn.execute("SELECT pg_create_logical_replication_slot(mgte._logical_slot(), 'test_decoding')")
    db.start_worker()
    db.conn.execute("INSERT INTO docs (id, body) VALUES (6, 'queued by the trigger')")
    wait_until(lambda: current(db), "the table in async mode is still embedded")
    wait_until(lambda: 'option "proto_version" = "1" is unknown' in db.worker_logs(), "the worker says why")
    assert db.worker_logs().count("logical decoding:") == 1  # once, not at every pass


def test_a_long_transaction_delays_the_slot_but_no_other_table(db: Database) -> None:
    make_docs(db, 3)
    make_docs(db, 3, table="notes", enable=False)
    with psycopg.connect(db.conninfo, autocommit=True) as other:
        other.execute("BEGIN")
        other.execute("SELECT txid_current()")  # a transaction with an id: the slot waits for its end
        db.one("SELECT mgte_enable('notes', 'body', mode => 'logical')")
        db.start_worker()
        wait_until(lambda: "making the slot waits for the transactions running now to end" in db.worker_logs(),
                   "the worker says what it waits for")
        db.conn.execute("INSERT INTO notes (id, body) VALUES (4, 'written before the slot exists')")
        db.conn.execute("INSERT INTO docs (id, body) VALUES (4, 'queued by the trigger')")
        wait_until(lambda: current(db), "the table in async mode is embedded meanwhile")
        # Nothing reads the table in logical mode's writes until the slot is made.
        assert db.one("SELECT count(*) FROM mgte.notes_embeddings WHERE id = 4") == 0
        other.execute("COMMIT")
    wait_until(lambda: current(db, "notes"), "the slot is made and the table in logical mode embedded")


def test_a_replica_identity_the_key_does_not_cover_is_refused(db: Database) -> None:
    db.conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    db.conn.execute("ALTER TABLE docs REPLICA IDENTITY FULL")
    with pytest.raises(psycopg.Error) as raised:
        db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    assert raised.value.sqlstate == "55000"
    assert "replica identity of public.docs to be its primary key (id), and it is FULL" in str(raised.value)
    assert "REPLICA IDENTITY DEFAULT" in str(raised.value.diag.message_hint)

    db.conn.execute("ALTER TABLE docs REPLICA IDENTITY DEFAULT")
    db.one("SELECT mgte_enable('docs', 'body', mode => 'logical')")
    # Changing it afterwards would make PostgreSQL refuse every UPDATE: the ALTER is refused.
    for change in ("ALTER TABLE docs REPLICA IDENTITY FULL", "ALTER TABLE docs DROP CONSTRAINT docs_pkey"):
        with pytest.raises(psycopg.Error) as raised:
            db.conn.execute(change)
        assert raised.value.sqlstate == "55000"
        assert "mgte_enable('public.docs', 'body', mode => 'async')" in str(raised.value.diag.message_hint)
    db.conn.execute("INSERT INTO docs VALUES (1, 'a')")
    db.conn.execute("UPDATE docs SET body = 'b'")
    db.conn.execute("DELETE FROM docs")


def test_wal_level_below_logical_is_refused_with_what_to_do(server: ServerProcess) -> None:
    root = shared_tempdir("mgte-replica-")
    replica = Cluster(root)
    replica.init()
    with (replica.data / "postgresql.conf").open("a") as conf:
        conf.write("wal_level = replica\n")
    replica.start()
    try:
        with database(replica, server.socket) as db:
            db.conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
            with pytest.raises(psycopg.Error) as raised:
                db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'logical')")
            assert raised.value.sqlstate == "55000"
            assert "needs wal_level = logical, and this server runs with wal_level = replica" in str(raised.value)
            assert "ALTER SYSTEM SET wal_level = logical" in str(raised.value.diag.message_hint)
            assert db.one("SELECT count(*) FROM mgte.enabled") == 0
    finally:
        replica.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- decoding ------------------------------------------------------------------------

def _relation(relid: int, columns: list[str]) -> bytes:
    body = b"".join(b"\x01" + c.encode() + b"\0" + struct.pack("!Ii", 23, -1) for c in columns)
    return b"R" + struct.pack("!I", relid) + b"public\0docs\0d" + struct.pack("!h", len(columns)) + body


def _row(*values: bytes | None) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        out += b"n" if v is None else b"u" if v == b"<toast>" else b"t" + struct.pack("!I", len(v)) + v
    return out


def test_decode_reads_keys_old_and_new_and_what_it_cannot_read_goes_whole() -> None:
    decoded = decode([
        b"B" + bytes(20),
        _relation(7, ["a", "b"]),
        b"I" + struct.pack("!I", 7) + b"N" + _row(b"1", "é".encode()),
        b"U" + struct.pack("!I", 7) + b"K" + _row(b"1", "é".encode()) + b"N" + _row(b"2", b"x"),
        b"D" + struct.pack("!I", 7) + b"K" + _row(b"2", b"x"),
        _relation(8, ["k"]),
        b"U" + struct.pack("!I", 8) + b"N" + _row(b"<toast>"),  # a TOASTed key, unchanged: not sent
        b"T" + struct.pack("!I", 1) + b"\0" + struct.pack("!I", 9),
        b"C" + bytes(25),
    ], "utf-8")
    assert decoded.keys == {7: {("1", "é"): {"a": "1", "b": "é"}, ("2", "x"): {"a": "2", "b": "x"}}}
    assert decoded.whole == {8, 9}
    with pytest.raises(ValueError, match="unexpected pgoutput message b'Z'"):
        decode([b"Z"], "utf-8")
