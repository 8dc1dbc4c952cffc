"""The serving benchmark for a GPU: every figure next to its baselines, measured in one run.

    .venv/bin/python -m bench.gpu [--json bench-gpu.json]     # on a GPU machine, under 8 minutes
    .venv/bin/python -m bench.gpu --small                     # the same code on a CPU, shrunk

With random-weight checkpoints of the full-size architecture (speed does not depend on the
weights), it measures:
  passages   `mgte serve` with 16 concurrent clients, against plain transformers in
             length-sorted batches of 32 (what sentence-transformers does) and the matmul
             limit measured on the same device: tokens/s
  query      one short query at a time, p50/p99 end to end, through the client and through SQL
             (where PostgreSQL is installed; left out, with the reason, where it is not)
  queries    64 concurrent clients sending one query each: queries/s
  rerank     pairs/s through the server, against plain transformers in sorted batches of 64
  long       one 8,192-token text through the server: latency, and the device's peak memory
  forward    the model alone on one 16-token query and on 32 queries of 32 tokens: replayed as
             CUDA graphs against run eagerly (the same where graphs are off, as on a CPU)
and writes them, with the machine, to a JSON file. --small shrinks every workload so that a
CPU finishes in a few minutes; its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import torch
import transformers

from bench.common import (
    bench_database,
    full_size_checkpoint,
    matmul_flops_per_second,
    model_flops,
    passages,
    settled_dtype,
    transformers_baseline,
)
from mgte.checkpoint import load_checkpoint
from mgte.errors import UserError
from mgte.pgcluster import find_pg_config
from mgte.runtime import Embedder, resolve_device
from mgte.server_process import ServerProcess
from mgte_udf.client import Client

QUERY = "what is the price of coffee near the central station?"


def concurrently(socket: str, clients: int, work: Sequence[Callable[[Client], object]]) -> float:
    """Seconds for `clients` threads, each with its own connection, to do `work` (shared)."""
    queue = list(work)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client_loop() -> None:
        with Client(socket, timeout=None) as client:
            client.health()
            start.wait()
            while True:
                with lock:
                    if not queue:
                        return
                    item = queue.pop()
                item(client)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client_loop) for _ in range(clients)]
        start.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        return time.perf_counter() - started


def _query_process(socket: str, threads: int, per_thread: int, ready: Any, go: Any, out: Any) -> None:
    """One process of the many-clients test: `threads` connections sending single queries."""
    clients = [Client(socket, timeout=None) for _ in range(threads)]
    for client in clients:
        client.health()
    ready.release()
    go.wait()

    def loop(client: Client) -> None:
        for _ in range(per_thread):
            client.embed([QUERY])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, clients))
    out.put(time.perf_counter())


def many_queries(socket: str, clients: int, per_client: int) -> float:
    """Queries/s of `clients` connections spread over processes (one Python process alone is
    bound by its own interpreter lock long before the server is)."""
    processes = min(clients, max(1, multiprocessing.cpu_count() // 2))
    threads = clients // processes
    context = multiprocessing.get_context("spawn")
    ready, go, out = context.Semaphore(0), context.Event(), context.Queue()
    workers = [context.Process(target=_query_process, args=(socket, threads, per_client, ready, go, out))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.acquire()
    started = time.perf_counter()
    go.set()
    finished = max(float(out.get()) for _ in workers)
    for worker in workers:
        worker.join()
    return processes * threads * per_client / (finished - started)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def latencies(call: Callable[[], object], count: int) -> dict[str, float]:
    for _ in range(max(1, count // 10)):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


@contextmanager
def serving(embedding: Path, reranker: Path) -> Iterator[tuple[str, str | None]]:
    """A server's socket, and a database pointed at it where PostgreSQL is installed; where it is
    not (a GPU machine without it), the server alone, and None: the SQL figures are left out."""
    try:
        find_pg_config()
    except UserError as exc:
        print(f"no SQL figures: {exc}")
    else:
        with bench_database(str(embedding), reranker=str(reranker)) as bench:
            yield str(bench.server.socket), bench.conninfo
        return
    root = Path(tempfile.mkdtemp(prefix="mgte-bench-"))
    server = ServerProcess.start(str(embedding), root / "mgte.sock", root / "server.log", reranker=str(reranker))
    try:
        yield str(server.socket), None
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def forward_latencies(path: Path, device: torch.device, dtype: torch.dtype, count: int) -> dict[str, Any]:
    """The model's forward alone on short batches, p50/p99: as served (CUDA graphs where they are on)
    and eagerly; synchronised by forward's copy of its results to the host."""
    embedder = Embedder(load_checkpoint(str(path), "embedding"), device, dtype)
    batches = {"one_16_token_query": [list(range(5, 21))], "32_queries_of_32_tokens": [list(range(5, 37))] * 32}
    served = {name: latencies(functools.partial(embedder.forward, batch), count) for name, batch in batches.items()}
    graphs, embedder.graphs = embedder.graphs_reason, None
    eager = {name: latencies(functools.partial(embedder.forward, batch), count) for name, batch in batches.items()}
    return {"cuda_graphs": graphs, "served": served, "eager": eager}


