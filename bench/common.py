"""Shared pieces of the benchmarks: a full-size random checkpoint and synthetic passages."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import torch
import transformers
from pgvector.psycopg import register_vector
from psycopg import sql

from mgte import tiny
from mgte.checkpoint import load_checkpoint
from mgte.gte_config import GTE_CLASS, Kind, gte_config_from_original
from mgte.pgcluster import Cluster
from mgte.runtime import Embedder, resolve_dtype
from mgte.server_process import ServerProcess

# gte-multilingual-base's own settings (MODEL.md); speed does not depend on weight values.
FULL_SIZE = tiny.ORIGINAL_CONFIG | {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                    "intermediate_size": 3072}

WORDS = (
    "station", "train", "city", "river", "mountain", "energy", "solar", "climate", "glacier", "coffee", "tea",
    "health", "history", "football", "estación", "tren", "ciudad", "río", "montaña", "energía", "Bahnhof",
    "Stadt", "Fluss", "Energie", "gare", "ville", "fleuve", "énergie", "北京", "火车站", "城市", "河流", "能源",
    "محطة", "مدينة", "نهر", "طاقة", "駅", "都市", "川", "エネルギー", "вокзал", "город", "река", "энергия",
)


def full_size_checkpoint(kind: Kind = "embedding") -> Path:
    """A random-weight gte-multilingual-base, or its reranker (native format), built once per machine."""
    path = Path(tempfile.gettempdir()) / ("mgte-bench-full-size" if kind == "embedding"
                                          else "mgte-bench-full-size-reranker")
    if not (path / "config.json").is_file():
        config = gte_config_from_original(FULL_SIZE, "full-size")
        config.num_labels = 1
        torch.manual_seed(0)
        getattr(transformers, GTE_CLASS[kind])(config).save_pretrained(path)
        tokenizer_source = tiny.ensure("embedding")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (path / name).write_bytes((tokenizer_source / name).read_bytes())
    return path


def model_flops(lengths: Sequence[int]) -> float:
    """Matmul FLOPs of the full-size encoder on these sequences, unpadded. Per token and layer:
    q, k, v, o (4 x 768^2) and up, gate, down (3 x 768 x 3072) multiply-adds (~226 MFLOP/token for
    12 layers, DESIGN.md), plus attention's QK^T and AV over the token's own sequence (4 x length x 768)."""
    hidden, intermediate = int(FULL_SIZE["hidden_size"]), int(FULL_SIZE["intermediate_size"])
    layers = int(FULL_SIZE["num_hidden_layers"])
    per_token = layers * 2 * (4 * hidden ** 2 + 3 * hidden * intermediate)
    return float(sum(n * per_token + layers * 4 * n * n * hidden for n in lengths))


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype) -> float:
    """A [4096, 768] x [768, 3072] matmul (an MLP projection of a 4096-token batch), best of 5 (on a
    GPU, of 5 bursts of 100 calls: one call is too short to time). Into a preallocated output: a fresh
    48 MiB one costs page faults (glibc mmaps blocks that large), which is the model's overhead, not the
    hardware's limit."""
    hidden, intermediate = int(FULL_SIZE["hidden_size"]), int(FULL_SIZE["intermediate_size"])
    a = torch.randn(4096, hidden, dtype=dtype, device=device)
    b = torch.randn(hidden, intermediate, dtype=dtype, device=device)
    out = torch.empty(4096, intermediate, dtype=dtype, device=device)
    calls = 100 if device.type == "cuda" else 1

    def seconds() -> float:
        synchronize(device)
        started = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        synchronize(device)
        return time.perf_counter() - started

    seconds()  # the first call picks and prepares its kernel
    return 2 * 4096 * hidden * intermediate * calls / min(seconds() for _ in range(5))


def synchronize(device: torch.device) -> None:
    """Waits for the GPU's queued work, so that a timing covers it; nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def transformers_baseline(path: Path, texts: Sequence[str], device: torch.device, dtype: torch.dtype, *,
                          batch: int = 32, by_length: bool = True, pairs_with: str | None = None) -> float:
    """Seconds for what a user would run instead of mgte: plain transformers on `texts` in padded
    batches of `batch`, sorted by length first (what sentence-transformers' encode does), or with
    by_length=False in arrival order (a naive loop). Computes the dense output (first token), or
    with `pairs_with`, the reranker's logits for each (pairs_with, text) pair."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    kind: Any = (transformers.GteForTokenClassification if pairs_with is None
                 else transformers.GteForSequenceClassification)
    model: Any = kind.from_pretrained(path, dtype=dtype).to(device).eval()
    ordered = sorted(texts, key=len) if by_length else list(texts)

    def run() -> None:
        for start in range(0, len(ordered), batch):
            chunk = ordered[start:start + batch]
            if pairs_with is None:
                inputs = tokenizer(chunk, padding=True, truncation=True, max_length=8192, return_tensors="pt")
                model.gte(**inputs.to(device)).last_hidden_state[:, 0].float().cpu()
            else:
                inputs = tokenizer([pairs_with] * len(chunk), chunk, padding=True, truncation=True,
                                   max_length=8192, return_tensors="pt")
                model(**inputs.to(device)).logits.float().cpu()

    with torch.inference_mode():
        run()  # warm-up: kernels chosen, memory allocated, for every batch shape the timed pass meets
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        return time.perf_counter() - started


def passages(count: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """Multilingual word soup with lengths spread evenly between the bounds."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(count)]


@dataclass
class BenchDatabase:
    root: Path
    cluster: Cluster
    server: ServerProcess
    db: psycopg.Connection[Any]  # autocommit, in the database mgte_bench, pointed at the server
    conninfo: str


@contextmanager
def bench_database(model: str, reranker: str | None = None) -> Iterator[BenchDatabase]:
    """A private cluster with the extension in database mgte_bench, and a server; all removed after."""
    root = Path(tempfile.mkdtemp(prefix="mgte-bench-"))
    root.chmod(0o755)
    cluster = Cluster(root)
    cluster.init()
    cluster.start()
    server = ServerProcess.start(model, root / "mgte.sock", root / "server.log", reranker=reranker)
    try:
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE mgte_bench")
            conn.execute(sql.SQL("ALTER DATABASE mgte_bench SET mgte.socket_path = {}").format(
                sql.Literal(str(server.socket))))
        conninfo = cluster.conninfo("mgte_bench")
        with psycopg.connect(conninfo, autocommit=True) as db:
            db.execute("CREATE EXTENSION mgte CASCADE")
            register_vector(db)
            yield BenchDatabase(root, cluster, server, db, conninfo)
    finally:
        server.stop()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def settled_dtype(path: Path, device: torch.device, spec: str) -> torch.dtype:
    """What mgte serve --dtype `spec` runs in on this machine (auto decides once the model is loaded)."""
    embedder = Embedder(load_checkpoint(str(path), "embedding"), device, resolve_dtype(spec, device))
    print(f"--dtype {spec}: {str(embedder.dtype).removeprefix('torch.')} ({embedder.dtype_reason})")
    return embedder.dtype
