"""The mGTE output heads, exactly as the original implementation computes them (MODEL.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def sparse(ids: torch.Tensor, token_weights: torch.Tensor, lengths: Sequence[int],
           drop_ids: torch.Tensor) -> list[SparseVector]:
    """`relu(classifier(h_t))` per token of each sequence (`ids` and `token_weights` hold the
    sequences end to end), without special tokens or weights <= 0; a token repeated within a
    sequence keeps its maximum weight. Computed where the inputs are: from a GPU, only the surviving
    weights are copied back."""
    device = ids.device
    sequence = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                       torch.tensor(lengths, device=device), output_size=len(ids))
    keep = (token_weights > 0) & ~torch.isin(ids, drop_ids.to(device))
    # One key per (sequence, token id), in that order: torch.unique sorts them, merges repeats and
    # leaves each sequence's ids ascending.
    keys = (sequence[keep] << 32) | ids[keep]
    unique, position = torch.unique(keys, return_inverse=True)
    best = torch.zeros(unique.shape[0], dtype=torch.float32, device=device).scatter_reduce(
        0, position, token_weights[keep].float(), reduce="amax", include_self=False)
    unique, best = unique.cpu(), best.cpu()
    counts = torch.bincount(unique >> 32, minlength=len(lengths)).tolist()
    return [SparseVector(token_ids, weights) for token_ids, weights
            in zip(torch.split(unique & 0xFFFFFFFF, counts), torch.split(best, counts), strict=True)]


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
