"""`mgte serve`: one process, one copy of each model, every client on one Unix socket.

The event loop reads frames and validates requests; tokenising and response building run
on a small thread pool, the models on the batcher's thread. Nothing a client sends can
stop the server: bad requests get an error reply, unreadable frames a reply and a close.
Nor can it take the server's memory: a frame, once begun, must arrive within
--frame-read-timeout; the requests being read or answered hold at most --max-pending-bytes
over all connections; frames the server will not keep are discarded as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import logging
import os
import signal
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from mgte import __version__, heads
from mgte.batcher import Batcher
from mgte.errors import UserError
from mgte.runtime import EmbeddingOutput, Model, Reranker, TextEncoder, Tokens
from mgte_udf import protocol
from mgte_udf.errors import (
    InputRejected,
    MgteError,
    NotSupported,
    Overloaded,
    ProtocolMismatch,
    ServerError,
    ShuttingDown,
    TooLarge,
)

log = logging.getLogger("mgte.server")

_FIELDS = {
    "health": {"op"},
    "info": {"op"},
    "embed": {"op", "texts", "dense", "sparse", "sparse_ids", "dim"},
    "rerank": {"op", "query", "documents", "sigmoid"},
}
# The most strings a request holds besides its texts: every field name, the op, a rerank query.
_OTHER_STRINGS = max(len(fields) for fields in _FIELDS.values()) + 2
# Bytes read at a time from a frame the server discards.
_DISCARD_CHUNK = 1 << 16


@dataclass(frozen=True)
class Limits:
    max_request_texts: int
    max_request_bytes: int
    max_queue_texts: int
    max_batch_tokens: int
    max_connections: int
    max_pending_bytes: int
    frame_read_timeout: float


class RequestObserver(Protocol):
    """Told of every request answered (mgte.metrics counts them): its operation, "unknown" when
    the server could not read one; its outcome, "ok" or the error code; and, for a request read
    whole, the seconds from then until its answer was ready."""

    def request(self, op: str, outcome: str, seconds: float | None) -> None: ...


@dataclass(frozen=True)
class Settings:
    socket_path: Path
    socket_mode: int
    socket_group: str | None
    limits: Limits
    allocator: str = "the C library's default"  # how host memory is allocated (mgte.allocator)


class Server:
    def __init__(self, settings: Settings, embedder: TextEncoder, reranker: Reranker | None) -> None:
        sparse_tokens = embedder.max_length if embedder.has_sparse else 0
        if embedder.hidden_size > protocol.MAX_DIM or sparse_tokens > protocol.MAX_TOKENS:
            # Clients bound the answers they read by these, so a bigger model's answers would be refused.
            raise UserError(f"{embedder.checkpoint.source} has {embedder.hidden_size} dimensions and reads "
                            f"{embedder.max_length} tokens per input; the mgte protocol carries at most "
                            f"{protocol.MAX_DIM} dimensions and {protocol.MAX_TOKENS} tokens of sparse weights",
                            hint="serve a model within those limits")
        self.settings = settings
        self.limits = settings.limits
        self.embedder = embedder
        self.reranker = reranker
        self.observer: RequestObserver | None = None  # set by `mgte serve --metrics-address`
        self.batcher = Batcher(self.limits.max_batch_tokens, self.limits.max_queue_texts)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mgte-io")
        self._decode = functools.lru_cache(maxsize=None)(embedder.decode_token)
        self._started = time.time()
        self._connections: set[asyncio.StreamWriter] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._draining = False
        self._requests: dict[str, int] = dict.fromkeys(_FIELDS, 0)
        self._errors: dict[str, int] = {}
        self._refused_connections = 0
        self._refused_requests = 0
        self._pending_bytes = 0

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        sock = listen(self.settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.batcher.start()
        server = await asyncio.start_unix_server(self._serve_connection, sock=sock)
        log.info("listening on %s (model %s, reranker %s, %s %s, max %d tokens per batch)",
                 self.settings.socket_path, self.embedder.checkpoint.source,
                 self.reranker.checkpoint.source if self.reranker else "none",
                 self.embedder.device, str(self.embedder.dtype).removeprefix("torch."),
                 self.limits.max_batch_tokens)
        await stop.wait()
        log.info("stopping: finishing %d request(s) in flight", self._inflight)
        server.close()
        self._draining = True
        if self._inflight:
            self._idle.clear()
            await self._idle.wait()
        for writer in list(self._connections):
            writer.close()
        self.batcher.stop()
        self._pool.shutdown()
        with contextlib.suppress(FileNotFoundError):
            self.settings.socket_path.unlink()
        log.info("stopped")

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.limits.max_connections:
            self._refused_connections += 1
            await self._refuse(reader, writer)
            return
        self._connections.add(writer)
        try:
            while not self._draining and await self._serve_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _serve_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Reads one request and answers it; False when the connection is to be closed."""
        first = await reader.read(1)  # between requests a connection may stay idle as long as it likes
        if not first:
            return False
        deadline = self._frame_deadline()
        try:
            prefix = first + await _read(reader, protocol.PREFIX.size - 1, deadline)
            json_length = self._request_length(prefix)
            if self._pending_bytes + json_length > self.limits.max_pending_bytes:
                self._refused_requests += 1
                await _discard(reader, json_length, deadline)  # the stream stays in sync
                await self._reply_error(writer, Overloaded(
                    f"mgte server overloaded: {self._pending_bytes} bytes of requests are being read or "
                    f"answered, and {json_length} more would pass the limit of {self.limits.max_pending_bytes}",
                    hint="retry later, send less per request, or raise the server's --max-pending-bytes"))
                return True
            self._pending_bytes += json_length
            try:
                body = await _read(reader, json_length, deadline)
                header, payload = await self._answer(body)
            finally:
                self._pending_bytes -= json_length
        except asyncio.TimeoutError:
            await self._reply_error(writer, ProtocolMismatch(
                f"incomplete request frame: the rest of it did not arrive within "
                f"{self.limits.frame_read_timeout} s of its first byte",
                hint="send each request whole; raise the server's --frame-read-timeout for very slow clients"))
            return False
        except MgteError as exc:  # from _request_length: the stream cannot be resynchronised
            await self._reply_error(writer, exc)
            return False
        await _reply(writer, header, payload)
        return True

    def _request_length(self, prefix: bytes) -> int:
        _, kind, json_length, payload_length = protocol.parse_prefix(
            prefix, self.limits.max_request_bytes, self.limits.max_request_bytes)
        if kind != protocol.REQUEST or payload_length:
            raise ProtocolMismatch("expected a request frame without payload")
        return json_length

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers the connection's first request with "overloaded", then hangs up. Reading
        the request first matters: closing a socket with unread data resets it, and the
        client would see a broken connection instead of the reason. It is discarded as it
        arrives, never held: refused connections are not limited in number, so what they send
        must not stay in memory."""
        error = Overloaded(f"mgte server overloaded: {self.limits.max_connections} connections are open, the limit",
                           hint="raise the server's --max-connections, or use fewer client processes")
        deadline = self._frame_deadline()
        try:
            prefix = await _read(reader, protocol.PREFIX.size, deadline)
            _, _, json_length, payload_length = protocol.parse_prefix(
                prefix, self.limits.max_request_bytes, self.limits.max_request_bytes)
            await _discard(reader, json_length + payload_length, deadline)
            await _reply(writer, protocol.error_header(error))
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, MgteError):
            pass
        finally:
            writer.close()

    def _frame_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.limits.frame_read_timeout

    async def _reply_error(self, writer: asyncio.StreamWriter, error: MgteError) -> None:
        """For requests refused or unreadable before their operation is known."""
        self._count_error(error)
        if self.observer is not None:
            self.observer.request("unknown", error.code, None)
        await _reply(writer, protocol.error_header(error))

    async def _answer(self, body: bytes) -> tuple[dict[str, Any], bytes]:
        self._inflight += 1
        started = time.perf_counter()
        answered_op, outcome = "unknown", "ok"
        try:
            self._check_strings(body)
            request = protocol.decode_header(body)
            op = request.get("op")
            if op not in _FIELDS:
                raise InputRejected(f"unknown op {op!r}; expected one of {', '.join(_FIELDS)}")
            answered_op = op
            unknown = sorted(set(request) - _FIELDS[op])
            if unknown:
                raise InputRejected(f"unknown field {unknown[0]!r} in the {op} request; "
                                    f"fields: {', '.join(sorted(_FIELDS[op]))}")
            if self._draining:
                raise ShuttingDown("the mgte server is shutting down", hint="retry when it is back")
            self._requests[op] += 1
            return await getattr(self, f"_{op}")(request)  # type: ignore[no-any-return]
        except MgteError as exc:
            outcome = exc.code
            self._count_error(exc)
            return protocol.error_header(exc), b""
        except Exception as exc:
            log.exception("request failed")
            error = ServerError(f"internal error: {type(exc).__name__}: {exc}",
                                hint="this is a bug in mgte; the server log has the traceback")
            outcome = error.code
            self._count_error(error)
            return protocol.error_header(error), b""
        finally:
            if self.observer is not None:
                self.observer.request(answered_op, outcome, time.perf_counter() - started)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    # --- operations -----------------------------------------------------------

    async def _health(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        # Through the queue and the model: a stuck or overloaded server is not healthy.
        tokens = self.embedder.tokenize([""])
        await asyncio.wrap_future(self.batcher.submit(self.embedder, [tokens[0].ids]))
        return {"ok": True, "status": "ok"}, b""

    async def _info(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        return {"ok": True, "info": self.info()}, b""

    async def _embed(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        texts = self._texts(request, "texts")
        dense = _flag(request, "dense", True)
        sparse = _flag(request, "sparse", False)
        sparse_ids = _flag(request, "sparse_ids", False)
        if not (dense or sparse or sparse_ids):
            raise InputRejected("an embed request must ask for dense, sparse and/or sparse_ids output")
        if (sparse or sparse_ids) and not self.embedder.has_sparse:
            raise NotSupported(f"the served model {self.embedder.checkpoint.source} has no sparse (lexical) output; "
                               "it is not supported by this model", hint="ask for dense output only; sparse weights "
                               "come with mGTE (gte-multilingual-base)")
        dim = _dim(request.get("dim"), self.embedder.hidden_size)
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(self._pool, self.embedder.tokenize, texts)
        outputs = await asyncio.wrap_future(self.batcher.submit(self.embedder, [t.ids for t in tokens]))
        return await loop.run_in_executor(
            self._pool, self._embed_response, tokens, outputs, dim if dense else None, dense, sparse, sparse_ids)

    def _embed_response(self, tokens: list[Tokens], outputs: list[EmbeddingOutput], dim: int | None,
                        dense: bool, sparse: bool, sparse_ids: bool) -> tuple[dict[str, Any], bytes]:
        header: dict[str, Any] = {"ok": True, **self._report(self.embedder, tokens), "dim": None}
        parts: list[bytes] = []
        if dense:
            vectors = heads.dense(torch.stack([out.state for out in outputs]), dim, self.embedder.normalize)
            header["dim"] = int(vectors.shape[1])
            parts.append(vectors.numpy().astype(protocol.FLOAT32).tobytes())
        if sparse:
            sparse_outputs = [out.sparse for out in outputs if out.sparse is not None]
            by_token = [heads.by_token_string(vector, self._decode) for vector in sparse_outputs]
            header["sparse_tokens"] = [list(weights) for weights in by_token]
            flat = [w for weights in by_token for w in weights.values()]
            parts.append(torch.tensor(flat, dtype=torch.float32).numpy().astype(protocol.FLOAT32).tobytes())
        if sparse_ids:
            vectors_ = [out.sparse for out in outputs if out.sparse is not None]
            header["sparse_ids_nnz"] = [int(v.ids.numel()) for v in vectors_]
            header["sparse_dimensions"] = int(self.embedder.checkpoint.config.vocab_size)
            parts.append(torch.cat([v.ids for v in vectors_]).numpy().astype(protocol.UINT32).tobytes())
            parts.append(torch.cat([v.weights for v in vectors_]).numpy().astype(protocol.FLOAT32).tobytes())
        return header, b"".join(parts)

    async def _rerank(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        reranker = self.reranker
        if reranker is None:
            raise NotSupported("no reranker loaded in this mgte server",
                               hint="start it with --reranker Alibaba-NLP/gte-multilingual-reranker-base "
                                    "(or a local directory)")
        query = request.get("query")
        if not isinstance(query, str):
            raise InputRejected(f"query must be a string, not {type(query).__name__}")
        protocol.check_unicode("query", query)
        documents = self._texts(request, "documents")
        sigmoid = _flag(request, "sigmoid", False)
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(self._pool, reranker.tokenize, query, documents)
        logits = await asyncio.wrap_future(self.batcher.submit(reranker, [t.ids for t in tokens]))
        scores = heads.rerank(torch.tensor(logits, dtype=torch.float32), sigmoid)
        return {"ok": True, **self._report(reranker, tokens)}, scores.numpy().astype(protocol.FLOAT32).tobytes()

    # --- helpers ----------------------------------------------------------------

    def _check_strings(self, body: bytes) -> None:
        """Bounds a request's strings before json.loads makes objects of them: a short string
        takes some 50 bytes decoded, so 16 MiB of them would take the server 200 MiB."""
        limit = self.limits.max_request_texts + _OTHER_STRINGS
        if body.count(b'"') > 2 * limit and (strings := _json_strings(body)) > limit:
            raise TooLarge(f"the request holds {strings} strings; at most {self.limits.max_request_texts} texts "
                           "fit in one request", hint="send fewer per request, or raise the server's "
                                                      "--max-request-texts")

    def _texts(self, request: dict[str, Any], name: str) -> list[str]:
        texts = request.get(name)
        if not isinstance(texts, list):
            raise InputRejected(f"{name} must be a list of strings, not {type(texts).__name__}")
        if not texts:
            raise InputRejected(f"{name} must not be empty")
        if len(texts) > self.limits.max_request_texts:
            raise TooLarge(f"{len(texts)} {name} in one request; the limit is {self.limits.max_request_texts}",
                           hint="send fewer per request, or raise the server's --max-request-texts")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputRejected(f"{name}[{i}] must be a string, not {type(text).__name__}")
            protocol.check_unicode(f"{name}[{i}]", text)
        return texts

    @staticmethod
    def _report(model: Model, tokens: list[Tokens]) -> dict[str, Any]:
        return {"count": len(tokens), "model": model.checkpoint.source, "tokens": [t.length for t in tokens],
                "truncated": [i for i, t in enumerate(tokens) if t.truncated]}

    def _count_error(self, error: MgteError) -> None:
        self._errors[error.code] = self._errors.get(error.code, 0) + 1

    def info(self) -> dict[str, Any]:
        counters = asdict(self.batcher.counters)
        counters["busy_seconds"] = round(counters["busy_seconds"], 3)
        return {
            "server_version": __version__,
            "protocol_version": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "socket": str(self.settings.socket_path),
            "uptime_seconds": round(time.time() - self._started, 1),
            "model": self.embedder.describe(),
            "reranker": self.reranker.describe() if self.reranker else None,
            "limits": asdict(self.limits),
            "requests": dict(self._requests),
            "errors": dict(self._errors),
            "connections": len(self._connections),
            "refused_connections": self._refused_connections,
            "refused_requests": self._refused_requests,
            "pending_bytes": self._pending_bytes,
            "queued_texts": self.batcher.queued(),
            "batching": counters,
            "device_memory": self._device_memory(),
            "host_allocator": self.settings.allocator,
        }

    def _device_memory(self) -> dict[str, int] | None:
        """What torch's caching allocator holds on the embedder's GPU; None on CPU."""
        device = self.embedder.device
        if device.type != "cuda":
            return None
        return {"allocated_bytes": torch.cuda.memory_allocated(device),
                "peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "reserved_bytes": torch.cuda.memory_reserved(device)}


def listen(settings: Settings) -> socket.socket:
    """Binds the Unix socket with its final mode from the start, replacing a stale socket file."""
    path = settings.socket_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UserError(f"{path} exists and is not a socket", hint="remove it or choose another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: left by a server that did not exit cleanly
        else:
            raise UserError(f"another mgte server is already listening on {path}",
                            hint="stop it first, or choose another --socket")
        finally:
            probe.close()
    gid = -1
    if settings.socket_group is not None:
        try:
            gid = grp.getgrnam(settings.socket_group).gr_gid
        except KeyError:
            raise UserError(f"unknown group {settings.socket_group!r} for --socket-group") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~settings.socket_mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {path}: {exc}",
                        hint="choose a --socket in a directory this user can write") from None
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, settings.socket_mode)
        if gid != -1:
            os.chown(path, -1, gid)
    except OSError as exc:
        sock.close()
        path.unlink()
        raise UserError(f"cannot set the owner group or mode of {path}: {exc}",
                        hint="run the server as a member of that group, or as root") from None
    sock.listen(128)
    return sock


async def _read(reader: asyncio.StreamReader, size: int, deadline: float) -> bytes:
    """Exactly `size` bytes; asyncio.TimeoutError once the loop's clock passes `deadline`."""
    return await asyncio.wait_for(reader.readexactly(size), deadline - asyncio.get_running_loop().time())


