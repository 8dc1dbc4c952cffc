"""`mgte worker` and `mgte backfill`: drain the auto-embedding queues through the model server.

Per batch: claim rows with a lease (mgte._claim, one short statement), call the server with
no transaction open, then store the results (mgte._complete) and the rejected rows
(mgte._fail), each one short statement. The SQL lives in sql/auto_embed.sql; this module
only decides what to do when.

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
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from mgte_udf.client import Client
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
                Client(s.socket, timeout=s.timeout_seconds) as client:
            listener.execute("LISTEN mgte")
            while not self.stop.is_set():
                worked = 0
                for table in self._tables(conn, only):
                    result = self._batch_with_backoff(conn, client, table)
                    worked += result.claimed
                    if progress is not None and result.claimed:
                        progress(result)
                if until_done and not worked and self._remaining(conn, only) == 0:
                    return
                if not worked:
                    # Woken by the triggers' NOTIFY, or at least every poll_seconds.
                    for _ in listener.notifies(timeout=s.poll_seconds, stop_after=1):
                        pass

    def _tables(self, conn: psycopg.Connection[Any], only: str | None) -> list[Table]:
        rows = conn.execute(
            "SELECT tbl::text, dim, sparse, vocab_size FROM mgte.enabled "
            "WHERE %(only)s::regclass IS NULL OR tbl = %(only)s::regclass ORDER BY tbl::text",
            {"only": only}).fetchall()
        return [Table(*row) for row in rows]

    def _remaining(self, conn: psycopg.Connection[Any], only: str | None) -> int:
        row = conn.execute("SELECT coalesce(sum(pending + in_progress), 0) FROM mgte_status(%s::regclass)",
                           [only]).fetchone()
        return int(row[0]) if row else 0

    def _batch_with_backoff(self, conn: psycopg.Connection[Any], client: Client, table: Table) -> BatchResult:
        try:
            result = self.batch(conn, client, table)
        except MgteError as exc:  # transient: PERMANENT ones are handled inside batch()
            self._back_off(table.name, str(exc))
            return BatchResult()
        self._failures = 0
        return result

    def _back_off(self, what: str, why: str) -> None:
        self._failures += 1
        delay = min(self.settings.max_backoff_seconds, 0.5 * 2 ** (self._failures - 1))
        log.warning("%s: %s; retrying in %.1f s", what, why, delay)
        self.stop.wait(delay)

    def batch(self, conn: psycopg.Connection[Any], client: Client, table: Table) -> BatchResult:
        s = self.settings
        rows = [Row(key, generation, body) for key, generation, _, body in conn.execute(
            "SELECT key, generation, attempts, body FROM mgte._claim(%s, %s, %s)",
            [table.name, s.batch_size, s.lease_seconds]).fetchall()]
        if not rows:
            return BatchResult()
        started = time.perf_counter()
        try:
            results, failures = self._embed(client, table, rows)
        except MgteError as exc:
            conn.execute("SELECT mgte._release(%s, %s, %s)", [table.name, Jsonb([r.key for r in rows]), str(exc)])
            raise
        out = BatchResult(claimed=len(rows))
        if results:
            stored = conn.execute("SELECT mgte._complete(%s, %s)", [table.name, Jsonb(results)]).fetchone()
            out.stored = int(stored[0]) if stored else 0
        if failures:
            failed = conn.execute("SELECT mgte._fail(%s, %s)", [table.name, Jsonb(failures)]).fetchone()
            out.failed = int(failed[0]) if failed else 0
        elapsed = time.perf_counter() - started
        log.info("%s: %d rows: %d stored, %d failed, %d changed meanwhile (queued again); %.2f s, %.0f rows/s",
                 table.name, len(rows), out.stored, out.failed, len(rows) - out.stored - out.failed,
                 elapsed, len(rows) / elapsed)
        return out

    def _embed(self, client: Client, table: Table,
               rows: list[Row]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(results to store, rows to dead-letter); transient errors propagate."""
        texts = [row.body for row in rows]
        try:
            encoded = client.encode(texts, dense=True, sparse=table.sparse, sparse_ids=table.sparse, dim=table.dim)
        except PERMANENT as exc:
            if len(rows) == 1:
                row = rows[0]
                log.warning("%s: row %s rejected: %s", table.name, row.key, exc)
                return [], [{**row.key, "mgte_generation": row.generation, "mgte_text_md5": text_md5(row.body),
                             "mgte_error": str(exc)}]
            half = len(rows) // 2
            first, second = self._embed(client, table, rows[:half]), self._embed(client, table, rows[half:])
            return first[0] + second[0], first[1] + second[1]
        return [
            {**row.key, "mgte_generation": row.generation, "mgte_embedding": record.embedding,
             "mgte_sparse": record.sparse, "mgte_sparsevec": record.sparsevec, "mgte_model": record.model,
             "mgte_text_md5": record.text_md5, "mgte_tokens": record.tokens, "mgte_truncated": record.truncated}
            for row, record in zip(rows, records(texts, encoded, table.vocab_size), strict=True)
        ], []


def backfill(settings: Settings, table: str) -> None:
    """Embeds what `table` has queued, in the foreground, with a progress line on stderr."""
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
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
