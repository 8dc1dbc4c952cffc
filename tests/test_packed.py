"""The unpadded (packed) forward against transformers' own padded forward, on the tiny checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from mgte import heads, packed
from mgte.checkpoint import load_checkpoint
from mgte.runtime import Embedder, EmbeddingOutput, Reranker
from tests.conftest import Checkpoints

CPU = torch.device("cpu")
MIXED = "¿Dónde está la estación de tren? 北京欢迎你 مرحبا بالعالم glaciers, climate and the sea level. "
# Lengths from 2 tokens (`<s></s>`) to the model's limit of 8192 (the last text is truncated to it).
TEXTS = ["", "hi", MIXED * 4, MIXED * 60, MIXED * 700]
# float32 on CPU: the two paths differ by ~1e-6 (summation order); these leave two orders of margin.
DENSE_MIN_COSINE = 0.9999
STATE_ATOL = 1e-4
SPARSE_ATOL = 1e-4
LOGIT_ATOL = 1e-4
# The same text alone or among others: padded rows and other sequences change only the summation order.
NEIGHBOUR_ATOL = 1e-5


@dataclass(frozen=True)
class Padded:
    first: torch.Tensor  # [texts, hidden]: the first token's last hidden state
    sparse: list[heads.SparseVector]


@pytest.fixture(scope="module")
def embedder(checkpoints: Checkpoints) -> Embedder:
    return Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), CPU, torch.float32)


@pytest.fixture(scope="module")
def reranker(checkpoints: Checkpoints) -> Reranker:
    return Reranker(load_checkpoint(str(checkpoints.reranker_original), "reranker"), CPU, torch.float32)


@pytest.fixture(scope="module")
def batch(embedder: Embedder) -> list[list[int]]:
    ids = [t.ids for t in embedder.tokenize(TEXTS)]
    assert [len(i) for i in ids][:2] == [2, 3] and len(ids[-1]) == embedder.max_length
    return ids


@pytest.fixture(scope="module")
def padded(embedder: Embedder, batch: list[list[int]]) -> Padded:
    return padded_embeddings(embedder, batch)


@torch.inference_mode()
def padded_embeddings(embedder: Embedder, batch: Sequence[Sequence[int]]) -> Padded:
    """transformers' padded forward (GteForTokenClassification's backbone and classifier) and the sparse head."""
    input_ids, mask = embedder._padded(batch)
    device = embedder.device
    hidden = embedder.module.gte(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    weights = torch.relu(embedder.module.classifier(hidden)[..., 0].float()).cpu()
    sparse = [heads.sparse(input_ids[row, :len(ids)], weights[row, :len(ids)], [len(ids)], embedder._drop_ids)[0]
              for row, ids in enumerate(batch)]
    return Padded(hidden[:, 0].float().cpu(), sparse)


def assert_sparse_close(a: heads.SparseVector | None, b: heads.SparseVector | None, atol: float) -> None:
    assert a is not None and b is not None
    assert a.ids.tolist() == b.ids.tolist()
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=atol)


def test_pack_concatenates_and_restarts_positions() -> None:
    inputs = packed.pack([[0, 5, 2], [0, 2], [0, 7, 8, 9, 2]])
    assert inputs.ids.tolist() == [0, 5, 2, 0, 2, 0, 7, 8, 9, 2]
    assert inputs.positions.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]
    assert inputs.cu_seqlens.dtype == torch.int32 and inputs.cu_seqlens.tolist() == [0, 3, 5, 10]
    assert inputs.starts.tolist() == [0, 3, 5] and inputs.lengths == [3, 2, 5]


def test_cpu_attention_runs_per_sequence() -> None:
    # PyTorch's varlen kernel is flash attention, CUDA-only.
    assert packed.attention_kind(CPU, torch.float32, 64) == packed.SDPA
    assert packed.attention_kind(CPU, torch.bfloat16, 64) == packed.SDPA


def test_packed_embeddings_match_the_padded_forward(embedder: Embedder, batch: list[list[int]],
                                                    padded: Padded) -> None:
    outputs = embedder.forward(batch)
    for out, first, sparse in zip(outputs, padded.first, padded.sparse, strict=True):
        assert float(F.cosine_similarity(out.state, first, dim=0)) >= DENSE_MIN_COSINE
        torch.testing.assert_close(out.state, first, rtol=0, atol=STATE_ATOL)
        assert_sparse_close(out.sparse, sparse, SPARSE_ATOL)
    assert sum(len(s.ids) for s in padded.sparse[2:]) > 10  # the comparison covers real sparse weights


def test_packed_rerank_logits_match_the_padded_forward(reranker: Reranker) -> None:
    tokens = reranker.tokenize("Where is the train station?", TEXTS)
    batch = [t.ids for t in tokens]
    assert len(batch[-1]) == reranker.max_length
    input_ids, mask = reranker._padded(batch)
    with torch.inference_mode():
        expected = reranker.module(input_ids=input_ids, attention_mask=mask).logits[:, 0].tolist()
    assert reranker.forward(batch) == pytest.approx(expected, abs=LOGIT_ATOL, rel=0)


def test_packed_output_does_not_depend_on_the_rest_of_the_batch(embedder: Embedder, batch: list[list[int]]) -> None:
    together = embedder.forward(batch)
    # Alone, and behind other sequences (its tokens at other places in the packed tensor).
    for i, ids in enumerate(batch):
        alone = embedder.forward([ids])[0]
        behind: EmbeddingOutput = embedder.forward([batch[2], batch[0], ids])[2]
        for other in (alone, behind):
            torch.testing.assert_close(together[i].state, other.state, rtol=0, atol=NEIGHBOUR_ATOL)
            assert_sparse_close(together[i].sparse, other.sparse, NEIGHBOUR_ATOL)


def test_padded_output_does_not_depend_on_the_rest_of_the_batch(embedder: Embedder, batch: list[list[int]],
                                                                 padded: Padded) -> None:
    # What the packed forward is checked against must itself be batch-independent, or the parity above
    # would only hold for this batch.
    for i, ids in enumerate(batch):
        alone = padded_embeddings(embedder, [ids])
        torch.testing.assert_close(padded.first[i], alone.first[0], rtol=0, atol=NEIGHBOUR_ATOL)
        assert_sparse_close(padded.sparse[i], alone.sparse[0], NEIGHBOUR_ATOL)


def test_compiled_layers_match_the_eager_ones(checkpoints: Checkpoints, embedder: Embedder,
                                             batch: list[list[int]]) -> None:
    compiled = Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), CPU, torch.float32,
                        compile=True)
    reason = compiled.describe()["kernels"]["compile"]
    assert compiled.compiled and reason.startswith("on: torch.compile (inductor), compiled in "), reason
    # Sequences of other lengths than the probe's: one compilation serves every number of tokens.
    for out, eager in zip(compiled.forward(batch), embedder.forward(batch), strict=True):
        torch.testing.assert_close(out.state, eager.state, rtol=0, atol=NEIGHBOUR_ATOL)
        assert_sparse_close(out.sparse, eager.sparse, NEIGHBOUR_ATOL)
    assert embedder.compile_reason == "off: not asked for (mgte serve --compile on)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: varlen attention is CUDA-only")
def test_varlen_attention_on_gpu_matches_the_padded_forward(checkpoints: Checkpoints) -> None:
    gpu = Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), torch.device("cuda"),
                   torch.bfloat16)
    assert packed.attention_kind(gpu.device, torch.bfloat16, 16) == packed.VARLEN
    assert packed.attention_kind(gpu.device, torch.float32, 16) == packed.SDPA  # flash attention has no float32
    batch = [t.ids for t in gpu.tokenize(TEXTS)]
    reference = padded_embeddings(gpu, batch)
    for out, first in zip(gpu.forward(batch), reference.first, strict=True):
        # bfloat16: both paths round differently at every layer.
        assert float(F.cosine_similarity(out.state, first, dim=0)) >= 0.999
