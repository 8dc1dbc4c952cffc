"""sentence-transformers folders (all-MiniLM-L6-v2, real trained weights) behind `mgte serve`, checked
against sentence-transformers itself."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

from mgte import heads
from mgte.checkpoint import load_checkpoint
from mgte.client import Client, NotSupported
from mgte.errors import UserError
from mgte.runtime import load_encoder
from mgte.server_process import ServerProcess
from tests.conftest import running_server
from tests.sentence_folders import MINILM, build, edit_json, linked_copy, reference

TEXTS = ["A man is eating food.", "Someone is having a meal.", "The stock market fell sharply today.",
         "word " * 300]  # beyond MiniLM's 256 tokens: both cut it the same way
QUERY = "Represent this sentence for searching relevant passages: "


def assert_like_sentence_transformers(vectors: torch.Tensor, folder: Path, texts: list[str] = TEXTS) -> None:
    expected = reference(folder, texts)
    cosine = F.cosine_similarity(vectors, expected)
    assert bool((cosine >= 0.9999).all()), cosine
    torch.testing.assert_close(vectors.norm(dim=1), expected.norm(dim=1), rtol=1e-4, atol=1e-6)


def served(server: ServerProcess, texts: list[str] = TEXTS) -> torch.Tensor:
    with server.client() as client:
        dense = client.encode(texts).dense
    assert dense is not None
    return torch.tensor(dense)


def in_process(folder: Path, texts: list[str] = TEXTS) -> torch.Tensor:
    """What the server computes, without starting one."""
    encoder = load_encoder(load_checkpoint(str(folder), "embedding"), torch.device("cpu"), torch.float32)
    outputs = encoder.forward([tokens.ids for tokens in encoder.tokenize(texts)])
    return heads.dense(torch.stack([out.state for out in outputs]), None, encoder.normalize)


@pytest.fixture(scope="module")
def minilm() -> Iterator[ServerProcess]:
    with running_server(MINILM) as running:
        yield running


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mean pooling, a 384->256 Tanh Dense layer, Normalize; no pooler weights."""
    return build(tmp_path_factory.mktemp("st") / "dense", dense=(256, torch.nn.Tanh()), strip_pooler=True)


@pytest.fixture(scope="module")
def dense_server(dense_folder: Path) -> Iterator[ServerProcess]:
    with running_server(dense_folder) as running:
        yield running


@pytest.fixture(scope="module")
def prompt_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Max pooling without the default prompt's tokens, no Normalize."""
    return build(tmp_path_factory.mktemp("st") / "prompt", "max", normalize=False, include_prompt=False,
                 prompts={"query": QUERY, "passage": "passage: ", "document": ""}, default_prompt="query")


@pytest.fixture(scope="module")
def prompt_server(prompt_folder: Path) -> Iterator[ServerProcess]:
    with running_server(prompt_folder) as running:
        yield running


def test_minilm_like_sentence_transformers(minilm: ServerProcess) -> None:
    vectors = served(minilm)
    assert_like_sentence_transformers(vectors, MINILM)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]  # trained weights: meaning, not noise
    assert "pooler" not in minilm.log_text()  # its unused pooler weights are no cause for a warning


def test_info_and_limits(minilm: ServerProcess) -> None:
    with minilm.client() as client:
        model = client.info()["model"]
        assert (model["format"], model["pooling"], model["sparse"], model["normalized"]) == (
            "sentence-transformers", "mean", False, True)
        assert model["modules"] == ["Transformer", "Pooling", "Normalize"]
        assert (model["prompt"], model["unused_prompts"]) == (None, {})
        assert model["hidden_size"] == 384 and model["max_length"] == 256  # sentence_bert_config.json
        result = client.encode(["word " * 300])
        assert result.truncated == [0] and result.tokens[0] == 302


