"""Tokens/s of the full-size model on this machine: mgte against plain transformers, same run.

    .venv/bin/python -m bench.cpu_throughput [--passages 64] [--device cpu] [--dtype auto] [--compile]

Five ways to embed the same passages:
  arrival    transformers, padded batches of 32 in arrival order (what a naive loop does)
  baseline   transformers, sorted by length, padded batches of 32 (what sentence-transformers does)
  padded     mgte's batcher in-process: length-sorted, token-budget batches, run padded by transformers
  runtime    the same batches run unpadded (mgte.packed), as the server does
  server     `mgte serve` end to end through the client (tokenising, protocol, batching), as it
             runs by default and with glibc's malloc untouched (see mgte.allocator)
With --compile, also the server with `--compile on`, and the unpadded forward with and without
mgte.packed's compiled steps on the same batches. The ways of each kind take turns for --rounds
rounds (medians): on a shared machine, speed drifts more from minute to minute than they
differ, so one run of each would not tell; for the same reason the server rows are compared
with the matmul limit measured in their own round.
Prints tokens/s, each one's ratio to the baseline, and its ratio to the matmul limit: the tokens/s
this machine's matmul speed in the dtype that runs (measured in the same run) allows for these
passages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
import transformers

from bench.common import (
    full_size_checkpoint,
    matmul_flops_per_second,
    model_flops,
    passages,
    settled_dtype,
    transformers_baseline,
)
from mgte.batcher import Batcher
from mgte.checkpoint import load_checkpoint
from mgte.runtime import Embedder, EmbeddingOutput, resolve_device
from mgte.server_process import ServerProcess


class PaddedEmbedder(Embedder):
    """The forward mgte ran before mgte.packed: transformers' GteModel on a right-padded batch,
    batched as the padded models are (padded budget, MIN_FILL)."""

    unpadded = False

    @torch.inference_mode()
    def forward(self, batch: Sequence[Sequence[int]]) -> list[EmbeddingOutput]:
        input_ids, mask = self._padded(batch)
        hidden = self.module.gte(input_ids=input_ids.to(self.device),
                                 attention_mask=mask.to(self.device)).last_hidden_state
        return [EmbeddingOutput(state, None) for state in hidden[:, 0].float().cpu()]


def runtime(path: Path, texts: list[str], device: torch.device, dtype: torch.dtype, budget: int,
            kind: type[Embedder] = Embedder) -> float:
    embedder = kind(load_checkpoint(str(path), "embedding"), device, dtype)
    batcher = Batcher(max_batch_tokens=budget, max_queued=len(texts))
    batcher.start()
    batcher.submit(embedder, [t.ids for t in embedder.tokenize(texts[:2])]).result()  # warm-up
    started = time.perf_counter()
    tokens = embedder.tokenize(texts)
    batcher.submit(embedder, [t.ids for t in tokens]).result()
    elapsed = time.perf_counter() - started
    batcher.stop()
    return elapsed


def compiled_against_eager(path: Path, texts: list[str], device: torch.device, dtype: torch.dtype, budget: int,
                           rounds: int) -> tuple[float, float]:
    """Median seconds of the unpadded forward over length-sorted batches of `budget` tokens,
    compiled and eager, alternating."""
    embedder = Embedder(load_checkpoint(str(path), "embedding"), device, dtype, compile=True)
    print(f"--compile on: {embedder.compile_reason}")
    batches: list[list[list[int]]] = [[]]
    for ids in sorted((t.ids for t in embedder.tokenize(texts)), key=len):
        if batches[-1] and sum(map(len, batches[-1])) + len(ids) > budget:
            batches.append([])
        batches[-1].append(ids)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for compiled in (True, False):
            embedder.compiled = compiled and embedder.compile_reason.startswith("on")
            started = time.perf_counter()
            for batch in batches:
                embedder.forward(batch)
            seconds[compiled].append(time.perf_counter() - started)
    return statistics.median(seconds[True]), statistics.median(seconds[False])


# `mgte serve` end to end, each way with its flags and environment.
Way = tuple[list[str], dict[str, str]]
SERVERS: dict[str, Way] = {
    "mgte server end to end": ([], {}),
    # A malloc tunable at its default value: mgte serve then leaves glibc's malloc as it is
    # (mgte.allocator), which hands blocks over 32 MiB back to the kernel when freed.
    "mgte server, glibc malloc untouched": ([], {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}),
}
COMPILED_SERVER: dict[str, Way] = {"mgte server, --compile on": (["--compile", "on"], {})}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The user and system CPU time a process has taken so far (Linux): system time is where the
    page faults of fresh memory show."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def servers(path: Path, texts: list[str], device: torch.device, dtype: torch.dtype, ways: dict[str, Way],
            rounds: int, tokens: int, flops_needed: float) -> dict[str, tuple[float, float]]:
    """For each way of running the server: the median seconds for the client to embed `texts`
    (`tokens` in all), and the median of its tokens/s over the limit measured in the same round
    (`flops_needed` at the matmul speed measured just before). All are started at once and asked
    in turn, one at a time, so each has the machine; the limit is measured each round because the
    speed of a shared machine drifts between minutes."""
    with ExitStack() as stack:
        clients, pids = {}, {}
        for label, (flags, env) in ways.items():
            directory = Path(tempfile.mkdtemp(prefix="mgte-bench-"))
            process = ServerProcess.start(str(path), directory / "mgte.sock", directory / "server.log",
                                          "--device", str(device), "--dtype", str(dtype).removeprefix("torch."),
                                          *flags, env=env)
            stack.callback(process.stop)
            pids[label] = process.process.pid
            clients[label] = stack.enter_context(process.client(timeout=None))
            clients[label].embed(["warm up"])
            print(f"{label}: host allocator {clients[label].info()['host_allocator']}")
        seconds: dict[str, list[float]] = {label: [] for label in ways}
        ratios: dict[str, list[float]] = {label: [] for label in ways}
        for round_ in range(1, rounds + 1):
            limit = tokens / (flops_needed / matmul_flops_per_second(device, dtype))
            report = [f"round {round_}: limit {limit:.0f} tokens/s"]
            for label, client in clients.items():
                cpu = cpu_seconds(pids[label])
                started = time.perf_counter()
                client.embed(texts)
                seconds[label].append(time.perf_counter() - started)
                user, system = (after - before for after, before in zip(cpu_seconds(pids[label]), cpu, strict=True))
                ratios[label].append(tokens / seconds[label][-1] / limit)
                report.append(f"{label} {tokens / seconds[label][-1]:.0f} ({ratios[label][-1]:.2f}x; "
                              f"CPU {user:.1f} s user, {system:.1f} s system)")
            print("; ".join(report))
    return {label: (statistics.median(seconds[label]), statistics.median(ratios[label])) for label in ways}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passages", type=int, default=64)
    parser.add_argument("--min-words", type=int, default=20)
    parser.add_argument("--max-words", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--dtype", default="auto", help="as mgte serve's --dtype; every way runs what it settles on")
    parser.add_argument("--compile", action="store_true", help="also compare the forward compiled and eager")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the alternating comparisons")
    args = parser.parse_args()
    device = resolve_device(args.device)
    path = full_size_checkpoint()
    dtype = settled_dtype(path, device, args.dtype)
    texts = passages(args.passages, args.min_words, args.max_words)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    total = sum(lengths)
    print(f"{len(texts)} passages, {total} tokens (mean {total / len(texts):.0f}), {device} {dtype}, "
          f"{torch.get_num_threads()} threads")
    flops = matmul_flops_per_second(device, dtype)
    limit = total / (model_flops(lengths) / flops)
    name = str(dtype).removeprefix("torch.")
    print(f"{name} matmul {flops / 1e9:.0f} GFLOP/s: limit {limit:.0f} tokens/s for these passages "
          f"({model_flops(lengths) / total / 1e6:.0f} MFLOP/token)")
    base = transformers_baseline(path, texts, device, dtype)
    results = {"transformers, arrival order, batches of 32":
                   transformers_baseline(path, texts, device, dtype, by_length=False),
               "transformers, sorted by length, batches of 32 (baseline)": base,
               f"mgte batches run padded ({args.max_batch_tokens}-token budget)":
                   runtime(path, texts, device, dtype, args.max_batch_tokens, PaddedEmbedder),
               f"mgte runtime, unpadded ({args.max_batch_tokens}-token budget)":
                   runtime(path, texts, device, dtype, args.max_batch_tokens)}
    ratios = {label: total / seconds / limit for label, seconds in results.items()}
    served = servers(path, texts, device, dtype, {**SERVERS, **(COMPILED_SERVER if args.compile else {})},
                     args.rounds, total, model_flops(lengths))
    for label, (seconds, ratio) in served.items():
        results[f"{label} (median of {args.rounds}, in turn)"] = seconds
        ratios[f"{label} (median of {args.rounds}, in turn)"] = ratio
    if args.compile:
        compiled, eager = compiled_against_eager(path, texts, device, dtype, args.max_batch_tokens, args.rounds)
        results[f"unpadded forward, --compile on (median of {args.rounds}, in turn)"] = compiled
        results[f"unpadded forward, eager (median of {args.rounds}, in turn)"] = eager
        for label in list(results)[-2:]:
            ratios[label] = total / results[label] / limit
    for label, seconds in results.items():
        print(f"{label:64s} {total / seconds:9.0f} tokens/s   {base / seconds:5.2f}x baseline   "
              f"{ratios[label]:5.2f}x the limit")
    print("the server rows' limit is that of each round (see above); the others', the one measured first")


if __name__ == "__main__":
    main()
