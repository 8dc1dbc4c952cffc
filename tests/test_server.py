"""`mgte serve` as a real process: outputs, robustness against bad input, limits, lifecycle."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from mgte import heads
from mgte.client import Client, InputRejected, NotSupported, Overloaded, TooLarge
from mgte.server_process import ServerProcess
from mgte_udf import protocol
from tests.conftest import Checkpoints, running_server, shared_tempdir, start_server

TEXTS = ["¿Dónde está la estación de tren?", "北京欢迎你。北京是中国的首都。", "مرحبا بالعالم", "",
         "Glaciers in the Alps are melting faster every decade, and the sea level rises."]


def raw_request(path: Path, data: bytes) -> tuple[dict[str, Any] | None, bool]:
    """Sends raw bytes; returns the reply header (if any) and whether the server hung up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        try:
            prefix = _recv(sock, 16)
        except ConnectionError:
            return None, True
        _, _, json_length, payload_length = protocol.parse_prefix(prefix, 1 << 30, 1 << 30)
        header = protocol.decode_header(_recv(sock, json_length))
        _recv(sock, payload_length)
        sock.settimeout(0.5)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return header, closed


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError
        data += chunk
    return data


def request_frame(header: dict[str, Any]) -> bytes:
    return protocol.encode(protocol.REQUEST, header)


# --- outputs --------------------------------------------------------------------

def test_outputs_equal_a_direct_transformers_call(client: Client, checkpoints: Checkpoints) -> None:
    model = transformers.GteForTokenClassification.from_pretrained(checkpoints.embedding_native).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints.embedding_native)
    dense = client.embed(TEXTS)
    sparse = client.encode(TEXTS, dense=False, sparse_ids=True).sparse_ids
    strings = client.sparse(TEXTS)
    assert sparse is not None
    for text, vector, weights, by_string in zip(TEXTS, dense, sparse, strings, strict=True):
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        expected = torch.nn.functional.normalize(out.hidden_states[-1][0, 0], dim=-1)
        torch.testing.assert_close(torch.tensor(vector), expected, rtol=0, atol=1e-5)
        token_weights = torch.relu(out.logits[0, :, 0]).tolist()
        want: dict[int, float] = {}
        for token_id, weight in zip(ids, token_weights, strict=True):
            if token_id not in (0, 1, 2, 3) and weight > 0:
                want[token_id] = max(weight, want.get(token_id, 0.0))
        assert sorted(weights) == sorted(want)
        for token_id, weight in want.items():
            assert weights[token_id] == pytest.approx(weight, abs=1e-5)
        want_strings: dict[str, float] = {}
        for token_id, weight in want.items():
            token = str(tokenizer.decode([token_id]))
            want_strings[token] = max(weight, want_strings.get(token, 0.0))
        assert by_string.keys() == want_strings.keys()


def test_rerank_equals_a_direct_transformers_call(client: Client, checkpoints: Checkpoints) -> None:
    model = transformers.GteForSequenceClassification.from_pretrained(checkpoints.reranker_native).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints.reranker_native)
    query = "¿Dónde está la estación?"
    scores = client.rerank(query, TEXTS)
    probabilities = client.rerank(query, TEXTS, sigmoid=True)
    for text, score, probability in zip(TEXTS, scores, probabilities, strict=True):
        with torch.no_grad():
            # The model card's batch form: a lone call would drop an empty document entirely.
            logit = model(**tokenizer([query], [text], return_tensors="pt")).logits[0, 0].item()
        assert score == pytest.approx(logit, abs=1e-5)
        assert probability == pytest.approx(torch.sigmoid(torch.tensor(logit)).item(), abs=1e-6)


def test_one_pass_gives_every_output_and_names_the_model(client: Client) -> None:
    both = client.encode(TEXTS, dense=True, sparse=True, sparse_ids=True, dim=8)
    assert both.dense == client.embed(TEXTS, dim=8)
    assert both.sparse == client.sparse(TEXTS)
    assert both.sparse_ids == client.encode(TEXTS, dense=False, sparse_ids=True).sparse_ids
    info = client.info()
    assert both.model == info["model"]["id"]
    assert client.score("q", ["d"]).model == info["reranker"]["id"]