async def _discard(reader: asyncio.StreamReader, size: int, deadline: float) -> None:
    """Reads and drops `size` bytes a chunk at a time, within `deadline`."""
    while size:
        chunk = await asyncio.wait_for(reader.read(min(size, _DISCARD_CHUNK)),
                                       deadline - asyncio.get_running_loop().time())
        if not chunk:
            raise asyncio.IncompleteReadError(b"", size)
        size -= len(chunk)


def _json_strings(body: bytes) -> int:
    """The strings in a JSON text, undecoded: each has two quotes that no backslash escapes.
    Escaped backslashes go first, so that the quote closing a string that ends in one counts."""
    unescaped = body.replace(b"\\\\", b"")
    return (unescaped.count(b'"') - unescaped.count(b'\\"')) // 2


async def _reply(writer: asyncio.StreamWriter, header: dict[str, Any], payload: bytes = b"") -> None:
    writer.write(protocol.encode(protocol.RESPONSE, header, payload))
    await writer.drain()


def _flag(request: dict[str, Any], name: str, default: bool) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise InputRejected(f"{name} must be true or false, not {value!r}")
    return value


def _dim(value: Any, hidden_size: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hidden_size:
        raise InputRejected(f"dim must be an integer from 1 to {hidden_size}, not {value!r}",
                            hint=f"pass NULL (None) for all {hidden_size} dimensions")
    return value
