"""Every SQL function against a real PostgreSQL and a real server: results, NULLs, errors."""

from __future__ import annotations

import math
import time
from array import array
from typing import Any

import psycopg
import pytest

from mgte.client import Client
from mgte.server_process import ServerProcess
from tests.conftest import REPO, TEST_DB, Checkpoints, running_server

Connection = psycopg.Connection[tuple[Any, ...]]


def vector(text: str) -> list[float]:
    """A pgvector literal as float32 values, the precision it stores."""
    return f32([float(x) for x in text.strip("[]").split(",")])


def f32(values: list[float]) -> list[float]:
    return array("f", values).tolist()


def one(db: Connection, sql: str, *params: Any) -> Any:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def sql_error(db: Connection, sql: str, *params: Any) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as raised:
        db.execute(sql, params)
    return raised.value


# --- results ----------------------------------------------------------------------

def test_embed_equals_the_client_exactly(db: Connection, client: Client) -> None:
    for text in ["¿Dónde está la estación?", "北京欢迎你", "", "مرحبا"]:
        assert vector(one(db, "SELECT mgte_embed(%s)::text", text)) == f32(client.embed([text])[0])
        assert vector(one(db, "SELECT mgte_embed(%s, 8)::text", text)) == f32(client.embed([text], dim=8)[0])


def test_embed_array_is_one_call_with_nulls_kept(db: Connection, client: Client) -> None:
    before = client.info()["requests"]["embed"]
    result = one(db, "SELECT mgte_embed(ARRAY['uno', NULL, 'tres', ''], 4)::text[]")
    assert client.info()["requests"]["embed"] == before + 1
    assert result[1] is None
    assert [vector(v) for v in (result[0], result[2], result[3])] == [
        f32(v) for v in client.embed(["uno", "tres", ""], dim=4)]
    assert one(db, "SELECT mgte_embed(ARRAY[]::text[])::text[]") == []
    assert one(db, "SELECT mgte_embed(ARRAY[NULL]::text[])::text[]") == [None]


def hidden_size(client: Client) -> int:
    """The served model's embedding size, as the server itself reports it."""
    return int(client.info()["model"]["hidden_size"])


def test_vector_dims(db: Connection, client: Client) -> None:
    assert one(db, "SELECT vector_dims(mgte_embed('x'))") == hidden_size(client)
    assert one(db, "SELECT vector_dims(mgte_embed('x', 1))") == 1
    assert one(db, "SELECT round(vector_norm(mgte_embed('x', 7))::numeric, 5)") == 1


def test_sparse_is_the_official_jsonb(db: Connection, client: Client) -> None:
    text = "hello hello world, ¿dónde está?"
    weights = one(db, "SELECT mgte_sparse(%s)", text)
    expected = client.sparse([text])[0]
    assert weights.keys() == expected.keys()
    for token, weight in expected.items():
        assert weights[token] == pytest.approx(weight, rel=1e-6)
    assert one(db, "SELECT mgte_sparse('')") == {}
    assert one(db, "SELECT jsonb_typeof(mgte_sparse('x'))") == "object"


def test_rerank_single_and_many(db: Connection, client: Client) -> None:
    documents = ["alpha", "beta", "gamma", "delta"]
    scores = client.rerank("greek letters", documents)
    assert one(db, "SELECT mgte_rerank('greek letters', 'beta')") == pytest.approx(scores[1], rel=1e-6)
    rows = db.execute("SELECT idx, score FROM mgte_rerank('greek letters', %s::text[])", [documents]).fetchall()
    order = sorted(range(4), key=lambda i: -scores[i])
    assert [idx for idx, _ in rows] == [i + 1 for i in order]
    assert [score for _, score in rows] == pytest.approx([scores[i] for i in order], rel=1e-6)
    sig = one(db, "SELECT mgte_rerank('greek letters', 'beta', sigmoid => true)")
    assert sig == pytest.approx(1 / (1 + math.exp(-scores[1])), rel=1e-6)  # the logistic of the raw score


def test_rerank_many_puts_null_documents_last(db: Connection) -> None:
    rows = db.execute("SELECT idx, score FROM mgte_rerank('q', ARRAY['a', NULL, 'b'])").fetchall()
    assert rows[-1] == (2, None)
    assert sorted(idx for idx, _ in rows[:2]) == [1, 3]
    assert db.execute("SELECT * FROM mgte_rerank('q', ARRAY[]::text[])").fetchall() == []


