"""The public Python client: `from mgte.client import Client`."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgte.client import Client, InputRejected, ServerUnavailable, Timeout, TruncationWarning
from mgte.server_process import ServerProcess


def test_public_api(client: Client) -> None:
    vectors = client.embed(["hello", "hola"], dim=8)
    assert len(vectors) == 2 and all(len(v) == 8 and all(isinstance(x, float) for x in v) for v in vectors)
    weights = client.sparse(["hello world", ""])
    assert all(isinstance(k, str) and w > 0 for k, w in weights[0].items())
    assert weights[1] == {}
    scores = client.rerank("query", ["a", "b", "c"])
    assert len(scores) == 3
    probabilities = client.rerank("query", ["a", "b", "c"], sigmoid=True)
    assert all(0 < p < 1 for p in probabilities)
    assert client.info()["model"]["kind"] == "embedding"


def test_same_text_same_vector_whatever_else_is_in_the_call(client: Client) -> None:
    alone = client.embed(["the same text"])[0]
    together = client.embed(["something else entirely, and longer than the other one", "the same text"])[1]
    assert together == pytest.approx(alone, abs=1e-6)


def test_a_bare_string_is_a_type_error_not_a_list_of_characters(client: Client) -> None:
    with pytest.raises(TypeError, match="wrap one text in a list"):
        client.embed("hello")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        client.embed(["ok", None])  # type: ignore[list-item]
    with pytest.raises(InputRejected, match="must not be empty"):
        client.embed([])
    with pytest.raises(InputRejected, match=r"texts\[0\] is not valid Unicode"):
        client.embed(["\ud800"])
    with pytest.raises(InputRejected, match="query is not valid Unicode"):
        client.rerank("\udfff", ["d"])


def test_truncation_warns(client: Client) -> None:
    with pytest.warns(TruncationWarning, match=r"1 of 1 inputs .* truncated \(indices \[0\]\)"):
        client.sparse(["word " * 9000])


def test_unreachable_server_says_where_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ServerUnavailable, match=r"not reachable at .*nowhere\.sock: no such socket") as raised:
        Client(str(tmp_path / "nowhere.sock")).embed(["x"])
    assert raised.value.hint is not None and "mgte serve --socket" in raised.value.hint
    assert raised.value.sqlstate == "08006"


def test_timeout(server: ServerProcess) -> None:
    with server.client(timeout=0.5) as impatient:
        impatient.embed(["quick"])
        with pytest.raises(Timeout, match=r"did not answer within 0\.5 s") as raised:
            impatient.embed(["a " * 8000] * 16)
    assert raised.value.sqlstate == "57014"
    with server.client() as patient:
        assert patient.health()["ok"]


def test_bad_timeout_value() -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        Client("/tmp/x.sock", timeout=0)
