"""What auto-embedding stores for each row, as the text forms PostgreSQL parses.

The worker (psycopg) and the synchronous trigger (PL/Python) both store these, so both
build them here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from mgte_udf.client import Encoded

# pgvector indexes a sparsevec with HNSW only up to this many non-zero elements.
SPARSEVEC_MAX_NNZ = 1000


@dataclass(frozen=True)
class EmbeddingRecord:
    embedding: str  # vector literal
    sparse: dict[str, float] | None  # for jsonb, keyed by token string
    sparsevec: str | None  # sparsevec literal, top SPARSEVEC_MAX_NNZ weights keyed by token id
    model: str
    text_md5: str  # md5() of the text embedded, as PostgreSQL computes it
    tokens: int
    truncated: bool


def records(texts: Sequence[str], encoded: Encoded, vocab_size: int) -> list[EmbeddingRecord]:
    assert encoded.dense is not None
    truncated = set(encoded.truncated)
    out = []
    for i, text in enumerate(texts):
        sparse = encoded.sparse[i] if encoded.sparse is not None else None
        by_id = encoded.sparse_ids[i] if encoded.sparse_ids is not None else None
        out.append(EmbeddingRecord(
            embedding=vector_literal(encoded.dense[i]),
            sparse=sparse,
            sparsevec=None if by_id is None else sparsevec_literal(by_id, vocab_size),
            model=encoded.model,
            text_md5=text_md5(text),
            tokens=encoded.tokens[i],
            truncated=i in truncated,
        ))
    return out


def text_md5(text: str) -> str:
    """md5(text) as PostgreSQL computes it in a UTF-8 database."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def vector_literal(values: Sequence[float]) -> str:
    # repr() round-trips each float32 exactly through pgvector's parser.
    return "[" + ",".join(map(repr, values)) + "]"


def sparsevec_literal(weights: dict[int, float], dimensions: int, keep: int = SPARSEVEC_MAX_NNZ) -> str:
    """The `keep` largest weights (ties by token id). Token ids count from 0, sparsevec
    indices from 1: token id i is index i + 1."""
    top = sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:keep]
    return "{" + ",".join(f"{token_id + 1}:{weight!r}" for token_id, weight in sorted(top)) + f"}}/{dimensions}"