def test_null_in_null_out(db: Connection) -> None:
    assert one(db, "SELECT mgte_embed(NULL::text)") is None
    assert one(db, "SELECT mgte_embed(NULL::text[])") is None
    assert one(db, "SELECT mgte_embed(NULL::text, 8)") is None
    assert one(db, "SELECT mgte_sparse(NULL)") is None
    assert one(db, "SELECT mgte_rerank(NULL, 'd')") is None
    assert one(db, "SELECT mgte_rerank('q', NULL::text)") is None
    assert db.execute("SELECT * FROM mgte_rerank(NULL, ARRAY['d'])").fetchall() == []


def test_info(db: Connection, client: Client, server: ServerProcess) -> None:
    info = one(db, "SELECT mgte_info()")
    # The server's part is the server's own answer, and comes from the server the tests started.
    own = client.info()
    for field in ("server_version", "protocol_version", "pid", "socket", "model", "reranker", "limits"):
        assert info[field] == own[field], field
    assert info["pid"] == server.process.pid
    assert info["model"]["kind"] == "embedding" and info["reranker"]["kind"] == "reranker"
    # The extension's part: the version of the installed extension, and the socket it called.
    assert info["extension_version"] == one(db, "SELECT extversion FROM pg_extension WHERE extname = 'mgte'")
    assert info["socket_path"] == own["socket"]
    assert info["timeout_ms"] == 60000  # the documented default, mgte.timeout_ms being unset


def test_truncation_raises_a_notice(db: Connection) -> None:
    notices: list[str] = []
    db.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    one(db, "SELECT mgte_embed(repeat('a ', 9000))")
    assert any("9002 tokens" in n for n in notices)
    notices.clear()
    one(db, "SELECT mgte_embed(ARRAY['short', repeat('a ', 9000)])")
    assert any("array positions 2" in n for n in notices)
    notices.clear()
    db.execute("SELECT * FROM mgte_rerank('q', ARRAY['short', repeat('b ', 9000)])").fetchall()
    assert any("array positions 2" in n for n in notices)


# --- errors ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["zero", "negative", "more than the model has"])
def test_bad_dim(db: Connection, client: Client, bad: str) -> None:
    size = hidden_size(client)
    dim = {"zero": 0, "negative": -3, "more than the model has": size + 1}[bad]
    error = sql_error(db, "SELECT mgte_embed('x', %s)", dim)
    assert error.sqlstate == "22023"
    assert f"dim must be an integer from 1 to {size}, not {dim}" in str(error.diag.message_primary)
    assert "NULL" in str(error.diag.message_hint)


def test_multidimensional_array(db: Connection) -> None:
    error = sql_error(db, "SELECT mgte_embed(ARRAY[['a','b'],['c','d']])")
    assert error.sqlstate == "2202E"
    assert "one-dimensional" in str(error.diag.message_primary)


def test_server_unreachable(db: Connection) -> None:
    db.execute("SET mgte.socket_path = '/nonexistent/mgte.sock'")
    error = sql_error(db, "SELECT mgte_embed('x')")
    assert error.sqlstate == "08006"
    assert "mgte server not reachable at /nonexistent/mgte.sock" in str(error.diag.message_primary)
    assert "mgte serve --socket /nonexistent/mgte.sock" in str(error.diag.message_hint)


def test_timeout(db: Connection) -> None:
    db.execute("SET mgte.timeout_ms = 50")
    error = sql_error(db, "SELECT mgte_embed(array_fill(repeat('a ', 8000), ARRAY[16]))")
    assert error.sqlstate == "57014"
    assert "did not answer within 0.05 s" in str(error.diag.message_primary)
    db.execute("RESET mgte.timeout_ms")
    assert one(db, "SELECT vector_dims(mgte_embed('after the timeout'))") == 32


def test_statement_timeout_and_cancel_interrupt_a_waiting_call(db: Connection) -> None:
    db.execute("SET statement_timeout = '300ms'")
    started = time.monotonic()
    error = sql_error(db, "SELECT mgte_embed(array_fill(repeat('a ', 8000), ARRAY[32]))")
    assert error.sqlstate == "57014"
    assert "statement timeout" in str(error.diag.message_primary)
    assert time.monotonic() - started < 3
    db.execute("RESET statement_timeout")
    assert one(db, "SELECT vector_dims(mgte_embed('after the cancel'))") == 32


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_bad_timeout_setting(db: Connection, value: str) -> None:
    db.execute("SELECT set_config('mgte.timeout_ms', %s, false)", [value])
    error = sql_error(db, "SELECT mgte_embed('x')")
    assert error.sqlstate == "22023"
    assert "mgte.timeout_ms" in str(error.diag.message_primary)


def test_no_reranker(db: Connection, checkpoints: Checkpoints) -> None:
    with running_server(checkpoints.embedding_native) as plain:
        db.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(plain.socket)])
        error = sql_error(db, "SELECT mgte_rerank('q', 'd')")
        assert error.sqlstate == "0A000"
        assert "no reranker loaded" in str(error.diag.message_primary)
        assert "--reranker" in str(error.diag.message_hint)


