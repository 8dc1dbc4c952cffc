"""The original-config translation, above all the rope conversion that silently ruins quality."""

from __future__ import annotations

import pytest

from mgte.errors import UserError
from mgte.gte_config import gte_config_from_original, kind_of, rope_parameters

# The real gte-multilingual-base settings (MODEL.md).
REAL = {
    "model_type": "new", "vocab_size": 250048, "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "max_position_embeddings": 8192, "type_vocab_size": 1, "layer_norm_eps": 1e-12, "pad_token_id": 1,
    "rope_theta": 20000, "rope_scaling": {"type": "ntk", "factor": 8.0}, "logn_attention_scale": False,
    "position_embedding_type": "rope", "pack_qkv": True,
}


def test_real_model_ntk_rope_becomes_linear_rope() -> None:
    params = rope_parameters(REAL, head_dim=64, source="real")
    assert params["rope_type"] == "linear"
    assert params["rope_theta"] == 160000.0
    assert params["factor"] == pytest.approx(8 ** (1 / 32))
    assert params["factor"] == pytest.approx(1.06714, abs=1e-5)


def test_translated_rope_gives_the_original_inverse_frequencies() -> None:
    import torch
    from transformers import GteModel

    config = gte_config_from_original(REAL | {"num_hidden_layers": 1, "vocab_size": 16}, "real")
    inv_freq = GteModel(config).rotary_emb.inv_freq.double()
    d, theta, f = 64, 20000.0, 8.0
    expected = torch.tensor([(theta * f) ** (-2 * i / d) / f ** (2 / d) for i in range(d // 2)],
                            dtype=torch.float64)
    torch.testing.assert_close(inv_freq, expected, rtol=1e-6, atol=0)


def test_no_rope_scaling_keeps_theta() -> None:
    assert rope_parameters({"rope_theta": 10000}, 64, "x") == {"rope_type": "default", "rope_theta": 10000.0}


def test_config_fields_carried_over() -> None:
    config = gte_config_from_original(REAL, "real")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (3072, 250048, 8192)
    assert config.hidden_act == "gelu" and config.layer_norm_eps == 1e-12 and config.pad_token_id == 1
    assert isinstance(config.rope_parameters, dict)
    assert config.rope_parameters["rope_theta"] == pytest.approx(160000.0)


@pytest.mark.parametrize(("change", "message"), [
    ({"rope_scaling": {"type": "ntk", "factor": 8.0, "mixed_b": 0.5}}, "rope_scaling"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"logn_attention_scale": True}, "logn_attention_scale"),
    ({"position_embedding_type": "absolute"}, "position_embedding_type"),
    ({"pack_qkv": False}, "pack_qkv"),
    ({"layer_norm_type": "rms_norm"}, "layer_norm_type"),
])
def test_settings_we_cannot_reproduce_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        gte_config_from_original(REAL | change, "odd-model")


def test_kind_from_architectures() -> None:
    assert kind_of(["NewModel", "NewForTokenClassification"]) == "embedding"
    assert kind_of(["NewForSequenceClassification"]) == "reranker"
    assert kind_of(["GteForTokenClassification"]) == "embedding"
    assert kind_of(["GteForSequenceClassification"]) == "reranker"
    assert kind_of(["BertModel"]) is None
    assert kind_of([]) is None
