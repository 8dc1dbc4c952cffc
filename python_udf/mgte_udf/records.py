"""What auto-embedding stores for each row.

The worker (psycopg, through a table's _settle function, vectors in pgvector's binary form)
and the synchronous trigger (PL/Python, through mgte._encode, in the text forms PostgreSQL
parses) both store these, so both build them here. Their field names, FIELDS, are the column
names that SQL reads (sql/auto_embed.sql: the results of _settle, the columns of
mgte._encode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mgte_udf.client import Encoded

# pgvector indexes a sparsevec with HNSW only up to this many non-zero elements.
SPARSEVEC_MAX_NNZ = 1000

# The names under which an EmbeddingRecord travels to SQL, in the order of its fields.
FIELDS = ("mgte_embedding", "mgte_sparse", "mgte_sparsevec", "mgte_model", "mgte_tokens", "mgte_truncated")


@dataclass(frozen=True)
class EmbeddingRecord:
    embedding: list[float]
    sparse: dict[str, float] | None  # for jsonb, keyed by token string
    sparsevec: dict[int, float] | None  # the weights the sparsevec keeps (top_weights), keyed by token id
    vocab_size: int  # the sparsevec's dimensions
    model: str
    tokens: int
    truncated: bool

    def fields(self) -> dict[str, Any]:
        """The record under its FIELDS names, vectors as text literals."""
        sparsevec = None if self.sparsevec is None else sparsevec_literal(self.sparsevec, self.vocab_size)
        return dict(zip(FIELDS, (vector_literal(self.embedding), self.sparse, sparsevec, self.model, self.tokens,
                                 self.truncated), strict=True))


def records(encoded: Encoded, vocab_size: int) -> list[EmbeddingRecord]:
    assert encoded.dense is not None
    truncated = set(encoded.truncated)
    out = []
    for i, vector in enumerate(encoded.dense):
        by_id = encoded.sparse_ids[i] if encoded.sparse_ids is not None else None
        out.append(EmbeddingRecord(
            embedding=vector,
            sparse=encoded.sparse[i] if encoded.sparse is not None else None,
            sparsevec=None if by_id is None else top_weights(by_id),
            vocab_size=vocab_size,
            model=encoded.model,
            tokens=encoded.tokens[i],
            truncated=i in truncated,
        ))
    return out


def top_weights(weights: dict[int, float], keep: int = SPARSEVEC_MAX_NNZ) -> dict[int, float]:
    """The `keep` largest weights (ties by token id), in token id order."""
    return dict(sorted(sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:keep]))


def vector_literal(values: Sequence[float]) -> str:
    # repr() round-trips each float32 exactly through pgvector's parser.
    return "[" + ",".join(map(repr, values)) + "]"


def sparsevec_literal(weights: dict[int, float], dimensions: int) -> str:
    """`weights` (already pruned by `top_weights`) as a sparsevec. Token ids count from 0,
    sparsevec indices from 1: token id i is index i + 1."""
    return "{" + ",".join(f"{token_id + 1}:{weight!r}" for token_id, weight in sorted(weights.items())) \
        + f"}}/{dimensions}"
