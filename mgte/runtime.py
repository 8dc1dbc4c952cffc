"""The models in memory: tokenising with truncation reported, and running batches (the mGTE
models unpadded, mgte.packed; short batches on a GPU as CUDA graphs, mgte.cuda_graphs).

The server's batcher decides what goes into a batch; this module only runs one.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
import transformers
from tokenizers import normalizers

from mgte import cuda_graphs, heads, packed
from mgte.checkpoint import Checkpoint, Dense, Normalize, PoolingMode
from mgte.errors import UserError
from mgte.gte_config import GTE_CLASS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The torch.cpu.get_capabilities() keys under which oneDNN runs bf16 matmuls in hardware; without
# them bf16 is emulated (~0.13x float32 on AVX2-only machines, DESIGN.md).
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")
# bf16 against float32 on the full-size model: min cos 0.99990 over the probe tokens (0.9997 on the
# tiny test models); a result below this means the model or the kernels misbehave in bf16.
BF16_MIN_COS = 0.999
# Compiled against eager layers, float32: they differ by summation order only (~3e-6 measured).
COMPILE_MIN_COS = 0.99999
# Short, multilingual, several scripts: the parity check costs a few seconds at start-up on 2 CPU cores.
PROBE_TEXTS = ("Where is the train station?", "¿Dónde está la estación de tren?", "北京的火车站在哪里",
               "مرحبا بالعالم، أين محطة القطار؟", "Der Gletscher schmilzt, und der Meeresspiegel steigt.",
               "Москва — столица России.", "東京駅はどこですか")

log = logging.getLogger("mgte.runtime")


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


@dataclass(frozen=True)
class AutoDtype:
    """`--dtype auto`, settled by the model once loaded: on CUDA bfloat16 where the GPU has it, else
    float16; on CPU bfloat16 only where the CPU runs it natively AND it matches float32 on PROBE_TEXTS
    (min cos of the final token states >= min_cos), else float32."""

    capabilities: Mapping[str, Any] | None = None  # None: torch.cpu.get_capabilities(); tests inject others
    min_cos: float = BF16_MIN_COS


def native_bf16(capabilities: Mapping[str, Any] | None = None) -> list[str]:
    """The NATIVE_BF16 features this CPU has, as this torch build reports them; empty: bf16 is emulated."""
    found = torch.cpu.get_capabilities() if capabilities is None else capabilities
    return [name for name in NATIVE_BF16 if found.get(name, False)]


def resolve_dtype(spec: str, device: torch.device, capabilities: Mapping[str, Any] | None = None,
                  ) -> torch.dtype | AutoDtype:
    if spec == "auto":
        return AutoDtype(capabilities)
    if spec not in DTYPES:
        raise UserError(f"unknown dtype {spec!r}", hint=f"use auto or one of {', '.join(DTYPES)}")
    dtype = DTYPES[spec]
    if dtype == torch.bfloat16 and device.type == "cpu" and not native_bf16(capabilities):
        log.warning("--dtype bfloat16: this CPU has no native bf16 (capability %s, no %s), so bf16 matmuls are "
                    "emulated, several times slower than float32 (about 0.13x on AVX2-only machines); "
                    "use --dtype auto or --dtype float32", torch.backends.cpu.get_cpu_capability(),
                    " or ".join(NATIVE_BF16))
    return dtype


def _initial_dtype(dtype: torch.dtype | AutoDtype, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype to load the weights in, and why; `auto` on CPU loads float32 and may switch to bf16 after."""
    if not isinstance(dtype, AutoDtype):
        name = str(dtype).removeprefix("torch.")
        if dtype == torch.bfloat16 and device.type == "cpu" and not native_bf16():
            return dtype, f"requested: {name}, emulated: this CPU has no native bf16"
        return dtype, f"requested: {name}"
    if device.type != "cuda":
        return torch.float32, "auto: float32 on this device"
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, "auto: bfloat16, which this GPU supports"
    return torch.float16, "auto: float16, this GPU has no bfloat16"


