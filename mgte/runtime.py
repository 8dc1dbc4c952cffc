"""The models in memory: tokenising with truncation reported, and running padded batches.

The server's batcher decides what goes into a batch; this module only runs one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
import transformers
from tokenizers import normalizers

from mgte import heads
from mgte.checkpoint import Checkpoint, Dense, Normalize, PoolingMode
from mgte.errors import UserError
from mgte.gte_config import GTE_CLASS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Tokens:
    """One model input. `length` counts the tokens before truncation, specials included."""

    ids: list[int]
    length: int

    @property
    def truncated(self) -> bool:
        return self.length > len(self.ids)


@dataclass(frozen=True)
class EmbeddingOutput:
    state: torch.Tensor  # float32 [hidden]: the pooled state the dense head slices and normalises
    sparse: heads.SparseVector | None  # lexical weights, for models that have them


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec} requested but this torch build sees no CUDA GPU",
                        hint="use --device cpu, or install a CUDA build of torch")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """float32 on CPU; bfloat16 on GPUs that have it, float16 on older ones."""
    if spec == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if spec not in DTYPES:
        raise UserError(f"unknown dtype {spec!r}", hint=f"use auto or one of {', '.join(DTYPES)}")
    return DTYPES[spec]


class Model:
    """A checkpoint's tokenizer and network on one device. Not thread-safe: one batch at a time."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.max_length = int(checkpoint.config.max_position_embeddings)
        self.hidden_size = int(checkpoint.config.hidden_size)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            checkpoint.encoder_path, config=checkpoint.config, trust_remote_code=False)
        if self.tokenizer.pad_token_id is None:
            raise UserError(f"the tokenizer of {checkpoint.source} has no padding token")
        if checkpoint.format == "sentence-transformers":
            # No pooler: sentence-transformers never uses it, and folders often come without its
            # weights; those that have them load without a warning about them.
            encoder: type[Any] = transformers.MODEL_MAPPING[type(checkpoint.config)]  # type: ignore[assignment]
            model_class: Any = type(encoder.__name__, (encoder,),
                                    {"_keys_to_ignore_on_load_unexpected": [r"^pooler\."]})
            options = {"add_pooling_layer": False}
        else:
            model_class, options = getattr(transformers, GTE_CLASS[checkpoint.kind]), {}
        module, loading = model_class.from_pretrained(
            checkpoint.encoder_path, config=checkpoint.config, dtype=dtype, attn_implementation="sdpa",
            output_loading_info=True, trust_remote_code=False, **options)
        if loading["missing_keys"] or loading.get("mismatched_keys"):
            missing = sorted(loading["missing_keys"]) + [str(k) for k in loading.get("mismatched_keys", [])]
            raise UserError(f"{checkpoint.source}: weights missing or of the wrong shape: {', '.join(missing[:8])}",
                            hint="the checkpoint is incomplete or of another architecture; download it again")
        self.module = module.to(device).eval()

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.checkpoint.source,
            "path": str(self.checkpoint.path),
            "format": self.checkpoint.format,
            "kind": self.checkpoint.kind,
            "hidden_size": self.hidden_size,
            "max_length": self.max_length,
            "vocab_size": int(self.checkpoint.config.vocab_size),
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def forward(self, batch: Sequence[Sequence[int]]) -> list[Any]:
        raise NotImplementedError

    def _truncate(self, encoded: list[list[int]], redo: Callable[[list[int]], list[list[int]]]) -> list[Tokens]:
        """Keeps inputs that fit; re-encodes the others with the tokenizer's own truncation."""
        long = [i for i, ids in enumerate(encoded) if len(ids) > self.max_length]
        out = [Tokens(ids, len(ids)) for ids in encoded]
        if long:
            for i, ids in zip(long, redo(long), strict=True):
                out[i] = Tokens(ids, len(encoded[i]))
        return out

    def _padded(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, :len(ids)] = 1
        return input_ids, mask


class TextEncoder(Model):
    """A model that turns texts into dense vectors (and, for mGTE, sparse weights)."""

    has_sparse = False
    normalize = True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sparse": self.has_sparse, "normalized": self.normalize}

    def tokenize(self, texts: Sequence[str]) -> list[Tokens]:
        encoded = self.tokenizer(list(texts), return_attention_mask=False, verbose=False)["input_ids"]
        return self._truncate(encoded, lambda idx: self.tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=self.max_length,
            return_attention_mask=False, verbose=False)["input_ids"])

    def forward(self, batch: Sequence[Sequence[int]]) -> list[EmbeddingOutput]:
        raise NotImplementedError

    def decode_token(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))


class Embedder(TextEncoder):
    """gte-multilingual-base: dense (first-token state) and sparse (per-token weight) outputs."""

    has_sparse = True

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(checkpoint, device, dtype)
        tok = self.tokenizer
        self._drop_ids = torch.tensor(sorted({i for i in (tok.cls_token_id, tok.eos_token_id, tok.pad_token_id,
                                                         tok.unk_token_id) if i is not None}))

    @torch.inference_mode()
    def forward(self, batch: Sequence[Sequence[int]]) -> list[EmbeddingOutput]:
        input_ids, mask = self._padded(batch)
        # The backbone and the classifier separately: GteForTokenClassification would only
        # give the hidden state by keeping every layer's.
        hidden = self.module.gte(input_ids=input_ids.to(self.device),
                                 attention_mask=mask.to(self.device)).last_hidden_state
        first = hidden[:, 0].float().cpu()
        token_weights = torch.relu(self.module.classifier(hidden)[..., 0].float()).cpu()
        return [
            EmbeddingOutput(first[row], heads.sparse(input_ids[row, :len(ids)], token_weights[row, :len(ids)],
                                                     self._drop_ids))
            for row, ids in enumerate(batch)
        ]


