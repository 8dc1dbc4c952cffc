"""Monitoring: the Prometheus endpoints of `mgte serve` and `mgte worker`, scraped over HTTP, and
the mgte_stat view."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mgte.client import InputRejected, Overloaded
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import Checkpoints, running_server, shared_tempdir, small_vocab_checkpoint, start_server
from tests.databases import database, done, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape_when_up(port: int) -> Samples:
    """The first scrape that answers: a worker serves its metrics once it has started."""
    samples: Samples = {}

    def answered() -> bool:
        nonlocal samples
        try:
            samples = scrape(port)
        except urllib.error.URLError:
            return False
        return True
    wait_until(answered, f"metrics at port {port}", timeout=60)
    return samples


def sample(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def value(samples: Samples, name: str, **labels: str) -> float:
    assert sample(name, **labels) in samples, f"{name}{labels} not among {sorted({n for n, _ in samples})}"
    return samples[sample(name, **labels)]


# --- the server ---------------------------------------------------------------------

def test_server_metrics_count_requests_batches_and_refusals(checkpoints: Checkpoints) -> None:
    port = free_port()
    with running_server(checkpoints.embedding_native, "--metrics-address", f"127.0.0.1:{port}",
                        "--max-connections", "1", reranker=checkpoints.reranker_native) as server:
        wait_until(lambda: value(scrape(port), "mgte_connections") == 0, "the readiness check to hang up")
        before = scrape(port)
        with server.client() as client:
            client.embed(["one text"])
            client.embed(["two", "texts here"])
            client.score("a query", ["a document", "another document", "a third"])
            with pytest.raises(InputRejected):
                client.embed(["too many dimensions"], dim=100_000)
            with server.client() as second, pytest.raises(Overloaded):
                second.embed(["a second connection, one too many"])
            after = scrape(port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - before.get(sample(name, **labels), 0.0)

    assert grew("mgte_requests_total", op="embed", outcome="ok") == 2
    assert grew("mgte_requests_total", op="embed", outcome="bad_request") == 1
    assert grew("mgte_requests_total", op="rerank", outcome="ok") == 1
    assert grew("mgte_request_duration_seconds_count", op="embed") == 3
    assert grew("mgte_request_duration_seconds_count", op="rerank") == 1
    assert grew("mgte_request_duration_seconds_sum", op="embed") > 0
    assert value(after, "mgte_request_duration_seconds_bucket", op="embed", le="+Inf") == \
        value(after, "mgte_request_duration_seconds_count", op="embed")
    assert grew("mgte_refusals_total", limit="connections") == 1
    assert value(after, "mgte_refusals_total", limit="queue") == 0
    assert grew("mgte_sequences_total") == 6  # three texts, three query-document pairs
    assert grew("mgte_batches_total") >= 2  # one model at a time
    assert 0 < grew("mgte_tokens_total") <= grew("mgte_padded_tokens_total")
    assert value(after, "mgte_tokens_total") <= value(after, "mgte_padded_tokens_total")
    assert grew("mgte_model_busy_seconds_total") > 0
    assert value(after, "mgte_queued_texts") == 0
    assert value(after, "mgte_max_queue_texts") == 16384
    info = [labels for (name, labels) in after if name == "mgte_server_info"]
    assert len(info) == 1 and dict(info[0])["model"] == str(checkpoints.embedding_native)
    assert dict(info[0])["reranker"] == str(checkpoints.reranker_native)
    assert value(after, "process_resident_memory_bytes") > 0  # the process's own metrics too
    assert not any(name.startswith("mgte_device_memory") for name, _ in after)  # on CPU


def test_metrics_are_refused_on_an_address_other_than_loopback(checkpoints: Checkpoints) -> None:
    result = subprocess.run([sys.executable, "-m", "mgte", "serve", "--model", str(checkpoints.embedding_native),
                             "--socket", str(shared_tempdir("mgte-remote-") / "mgte.sock"),
                             "--metrics-address", "0.0.0.0:9464"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr and "--metrics-allow-remote" in result.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_metrics_without_prometheus_client_say_what_to_install(command: str, tmp_path: Path) -> None:
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('No module named prometheus_client')\n")
    result = subprocess.run([sys.executable, "-m", "mgte", command, "--socket", str(tmp_path / "mgte.sock"),
                             "--metrics-address", f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    assert "needs the prometheus-client package" in result.stderr
    assert "pip install 'mgte[metrics]'" in result.stderr


# --- the worker ---------------------------------------------------------------------

def test_worker_metrics_count_rows_and_show_the_queue(cluster: Cluster, checkpoints: Checkpoints,
                                                      tmp_path: Path) -> None:
    broken = small_vocab_checkpoint(checkpoints.embedding_native, tmp_path / "small-vocab", vocab_size=1000)
    server = start_server(broken, "--device", "cpu", socket_dir=shared_tempdir("mgte-metrics-"))
    try:
        with database(cluster, server.socket) as db:
            db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
            db.conn.execute("SELECT mgte_enable('docs', 'body')")
            # Row 7 holds tokens past the model's embedding table: it fails, the rest is stored.
            db.conn.execute("INSERT INTO docs SELECT g, CASE WHEN g = 7 THEN '北京欢迎你' ELSE 'a b c' END "
                            "FROM generate_series(1, 12) g")
            port = free_port()
            db.start_worker("--metrics-address", f"127.0.0.1:{port}", "--max-attempts", "1")
            scrape_when_up(port)

            def settled() -> bool:
                samples = scrape(port)
                return (samples.get(sample("mgte_worker_rows_total", table="docs", outcome="stored")) == 11
                        and samples.get(sample("mgte_worker_rows_total", table="docs", outcome="failed")) == 1)
            wait_until(settled, "the rows to be settled")
            assert done(db) and db.status("docs")["failed"] == 1
            samples = scrape(port)
            assert value(samples, "mgte_worker_rows_total", table="docs", outcome="requeued") == 0
            assert value(samples, "mgte_worker_batches_total", table="docs") == 1  # split, but settled as one
            assert value(samples, "mgte_worker_failed_rows", table="docs") == 1
            assert value(samples, "mgte_worker_pending_rows", table="docs") == 0
            assert value(samples, "mgte_worker_oldest_pending_seconds", table="docs") == 0

            server.stop()  # what arrives now waits, and the gauges show it
            db.conn.execute("INSERT INTO docs VALUES (13, 'a b'), (14, 'c')")
            wait_until(lambda: value(scrape(port), "mgte_worker_oldest_pending_seconds", table="docs") > 0,
                       "the pending rows' age to show")
            assert value(scrape(port), "mgte_worker_pending_rows", table="docs") == 2
    finally:
        server.stop()


# --- mgte_stat ----------------------------------------------------------------------

def stat(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    """mgte_stat by function, after this session's statistics reach the shared ones (when its
    statement ends, forced: PostgreSQL otherwise sends them at most once a second)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    return {str(row[0]): row[1:] for row in conn.execute("SELECT * FROM mgte_stat").fetchall()}


