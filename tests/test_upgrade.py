"""Upgrades: a database of the last release, with enabled tables in every state, updated by
ALTER EXTENSION mgte UPDATE, keeps all of it, is drained by this release's workers, and ends
with the catalog of a fresh install; and both sides refuse a peer of another release."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mgte.pgcluster import Cluster, find_pg_config
from mgte.server_process import ServerProcess
from mgte_udf import __version__, protocol
from mgte_udf.client import Client
from mgte_udf.errors import ProtocolMismatch
from tests.conftest import shared_tempdir
from tests.databases import Database, database, wait_until
from tests.test_client import fake_server

PREVIOUS = "0.1.0"
DIM = 16  # notes: fewer dimensions than the tiny model's 32


@pytest.fixture
def owner(cluster: Cluster) -> Iterator[str]:
    """An ordinary role owning the enabled tables (dropped after the test's databases)."""
    name = f"alice_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def create_tables(db: Database, owner: str) -> None:
    db.conn.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text)")
    db.conn.execute("CREATE TABLE notes (a integer, b text, body varchar(200), PRIMARY KEY (a, b))")
    for table in ("docs", "notes"):
        db.conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), sql.Identifier(owner)))


def enable_tables(db: Database) -> None:
    """docs ends async, notes sync with fewer dimensions and no sparse weights: the same calls
    for both releases."""
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync')")
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'async')")
    db.conn.execute("SELECT mgte_enable('notes', 'body', dim => %s, sparse => false, mode => 'sync')", [DIM])


def fail_one(db: Database, table: str) -> None:
    """What a 0.1.0 worker did with a text the server rejected: claim it, then _fail it."""
    claimed = db.conn.execute("SELECT * FROM mgte._claim(%s::regclass, 1, 600)", [table]).fetchone()
    assert claimed is not None
    key, generation, _, body = claimed
    db.conn.execute("SELECT mgte._fail(%s::regclass, %s)", [table, json.dumps(
        [{**key, "mgte_generation": generation, "mgte_text_md5": "md5 of " + body, "mgte_error": "rejected " + body}])])


def fill_under_previous_release(db: Database) -> None:
    # docs: four rows embedded inside their statement (enabled as sync), then async: rows
    # queued, one updated (its stored embedding is stale), one dead letter, one leased by a
    # worker that never came back.
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync')")
    db.conn.execute("INSERT INTO docs SELECT g, 'document ' || g FROM generate_series(1, 4) g")
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'async')")
    db.conn.execute("INSERT INTO docs SELECT g, 'document ' || g FROM generate_series(5, 12) g")
    db.conn.execute("INSERT INTO docs VALUES (13, NULL)")
    db.conn.execute("UPDATE docs SET body = 'a new text for one' WHERE id = 1")
    fail_one(db, "docs")
    assert db.one("SELECT count(*) FROM mgte._claim('docs', 1, 600)") == 1
    # notes: embedded inside statements, then with the server out of reach handed to the
    # queue with a WARNING, one of those a dead letter.
    db.conn.execute("SELECT mgte_enable('notes', 'body', dim => %s, sparse => false, mode => 'sync')", [DIM])
    db.conn.execute("INSERT INTO notes SELECT g, 'x', 'note ' || g FROM generate_series(1, 3) g")
    db.conn.execute("SET mgte.socket_path = '/nonexistent/mgte.sock'")
    db.conn.execute("INSERT INTO notes SELECT g, 'y', 'note ' || g FROM generate_series(1, 4) g")
    db.conn.execute("RESET mgte.socket_path")
    fail_one(db, "notes")


def contents(db: Database) -> dict[str, Any]:
    """Every stored row of the per-table tables, by table, in key order."""
    out: dict[str, Any] = {}
    for table, keys in (("docs", "id"), ("notes", "a, b")):
        out[table] = {
            "embeddings": db.conn.execute(
                f"SELECT {keys}, embedding::text, sparse, sparsevec::text, model, text_md5, tokens, truncated "
                f"FROM mgte.{table}_embeddings ORDER BY {keys}").fetchall(),
            "queue": db.conn.execute(
                f"SELECT {keys}, enqueued_at, last_error FROM mgte.{table}_queue ORDER BY {keys}").fetchall(),
            "failed": db.conn.execute(
                f"SELECT {keys}, text_md5, attempts, error FROM mgte.{table}_failed ORDER BY {keys}").fetchall(),
        }
    return out


def schema_dump(cluster: Cluster, db: Database) -> str:
    """pg_dump of the database's schema, in the binary-upgrade form that spells out every
    object of the extension too (a plain dump says CREATE EXTENSION only), without the oids
    that only that form records."""
    bindir = subprocess.run([str(find_pg_config()), "--bindir"], check=True, capture_output=True,
                            text=True).stdout.strip()
    dump = subprocess.run([f"{bindir}/pg_dump", "--schema-only", "--binary-upgrade", "--dbname", db.conninfo],
                          check=True, capture_output=True, text=True).stdout
    lines = [line for line in dump.splitlines()
             if "binary_upgrade_" not in line and not line.startswith(("\\restrict", "\\unrestrict"))]
    return re.sub(r"(relfrozenxid|relminmxid|oid) = '\d+'", r"\1 = 'N'", "\n".join(lines))


