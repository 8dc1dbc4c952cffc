"""`mgte worker` and `mgte backfill`: drain the auto-embedding queues through the model server.

Per batch: claim rows with a lease (mgte._claim, one short statement), call the server with
no transaction open, then store the results (mgte._complete) and the rejected rows
(mgte._fail), each one short statement. The database work runs on a thread of its own, so
that storing one batch and claiming the next overlap with the server embedding the
current one. The SQL lives in sql/auto_embed.sql; this module only decides what to do when.

Failures: a server that is down, overloaded or too slow is transient: the rows are given
back and the worker retries with capped exponential back-off, forever. A rejected input is
permanent: the batch is split until the offending rows stand alone, and they go to the
table's dead letters while the rest is stored.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from mgte.errors import UserError
from mgte_udf.client import Client, Encoded
from mgte_udf.errors import InputRejected, MgteError, NotSupported, ServerError
from mgte_udf.records import records, text_md5

log = logging.getLogger("mgte.worker")

# The server rejected these inputs; sending them again would fail again.
PERMANENT = (InputRejected, NotSupported, ServerError)


@dataclass(frozen=True)
class Settings:
    dsn: str
    socket: str
    batch_size: int = 32
    lease_seconds: float = 600
    poll_seconds: float = 5
    max_backoff_seconds: float = 30
    timeout_seconds: float = 3600


@dataclass(frozen=True)
class Table:
    name: str  # as regclass prints it, so it can go back into SQL as is
    dim: int
    sparse: bool
    vocab_size: int


@dataclass(frozen=True)
class Row:
    key: dict[str, Any]
    generation: int
    body: str


@dataclass
class BatchResult:
    claimed: int = 0
    stored: int = 0
    failed: int = 0


class Worker:
    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self._failures = 0  # consecutive transient failures, for the back-off

    def run(self, only: str | None = None, until_done: bool = False,
            progress: Callable[[BatchResult], None] | None = None) -> None:
        """Works until `stop` is set, or, with `until_done`, until `only` has nothing left to do.
        A lost database connection is re-opened with the same back-off as a lost server."""
        while not self.stop.is_set():
            try:
                self._run_connected(only, until_done, progress)
                return
            except psycopg.OperationalError as exc:
                self._back_off("database", str(exc).strip())

    def _run_connected(self, only: str | None, until_done: bool,
                       progress: Callable[[BatchResult], None] | None) -> None:
        s = self.settings
        with psycopg.connect(s.dsn, autocommit=True) as conn, \
                psycopg.connect(s.dsn, autocommit=True) as listener, \
                Client(s.socket, timeout=s.timeout_seconds) as client, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgte-db") as db:
            listener.execute("LISTEN mgte")
            while not self.stop.is_set():
                worked = 0
                for table in enabled_tables(conn, only):
                    try:
                        worked += self._drain(Pipeline(conn, db), client, table, progress)
                    except psycopg.OperationalError:
                        raise
                    except psycopg.Error as exc:  # e.g. the table was altered under us
                        self._back_off(table.name, f"database error: {str(exc).strip()}")
                if until_done and not worked and self._remaining(conn, only) == 0:
                    return
                if not worked:
                    self._wait_for_work(listener)

    def _wait_for_work(self, listener: psycopg.Connection[Any]) -> None:
        """Until the triggers' NOTIFY, poll_seconds, or stop (checked twice a second)."""
        deadline = time.monotonic() + self.settings.poll_seconds
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if any(True for _ in listener.notifies(timeout=min(left, 0.5), stop_after=1)):
                return

    def _remaining(self, conn: psycopg.Connection[Any], only: str | None) -> int:
        row = conn.execute("SELECT coalesce(sum(pending + in_progress), 0) FROM mgte_status(%s::regclass)",
                           [only]).fetchone()
        return int(row[0]) if row else 0

    def _back_off(self, what: str, why: str) -> None:
        self._failures += 1
        delay = min(self.settings.max_backoff_seconds, 0.5 * 2 ** (self._failures - 1))
        log.warning("%s: %s; retrying in %.1f s", what, why, delay)
        self.stop.wait(delay)

    def _drain(self, pipeline: Pipeline, client: Client, table: Table,
               progress: Callable[[BatchResult], None] | None) -> int:
        """Embeds batches of `table` until its queue is empty, a transient failure, or stop.
        While the server embeds one batch, the database thread stores the previous one and
        claims the next."""
        s = self.settings
        claimed = 0
        upcoming = pipeline.claim(table, s.batch_size, s.lease_seconds)
        storing: Future[BatchResult] | None = None
        try:
            while True:
                rows = upcoming.result()
                if not rows:
                    return claimed
                if self.stop.is_set():
                    pipeline.release(table, rows, "the worker is stopping").result()
                    return claimed
                upcoming = pipeline.claim(table, s.batch_size, s.lease_seconds)
                started = time.perf_counter()
                try:
                    embedded, rejected = self._embed(client, table, rows)
                except MgteError as exc:  # transient: PERMANENT ones are handled inside _embed()
                    pipeline.release(table, rows, str(exc))
                    pipeline.release(table, upcoming.result(), str(exc))
                    self._back_off(table.name, str(exc))
                    return claimed
                self._failures = 0
                if storing is not None:
                    _report(storing.result(), progress)
                storing = pipeline.store(table, rows, embedded, rejected, started)
                claimed += len(rows)
        finally:
            if storing is not None:
                _report(storing.result(), progress)

    def _embed(self, client: Client, table: Table,
               rows: list[Row]) -> tuple[list[tuple[list[Row], Encoded]], list[tuple[Row, str]]]:
        """(chunks of rows with their outputs, rejected rows with the reason); transient errors
        propagate. A rejected batch is split until the rows the server refuses stand alone."""
        try:
            encoded = client.encode([row.body for row in rows], dense=True, sparse=table.sparse,
                                    sparse_ids=table.sparse, dim=table.dim)
        except PERMANENT as exc:
            if len(rows) == 1:
                log.warning("%s: row %s rejected: %s", table.name, rows[0].key, exc)
                return [], [(rows[0], str(exc))]
            half = len(rows) // 2
            first, second = self._embed(client, table, rows[:half]), self._embed(client, table, rows[half:])
            return first[0] + second[0], first[1] + second[1]
        return [(rows, encoded)], []


