"""Finding a checkpoint (directory, hub id or the built-in tiny model) and telling what it is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

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

# Only what loading needs: no ONNX exports, no pickled weights. Older sentence-transformers folders
# keep the encoder in a `0_Transformer`-like subfolder.
_HUB_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model", "vocab.txt",
    "modules.json", "sentence_*_config.json", "config_sentence_transformers.json", "*_Pooling/config.json",
    "*_Dense/config.json", "*_Normalize/config.json", "*_Transformer/*.json", "*_Transformer/vocab.txt",
    "*_Transformer/sentencepiece.bpe.model",
]

# The Transformer module's settings file; older releases named it after the encoder family.
_TRANSFORMER_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json",
                        "sentence_xlm-roberta_config.json")
# Settings of the Transformer module that change the vectors and that mgte does not implement.
_TRANSFORMER_UNSUPPORTED = ("processing_kwargs", "query_length", "document_length", "query_expansion")
PoolingMode = Literal["cls", "mean", "max"]
Activation = Literal["Identity", "Tanh"]

# How older releases wrote the pooling mode: one flag per mode.
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                  "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
_ACTIVATIONS: dict[str, Activation] = {"torch.nn.modules.linear.Identity": "Identity",
                                       "torch.nn.modules.activation.Tanh": "Tanh"}


@dataclass(frozen=True)
class Dense:
    """A sentence-transformers Dense module: `activation(linear(x))`."""

    in_features: int
    out_features: int
    bias: bool
    activation: Activation
    weights: Path  # the module's model.safetensors: linear.weight (and linear.bias)


@dataclass(frozen=True)
class Normalize:
    """A sentence-transformers Normalize module: L2 normalisation."""


@dataclass(frozen=True)
class SentencePipeline:
    """What a sentence-transformers folder's modules.json asks for, in mgte's terms."""

    encoder: Path  # the Transformer module's folder: the checkpoint itself, or a subfolder in older saves
    max_length: int | None  # max_seq_length of the Transformer module
    lower_case: bool  # do_lower_case of the Transformer module
    pooling: PoolingMode
    include_prompt: bool  # False: the prompt's tokens are left out of the pooling
    after_pooling: tuple[Dense | Normalize, ...]
    prompts: dict[str, str]  # config_sentence_transformers.json's non-empty prompts, by name
    prompt_name: str | None  # default_prompt_name: sentence-transformers' encode() prepends it to every text

    @property
    def prompt(self) -> str:
        return self.prompts.get(self.prompt_name or "", "")

    @property
    def modules(self) -> list[str]:
        return ["Transformer", "Pooling", *(type(m).__name__ for m in self.after_pooling)]


@dataclass(frozen=True)
class Checkpoint:
    source: str  # what the user named: a directory, a hub id or "tiny"
    path: Path
    kind: Kind
    format: Format
    config: PretrainedConfig
    sentence: SentencePipeline | None = None  # sentence-transformers models only

    @property
    def encoder_path(self) -> Path:
        """Where the encoder's config.json, tokenizer and weights are."""
        return self.sentence.encoder if self.sentence else self.path


def load_checkpoint(source: str, kind: Kind) -> Checkpoint:
    path = locate(source, kind)
    modules = _modules(path) if (path / "modules.json").is_file() else []
    encoder = _transformer_folder(path, modules, source)
    raw = _read_json(encoder / "config.json")
    if modules and raw.get("model_type") in SENTENCE_FAMILIES:
        if kind != "embedding":
            raise UserError(f"{source} is a sentence-transformers embedding model, not a reranker",
                            hint="pass it with --model")
        return Checkpoint(source, path, kind, "sentence-transformers",
                          AutoConfig.from_pretrained(encoder, trust_remote_code=False),
                          _sentence_pipeline(path, encoder, modules, source))
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
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
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


def _modules(path: Path) -> list[dict[str, Any]]:
    modules: list[dict[str, Any]] = _read_json(path / "modules.json", list)
    if not modules or not all(isinstance(m, dict) for m in modules):
        raise UserError(f"{path / 'modules.json'} is not a list of modules")
    return modules


def _module_name(module: dict[str, Any]) -> str | None:
    """Transformer, Pooling, Dense or Normalize when the module is sentence-transformers' own, under any
    of the module paths its releases have written (`sentence_transformers.models.Pooling`,
    `sentence_transformers.sentence_transformer.modules.pooling.Pooling`, ...); None otherwise."""
    type_ = str(module.get("type", ""))
    name = type_.rsplit(".", 1)[-1]
    return name if type_.startswith("sentence_transformers.") and name in _MODULES else None


def _module_folder(path: Path, module: dict[str, Any], source: str) -> Path:
    folder = (path / str(module.get("path") or "")).resolve()
    if not folder.is_relative_to(path.resolve()):
        raise UserError(f"{source}: modules.json points outside the model folder: {module.get('path')!r}")
    return folder


def _transformer_folder(path: Path, modules: list[dict[str, Any]], source: str) -> Path:
    if modules and _module_name(modules[0]) == "Transformer":
        return _module_folder(path, modules[0], source)
    return path


