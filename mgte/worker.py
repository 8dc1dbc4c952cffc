"""`mgte worker` and `mgte backfill`: drain the auto-embedding queues through the model server.

Per batch: claim rows with a lease (the table's _claim function, one short statement) just
before sending them, call the server with no transaction open, then settle the batch (the
table's _settle function: store, dead-letter or give back each row). Settles run on threads
and connections of their own (--connections, four by default), so that settling overlaps with
the server embedding the next batch, and several batches of one table are settled at once: a
settle's time goes mostly to the HNSW indexes' inserts, and pgvector runs those of different
sessions in parallel. Claims run on one more connection, never behind a settle. The SQL,
and why a stale text is never stored, lives in sql/auto_embed.sql (settles of different
batches hold different leases, so they are the concurrent settles of different workers
there); this module only decides what to do when. Tables in logical mode have no trigger:
each pass first reads the database's logical decoding slot and queues what changed
(mgte.logical, sql/logical.sql).

Failures:
- the server is down, overloaded, too slow or stopping: the rows are given back and the
  worker retries with capped exponential back-off, forever;
- the server rejects an input (bad input): the batch is split until the offending rows
  stand alone, and they go to the table's dead letters while the rest is stored;
- the server fails running the model (a server fault): the batch is split the same way; a
  row that fails alone while the server still answers a health check is given back with an
  attempt counted, and goes to the dead letters after max_attempts; if the health check
  fails too, it is an outage, and nothing is counted;
- the served model is not the one whose vectors a table holds: nothing is stored for that
  table, the worker says so once and leaves the table's queue alone.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import psycopg
from pgvector import SparseVector, Vector
from pgvector.psycopg.sparsevec import register_sparsevec_info
from pgvector.psycopg.vector import register_vector_info
from psycopg import sql
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb

from mgte import logical
from mgte.errors import UserError
from mgte_udf.client import Client
from mgte_udf.errors import MgteError, NotSupported, ServerError
from mgte_udf.records import EmbeddingRecord, records

log = logging.getLogger("mgte.worker")

# The lease outlives the longest wait for the server by this much, for the database work
# around it.
LEASE_MARGIN_SECONDS = 60
# A settle that lost a deadlock against a concurrent write is tried again this often.
SETTLE_TRIES = 5
# How often the slot is read while a table is in logical mode: the delay a write waits for.
CAPTURE_SECONDS = 0.5
# How the worker's sessions show in pg_stat_activity (mgte doctor counts them by it).
APPLICATION_NAME = "mgte worker"


@dataclass(frozen=True)
class Settings:
    dsn: str
    socket: str
    batch_size: int = 32
    timeout_seconds: float = 600
    lease_seconds: float = 600 + LEASE_MARGIN_SECONDS
    poll_seconds: float = 5
    max_backoff_seconds: float = 30
    max_attempts: int = 3
    connections: int = 4  # batches of one table settled at once, each on a connection of its own


@dataclass(frozen=True)
class Table:
    oid: int  # names would need USAGE on the table's schema, which the worker role lacks
    name: str  # as regclass prints it, for the log
    prefix: str
    dim: int
    sparse: bool
    vocab_size: int
    model: str | None
    reembedding: bool  # the second set of objects of a table being re-embedded
    logical: bool  # in logical mode: its changes come from the slot (mgte.logical), not a trigger

    def function(self, suffix: str) -> sql.Composable:
        return sql.Identifier("mgte", f"{self.prefix}_{suffix}")


@dataclass(frozen=True)
class Row:
    key: dict[str, Any]
    lease: str
    attempts: int
    body: str
    body_md5: str


@dataclass
class Outcome:
    """What to do with one claimed row: see the settle function in sql/auto_embed.sql."""

    row: Row
    outcome: Literal["stored", "failed", "retry", "released"]
    record: EmbeddingRecord | None = None  # what to store
    error: str | None = None


def settle_arguments(outcomes: list[Outcome]) -> tuple[Jsonb, list[Vector | None] | None,
                                                       list[SparseVector | None] | None]:
    """The arguments of a table's _settle function: the outcomes as jsonb, and the vectors
    apart, for pgvector's binary adapters; the one of outcome i is item i + 1 of each array."""
    results = []
    embeddings: list[Vector | None] = []
    sparsevecs: list[SparseVector | None] = []
    for item, o in enumerate(outcomes, start=1):
        result = {**o.row.key, "mgte_lease": o.row.lease, "mgte_text_md5": o.row.body_md5,
                  "mgte_outcome": o.outcome, "mgte_error": o.error}
        r = o.record
        if r is not None:
            result.update(mgte_item=item, mgte_sparse=r.sparse, mgte_model=r.model, mgte_tokens=r.tokens,
                          mgte_truncated=r.truncated)
        results.append(result)
        embeddings.append(None if r is None else Vector(r.embedding))
        sparsevecs.append(None if r is None or r.sparsevec is None else SparseVector(r.sparsevec, r.vocab_size))
    # psycopg types an array by its first element that is not NULL; an array of NULLs alone
    # cannot be typed, and stands for nothing anyway.
    return (Jsonb(results), embeddings if any(v is not None for v in embeddings) else None,
            sparsevecs if any(v is not None for v in sparsevecs) else None)


