"""The output heads on hand-made inputs, where the right answer is known exactly."""

from __future__ import annotations

import pytest
import torch

from mgte import heads

SPECIAL = torch.tensor([0, 1, 2, 3])


def test_dense_slices_before_normalising() -> None:
    states = torch.tensor([[3.0, 4.0, 12.0]])
    torch.testing.assert_close(heads.dense(states, 2), torch.tensor([[0.6, 0.8]]))
    torch.testing.assert_close(heads.dense(states, None), torch.tensor([[3 / 13, 4 / 13, 12 / 13]]))


def test_dense_is_unit_length_for_every_dim() -> None:
    states = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    for dim in (1, 7, 32):
        out = heads.dense(states, dim)
        assert out.shape == (5, dim)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))


def test_sparse_drops_specials_and_non_positive_weights_and_keeps_max_of_repeats() -> None:
    ids = torch.tensor([0, 5, 7, 5, 2, 3, 1, 9, 11])
    weights = torch.tensor([9.0, 0.2, -1.0, 0.7, 8.0, 7.0, 6.0, 0.0, 0.3])
    (vector,) = heads.sparse(ids, weights, [len(ids)], SPECIAL)
    assert vector.ids.tolist() == [5, 11]
    torch.testing.assert_close(vector.weights, torch.tensor([0.7, 0.3]))


def test_sparse_keeps_each_sequence_of_a_batch_apart() -> None:
    # Three sequences end to end: 5 repeats across them but keeps each one's own maximum; the
    # middle one has nothing left; the last one's ids come out ascending.
    ids = torch.tensor([0, 5, 9, 2, 0, 5, 2, 0, 5, 12, 7, 5, 2])
    weights = torch.tensor([1.0, 0.5, 0.1, 1.0, 1.0, -0.5, 1.0, 1.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    first, middle, last = heads.sparse(ids, weights, [4, 3, 6], SPECIAL)
    assert (first.ids.tolist(), middle.ids.tolist(), last.ids.tolist()) == ([5, 9], [], [5, 7, 12])
    torch.testing.assert_close(first.weights, torch.tensor([0.5, 0.1]))
    torch.testing.assert_close(last.weights, torch.tensor([0.8, 0.6, 0.4]))
    assert middle.weights.dtype == torch.float32 and middle.ids.dtype == torch.int64


def test_sparse_of_nothing_is_empty() -> None:
    (vector,) = heads.sparse(torch.tensor([0, 2]), torch.tensor([1.0, 1.0]), [2], SPECIAL)
    assert vector.ids.numel() == 0 and vector.weights.numel() == 0


def test_token_strings_merge_ids_that_decode_alike() -> None:
    vector = heads.SparseVector(torch.tensor([10, 20, 30]), torch.tensor([0.5, 0.9, 0.4]))
    decoded = {10: "word", 20: "word", 30: "other"}
    merged = heads.by_token_string(vector, decoded.__getitem__)
    assert merged == {"word": pytest.approx(0.9), "other": pytest.approx(0.4)}


def test_rerank_raw_logit_or_sigmoid() -> None:
    logits = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(heads.rerank(logits, sigmoid=False), logits)
    torch.testing.assert_close(heads.rerank(logits, sigmoid=True), torch.sigmoid(logits))
