"""`mgte serve`: one process, one copy of each model, every client on one Unix socket.

The event loop reads frames and validates requests; tokenising and response building run
on a small thread pool, the models on the batcher's thread. Nothing a client sends can
stop the server: bad requests get an error reply, unreadable frames a reply and a close.
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
from typing import Any

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


@dataclass(frozen=True)
class Limits:
    max_request_texts: int
    max_request_bytes: int
    max_queue_texts: int
    max_batch_tokens: int
    max_connections: int


@dataclass(frozen=True)
class Settings:
    socket_path: Path
    socket_mode: int
    socket_group: str | None
    limits: Limits


class Server:
    def __init__(self, settings: Settings, embedder: TextEncoder, reranker: Reranker | None) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.embedder = embedder
        self.reranker = reranker
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
            while not self._draining:
                try:
                    prefix = await reader.readexactly(protocol.PREFIX.size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client went away between requests
                try:
                    _, kind, json_length, payload_length = protocol.parse_prefix(
                        prefix, self.limits.max_request_bytes, self.limits.max_request_bytes)
                    if kind != protocol.REQUEST or payload_length:
                        raise ProtocolMismatch("expected a request frame without payload")
                except MgteError as exc:
                    # The stream cannot be resynchronised: answer, then hang up.
                    self._count_error(exc)
                    await _reply(writer, protocol.error_header(exc))
                    return
                try:
                    body = await reader.readexactly(json_length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                header, payload = await self._answer(body)
                await _reply(writer, header, payload)
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers the connection's first request with "overloaded", then hangs up. Reading
        the request first matters: closing a socket with unread data resets it, and the
        client would see a broken connection instead of the reason."""
        error = Overloaded(f"mgte server overloaded: {self.limits.max_connections} connections are open, the limit",
                           hint="raise the server's --max-connections, or use fewer client processes")
        try:
            prefix = await asyncio.wait_for(reader.readexactly(protocol.PREFIX.size), timeout=10)
            _, _, json_length, payload_length = protocol.parse_prefix(
                prefix, self.limits.max_request_bytes, self.limits.max_request_bytes)
            await asyncio.wait_for(reader.readexactly(json_length + payload_length), timeout=10)
            await _reply(writer, protocol.error_header(error))
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, MgteError):
            pass
        finally:
            writer.close()

    async def _answer(self, body: bytes) -> tuple[dict[str, Any], bytes]:
        self._inflight += 1
        try:
            request = protocol.decode_header(body)
            op = request.get("op")
            if op not in _FIELDS:
                raise InputRejected(f"unknown op {op!r}; expected one of {', '.join(_FIELDS)}")
            unknown = sorted(set(request) - _FIELDS[op])
            if unknown:
                raise InputRejected(f"unknown field {unknown[0]!r} in the {op} request; "
                                    f"fields: {', '.join(sorted(_FIELDS[op]))}")
            if self._draining:
                raise ShuttingDown("the mgte server is shutting down", hint="retry when it is back")
            self._requests[op] += 1
            return await getattr(self, f"_{op}")(request)  # type: ignore[no-any-return]
        except MgteError as exc:
            self._count_error(exc)
            return protocol.error_header(exc), b""
        except Exception as exc:
            log.exception("request failed")
            error = ServerError(f"internal error: {type(exc).__name__}: {exc}",
                                hint="this is a bug in mgte; the server log has the traceback")
            self._count_error(error)
            return protocol.error_header(error), b""
        finally:
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
            "queued_texts": self.batcher.queued(),
            "batching": counters,
        }


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