@pytest.fixture
def tracked(cluster: Cluster, server: ServerProcess) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A session of a fresh database that tracks PL function calls."""
    with database(cluster, server.socket) as db:
        db.conn.execute("SET track_functions = 'pl'")
        yield db.conn


def test_mgte_stat_counts_calls_errors_and_time(tracked: psycopg.Connection[tuple[object, ...]],
                                                cluster: Cluster) -> None:
    assert stat(tracked)["mgte_embed"] == (0, 0, 0.0, 0.0, "pl")
    tracked.execute("SELECT mgte_embed('text ' || g) FROM generate_series(1, 3) g")
    tracked.execute("SELECT mgte_embed(ARRAY['one', 'two'])")
    tracked.execute("SELECT mgte_rerank('a query', 'a document')")
    socket_path = tracked.execute("SHOW mgte.socket_path").fetchone()
    tracked.execute("SET mgte.socket_path = '/nonexistent/mgte.sock'")
    with pytest.raises(psycopg.errors.ConnectionFailure):
        tracked.execute("SELECT mgte_embed('the server is not there')")
    tracked.execute("SELECT set_config('mgte.socket_path', %s, false)", socket_path)

    rows = stat(tracked)
    calls, errors, total_time, self_time, tracking = rows["mgte_embed"]
    assert (calls, errors, tracking) == (4, 1, "pl")
    assert isinstance(total_time, float) and isinstance(self_time, float)
    assert 0 < self_time <= total_time
    assert rows["mgte_rerank"][:2] == (1, 0)
    assert rows["mgte_sparse"][:2] == (0, 0)
    assert rows["mgte_search"][1] is None  # its failures are those of the functions it calls

    # A session that does not track function calls adds nothing, and says why.
    dbname = tracked.info.dbname
    with psycopg.connect(cluster.conninfo(dbname), autocommit=True) as untracked:
        untracked.execute("SELECT mgte_embed('not counted')")
        rows = stat(untracked)
        assert rows["mgte_embed"][0] == 4
        assert {row[-1] for row in rows.values()} == {"none"}
