"""Short batches on a GPU, replayed as CUDA graphs.

A query's forward is a few hundred small kernels, and launching them costs more than running them
(one 16-token query on an H100: 5.9 ms eager, 1.0 ms replayed). So each bucket below, a padded
shape [sequences, width], is captured once at start-up and every batch that fits one is padded to
it and replayed. Larger batches run eagerly: their launches are a small share of their work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mgte import packed

log = logging.getLogger("mgte.cuda_graphs")

SEQUENCES = (1, 2, 4, 8, 16, 32, 64)
WIDTHS = (16, 32, 64, 128)
# Buckets over this many padded tokens are not captured: eager launches cost them little, and
# each graph holds its activations.
MAX_TOKENS = 4096
BUCKETS = tuple((n, w) for n in SEQUENCES for w in WIDTHS if n * w <= MAX_TOKENS)

# What a model replays: its forward and heads on padded ids and mask, [sequences, width] each, with
# fixed shapes and no host synchronisation; it returns device tensors of fixed shapes.
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


def bucket(lengths: Sequence[int]) -> tuple[int, int] | None:
    """The smallest bucket that holds these sequences, or None when none does."""
    sequences = next((n for n in SEQUENCES if n >= len(lengths)), None)
    width = next((w for w in WIDTHS if w >= max(lengths)), None)
    if sequences is None or width is None or (sequences, width) not in BUCKETS:
        return None
    return sequences, width


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor  # the static inputs the graph reads
    mask: torch.Tensor
    outputs: tuple[torch.Tensor, ...]  # the static outputs it writes


class ShortBatches:
    """`step` captured for every bucket on `device`. Not thread-safe, and a replay overwrites the
    previous one's outputs: the caller copies them out first (the model thread does, batch by batch)."""

    def __init__(self, step: Step, device: torch.device, pad_id: int) -> None:
        self.pad_id = pad_id
        self._graphs: dict[tuple[int, int], _Graph] = {}
        # One memory pool for all: only one graph runs at a time. Largest first, so that the later,
        # smaller graphs fit in the memory it took.
        pool = torch.cuda.graph_pool_handle()
        for shape in sorted(BUCKETS, key=lambda s: s[0] * s[1], reverse=True):
            self._graphs[shape] = _capture(step, device, shape, pad_id, pool)

    @torch.inference_mode()
    def run(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, ...] | None:
        """The step's outputs for `batch` padded to its bucket (rows past len(batch) are padding), or
        None when the batch fits no bucket."""
        shape = bucket([len(ids) for ids in batch])
        if shape is None:
            return None
        graph = self._graphs[shape]
        ids, mask = packed.pad(batch, shape, self.pad_id)
        graph.ids.copy_(ids.pin_memory(), non_blocking=True)
        graph.mask.copy_(mask.pin_memory(), non_blocking=True)
        graph.graph.replay()
        return graph.outputs


@torch.inference_mode()
def _capture(step: Step, device: torch.device, shape: tuple[int, int], pad_id: int,
             pool: torch.cuda._POOL_HANDLE) -> _Graph:
    ids, mask = (t.to(device) for t in packed.pad([], shape, pad_id))
    # Warm-up on a side stream, as CUDA graph capture requires: kernels chosen, workspaces allocated.
    side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            step(ids, mask)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = step(ids, mask)
    return _Graph(graph, ids, mask, outputs)


def capture(step: Step, device: torch.device, pad_id: int) -> tuple[ShortBatches | None, str]:
    """The graphs where the device has CUDA, and what `mgte info` says about them."""
    if device.type != "cuda":
        return None, f"off: CUDA graphs need a GPU, this model runs on {device.type}"
    try:
        graphs = ShortBatches(step, device, pad_id)
    except RuntimeError as exc:  # a kernel this torch release cannot capture: eager still works
        log.warning("CUDA graphs off, capturing them failed: %s", exc)
        return None, f"off: capturing them failed ({exc})"
    return graphs, (f"on: {len(BUCKETS)} shapes up to {max(SEQUENCES)} sequences, {max(WIDTHS)} tokens wide, "
                    f"{MAX_TOKENS} tokens in all")
