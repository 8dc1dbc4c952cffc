"""The `mgte` command. Every `serve` flag has an MGTE_* environment variable; `--help` is the reference."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from mgte import __version__
from mgte.errors import UserError
from mgte.worker import LEASE_MARGIN_SECONDS
from mgte_udf import protocol
from mgte_udf.errors import MgteError

if TYPE_CHECKING:
    from mgte.metrics import Exporter

DEFAULT_MODEL = "Alibaba-NLP/gte-multilingual-base"
DEFAULT_RERANKER = "Alibaba-NLP/gte-multilingual-reranker-base"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (UserError, MgteError) as exc:
        print(f"mgte: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2 if isinstance(exc, UserError) else 1
    except psycopg.Error as exc:
        print(f"mgte: error: {exc.diag.message_primary or str(exc).strip()}", file=sys.stderr)
        if exc.diag.message_hint:
            print(f"hint: {exc.diag.message_hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgte", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mgte {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the model server", description=(
        "Serve the mGTE embedding model (and optionally the reranker) to every PostgreSQL backend "
        "and Python client on this machine over one Unix socket."))
    _option(serve, "--model", "MGTE_MODEL", DEFAULT_MODEL,
            "embedding model: a checkpoint directory, a hub id (cached, or downloaded when the hub is "
            "reachable; HF_HUB_OFFLINE=1 forbids downloads), or 'tiny' for a built-in random-weight model")
    _option(serve, "--reranker", "MGTE_RERANKER", "",
            f"reranker, the same kinds of value as --model (e.g. {DEFAULT_RERANKER}); empty for none: "
            "rerank requests then fail with 'no reranker loaded'")
    _option(serve, "--socket", "MGTE_SOCKET", protocol.DEFAULT_SOCKET_PATH, "Unix socket to listen on",
            type=Path)
    _option(serve, "--socket-mode", "MGTE_SOCKET_MODE", "0660",
            "permissions of the socket file, octal; the default admits the owner and the group only",
            type=_octal)
    _option(serve, "--socket-group", "MGTE_SOCKET_GROUP", None,
            "group that owns the socket file (e.g. postgres, so that PostgreSQL backends can connect)")
    _option(serve, "--device", "MGTE_DEVICE", "auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    _option(serve, "--dtype", "MGTE_DTYPE", "auto",
            "auto, float32, bfloat16 or float16. auto: on CUDA bfloat16 (float16 on GPUs without it); on CPU "
            "bfloat16 where the CPU runs it natively (amx_bf16, avx512_bf16) and it matches float32 on probe "
            "texts, else float32 (mgte info says which and why)")
    _option(serve, "--compile", "MGTE_COMPILE", "off",
            "on: run the element-wise work of the mGTE models' layers through torch.compile on a CPU (9 to "
            "18%% more tokens/s measured; compiling at start-up takes up to ~30 s and a C++ compiler; mgte info "
            "says whether it is on and why not)", type=_on_off)
    _option(serve, "--max-batch-tokens", "MGTE_MAX_BATCH_TOKENS", 0,
            "tokens per model batch (with their padding, for models run padded); 0 picks 4096 on CPU and "
            "65536 on CUDA", type=_natural)
    _option(serve, "--max-request-texts", "MGTE_MAX_REQUEST_TEXTS", 1024,
            "texts (or documents) in one request; clients split bigger calls", type=_positive)
    _option(serve, "--max-request-bytes", "MGTE_MAX_REQUEST_BYTES", 16 << 20,
            "bytes in one request frame", type=_positive)
    _option(serve, "--max-queue-texts", "MGTE_MAX_QUEUE_TEXTS", 16384,
            "texts waiting for the model; beyond it requests are refused as overloaded", type=_positive)
    _option(serve, "--max-connections", "MGTE_MAX_CONNECTIONS", 1024, "open client connections",
            type=_positive)
    _option(serve, "--max-pending-bytes", "MGTE_MAX_PENDING_BYTES", 0,
            "bytes of requests being read or answered, over all connections; beyond it requests are "
            "refused as overloaded; 0 picks 8 times --max-request-bytes", type=_natural)
    _option(serve, "--frame-read-timeout", "MGTE_FRAME_READ_TIMEOUT", 10,
            "seconds a request may take to arrive once its first byte has; a client that stalls longer "
            "is disconnected (an idle connection between requests is not)", type=_positive)
    _option(serve, "--threads", "MGTE_THREADS", 0, "CPU threads for the model; 0 lets torch choose",
            type=_natural)
    _option(serve, "--log-level", "MGTE_LOG_LEVEL", "info", "debug, info, warning or error", type=_log_level)
    _metrics_options(serve)
    serve.set_defaults(run=_serve)

    info = commands.add_parser("info", help="print a running server's models, limits and counters")
    _option(info, "--socket", "MGTE_SOCKET", protocol.DEFAULT_SOCKET_PATH, "the server's Unix socket")
    info.set_defaults(run=_info)

    worker = commands.add_parser("worker", help="embed the rows that auto-embedding has queued", description=(
        "Drain the queues of every table enabled with mgte_enable() in one database: claim rows, "
        "embed them with the server, store the results. Several workers may run at once."))
    _worker_options(worker)
    _metrics_options(worker)
    worker.set_defaults(run=_worker)

    backfill = commands.add_parser("backfill", help="embed one table's queued rows now, with progress",
                                   description="Embed what one enabled table has queued (e.g. its existing "
                                               "rows after mgte_enable) in the foreground, showing progress.")
    backfill.add_argument("table", help="the enabled table, e.g. public.docs")
    _worker_options(backfill)
    backfill.set_defaults(run=_backfill)

    doctor = commands.add_parser("doctor", help="check an installation from PostgreSQL's point of view",
                                 description=(
        "Check one database and the model server as PostgreSQL sees them: versions, required extensions, "
        "the socket as PostgreSQL's OS user reaches it, the served model against each enabled table, "
        "workers, queue lag and failures. One line per check (ok, warn, fail; skip when an earlier "
        "failure prevents it) with its fix. Exit status: 0 all ok, 1 warnings, 2 a failure."))
    _option(doctor, "--dsn", "MGTE_DSN", "",
            "the database, as a libpq connection string of a superuser; empty uses the PG* environment variables")
    _option(doctor, "--socket", "MGTE_SOCKET", protocol.DEFAULT_SOCKET_PATH, "the server's Unix socket")
    doctor.add_argument("--json", action="store_true",
                        help="print a JSON list of {check, status, message, fix, table} instead, for monitoring")
    doctor.set_defaults(run=_doctor)

    demo = commands.add_parser("demo", help="hybrid multilingual search in a private PostgreSQL cluster",
                               description=(
        "Start a private PostgreSQL cluster and an mgte server, store sample documents in several "
        "languages with their dense and sparse weights, and answer one query per language."))
    demo.add_argument("--model", default=DEFAULT_MODEL, help="embedding model (default: %(default)s)")
    demo.add_argument("--reranker", default=DEFAULT_RERANKER, help="reranker (default: %(default)s)")
    demo.add_argument("--datadir", type=Path, default=None,
                      help="where the cluster lives (default: a directory under the system's temp dir)")
    demo.add_argument("--keep", action="store_true",
                      help="leave the cluster and the server running, and print how to connect")
    demo.set_defaults(run=_demo)
    return parser


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"on or off, not {value!r}")
    return value == "on"


def _option(parser: argparse.ArgumentParser, flag: str, env: str, default: Any, help: str,
            type: Callable[[str], Any] = str) -> None:
    # argparse converts a string default with `type`, so a bad variable is reported like a bad flag.
    value = os.environ.get(env)
    parser.add_argument(flag, default=value if value is not None else default, type=type,
                        help=f"{help} [env {env}; default {default}]")


def _worker_options(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--dsn", "MGTE_DSN", "",
            "the database, as a libpq connection string; empty uses the PG* environment variables. "
            "Connect as a member of the role mgte_worker (or a superuser)")
    _option(parser, "--socket", "MGTE_SOCKET", protocol.DEFAULT_SOCKET_PATH, "the server's Unix socket")
    _option(parser, "--batch-size", "MGTE_BATCH_SIZE", 32, "rows claimed and embedded at a time", type=_positive)
    _option(parser, "--connections", "MGTE_CONNECTIONS", 4,
            "batches stored at once, each on a database connection of its own (storing is mostly HNSW index "
            "inserts, which PostgreSQL runs in parallel); the worker keeps two more connections", type=_positive)
    _option(parser, "--timeout-seconds", "MGTE_TIMEOUT_SECONDS", 600, "longest wait for one server call",
            type=_positive)
    _option(parser, "--lease-seconds", "MGTE_LEASE_SECONDS", None,
            "how long claimed rows stay reserved; a worker that dies frees its rows after this. "
            f"Longer than --timeout-seconds; default that plus {LEASE_MARGIN_SECONDS}", type=_positive)
    _option(parser, "--poll-seconds", "MGTE_POLL_SECONDS", 5,
            "longest wait for new work between NOTIFY wake-ups", type=_positive)
    _option(parser, "--max-backoff-seconds", "MGTE_MAX_BACKOFF_SECONDS", 30,
            "longest wait between retries while the server or database is unavailable", type=_positive)
    _option(parser, "--max-attempts", "MGTE_MAX_ATTEMPTS", 3,
            "a text on which the server fails alone this many times goes to the dead letters", type=_positive)
    _option(parser, "--log-level", "MGTE_LOG_LEVEL", "info", "debug, info, warning or error", type=_log_level)


def _metrics_options(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--metrics-address", "MGTE_METRICS_ADDRESS", "",
            "HOST:PORT to serve Prometheus metrics on (http://HOST:PORT/metrics), e.g. 127.0.0.1:9464; "
            "empty for none. Needs pip install 'mgte[metrics]'")
    allowed = os.environ.get("MGTE_METRICS_ALLOW_REMOTE", "").lower() in ("1", "true", "yes", "on")
    parser.add_argument("--metrics-allow-remote", action="store_true", default=allowed,
                        help="let --metrics-address be other than a loopback address; the endpoint has no "
                             "authentication. The variable takes 1 or true [env MGTE_METRICS_ALLOW_REMOTE; "
                             "default off]")


def _metrics(args: argparse.Namespace) -> Exporter | None:
    """The started mgte.metrics.Exporter when --metrics-address is given, else None. Started
    before anything slow, so that a wrong address or a missing package shows at once."""
    if not args.metrics_address:
        return None
    from mgte.metrics import Exporter

    exporter = Exporter(args.metrics_address, args.metrics_allow_remote)
    exporter.start()
    return exporter


def _worker_settings(args: argparse.Namespace) -> Any:
    from mgte.worker import Settings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s mgte %(levelname)s %(message)s")
    lease = args.lease_seconds if args.lease_seconds is not None else args.timeout_seconds + LEASE_MARGIN_SECONDS
    if lease <= args.timeout_seconds:
        raise UserError(f"--lease-seconds ({lease}) must be longer than --timeout-seconds ({args.timeout_seconds})",
                        hint="a lease that ran out while the worker still waits for the server would let "
                             "another worker embed the same rows")
    return Settings(dsn=args.dsn, socket=str(args.socket), batch_size=args.batch_size, lease_seconds=lease,
                    poll_seconds=args.poll_seconds, max_backoff_seconds=args.max_backoff_seconds,
                    timeout_seconds=args.timeout_seconds, max_attempts=args.max_attempts,
                    connections=args.connections)


def _worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from mgte.worker import Worker

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = _worker_settings(args)
    exporter = _metrics(args)
    worker = Worker(settings, stop)
    if exporter is not None:
        from mgte.metrics import WorkerBatches, WorkerQueues

        worker.observer = WorkerBatches(exporter.registry).settled
        exporter.registry.register(WorkerQueues(settings.dsn))
    logging.getLogger("mgte.worker").info("worker started (socket %s)", args.socket)
    worker.run()
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from mgte.worker import backfill

    backfill(_worker_settings(args), args.table)
    return 0


def _serve(args: argparse.Namespace) -> int:
    # torch's OpenMP threads (libgomp) spin after each parallel region before they sleep,
    # taking CPU that PostgreSQL and the workers on the same machine need. A short spin keeps
    # most of the latency benefit. Measured on 2 cores: libgomp's default spin 63.7 ms per
    # full-size query, 1,965 rows/s auto-embedding (tiny model); 3000 spins 66.9 ms, 2,966
    # rows/s; no spin (OMP_WAIT_POLICY=PASSIVE) 79.1 ms, 3,187 rows/s. Set before torch loads.
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")
    from mgte.allocator import keep_freed_memory

    allocator = keep_freed_memory()  # before another thread allocates: glibc counts arenas then
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s mgte %(levelname)s %(message)s")
    exporter = _metrics(args)
    import torch
    import transformers

    from mgte.checkpoint import load_checkpoint
    from mgte.runtime import Reranker, load_encoder, resolve_device, resolve_dtype
    from mgte.server import Limits, Server, Settings

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    limits = Limits(
        max_request_texts=args.max_request_texts,
        max_request_bytes=args.max_request_bytes,
        max_queue_texts=args.max_queue_texts,
        max_batch_tokens=args.max_batch_tokens or (65536 if device.type == "cuda" else 4096),
        max_connections=args.max_connections,
        max_pending_bytes=args.max_pending_bytes or 8 * args.max_request_bytes,
        frame_read_timeout=args.frame_read_timeout,
    )
    if limits.max_queue_texts < limits.max_request_texts:
        raise UserError(f"--max-queue-texts ({limits.max_queue_texts}) is below --max-request-texts "
                        f"({limits.max_request_texts}): the largest request could never be queued")
    if limits.max_pending_bytes < limits.max_request_bytes:
        raise UserError(f"--max-pending-bytes ({limits.max_pending_bytes}) is below --max-request-bytes "
                        f"({limits.max_request_bytes}): the largest request could never be read")
    embedder = load_encoder(load_checkpoint(args.model, "embedding"), device, dtype, args.compile)
    reranker = (Reranker(load_checkpoint(args.reranker, "reranker"), device, dtype, args.compile)
                if args.reranker else None)
    settings = Settings(socket_path=args.socket, socket_mode=args.socket_mode,
                        socket_group=args.socket_group, limits=limits, allocator=allocator)
    server = Server(settings, embedder, reranker)
    if exporter is not None:
        from mgte.metrics import ServerRequests, ServerState

        server.observer = ServerRequests(exporter.registry)
        exporter.registry.register(ServerState(server))
    server.run()
    return 0


def _info(args: argparse.Namespace) -> int:
    from mgte.client import Client

    with Client(str(args.socket), timeout=10) as client:
        print(json.dumps(client.info(), indent=2, ensure_ascii=False))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from mgte.doctor import as_json, diagnose, exit_status, render

    checks = diagnose(args.dsn, str(args.socket))
    print(as_json(checks) if args.json else render(checks))
    return exit_status(checks)


def _demo(args: argparse.Namespace) -> int:
    from mgte.demo import run_demo

    return run_demo(model=args.model, reranker=args.reranker, datadir=args.datadir, keep=args.keep)


def _octal(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an octal file mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{value!r} is not a file mode (0000 to 0777)")
    return mode


def _log_level(value: str) -> str:
    if value.lower() not in ("debug", "info", "warning", "error"):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of debug, info, warning, error")
    return value.lower()


def _natural(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return number


def _positive(value: str) -> int:
    number = _natural(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number