class Pipeline:
    """The worker's database work, run in order on one thread that owns the connection."""

    def __init__(self, conn: psycopg.Connection[Any], thread: ThreadPoolExecutor) -> None:
        self.conn = conn
        self.thread = thread

    def claim(self, table: Table, batch_size: int, lease_seconds: float) -> Future[list[Row]]:
        def claim() -> list[Row]:
            return [Row(key, generation, body) for key, generation, _, body in self.conn.execute(
                "SELECT key, generation, attempts, body FROM mgte._claim(%s, %s, %s)",
                [table.name, batch_size, lease_seconds]).fetchall()]
        return self.thread.submit(claim)

    def release(self, table: Table, rows: list[Row], why: str) -> Future[None]:
        def release() -> None:
            if rows:
                self.conn.execute("SELECT mgte._release(%s, %s, %s)", [table.name, Jsonb([r.key for r in rows]), why])
        return self.thread.submit(release)

    def store(self, table: Table, rows: list[Row], embedded: list[tuple[list[Row], Encoded]],
              rejected: list[tuple[Row, str]], started: float) -> Future[BatchResult]:
        def store() -> BatchResult:
            results = [
                {**row.key, "mgte_generation": row.generation, "mgte_embedding": record.embedding,
                 "mgte_sparse": record.sparse, "mgte_sparsevec": record.sparsevec, "mgte_model": record.model,
                 "mgte_text_md5": record.text_md5, "mgte_tokens": record.tokens, "mgte_truncated": record.truncated}
                for chunk, encoded in embedded
                for row, record in zip(chunk, records([r.body for r in chunk], encoded, table.vocab_size),
                                       strict=True)]
            failures = [{**row.key, "mgte_generation": row.generation, "mgte_text_md5": text_md5(row.body),
                         "mgte_error": error} for row, error in rejected]
            out = BatchResult(claimed=len(rows))
            if results:
                stored = self.conn.execute("SELECT mgte._complete(%s, %s)", [table.name, Jsonb(results)]).fetchone()
                out.stored = int(stored[0]) if stored else 0
            if failures:
                failed = self.conn.execute("SELECT mgte._fail(%s, %s)", [table.name, Jsonb(failures)]).fetchone()
                out.failed = int(failed[0]) if failed else 0
            elapsed = time.perf_counter() - started
            log.info("%s: %d rows: %d stored, %d failed, %d changed meanwhile (queued again); %.2f s, %.0f rows/s",
                     table.name, len(rows), out.stored, out.failed, len(rows) - out.stored - out.failed,
                     elapsed, len(rows) / elapsed)
            return out
        return self.thread.submit(store)


def _report(result: BatchResult, progress: Callable[[BatchResult], None] | None) -> None:
    if progress is not None:
        progress(result)


def enabled_tables(conn: psycopg.Connection[Any], only: str | None = None) -> list[Table]:
    installed = conn.execute("SELECT to_regclass('mgte.enabled') IS NOT NULL").fetchone()
    if not (installed and installed[0]):
        raise UserError(f"database {conn.info.dbname!r} has no mgte extension",
                        hint="CREATE EXTENSION mgte CASCADE there, or point --dsn at the right database")
    rows = conn.execute(
        "SELECT tbl::text, dim, sparse, vocab_size FROM mgte.enabled "
        "WHERE %(only)s::regclass IS NULL OR tbl = %(only)s::regclass ORDER BY tbl::text",
        {"only": only}).fetchall()
    return [Table(*row) for row in rows]


def backfill(settings: Settings, table: str) -> None:
    """Embeds what `table` has queued, in the foreground, with a progress line on stderr."""
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        if not enabled_tables(conn, table):
            raise UserError(f"table {table} has no auto-embedding", hint=f"SELECT mgte_enable('{table}', 'column')")
        row = conn.execute("SELECT sum(pending + in_progress) FROM mgte_status(%s::regclass)", [table]).fetchone()
    total = int(row[0] or 0) if row else 0
    done = 0
    started = time.monotonic()

    def show(result: BatchResult) -> None:
        nonlocal done
        done += result.claimed
        rate = done / max(time.monotonic() - started, 1e-9)
        eta = (total - done) / rate if rate and total > done else 0.0
        width = 30
        filled = int(width * min(done, total) / total) if total else width
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows  "
                         f"{rate:.1f} rows/s  ETA {_duration(eta)}   ")
        sys.stderr.flush()

    print(f"{table}: {total} rows to embed", file=sys.stderr)
    Worker(settings).run(only=table, until_done=True, progress=show)
    elapsed = time.monotonic() - started
    print(f"\n{table}: done, {done} rows in {_duration(elapsed)}", file=sys.stderr)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"