def _sentence_pipeline(path: Path, encoder: Path, modules: list[dict[str, Any]], source: str) -> SentencePipeline:
    """Follows modules.json in order: Transformer, Pooling, then Dense and Normalize modules."""
    names = [_module_name(m) for m in modules]
    for module, name in zip(modules, names, strict=True):
        if name is None:
            raise UserError(f"{source}: module {module.get('type')!r} in modules.json is not supported",
                            hint="mgte runs sentence-transformers' Transformer, Pooling, Dense and Normalize "
                                 "modules; use sentence-transformers itself for this model")
    if names[:2] != ["Transformer", "Pooling"] or "Transformer" in names[1:] or "Pooling" in names[2:]:
        raise UserError(f"{source}: modules.json has the modules {', '.join(map(str, names))}",
                        hint="mgte runs a Transformer, then a Pooling, then Dense and Normalize modules")
    settings = next((encoder / name for name in _TRANSFORMER_CONFIGS if (encoder / name).is_file()), None)
    transformer = _read_json(settings) if settings else {}
    task = transformer.get("transformer_task", "feature-extraction")
    unsupported = [key for key in _TRANSFORMER_UNSUPPORTED if transformer.get(key)]
    if task != "feature-extraction" or unsupported:
        raise UserError(f"{source}: the Transformer module's {', '.join(unsupported) or f'task {task!r}'} "
                        "is not supported", hint="mgte runs plain feature-extraction Transformer modules")
    mode, include_prompt = _pooling(_read_json(_module_folder(path, modules[1], source) / "config.json"), source)
    after = tuple(_dense(_module_folder(path, module, source), source) if name == "Dense"
                  else _normalize(_module_folder(path, module, source), source)
                  for module, name in zip(modules[2:], names[2:], strict=True))
    prompt_name, prompts = _prompts(path, source)
    max_length = transformer.get("max_seq_length")
    return SentencePipeline(
        encoder=encoder, max_length=int(max_length) if max_length else None,
        lower_case=bool(transformer.get("do_lower_case", False)), pooling=mode, include_prompt=include_prompt,
        after_pooling=after, prompts={name: text for name, text in prompts.items() if text}, prompt_name=prompt_name)


def _pooling(config: dict[str, Any], source: str) -> tuple[PoolingMode, bool]:
    mode = config.get("pooling_mode")
    if mode is None:
        # Older saves: one flag per mode; none set means mean, as sentence-transformers reads them.
        mode = [name for flag, name in _POOLING_FLAGS.items() if config.get(flag)] or "mean"
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in get_args(PoolingMode):
        raise UserError(f"{source}: pooling {' + '.join(map(str, modes)) or 'none'} is not supported",
                        hint="mgte pools sentence-transformers models by the CLS token, the mean or the maximum "
                             "of the token states (one mode)")
    return cast(PoolingMode, modes[0]), bool(config.get("include_prompt", True))


def _dense(folder: Path, source: str) -> Dense:
    config = _read_json(folder / "config.json")
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation not in _ACTIVATIONS:
        raise UserError(f"{source}: Dense activation {activation!r} is not supported",
                        hint=f"mgte runs Dense modules with {' or '.join(_ACTIVATIONS)}")
    wiring = [config.get(key, "sentence_embedding") for key in ("module_input_name", "module_output_name")]
    if config.get("use_residual") or wiring != ["sentence_embedding", "sentence_embedding"]:
        raise UserError(f"{source}: the Dense module in {folder.name} is not a plain layer on the sentence "
                        "embedding (residual or other inputs)", hint="mgte runs Dense layers on the pooled vector")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        pickled = " (it has only pickled pytorch_model.bin weights)" if (folder / "pytorch_model.bin").is_file() else ""
        raise UserError(f"{source}: the Dense module has no {weights}{pickled}",
                        hint="mgte never unpickles weights; save the model again with a current sentence-transformers, "
                             "which writes safetensors")
    try:
        in_features, out_features = int(config["in_features"]), int(config["out_features"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder / 'config.json'} does not give the Dense layer's in_features and "
                        "out_features") from None
    return Dense(in_features, out_features, bool(config.get("bias", True)), _ACTIVATIONS[activation], weights)


def _normalize(folder: Path, source: str) -> Normalize:
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    wiring = [config.get(key, "sentence_embedding") for key in ("module_input_name", "module_output_name")]
    if wiring != ["sentence_embedding", "sentence_embedding"]:
        raise UserError(f"{source}: the Normalize module in {folder.name} normalises {wiring[0]!r}",
                        hint="mgte normalises the pooled vector only")
    return Normalize()


def _prompts(path: Path, source: str) -> tuple[str | None, dict[str, str]]:
    settings = path / "config_sentence_transformers.json"
    config = _read_json(settings) if settings.is_file() else {}
    prompts = {str(name): str(text or "") for name, text in (config.get("prompts") or {}).items()}
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise UserError(f"{source}: default_prompt_name {default!r} is not one of the prompts "
                        f"({', '.join(prompts) or 'none'}) in {settings}")
    return default, prompts


def _read_json(path: Path, expect: type[dict[str, Any]] | type[list[Any]] = dict) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, expect):
        raise UserError(f"{path} is not a JSON {'object' if expect is dict else 'list'}")
    return data
