"""A blocking client for the mgte server: one persistent connection, reconnect on failure."""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mgte_udf import protocol
from mgte_udf.errors import InputRejected, ProtocolMismatch, ServerUnavailable, Timeout

DEFAULT_TIMEOUT = 60.0
# How often `interrupt_check` runs while waiting for the server, seconds.
INTERRUPT_POLL = 0.1


class TruncationWarning(UserWarning):
    """Some inputs were longer than the model's context and only their beginning was read."""


@dataclass
class Encoded:
    """What one embed request returns. `truncated` holds the indices of cut inputs."""

    dense: list[list[float]] | None
    sparse: list[dict[str, float]] | None  # keyed by token string (the official format)
    sparse_ids: list[dict[int, float]] | None  # keyed by token id
    tokens: list[int]
    truncated: list[int]
    model: str = ""
    sparse_dimensions: int | None = None  # the vocabulary size, with sparse_ids


@dataclass
class Scored:
    """What one rerank request returns, one score per document in the order given."""

    scores: list[float]
    tokens: list[int]
    truncated: list[int]
    model: str = ""


class Client:
    """Talks to `mgte serve` over its Unix socket.

    `timeout` (seconds, None for no limit) bounds each request. Requests bigger than the
    server accepts in one go are split transparently. `interrupt_check`, when given, is
    called every INTERRUPT_POLL seconds while waiting for an answer; whatever it raises
    abandons the request (the SQL functions use it so that query cancellation and
    statement_timeout work while a call is waiting).
    """

    def __init__(self, socket_path: str = protocol.DEFAULT_SOCKET_PATH,
                 timeout: float | None = DEFAULT_TIMEOUT,
                 interrupt_check: Callable[[], object] | None = None) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        self.socket_path = socket_path
        self.timeout = timeout
        self.interrupt_check = interrupt_check
        self._sock: socket.socket | None = None
        self._limits: dict[str, int] | None = None

    # --- public API ---------------------------------------------------------

    def embed(self, texts: Sequence[str], dim: int | None = None) -> list[list[float]]:
        """Dense embeddings, L2-normalised; `dim` keeps the first `dim` values (Matryoshka)."""
        result = self.encode(texts, dense=True, dim=dim)
        _warn_truncated(result.truncated, len(texts))
        assert result.dense is not None
        return result.dense

    def sparse(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Lexical weights {token: weight}, as the official mGTE code returns them."""
        result = self.encode(texts, dense=False, sparse=True)
        _warn_truncated(result.truncated, len(texts))
        assert result.sparse is not None
        return result.sparse

    def rerank(self, query: str, documents: Sequence[str], sigmoid: bool = False) -> list[float]:
        """Cross-encoder scores of `documents` for `query`, in the order given (raw logits by default)."""
        result = self.score(query, documents, sigmoid=sigmoid)
        _warn_truncated(result.truncated, len(documents))
        return result.scores

    def info(self) -> dict[str, Any]:
        header, _ = self._roundtrip({"op": "info"})
        return header["info"]  # type: ignore[no-any-return]

    def health(self) -> dict[str, Any]:
        header, _ = self._roundtrip({"op": "health"})
        return header

    def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = False,
               sparse_ids: bool = False, dim: int | None = None) -> Encoded:
        """Dense vectors and/or sparse weights (by token string, by token id) in one pass of the model."""
        _check_texts("texts", texts)
        out = Encoded(dense=[] if dense else None, sparse=[] if sparse else None,
                      sparse_ids=[] if sparse_ids else None, tokens=[], truncated=[])
        for start, chunk in self._chunks(texts):
            header, payload = self._roundtrip({
                "op": "embed", "texts": chunk, "dense": dense, "sparse": sparse, "sparse_ids": sparse_ids,
                "dim": dim,
            })
            _decode_embed(header, payload, out, offset=start)
        return out

    def score(self, query: str, documents: Sequence[str], *, sigmoid: bool = False) -> Scored:
        """Rerank scores with the token counts and truncation flags of each pair."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, not {type(query).__name__}")
        protocol.check_unicode("query", query)
        _check_texts("documents", documents)
        out = Scored(scores=[], tokens=[], truncated=[])
        for start, chunk in self._chunks(documents, extra_bytes=len(query.encode("utf-8"))):
            header, payload = self._roundtrip(
                {"op": "rerank", "query": query, "documents": chunk, "sigmoid": sigmoid})
            count = int(header["count"])
            scores, _ = protocol.unpack("f", payload, 0, count)
            out.scores.extend(scores.tolist())
            out.tokens.extend(header["tokens"])
            out.truncated.extend(start + i for i in header["truncated"])
            out.model = str(header.get("model", ""))
        return out

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._limits = None  # a restarted server may have other limits

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ------------------------------------------------------------

    def _chunks(self, texts: Sequence[str], extra_bytes: int = 0) -> Iterator[tuple[int, list[str]]]:
        """Splits `texts` to fit the server's per-request limits (count and bytes)."""
        if self._limits is None:
            self._limits = self.info()["limits"]
        max_texts = self._limits["max_request_texts"]
        # Half the byte limit leaves room for JSON escapes and the rest of the header.
        max_bytes = self._limits["max_request_bytes"] // 2 - extra_bytes
        start, size = 0, 0
        for i, text in enumerate(texts):
            text_bytes = len(text.encode("utf-8")) + 8
            if i > start and (i - start >= max_texts or size + text_bytes > max_bytes):
                yield start, list(texts[start:i])
                start, size = i, 0
            size += text_bytes
        yield start, list(texts[start:])

    def _roundtrip(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        frame = protocol.encode(protocol.REQUEST, request)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        reused = self._sock is not None
        try:
            return self._exchange(frame, deadline)
        except ServerUnavailable:
            # A kept-open connection may have been closed by a server restart since the
            # last call; requests have no side effects, so one fresh attempt is safe.
            if not reused:
                raise
            return self._exchange(frame, deadline)

    def _exchange(self, frame: bytes, deadline: float | None) -> tuple[dict[str, Any], bytes]:
        try:
            sock = self._connect(deadline)
            sock.settimeout(_remaining(deadline))
            sock.sendall(frame)
            prefix = self._recv(sock, protocol.PREFIX.size, deadline)
            _, kind, json_length, payload_length = protocol.parse_prefix(prefix, 1 << 31, 1 << 31)
            if kind != protocol.RESPONSE:
                raise ProtocolMismatch(f"expected a response frame from {self.socket_path}, got kind {kind}")
            header = protocol.decode_header(self._recv(sock, json_length, deadline))
            payload = self._recv(sock, payload_length, deadline)
        except TimeoutError:
            self.close()
            raise Timeout(
                f"mgte server at {self.socket_path} did not answer within {self.timeout} s",
                hint="raise the timeout (mgte.timeout_ms in SQL, Client(timeout=...)) or send less per "
                     "call; `mgte info` shows how busy the server is",
            ) from None
        except OSError as exc:
            self.close()
            raise ServerUnavailable(
                f"connection to the mgte server at {self.socket_path} failed: {exc}",
                hint="check that `mgte serve` is still running (its log says why it stopped)",
            ) from None
        except BaseException:
            # Interrupted or failed mid-exchange: an answer may still be on its way, so this
            # connection cannot carry the next request.
            self.close()
            raise
        protocol.raise_for_error(header)
        return header, payload

    def _connect(self, deadline: float | None) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise _unreachable(self.socket_path, exc) from None
        self._sock = sock
        return sock

    def _recv(self, sock: socket.socket, size: int, deadline: float | None) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            wait = _remaining(deadline)
            if self.interrupt_check is not None:
                wait = INTERRUPT_POLL if wait is None else min(wait, INTERRUPT_POLL)
            sock.settimeout(wait)
            try:
                n = sock.recv_into(view[got:], size - got)
            except TimeoutError:
                if self.interrupt_check is None:
                    raise
                self.interrupt_check()
                continue  # _remaining() raises TimeoutError once the deadline has passed
            if n == 0:
                raise ConnectionResetError("the server closed the connection")
            got += n
        return bytes(buf)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _unreachable(path: str, exc: OSError) -> ServerUnavailable:
    start = f"start it with `mgte serve --socket {path}`"
    point = "or point mgte.socket_path (SQL) / Client(socket_path=...) at the socket it listens on"
    if isinstance(exc, FileNotFoundError):
        return ServerUnavailable(f"mgte server not reachable at {path}: no such socket", hint=f"{start}, {point}")
    if isinstance(exc, ConnectionRefusedError):
        return ServerUnavailable(f"mgte server not reachable at {path}: nothing is listening",
                                 hint=f"the server is not running; {start}")
    if isinstance(exc, PermissionError):
        return ServerUnavailable(
            f"mgte server not reachable at {path}: permission denied",
            hint="the socket is only open to its owner and group: start the server with "
                 "`--socket-group` naming a group this user (e.g. postgres) is in")
    return ServerUnavailable(f"mgte server not reachable at {path}: {exc}", hint=start)


def _check_texts(name: str, texts: Sequence[str]) -> None:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, not a single {type(texts).__name__}; "
                        "wrap one text in a list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, not {type(text).__name__}")
        protocol.check_unicode(f"{name}[{i}]", text)
    if len(texts) == 0:
        raise InputRejected(f"{name} must not be empty")


