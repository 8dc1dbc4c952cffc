"""The mGTE output heads, exactly as the original implementation computes them (MODEL.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SparseVector:
    """Lexical weights keyed by token id: ids unique (ascending), weights > 0."""

    ids: torch.Tensor  # int64
    weights: torch.Tensor  # float32


def dense(states: torch.Tensor, dim: int | None, normalize: bool = True) -> torch.Tensor:
    """Matryoshka: keep the first `dim` values of the pooled state (mGTE: the `<s>` state),
    THEN L2-normalise (unless the model's own pipeline does not)."""
    states = states.float()
    if dim is not None:
        states = states[:, :dim]
    return F.normalize(states, p=2.0, dim=-1) if normalize else states


def sparse(ids: torch.Tensor, token_weights: torch.Tensor, drop_ids: torch.Tensor) -> SparseVector:
    """`relu(classifier(h_t))` per token, without special tokens or weights <= 0; a repeated
    token keeps its maximum weight."""
    keep = (token_weights > 0) & ~torch.isin(ids, drop_ids)
    ids, token_weights = ids[keep], token_weights[keep].float()
    unique, position = torch.unique(ids, return_inverse=True)
    best = torch.zeros(unique.shape[0], dtype=torch.float32).scatter_reduce(
        0, position, token_weights, reduce="amax", include_self=False)
    return SparseVector(unique, best)


def by_token_string(vector: SparseVector, decode: Callable[[int], str]) -> dict[str, float]:
    """The official output: keyed by `tokenizer.decode([id])`. Different ids that decode to
    the same string (e.g. "▁word" and "word") keep the larger weight, as the official code does."""
    out: dict[str, float] = {}
    for token_id, weight in zip(vector.ids.tolist(), vector.weights.tolist(), strict=True):
        token = decode(token_id)
        if weight > out.get(token, 0.0):
            out[token] = weight
    return out


def rerank(logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """The raw cross-encoder logit (the model card's score), or its sigmoid (TEI's default)."""
    scores = logits.float()
    return torch.sigmoid(scores) if sigmoid else scores
