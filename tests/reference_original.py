"""An independent re-implementation of the ORIGINAL mGTE forward pass ("new" remote code),
written from MODEL.md and the original modelling code, in float64.

It reads the original-format checkpoint directly (packed qkv, packed up|gate, ntk rope from
the original config), so comparing the server against it checks the config translation
and the weight renaming, not just that two paths through transformers agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


class OriginalGte:
    def __init__(self, path: Path) -> None:
        self.config = json.loads((path / "config.json").read_text())
        self.w = {k: v.double() for k, v in load_file(str(path / "model.safetensors")).items()}

    def hidden_states(self, ids: list[int]) -> torch.Tensor:
        c, w = self.config, self.w
        hidden, heads = c["hidden_size"], c["num_attention_heads"]
        d = hidden // heads
        eps = c["layer_norm_eps"]

        def ln(x: torch.Tensor, name: str) -> torch.Tensor:
            return torch.nn.functional.layer_norm(x, (hidden,), w[f"{name}.weight"], w[f"{name}.bias"], eps)

        x = w["new.embeddings.word_embeddings.weight"][ids] + w["new.embeddings.token_type_embeddings.weight"][0]
        x = ln(x, "new.embeddings.LayerNorm")

        # NTKScalingRotaryEmbedding without mixed_b: base theta*f, then divided by f^(2/d).
        f = c["rope_scaling"]["factor"]
        base = c["rope_theta"] * f
        inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)) / f ** (2 / d)
        freqs = torch.outer(torch.arange(len(ids), dtype=torch.float64), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]

        def rotate_half(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([-t[..., d // 2:], t[..., : d // 2]], dim=-1)

        for i in range(c["num_hidden_layers"]):
            p = f"new.encoder.layer.{i}."
            qkv = x @ w[p + "attention.qkv_proj.weight"].T + w[p + "attention.qkv_proj.bias"]
            q, k, v = (t.reshape(len(ids), heads, d) for t in qkv.split(hidden, dim=-1))
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
            context = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v).reshape(len(ids), hidden)
            attention = context @ w[p + "attention.o_proj.weight"].T + w[p + "attention.o_proj.bias"]
            x = ln(x + attention, p + "attn_ln")
            up, gate = (x @ w[p + "mlp.up_gate_proj.weight"].T).split(c["intermediate_size"], dim=-1)
            mlp = (torch.nn.functional.gelu(gate) * up) @ w[p + "mlp.down_proj.weight"].T + w[p + "mlp.down_proj.bias"]
            x = ln(x + mlp, p + "mlp_ln")
        return x

    def token_weights(self, ids: list[int]) -> torch.Tensor:
        """The sparse head before filtering: relu(classifier(h_t)) for every token."""
        h = self.hidden_states(ids)
        return torch.relu(h @ self.w["classifier.weight"].T + self.w["classifier.bias"])[:, 0]

    def rerank_logit(self, ids: list[int]) -> float:
        h = self.hidden_states(ids)
        pooled = torch.tanh(h[0] @ self.w["new.pooler.dense.weight"].T + self.w["new.pooler.dense.bias"])
        return float(pooled @ self.w["classifier.weight"][0] + self.w["classifier.bias"][0])
