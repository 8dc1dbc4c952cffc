"""The public Python client: `from mgte.client import Client`."""

from __future__ import annotations

import contextlib
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mgte.client import Client, InputRejected, ProtocolMismatch, ServerUnavailable, Timeout, TruncationWarning
from mgte.server_process import ServerProcess
from mgte_udf import client as client_module
from mgte_udf import protocol

Answer = Callable[[socket.socket, dict[str, Any]], bool]
E = TypeVar("E", bound=Exception)


@contextlib.contextmanager
def fake_server(path: Path, answer: Answer) -> Iterator[None]:
    """A plain socket server in a thread, one connection at a time: `answer` writes whatever it
    likes for each request and returns whether to read the next one (False hangs up)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the test is over
            with conn:
                while (request := _read_request(conn)) is not None and answer(conn, request):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        listener.close()
        thread.join(10)


def _read_request(conn: socket.socket) -> dict[str, Any] | None:
    """The next request's header; None once the client has hung up."""
    prefix = _recv(conn, protocol.PREFIX.size)
    if prefix is None:
        return None
    _, _, json_length, _ = protocol.parse_prefix(prefix, 1 << 20, 0)
    body = _recv(conn, json_length)
    return None if body is None else protocol.decode_header(body)


def _recv(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def announce(conn: socket.socket, json_length: int, payload_length: int = 0) -> None:
    conn.sendall(protocol.PREFIX.pack(protocol.MAGIC, protocol.PROTOCOL_VERSION, protocol.RESPONSE, 0,
                                      json_length, payload_length))


def peak_allocation(call: Callable[[], object], expect: type[E]) -> tuple[E, int]:
    """What `call` raises, and the most memory Python held meanwhile (all threads), bytes."""
    tracemalloc.start()
    try:
        with pytest.raises(expect) as raised:
            call()
        return raised.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


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


def test_timeout(tmp_path: Path) -> None:
    # A server that reads requests and never answers: a real one may answer in time on a fast machine.
    with (fake_server(tmp_path / "silent.sock", lambda conn, request: True),
          Client(str(tmp_path / "silent.sock"), timeout=0.5) as impatient,
          pytest.raises(Timeout, match=r"did not answer within 0\.5 s") as raised):
        impatient.health()
    assert raised.value.sqlstate == "57014"


def test_bad_timeout_value() -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        Client("/tmp/x.sock", timeout=0)


def test_a_server_announcing_a_huge_answer_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    def two_gib_then_silence(conn: socket.socket, request: dict[str, Any]) -> bool:
        announce(conn, 1 << 31)
        return True  # keeps the connection open and sends nothing more

    with (fake_server(tmp_path / "fake.sock", two_gib_then_silence),
          Client(str(tmp_path / "fake.sock"), timeout=60) as client):
        error, peak = peak_allocation(client.health, ProtocolMismatch)
    # Refused at the prefix: waiting for the body would have ended in a Timeout instead.
    assert str(error) == (f"the server at {tmp_path / 'fake.sock'} announced a response of 2147483648 + 0 bytes; "
                          f"an answer to this request has at most {protocol.RESPONSE_JSON_BASE} + 0")
    assert error.hint is not None and "mgte.socket_path" in error.hint
    assert peak < 1 << 20, f"{peak} bytes allocated"


def test_an_answer_takes_memory_as_it_arrives_not_as_announced(tmp_path: Path) -> None:
    texts = [f"text {i}" for i in range(8)]
    announced = 16 << 20
    # Within what 8 sparse answers may take, so only reading as it arrives keeps memory low.
    assert announced <= protocol.response_limits({"op": "embed", "texts": texts, "sparse": True})[0]

    def announce_then_hang_up(conn: socket.socket, request: dict[str, Any]) -> bool:
        if request["op"] == "info":
            body = protocol.encode(protocol.RESPONSE, {"ok": True, "info": {"limits": {
                "max_request_texts": 1024, "max_request_bytes": 16 << 20}}})
            conn.sendall(body)
            return True
        announce(conn, announced)
        conn.sendall(b'{"ok":true,"count":8,')
        return False

    with (fake_server(tmp_path / "fake.sock", announce_then_hang_up),
          Client(str(tmp_path / "fake.sock"), timeout=60) as client):
        error, peak = peak_allocation(lambda: client.sparse(texts), ServerUnavailable)
    assert "the server closed the connection" in str(error)
    assert peak < 2 << 20, f"{peak} bytes allocated for an answer of 20 bytes announced as {announced}"


def test_answers_arrive_whole_in_small_pieces(server: ServerProcess, client: Client,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["hello world", "北京欢迎你", "", "a " * 300]
    whole = client.encode(texts, dense=True, sparse=True, sparse_ids=True)
    monkeypatch.setattr(client_module, "RECV_CHUNK", 7)
    with server.client() as piecemeal:
        assert piecemeal.encode(texts, dense=True, sparse=True, sparse_ids=True) == whole  # the same batches