def test_overloaded_and_too_large_have_their_sqlstates(db: Connection, checkpoints: Checkpoints) -> None:
    with running_server(checkpoints.embedding_native, "--max-request-bytes", "2048") as small:
        db.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(small.socket)])
        error = sql_error(db, "SELECT mgte_embed(repeat('x', 5000))")
        assert error.sqlstate == "54000"
        assert "--max-request-bytes" in str(error.diag.message_hint)


# --- catalog discipline --------------------------------------------------------

def test_every_function_pins_its_search_path_and_the_public_ones_are_stable_and_commented(db: Connection) -> None:
    rows = db.execute("""
        SELECT p.oid::regprocedure::text, n.nspname, p.provolatile, p.proconfig, obj_description(p.oid, 'pg_proc')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'mgte'
    """).fetchall()
    public = {name: (volatility, comment) for name, schema, volatility, _, comment in rows if schema != "mgte"}
    assert public.keys() == {
        "mgte_embed(text,integer)", "mgte_embed(text[],integer)", "mgte_sparse(text)",
        "mgte_rerank(text,text,boolean)", "mgte_rerank(text,text[],boolean)", "mgte_info()",
        "mgte_enable(regclass,name,integer,boolean,text,text,integer,boolean)", "mgte_disable(regclass,boolean)",
        "mgte_retry_failed(regclass)", "mgte_resync(regclass)", "mgte_status(regclass)",
        "mgte_grant_search(regclass,name)", "mgte_reembed(regclass,text)", "mgte_sparsevec(text)",
        "mgte_create_indexes(regclass)",
        "mgte_sparse_score(jsonb,jsonb)", "mgte_sparse_score(sparsevec,sparsevec)",
        "mgte_search(regclass,text,integer,integer,text,double precision,integer,boolean,integer,jsonb)",
        "mgte_search_vectors(regclass,vector,jsonb,sparsevec,integer,integer,text,double precision,integer,jsonb)",
        "mgte_search_explain(regclass,text,integer,integer,text,double precision,integer,boolean,integer,jsonb)",
    }
    readme = (REPO / "README.md").read_text()
    for name, (volatility, comment) in public.items():
        assert comment, name
        assert name.split("(")[0] + "(" in readme, f"{name} is not in the README"  # documented for users
        if name.startswith(("mgte_embed", "mgte_sparse(", "mgte_sparsevec", "mgte_rerank")):
            assert volatility == "s", name  # STABLE: usable in index scans, never IMMUTABLE
    for name, _, _, config, _ in rows:
        assert config == ["search_path=pg_catalog, pg_temp"], name


def test_extension_brings_its_dependencies(cluster: Any) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS mgte_fresh")
        conn.execute("CREATE DATABASE mgte_fresh")
    try:
        with psycopg.connect(cluster.conninfo("mgte_fresh"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION mgte CASCADE")
            installed = {name: version for name, version in conn.execute(
                "SELECT extname, extversion FROM pg_extension").fetchall()}
            assert {"mgte", "vector", "plpython3u"} <= installed.keys()
            from mgte import __version__
            assert installed["mgte"] == __version__
            conn.execute("DROP EXTENSION mgte")
            assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'mgte%'").fetchone() == (0,)
    finally:
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            conn.execute("DROP DATABASE mgte_fresh")


def test_database_setting_reaches_new_sessions(cluster: Any, server: ServerProcess) -> None:
    with psycopg.connect(cluster.conninfo(TEST_DB), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {TEST_DB} SET mgte.socket_path = '{server.socket}'")
    try:
        with psycopg.connect(cluster.conninfo(TEST_DB), autocommit=True) as conn:
            info = one(conn, "SELECT mgte_info()")
            assert info["socket_path"] == str(server.socket)
            assert info["pid"] == server.process.pid  # answered by the server listening there
    finally:
        with psycopg.connect(cluster.conninfo(TEST_DB), autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {TEST_DB} RESET mgte.socket_path")


def test_one_server_call_per_statement_for_the_same_query(db: Connection, client: Client) -> None:
    db.execute("CREATE TEMP TABLE items AS SELECT g AS id, mgte_embed('item ' || g) AS embedding "
               "FROM generate_series(1, 30) g")
    before = client.info()["requests"]["embed"]
    rows = db.execute("SELECT id FROM items ORDER BY embedding <#> mgte_embed('item 7') LIMIT 10").fetchall()
    assert len(rows) == 10
    db.execute("SELECT mgte_sparse('q'), mgte_sparse('q'), mgte_sparse('other')").fetchone()
    assert client.info()["requests"]["embed"] - before == 3  # 'item 7' once, 'q' once, 'other' once
