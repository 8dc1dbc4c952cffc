"""Prometheus metrics of `mgte serve` and `mgte worker`, over HTTP at --metrics-address.

Imported only when metrics are asked for: prometheus-client is an optional dependency
(pip install 'mgte[metrics]'). Each process exports a registry of its own, not the library's
global one: mgte's metrics and the process's (CPU, memory, open files), nothing another
library happened to register. What happens is counted where it happens (requests, settled
batches); what the server already counts for `mgte info`, and the worker's queues, are read
when Prometheus scrapes, so the metrics and `mgte info` never disagree.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from mgte.errors import UserError

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:
    raise UserError("--metrics-address needs the prometheus-client package, which is not installed",
                    hint="pip install 'mgte[metrics]'") from None

if TYPE_CHECKING:
    from mgte.server import Server
    from mgte.worker import BatchResult

log = logging.getLogger("mgte.metrics")

# Request latency: a short query on a GPU takes about a millisecond, a full queue minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Exporter:
    """The registry of this process, served over HTTP. The address must be a loopback one
    unless `allow_remote`: the metrics name tables and models, and the endpoint has no
    authentication."""

    def __init__(self, address: str, allow_remote: bool) -> None:
        self.host, self.port = _address(address, allow_remote)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)

    def start(self) -> None:
        try:
            start_http_server(self.port, self.host, registry=self.registry)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}",
                            hint="choose another --metrics-address") from None
        host = f"[{self.host}]" if ":" in self.host else self.host
        log.info("metrics at http://%s:%d/metrics", host, self.port)


def _address(address: str, allow_remote: bool) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) checked: a port, and a loopback host unless allowed."""
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--metrics-address {address!r} is not HOST:PORT", hint="e.g. 127.0.0.1:9464")
    if not allow_remote and not _loopback(host):
        raise UserError(f"--metrics-address {address!r} is not a loopback address: the metrics endpoint has no "
                        "authentication", hint="scrape through a loopback address (127.0.0.1, ::1), or pass "
                                               "--metrics-allow-remote to serve it on this address anyway")
    return host, int(port)


def _loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror as exc:
        raise UserError(f"--metrics-address: cannot resolve {host!r}: {exc.strerror}") from None
    return all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


class ServerRequests:
    """Requests by operation and outcome, and their latency: a server.RequestObserver."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter("mgte_requests", "requests answered, by operation (unknown: not read) and outcome "
                                 "(ok, or the error code)", ["op", "outcome"], registry=registry)
        self._latency = Histogram("mgte_request_duration_seconds", "seconds from a request read whole to its answer "
                                  "ready: tokenising, waiting in the queue, the model", ["op"],
                                  buckets=LATENCY_BUCKETS, registry=registry)

    def request(self, op: str, outcome: str, seconds: float | None) -> None:
        self._requests.labels(op, outcome).inc()
        if seconds is not None:
            self._latency.labels(op).observe(seconds)


class ServerState(Collector):
    """What `mgte info` says, as metrics, read at each scrape."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        info = self.server.info()
        batching = info["batching"]
        model = info["model"]
        labels = {"version": info["server_version"], "model": model["id"], "device": model["device"],
                  "dtype": model["dtype"], "reranker": info["reranker"]["id"] if info["reranker"] else ""}
        yield _gauge("mgte_server_info", "the served models (value 1)", 1, labels)
        yield _gauge("mgte_queued_texts", "texts waiting for the model", info["queued_texts"])
        yield _gauge("mgte_max_queue_texts", "--max-queue-texts: beyond it requests are refused",
                     info["limits"]["max_queue_texts"])
        yield _gauge("mgte_connections", "open client connections", info["connections"])
        yield _gauge("mgte_pending_bytes", "bytes of requests being read or answered", info["pending_bytes"])
        refusals = CounterMetricFamily("mgte_refusals", "work refused as overloaded, by the limit reached: the "
                                       "queue (--max-queue-texts), connections (--max-connections), request bytes "
                                       "(--max-pending-bytes)", labels=["limit"])
        refusals.add_metric(["queue"], batching["rejected_overloaded"])
        refusals.add_metric(["connections"], info["refused_connections"])
        refusals.add_metric(["pending_bytes"], info["refused_requests"])
        yield refusals
        yield _counter("mgte_batches", "model batches run", batching["batches"])
        yield _counter("mgte_failed_batches", "model batches that failed", batching["failed_batches"])
        yield _counter("mgte_multi_request_batches", "batches that served more than one request",
                       batching["multi_request_batches"])
        yield _counter("mgte_sequences", "texts (or query-document pairs) run through a model", batching["sequences"])
        yield _counter("mgte_tokens", "tokens run through a model; tokens/s is its rate", batching["tokens"])
        yield _counter("mgte_padded_tokens", "tokens with the padding of their batch; batch fill is "
                       "mgte_tokens_total / mgte_padded_tokens_total", batching["padded_tokens"])
        yield _counter("mgte_model_busy_seconds", "seconds the model thread spent running batches",
                       batching["busy_seconds"])
        memory = info["device_memory"]
        if memory is not None:
            yield _gauge("mgte_device_memory_allocated_bytes", "GPU memory held by tensors",
                         memory["allocated_bytes"], {"device": model["device"]})
            yield _gauge("mgte_device_memory_reserved_bytes", "GPU memory held by torch's caching allocator",
                         memory["reserved_bytes"], {"device": model["device"]})


class WorkerBatches:
    """Rows the worker settled, per table: stored, failed (to the dead letters), requeued
    (given back to retry, or because their text changed meanwhile), and batches."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._rows = Counter("mgte_worker_rows", "rows settled, by table and outcome (stored, failed: in the dead "
                             "letters, requeued: given back to retry or because their text changed)",
                             ["table", "outcome"], registry=registry)
        self._batches = Counter("mgte_worker_batches", "batches settled, by table", ["table"], registry=registry)

    def settled(self, table: str, result: BatchResult) -> None:
        self._batches.labels(table).inc()
        for outcome, rows in (("stored", result.stored), ("failed", result.failed), ("requeued", result.released)):
            self._rows.labels(table, outcome).inc(rows)


class WorkerQueues(Collector):
    """mgte_status() of the worker's database at each scrape, on a connection of its own: the
    worker's own connections are busy with its batches, and a long drain must not leave the
    gauges as they were when it began."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # scrapes may come at once

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            rows = self._status()
        if rows is None:
            return
        families = [GaugeMetricFamily(name, text, labels=["table"]) for name, text in (
            ("mgte_worker_pending_rows", "rows waiting to be embedded"),
            ("mgte_worker_in_progress_rows", "rows claimed by a worker"),
            ("mgte_worker_failed_rows", "rows in the dead letters"),
            ("mgte_worker_oldest_pending_seconds", "age of the oldest row waiting to be embedded; 0 when none"))]
        for table, *values in rows:
            for family, value in zip(families, values, strict=True):
                family.add_metric([table], float(value or 0))
        yield from families

    def _status(self) -> list[tuple[Any, ...]] | None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, application_name="mgte worker metrics",
                                             connect_timeout=5)
                self._conn.execute("SET statement_timeout = '5s'")
            return self._conn.execute(
                "SELECT table_name::text, pending, in_progress, failed, extract(epoch FROM oldest_pending) "
                "FROM mgte_status()").fetchall()
        except psycopg.Error as exc:
            log.warning("metrics: cannot read mgte_status(): %s", str(exc).strip())
            if self._conn is not None:
                self._conn.close()
            return None


def _gauge(name: str, text: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)