@dataclass
class BatchResult:
    claimed: int = 0
    stored: int = 0
    failed: int = 0
    released: int = 0


# Told of each batch settled, with its table's name (mgte.metrics counts them).
Observer = Callable[[str, BatchResult], None]


class Outage(Exception):
    """The server cannot work now; the batch goes back to the queue untouched."""


class Worker:
    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.observer: Observer | None = None  # set by `mgte worker --metrics-address`
        self._failures = 0  # consecutive transient failures, for the back-off
        self._mismatch_reported: set[tuple[str, str]] = set()
        self._standby_reported = False
        # A table is in logical mode, as of the last pass; true at first, so that the first pass
        # drops a slot left with no table to read it for.
        self._logical = True
        self._capture_error: str | None = None  # the last failure to read the slot, logged once

    def run(self, only: int | None = None, until_done: bool = False,
            progress: Callable[[BatchResult], None] | None = None) -> None:
        """Works until `stop` is set, or, with `until_done`, until `only` has nothing left to do.
        A lost database connection is re-opened with the same back-off as a lost server."""
        while not self.stop.is_set():
            try:
                if self._on_standby(until_done):
                    self.stop.wait(self.settings.poll_seconds)
                    continue
                self._run_connected(only, until_done, progress)
                return
            except psycopg.OperationalError as exc:
                self._back_off("database", str(exc).strip())

    def _on_standby(self, until_done: bool) -> bool:
        """Whether the database is a hot standby, where nothing can be claimed or stored; says
        so once. The worker waits rather than exits, since a standby may be promoted."""
        with psycopg.connect(self.settings.dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
            row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
            where = f"database {conn.info.dbname!r} at {conn.info.host}:{conn.info.port}"
        if not (row and row[0]):
            if self._standby_reported:
                log.info("%s is no longer a standby: auto-embedding starts", where)
            self._standby_reported = False
            return False
        if until_done:
            raise UserError(f"{where} is a hot standby (read-only): nothing can be embedded there",
                            hint="point --dsn at the primary")
        if not self._standby_reported:
            self._standby_reported = True
            log.warning("%s is a hot standby (read-only): auto-embedding runs against the primary; waiting, "
                        "in case it is promoted", where)
        return True

    def _run_connected(self, only: int | None, until_done: bool,
                       progress: Callable[[BatchResult], None] | None) -> None:
        s = self.settings
        with ExitStack() as stack:
            conn = stack.enter_context(connect(s.dsn))  # the catalog and the claims
            listener = stack.enter_context(connect(s.dsn))
            client = stack.enter_context(Client(s.socket, timeout=s.timeout_seconds))
            settler = stack.enter_context(Settler([stack.enter_context(connect(s.dsn)) for _ in range(s.connections)],
                                                  self.observer))
            listener.execute("LISTEN mgte")
            while not self.stop.is_set():
                worked = self._pass(conn, settler, client, only, progress)
                if until_done and not worked and self._remaining(conn, only) == 0:
                    return
                if not worked:
                    self._wait_for_work(listener)

    def _pass(self, conn: psycopg.Connection[Any], settler: Settler, client: Client, only: int | None,
              progress: Callable[[BatchResult], None] | None) -> int:
        """Queues what the slot holds for tables in logical mode (all of them, whatever `only`
        is: the slot moves on for all at once), then drains each enabled table the served
        model may store into; returns the rows claimed."""
        tables = enabled_tables(conn)
        self._capture(conn, tables)
        self._compare_requested(conn, tables)
        model = self._served_model(client)
        if model is None:
            return 0
        worked = 0
        for table in (t for t in tables if only is None or t.oid == only):
            try:
                if self._serves(model, table):
                    worked += self._drain(conn, settler, client, table, progress)
            except psycopg.OperationalError:
                raise
            except psycopg.errors.InsufficientPrivilege as exc:
                raise not_a_worker(table.name, exc) from None
            except psycopg.Error as exc:  # e.g. the table was altered under us
                self._back_off(table.name, f"database error: {str(exc).strip()}")
            except Outage as exc:
                self._back_off(table.name, str(exc))
        return worked

    def _capture(self, conn: psycopg.Connection[Any], tables: list[Table]) -> None:
        """Queues what the slot holds (mgte.logical). A failure there (say, wal_level was
        lowered) is logged when it first shows, and keeps no other table from being drained."""
        if not self._logical and not any(t.logical for t in tables):
            return  # no slot to make, read or drop: the pass that found none left dropped it
        try:
            self._logical = logical.capture(conn, tables)
            self._capture_error = None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise not_a_worker("logical decoding", exc) from None
        except (psycopg.Error, logical.SlotWait) as exc:
            if isinstance(exc, psycopg.Error) and conn.broken:
                raise
            error = str(exc).strip()
            if error != self._capture_error:
                log.warning("logical decoding: %s; the tables in logical mode wait, the others go on", error)
            self._capture_error = error

    def _compare_requested(self, conn: psycopg.Connection[Any], tables: list[Table]) -> None:
        """Compares whole each table that mgte.compare_requests names (writes no trigger saw:
        partitions attached, detached or dropped, a column rewritten, mgte_resync; see
        sql/auto_embed.sql), every set of it, and deletes the request in the same transaction:
        a failure leaves it for the next pass."""
        for (oid,) in conn.execute("SELECT tbl::oid FROM mgte.compare_requests").fetchall():
            sets = [t for t in tables if t.oid == oid]
            if not sets:
                continue  # enabled after this pass listed the tables
            try:
                with conn.transaction():
                    conn.execute("DELETE FROM mgte.compare_requests WHERE tbl = %s::oid", [oid])
                    queued = 0
                    for table in sets:
                        row = conn.execute(sql.SQL("SELECT {}(NULL)").format(table.function("changed"))).fetchone()
                        queued += int(row[0]) if row else 0
                log.info("%s: compared whole, as requested; %d rows queued", sets[0].name, queued)
            except psycopg.OperationalError:
                raise
            except psycopg.errors.InsufficientPrivilege as exc:
                raise not_a_worker(sets[0].name, exc) from None
            except psycopg.Error as exc:  # e.g. the table was disabled meanwhile
                log.warning("%s: comparing it whole failed (%s); retrying next pass", sets[0].name, str(exc).strip())

    def _served_model(self, client: Client) -> dict[str, Any] | None:
        """What `mgte info` says of the served model, once per pass over the tables; None
        (after the back-off) when the server cannot answer."""
        try:
            return client.info()["model"]  # type: ignore[no-any-return]
        except MgteError as exc:
            self._back_off("server", str(exc))
            return None

    def _serves(self, model: dict[str, Any], table: Table) -> bool:
        """Whether the served model may store into `table`; says why not, once per model."""
        why = None
        if table.model is not None and model["id"] != table.model:
            why = f"the server embeds with model {model['id']}, but the embeddings of {table.name} were made by " \
                  f"{table.model}"
        elif int(model["hidden_size"]) < table.dim:
            why = f"the served model {model['id']} has {model['hidden_size']} dimensions, fewer than the " \
                  f"{table.dim} of {table.name}"
        elif table.sparse and not model.get("sparse", False):
            why = f"the served model {model['id']} has no sparse output, which {table.name} stores"
        if why is None:
            self._mismatch_reported.discard((table.name, model["id"]))
            return True
        if (table.name, model["id"]) not in self._mismatch_reported:
            self._mismatch_reported.add((table.name, model["id"]))
            log.error("%s: nothing is stored for this table: %s. Vectors of two models cannot be mixed in one "
                      "table: serve the table's model, or re-embed the table with mgte_reembed()", table.name, why)
        return False

    def _wait_for_work(self, listener: psycopg.Connection[Any]) -> None:
        """Until the triggers' NOTIFY, poll_seconds (CAPTURE_SECONDS while a table is in
        logical mode, whose writes notify nobody), or stop (checked twice a second)."""
        wait = min(self.settings.poll_seconds, CAPTURE_SECONDS) if self._logical else self.settings.poll_seconds
        deadline = time.monotonic() + wait
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if any(True for _ in listener.notifies(timeout=min(left, 0.5), stop_after=1)):
                return

    def _remaining(self, conn: psycopg.Connection[Any], only: int | None) -> int:
        row = conn.execute("SELECT coalesce(sum(pending + in_progress), 0) FROM mgte_status(%s::oid::regclass)",
                           [only]).fetchone()
        return int(row[0]) if row else 0

    def _back_off(self, what: str, why: str) -> None:
        self._failures += 1
        delay = min(self.settings.max_backoff_seconds, 0.5 * 2 ** (self._failures - 1))
        log.warning("%s: %s; retrying in %.1f s", what, why, delay)
        self.stop.wait(delay)

    def _drain(self, conn: psycopg.Connection[Any], settler: Settler, client: Client, table: Table,
               progress: Callable[[BatchResult], None] | None) -> int:
        """Embeds batches of `table` until its queue is empty, an outage, or stop. Each batch
        is claimed just before it is sent; while the server embeds it, up to `connections`
        earlier batches are being settled."""
        s = self.settings
        claimed = 0
        settling: set[Future[BatchResult]] = set()
        rows = claim_rows(conn, table, s.batch_size, s.lease_seconds)
        try:
            while rows:
                if self.stop.is_set():
                    settler.settle(table, [Outcome(r, "released", error="the worker stopped") for r in rows],
                                   time.perf_counter()).result()
                    break
                started = time.perf_counter()
                try:
                    outcomes = self._embed(client, table, rows)
                except Outage as exc:
                    settler.settle(table, [Outcome(r, "released", error=str(exc)) for r in rows], started).result()
                    raise
                self._failures = 0
                claimed += len(rows)
                if len(settling) >= s.connections:
                    # Every connection settles a batch: wait for any one, not the oldest, so
                    # that one slow settle (e.g. waiting on a row lock) holds up no other.
                    finished, settling = wait(settling, return_when=FIRST_COMPLETED)
                    for future in finished:
                        _report(future.result(), progress)
                settling.add(settler.settle(table, outcomes, started))
                rows = claim_rows(conn, table, s.batch_size, s.lease_seconds)
        finally:
            _await_all(settling, progress)
        if not rows and table.reembedding:
            take_over(conn, table)
        return claimed

    def _embed(self, client: Client, table: Table, rows: list[Row]) -> list[Outcome]:
        """One outcome per row. A batch the server refuses is split until the rows it fails
        on stand alone; Outage propagates."""
        try:
            encoded = client.encode([row.body for row in rows], dense=True, sparse=table.sparse,
                                    sparse_ids=table.sparse, dim=table.dim)
        except NotSupported as exc:  # the model lacks what the table stores: not the rows' fault
            raise Outage(str(exc)) from None
        except MgteError as exc:
            if not (exc.input_fault or isinstance(exc, ServerError)):
                raise Outage(str(exc)) from None
            if len(rows) > 1:
                half = len(rows) // 2
                return self._embed(client, table, rows[:half]) + self._embed(client, table, rows[half:])
            return [self._failed_alone(client, table, rows[0], exc)]
        return [Outcome(row, "stored", record=record)
                for row, record in zip(rows, records(encoded, table.vocab_size), strict=True)]

    def _failed_alone(self, client: Client, table: Table, row: Row, exc: MgteError) -> Outcome:
        if exc.input_fault:
            log.warning("%s: row %s rejected: %s", table.name, row.key, exc)
            return Outcome(row, "failed", error=str(exc))
        try:
            client.health()
        except MgteError as health:
            raise Outage(f"{exc} (and the server fails its health check: {health})") from None
        if row.attempts + 1 >= self.settings.max_attempts:
            log.warning("%s: row %s failed alone %d times, the last: %s", table.name, row.key, row.attempts + 1, exc)
            return Outcome(row, "failed", error=str(exc))
        log.warning("%s: row %s failed alone (attempt %d of %d): %s", table.name, row.key, row.attempts + 1,
                    self.settings.max_attempts, exc)
        return Outcome(row, "retry", error=str(exc))


def not_a_worker(what: str, exc: psycopg.Error) -> UserError:
    return UserError(f"{what}: {str(exc).strip()}",
                     hint="connect as a member of the role mgte_worker: GRANT mgte_worker TO <the worker's login role>")


def claim_rows(conn: psycopg.Connection[Any], table: Table, batch_size: int, lease_seconds: float) -> list[Row]:
    return [Row(*row) for row in conn.execute(
        sql.SQL("SELECT key, lease::text, attempts, body, body_md5 FROM {}(%s, %s)").format(table.function("claim")),
        [batch_size, lease_seconds]).fetchall()]


def take_over(conn: psycopg.Connection[Any], table: Table) -> None:
    """Lets a re-embedding whose queue is empty take over, by a settle of no rows. The settle
    that empties the queue does so itself, but two settles that commit at once (of this
    worker's connections, or of two workers) each still see the other's rows queued, and
    then neither does."""
    conn.execute(sql.SQL("SELECT FROM {}(%b, %b, %b)").format(table.function("settle")), settle_arguments([]))


class Settler:
    """Settles batches on connections of its own, as many at once as it has connections; a
    settle is one statement on one connection."""

    def __init__(self, connections: list[psycopg.Connection[Any]], observer: Observer | None = None) -> None:
        self._idle: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        for conn in connections:
            self._idle.put(conn)
        # As many threads as connections: a thread always finds one idle.
        self._threads = ThreadPoolExecutor(max_workers=len(connections), thread_name_prefix="mgte-settle")
        self.observer = observer

    def __enter__(self) -> Settler:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._threads.shutdown()

    def settle(self, table: Table, outcomes: list[Outcome], started: float) -> Future[BatchResult]:
        return self._threads.submit(self._settle, table, outcomes, started)

    def _settle(self, table: Table, outcomes: list[Outcome], started: float) -> BatchResult:
        conn = self._idle.get()
        try:
            try:
                stored, failed, released = _call_settle(conn, table, outcomes)
            except psycopg.errors.ObjectNotInPrerequisiteState as exc:
                # The served model changed under this batch: store nothing, give it all back.
                why = str(exc).strip()
                log.error("%s: %s", table.name, why)
                stored, failed, released = _call_settle(conn, table, [Outcome(o.row, "released", error=why)
                                                                      for o in outcomes])
        finally:
            self._idle.put(conn)
        out = BatchResult(claimed=len(outcomes), stored=stored, failed=failed, released=released)
        if self.observer is not None:
            self.observer(table.name, out)
        elapsed = time.perf_counter() - started
        log.info("%s: %d rows: %d stored, %d failed, %d given back (changed meanwhile, or to retry); "
                 "%.2f s, %.0f rows/s", table.name, out.claimed, out.stored, out.failed, out.released,
                 elapsed, out.claimed / elapsed)
        return out


def _call_settle(conn: psycopg.Connection[Any], table: Table, outcomes: list[Outcome]) -> tuple[int, int, int]:
    statement = sql.SQL("SELECT * FROM {}(%b, %b, %b)").format(table.function("settle"))
    arguments = settle_arguments(outcomes)
    for attempt in range(1, SETTLE_TRIES + 1):
        try:
            row = conn.execute(statement, arguments).fetchone()
            assert row is not None
            return row[0], row[1], row[2]
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            if attempt == SETTLE_TRIES:
                raise
    raise AssertionError("unreachable")


def _await_all(settling: set[Future[BatchResult]], progress: Callable[[BatchResult], None] | None) -> None:
    """Waits for every settle in flight, reporting each, and then raises the first failure:
    no batch may still be settling when the caller reconnects or moves on."""
    failure: BaseException | None = None
    for future in settling:
        try:
            _report(future.result(), progress)
        except BaseException as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def _report(result: BatchResult, progress: Callable[[BatchResult], None] | None) -> None:
    if progress is not None:
        progress(result)


def connect(dsn: str) -> psycopg.Connection[Any]:
    """Autocommit, and READ COMMITTED whatever the defaults: each statement of a settle must
    see what committed before it (see sql/auto_embed.sql)."""
    conn = psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME)
    conn.execute("SET default_transaction_isolation = 'read committed'")
    register_vectors(conn)
    return conn


