"""`mgte doctor`: a healthy setup, then each failure mode provoked for real."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mgte import __version__
from mgte.cli import main
from mgte.doctor import LAG_WARN_SECONDS, Table, queue_check
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import Checkpoints, start_server
from tests.databases import Database, database, done, wait_until

Checks = list[dict[str, Any]]


def doctor(capsys: pytest.CaptureFixture[str], dsn: str, socket: Path) -> tuple[int, Checks]:
    """Runs `mgte doctor --json`; its exit status and checks."""
    code = main(["doctor", "--dsn", dsn, "--socket", str(socket), "--json"])
    checks: Checks = json.loads(capsys.readouterr().out)
    assert all(set(c) == {"check", "status", "message", "fix", "table"} for c in checks)
    return code, checks


def one(checks: Checks, name: str, table: str | None = None) -> dict[str, Any]:
    found = [c for c in checks if c["check"] == name and c["table"] == table]
    assert len(found) == 1, (name, checks)
    return found[0]


def not_ok(checks: Checks) -> list[str]:
    return [c["check"] for c in checks if c["status"] != "ok"]


def server_model(server: ServerProcess) -> str:
    with server.client() as client:
        return str(client.info()["model"]["id"])


def docs(db: Database, rows: int) -> None:
    db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    db.conn.execute("INSERT INTO docs SELECT g, 'document ' || g FROM generate_series(1, %s) g", [rows])
    db.conn.execute("SELECT mgte_enable('docs', 'body')")


def test_no_worker_fails_until_one_runs_then_all_is_ok(
        cluster: Cluster, server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with database(cluster, server.socket) as db:
        docs(db, 5)
        code, checks = doctor(capsys, db.conninfo, server.socket)
        workers = one(checks, "workers")
        assert (code, not_ok(checks), workers["status"]) == (2, ["workers"], "fail"), checks
        assert "5 rows wait" in workers["message"]
        assert f"mgte worker --dsn 'dbname={db.name}' --socket {server.socket}" in workers["fix"]

        db.start_worker()
        wait_until(lambda: done(db), "the worker drained the queue")
        code, checks = doctor(capsys, db.conninfo, server.socket)
        assert (code, not_ok(checks)) == (0, []), checks
        assert [c["check"] for c in checks] == [
            "postgresql", "extension", "plpython3u", "vector", "server", "socket setting", "backend socket",
            "model", "workers", "queue"]
        assert one(checks, "model", "docs")["message"] == f"{db.one('SELECT dim FROM mgte.enabled')} dimensions " \
                                                          f"and sparse weights, its model {server_model(server)} " \
                                                          "is served"
        assert one(checks, "queue", "docs")["message"] == "0 rows queued, 0 failed"
        assert one(checks, "workers")["message"].startswith("6 connections of mgte workers")  # --connections 4, + 2

        assert main(["doctor", "--dsn", db.conninfo, "--socket", str(server.socket)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert all(line.startswith("ok ") for line in lines[:-1]) and "fix:" not in "\n".join(lines)
        assert lines[-1] == "0 failed, 0 warned, 0 not checked: exit status 0"


def test_the_slot_of_logical_mode_is_checked_only_where_there_is_one(
        cluster: Cluster, server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with database(cluster, server.socket) as db:
        docs(db, 3)
        _, checks = doctor(capsys, db.conninfo, server.socket)
        assert "slot" not in [c["check"] for c in checks]  # async mode: nothing to check
        db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'logical')")
        _, checks = doctor(capsys, db.conninfo, server.socket)
        slot = one(checks, "slot")
        assert (slot["status"], slot["message"]) == (
            "warn", "a table is in logical mode, but there is no slot yet: its writes wait for a worker")
        assert "start mgte worker" in slot["fix"]

        name = db.one("SELECT mgte._logical_slot()::text")
        db.conn.execute("SELECT mgte._logical_start()")  # what the worker does
        slot = one(doctor(capsys, db.conninfo, server.socket)[1], "slot")
        assert slot["status"] == "ok" and slot["message"].startswith(f"slot {name} keeps "), slot

        db.conn.execute("SELECT mgte_disable('docs')")  # drops the slot with the last table in logical mode
        assert "slot" not in [c["check"] for c in doctor(capsys, db.conninfo, server.socket)[1]]
        db.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])
        slot = one(doctor(capsys, db.conninfo, server.socket)[1], "slot")
        assert slot["status"] == "warn" and "no table is in logical mode" in slot["message"]
        assert slot["fix"].startswith(f"SELECT pg_drop_replication_slot('{name}')")


def test_model_mismatch(cluster: Cluster, server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with database(cluster, server.socket) as db:
        docs(db, 0)
        db.conn.execute("UPDATE mgte.enabled SET model = 'another-model'")  # as if another model had stored
        code, checks = doctor(capsys, db.conninfo, server.socket)
        model = one(checks, "model", "docs")
        assert (code, model["status"]) == (2, "fail"), checks
        served = server_model(server)
        assert model["message"] == f"its embeddings were made by another-model, but the server serves {served}: " \
                                   "nothing is stored for it"
        assert f"serve another-model at {server.socket} again" in model["fix"]
        assert f"SELECT mgte_reembed('docs', model => '{served}')" in model["fix"]
        # No rows wait, so a missing worker is only a warning.
        assert one(checks, "workers")["status"] == "warn"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only then do PostgreSQL's backends run as another "
                                               "OS user (postgres) than the tests, which a socket can shut out")
def test_socket_closed_to_postgres_then_server_down(
        cluster: Cluster, checkpoints: Checkpoints, capsys: pytest.CaptureFixture[str]) -> None:
    # Under root the socket's group is postgres; mode 0600 leaves it to root, the doctor's user.
    own = start_server(checkpoints.embedding_native, "--socket-mode", "0600")
    try:
        with database(cluster, own.socket) as db:
            code, checks = doctor(capsys, db.conninfo, own.socket)
            backend = one(checks, "backend socket")
            assert (code, not_ok(checks), one(checks, "server")["status"]) == (2, ["backend socket"], "ok"), checks
            assert backend["message"].startswith("PostgreSQL backends (OS user postgres; groups ")
            assert backend["message"].endswith(f"cannot connect: the socket {own.socket} is root:postgres, "
                                               "mode 0600, which postgres may not write")
            assert backend["fix"] == "restart mgte serve with --socket-mode 0660 (group postgres may then connect)"

            own.stop()
            code, checks = doctor(capsys, db.conninfo, own.socket)
            server = one(checks, "server")
            assert (code, server["status"], one(checks, "backend socket")["status"]) == (2, "fail", "fail"), checks
            assert server["message"].startswith(f"mgte server not reachable at {own.socket}")
            assert f"mgte serve --socket {own.socket}" in server["fix"]
            assert f"cannot use the server: mgte server not reachable at {own.socket}" in \
                one(checks, "backend socket")["message"]
    finally:
        own.stop()


@contextlib.contextmanager
def database_at_version(cluster: Cluster, version: str, socket: Path) -> Iterator[str]:
    """A fresh database with mgte `version` installed; its conninfo."""
    name = f"mgte_doctor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("ALTER DATABASE {} SET mgte.socket_path = {}").format(
            sql.Identifier(name), sql.Literal(str(socket))))
    try:
        with psycopg.connect(cluster.conninfo(name), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE EXTENSION mgte VERSION {} CASCADE").format(sql.Literal(version)))
        yield cluster.conninfo(name)
    finally:
        with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_outdated_extension(cluster: Cluster, server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with database_at_version(cluster, "0.1.0", server.socket) as dsn:
        code, checks = doctor(capsys, dsn, server.socket)
        extension = one(checks, "extension")
        assert (extension["status"], code >= 1) == ("warn", True), checks
        assert extension["message"] == f"mgte 0.1.0 is installed and {__version__} available: ALTER EXTENSION " \
                                       f"mgte UPDATE would run 0.1.0 -> {__version__}"
        assert extension["fix"].startswith("ALTER EXTENSION mgte UPDATE")
        assert "database" not in [c["check"] for c in checks]  # every check ran on the outdated catalog

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER EXTENSION mgte UPDATE")
        code, checks = doctor(capsys, dsn, server.socket)
        assert (code, not_ok(checks)) == (0, []), checks


def test_queue_lag_and_dead_letters_warn_with_their_fix() -> None:
    lagging = Table(name="docs", failed_table="mgte.docs_failed", dim=768, sparse=True, vocab_size=250048,
                    model="m", reembed_model=None, pending=40, failed=3, oldest_pending_seconds=LAG_WARN_SECONDS + 1)
    check = queue_check(lagging)
    assert check.status == "warn"
    assert check.message == "40 rows queued, 3 failed, the oldest queued 5m01s ago: rows have waited more than " \
                            "5m00s; the server rejected some rows"
    assert check.fix is not None and "SELECT * FROM mgte.docs_failed" in check.fix
    assert "SELECT mgte_retry_failed('docs')" in check.fix
