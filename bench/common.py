"""Shared pieces of the benchmarks: a full-size random checkpoint and synthetic passages."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch
import transformers

from mgte import tiny
from mgte.gte_config import gte_config_from_original

# gte-multilingual-base's own settings (MODEL.md); speed does not depend on weight values.
FULL_SIZE = tiny.ORIGINAL_CONFIG | {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                    "intermediate_size": 3072}

WORDS = (
    "station", "train", "city", "river", "mountain", "energy", "solar", "climate", "glacier", "coffee", "tea",
    "health", "history", "football", "estación", "tren", "ciudad", "río", "montaña", "energía", "Bahnhof",
    "Stadt", "Fluss", "Energie", "gare", "ville", "fleuve", "énergie", "北京", "火车站", "城市", "河流", "能源",
    "محطة", "مدينة", "نهر", "طاقة", "駅", "都市", "川", "エネルギー", "вокзал", "город", "река", "энергия",
)


def full_size_checkpoint() -> Path:
    """A random-weight gte-multilingual-base (native format), built once per machine."""
    path = Path(tempfile.gettempdir()) / "mgte-bench-full-size"
    if not (path / "config.json").is_file():
        config = gte_config_from_original(FULL_SIZE, "full-size")
        config.num_labels = 1
        torch.manual_seed(0)
        transformers.GteForTokenClassification(config).save_pretrained(path)
        tokenizer_source = tiny.ensure("embedding")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (path / name).write_bytes((tokenizer_source / name).read_bytes())
    return path


def passages(count: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """Multilingual word soup with lengths spread evenly between the bounds."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(count)]