def register_vectors(conn: psycopg.Connection[Any]) -> None:
    """pgvector's adapters (binary too) for `conn`, when its database has the extension."""
    row = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_catalog.pg_extension "
                       "WHERE extname = 'vector'").fetchone()
    if row is None:
        return
    # By the schema's name: the worker's search_path need not include it.
    register_vector_info(conn, TypeInfo.fetch(conn, f"{row[0]}.vector"))
    sparsevec = TypeInfo.fetch(conn, f"{row[0]}.sparsevec")
    if sparsevec is None:
        raise UserError("the pgvector extension has no sparsevec type", hint="mgte needs pgvector 0.7 or later")
    register_sparsevec_info(conn, sparsevec)


def enabled_tables(conn: psycopg.Connection[Any], only: int | None = None) -> list[Table]:
    installed = conn.execute("SELECT to_regclass('mgte.enabled') IS NOT NULL").fetchone()
    if not (installed and installed[0]):
        raise UserError(f"database {conn.info.dbname!r} has no mgte extension",
                        hint="CREATE EXTENSION mgte CASCADE there, or point --dsn at the right database")
    # A table being re-embedded has a second set of objects, for the new model.
    rows = conn.execute(
        "SELECT e.tbl::oid, e.tbl::text, e.prefix, e.dim, e.sparse, e.vocab_size, e.model, false, "
        "       e.mode = 'logical' "
        "FROM mgte.enabled e "
        "WHERE %(only)s::oid IS NULL OR e.tbl = %(only)s::oid "
        "UNION ALL "
        "SELECT e.tbl::oid, e.tbl::text || ' (re-embedding)', r.prefix, e.dim, e.sparse, e.vocab_size, r.model, true, "
        "       e.mode = 'logical' "
        "FROM mgte.reembeddings r JOIN mgte.enabled e USING (tbl) "
        "WHERE %(only)s::oid IS NULL OR e.tbl = %(only)s::oid ORDER BY 2",
        {"only": only}).fetchall()
    return [Table(*row) for row in rows]


def backfill(settings: Settings, table: str) -> None:
    """Embeds what `table` has queued, in the foreground, with a progress line on stderr."""
    with connect(settings.dsn) as conn:
        oid = _oid(conn, table)
        if not enabled_tables(conn, oid):
            raise UserError(f"table {table} has no auto-embedding", hint=f"SELECT mgte_enable('{table}', 'column')")
        row = conn.execute("SELECT sum(pending + in_progress) FROM mgte_status(%s::oid::regclass)", [oid]).fetchone()
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
    Worker(settings).run(only=oid, until_done=True, progress=show)
    elapsed = time.monotonic() - started
    print(f"\n{table}: done, {done} rows in {_duration(elapsed)}", file=sys.stderr)


def _oid(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute("SELECT %s::regclass::oid", [table]).fetchone()
    assert row is not None
    return int(row[0])


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"
