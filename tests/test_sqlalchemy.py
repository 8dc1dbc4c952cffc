"""mgte.sqlalchemy and pgvector's psycopg adapters against the real PostgreSQL and the tiny models.

The sync tests run as a plain role that owns schema `app` and its tables; the async test as the
superuser, with a real worker. The model has random weights: results are compared with the same
numbers read through plain SQL or recomputed here.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from alembic import op
from alembic.migration import MigrationContext
from alembic.operations import Operations
from pgvector import SparseVector, Vector
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import SPARSEVEC, VECTOR
from psycopg import sql
from sqlalchemy import Engine, MetaData, String, Table, create_engine, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from mgte.sqlalchemy import (
    disable,
    embeddings_table,
    enable,
    key_matches,
    mgte_embed,
    mgte_rerank,
    mgte_search,
    mgte_sparse,
    mgte_sparsevec,
    rerank,
)
from tests.databases import Database, database, done, wait_until

ROLE = "mgte_sqlalchemy_app"
QUERY = "coffee and glaciers 7"
DIM = 32  # the tiny model's
VOCAB = 250048


class Base(DeclarativeBase):
    metadata = MetaData(schema="app")


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    lang: Mapped[str] = mapped_column(String(2))
    body: Mapped[str]


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class Item(Base):
    __tablename__ = "items"
    name: Mapped[str] = mapped_column(primary_key=True)
    body: Mapped[str]


def body(i: int) -> str:
    return f"document {i} about trains, coffee and glaciers {i % 13}"


def url(cluster: Cluster, db: Database, user: str) -> URL:
    return URL.create("postgresql+psycopg", username=user, host=str(cluster.socket_dir), port=cluster.port,
                      database=db.name)


@pytest.fixture(scope="module")
def db(cluster: Cluster, server: ServerProcess) -> Iterator[Database]:
    """One database for the module, with the schema `app` of a plain role."""
    with database(cluster, server.socket) as fresh:
        if fresh.conn.execute("SELECT FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone() is None:
            fresh.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        fresh.conn.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(ROLE)))
        yield fresh


@pytest.fixture(scope="module")
def engine(cluster: Cluster, db: Database) -> Iterator[Engine]:
    """The plain role's engine, with app.docs enabled (sync mode) and 40 rows embedded."""
    engine = create_engine(url(cluster, db, ROLE))
    with engine.begin() as conn:
        table(Doc).create(conn)
        conn.execute(enable(Doc, "body", mode="sync"))
    with Session(engine) as session:
        session.add_all(Doc(id=i, lang="es" if i % 2 == 0 else "en", body=body(i)) for i in range(1, 41))
        session.commit()
    yield engine
    engine.dispose()


def table(model: type[Base]) -> Table:
    return Base.metadata.tables[f"app.{model.__tablename__}"]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_typed_functions_return_python_values(engine: Engine) -> None:
    with engine.connect() as conn:
        dense, short, weights, sparsevec, score = conn.execute(select(
            mgte_embed(QUERY), func.mgte_embed(QUERY, 8), mgte_sparse(QUERY), mgte_sparsevec(QUERY),
            func.mgte_rerank(QUERY, body(7)))).one()
        plain = conn.execute(text("SELECT mgte_embed(:q)::text, mgte_sparse(:q)::text, mgte_sparsevec(:q)::text, "
                                  "mgte_rerank(:q, :d)"), {"q": QUERY, "d": body(7)}).one()
    # The same texts in requests of their own: equal up to float32 printing (1e-6).
    assert isinstance(dense, list) and dense == pytest.approx(json.loads(plain[0]), abs=1e-6)
    assert len(dense) == DIM and math.fsum(x * x for x in dense) == pytest.approx(1, abs=1e-5)
    assert len(short) == 8 and math.fsum(x * x for x in short) == pytest.approx(1, abs=1e-5)
    assert isinstance(weights, dict) and weights == pytest.approx(json.loads(plain[1]), abs=1e-6)
    assert isinstance(sparsevec, SparseVector) and sparsevec == SparseVector.from_text(plain[2])
    assert sparsevec.dimensions() == VOCAB and len(sparsevec.indices()) == len(weights)
    assert isinstance(score, float) and score == pytest.approx(plain[3], abs=1e-6)


