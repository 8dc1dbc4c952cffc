"""Finding a checkpoint (directory, hub id or the built-in tiny model) and telling what it is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import GteConfig

from mgte import tiny
from mgte.errors import UserError
from mgte.gte_config import Kind, gte_config_from_original, kind_of

Format = Literal["original", "native"]

_FLAG: dict[Kind, str] = {"embedding": "--model", "reranker": "--reranker"}
_NOUN: dict[Kind, str] = {"embedding": "an embedding model", "reranker": "a reranker"}

# Only what loading needs: no ONNX exports, no pickled weights.
_HUB_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model",
]


@dataclass(frozen=True)
class Checkpoint:
    source: str  # what the user named: a directory, a hub id or "tiny"
    path: Path
    kind: Kind
    format: Format
    config: GteConfig


def load_checkpoint(source: str, kind: Kind) -> Checkpoint:
    path = locate(source, kind)
    raw = _read_json(path / "config.json")
    found = kind_of(raw.get("architectures") or [])
    if found != kind:
        names = ", ".join(raw.get("architectures") or ["none"])
        if found is None:
            raise UserError(f"{source} is not an mGTE embedding model or reranker (architectures: {names})",
                            hint="pass a gte-multilingual-base or gte-multilingual-reranker-base checkpoint")
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object")
    return data
