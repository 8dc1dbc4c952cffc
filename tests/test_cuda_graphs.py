"""Short batches on the fixed padded shapes that CUDA graphs replay, against the unpadded forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F

from mgte import cuda_graphs, packed
from mgte.checkpoint import load_checkpoint
from mgte.runtime import Embedder, Reranker
from tests.conftest import Checkpoints

CPU = torch.device("cpu")
SHORT = ["", "hi", "¿Dónde está la estación de tren?", "北京欢迎你 مرحبا بالعالم", "glaciers " * 20]
# float32 on CPU: padded and unpadded differ only in summation order (~1e-6).
ATOL = 1e-4


class EagerShortBatches:
    """What ShortBatches replays, run eagerly: CUDA graphs cannot exist on a CPU, the rest of the path can."""

    def __init__(self, step: cuda_graphs.Step, pad_id: int) -> None:
        self.step, self.pad_id, self.runs = step, pad_id, 0

    @torch.inference_mode()
    def run(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, ...] | None:
        shape = cuda_graphs.bucket([len(ids) for ids in batch])
        if shape is None:
            return None
        self.runs += 1
        return self.step(*packed.pad(batch, shape, self.pad_id))


def with_eager_graphs(model: Embedder | Reranker) -> EagerShortBatches:
    eager = EagerShortBatches(model._short_step, model.tokenizer.pad_token_id)
    model.graphs = cast(Any, eager)
    return eager


@pytest.fixture
def embedder(checkpoints: Checkpoints) -> Embedder:
    return Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), CPU, torch.float32)


@pytest.fixture
def reranker(checkpoints: Checkpoints) -> Reranker:
    return Reranker(load_checkpoint(str(checkpoints.reranker_original), "reranker"), CPU, torch.float32)


def test_a_batch_takes_the_smallest_bucket_that_holds_it() -> None:
    assert cuda_graphs.bucket([3]) == (1, 16)
    assert cuda_graphs.bucket([17, 2, 5]) == (4, 32)
    assert cuda_graphs.bucket([128] * 32) == (32, 128)
    assert cuda_graphs.bucket([129]) is None  # wider than every bucket
    assert cuda_graphs.bucket([100] * 33) is None  # 64 x 128 would be over MAX_TOKENS
    assert cuda_graphs.bucket([4] * 65) is None
    assert all(n * w <= cuda_graphs.MAX_TOKENS for n, w in cuda_graphs.BUCKETS)


def test_padding_gives_unused_rows_one_token() -> None:
    ids, mask = packed.pad([[0, 5, 2], [0, 2]], (4, 16), pad_id=1)
    assert ids.shape == mask.shape == (4, 16)
    assert ids[0, :4].tolist() == [0, 5, 2, 1] and ids[1, :3].tolist() == [0, 2, 1]
    assert mask.sum(dim=1).tolist() == [3, 2, 1, 1]
    assert mask[2:, 0].tolist() == [1, 1]


def test_cpu_models_say_why_graphs_are_off(embedder: Embedder) -> None:
    assert embedder.graphs is None
    assert embedder.describe()["kernels"]["cuda_graphs"] == "off: CUDA graphs need a GPU, this model runs on cpu"


def test_replayed_shapes_give_the_embeddings_of_the_unpadded_forward(embedder: Embedder) -> None:
    batch = [t.ids for t in embedder.tokenize(SHORT)]
    eager = embedder.forward(batch)
    shapes = with_eager_graphs(embedder)
    replayed = embedder.forward(batch)
    assert shapes.runs == 1
    for a, b in zip(replayed, eager, strict=True):
        torch.testing.assert_close(a.state, b.state, rtol=0, atol=ATOL)
        assert a.sparse is not None and b.sparse is not None
        assert a.sparse.ids.tolist() == b.sparse.ids.tolist()
        torch.testing.assert_close(a.sparse.weights, b.sparse.weights, rtol=0, atol=ATOL)
    assert sum(len(out.sparse.ids) for out in eager if out.sparse is not None) > 10
    shape = cuda_graphs.bucket([len(ids) for ids in batch])
    assert shape is not None and embedder.computed_tokens([len(ids) for ids in batch]) == shape[0] * shape[1]


def test_replayed_shapes_give_the_logits_of_the_unpadded_forward(reranker: Reranker) -> None:
    batch = [t.ids for t in reranker.tokenize("Where is the train station?", SHORT)]
    eager = reranker.forward(batch)
    shapes = with_eager_graphs(reranker)
    assert reranker.forward(batch) == pytest.approx(eager, abs=ATOL, rel=0)
    assert shapes.runs == 1


def test_batches_that_fit_no_bucket_run_unpadded(embedder: Embedder) -> None:
    shapes = with_eager_graphs(embedder)
    long = [t.ids for t in embedder.tokenize(["glaciers " * 200])]
    assert len(long[0]) > max(cuda_graphs.WIDTHS)
    embedder.forward(long)
    assert shapes.runs == 0
    assert embedder.computed_tokens([len(long[0])]) == len(long[0])


def cosines(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[float]:
    return [float(F.cosine_similarity(x, y, dim=0)) for x, y in zip(a, b, strict=True)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: CUDA graphs are CUDA-only")
def test_cuda_graph_replays_match_eager_runs(checkpoints: Checkpoints) -> None:
    gpu = torch.device("cuda")
    embedder = Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), gpu, torch.bfloat16)
    reranker = Reranker(load_checkpoint(str(checkpoints.reranker_native), "reranker"), gpu, torch.bfloat16)
    for model in (embedder, reranker):
        assert model.describe()["kernels"]["cuda_graphs"].startswith("on:"), model.graphs_reason
    short = [t.ids for t in embedder.tokenize(SHORT)]
    other = [ids[::-1] for ids in short]  # other tokens, the same lengths: the same bucket
    replayed = [out.state for out in embedder.forward(short)]
    embedder.forward(other)  # another replay of the same graph in between: its buffers are reused
    again = [out.state for out in embedder.forward(short)]
    assert all(torch.equal(a, b) for a, b in zip(replayed, again, strict=True))
    # The same step run eagerly: the same kernels, so the same numbers up to bf16 rounding.
    shape = cuda_graphs.bucket([len(ids) for ids in short])
    assert shape is not None
    with torch.inference_mode():
        ids, mask = (t.to(gpu) for t in packed.pad(short, shape, embedder.tokenizer.pad_token_id))
        stepped = embedder._short_step(ids, mask)[0][:len(short)].cpu()
    assert min(cosines(replayed, list(stepped))) >= 0.9999
    # Against the unpadded (varlen) forward: other kernels, rounding differently in bf16.
    embedder.graphs = None
    assert min(cosines(replayed, [out.state for out in embedder.forward(short)])) >= 0.999
    rerank_batch = [t.ids for t in reranker.tokenize("Where is the train station?", SHORT)]
    logits = reranker.forward(rerank_batch)
    reranker.graphs = None
    assert reranker.forward(rerank_batch) == pytest.approx(logits, abs=0.05, rel=0.02)
