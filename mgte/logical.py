"""Logical mode's part of `mgte worker`: reads the database's slot and hands each table's
changed keys to its _changed function (sql/logical.sql says why that is always safe).

The slot speaks pgoutput, protocol version 1 (PostgreSQL's "Logical Replication Message
Formats"). The publication carries the key columns only, in their text form.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from mgte.worker import Table

log = logging.getLogger("mgte.worker")

# Changes read from the slot at a time; whole transactions, so a large one comes whole.
PEEK_CHANGES = 10_000
# Keys per call of a table's _changed function, each its own transaction.
APPLY_KEYS = 5_000
# How long a pass waits to make the slot: PostgreSQL makes it once every transaction running
# at that moment (in any database) has ended, and the other tables wait meanwhile.
START_TIMEOUT = "2s"

Key = dict[str, str]


@dataclass
class Decoded:
    keys: dict[int, dict[tuple[str, ...], Key]] = field(default_factory=dict)  # relation oid -> its keys
    whole: set[int] = field(default_factory=set)  # relations to apply whole: truncated, or a key not sent

    def add(self, relid: int, columns: list[str], values: list[str | _Unchanged | None]) -> None:
        if any(isinstance(v, _Unchanged) or v is None for v in values):
            self.whole.add(relid)  # a TOASTed key left unchanged is not sent
            return
        text_values = tuple(str(v) for v in values)
        self.keys.setdefault(relid, {})[text_values] = dict(zip(columns, text_values, strict=True))


class _Unchanged:
    """A TOASTed value the UPDATE left as it was: pgoutput does not send it."""


class SlotWait(Exception):
    """The slot cannot be made yet."""


def decode(messages: Iterable[bytes], encoding: str) -> Decoded:
    """The keys of the rows that `messages` insert, update (old and new key) or delete, by
    relation; truncated relations go to `whole`."""
    decoded = Decoded()
    relations: dict[int, list[str]] = {}
    for data in messages:
        kind = data[:1]
        if kind in (b"B", b"C", b"O", b"Y", b"M"):  # begin, commit, origin, type, message
            continue
        if kind == b"R":
            relid, pos = _int32(data, 1)
            _namespace, pos = _string(data, pos, encoding)
            _name, pos = _string(data, pos, encoding)
            columns, pos = _int16(data, pos + 1)  # after the replica identity setting
            names = []
            for _ in range(columns):
                name, pos = _string(data, pos + 1, encoding)  # after the flags
                names.append(name)
                pos += 8  # type oid, type modifier
            relations[relid] = names
        elif kind in (b"I", b"U", b"D"):
            relid, pos = _int32(data, 1)
            while pos < len(data):  # 'K' or 'O' (old key or row), 'N' (new row)
                values, pos = _tuple(data, pos + 1, encoding)
                decoded.add(relid, relations[relid], values)
        elif kind == b"T":
            count, pos = _int32(data, 1)
            pos += 1  # options: CASCADE, RESTART IDENTITY
            for _ in range(count):
                relid, pos = _int32(data, pos)
                decoded.whole.add(relid)
        else:
            raise ValueError(f"unexpected pgoutput message {kind!r}")
    return decoded


def _int16(data: bytes, pos: int) -> tuple[int, int]:
    return struct.unpack_from("!h", data, pos)[0], pos + 2


def _int32(data: bytes, pos: int) -> tuple[int, int]:
    return struct.unpack_from("!I", data, pos)[0], pos + 4


def _string(data: bytes, pos: int, encoding: str) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(encoding), end + 1


def _tuple(data: bytes, pos: int, encoding: str) -> tuple[list[str | _Unchanged | None], int]:
    columns, pos = _int16(data, pos)
    values: list[str | _Unchanged | None] = []
    for _ in range(columns):
        kind = data[pos:pos + 1]
        pos += 1
        if kind == b"n":
            values.append(None)
        elif kind == b"u":
            values.append(_Unchanged())
        elif kind == b"t":
            length, pos = _int32(data, pos)
            values.append(data[pos:pos + length].decode(encoding))
            pos += length
        else:
            raise ValueError(f"unexpected pgoutput column kind {kind!r}")
    return values, pos


def capture(conn: psycopg.Connection[Any], tables: list[Table]) -> bool:
    """Hands everything the slot holds to the tables in logical mode (`tables`: every set of
    every enabled table); true if there are any. Makes the slot when it is missing, and then
    applies those tables whole, for what was written before it existed."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = '{START_TIMEOUT}'")
            row = conn.execute("SELECT mgte._logical_start()").fetchone()
    except psycopg.errors.ObjectInUse:
        return True  # another worker is reading the slot
    except psycopg.errors.QueryCanceled:
        raise SlotWait("making the slot waits for the transactions running now to end (see pg_stat_activity)") \
            from None
    logical = [t for t in tables if t.logical]
    if not logical:
        return False
    if row is not None and row[0] is None:
        log.warning("publication mgte_changes had been changed or dropped by hand: made again, with a new slot on the "
                    "next pass, which then brings %s up to date", ", ".join(t.name for t in logical))
        return True
    if row and row[0]:
        log.info("made the logical decoding slot; bringing %s up to date", ", ".join(t.name for t in logical))
        for table in logical:
            _apply(conn, table, None)
    by_oid: dict[int, list[Table]] = {}
    for table in logical:
        by_oid.setdefault(table.oid, []).append(table)
    while True:
        upto = conn.execute("SELECT pg_catalog.pg_current_wal_flush_lsn()::text").fetchone()
        assert upto is not None
        try:
            rows = conn.execute("SELECT lsn::text, data FROM mgte._logical_peek(%s::pg_lsn, %s)",
                                [upto[0], PEEK_CHANGES]).fetchall()
        except psycopg.errors.ObjectInUse:
            return True
        decoded = decode((bytes(r[1]) for r in rows), conn.info.encoding)
        roots = _roots(conn, set(decoded.keys) | decoded.whole)
        for relid, keys in decoded.keys.items():
            for table in by_oid.get(roots[relid], []):
                values = list(keys.values())
                for start in range(0, len(values), APPLY_KEYS):
                    _apply(conn, table, values[start:start + APPLY_KEYS])
        for relid in decoded.whole:
            for table in by_oid.get(roots[relid], []):
                _apply(conn, table, None)
        full = len(rows) >= PEEK_CHANGES
        # Up to the last commit read, or, when the slot had less than asked for, up to where
        # it was read (commits after `upto` come next time).
        conn.execute("SELECT mgte._logical_advance(%s::pg_lsn)", [rows[-1][0] if full else upto[0]])
        if not full:
            return True


def _roots(conn: psycopg.Connection[Any], relids: set[int]) -> dict[int, int]:
    """The partitioned table of each partition (itself for any other table)."""
    if not relids:
        return {}
    rows = conn.execute("SELECT r, coalesce(pg_catalog.pg_partition_root(r::regclass)::oid, r) "
                        "FROM unnest(%s::oid[]) AS r", [list(relids)]).fetchall()
    return {int(r): int(root) for r, root in rows}


def _apply(conn: psycopg.Connection[Any], table: Table, keys: list[Key] | None) -> None:
    """One call of the table's _changed function (keys None: the whole table). A table
    disabled meanwhile has nothing left to apply; a failure with the keys (say, one of them
    no longer fits its type) falls back to the whole table, which reads no decoded key."""
    query = sql.SQL("SELECT {}(%s)").format(table.function("changed"))
    try:
        conn.execute(query, [Jsonb(keys) if keys is not None else None])
    except psycopg.errors.UndefinedFunction:
        pass
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        if keys is None:
            raise
        log.warning("%s: applying %d decoded keys failed (%s); bringing the whole table up to date",
                    table.name, len(keys), str(exc).strip())
        _apply(conn, table, None)
