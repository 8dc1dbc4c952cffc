"""mgte for SQLAlchemy 2.x (`pip install 'mgte[sqlalchemy]'`): typed SQL functions, the set-returning
ones as table-valued functions to join, the embeddings table of an enabled table, and the statements
that enable and disable auto-embedding (for `op.execute` in Alembic migrations).

    hits = mgte_search(Doc, "where is the station", k=5, filter={"lang": "es"})
    select(Doc, hits.c.rank).join(hits, key_matches(hits, Doc)).order_by(hits.c.rank)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pgvector import SparseVector
from pgvector.sqlalchemy import SPARSEVEC, Vector
from sqlalchemy import (
    REAL,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Double,
    Executable,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    cast,
    column,
    func,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REGCLASS
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.sql.visitors import InternalTraversal

__all__ = [
    "disable", "embeddings_table", "enable", "key_matches", "mgte_embed", "mgte_rerank", "mgte_search",
    "mgte_sparse", "mgte_sparsevec", "rerank",
]

# A mapped class, a Table, or (for the functions that need no columns) a table name as SQL reads it,
# e.g. 'app.docs'. Migrations should use names: the models change after a migration is written.
Target = type[Any] | Table | str


class mgte_embed(GenericFunction[list[float]]):
    """`mgte_embed(text[, dim])`: the dense embedding, a pgvector `vector`."""

    type = Vector()
    inherit_cache = True


class mgte_sparse(GenericFunction[dict[str, float]]):
    """`mgte_sparse(text)`: the lexical weights as jsonb, `{token: weight}`."""

    type = JSONB()
    inherit_cache = True


class mgte_sparsevec(GenericFunction[SparseVector]):
    """`mgte_sparsevec(text)`: the lexical weights as a pgvector `sparsevec` keyed by token id + 1."""

    type = SPARSEVEC()
    inherit_cache = True


class mgte_rerank(GenericFunction[float]):
    """`mgte_rerank(query, document[, sigmoid])`: the cross-encoder's score (`rerank` scores many)."""

    type = REAL()
    inherit_cache = True


class _Named(ColumnElement[Any]):
    """`name => value`, PostgreSQL's named argument notation: an argument left out keeps the default
    the SQL function declares, so that default is written in one place only."""

    inherit_cache = True
    # What tells two of them apart in SQLAlchemy's statement cache (which declares it a list).
    _traverse_internals = [  # noqa: RUF012
        ("name", InternalTraversal.dp_string), ("value", InternalTraversal.dp_clauseelement)]

    def __init__(self, name: str, value: ColumnElement[Any]) -> None:
        self.name = name
        self.value = value


