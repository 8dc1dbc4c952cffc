"""transformers' GTE encoder run unpadded: a batch's sequences end to end in one [tokens, hidden] tensor.

Padding costs a whole token's work in every linear layer and LayerNorm; here the embeddings,
projections, MLPs and LayerNorms see only real tokens. Only attention needs the sequence
boundaries: PyTorch's varlen flash attention takes them as cumulative lengths on GPUs; elsewhere
each sequence's slice goes through scaled_dot_product_attention on its own. Short batches on a GPU
run the same layers on fixed padded shapes instead (`encode_padded`), to be replayed as CUDA graphs.

Everything but attention calls the loaded GteModel's own submodules, so the arithmetic is
transformers' (and follows whatever replaces a Linear, such as quantisation).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
import transformers
from transformers.models.gte.modeling_gte import GteLayer, apply_rotary_pos_emb

VARLEN = "varlen"
SDPA = "sdpa per sequence"


def _load_varlen_attn() -> Callable[..., torch.Tensor] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # older torch releases have no varlen attention
        return None
    return cast("Callable[..., torch.Tensor]", varlen_attn)  # a tuple only when asked for return_aux


_varlen_attn = _load_varlen_attn()


@dataclass(frozen=True)
class Packed:
    """A batch of token ids, end to end."""

    ids: torch.Tensor  # int64 [tokens]
    positions: torch.Tensor  # int64 [tokens]: each token's place in its own sequence
    cu_seqlens: torch.Tensor  # int32 [sequences + 1]: where each sequence starts, then the total
    lengths: list[int]

    @property
    def starts(self) -> torch.Tensor:
        """The index of each sequence's first token."""
        return self.cu_seqlens[:-1].long()

    def to(self, device: torch.device) -> Packed:
        """On a GPU, copied from pinned memory without waiting: the model thread goes on queueing kernels."""
        if device.type != "cuda":
            return self
        ids, positions, cu_seqlens = (t.pin_memory().to(device, non_blocking=True)
                                      for t in (self.ids, self.positions, self.cu_seqlens))
        return Packed(ids, positions, cu_seqlens, self.lengths)


def pack(batch: Sequence[Sequence[int]]) -> Packed:
    lengths = [len(ids) for ids in batch]
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths).cumsum(0)
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), torch.tensor(lengths))
    ids = torch.tensor(list(itertools.chain.from_iterable(batch)), dtype=torch.long)
    return Packed(ids, torch.arange(len(ids)) - starts, cu_seqlens, lengths)


