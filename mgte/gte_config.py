"""Translating the original mGTE config into transformers' native `GteConfig`.

The original Alibaba checkpoints (`model_type: "new"`) name remote code in their config;
we never run it. Their config is translated here, and transformers' weight-conversion
table for `gte` renames and splits the weights while loading.
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import GteConfig

from mgte.errors import UserError

Kind = Literal["embedding", "reranker"]

# The transformers class of each kind; original checkpoints name the same heads "New...".
GTE_CLASS: dict[Kind, str] = {"embedding": "GteForTokenClassification",
                              "reranker": "GteForSequenceClassification"}
ORIGINAL_CLASS: dict[Kind, str] = {"embedding": "NewForTokenClassification",
                                   "reranker": "NewForSequenceClassification"}


def kind_of(architectures: list[str]) -> Kind | None:
    """Which head a config's `architectures` list names (it may list the bare encoder first)."""
    for kind, name in GTE_CLASS.items():
        suffix = name.removeprefix("Gte")
        if any(str(arch).endswith(suffix) for arch in architectures):
            return kind
    return None


def gte_config_from_original(raw: dict[str, Any], source: str) -> GteConfig:
    """The GteConfig that makes transformers' GTE compute what the original remote code computes."""
    def refuse(what: str) -> UserError:
        return UserError(f"{source}: {what}; the original mGTE checkpoints do not use it and mgte "
                         "cannot reproduce it", hint="use an official Alibaba-NLP/gte-multilingual-* checkpoint")

    if raw.get("position_embedding_type", "rope") != "rope":
        raise refuse(f"position_embedding_type {raw['position_embedding_type']!r}")
    if raw.get("logn_attention_scale", False):
        raise refuse("logn_attention_scale")
    if raw.get("layer_norm_type", "layer_norm") != "layer_norm":
        raise refuse(f"layer_norm_type {raw['layer_norm_type']!r}")
    if not raw.get("pack_qkv", True):
        raise refuse("unpacked q/k/v weights (pack_qkv false)")
    head_dim = raw["hidden_size"] // raw["num_attention_heads"]
    fields = {
        name: raw[name] for name in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
            "type_vocab_size", "layer_norm_eps", "pad_token_id", "classifier_dropout", "id2label", "label2id",
        ) if name in raw
    }
    return GteConfig(**fields, rope_parameters=rope_parameters(raw, head_dim, source))


def rope_parameters(raw: dict[str, Any], head_dim: int, source: str) -> dict[str, Any]:
    """Translates the original rope settings.

    The original "ntk" scaling computes inv_freq_i = (theta*f)^(-2i/d) / f^(2/d), which is
    transformers' "linear" rope with theta' = theta*f and factor f^(2/d). Getting this wrong
    gives vectors that look fine and retrieve badly, so it is derived, never hard-coded.
    """
    theta = float(raw.get("rope_theta", 10000.0))
    scaling = raw.get("rope_scaling")
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind != "ntk" or scaling.get("mixed_b") is not None:
        raise UserError(f"{source}: rope_scaling {scaling!r} is not supported",
                        hint="mgte reproduces the original 'ntk' scaling (without mixed_b) only")
    factor = float(scaling["factor"])
    return {"rope_type": "linear", "rope_theta": theta * factor, "factor": factor ** (2 / head_dim)}