class Model:
    """A checkpoint's tokenizer and network on one device. Not thread-safe: one batch at a time."""

    unpadded = False  # whether forward runs the GTE encoder unpadded (mgte.packed)

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype | AutoDtype,
                 compile: bool = False) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.dtype, self.dtype_reason = _initial_dtype(dtype, device)
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
            checkpoint.encoder_path, config=checkpoint.config, dtype=self.dtype, attn_implementation="sdpa",
            output_loading_info=True, trust_remote_code=False, **options)
        if loading["missing_keys"] or loading.get("mismatched_keys"):
            missing = sorted(loading["missing_keys"]) + [str(k) for k in loading.get("mismatched_keys", [])]
            raise UserError(f"{checkpoint.source}: weights missing or of the wrong shape: {', '.join(missing[:8])}",
                            hint="the checkpoint is incomplete or of another architecture; download it again")
        self.module = module.to(device).eval()
        if isinstance(dtype, AutoDtype) and device.type == "cpu":
            self._choose_cpu_dtype(dtype)
        self.graphs: cuda_graphs.ShortBatches | None = None
        self.graphs_reason = "off: this model runs padded batches"
        log.info("%s runs in %s (%s)", checkpoint.source, str(self.dtype).removeprefix("torch."), self.dtype_reason)
        self.compiled, self.compile_reason = False, "off: not asked for (mgte serve --compile on)"
        if compile:
            self._compile()

    def _compile(self) -> None:
        """Turns packed's compiled steps on, compiling them now, on probe texts, so that no request
        waits for it; off, and why, where that fails or the result strays from the eager layers'."""
        if not self.unpadded:
            self.compile_reason = "off: this model runs transformers' padded modules"
            return
        if self.device.type != "cpu":
            self.compile_reason = f"off: --compile is for CPUs; this model runs on {self.device.type}"
            return
        probe = packed.pack([ids[:self.max_length] for ids in self.tokenizer(list(PROBE_TEXTS))["input_ids"]])
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                compiled = packed.encode(self.module.gte, probe, packed.SDPA, compiled=True).float()
                eager = packed.encode(self.module.gte, probe, packed.SDPA).float()
        except Exception as exc:  # inductor fails in many ways: no C++ compiler, a backend error
            first_line = next(iter(str(exc).strip().splitlines()), "")
            self.compile_reason = f"off: compiling failed ({type(exc).__name__}: {first_line})"
            log.warning("%s: --compile %s; running eagerly", self.checkpoint.source, self.compile_reason)
            return
        cos = float(F.cosine_similarity(compiled, eager, dim=-1).min())
        least = COMPILE_MIN_COS if self.dtype == torch.float32 else BF16_MIN_COS
        if cos < least:
            self.compile_reason = f"off: compiled parity min cos {cos:.6f} against the eager layers, below {least}"
            log.warning("%s: --compile %s; running eagerly", self.checkpoint.source, self.compile_reason)
            return
        self.compiled = True
        self.compile_reason = (f"on: torch.compile (inductor), compiled in {time.perf_counter() - started:.0f} s; "
                               f"parity min cos {cos:.6f} against the eager layers")
        log.info("%s: %s", self.checkpoint.source, self.compile_reason)

    def _choose_cpu_dtype(self, auto: AutoDtype) -> None:
        """Keeps the float32 module just loaded, or a bf16 copy of it where the CPU and the parity check allow."""
        native = native_bf16(auto.capabilities)
        if not native:
            self.dtype_reason = (f"auto: no native bf16 on this CPU (capability "
                                 f"{torch.backends.cpu.get_cpu_capability()}): float32")
            return
        bf16 = copy.deepcopy(self.module).to(torch.bfloat16)
        cos, tokens = self._parity(bf16)
        parity = f"bf16 parity min cos {cos:.5f} over {tokens} tokens of {len(PROBE_TEXTS)} probe texts"
        if cos < auto.min_cos:
            self.dtype_reason = (f"auto: this CPU has native bf16 ({', '.join(native)}) but {parity}, "
                                 f"below {auto.min_cos}: float32")
            return
        self.module, self.dtype = bf16, torch.bfloat16
        self.dtype_reason = f"auto: this CPU has native bf16 ({', '.join(native)}); {parity}"

    @torch.inference_mode()
    def _parity(self, other: Any) -> tuple[float, int]:
        """The lowest cosine between this module's final token states and `other`'s on PROBE_TEXTS, and
        how many tokens that covers: every head (first token, pooling, sparse weights) reads these states."""
        encoded = self.tokenizer(list(PROBE_TEXTS), padding=True, return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"].to(self.device),
                  "attention_mask": encoded["attention_mask"].to(self.device)}
        real = encoded["attention_mask"].bool().to(self.device)
        mine, theirs = (module.base_model(**inputs).last_hidden_state[real].float() for module in (self.module, other))
        return float(F.cosine_similarity(mine, theirs, dim=-1).min()), int(real.sum())

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
            "dtype_reason": self.dtype_reason,
            "kernels": {"attention": _attention(self) if self.unpadded else
                        f"{self.module.config._attn_implementation} (padded batches)",
                        "cuda_graphs": self.graphs_reason,
                        "compile": self.compile_reason,
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "threads": torch.get_num_threads()},
        }

    def forward(self, batch: Sequence[Sequence[int]]) -> list[Any]:
        raise NotImplementedError

    def computed_tokens(self, lengths: Sequence[int]) -> int:
        """The token positions forward computes for sequences of these lengths, padding included."""
        shape = cuda_graphs.bucket(lengths) if self.graphs else None
        if shape is not None:
            return shape[0] * shape[1]
        return sum(lengths) if self.unpadded else max(lengths) * len(lengths)

    def _capture_graphs(self, step: cuda_graphs.Step) -> None:
        self.graphs, self.graphs_reason = cuda_graphs.capture(step, self.device, self.tokenizer.pad_token_id)

    def _replay(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, ...] | None:
        """The captured step's outputs for `batch`, sliced to its sequences; None: run it eagerly."""
        outputs = self.graphs.run(batch) if self.graphs else None
        return None if outputs is None else tuple(out[:len(batch)] for out in outputs)

    def _truncate(self, encoded: list[list[int]], redo: Callable[[list[int]], list[list[int]]]) -> list[Tokens]:
        """Keeps inputs that fit; re-encodes the others with the tokenizer's own truncation."""
        long = [i for i, ids in enumerate(encoded) if len(ids) > self.max_length]
        out = [Tokens(ids, len(ids)) for ids in encoded]
        if long:
            for i, ids in zip(long, redo(long), strict=True):
                out[i] = Tokens(ids, len(encoded[i]))
        return out

    def _padded(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return packed.pad(batch, (len(batch), max(len(ids) for ids in batch)), self.tokenizer.pad_token_id)


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
    unpadded = True

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype | AutoDtype,
                 compile: bool = False) -> None:
        super().__init__(checkpoint, device, dtype, compile)
        tok = self.tokenizer
        self._drop_ids = torch.tensor(sorted({i for i in (tok.cls_token_id, tok.eos_token_id, tok.pad_token_id,
                                                         tok.unk_token_id) if i is not None}), device=device)
        self._capture_graphs(self._short_step)

    @torch.inference_mode()
    def forward(self, batch: Sequence[Sequence[int]]) -> list[EmbeddingOutput]:
        inputs = packed.pack(batch).to(self.device)
        replayed = self._replay(batch)
        if replayed is None:
            # The backbone and the classifier separately, unpadded: every token's state is needed.
            hidden = packed.encode(self.module.gte, inputs, _attention(self), self.compiled)
            first = hidden[inputs.starts]
            token_weights = torch.relu(_linear32(self.module.classifier, hidden)[:, 0])
        else:
            first, padded_weights = replayed
            width = padded_weights.shape[1]
            real = torch.arange(width) < torch.tensor(inputs.lengths)[:, None]
            token_weights = padded_weights[real.to(self.device)]
        sparse = heads.sparse(inputs.ids, token_weights, inputs.lengths, self._drop_ids)
        return [EmbeddingOutput(state, vector) for state, vector in zip(first.float().cpu(), sparse, strict=True)]

    def _short_step(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward's outputs on fixed padded shapes, for CUDA graphs: the first token's state and every
        position's sparse weight."""
        hidden = packed.encode_padded(self.module.gte, ids, mask)
        return hidden[:, 0].float(), torch.relu(_linear32(self.module.classifier, hidden)[..., 0])


class SentenceEncoder(TextEncoder):
    """A sentence-transformers BERT or XLM-R encoder, run as its modules.json says: the default prompt,
    the pooling, then its Dense and Normalize modules. A final Normalize is left to the server, which
    slices the vector to the requested `dim` first."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype | AutoDtype,
                 compile: bool = False) -> None:
        super().__init__(checkpoint, device, dtype, compile)
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


def load_encoder(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype | AutoDtype,
                 compile: bool = False) -> TextEncoder:
    if checkpoint.format == "sentence-transformers":
        return SentenceEncoder(checkpoint, device, dtype, compile)
    return Embedder(checkpoint, device, dtype, compile)


class Reranker(Model):
    """gte-multilingual-reranker-base: one logit per (query, document) pair."""

    unpadded = True

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype | AutoDtype,
                 compile: bool = False) -> None:
        super().__init__(checkpoint, device, dtype, compile)
        self._capture_graphs(self._short_step)

    def tokenize(self, query: str, documents: Sequence[str]) -> list[Tokens]:
        queries = [query] * len(documents)
        encoded = self.tokenizer(queries, list(documents), return_attention_mask=False, verbose=False)["input_ids"]
        return self._truncate(encoded, lambda idx: self.tokenizer(
            [query] * len(idx), [documents[i] for i in idx], truncation="longest_first",
            max_length=self.max_length, return_attention_mask=False, verbose=False)["input_ids"])

    @torch.inference_mode()
    def forward(self, batch: Sequence[Sequence[int]]) -> list[float]:
        replayed = self._replay(batch)
        if replayed is None:
            inputs = packed.pack(batch).to(self.device)
            hidden = packed.encode(self.module.gte, inputs, _attention(self), self.compiled)
            logits = self._head(hidden[inputs.starts])
        else:
            (logits,) = replayed
        return [float(x) for x in logits.cpu().tolist()]

    def _short_step(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (self._head(packed.encode_padded(self.module.gte, ids, mask)[:, 0]),)

    def _head(self, first: torch.Tensor) -> torch.Tensor:
        """GteForSequenceClassification's head on the first tokens' states: the pooler (dense, tanh),
        then the classifier; its dropout is off at inference."""
        pooler = self.module.gte.pooler
        return _linear32(self.module.classifier, pooler.activation(_linear32(pooler.dense, first)))[:, 0]


def _linear32(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer` applied in float32: the heads are small, and a bf16 logit or weight keeps only 8
    bits (a logit of 5 moves in steps of 0.03, enough to tie reranked documents)."""
    return F.linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())


def _attention(model: Model) -> str:
    """How the packed forward runs attention for this model's device and dtype (packed.VARLEN or packed.SDPA)."""
    return packed.attention_kind(model.device, model.dtype, int(model.module.gte.layers[0].self_attn.head_dim))
