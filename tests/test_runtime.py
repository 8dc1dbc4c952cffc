"""The models in memory: both checkpoint formats, an independent reference, truncation."""

from __future__ import annotations

import pytest
import torch
import transformers

from mgte.checkpoint import load_checkpoint
from mgte.errors import UserError
from mgte.runtime import AutoDtype, Embedder, Reranker, resolve_device, resolve_dtype
from tests.conftest import Checkpoints
from tests.reference_original import OriginalGte

CPU = torch.device("cpu")
TEXTS = ["¿Dónde está la estación de tren?", "北京欢迎你", "مرحبا بالعالم", "",
         "A longer English passage about glaciers, climate and the sea level, " * 12]


@pytest.fixture(scope="module")
def embedders(checkpoints: Checkpoints) -> dict[str, Embedder]:
    return {fmt: Embedder(load_checkpoint(str(path), "embedding"), CPU, torch.float32)
            for fmt, path in (("native", checkpoints.embedding_native), ("original", checkpoints.embedding_original))}


@pytest.fixture(scope="module")
def rerankers(checkpoints: Checkpoints) -> dict[str, Reranker]:
    return {fmt: Reranker(load_checkpoint(str(path), "reranker"), CPU, torch.float32)
            for fmt, path in (("native", checkpoints.reranker_native), ("original", checkpoints.reranker_original))}


def test_formats_detected(embedders: dict[str, Embedder], rerankers: dict[str, Reranker]) -> None:
    assert embedders["native"].checkpoint.format == "native"
    assert embedders["original"].checkpoint.format == "original"
    assert rerankers["original"].checkpoint.kind == "reranker"


def test_both_formats_give_identical_embeddings(embedders: dict[str, Embedder]) -> None:
    batch = [t.ids for t in embedders["native"].tokenize(TEXTS)]
    native, original = embedders["native"].forward(batch), embedders["original"].forward(batch)
    for a, b in zip(native, original, strict=True):
        assert torch.equal(a.state, b.state)
        assert a.sparse is not None and b.sparse is not None
        assert torch.equal(a.sparse.ids, b.sparse.ids) and torch.equal(a.sparse.weights, b.sparse.weights)


def test_both_formats_give_identical_rerank_scores(rerankers: dict[str, Reranker]) -> None:
    batch = [t.ids for t in rerankers["native"].tokenize("where is the station", TEXTS)]
    assert rerankers["native"].forward(batch) == rerankers["original"].forward(batch)


def test_original_format_matches_an_independent_reference(embedders: dict[str, Embedder],
                                                          checkpoints: Checkpoints) -> None:
    reference = OriginalGte(checkpoints.embedding_original)
    embedder = embedders["original"]
    for tokens in embedder.tokenize(TEXTS):
        out = embedder.forward([tokens.ids])[0]
        assert out.sparse is not None
        hidden = reference.hidden_states(tokens.ids)
        torch.testing.assert_close(out.state.double(), hidden[0], rtol=0, atol=2e-5)
        weights = reference.token_weights(tokens.ids)
        expected: dict[int, float] = {}
        for token_id, weight in zip(tokens.ids, weights.tolist(), strict=True):
            if token_id > 3 and weight > 0:
                expected[token_id] = max(weight, expected.get(token_id, 0.0))
        assert out.sparse.ids.tolist() == sorted(expected)
        torch.testing.assert_close(out.sparse.weights.double(), torch.tensor([expected[i] for i in sorted(expected)],
                                   dtype=torch.float64), rtol=0, atol=2e-5)


def test_reranker_matches_the_independent_reference(rerankers: dict[str, Reranker],
                                                    checkpoints: Checkpoints) -> None:
    reference = OriginalGte(checkpoints.reranker_original)
    reranker = rerankers["original"]
    for tokens in reranker.tokenize("Where is the train station?", TEXTS):
        assert reranker.forward([tokens.ids])[0] == pytest.approx(reference.rerank_logit(tokens.ids), abs=2e-5)


def test_reference_notices_a_wrong_rope(checkpoints: Checkpoints) -> None:
    """The tiny weights make rope matter: transformers' default GTE rope would be caught."""
    embedder = Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), CPU, torch.float32)
    wrong = transformers.GteForTokenClassification.from_pretrained(
        checkpoints.embedding_native, rope_parameters={"rope_type": "default", "rope_theta": 160000.0}).eval()
    ids = embedder.tokenize([TEXTS[4]])[0].ids
    with torch.no_grad():
        wrong_first = wrong.gte(input_ids=torch.tensor([ids])).last_hidden_state[0, 0]
    right_first = embedder.forward([ids])[0].state
    assert (wrong_first - right_first).abs().max() > 1e-3


def test_result_does_not_depend_on_batch_neighbours(embedders: dict[str, Embedder]) -> None:
    embedder = embedders["native"]
    tokens = embedder.tokenize(TEXTS)
    together = embedder.forward([t.ids for t in tokens])
    for t, out in zip(tokens, together, strict=True):
        alone = embedder.forward([t.ids])[0]
        torch.testing.assert_close(out.state, alone.state, rtol=0, atol=1e-5)
        assert out.sparse is not None and alone.sparse is not None
        torch.testing.assert_close(out.sparse.weights, alone.sparse.weights, rtol=0, atol=1e-5)


def test_truncation_at_the_model_limit_is_reported(embedders: dict[str, Embedder]) -> None:
    embedder = embedders["native"]
    # "<s>" + one "▁a" per word + "</s>": exactly 8192 tokens fit, 8193 do not.
    fits, too_long = embedder.tokenize(["a " * 8190, "a " * 8191])
    assert (len(fits.ids), fits.length, fits.truncated) == (8192, 8192, False)
    assert (len(too_long.ids), too_long.length, too_long.truncated) == (8192, 8193, True)
    assert too_long.ids[0] == embedder.tokenizer.cls_token_id
    assert too_long.ids[-1] == embedder.tokenizer.eos_token_id
    assert too_long.ids[:-1] == fits.ids[:-1]


def test_rerank_pairs_truncate_longest_first(rerankers: dict[str, Reranker]) -> None:
    reranker = rerankers["native"]
    query = "where is the station"
    full = reranker.tokenizer(query, "b " * 10)["input_ids"]
    (short,), (long_,) = (reranker.tokenize(query, ["b " * 10]), reranker.tokenize(query, ["b " * 9000]))
    assert short.ids == full and not short.truncated
    assert len(long_.ids) == 8192 and long_.truncated and long_.length > 9000
    assert long_.ids[:len(full) - 11] == full[:len(full) - 11]  # the query survives whole


def test_device_and_dtype_resolution(checkpoints: Checkpoints) -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_dtype("auto", CPU) == AutoDtype()  # settled by the model once loaded: tests/test_precision.py
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        resolve_dtype("int3", CPU)
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("abacus")
    # Both branches assert: what "auto" and "cuda" give depends on the machine, not whether they are checked.
    if torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cuda")
        assert resolve_device("cuda").type == "cuda"
        auto = Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), torch.device("cuda"),
                        AutoDtype())
        assert auto.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    else:
        assert resolve_device("auto") == CPU
        with pytest.raises(UserError, match="no CUDA") as raised:
            resolve_device("cuda")
        assert raised.value.hint is not None and "--device cpu" in raised.value.hint
