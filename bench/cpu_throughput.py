"""Tokens/s of the full-size model on this machine: mgte against plain transformers, same run.

    .venv/bin/python -m bench.cpu_throughput [--passages 64] [--device cpu]

Three ways to embed the same passages:
  baseline   transformers, padded batches of 32 in arrival order (what a naive loop does)
  runtime    mgte's batcher in-process: length-sorted, token-budget batches
  server     `mgte serve` end to end through the client (tokenising, protocol, batching)
Prints tokens/s and each one's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from bench.common import full_size_checkpoint, passages
from mgte.batcher import Batcher
from mgte.checkpoint import load_checkpoint
from mgte.runtime import Embedder, resolve_device, resolve_dtype
from mgte.server_process import ServerProcess


def baseline(path: Path, texts: list[str], device: torch.device, dtype: torch.dtype) -> float:
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model: Any = transformers.GteForTokenClassification.from_pretrained(path, dtype=dtype)
    model = model.to(device).eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i:i + 32], padding=True, return_tensors="pt").to(device)
            model.gte(**batch).last_hidden_state[:, 0].float().cpu()
    return time.perf_counter() - started


def runtime(path: Path, texts: list[str], device: torch.device, dtype: torch.dtype, budget: int) -> float:
    embedder = Embedder(load_checkpoint(str(path), "embedding"), device, dtype)
    batcher = Batcher(max_batch_tokens=budget, max_queued=len(texts))
    batcher.start()
    started = time.perf_counter()
    tokens = embedder.tokenize(texts)
    batcher.submit(embedder, [t.ids for t in tokens]).result()
    elapsed = time.perf_counter() - started
    batcher.stop()
    return elapsed


def server(path: Path, texts: list[str], device: str) -> float:
    directory = Path(tempfile.mkdtemp(prefix="mgte-bench-"))
    process = ServerProcess.start(str(path), directory / "mgte.sock", directory / "server.log", "--device", device)
    try:
        with process.client(timeout=None) as client:
            client.embed(["warm up"])
            started = time.perf_counter()
            client.embed(texts)
            return time.perf_counter() - started
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passages", type=int, default=64)
    parser.add_argument("--min-words", type=int, default=20)
    parser.add_argument("--max-words", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    path = full_size_checkpoint()
    texts = passages(args.passages, args.min_words, args.max_words)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    total = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    print(f"{len(texts)} passages, {total} tokens (mean {total / len(texts):.0f}), {device} {dtype}, "
          f"{torch.get_num_threads()} threads")
    base = baseline(path, texts, device, dtype)
    results = {"baseline (padded, arrival order, batch 32)": base,
               f"mgte runtime (sorted, {args.max_batch_tokens}-token budget)":
                   runtime(path, texts, device, dtype, args.max_batch_tokens),
               "mgte server end to end": server(path, texts, args.device)}
    for name, seconds in results.items():
        print(f"{name:48s} {total / seconds:9.0f} tokens/s   {base / seconds:5.2f}x baseline")


if __name__ == "__main__":
    main()
