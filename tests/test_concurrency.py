"""Many PostgreSQL sessions share one server, and the server batches them together."""

from __future__ import annotations

from array import array
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from mgte.client import Client
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import TEST_DB

SESSIONS = 8
CALLS = 25


def test_eight_sessions_get_their_own_answers_in_shared_batches(cluster: Cluster, server: ServerProcess,
                                                              client: Client) -> None:
    texts = {(s, i): f"session {s} asks question number {i} " + "lorem ipsum " * (i % 7)
             for s in range(SESSIONS) for i in range(CALLS)}
    vectors = client.embed(list(texts.values()))
    expected = {key: array("f", vector).tolist() for key, vector in zip(texts, vectors, strict=True)}
    before = client.info()["batching"]

    def session(s: int) -> dict[tuple[int, int], list[float]]:
        got = {}
        with psycopg.connect(cluster.conninfo(TEST_DB), autocommit=True) as conn:
            conn.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(server.socket)])
            for i in range(CALLS):
                row = conn.execute("SELECT mgte_embed(%s)::text", [texts[(s, i)]]).fetchone()
                assert row is not None
                got[(s, i)] = array("f", [float(x) for x in row[0].strip("[]").split(",")]).tolist()
        return got

    with ThreadPoolExecutor(SESSIONS) as pool:
        results = {k: v for part in pool.map(session, range(SESSIONS)) for k, v in part.items()}

    assert results.keys() == expected.keys()
    for key, vector in results.items():
        # Batch neighbours change the float rounding, nothing more.
        assert vector == pytest.approx(expected[key], abs=1e-5), key
    after = client.info()["batching"]
    assert after["sequences"] - before["sequences"] == SESSIONS * CALLS
    # Requests from different sessions were run in one forward pass.
    assert after["multi_request_batches"] > before["multi_request_batches"]
    assert after["largest_batch"] > 1