def pad(batch: Sequence[Sequence[int]], shape: tuple[int, int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` right-padded into `shape` (rows, width), on the host: ids and mask. Rows past the batch
    (a CUDA-graph bucket's) get one real (pad) token, so that their attention has a key and stays
    finite; their outputs are never read."""
    ids = torch.full(shape, pad_id, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    mask[len(batch):, 0] = 1
    for row, sequence in enumerate(batch):
        ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, :len(sequence)] = 1
    return ids, mask


@functools.cache
def attention_kind(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """VARLEN where PyTorch's varlen kernel runs: CUDA, half precision, a GPU flash attention
    supports, a torch release whose varlen_attn takes the arguments encode passes. Tried once
    rather than predicted: which GPUs and head sizes it takes varies by release."""
    if device.type != "cuda" or _varlen_attn is None:
        return SDPA
    x = torch.zeros(2, 1, head_dim, device=device, dtype=dtype)
    cu_seqlens = torch.tensor([0, 1, 2], device=device, dtype=torch.int32)
    try:
        _varlen_attn(x, x, x, cu_seqlens, cu_seqlens, 1, 1, scale=1.0)  # as encode calls it
    except (RuntimeError, NotImplementedError):  # float32, or a GPU the kernel does not support
        return SDPA
    except TypeError:  # the first releases with varlen attention take no `scale`
        return SDPA
    return VARLEN


def encode(model: transformers.GteModel, packed: Packed, attention: str, compiled: bool = False) -> torch.Tensor:
    """The last hidden state of every token, [tokens, hidden]: GteModel's output for the unpadded
    positions of the same sequences padded into one batch. `packed` is on the model's device.
    `compiled` runs the element-wise work around the matmuls through torch.compile (`compiled_steps`)."""
    longest = max(packed.lengths)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if attention == VARLEN:
            assert _varlen_attn is not None
            return _varlen_attn(q, k, v, packed.cu_seqlens, packed.cu_seqlens, longest, longest, scale=scale)
        return _attention_per_sequence(q, k, v, packed.lengths, scale)

    return _layers(model, packed.ids, packed.positions, attend, compiled)


def encode_padded(model: transformers.GteModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last hidden state of right-padded rows, [rows, width, hidden], with no host synchronisation:
    fixed shapes a CUDA graph can capture (mgte.cuda_graphs). A row with no real token gives garbage."""
    rows, width = ids.shape
    keys = mask.bool()[:, None, None, :]  # [rows, 1, 1, width]: every query sees its row's real tokens

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        q, k, v = (x.view(rows, width, *x.shape[1:]).transpose(1, 2) for x in (q, k, v))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=scale).transpose(1, 2)
        return context.reshape(rows * width, *context.shape[2:])

    positions = torch.arange(width, device=ids.device).repeat(rows)
    return _layers(model, ids.reshape(-1), positions, attend).view(rows, width, -1)


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def _layers(model: transformers.GteModel, ids: torch.Tensor, positions: torch.Tensor, attend: Attend,
            compiled: bool = False) -> torch.Tensor:
    """GteModel's embeddings and layers on [tokens] ids, attention left to `attend` ([tokens, heads,
    head_dim] in and out); GteLayer.forward without the mask and dropout (inference): attention, add,
    LayerNorm (post-norm), then the gated MLP, add, LayerNorm."""
    rotate, after_attention = compiled_steps() if compiled else (apply_rotary_pos_emb, _after_attention)
    tokens = len(ids)
    hidden: torch.Tensor = model.embeddings(input_ids=ids)
    cos, sin = model.rotary_emb(hidden, positions)
    for layer in cast("list[GteLayer]", model.layers[:model.config.num_hidden_layers]):
        attn = layer.self_attn
        shape = (tokens, -1, attn.head_dim)
        q, k = rotate(attn.q_proj(hidden).view(shape), attn.k_proj(hidden).view(shape), cos, sin)
        context = attend(q, k, attn.v_proj(hidden).view(shape), attn.scaling)
        hidden = after_attention(layer, hidden, context.reshape(tokens, -1))
    return hidden


def _after_attention(layer: GteLayer, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """GteLayer after attention: the output projection, add, LayerNorm, the gated MLP, add, LayerNorm."""
    hidden = layer.post_attention_layernorm(hidden + layer.self_attn.o_proj(context))
    out: torch.Tensor = layer.post_mlp_layernorm(hidden + layer.mlp(hidden))
    return out


Steps = tuple[Callable[..., tuple[torch.Tensor, torch.Tensor]], Callable[..., torch.Tensor]]


@functools.cache
def compiled_steps() -> Steps:
    """The rotary embedding and the layer after attention through torch.compile (inductor), for any
    number of tokens: on a CPU the matmuls run at the hardware's limit, and the element-wise work
    between them (rotation, GELU, gating, adds, LayerNorm) is a fifth of the time, which inductor
    fuses. Attention stays out: it loops over the batch's sequences. Compiled on first use."""
    return (torch.compile(apply_rotary_pos_emb, dynamic=True),
            torch.compile(_after_attention, dynamic=True))


def _attention_per_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int],
                            scale: float) -> torch.Tensor:
    """[tokens, heads, head_dim] in and out; each sequence attends only to itself."""
    # A loop over the batch: a few hundred small calls, cheap next to the matmuls around them. Each
    # slice is viewed as [1, heads, length, head_dim]: given 3-d tensors, CPU SDPA falls back to its
    # unfused math kernel (30x slower at 300 tokens).
    return torch.cat([
        F.scaled_dot_product_attention(q_[None].transpose(1, 2), k_[None].transpose(1, 2), v_[None].transpose(1, 2),
                                       scale=scale)[0].transpose(0, 1)
        for q_, k_, v_ in zip(torch.split(q, lengths), torch.split(k, lengths), torch.split(v, lengths), strict=True)
    ])
