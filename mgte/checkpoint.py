"""Finding a checkpoint (directory, hub id or the built-in tiny model) and telling what it is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import AutoConfig, GteConfig, PretrainedConfig

from mgte import tiny
from mgte.errors import UserError
from mgte.gte_config import Kind, gte_config_from_original, kind_of

Format = Literal["original", "native", "sentence-transformers"]

# Encoder families a sentence-transformers folder may hold: transformers' own classes, so no
# remote code runs.
SENTENCE_FAMILIES = ("bert", "xlm-roberta", "roberta")

_FLAG: dict[Kind, str] = {"embedding": "--model", "reranker": "--reranker"}
_NOUN: dict[Kind, str] = {"embedding": "an embedding model", "reranker": "a reranker"}

# Only what loading needs: no ONNX exports, no pickled weights.
_HUB_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model", "vocab.txt",
    "modules.json", "sentence_bert_config.json", "*_Pooling/config.json",
]


@dataclass(frozen=True)
class Pooling:
    """How a sentence-transformers model turns token states into one vector."""

    mode: Literal["cls", "mean"]
    normalize: bool
    max_length: int | None  # sentence_bert_config.json's max_seq_length


@dataclass(frozen=True)
class Checkpoint:
    source: str  # what the user named: a directory, a hub id or "tiny"
    path: Path
    kind: Kind
    format: Format
    config: PretrainedConfig
    pooling: Pooling | None = None  # sentence-transformers models only


def load_checkpoint(source: str, kind: Kind) -> Checkpoint:
    path = locate(source, kind)
    raw = _read_json(path / "config.json")
    if (path / "modules.json").is_file() and raw.get("model_type") in SENTENCE_FAMILIES:
        if kind != "embedding":
            raise UserError(f"{source} is a sentence-transformers embedding model, not a reranker",
                            hint="pass it with --model")
        return Checkpoint(source, path, kind, "sentence-transformers",
                          AutoConfig.from_pretrained(path, trust_remote_code=False), _pooling(path, source))
    found = kind_of(raw.get("architectures") or [])
    if found != kind:
        names = ", ".join(raw.get("architectures") or ["none"])
        if found is None:
            raise UserError(f"{source} is not an mGTE embedding model or reranker (architectures: {names})",
                            hint="pass a gte-multilingual-base or gte-multilingual-reranker-base checkpoint, or "
                                 "a sentence-transformers folder of a BERT or XLM-R encoder")
        raise UserError(f"{source} is {_NOUN[found]} ({names}), not {_NOUN[kind]}",
                        hint=f"pass it with {_FLAG[found]} instead of {_FLAG[kind]}")
    if raw.get("model_type") == "new":
        return Checkpoint(source, path, kind, "original", gte_config_from_original(raw, source))
    if raw.get("model_type") == "gte":
        return Checkpoint(source, path, kind, "native", GteConfig.from_pretrained(path))
    raise UserError(f"{source}: unsupported model_type {raw.get('model_type')!r} in config.json",
                    hint="mgte loads mGTE checkpoints, model_type 'new' (original) or 'gte' (transformers)")


def locate(source: str, kind: Kind) -> Path:
    """A local directory holding the checkpoint: the path given, the built-in tiny model, or a hub download."""
    if source == tiny.NAME:
        return tiny.ensure(kind)
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        if not (path / "config.json").is_file():
            raise UserError(f"no model at {path}: {path / 'config.json'} does not exist",
                            hint=f"{_FLAG[kind]} takes a checkpoint directory, a hub id such as "
                                 "Alibaba-NLP/gte-multilingual-base, or 'tiny'")
        return path.resolve()
    return _from_hub(source, kind)


def _from_hub(repo_id: str, kind: Kind) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except HFValidationError as exc:
        raise UserError(f"{repo_id!r} is neither a directory nor a valid hub id: {exc}") from None
    except (OSError, HfHubHTTPError, ValueError) as exc:
        cause = exc.__cause__ or exc
        detail = (str(cause).splitlines() or [type(cause).__name__])[0]
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the hub cannot be reached: {detail}"
        raise UserError(
            f"model weights for {repo_id} are not in the local cache and {why}",
            hint=f"download them where the hub is reachable (`hf download {repo_id}`), copy the "
                 f"directory here and pass {_FLAG[kind]} /path/to/it") from None


def _pooling(path: Path, source: str) -> Pooling:
    modules = [m for m in _read_json(path / "modules.json", list) if isinstance(m, dict)]
    pooling = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    if not pooling:
        raise UserError(f"{source}: modules.json names no Pooling module", hint="mgte needs CLS or mean pooling")
    config = _read_json(path / str(pooling[0].get("path", "")) / "config.json")
    modes = [name for name in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                               "lasttoken") if config.get(f"pooling_mode_{name}")]
    if modes == ["cls_token"]:
        mode: Literal["cls", "mean"] = "cls"
    elif modes == ["mean_tokens"]:
        mode = "mean"
    else:
        raise UserError(f"{source}: pooling {', '.join(modes) or 'none'} is not supported",
                        hint="mgte pools sentence-transformers models by the CLS token or the mean of the tokens")
    settings = path / "sentence_bert_config.json"
    max_length = _read_json(settings).get("max_seq_length") if settings.is_file() else None
    return Pooling(mode, any(str(m.get("type", "")).endswith(".Normalize") for m in modules),
                   int(max_length) if max_length else None)


def _read_json(path: Path, expect: type[dict[str, Any]] | type[list[Any]] = dict) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, expect):
        raise UserError(f"{path} is not a JSON {'object' if expect is dict else 'list'}")
    return data
