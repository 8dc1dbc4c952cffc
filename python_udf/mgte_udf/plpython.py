"""What the extension's PL/Python bodies call: settings, one client per backend, Postgres errors.

Each SQL function's body is one import and one call into this module, so that all of the
logic can be tested without PostgreSQL. `plpy` and `GD` are PL/Python's own objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import mgte_udf
from mgte_udf import protocol
from mgte_udf.client import DEFAULT_TIMEOUT, Client
from mgte_udf.errors import MgteError, ModelMismatch
from mgte_udf.records import records, sparsevec_literal, top_weights, vector_literal

# The session's own mgte.socket_path counts for superusers and members of mgte_choose_socket
# only (superusers have every role); for everyone else, the DBA's (_configured_socket_path).
_SETTINGS_SQL = ("SELECT pg_catalog.current_setting('mgte.socket_path', true) AS socket_path, "
                 "pg_catalog.pg_has_role(current_user, 'mgte_choose_socket', 'USAGE') AS may_choose_socket, "
                 "pg_catalog.pg_conf_load_time() AS conf_loaded, "
                 "pg_catalog.current_setting('mgte.timeout_ms', true) AS timeout_ms, "
                 "pg_catalog.statement_timestamp() AS statement")
# Results remembered within one statement, at most this many.
_STATEMENT_CACHE_SIZE = 1024

T = TypeVar("T")


def embed(plpy: Any, GD: dict[str, Any], text: str | None, dim: int | None) -> str | None:
    if text is None:
        return None

    def compute(client: Client) -> str:
        result = _request(plpy, "embed", lambda: client.encode([text], dense=True, dim=dim))
        _notice_truncated(plpy, result.truncated, result.tokens, single=True)
        assert result.dense is not None
        return vector_literal(result.dense[0])
    return _once_per_statement(plpy, GD, ("embed", text, dim), compute)


def embed_many(plpy: Any, GD: dict[str, Any], texts: list[Any] | None, dim: int | None) -> list[str | None] | None:
    if texts is None:
        return None
    present = _present(plpy, "mgte_embed", texts)
    out: list[str | None] = [None] * len(texts)
    if present:
        result = _call(plpy, GD, "embed", lambda client: client.encode([texts[i] for i in present], dense=True,
                                                                       dim=dim))
        _notice_truncated(plpy, [present[i] for i in result.truncated], result.tokens, single=False)
        assert result.dense is not None
        for i, vector in zip(present, result.dense, strict=True):
            out[i] = vector_literal(vector)
    return out


def sparse(plpy: Any, GD: dict[str, Any], text: str) -> str:
    def compute(client: Client) -> str:
        result = _request(plpy, "sparse", lambda: client.encode([text], dense=False, sparse=True))
        _notice_truncated(plpy, result.truncated, result.tokens, single=True)
        assert result.sparse is not None
        return json.dumps(result.sparse[0], ensure_ascii=False)
    return _once_per_statement(plpy, GD, ("sparse", text), compute)


def sparsevec(plpy: Any, GD: dict[str, Any], text: str) -> str:
    def compute(client: Client) -> str:
        result = _request(plpy, "sparsevec", lambda: client.encode([text], dense=False, sparse_ids=True))
        _notice_truncated(plpy, result.truncated, result.tokens, single=True)
        assert result.sparse_ids is not None and result.sparse_dimensions is not None
        return sparsevec_literal(top_weights(result.sparse_ids[0]), result.sparse_dimensions)
    return _once_per_statement(plpy, GD, ("sparsevec", text), compute)


def rerank(plpy: Any, GD: dict[str, Any], query: str, document: str, sigmoid: bool) -> float:
    def compute(client: Client) -> float:
        result = _request(plpy, "rerank", lambda: client.score(query, [document], sigmoid=sigmoid))
        _notice_truncated(plpy, result.truncated, result.tokens, single=True)
        return float(result.scores[0])
    return _once_per_statement(plpy, GD, ("rerank", query, document, sigmoid), compute)


def rerank_many(plpy: Any, GD: dict[str, Any], query: str, documents: list[Any],
                sigmoid: bool) -> list[tuple[int, float | None]]:
    """(1-based array position, score), best first; NULL documents last with a NULL score."""
    present = _present(plpy, "mgte_rerank", documents)
    scores: list[float | None] = [None] * len(documents)
    if present:
        result = _call(plpy, GD, "rerank", lambda client: client.score(query, [documents[i] for i in present],
                                                             sigmoid=sigmoid))
        _notice_truncated(plpy, [present[i] for i in result.truncated], result.tokens, single=False)
        for i, score in zip(present, result.scores, strict=True):
            scores[i] = score
    order = sorted(range(len(documents)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
    return [(i + 1, scores[i]) for i in order]


def encode_rows(plpy: Any, GD: dict[str, Any], texts: list[str] | None, dim: int, want_sparse: bool,
                vocab_size: int, timeout_ms: int | None, fall_back: bool, model: str | None) -> list[tuple[Any, ...]]:
    """Everything auto-embedding stores, per text: its position, then the FIELDS of
    mgte_udf.records; `timeout_ms` NULL means mgte.timeout_ms. The served model must be
    `model` when one is given: a table never mixes the vectors of two models. With
    `fall_back`, failures give no rows and a WARNING, and the caller queues the texts for the
    worker instead."""
    if not texts:
        return []
    client, _ = _session(plpy, GD, timeout=None if timeout_ms is None else timeout_ms / 1000)
    try:
        encoded = client.encode(texts, dense=True, sparse=want_sparse, sparse_ids=want_sparse, dim=dim)
        if model is not None and encoded.model != model:
            raise ModelMismatch(
                f"the mgte server embeds with model {encoded.model}, but this table's embeddings were made by {model}",
                hint="vectors of two models cannot be mixed in one table: serve the table's model, or re-embed "
                     "the table with mgte_reembed()")
    except MgteError as exc:
        _count_error(plpy, "encode")
        if not fall_back:
            plpy.error(str(exc), hint=exc.hint, sqlstate=exc.sqlstate)
        plpy.warning(f"mgte: {len(texts)} row(s) queued for `mgte worker` instead of embedded now: {exc}",
                     hint=exc.hint)
        return []
    _notice_truncated(plpy, encoded.truncated, encoded.tokens, single=len(texts) == 1)
    rows = []
    for position, record in enumerate(records(encoded, vocab_size), start=1):
        fields = record.fields()
        if fields["mgte_sparse"] is not None:  # PL/Python returns jsonb as its text
            fields["mgte_sparse"] = json.dumps(fields["mgte_sparse"], ensure_ascii=False)
        rows.append((position, *fields.values()))
    return rows


def info(plpy: Any, GD: dict[str, Any]) -> str:
    server = _call(plpy, GD, "info", lambda client: client.info())
    client = GD["mgte_client"]
    return json.dumps({"extension_version": mgte_udf.__version__, "socket_path": client.socket_path,
                       "timeout_ms": None if client.timeout is None else round(client.timeout * 1000),
                       **server}, ensure_ascii=False)


def _call(plpy: Any, GD: dict[str, Any], function: str, request: Callable[[Client], T]) -> T:
    client, _ = _session(plpy, GD)
    return _request(plpy, function, lambda: request(client))


def _once_per_statement(plpy: Any, GD: dict[str, Any], key: tuple[Any, ...], compute: Callable[[Client], T]) -> T:
    """Within one SQL statement the same call is answered from memory. STABLE allows it, and
    PostgreSQL needs it: `ORDER BY embedding <#> mgte_embed('q') LIMIT 10` evaluates the
    function once for the index scan and again for every row it returns."""
    client, cache = _session(plpy, GD)
    key = (client.socket_path, *key)
    if key not in cache:
        if len(cache) >= _STATEMENT_CACHE_SIZE:
            cache.clear()
        cache[key] = compute(client)
    return cache[key]  # type: ignore[no-any-return]


def _request(plpy: Any, function: str, request: Callable[[], T]) -> T:
    """`request`'s answer, or its MgteError as a Postgres error, counted as `function`'s."""
    try:
        return request()
    except MgteError as exc:
        _count_error(plpy, function)
        plpy.error(str(exc), hint=exc.hint, sqlstate=exc.sqlstate)
        raise  # plpy.error raises; this tells type checkers so


def _count_error(plpy: Any, function: str) -> None:
    """Counts a failed call for the mgte_stat view, per database and without a write: it calls
    the function's error counter (sql/stat.sql), an empty function whose calls PostgreSQL's
    function statistics count (when track_functions is 'pl' or 'all'). The failed call itself is
    not counted there: PostgreSQL counts a call when it returns."""
    plpy.execute(f"SELECT mgte._errors_{function}()")


def _session(plpy: Any, GD: dict[str, Any], timeout: float | None = None) -> tuple[Client, dict[Any, Any]]:
    """The backend's client for the current settings (or the `timeout` given), kept open across
    calls, and the results already computed in the current statement."""
    plan = GD.get("mgte_settings_plan")
    if plan is None:
        plan = GD["mgte_settings_plan"] = plpy.prepare(_SETTINGS_SQL)
    row = plpy.execute(plan)[0]
    chosen = row["socket_path"] if row["may_choose_socket"] else _configured_socket_path(plpy, GD, row["conf_loaded"])
    socket_path = chosen or protocol.DEFAULT_SOCKET_PATH
    if timeout is None:
        timeout = _timeout_seconds(plpy, row["timeout_ms"])
    client: Client | None = GD.get("mgte_client")
    if client is None or client.socket_path != socket_path or client.timeout != timeout:
        if client is not None:
            client.close()
        # Running any statement lets PostgreSQL act on a pending cancel or statement_timeout.
        interrupt_plan = plpy.prepare("SELECT pg_catalog.pg_sleep(0)")
        client = GD["mgte_client"] = Client(socket_path, timeout=timeout,
                                            interrupt_check=lambda: plpy.execute(interrupt_plan))
    cache = GD.get("mgte_statement_cache")
    if cache is None or cache[0] != row["statement"]:
        cache = GD["mgte_statement_cache"] = (row["statement"], {})
    return client, cache[1]


def _configured_socket_path(plpy: Any, GD: dict[str, Any], conf_loaded: str) -> str | None:
    """The DBA's mgte.socket_path (mgte._configured_socket_path). It reads the configuration
    files, which costs more than a call to the server, so it is read once per session and again
    after a reload: as for PostgreSQL's own settings, a database or role setting takes effect
    in new sessions, a server configuration setting on reload."""
    cached = GD.get("mgte_configured_socket")
    if cached is None or cached[0] != conf_loaded:
        path = plpy.execute("SELECT mgte._configured_socket_path() AS path")[0]["path"]
        cached = GD["mgte_configured_socket"] = (conf_loaded, path)
    return cached[1]  # type: ignore[no-any-return]


def _timeout_seconds(plpy: Any, setting: str | None) -> float:
    if setting is None or setting == "":
        return DEFAULT_TIMEOUT
    try:
        milliseconds = int(setting)
    except ValueError:
        milliseconds = 0
    if milliseconds <= 0:
        plpy.error(f"invalid value for mgte.timeout_ms: {setting!r}", sqlstate="22023",
                   hint="set it to a positive number of milliseconds, e.g. SET mgte.timeout_ms = 30000")
    return milliseconds / 1000


def _present(plpy: Any, function: str, values: list[Any]) -> list[int]:
    """Positions of the non-NULL elements; the array must be one-dimensional."""
    for value in values:
        if isinstance(value, list):
            plpy.error(f"{function} takes a one-dimensional text[], not a multidimensional array",
                       sqlstate="2202E", hint="pass one text per element")
    return [i for i, value in enumerate(values) if value is not None]


def _notice_truncated(plpy: Any, truncated: list[int], tokens: list[int], single: bool) -> None:
    if not truncated:
        return
    if single:
        plpy.notice(f"mgte: the input has {tokens[0]} tokens, more than the model reads; "
                    "only its beginning was used")
    else:
        positions = ", ".join(str(i + 1) for i in truncated[:20]) + (", ..." if len(truncated) > 20 else "")
        plpy.notice(f"mgte: {len(truncated)} input(s) longer than the model reads were truncated "
                    f"(array positions {positions})")