def _decode_embed(header: dict[str, Any], payload: bytes, out: Encoded, offset: int) -> None:
    count = int(header["count"])
    at = 0
    if out.dense is not None:
        dim = int(header["dim"])
        values, at = protocol.unpack("f", payload, 0, count * dim)
        flat = values.tolist()
        out.dense.extend(flat[i * dim:(i + 1) * dim] for i in range(count))
    if out.sparse is not None:
        tokens = header["sparse_tokens"]
        weights, at = protocol.unpack("f", payload, at, sum(len(t) for t in tokens))
        flat_weights = weights.tolist()
        pos = 0
        for keys in tokens:
            out.sparse.append(dict(zip(keys, flat_weights[pos:pos + len(keys)], strict=True)))
            pos += len(keys)
    if out.sparse_ids is not None:
        nnz = [int(n) for n in header["sparse_ids_nnz"]]
        ids, at = protocol.unpack("I", payload, at, sum(nnz))
        weights, at = protocol.unpack("f", payload, at, sum(nnz))
        flat_ids, flat_weights = ids.tolist(), weights.tolist()
        pos = 0
        for n in nnz:
            out.sparse_ids.append(dict(zip(flat_ids[pos:pos + n], flat_weights[pos:pos + n], strict=True)))
            pos += n
    out.tokens.extend(header["tokens"])
    out.truncated.extend(offset + i for i in header["truncated"])
    out.model = str(header.get("model", ""))
    if "sparse_dimensions" in header:
        out.sparse_dimensions = int(header["sparse_dimensions"])


def _warn_truncated(truncated: list[int], total: int) -> None:
    if truncated:
        warnings.warn(
            f"{len(truncated)} of {total} inputs were longer than the model's context and were "
            f"truncated (indices {truncated[:20]}{'...' if len(truncated) > 20 else ''})",
            TruncationWarning, stacklevel=3)


__all__ = ["Client", "Encoded", "Scored", "TruncationWarning"]