def test_matryoshka_dims(client: Client) -> None:
    full = client.embed(TEXTS[:2])
    hidden = len(full[0])
    assert hidden == 32
    raw = client.info()["model"]["hidden_size"]
    assert raw == hidden
    for dim in (1, 5, hidden):
        cut = client.embed(TEXTS[:2], dim=dim)
        for vector in cut:
            assert len(vector) == dim
            assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-5)
    # Slicing the normalised full vector and normalising again is the same thing.
    torch.testing.assert_close(torch.tensor(client.embed(TEXTS[:2], dim=5)),
                               heads.dense(torch.tensor(full), 5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [0, -1, 33, 1.5, True, "8"])
def test_bad_dims_are_rejected(client: Client, dim: Any) -> None:
    with pytest.raises(InputRejected, match="dim must be an integer from 1 to 32"):
        client.embed(["x"], dim=dim)


def test_truncation_reported(client: Client) -> None:
    result = client.encode(["short", "a " * 9000, "b"], dense=True)
    assert result.truncated == [1]
    assert result.tokens[1] == 9002
    with pytest.warns(UserWarning, match="1 of 2 inputs"):
        client.embed(["x", "a " * 9000])
    scored = client.score("q", ["fine", "a " * 9000])
    assert scored.truncated == [1]


# --- bad input never kills the server -----------------------------------------------

@pytest.mark.parametrize(("request_", "message"), [
    ({"op": "fly"}, "unknown op 'fly'"),
    ({"texts": ["x"]}, "unknown op None"),
    ({"op": "embed", "texts": "x"}, "texts must be a list"),
    ({"op": "embed", "texts": []}, "texts must not be empty"),
    ({"op": "embed", "texts": ["x", 3]}, r"texts\[1\] must be a string"),
    ({"op": "embed", "texts": ["x"], "dense": "yes"}, "dense must be true or false"),
    ({"op": "embed", "texts": ["x"], "dense": False}, "dense, sparse and/or sparse_ids"),
    ({"op": "embed", "texts": ["x"], "sparse_ids": 1}, "sparse_ids must be true or false"),
    ({"op": "embed", "texts": ["x"], "dims": 8}, "unknown field 'dims'"),
    ({"op": "rerank", "query": 1, "documents": ["x"]}, "query must be a string"),
    ({"op": "rerank", "query": "q", "documents": None}, "documents must be a list"),
])
def test_bad_requests_get_an_error_and_the_connection_stays(server: ServerProcess, request_: dict[str, Any],
                                                            message: str) -> None:
    header, closed = raw_request(server.socket, request_frame(request_))
    assert header is not None and header["ok"] is False
    assert header["error"]["code"] == "bad_request"
    import re
    assert re.search(message, header["error"]["message"])
    assert not closed


def test_lone_surrogates_are_rejected(server: ServerProcess) -> None:
    body = b'{"op":"embed","texts":["ok","\\ud800"]}'
    frame = struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, len(body), 0) + body
    header, closed = raw_request(server.socket, frame)
    assert header is not None and "texts[1] is not valid Unicode" in header["error"]["message"]
    assert not closed


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    os.urandom(64),
    struct.pack("!4sBBHII", b"MGTE", 2, 0, 0, 2, 0) + b"{}",  # a future protocol version
    struct.pack("!4sBBHII", b"MGTE", 1, 1, 0, 2, 0) + b"{}",  # a response sent as a request
    struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, 2, 5) + b"{}abcde",  # requests carry no payload
    struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, 0xFFFFFFFF, 0),  # 4 GiB announced
])
def test_garbage_gets_a_reply_and_a_hangup_and_others_are_served(server: ServerProcess, client: Client,
                                                                 garbage: bytes) -> None:
    header, closed = raw_request(server.socket, garbage)
    assert closed
    if header is not None:
        assert header["ok"] is False and header["error"]["code"] in ("protocol", "too_large")
    assert len(client.embed(["still serving"])[0]) == 32


def test_invalid_json_and_truncated_frames(server: ServerProcess, client: Client) -> None:
    body = b"{this is not json"
    header, closed = raw_request(server.socket, struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, len(body), 0) + body)
    assert header is not None and header["error"]["code"] == "bad_request" and not closed
    # A frame cut short, then the client disappears: the server just drops the connection.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(server.socket))
        sock.sendall(struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, 1000, 0) + b'{"op":')
    assert client.health()["ok"] is True


def test_request_limits(checkpoints: Checkpoints) -> None:
    with running_server(checkpoints.embedding_native, "--max-request-texts", "3",
                        "--max-request-bytes", "4096", "--max-queue-texts", "3") as small:
        header, closed = raw_request(small.socket, request_frame({"op": "embed", "texts": ["a"] * 4}))
        assert header is not None and header["error"]["code"] == "too_large" and not closed
        assert "4 texts in one request; the limit is 3" in header["error"]["message"]
        header, closed = raw_request(small.socket, request_frame({"op": "embed", "texts": ["a" * 5000]}))
        assert header is not None and header["error"]["code"] == "too_large" and closed
        with small.client() as client:
            # The client splits what the server would refuse, and the answers are the same.
            texts = [f"text number {i}" for i in range(10)]
            assert client.embed(texts) == [client.embed([t])[0] for t in texts]
            with pytest.raises(TooLarge):
                client.embed(["x" * 5000])


