"""`mgte serve` as a real process: outputs, robustness against bad input, limits, lifecycle."""

from __future__ import annotations

import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from mgte import heads
from mgte.checkpoint import load_checkpoint
from mgte.client import Client, InputRejected, ModelFailed, NotSupported, Overloaded, TooLarge
from mgte.errors import UserError
from mgte.runtime import Embedder
from mgte.server import Limits, Server, Settings
from mgte.server_process import ServerProcess
from mgte_udf import protocol
from tests.conftest import Checkpoints, running_server, shared_tempdir, small_vocab_checkpoint, start_server

TEXTS = ["¿Dónde está la estación de tren?", "北京欢迎你。北京是中国的首都。", "مرحبا بالعالم", "",
         "Glaciers in the Alps are melting faster every decade, and the sea level rises."]


def raw_request(path: Path, data: bytes) -> tuple[dict[str, Any] | None, bool]:
    """Sends raw bytes; returns the reply header (if any) and whether the server hung up."""
    with connect(path) as sock:
        sock.sendall(data)
        try:
            header = read_reply(sock)
        except ConnectionError:
            return None, True
        return header, hung_up(sock)


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(path))
    return sock


def read_reply(sock: socket.socket) -> dict[str, Any]:
    """One response frame's header (its payload read and dropped)."""
    _, _, json_length, payload_length = protocol.parse_prefix(_recv(sock, 16), 1 << 30, 1 << 30)
    header = protocol.decode_header(_recv(sock, json_length))
    _recv(sock, payload_length)
    return header


def hung_up(sock: socket.socket) -> bool:
    """Whether the server closed the connection (it does so at once, or not at all)."""
    sock.settimeout(0.5)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


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


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.01)


# While `info` runs, its own request is pending too.
INFO_BYTES = len(request_frame({"op": "info"})) - protocol.PREFIX.size


