"""mgte: the mGTE embedding, sparse-weight and reranking models, served to PostgreSQL."""

from mgte_udf import __version__

__all__ = ["__version__"]