def test_search_joined_to_the_mapped_class_with_a_filter(engine: Engine) -> None:
    hits = mgte_search(Doc, QUERY, k=5, rerank_top=10, filter={"lang": "es"})
    statement = (select(Doc, hits.c.rank, hits.c.body, hits.c.fused_score, hits.c.rerank_score)
                 .join(hits, key_matches(hits, Doc)).order_by(hits.c.rank))
    with Session(engine) as session:
        rows = session.execute(statement).all()
        plain = session.execute(text(
            "SELECT key, rank, fused_score, rerank_score FROM mgte_search('app.docs', :q, k => 5, rerank_top => 10, "
            "filter => '{\"lang\": \"es\"}')"), {"q": QUERY}).all()
        # The join reaches the rows through the primary key, from the key cast to its type.
        session.execute(text("SET LOCAL enable_seqscan = off"))
        unfiltered = mgte_search(Doc, QUERY, k=5)
        joined = select(Doc).join(unfiltered, key_matches(unfiltered, Doc))
        plan = "\n".join(session.scalars(text("EXPLAIN " + str(joined.compile(
            engine, compile_kwargs={"literal_binds": True})))).all())
    assert [row.rank for row in rows] == [1, 2, 3, 4, 5]
    assert all(row.Doc.lang == "es" and row.Doc.body == row.body for row in rows)
    assert [row.Doc.id for row in rows] == [key["id"] for key, *_ in plain]
    for row, (_, rank, fused, reranked) in zip(rows, plain, strict=True):
        assert row.rank == rank
        assert row.fused_score == pytest.approx(fused, abs=1e-5)
        assert row.rerank_score == pytest.approx(reranked, abs=1e-5)
    assert "docs_pkey" in plan


def test_order_by_max_inner_product_on_the_embeddings_table(engine: Engine) -> None:
    with Session(engine) as session:
        embeddings = embeddings_table(session, Doc)
        nearest = session.scalars(select(Doc).join(embeddings).order_by(
            embeddings.c.embedding.max_inner_product(mgte_embed(QUERY))).limit(5)).all()
        query = session.scalar(select(mgte_embed(QUERY)))
        stored = {id_: vector for id_, vector in session.execute(select(embeddings.c.id, embeddings.c.embedding))}
    vector_type, sparsevec_type = embeddings.c.embedding.type, embeddings.c.sparsevec.type
    assert isinstance(vector_type, VECTOR) and vector_type.dim == DIM
    assert isinstance(sparsevec_type, SPARSEVEC) and sparsevec_type.dim == VOCAB
    assert query is not None and len(stored) == 40
    # Nearest first by the inner product computed here; HNSW over 40 rows finds the exact five.
    best = sorted((dot(query, vector) for vector in stored.values()), reverse=True)[:5]
    assert [dot(query, stored[doc.id]) for doc in nearest] == pytest.approx(best, abs=1e-6)


def test_a_class_mapped_on_the_embeddings_table_is_a_relationship(engine: Engine) -> None:
    with Session(engine) as session:
        embeddings = embeddings_table(session, Doc)

    class Local(DeclarativeBase):
        pass

    class DocEmbedding(Local):
        __table__ = embeddings
        embedding: Mapped[list[float]]

    class DocWithEmbedding(Local):
        __table__ = Doc.__table__
        embedding: Mapped[DocEmbedding] = relationship(viewonly=True)

    with Session(engine) as session:
        doc = session.get_one(DocWithEmbedding, 7)
        assert doc.embedding.embedding == pytest.approx(session.scalar(select(mgte_embed(body(7)))), abs=1e-6)


def test_rerank_a_candidate_list(engine: Engine) -> None:
    with Session(engine) as session:
        candidates = session.scalars(select(Doc).where(Doc.lang == "en").order_by(Doc.id).limit(8)).all()
        scored = rerank(QUERY, [doc.body for doc in candidates])
        ranked = [(candidates[idx - 1], score) for idx, score in session.execute(select(scored.c.idx, scored.c.score))]
        probabilities = rerank(QUERY, [doc.body for doc in candidates], sigmoid=True)
        sigmoid = {idx: score for idx, score in session.execute(select(probabilities.c.idx, probabilities.c.score))}
        single = {doc.id: session.scalar(select(mgte_rerank(QUERY, doc.body))) for doc in candidates}
        in_sql = rerank(QUERY, select(func.array_agg(Doc.body)).where(Doc.lang == "en", Doc.id <= 15).scalar_subquery())
        from_sql = session.execute(select(in_sql.c.idx, in_sql.c.score)).all()
    assert sorted(doc.id for doc, _ in ranked) == [doc.id for doc in candidates]
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    for doc, score in ranked:
        assert score == pytest.approx(single[doc.id], abs=1e-5)
        assert sigmoid[candidates.index(doc) + 1] == pytest.approx(1 / (1 + math.exp(-score)), abs=1e-5)
    assert sorted(idx for idx, _ in from_sql) == list(range(1, 9))


def test_alembic_migration_enables_and_disables(engine: Engine) -> None:
    def upgrade() -> None:
        op.execute(enable("app.notes", "body", mode="sync"))

    def downgrade() -> None:
        op.execute(disable("app.notes"))

    def enabled(conn: Any) -> bool:
        return bool(conn.scalar(text("SELECT count(*) FROM mgte.enabled WHERE tbl = 'app.notes'::regclass")))

    with engine.begin() as conn:
        table(Note).create(conn)
        with Operations.context(MigrationContext.configure(conn)):
            upgrade()
        assert enabled(conn)
        conn.execute(table(Note).insert().values(id=1, body="a note"))
        embeddings = embeddings_table(conn, Note)
        assert conn.scalar(select(func.count()).select_from(embeddings)) == 1
        with Operations.context(MigrationContext.configure(conn)):
            downgrade()
        assert not enabled(conn)
        assert conn.scalar(text("SELECT to_regclass(:name)"), {"name": embeddings.fullname}) is None
        with pytest.raises(LookupError, match=r"app\.notes has no auto-embedding"):
            embeddings_table(conn, Note)
    # `alembic upgrade --sql` (with env.py's usual literal_binds) writes the statement out instead.
    script = io.StringIO()
    offline = MigrationContext.configure(dialect_name="postgresql", opts={
        "as_sql": True, "literal_binds": True, "output_buffer": script})
    with Operations.context(offline):
        upgrade()
    assert "SELECT mgte_enable(CAST('app.notes' AS REGCLASS), 'body', mode => 'sync')" in script.getvalue()