def test_connection_limit(checkpoints: Checkpoints) -> None:
    with (running_server(checkpoints.embedding_native, "--max-connections", "2") as small,
          small.client() as first, small.client() as second, small.client() as third):
        first.health()
        second.health()
        with pytest.raises(Overloaded, match="2 connections are open") as raised:
            third.health()
        assert raised.value.hint is not None and "--max-connections" in raised.value.hint
        second.close()
        time.sleep(0.2)
        assert third.health()["ok"]
        assert first.info()["refused_connections"] == 1


def test_no_reranker_loaded(checkpoints: Checkpoints) -> None:
    with running_server(checkpoints.embedding_native) as plain, plain.client() as client:
        with pytest.raises(NotSupported, match="no reranker loaded") as raised:
            client.rerank("q", ["d"])
        assert raised.value.hint is not None and "--reranker" in raised.value.hint
        assert client.info()["reranker"] is None


def test_full_queue_answers_overloaded_at_once(checkpoints: Checkpoints) -> None:
    # One round takes all of the long request (the batch budget is large), so the queue is
    # empty while the model works on it; the filler then fills the queue to its limit.
    with running_server(checkpoints.embedding_native, "--max-queue-texts", "16",
                        "--max-request-texts", "16", "--max-batch-tokens", "65536") as busy:
        long_texts = ["a " * 8000] * 16  # keeps the model thread busy for seconds
        results: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: results.setdefault("long", busy.client(60).embed(long_texts)))
        worker.start()
        time.sleep(0.3)
        with busy.client() as filler, busy.client() as other:
            filled = threading.Thread(target=lambda: results.setdefault("fill", filler.embed(["b"] * 16)))
            filled.start()
            deadline = time.monotonic() + 10
            while other.info()["queued_texts"] < 16 and time.monotonic() < deadline:
                time.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(Overloaded, match="overloaded"):
                other.embed(["one more"])
            assert time.monotonic() - started < 1.0
            filled.join()
            worker.join()
            assert len(results["long"]) == 16 and len(results["fill"]) == 16
            info = other.info()
            assert info["batching"]["rejected_overloaded"] >= 1
            assert info["errors"]["overloaded"] >= 1


# --- lifecycle ------------------------------------------------------------------

def test_info_reports_models_limits_and_counters(client: Client) -> None:
    client.embed(["count me"])
    info = client.info()
    assert info["protocol_version"] == protocol.PROTOCOL_VERSION
    assert info["model"]["kind"] == "embedding" and info["model"]["max_length"] == 8192
    assert info["reranker"]["kind"] == "reranker"
    assert info["limits"]["max_request_texts"] == 1024
    assert info["requests"]["embed"] >= 1
    assert info["batching"]["sequences"] >= 1 and info["batching"]["batches"] >= 1


def test_socket_is_owner_and_group_only(server: ServerProcess) -> None:
    assert stat.S_IMODE(server.socket.stat().st_mode) == 0o660


def test_stale_socket_is_replaced_and_a_live_one_is_not(checkpoints: Checkpoints) -> None:
    directory = shared_tempdir("mgte-stale-")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(directory / "mgte.sock"))
    stale.close()  # leaves the file behind, as a killed server does
    first = start_server(checkpoints.embedding_native, socket_dir=directory)
    try:
        with first.client() as client:
            assert client.health()["ok"]
        second = start_server_expecting_failure(checkpoints, directory)
        assert "already listening" in second
    finally:
        first.stop()


def start_server_expecting_failure(checkpoints: Checkpoints, directory: Path) -> str:
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "mgte", "serve", "--model", str(checkpoints.embedding_native),
                           "--socket", str(directory / "mgte.sock")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    return done.stderr


def test_sigterm_finishes_work_in_flight(checkpoints: Checkpoints) -> None:
    server = start_server(checkpoints.embedding_native)
    results: dict[str, Any] = {}

    def call() -> None:
        with server.client(60) as client:
            results["vectors"] = client.embed(["a " * 8000] * 8)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 10
    with server.client() as watcher:
        while watcher.info()["requests"]["embed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    worker.join(60)
    assert server.process.wait(60) == 0
    assert len(results["vectors"]) == 8
    assert not server.socket.exists()
    assert "stopped" in server.log_text()


def test_client_reconnects_after_a_server_restart(checkpoints: Checkpoints) -> None:
    directory = shared_tempdir("mgte-restart-")
    first = start_server(checkpoints.embedding_native, socket_dir=directory)
    client = Client(str(first.socket), timeout=30)
    before = client.embed(["same text"])
    first.stop()
    second = start_server(checkpoints.embedding_native, socket_dir=directory)
    try:
        assert client.embed(["same text"]) == before
    finally:
        client.close()
        second.stop()
    assert json.dumps(before)  # plain floats