def long_text(tokenizer: Any, tokens: int) -> str:
    """A text of about `tokens` tokens."""
    words = passages(1, tokens, tokens, seed=7)[0].split()
    while len(tokenizer(" ".join(words))["input_ids"]) > tokens:
        words = words[: int(len(words) * 0.95)]
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="shrink every workload (a CPU smoke run)")
    parser.add_argument("--json", type=Path, default=Path("bench-gpu.json"))
    args = parser.parse_args()
    small = args.small
    device = resolve_device("auto")
    embedding, reranker = full_size_checkpoint(), full_size_checkpoint("reranker")
    dtype = settled_dtype(embedding, device, "auto")  # what the server runs in; the baselines run in it too
    tokenizer = transformers.AutoTokenizer.from_pretrained(embedding)

    texts = passages(48 if small else 4096, 20, 300 if small else 1200)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=8192)["input_ids"]]
    total, mean = sum(lengths), sum(lengths) / len(lengths)
    docs = passages(32 if small else 2048, 80, 120, seed=1)
    long = long_text(tokenizer, 1024 if small else 8192)
    cpu = f"{torch.cpu.get_capabilities().get('cpu_name', platform.machine())}, {os.cpu_count()} CPUs"
    results: dict[str, Any] = {
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "dtype": str(dtype)},
        "small": small,
        "workload": {"passages": len(texts), "tokens": total, "mean_tokens": round(mean, 1),
                     "max_tokens": max(lengths), "rerank_pairs": len(docs), "long_tokens":
                         len(tokenizer(long)["input_ids"])},
    }
    print(json.dumps(results, indent=1))

    limit = matmul_flops_per_second(device, dtype)
    limit_tokens = total / (model_flops(lengths) / limit)
    baseline = total / transformers_baseline(embedding, texts, device, dtype)
    rerank_baseline = len(docs) / transformers_baseline(reranker, docs, device, dtype, batch=64, pairs_with=QUERY)
    forward = forward_latencies(embedding, device, dtype, 20 if small else 500)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the baselines' memory, before the server takes its own

    with serving(embedding, reranker) as (socket, conninfo):
        with Client(socket, timeout=None) as client:
            served_info = client.info()
            client.embed(texts[:64])  # warm-up
            client.rerank(QUERY, docs[:64])
            query_client = latencies(lambda: client.embed([QUERY]), 50 if small else 1000)
            long_latency = latencies(lambda: client.embed([long]), 2 if small else 10)
            after_long = client.info()
        requests = [texts[i:i + 32] for i in range(0, len(texts), 32)]
        served = total / concurrently(socket, 16, [functools.partial(Client.embed, texts=chunk) for chunk in requests])
        rerank_requests = [docs[i:i + 64] for i in range(0, len(docs), 64)]
        rerank = len(docs) / concurrently(socket, 16, [functools.partial(Client.rerank, query=QUERY, documents=chunk)
                                                       for chunk in rerank_requests])
        qps = many_queries(socket, 64, 20 if small else 500)
        query_sql = None
        if conninfo is not None:
            with psycopg.connect(conninfo, autocommit=True) as db:
                query_sql = latencies(lambda: db.execute("SELECT mgte_embed(%s)", [QUERY]).fetchone(),
                                      50 if small else 1000)

    results |= {
        "served_model": {k: served_info["model"].get(k) for k in ("device", "dtype", "kernels", "parameters")},
        "passages_tokens_per_s": {
            "served_16_clients": round(served), "transformers_sorted_batches_32": round(baseline),
            "matmul_limit": round(limit_tokens), "matmul_gflops": round(limit / 1e9),
            "served_vs_sorted": round(served / baseline, 2), "served_vs_limit": round(served / limit_tokens, 3)},
        "single_query": {"client": query_client, "sql": query_sql},
        "queries_per_s_64_clients": round(qps),
        "rerank_pairs_per_s": {"served_16_clients": round(rerank),
                               "transformers_sorted_batches_64": round(rerank_baseline),
                               "served_vs_sorted": round(rerank / rerank_baseline, 2)},
        "long_text": {**long_latency, "device_memory": after_long.get("device_memory")},
        "model_forward": forward,
    }
    print(json.dumps({k: v for k, v in results.items() if k not in ("machine", "small", "workload")}, indent=1))
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
