"""The README's psycopg and SQLAlchemy examples, run in order against a real database and server."""

from __future__ import annotations

import re
from typing import Any

from alembic.migration import MigrationContext
from alembic.operations import Operations
from pgvector import SparseVector, Vector
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import REPO
from tests.databases import database


def examples() -> list[str]:
    """The python blocks of "## Python" from "### psycopg" on (the client's before it names the
    default socket, which this test's server does not use)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section.split("\n### psycopg\n", 1)[1], re.DOTALL)


def test_the_python_examples_run(cluster: Cluster, server: ServerProcess) -> None:
    with database(cluster, server.socket) as db:
        url = URL.create("postgresql+psycopg", username=cluster.user, host=str(cluster.socket_dir),
                         port=cluster.port, database=db.name)
        namespace: dict[str, Any] = {"dsn": db.conninfo, "url": url}
        blocks = examples()
        assert len(blocks) >= 6
        for number, block in enumerate(blocks, 1):
            # dont_inherit: the examples run as pasted, without this file's `from __future__ import annotations`
            exec(compile(block, f"README.md, ## Python, python block {number}", "exec", dont_inherit=True), namespace)

        assert isinstance(namespace["vector"], list) and len(namespace["vector"]) == 32  # the tiny model's
        assert isinstance(namespace["weights"], SparseVector)
        assert [type(v) for v in namespace["vectors"]] == [Vector, Vector]
        assert {doc.lang for doc, _, _ in namespace["found"]} == {"es"} and len(namespace["found"]) == 2
        assert sorted(doc.id for doc in namespace["nearest"]) == [1, 2, 3]
        scores = [score for _, score in namespace["ranked"]]
        assert sorted(body for body, _ in namespace["ranked"]) == sorted(namespace["candidates"])
        assert scores == sorted(scores, reverse=True)
        assert sorted(doc.id for doc in namespace["docs"]) == [1, 2, 3]
        namespace["engine"].dispose()

        engine = create_engine(url)
        with engine.begin() as conn:
            def enabled() -> bool:
                return bool(conn.scalar(text("SELECT count(*) FROM mgte.enabled WHERE tbl = 'docs'::regclass")))

            with Operations.context(MigrationContext.configure(conn)):
                namespace["upgrade"]()
                assert enabled()
                namespace["downgrade"]()
                assert not enabled()
        engine.dispose()