def test_dense_layer_without_pooler_weights(dense_folder: Path, dense_server: ServerProcess) -> None:
    assert not any(key.startswith("pooler.") for key in load_file(dense_folder / "model.safetensors"))
    assert_like_sentence_transformers(served(dense_server), dense_folder)
    with dense_server.client() as client:
        model = client.info()["model"]
        assert model["modules"] == ["Transformer", "Pooling", "Dense", "Normalize"]
        assert (model["hidden_size"], model["normalized"]) == (256, True)  # the Dense layer's output
        short = torch.tensor(client.embed(TEXTS[:2], dim=64))
    torch.testing.assert_close(short, F.normalize(served(dense_server, TEXTS[:2])[:, :64], dim=-1),
                               rtol=0, atol=1e-6)


def test_default_prompt_left_out_of_max_pooling(prompt_folder: Path, prompt_server: ServerProcess) -> None:
    vectors = served(prompt_server)
    assert_like_sentence_transformers(vectors, prompt_folder)
    with prompt_server.client() as client:
        model = client.info()["model"]
        assert (model["pooling"], model["normalized"]) == ("max", False)
        assert model["prompt"] == {"name": "query", "text": QUERY, "pooled": False}
        assert model["unused_prompts"] == {"passage": "passage: "}  # mgte cannot apply them per request
        counted = client.encode(["word"]).tokens[0]
    assert counted == len(transformers.AutoTokenizer.from_pretrained(prompt_folder)(QUERY + "word")["input_ids"])


def test_cls_pooling_after_the_prompt_and_an_identity_dense(tmp_path: Path) -> None:
    folder = build(tmp_path / "cls", "cls", dense=(128, torch.nn.Identity()), include_prompt=False,
                   prompts={"query": QUERY}, default_prompt="query")
    assert_like_sentence_transformers(in_process(folder, TEXTS[:3]), folder, TEXTS[:3])


def test_mean_pooling_without_the_prompt(tmp_path: Path) -> None:
    folder = build(tmp_path / "mean", include_prompt=False, prompts={"query": QUERY}, default_prompt="query")
    vectors = in_process(folder, TEXTS[:3])
    assert_like_sentence_transformers(vectors, folder, TEXTS[:3])
    with_prompt = build(tmp_path / "pooled", prompts={"query": QUERY}, default_prompt="query")
    assert float(F.cosine_similarity(vectors, in_process(with_prompt, TEXTS[:3])).min()) < 0.999  # it matters


def test_encoder_in_a_subfolder(tmp_path: Path) -> None:
    """Older saves keep the encoder in 0_Transformer, with its sentence_bert_config.json."""
    folder = linked_copy(tmp_path / "old")
    (folder / "0_Transformer").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "sentence_bert_config.json"):
        (folder / name).rename(folder / "0_Transformer" / name)
    edit_json(folder / "modules.json", lambda modules: [{**modules[0], "path": "0_Transformer"}, *modules[1:]])
    assert_like_sentence_transformers(in_process(folder, TEXTS[:3]), folder, TEXTS[:3])


def test_do_lower_case(tmp_path: Path) -> None:
    folder = linked_copy(tmp_path / "cased")
    # A cased tokenizer, lower-cased by the Transformer module: as MiniLM's own uncased one.
    edit_json(folder / "tokenizer_config.json", lambda config: {**config, "do_lower_case": False})
    edit_json(folder / "sentence_bert_config.json", {"max_seq_length": 256, "do_lower_case": True})
    texts = ["THE STOCK MARKET FELL.", "A Man Is Eating Food."]
    vectors = in_process(folder, texts)
    assert_like_sentence_transformers(vectors, folder, texts)
    torch.testing.assert_close(vectors, in_process(MINILM, texts), rtol=0, atol=1e-5)