class SentenceEncoder(TextEncoder):
    """A sentence-transformers BERT or XLM-R encoder, run as its modules.json says: the default prompt,
    the pooling, then its Dense and Normalize modules. A final Normalize is left to the server, which
    slices the vector to the requested `dim` first."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(checkpoint, device, dtype)
        assert checkpoint.sentence is not None
        self.sentence = sentence = checkpoint.sentence
        # As sentence-transformers: max_seq_length, else the tokenizer's limit within the position table.
        self.max_length = sentence.max_length or min(int(self.tokenizer.model_max_length), self.max_length)
        if sentence.lower_case:
            # Where sentence-transformers puts it: in front of the tokenizer's own normalisation.
            backend = self.tokenizer.backend_tokenizer
            backend.normalizer = normalizers.Sequence(
                [normalizers.Lowercase(), *([backend.normalizer] if backend.normalizer else [])])
        self._prompt_tokens = self._count_prompt_tokens() if not sentence.include_prompt else 0
        after = list(sentence.after_pooling)
        self.normalize = bool(after) and isinstance(after[-1], Normalize)
        if self.normalize:
            after.pop()
        self._steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for step in after:
            if isinstance(step, Dense):
                self._steps.append(self._dense(step))
                self.hidden_size = step.out_features  # what the server, the worker and SQL see as the width
            else:
                self._steps.append(lambda x: F.normalize(x, p=2.0, dim=-1))

    def describe(self) -> dict[str, Any]:
        sentence = self.sentence
        prompt = ({"name": sentence.prompt_name, "text": sentence.prompt, "pooled": sentence.include_prompt}
                  if sentence.prompt else None)
        # mgte applies the default prompt to every text; the others cannot be chosen per request.
        unused = {name: text for name, text in sentence.prompts.items() if name != sentence.prompt_name}
        return {**super().describe(), "pooling": sentence.pooling, "modules": sentence.modules,
                "prompt": prompt, "unused_prompts": unused}

    def tokenize(self, texts: Sequence[str]) -> list[Tokens]:
        return super().tokenize([self.sentence.prompt + text for text in texts])

    @torch.inference_mode()
    def forward(self, batch: Sequence[Sequence[int]]) -> list[EmbeddingOutput]:
        input_ids, mask = self._padded(batch)
        mask = mask.to(self.device)
        hidden = self.module(input_ids=input_ids.to(self.device), attention_mask=mask).last_hidden_state.float()
        pooled = _pool(hidden, mask, self.sentence.pooling, self._prompt_tokens)
        for step in self._steps:
            pooled = step(pooled)
        return [EmbeddingOutput(state, None) for state in pooled.cpu()]

    def _count_prompt_tokens(self) -> int:
        """The prompt's length as sentence-transformers counts it: tokenised alone, the leading special
        token included, a trailing one not."""
        if not self.sentence.prompt:
            return 0
        ids = self.tokenizer(self.sentence.prompt, truncation=True, max_length=self.max_length)["input_ids"]
        return len(ids) - (1 if ids and ids[-1] in self.tokenizer.all_special_ids else 0)

    def _dense(self, dense: Dense) -> Callable[[torch.Tensor], torch.Tensor]:
        """The layer as a function on float32 vectors of `hidden_size` values."""
        weights = safetensors.torch.load_file(dense.weights, device=str(self.device))
        expected: dict[str, tuple[int, ...]] = {"linear.weight": (dense.out_features, dense.in_features)}
        if dense.bias:
            expected["linear.bias"] = (dense.out_features,)
        shapes = {name: tuple(tensor.shape) for name, tensor in weights.items()}
        if dense.in_features != self.hidden_size or shapes != expected:
            raise UserError(f"{self.checkpoint.source}: the Dense layer in {dense.weights.parent.name} takes "
                            f"{dense.in_features} values, holds {shapes} and follows a {self.hidden_size}-value "
                            f"vector; expected {expected}",
                            hint="the folder is incomplete or inconsistent; save it again with sentence-transformers")
        weight, bias = weights["linear.weight"].float(), weights.get("linear.bias")
        bias = None if bias is None else bias.float()
        if dense.activation == "Tanh":
            return lambda x: torch.tanh(F.linear(x, weight, bias))
        return lambda x: F.linear(x, weight, bias)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: PoolingMode, skip: int) -> torch.Tensor:
    """sentence-transformers' Pooling of right-padded rows, leaving out the first `skip` tokens (the prompt)."""
    keep = mask.clone()
    keep[:, :skip] = 0
    if mode == "cls":
        first = keep.argmax(dim=1)  # the [CLS] token, or the first one after the prompt
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    weights = keep.unsqueeze(-1).float()
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def load_encoder(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> TextEncoder:
    if checkpoint.format == "sentence-transformers":
        return SentenceEncoder(checkpoint, device, dtype)
    return Embedder(checkpoint, device, dtype)


class Reranker(Model):
    """gte-multilingual-reranker-base: one logit per (query, document) pair."""

    def tokenize(self, query: str, documents: Sequence[str]) -> list[Tokens]:
        queries = [query] * len(documents)
        encoded = self.tokenizer(queries, list(documents), return_attention_mask=False, verbose=False)["input_ids"]
        return self._truncate(encoded, lambda idx: self.tokenizer(
            [query] * len(idx), [documents[i] for i in idx], truncation="longest_first",
            max_length=self.max_length, return_attention_mask=False, verbose=False)["input_ids"])

    @torch.inference_mode()
    def forward(self, batch: Sequence[Sequence[int]]) -> list[float]:
        input_ids, mask = self._padded(batch)
        out = self.module(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device))
        return [float(x) for x in out.logits[:, 0].float().cpu().tolist()]