@compiles(_Named)
def _compile_named(element: _Named, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{element.name} => {compiler.process(element.value, **kw)}"


def _named(options: Mapping[str, tuple[object, TypeEngine[Any]]]) -> list[_Named]:
    return [_Named(name, literal(value, type_)) for name, (value, type_) in options.items() if value is not None]


def _table(target: type[Any] | Table) -> Table:
    if isinstance(target, Table):
        return target
    mapper = inspect(target, raiseerr=False)
    if not isinstance(mapper, Mapper) or not isinstance(mapper.local_table, Table):
        raise TypeError(f"expected a mapped class or a Table, not {target!r}")
    return mapper.local_table


def _name(target: Target) -> str:
    """The table's name as regclass reads it: quoted, so that any name comes through as it is."""
    if isinstance(target, str):
        return target
    table = _table(target)
    return ".".join('"' + part.replace('"', '""') + '"' for part in (table.schema, table.name) if part)


def _regclass(target: Target) -> ColumnElement[Any]:
    return cast(literal(_name(target), Text()), REGCLASS)


def mgte_search(target: Target, query: str, *, k: int | None = None, candidates: int | None = None,
                fusion: str | None = None, sparse_weight: float | None = None, rrf_k: int | None = None,
                rerank: bool | None = None, rerank_top: int | None = None,
                filter: Mapping[str, Any] | None = None) -> TableValuedAlias:
    """`mgte_search(...)` as a table with columns key (jsonb), body, rank, dense_score, sparse_score,
    fused_score and rerank_score; join it to the table's rows with `key_matches`. Options left as
    None keep the SQL defaults (see the README); `filter` applies before the k best are chosen."""
    options: dict[str, tuple[object, TypeEngine[Any]]] = {
        "k": (k, Integer()), "candidates": (candidates, Integer()), "fusion": (fusion, Text()),
        "sparse_weight": (sparse_weight, Double()), "rrf_k": (rrf_k, Integer()), "rerank": (rerank, Boolean()),
        "rerank_top": (rerank_top, Integer()), "filter": (filter, JSONB())}
    function = func.mgte_search(_regclass(target), literal(query, Text()), *_named(options))
    return function.table_valued(
        column("key", JSONB), column("body", Text), column("rank", Integer), column("dense_score", REAL),
        column("sparse_score", REAL), column("fused_score", REAL), column("rerank_score", REAL))


def key_matches(result: TableValuedAlias, target: type[Any] | Table) -> ColumnElement[bool]:
    """The join condition of a `mgte_search` result and the table it searched: each key column
    equals the key's value cast to the column's type, which lets PostgreSQL use the primary key."""
    keys = _table(target).primary_key.columns
    return and_(*(cast(result.c.key[key.name].astext, key.type) == key for key in keys))


def rerank(query: str, documents: Sequence[str] | ColumnElement[Any], *,
           sigmoid: bool | None = None) -> TableValuedAlias:
    """`mgte_rerank(query, documents text[])` as a table of (idx, score), one server round trip:
    idx is the 1-based position in `documents`, best first."""
    array = documents if isinstance(documents, ColumnElement) else literal(list(documents), ARRAY(Text()))
    function = mgte_rerank(literal(query, Text()), array, *_named({"sigmoid": (sigmoid, Boolean())}))
    return function.table_valued(column("idx", Integer), column("score", REAL))


def embeddings_table(bind: Connection | Session, target: type[Any] | Table) -> Table:
    """The embeddings table of an enabled table (e.g. mgte.docs_embeddings), as mgte.enabled names
    it now, with its vector dimensions. Its foreign key to `target` exists only in this Table (the
    database has none), so that `select(Doc).join(embeddings)` finds the join and a class mapped
    onto it can be a relationship() of Doc. Read it again after `mgte_reembed` takes over: the
    new embeddings may live in another table. With an AsyncSession: `await
    session.run_sync(embeddings_table, Doc)`."""
    base = _table(target)
    row = bind.execute(text(
        "SELECT n.nspname, c.relname, e.key_columns, e.dim, e.vocab_size FROM mgte.enabled e "
        "JOIN pg_catalog.pg_class c ON c.oid = e.embeddings JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE e.tbl = CAST(:tbl AS regclass)"), {"tbl": _name(base)}).one_or_none()
    if row is None:
        raise LookupError(f"table {base.fullname} has no auto-embedding; enable it first (mgte_enable, or "
                          "mgte.sqlalchemy.enable)")
    schema, name, key_columns, dim, vocab_size = row
    keys = [base.c[key] for key in key_columns]
    return Table(
        name, MetaData(),
        *(Column(key.name, key.type, primary_key=True) for key in keys),
        Column("embedding", Vector(dim), nullable=False),
        Column("sparse", JSONB),
        Column("sparsevec", SPARSEVEC(vocab_size)),
        Column("model", Text, nullable=False),
        Column("text_md5", Text, nullable=False),
        Column("tokens", Integer, nullable=False),
        Column("truncated", Boolean, nullable=False),
        Column("embedded_at", DateTime(timezone=True), nullable=False),
        ForeignKeyConstraint([key.name for key in keys], keys),
        schema=schema)


def enable(target: Target, text_column: str, *, dim: int | None = None, sparse: bool | None = None,
           mode: str | None = None, on_failure: str | None = None, sync_timeout_ms: int | None = None,
           indexes: bool | None = None) -> Executable:
    """`SELECT mgte_enable(...)`, e.g. `op.execute(enable("docs", "body"))` in a migration's upgrade();
    options left as None keep the SQL defaults."""
    options: dict[str, tuple[object, TypeEngine[Any]]] = {
        "dim": (dim, Integer()), "sparse": (sparse, Boolean()), "mode": (mode, Text()),
        "on_failure": (on_failure, Text()), "sync_timeout_ms": (sync_timeout_ms, Integer()),
        "indexes": (indexes, Boolean())}
    return select(func.mgte_enable(_regclass(target), literal(text_column, Text()), *_named(options)))


def disable(target: Target, *, keep_embeddings: bool | None = None) -> Executable:
    """`SELECT mgte_disable(...)`, e.g. `op.execute(disable("docs"))` in a migration's downgrade()."""
    return select(func.mgte_disable(_regclass(target), *_named({"keep_embeddings": (keep_embeddings, Boolean())})))