def test_enabling_again_keeps_the_embeddings(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(enable(Doc, "body", mode="sync", sync_timeout_ms=10000))
        assert conn.scalar(text("SELECT sync_timeout_ms FROM mgte.enabled WHERE tbl = 'app.docs'::regclass")) == 10000
        assert conn.scalar(select(func.count()).select_from(embeddings_table(conn, Doc))) == 40


def test_async_sessions_with_a_worker(cluster: Cluster, db: Database) -> None:
    """Async mode for real: rows inserted through an AsyncSession wait for the worker."""
    address = url(cluster, db, "postgres")

    async def insert() -> None:
        engine = create_async_engine(address)
        async with engine.begin() as conn:
            await conn.run_sync(table(Item).create)
            await conn.execute(enable(Item, "body"))
        async with AsyncSession(engine) as session:
            session.add_all(Item(name=f"item {i}", body=body(i)) for i in range(1, 21))
            await session.commit()
        await engine.dispose()

    async def search() -> tuple[list[tuple[Item, int]], list[Item], int]:
        engine = create_async_engine(address)
        async with AsyncSession(engine) as session:
            hits = mgte_search(Item, QUERY, k=3, rerank=False)
            found = (await session.execute(select(Item, hits.c.rank).join(hits, key_matches(hits, Item))
                                           .order_by(hits.c.rank))).all()
            embeddings = await session.run_sync(embeddings_table, Item)
            nearest = (await session.scalars(select(Item).join(embeddings).order_by(
                embeddings.c.embedding.max_inner_product(mgte_embed(QUERY))).limit(3))).all()
            stored = await session.scalar(select(func.count()).select_from(embeddings))
        await engine.dispose()
        return list(found), list(nearest), stored or 0

    asyncio.run(insert())
    assert db.status("app.items")["pending"] == 20
    db.start_worker()
    wait_until(lambda: done(db, "app.items"), "the worker embedded the items")
    found, nearest, stored = asyncio.run(search())
    assert stored == 20
    assert [rank for _, rank in found] == [1, 2, 3] and all(item.body.startswith("document") for item, _ in found)
    # Nearest first, as the dense scores of a search of all 20 (cosines of unit vectors) order them.
    dense_order = [key["name"] for key, in db.conn.execute(
        "SELECT key FROM mgte_search('app.items', %s, k => 20, rerank => false) ORDER BY dense_score DESC LIMIT 3",
        [QUERY]).fetchall()]
    assert [item.name for item in nearest] == dense_order


def test_psycopg_reads_vectors_as_arrays(cluster: Cluster, db: Database) -> None:
    with psycopg.connect(db.conninfo, user=ROLE) as conn:
        register_vector(conn)
        for binary in (False, True):
            row = conn.execute(
                "SELECT mgte_embed(%(q)s), mgte_sparsevec(%(q)s), mgte_embed(ARRAY[%(q)s, NULL, 'hola']), "
                "mgte_embed(%(q)s)::text, mgte_sparsevec(%(q)s)::text", {"q": QUERY}, binary=binary).fetchone()
            assert row is not None
            dense, sparse, many, dense_text, sparse_text = row
            assert isinstance(dense, Vector) and dense.to_list() == pytest.approx(json.loads(dense_text), abs=1e-6)
            array = dense.to_numpy()
            assert array.dtype == np.float32 and array.shape == (DIM,)
            assert float(np.linalg.norm(array)) == pytest.approx(1, abs=1e-5)
            assert isinstance(sparse, SparseVector) and sparse.dimensions() == VOCAB
            expected = SparseVector.from_text(sparse_text)
            assert sparse.indices() == expected.indices()
            assert sparse.values() == pytest.approx(expected.values(), abs=1e-6)
            assert sparse.indices() == sorted(sparse.indices()) and all(value > 0 for value in sparse.values())
            assert isinstance(many, list) and len(many) == 3 and many[1] is None
            assert many[0].to_list() == pytest.approx(dense.to_list(), abs=1e-5)  # another batch: float32 rounding
        # numpy arrays go in as vectors too
        score = conn.execute("SELECT %s <#> mgte_embed(%s)", [array, QUERY]).fetchone()
        assert score is not None and score[0] == pytest.approx(-1, abs=1e-5)