def test_other_missing_weights_are_refused(tmp_path: Path) -> None:
    folder = linked_copy(tmp_path / "broken")
    weights = load_file(MINILM / "model.safetensors")
    (folder / "model.safetensors").unlink()
    save_file({k: v for k, v in weights.items() if "layer.0.output" not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"weights missing or of the wrong shape: .*layer\.0\.output"):
        load_encoder(load_checkpoint(str(folder), "embedding"), torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(("module_type", "named"), [
    ("sentence_transformers.models.LayerNorm", "sentence_transformers.models.LayerNorm"),
    ("sentence_transformers.sentence_transformer.modules.layer_norm.LayerNorm", "layer_norm.LayerNorm"),
    ("my_package.CustomPooling", "my_package.CustomPooling"),
])
def test_unsupported_module_is_refused_by_name(tmp_path: Path, module_type: str, named: str) -> None:
    folder = linked_copy(tmp_path / "layernorm")
    edit_json(folder / "modules.json", lambda modules: [
        *modules[:2], {"idx": 2, "name": "2", "path": "2_LayerNorm", "type": module_type}, *modules[2:]])
    with pytest.raises(UserError, match=f"module '.*{named}' in modules.json is not supported"):
        load_checkpoint(str(folder), "embedding")


@pytest.mark.parametrize(("pooling", "named"), [
    ({"pooling_mode": "weightedmean"}, "pooling weightedmean"),
    ({"pooling_mode": ["cls", "mean"]}, "pooling cls [+] mean"),
    ({"pooling_mode_mean_sqrt_len_tokens": True}, "pooling mean_sqrt_len_tokens"),
    ({"pooling_mode": "lasttoken"}, "pooling lasttoken"),
])
def test_unsupported_pooling_is_refused_by_name(tmp_path: Path, pooling: dict[str, object], named: str) -> None:
    folder = linked_copy(tmp_path / "pooling")
    edit_json(folder / "1_Pooling" / "config.json", {"embedding_dimension": 384, **pooling})
    with pytest.raises(UserError, match=f"{named} is not supported"):
        load_checkpoint(str(folder), "embedding")


def test_unsupported_dense_is_refused(tmp_path: Path) -> None:
    folder = build(tmp_path / "relu", dense=(32, torch.nn.ReLU()))
    refused = re.escape("Dense activation 'torch.nn.modules.activation.ReLU' is not supported")
    with pytest.raises(UserError, match=refused):
        load_checkpoint(str(folder), "embedding")
    edit_json(folder / "2_Dense" / "config.json",
              lambda config: {**config, "activation_function": "torch.nn.modules.activation.Tanh"})
    weights = folder / "2_Dense" / "model.safetensors"
    torch.save(load_file(weights), folder / "2_Dense" / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(UserError, match=r"has only pickled pytorch_model\.bin weights") as raised:
        load_checkpoint(str(folder), "embedding")
    assert "never unpickles" in str(raised.value.hint)


def test_unknown_default_prompt_is_refused(tmp_path: Path) -> None:
    folder = linked_copy(tmp_path / "prompt")
    edit_json(folder / "config_sentence_transformers.json", {"prompts": {"query": "q: "}, "default_prompt_name": "qa"})
    with pytest.raises(UserError, match="default_prompt_name 'qa' is not one of the prompts"):
        load_checkpoint(str(folder), "embedding")


def test_sparse_is_not_supported_by_this_model(minilm: ServerProcess) -> None:
    with minilm.client() as client, pytest.raises(NotSupported, match="not supported by this model") as raised:
        client.sparse(["hello"])
    assert raised.value.sqlstate == "0A000"
    with minilm.client() as client, pytest.raises(NotSupported, match="no reranker loaded"):
        client.rerank("q", ["d"])


def test_not_a_reranker() -> None:
    done = subprocess.run([sys.executable, "-m", "mgte", "serve", "--model", "tiny", "--reranker", str(MINILM)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "is a sentence-transformers embedding model, not a reranker" in done.stderr


def test_the_mgte_model_reports_its_sparse_output(client: Client) -> None:
    assert client.info()["model"]["sparse"] is True  # the mGTE server beside it still has sparse output

