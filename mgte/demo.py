"""`mgte demo`: multilingual hybrid search, start to finish, in a private PostgreSQL cluster.

Everything happens through SQL: mgte_enable (in sync mode) stores each document's dense
vector and sparse weights as it is inserted, and each query is one mgte_search call that
runs both legs, fuses them (dense + 0.3 * sparse, as in the mGTE paper) and reranks the
best candidates with the cross-encoder.
"""

from __future__ import annotations

import os
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from mgte import tiny
from mgte.checkpoint import locate
from mgte.demo_corpus import DOCUMENTS, QUERIES
from mgte.errors import UserError
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess

DATABASE = "mgte_demo"
SHOWN = 3

# The hybrid search itself is mgte_search: both legs, fusion, and the reranker.
SEARCH = """
SELECT d.lang, d.title, s.dense_score, s.sparse_score, s.fused_score, s.rerank_score
FROM mgte_search('docs', %(query)s, k => %(shown)s) AS s
JOIN docs AS d ON d.id = (s.key ->> 'id')::integer
ORDER BY s.rank
"""


def run_demo(model: str, reranker: str, datadir: Path | None, keep: bool) -> int:
    model, reranker, meaningless = _choose_models(model, reranker)
    root = datadir or Path(tempfile.gettempdir()) / f"mgte-demo-{os.getuid()}"
    cluster = Cluster(root)
    print(f"PostgreSQL: a private cluster in {root}")
    cluster.init()
    cluster.start()
    server: ServerProcess | None = None
    try:
        print(f"mgte server: loading {model} and {reranker} (the first start may take a while)")
        server = ServerProcess.start(model, root / "mgte.sock", root / "mgte-server.log", reranker=reranker)
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone() is None:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        with psycopg.connect(cluster.conninfo(DATABASE), autocommit=True) as db:
            _load_documents(db, server.socket)
            for query in QUERIES:
                rows = db.execute(SEARCH, {"query": query.text, "shown": SHOWN}).fetchall()
                print(f"\n[{query.lang}] {query.text}")
                _print_table(["lang", "title", "dense", "sparse", "fused", "rerank"], rows)
        if meaningless:
            print("\nThese results came from random weights (--model tiny) and mean nothing; "
                  "run with real mGTE weights to see real retrieval.")
        if keep:
            print(f"\nStill running. Connect:  psql \"{cluster.conninfo(DATABASE)}\"\n"
                  f"Stop:     kill {server.process.pid}; {cluster.bindir / 'pg_ctl'} -D {cluster.data} stop")
    finally:
        if not keep:
            if server is not None:
                server.stop()
            cluster.stop()
    return 0


def _choose_models(model: str, reranker: str) -> tuple[str, str, bool]:
    """The requested models, or the tiny ones, said in one line, when their weights cannot be had."""
    if model != tiny.NAME:
        try:
            locate(model, "embedding")
            locate(reranker, "reranker")
        except UserError as exc:
            print(f"mgte demo: the real models are not available here ({exc}); running with --model tiny, "
                  "random weights: the rankings below are meaningless")
            return tiny.NAME, tiny.NAME, True
    return model, reranker, model == tiny.NAME


def _load_documents(db: psycopg.Connection[Any], socket: Path) -> None:
    try:
        db.execute("CREATE EXTENSION IF NOT EXISTS mgte CASCADE")
        db.execute("ALTER EXTENSION mgte UPDATE")  # a cluster kept from an older release
    except psycopg.errors.UndefinedFile:
        raise UserError("the mgte extension is not installed in this PostgreSQL",
                        hint="run scripts/setup.sh (it runs make -C extension install)") from None
    db.execute(sql.SQL("ALTER DATABASE {} SET mgte.socket_path = {}").format(
        sql.Identifier(DATABASE), sql.Literal(str(socket))))
    db.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(socket)])
    db.execute("DROP TABLE IF EXISTS docs")
    db.execute("CREATE TABLE docs (id serial PRIMARY KEY, lang text NOT NULL, title text NOT NULL, "
               "body text NOT NULL)")
    # Sync mode: the INSERT stores the dense vectors and sparse weights before it returns, all
    # of its rows in one server call.
    db.execute("SELECT mgte_enable('docs', 'body', mode => 'sync', on_failure => 'error', "
               "sync_timeout_ms => 600000)")
    started = time.perf_counter()
    db.execute("INSERT INTO docs (lang, title, body) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])",
               [[d.lang for d in DOCUMENTS], [d.title for d in DOCUMENTS], [d.body for d in DOCUMENTS]])
    languages = len({d.lang for d in DOCUMENTS})
    print(f"stored {len(DOCUMENTS)} documents in {languages} languages with their dense vectors and sparse "
          f"weights ({time.perf_counter() - started:.1f} s)")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(header)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  " + "  ".join(value + " " * (widths[i] - _width(value)) for i, value in enumerate(row)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _width(text: str) -> int:
    """Terminal columns: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