def test_update_from_the_previous_release(cluster: Cluster, server: ServerProcess, owner: str) -> None:
    with database(cluster, server.socket, PREVIOUS) as old, database(cluster, server.socket) as fresh:
        create_tables(old, owner)
        fill_under_previous_release(old)
        before = contents(old)
        assert [len(before["docs"][part]) for part in ("embeddings", "queue", "failed")] == [4, 8, 1]
        assert [len(before["notes"][part]) for part in ("embeddings", "queue", "failed")] == [3, 3, 1]
        # A session that loaded the previous release's client before the update.
        with psycopg.connect(old.conninfo, autocommit=True) as earlier:
            earlier.execute("SELECT mgte_embed('loaded before')")

            old.conn.execute("ALTER EXTENSION mgte UPDATE")

            with pytest.raises(psycopg.Error) as refused:
                earlier.execute("SELECT mgte_embed('called after')")
        # This session loaded that client too; a new one loads this release's.
        old.conn.close()
        old.conn = psycopg.connect(old.conninfo, autocommit=True)
        assert refused.value.sqlstate == "08P01"
        assert f"holds the Python client of mgte {PREVIOUS}" in str(refused.value)
        assert refused.value.diag.message_hint is not None and "reconnect" in refused.value.diag.message_hint

        assert old.one("SELECT extversion FROM pg_extension WHERE extname = 'mgte'") == __version__
        assert contents(old) == before
        assert old.one("SELECT count(*) FROM mgte.docs_queue WHERE lease IS NOT NULL OR leased_until IS NOT NULL") == 0
        assert old.conn.execute("SELECT mode, dim, sparse, prefix FROM mgte.enabled WHERE tbl = 'notes'::regclass"
                                ).fetchone() == ("sync", DIM, False, "notes")
        for table in ("docs", "notes"):
            assert old.one("SELECT model FROM mgte.enabled WHERE tbl = %s::regclass", table) == before[table][
                "embeddings"][0][-4]
            assert old.one("SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE %s "
                           "AND relowner = %s::regrole", f"{table}\\_%", owner) == 3  # embeddings, queue, failed
            status = old.status(table)
            assert (status["pending"], status["in_progress"], status["failed"]) == (
                len(before[table]["queue"]), 0, 1)

        old.start_worker()
        wait_until(lambda: old.one("SELECT count(*) FROM mgte.docs_queue") + old.one(
            "SELECT count(*) FROM mgte.notes_queue") == 0, "the worker drains the old queues", timeout=60)
        # Every row with a text holds the embedding of its final text, but the dead letters.
        assert old.one("SELECT count(*) FROM docs d JOIN mgte.docs_embeddings e USING (id) "
                       "WHERE e.embedding <-> mgte_embed(d.body) < 1e-4") == 11
        assert old.one("SELECT count(*) FROM notes n JOIN mgte.notes_embeddings e USING (a, b) "
                       "WHERE e.embedding <-> mgte_embed(n.body, %s) < 1e-4", DIM) == 6
        for table in ("docs", "notes"):
            assert old.one(f"SELECT count(*) FROM mgte.{table}_failed") == 1

        create_tables(fresh, owner)
        enable_tables(fresh)
        expected = schema_dump(cluster, fresh)
        assert schema_dump(cluster, old) == expected
        # The comparison sees a grant and a function body.
        fresh.conn.execute("GRANT EXECUTE ON FUNCTION mgte.docs_status() TO PUBLIC")
        assert schema_dump(cluster, fresh) != expected
        fresh.conn.execute("REVOKE EXECUTE ON FUNCTION mgte.docs_status() FROM PUBLIC")
        assert schema_dump(cluster, fresh) == expected
        fresh.conn.execute("CREATE OR REPLACE FUNCTION mgte._trigger_events() RETURNS text[] LANGUAGE sql "
                           "IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp "
                           "AS $$ SELECT ARRAY['insert', 'update', 'delete'] $$")
        assert schema_dump(cluster, fresh) != expected


def test_server_refuses_another_protocol_version(server: ServerProcess) -> None:
    body = json.dumps({"op": "health"}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(server.socket))
        conn.sendall(protocol.PREFIX.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION + 1, protocol.REQUEST, 0,
                                          len(body), 0) + body)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    _, kind, json_length, _ = protocol.parse_prefix(reply[:protocol.PREFIX.size], 1 << 20, 0)
    header = protocol.decode_header(reply[protocol.PREFIX.size:protocol.PREFIX.size + json_length])
    assert kind == protocol.RESPONSE and header["ok"] is False
    assert header["error"]["code"] == "protocol"
    assert f"protocol version {protocol.PROTOCOL_VERSION + 1} is not supported" in header["error"]["message"]
    assert "same mgte release" in header["error"]["hint"]


def answer_in_another_version(conn: socket.socket, request: dict[str, Any]) -> bool:
    body = json.dumps({"ok": True}).encode()
    conn.sendall(protocol.PREFIX.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION + 1, protocol.RESPONSE, 0,
                                      len(body), 0) + body)
    return False


def test_client_and_sql_refuse_another_protocol_version(cluster: Cluster, server: ServerProcess) -> None:
    path = shared_tempdir("mgte-fake-") / "mgte.sock"
    with fake_server(path, answer_in_another_version):
        path.chmod(0o777)  # PostgreSQL runs as another user under root
        with Client(str(path), timeout=10) as client, pytest.raises(ProtocolMismatch) as mismatch:
            client.health()
        assert mismatch.value.sqlstate == "08P01"
        assert mismatch.value.hint is not None and "same mgte release" in mismatch.value.hint
        with database(cluster, server.socket) as db:
            db.conn.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(path)])
            with pytest.raises(psycopg.Error) as refused:
                db.conn.execute("SELECT mgte_embed('hola')")
            assert refused.value.sqlstate == "08P01"
            assert refused.value.diag.message_hint is not None
            assert "same mgte release" in refused.value.diag.message_hint
