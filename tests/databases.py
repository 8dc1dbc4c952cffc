"""A fresh database per test, with the extension, and `mgte worker` processes for it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from mgte.pgcluster import Cluster

Connection = psycopg.Connection[tuple[Any, ...]]


@dataclass
class Database:
    name: str
    conninfo: str
    conn: Connection
    socket: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def one(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query, params or None).fetchone()
        assert row is not None
        return row[0]

    def status(self, table: str) -> dict[str, Any]:
        cursor = self.conn.execute("SELECT * FROM mgte_status(%s::regclass)", [table])
        row = cursor.fetchone()
        assert row is not None and cursor.description is not None
        return dict(zip([c.name for c in cursor.description], row, strict=True))

    def start_worker(self, *flags: str) -> subprocess.Popen[bytes]:
        log = self.socket.parent / f"worker-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "mgte", "worker", "--dsn", self.conninfo, "--socket", str(self.socket),
                 "--poll-seconds", "1", "--max-backoff-seconds", "1", *flags],
                stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(worker)
        self.logs.append(log)
        return worker

    def worker_logs(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}")


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@contextlib.contextmanager
def database(cluster: Cluster, socket: Path, version: str | None = None) -> Iterator[Database]:
    """A fresh database with the extension (of release `version`, or this one), its sessions
    pointed at `socket`."""
    name = f"mgte_auto_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("ALTER DATABASE {} SET mgte.socket_path = {}").format(
            sql.Identifier(name), sql.Literal(str(socket))))
    conn = psycopg.connect(cluster.conninfo(name), autocommit=True)
    conn.execute(sql.SQL("CREATE EXTENSION mgte {} CASCADE").format(
        sql.SQL("VERSION {}").format(sql.Literal(version)) if version else sql.SQL("")))
    db = Database(name, cluster.conninfo(name), conn, socket)
    try:
        yield db
    finally:
        for worker in db.workers:
            stop(worker)
        db.conn.close()  # the test may have replaced it
        with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
            drop_slots(admin, name)
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_slots(admin: Connection, dbname: str) -> None:
    """Drops the replication slots of a database (logical mode's), which DROP DATABASE refuses
    to, once no session of it reads them."""
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [dbname])

    def dropped() -> bool:
        admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                      "WHERE database = %s AND NOT active", [dbname])
        return admin.execute("SELECT FROM pg_replication_slots WHERE database = %s", [dbname]).fetchone() is None

    wait_until(dropped, f"the replication slots of {dbname} are dropped", timeout=30)


def done(db: Database, table: str = "docs") -> bool:
    status = db.status(table)
    return bool(status["pending"] == 0 and status["in_progress"] == 0)
