"""What auto-embedding stores for each row, as the text forms PostgreSQL parses.

The worker (psycopg, through a table's _settle function) and the synchronous trigger
(PL/Python, through mgte._encode) both store these, so both build them here. Their field
names, FIELDS, are the column names that SQL reads (sql/auto_embed.sql: the results of
_settle, the columns of mgte._encode).
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
    embedding: str  # vector literal
    sparse: dict[str, float] | None  # for jsonb, keyed by token string
    sparsevec: str | None  # sparsevec literal, top SPARSEVEC_MAX_NNZ weights keyed by token id
    model: str
    tokens: int
    truncated: bool

    def fields(self) -> dict[str, Any]:
        """The record under its FIELDS names."""
        return dict(zip(FIELDS, (self.embedding, self.sparse, self.sparsevec, self.model, self.tokens,
                                 self.truncated), strict=True))


def records(encoded: Encoded, vocab_size: int) -> list[EmbeddingRecord]:
    assert encoded.dense is not None
    truncated = set(encoded.truncated)
    out = []
    for i, vector in enumerate(encoded.dense):
        by_id = encoded.sparse_ids[i] if encoded.sparse_ids is not None else None
        out.append(EmbeddingRecord(
            embedding=vector_literal(vector),
            sparse=encoded.sparse[i] if encoded.sparse is not None else None,
            sparsevec=None if by_id is None else sparsevec_literal(by_id, vocab_size),
            model=encoded.model,
            tokens=encoded.tokens[i],
            truncated=i in truncated,
        ))
    return out


def vector_literal(values: Sequence[float]) -> str:
    # repr() round-trips each float32 exactly through pgvector's parser.
    return "[" + ",".join(map(repr, values)) + "]"


def sparsevec_literal(weights: dict[int, float], dimensions: int, keep: int = SPARSEVEC_MAX_NNZ) -> str:
    """The `keep` largest weights (ties by token id). Token ids count from 0, sparsevec
    indices from 1: token id i is index i + 1."""
    top = sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:keep]
    return "{" + ",".join(f"{token_id + 1}:{weight!r}" for token_id, weight in sorted(top)) + f"}}/{dimensions}"
