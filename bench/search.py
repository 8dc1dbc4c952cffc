"""Search latency, and what pruning sparse weights to 1000 per row costs in recall.

    .venv/bin/python -m bench.search latency --rows 10000      # then --rows 100000
    .venv/bin/python -m bench.search pruning

latency: a table of --rows rows enabled and embedded with the tiny model and reranker, then
  --queries searches each way, p50/p95 in ms: a plain pgvector query on the dense column
  (ORDER BY embedding <#> mgte_embed(q) LIMIT 10, the baseline), mgte_search without
  rerank, and mgte_search with rerank (top 20).
pruning: --docs long documents with more than 1000 distinct tokens each; for --queries
  queries, the top 10 by the exact jsonb lexical score against the top 10 by the pruned
  sparsevec (exhaustive, and through the HNSW index, as the sparse leg runs), and against
  the 50 candidates the sparse leg proposes (mgte_search rescores those exactly).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from psycopg.types.json import Jsonb

from bench.common import WORDS, BenchDatabase, bench_database
from mgte import tiny


def embed_table(s: BenchDatabase, texts: list[str], workers: int = 2) -> float:
    s.db.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text NOT NULL)")
    s.db.execute("SELECT mgte_enable('docs', 'body')")
    started = time.perf_counter()
    with s.db.cursor() as cursor, cursor.copy("COPY docs (id, body) FROM STDIN") as copy:
        for i, text in enumerate(texts):
            copy.write_row((i, text))
    procs = [subprocess.Popen([sys.executable, "-m", "mgte", "worker", "--dsn", s.conninfo, "--socket",
                               str(s.server.socket), "--batch-size", "64", "--log-level", "warning"])
             for _ in range(workers)]
    try:
        while True:
            row = s.db.execute("SELECT pending + in_progress FROM mgte_status('docs')").fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    s.db.execute("VACUUM ANALYZE docs")
    s.db.execute("VACUUM ANALYZE mgte.docs_embeddings")
    return time.perf_counter() - started


def timings(call: Callable[[str], object], queries: list[str]) -> str:
    for query in queries[:5]:
        call(query)
    samples = []
    for query in queries:
        started = time.perf_counter()
        call(query)
        samples.append((time.perf_counter() - started) * 1000)
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49]:7.2f} ms   p95 {q[94]:7.2f} ms"


def latency(rows: int, queries: int) -> None:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))) for _ in range(rows)]
    asks = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(queries)]
    with bench_database(tiny.NAME, reranker=tiny.NAME) as s:
        seconds = embed_table(s, texts)
        print(f"{rows} rows embedded and indexed in {seconds:.0f} s (2 workers, tiny model)")
        db = s.db

        def plain(q: str) -> object:
            return db.execute("SELECT id FROM mgte.docs_embeddings ORDER BY embedding <#> mgte_embed(%s) LIMIT 10",
                              [q]).fetchall()

        def hybrid(q: str) -> object:
            return db.execute("SELECT * FROM mgte_search('docs', %s, k => 10, rerank => false)", [q]).fetchall()

        def reranked(q: str) -> object:
            return db.execute("SELECT * FROM mgte_search('docs', %s, k => 10, rerank_top => 20)", [q]).fetchall()

        print(f"  pgvector dense query (baseline)    {timings(plain, asks)}")
        print(f"  mgte_search, no rerank            {timings(hybrid, asks)}")
        print(f"  mgte_search, rerank top 20        {timings(reranked, asks)}")


def pruning(docs: int, queries: int) -> None:
    rng = random.Random(1)
    with bench_database(tiny.NAME, reranker=tiny.NAME) as s:
        # Long documents of many distinct pieces of the real XLM-R vocabulary.
        import transformers
        tokenizer = transformers.AutoTokenizer.from_pretrained(tiny.ensure("embedding"))
        pieces = [p for p in tokenizer.convert_ids_to_tokens(list(range(1000, 60000))) if p.startswith("▁")]
        texts = [" ".join(p.lstrip("▁") for p in rng.sample(pieces, 2500)) for _ in range(docs)]
        asks = [" ".join(rng.choice(text.split()) for _ in range(8)) for text in rng.sample(texts, queries)]
        embed_table(s, texts)
        db = s.db
        nnz = db.execute("SELECT min(n), round(avg(n)) FROM (SELECT count(*) AS n FROM mgte.docs_embeddings, "
                         "jsonb_object_keys(sparse) GROUP BY id) c").fetchone()
        print(f"{docs} documents, distinct tokens with weight per document: min {nnz[0] if nnz else 0}, "
              f"mean {nnz[1] if nnz else 0}; sparsevec keeps 1000")
        exact_vs_pruned, exact_vs_index, in_candidates = [], [], []
        for ask in asks:
            row = db.execute("SELECT mgte_sparse(%s), mgte_sparsevec(%s)", [ask, ask]).fetchone()
            assert row is not None
            q_sparse, q_vec = row
            exact = {row[0] for row in db.execute(
                "SELECT id FROM mgte.docs_embeddings ORDER BY mgte_sparse_score(%s::jsonb, sparse) DESC, id LIMIT 10",
                [Jsonb(q_sparse)]).fetchall()}
            with db.transaction():
                db.execute("SET LOCAL enable_indexscan = off")
                pruned = {row[0] for row in db.execute(
                    "SELECT id FROM mgte.docs_embeddings ORDER BY sparsevec <#> %s, id LIMIT 10",
                    [q_vec]).fetchall()}
            indexed = [row[0] for row in db.execute(
                "SELECT id FROM mgte.docs_embeddings ORDER BY sparsevec <#> %s LIMIT 50",
                [q_vec]).fetchall()]
            exact_vs_pruned.append(len(exact & pruned) / 10)
            exact_vs_index.append(len(exact & set(indexed[:10])) / 10)
            in_candidates.append(len(exact & set(indexed)) / 10)
        print(f"  recall@10 of the pruned sparsevec (exhaustive) against the exact jsonb score: "
              f"{statistics.mean(exact_vs_pruned):.3f}")
        print(f"  recall@10 of the sparse leg as it runs (HNSW on the pruned sparsevec):        "
              f"{statistics.mean(exact_vs_index):.3f}")
        print(f"  share of the exact top 10 among the leg's 50 candidates, which mgte_search then "
              f"scores exactly: {statistics.mean(in_candidates):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["latency", "pruning"])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    if args.what == "latency":
        latency(args.rows, args.queries)
    else:
        pruning(args.docs, args.queries)


if __name__ == "__main__":
    main()