def rss(pid: int) -> int:
    """The process's resident memory, bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


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
    assert header["error"]["code"] == "bad_request" and header["error"]["fault"] == "input"
    assert re.search(message, header["error"]["message"])
    assert not closed


def test_lone_surrogates_are_rejected(server: ServerProcess) -> None:
    body = b'{"op":"embed","texts":["ok","\\ud800"]}'
    frame = struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, len(body), 0) + body
    header, closed = raw_request(server.socket, frame)
    assert header is not None and "texts[1] is not valid Unicode" in header["error"]["message"]
    assert not closed


@pytest.mark.parametrize(("garbage", "code"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "protocol"),
    (bytes(range(0, 256, 4)), "protocol"),  # binary noise
    (struct.pack("!4sBBHII", b"MGTE", 2, 0, 0, 2, 0) + b"{}", "protocol"),  # a future protocol version
    (struct.pack("!4sBBHII", b"MGTE", 1, 1, 0, 2, 0) + b"{}", "protocol"),  # a response sent as a request
    (struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, 2, 5) + b"{}abcde", "protocol"),  # requests carry no payload
    (struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, 0xFFFFFFFF, 0), "too_large"),  # 4 GiB announced
])
def test_garbage_gets_a_reply_and_a_hangup_and_others_are_served(server: ServerProcess, client: Client,
                                                                 garbage: bytes, code: str) -> None:
    # Every one of these has a whole prefix, so every one gets the reason before the hang-up.
    header, closed = raw_request(server.socket, garbage)
    assert header is not None, "hung up without a reply"
    assert header["ok"] is False and header["error"]["code"] == code
    assert header["error"]["fault"] == ("input" if code == "too_large" else "server")
    assert closed
    assert len(client.embed(["still serving"])[0]) == 32


def test_invalid_json_and_truncated_frames(server: ServerProcess, client: Client) -> None:
    body = b"{this is not json"
    header, closed = raw_request(server.socket, struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, len(body), 0) + body)
    assert header is not None and header["error"]["code"] == "bad_request" and not closed
    # A frame cut short, then the client disappears: the server drops the connection, and the
    # bytes it had set aside for the request with it.
    with connect(server.socket) as sock:
        sock.sendall(struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, 1000, 0) + b'{"op":')
    wait_until(lambda: client.info()["pending_bytes"] == INFO_BYTES, "the cut frame's bytes to be released")
    assert client.health()["ok"] is True


def test_a_model_failure_is_a_server_fault_and_bad_input_is_not(checkpoints: Checkpoints, tmp_path: Path) -> None:
    broken = small_vocab_checkpoint(checkpoints.embedding_native, tmp_path / "small-vocab", vocab_size=1000)
    beyond = "北京欢迎你"  # token 8732 and others, past the 1000 rows; "a" is token 10
    # On the CPU an index past the table raises IndexError; on a GPU it would poison the device.
    with running_server(broken, "--device", "cpu") as server, server.client() as client:
        header, closed = raw_request(server.socket, request_frame({"op": "embed", "texts": [beyond]}))
        assert header is not None and not closed
        assert header["error"]["code"] == "model_failed" and header["error"]["fault"] == "server"
        assert "IndexError" in header["error"]["message"]
        with pytest.raises(ModelFailed, match="the model failed on this request") as failed:
            client.embed(["a", beyond])
        assert failed.value.input_fault is False
        assert len(client.embed(["a"])[0]) == 32  # the model thread and the connection live on
        header, _ = raw_request(server.socket, request_frame({"op": "embed", "texts": []}))
        assert header is not None and header["error"]["code"] == "bad_request"
        assert header["error"]["fault"] == "input"
        with pytest.raises(InputRejected) as rejected:
            client.embed(["a"], dim=0)
        assert rejected.value.input_fault is True
        assert client.info()["errors"] == {"model_failed": 2, "bad_request": 2}


def test_request_limits(checkpoints: Checkpoints) -> None:
    with running_server(checkpoints.embedding_native, "--max-request-texts", "3",
                        "--max-request-bytes", "4096", "--max-queue-texts", "3") as small:
        header, closed = raw_request(small.socket, request_frame({"op": "embed", "texts": ["a"] * 4}))
        assert header is not None and header["error"]["code"] == "too_large" and not closed
        assert "4 texts in one request; the limit is 3" in header["error"]["message"]
        header, closed = raw_request(small.socket, request_frame({"op": "embed", "texts": ["a" * 5000]}))
        assert header is not None and header["error"]["code"] == "too_large" and closed
        with small.client() as client:
            # The client splits what the server would refuse (into 4 requests of at most 3), and the
            # answers are the same. Batches of other widths may change the last bits, so within 1e-5.
            texts = [f"text number {i}" for i in range(10)]
            requests = client.info()["requests"]["embed"]
            together = client.embed(texts)
            assert client.info()["requests"]["embed"] == requests + 4
            alone = [client.embed([t])[0] for t in texts]
            torch.testing.assert_close(torch.tensor(together), torch.tensor(alone), rtol=0, atol=1e-5)
            with pytest.raises(TooLarge):
                client.embed(["x" * 5000])


def test_strings_are_counted_before_the_body_is_decoded(checkpoints: Checkpoints) -> None:
    with running_server(checkpoints.embedding_native, "--max-request-texts", "3") as small:
        # 25 strings (an unknown field's too): refused as too large, never decoded into objects.
        many = {"op": "embed", "texts": ["a"], "x": ["s"] * 20}
        header, closed = raw_request(small.socket, request_frame(many))
        assert header is not None and not closed
        assert header["error"]["code"] == "too_large"
        assert header["error"]["message"] == "the request holds 25 strings; at most 3 texts fit in one request"
        # Quotes and backslashes inside texts are no strings of their own.
        quoted = ['"' * 40, 'say "hi" \\', '\\"\\\\"']
        header, _ = raw_request(small.socket, request_frame({"op": "embed", "texts": quoted}))
        assert header is not None and header["ok"] is True and header["count"] == 3


def test_a_stalled_frame_is_cut_off_and_an_idle_connection_is_not(checkpoints: Checkpoints) -> None:
    body = request_frame({"op": "health"})
    with (running_server(checkpoints.embedding_native, "--frame-read-timeout", "1") as small,
          connect(small.socket) as idle, connect(small.socket) as in_prefix, connect(small.socket) as in_body):
        started = time.monotonic()
        in_prefix.sendall(body[:7])
        in_body.sendall(body[:20])
        for stalled in (in_prefix, in_body):
            header = read_reply(stalled)
            assert header["error"]["code"] == "protocol"
            assert header["error"]["message"] == ("incomplete request frame: the rest of it did not arrive "
                                                  "within 1 s of its first byte")
            assert hung_up(stalled)
        waited = time.monotonic() - started
        assert 0.9 < waited < 10, waited
        # Idle for longer than the deadline, but between requests: still served.
        idle.sendall(body)
        assert read_reply(idle)["ok"] is True


def test_pending_request_bytes_are_capped(checkpoints: Checkpoints) -> None:
    size = 100_000
    big = request_frame({"op": "health"})
    big = big[:8] + struct.pack("!II", size, 0) + big[16:] + b" " * (size - len(big) + 16)  # JSON allows the spaces
    with (running_server(checkpoints.embedding_native, "--max-request-bytes", str(size),
                         "--max-pending-bytes", str(size * 5 // 2), "--frame-read-timeout", "60") as small,
          small.client() as client, connect(small.socket) as first, connect(small.socket) as second):
        for stalled in (first, second):
            stalled.sendall(big[:100])  # announced and begun: both count until they are answered
        wait_until(lambda: client.info()["pending_bytes"] == 2 * size + INFO_BYTES, "two frames pending")
        assert len(client.embed(["small requests still fit"])[0]) == 32
        with connect(small.socket) as third:
            third.sendall(big)
            header = read_reply(third)
            assert header["error"]["code"] == "overloaded" and header["error"]["fault"] == "server"
            assert header["error"]["message"] == (f"mgte server overloaded: {2 * size} bytes of requests are being "
                                                  f"read or answered, and {size} more would pass the limit of "
                                                  f"{size * 5 // 2}")
            assert "--max-pending-bytes" in header["error"]["hint"]
            first.sendall(big[100:])
            assert read_reply(first)["ok"] is True
            # The refused frame was discarded whole: the same connection is in step and now fits.
            third.sendall(big)
            assert read_reply(third)["ok"] is True
        wait_until(lambda: client.info()["pending_bytes"] == size + INFO_BYTES, "the answered frames' release")


def test_a_pending_cap_below_one_request_is_refused(checkpoints: Checkpoints) -> None:
    done = subprocess.run([sys.executable, "-m", "mgte", "serve", "--model", str(checkpoints.embedding_native),
                           "--max-request-bytes", "1000", "--max-pending-bytes", "999"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert ("--max-pending-bytes (999) is below --max-request-bytes (1000): the largest request could never "
            "be read") in done.stderr


def test_a_refused_connection_discards_its_frame_as_it_arrives(checkpoints: Checkpoints) -> None:
    size = 32 << 20
    zeros = memoryview(bytes(size))
    with (running_server(checkpoints.embedding_native, "--max-connections", "1", "--max-request-bytes", str(size),
                         "--frame-read-timeout", "60") as small, small.client() as holder):
        holder.health()  # the one connection allowed
        before = rss(small.process.pid)
        refused = [connect(small.socket) for _ in range(4)]
        try:
            for sock in refused:
                sock.sendall(struct.pack("!4sBBHII", b"MGTE", 1, 0, 0, size, size))
                sock.sendall(zeros)
                sock.sendall(zeros[1:])  # all but the last byte: held, these would be 4 x 64 MiB
            grown = rss(small.process.pid) - before
            for sock in refused:
                sock.sendall(b"\0")
                error = read_reply(sock)["error"]
                assert error["code"] == "overloaded" and "1 connections are open" in error["message"]
                assert hung_up(sock)
        finally:
            for sock in refused:
                sock.close()
        assert grown < 64 << 20, f"the server grew by {grown >> 20} MiB while the refused frames arrived"
        assert holder.health()["ok"]


def test_a_model_beyond_the_protocol_limits_is_refused(checkpoints: Checkpoints, tmp_path: Path) -> None:
    embedder = Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), torch.device("cpu"),
                        torch.float32)
    embedder.max_length = protocol.MAX_TOKENS + 1  # clients would refuse its sparse answers
    limits = Limits(max_request_texts=1, max_request_bytes=1, max_queue_texts=1, max_batch_tokens=1,
                    max_connections=1, max_pending_bytes=1, frame_read_timeout=1)
    settings = Settings(socket_path=tmp_path / "mgte.sock", socket_mode=0o660, socket_group=None, limits=limits)
    with pytest.raises(UserError, match=f"reads {protocol.MAX_TOKENS + 1} tokens per input; the mgte protocol "
                                        f"carries at most {protocol.MAX_DIM} dimensions and {protocol.MAX_TOKENS}"):
        Server(settings, embedder, None)


def test_connection_limit(checkpoints: Checkpoints) -> None:
    with (running_server(checkpoints.embedding_native, "--max-connections", "2") as small,
          small.client() as first, small.client() as second, small.client() as third):
        first.health()
        second.health()
        with pytest.raises(Overloaded, match="2 connections are open") as raised:
            third.health()
        assert raised.value.hint is not None and "--max-connections" in raised.value.hint
        second.close()
        wait_until(lambda: first.info()["connections"] == 1, "the server to see the second connection close")
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
    with running_server(checkpoints.embedding_native, "--max-queue-texts", "16", "--device", "cpu",
                        "--max-request-texts", "16", "--max-batch-tokens", "65536") as busy:
        long_texts = ["a " * 8000] * 16  # keeps the model thread busy for seconds (on a CPU)
        results: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: results.setdefault("long", busy.client(60).embed(long_texts)))
        with busy.client() as filler, busy.client() as other:
            jobs = other.info()["batching"]["jobs"]  # the health checks' so far
            worker.start()

            def long_request_on_the_model() -> bool:
                info = other.info()
                return bool(info["batching"]["jobs"] == jobs + 1 and info["queued_texts"] == 0)

            wait_until(long_request_on_the_model, "the long request to leave the queue for the model")
            filled = threading.Thread(target=lambda: results.setdefault("fill", filler.embed(["b"] * 16)))
            filled.start()
            wait_until(lambda: other.info()["queued_texts"] == 16, "the filler to fill the queue")
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
    assert info["limits"]["max_pending_bytes"] == 8 * info["limits"]["max_request_bytes"] == 8 * (16 << 20)
    assert info["limits"]["frame_read_timeout"] == 10
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
        after = client.embed(["same text"])
        assert client.info()["pid"] == second.process.pid
    finally:
        client.close()
        second.stop()
    assert all(type(x) is float for x in after[0])  # plain Python floats, not array items
    # Same model, same batch shape, another process: within 1e-6.
    torch.testing.assert_close(torch.tensor(after), torch.tensor(before), rtol=0, atol=1e-6)
