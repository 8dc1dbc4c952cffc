"""`mgte doctor`: checks an installation from PostgreSQL's point of view, one line per check.

A DBA runs it with the database's DSN (a superuser: it reads mgte's catalog and every table's
queue) and the server's socket. Each check is ok, warn or fail, with the fix for anything not
ok; a check that an earlier failure makes impossible is skip. The exit status is 0 when every
check is ok, 1 when some warn and none fail, 2 when any fails.

The socket is tried twice: by this process, and by a PostgreSQL backend (`mgte_info()`),
which runs as PostgreSQL's OS user. When only the backend fails, the socket's permissions
keep that user out, and the check says which file or directory does and how to open it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from mgte import __version__
from mgte.worker import APPLICATION_NAME
from mgte_udf import protocol
from mgte_udf.client import Client
from mgte_udf.errors import MgteError

Status = Literal["ok", "warn", "fail", "skip"]

# A queue whose oldest row has waited longer than this is lagging.
LAG_WARN_SECONDS = 300
# WAL a logical mode slot may keep before the doctor warns.
SLOT_WARN_BYTES = 1 << 30
# Longest wait for the server, and for any statement, so that the doctor never hangs.
TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    message: str
    fix: str | None = None
    table: str | None = None  # for the per-table checks (model, queue)


@dataclass(frozen=True)
class Table:
    name: str
    failed_table: str
    dim: int
    sparse: bool
    vocab_size: int
    model: str | None  # the model its embeddings are (to be) made by; None until one is known
    reembed_model: str | None
    pending: int  # with those in progress, and those of a re-embedding
    failed: int
    oldest_pending_seconds: float | None


@dataclass(frozen=True)
class OsUser:
    """Who a process runs as, read from /proc."""

    uid: int
    gids: frozenset[int]

    def describe(self) -> str:
        groups = ", ".join(sorted(_group_name(g) for g in self.gids))
        return f"OS user {_user_name(self.uid)}; groups {groups}"


def diagnose(dsn: str, socket_path: str) -> list[Check]:
    socket_path = os.path.abspath(socket_path)  # a backend would resolve it from the data directory
    served, server = _server(socket_path)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=TIMEOUT_SECONDS,
                               application_name="mgte doctor")
    except psycopg.Error as exc:
        return [Check("postgresql", "fail", f"cannot connect: {' '.join(str(exc).split())}",
                      "check --dsn (a libpq connection string such as 'host=/var/run/postgresql dbname=app "
                      "user=postgres'); empty uses the PG* environment variables"),
                *_skipped("no connection to PostgreSQL", "extension", "plpython3u", "vector"), server,
                *_skipped("no connection to PostgreSQL", "socket setting", "backend socket", "workers")]
    checks = []
    with conn:
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", [f"{TIMEOUT_SECONDS}s"])
            checks.append(_postgresql(conn))
            extension, schema = _extension(conn)
            checks += [extension, _required(conn, "plpython3u"), _required(conn, "vector"), server]
            if schema is None:
                return checks + _skipped("the database has no mgte extension", "socket setting", "backend socket",
                                         "workers")
            # Before _backend, which sets mgte.socket_path in this session.
            checks.append(_socket_setting(conn, socket_path))
            backend, backend_info = _backend(conn, schema, socket_path, reached=served is not None)
            checks.append(backend)
            tables = _tables(conn, schema)
            checks += _models(tables, served or backend_info, socket_path)
            checks.append(_workers(conn, tables, socket_path))
            checks += _slot(conn, socket_path)
            if extension.status == "ok":  # they read this release's catalog, which an outdated one lacks
                checks += _triggers(conn) + _subscribed(conn)
            checks += [queue_check(table) for table in tables]
        except psycopg.Error as exc:
            # Most likely the DSN's role may not read what a check needs; the rest is not checked.
            checks.append(Check("database", "fail", f"could not check: {exc.diag.message_primary or str(exc).strip()}",
                                exc.diag.message_hint or "connect with --dsn as a superuser (the DBA): the doctor "
                                                         "reads mgte's catalog and every table's queue"))
    return checks


def exit_status(checks: list[Check]) -> int:
    statuses = {c.status for c in checks}
    return 2 if statuses & {"fail", "skip"} else 1 if "warn" in statuses else 0


def render(checks: list[Check]) -> str:
    """One line per check, and its fix on the next line when it is not ok."""
    width = max(len(_title(c)) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<5} {_title(c):<{width}}  {c.message}")
        if c.fix and c.status != "ok":
            lines.append(f"{'':<5} {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("fail", "warn", "skip")}
    lines.append(f"{counts['fail']} failed, {counts['warn']} warned, {counts['skip']} not checked: "
                 f"exit status {exit_status(checks)}")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2, ensure_ascii=False)


def _title(check: Check) -> str:
    return check.check if check.table is None else f"{check.check} {check.table}"


def _skipped(why: str, *names: str) -> list[Check]:
    return [Check(name, "skip", f"not checked: {why}") for name in names]


def _server(socket_path: str) -> tuple[dict[str, Any] | None, Check]:
    """What the server says of itself when this process asks it directly."""
    start = f"start it: mgte serve --socket {socket_path} --socket-group postgres"
    try:
        with Client(socket_path, timeout=TIMEOUT_SECONDS) as client:
            info = client.info()
    except MgteError as exc:
        if "permission denied" in str(exc):
            return None, Check("server", "warn", f"this process may not connect to {socket_path}: {exc}",
                               "run mgte doctor as root or as a member of the socket's group to check the server "
                               "directly; the backend socket check says whether PostgreSQL can")
        return None, Check("server", "fail", str(exc), exc.hint or start)
    return info, Check("server", "ok", f"mgte server {info['server_version']} at {socket_path}, up "
                                       f"{_duration(float(info['uptime_seconds']))}: {_describe(info)}")


def _describe(info: dict[str, Any]) -> str:
    model = info["model"]
    text = (f"model {model['id']} ({model['hidden_size']} dimensions, vocabulary {model['vocab_size']}, "
            f"{model['parameters'] / 1e6:.1f}M parameters, {model['dtype']} on {model['device']}"
            f"{', sparse output' if model.get('sparse') else ', no sparse output'})")
    reranker = info.get("reranker")
    if reranker:
        text += f", reranker {reranker['id']} ({reranker['parameters'] / 1e6:.1f}M parameters)"
    else:
        text += ", no reranker"
    return text


def _postgresql(conn: psycopg.Connection[Any]) -> Check:
    version = conn.info.server_version
    shown = f"PostgreSQL {version // 10000}.{version % 10000}, database {conn.info.dbname}"
    if version < 150000:
        return Check("postgresql", "fail", f"{shown}: mgte needs PostgreSQL 15 or later",
                     "upgrade PostgreSQL (pg_upgrade), then install mgte there")
    return Check("postgresql", "ok", shown)


def _extension(conn: psycopg.Connection[Any]) -> tuple[Check, str | None]:
    """The installed version against the newest installed files; the schema, when installed."""
    installed, available, schema = _row(conn, """
        SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'mgte'),
               (SELECT default_version FROM pg_catalog.pg_available_extensions WHERE name = 'mgte'),
               (SELECT extnamespace::regnamespace::text FROM pg_catalog.pg_extension WHERE extname = 'mgte')""")
    if available is None:
        return Check("extension", "fail", "PostgreSQL has no mgte extension files",
                     "install them: make -C extension install PG_CONFIG=<this PostgreSQL's pg_config> "
                     "(scripts/setup.sh does)"), None
    if installed is None:
        return Check("extension", "fail", f"mgte {available} is available but not installed in database "
                                          f"{conn.info.dbname}", "CREATE EXTENSION mgte CASCADE"), None
    if installed != available:
        path, = _row(conn, "SELECT path FROM pg_catalog.pg_extension_update_paths('mgte') "
                           "WHERE source = %s AND target = %s", installed, available)
        if path is None:
            return Check("extension", "fail",
                         f"mgte {installed} is installed and {available} available, but the installed files hold "
                         f"no update path from {installed} to {available}",
                         f"install the files of a release with the upgrade scripts from {installed} "
                         "(make -C extension install), then ALTER EXTENSION mgte UPDATE"), schema
        return Check("extension", "warn",
                     f"mgte {installed} is installed and {available} available: ALTER EXTENSION mgte UPDATE "
                     f"would run {path.replace('--', ' -> ')}",
                     "ALTER EXTENSION mgte UPDATE in each database that has mgte, then restart the workers "
                     "(sessions use the new version once they reconnect)"), schema
    if available != __version__:
        return Check("extension", "warn",
                     f"mgte {installed} is installed, but this mgte command is {__version__}",
                     "install this release's extension (make -C extension install), then ALTER EXTENSION mgte "
                     "UPDATE"), schema
    return Check("extension", "ok", f"mgte {installed} in schema {schema}, the newest available"), schema


def _required(conn: psycopg.Connection[Any], name: str) -> Check:
    installed, available = _row(conn, """
        SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = %(name)s),
               (SELECT default_version FROM pg_catalog.pg_available_extensions WHERE name = %(name)s)""",
                                name=name)
    major = conn.info.server_version // 10000
    package = f"postgresql-plpython3-{major}" if name == "plpython3u" else f"postgresql-{major}-pgvector"
    if installed is None and available is None:
        return Check(name, "fail", f"PostgreSQL has no {name} extension",
                     f"install it (Debian: apt-get install {package}), then CREATE EXTENSION mgte CASCADE")
    if installed is None:
        return Check(name, "fail", f"{name} {available} is available but not installed in database "
                                   f"{conn.info.dbname}", "CREATE EXTENSION mgte CASCADE brings it along")
    if name == "vector" and _version_tuple(installed) < (0, 7):
        return Check(name, "fail", f"pgvector {installed} has no sparsevec type, which mgte stores",
                     f"install pgvector 0.7 or later ({package}), then ALTER EXTENSION vector UPDATE")
    return Check(name, "ok", f"{name} {installed}")


def _backend(conn: psycopg.Connection[Any], schema: str, socket_path: str,
             reached: bool) -> tuple[Check, dict[str, Any] | None]:
    """mgte_info() in a backend, at `socket_path` (the doctor's role may choose the socket when
    it is a superuser or a member of mgte_choose_socket; otherwise the backend uses the DBA's)."""
    who = _backend_user(conn)
    user = who.describe() if who else "the OS user PostgreSQL runs as"
    conn.execute("SELECT set_config('mgte.socket_path', %s, false), set_config('mgte.timeout_ms', %s, false)",
                 [socket_path, str(TIMEOUT_SECONDS * 1000)])
    try:
        info, = _row(conn, sql.SQL("SELECT {}.mgte_info()").format(sql.Identifier(schema)))
    except psycopg.Error as exc:
        error = (exc.diag.message_primary or str(exc).strip()).removeprefix("plpy.Error: ")
        blocked = _blocked(Path(socket_path), who) if reached and who else None
        if blocked is not None:
            what, fix = blocked
            return Check("backend socket", "fail", f"PostgreSQL backends ({user}) cannot connect: {what}", fix), None
        return Check("backend socket", "fail", f"PostgreSQL backends ({user}) cannot use the server: {error}",
                     exc.diag.message_hint or "SELECT mgte_info() in psql gives the same error; the "
                                             "PostgreSQL log may say more"), None
    return Check("backend socket", "ok", f"PostgreSQL backends ({user}) reach the server at "
                                         f"{info['socket_path']}"), info


def _backend_user(conn: psycopg.Connection[Any]) -> OsUser | None:
    """The OS user of this session's backend, when PostgreSQL runs on this machine (as it
    must, to share a Unix socket with the server)."""
    try:
        status = Path(f"/proc/{conn.info.backend_pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("Name", "").strip() != "postgres":  # a process of another machine's PostgreSQL
        return None
    uid = int(fields["Uid"].split()[1])  # the effective one
    gids = {int(fields["Gid"].split()[1]), *(int(g) for g in fields.get("Groups", "").split())}
    return OsUser(uid, frozenset(gids))


def _blocked(socket_path: Path, who: OsUser) -> tuple[str, str] | None:
    """What keeps `who` from connecting to the socket (a directory it may not search, or the
    socket itself it may not write), and the fix; None when the permission bits allow it."""
    try:
        for directory in reversed(socket_path.parents):
            st = directory.stat()
            if not _allowed(st, who, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return (f"the directory {directory} ({_owner(st)}) does not let {_user_name(who.uid)} through",
                        f"chmod o+x {directory} (or chgrp {_group_name(_primary_gid(who))} {directory} and "
                        f"chmod g+x {directory})")
        st = socket_path.stat()
    except OSError:
        return None
    if _allowed(st, who, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH):
        return None
    what = f"the socket {socket_path} is {_owner(st)}, which {_user_name(who.uid)} may not write"
    if st.st_gid in who.gids:
        return what, (f"restart mgte serve with --socket-mode 0660 (group {_group_name(st.st_gid)} may then "
                      "connect)")
    group = _group_name(_primary_gid(who))
    return what, f"restart mgte serve with --socket-group {group} --socket-mode 0660"


def _allowed(st: os.stat_result, who: OsUser, owner_bit: int, group_bit: int, other_bit: int) -> bool:
    # As the kernel decides, without ACLs: the owner's bits for the owner, else the group's
    # for a member, else the others'.
    if who.uid == 0:
        return True
    if st.st_uid == who.uid:
        return bool(st.st_mode & owner_bit)
    if st.st_gid in who.gids:
        return bool(st.st_mode & group_bit)
    return bool(st.st_mode & other_bit)


def _socket_setting(conn: psycopg.Connection[Any], socket_path: str) -> Check:
    """The socket that the database's sessions use (the DBA's mgte.socket_path) against --socket."""
    configured: str | None
    if _row(conn, "SELECT to_regprocedure('mgte._configured_socket_path()') IS NOT NULL")[0]:
        configured, = _row(conn, "SELECT mgte._configured_socket_path()")
    else:  # releases before 0.2.0 use the session's setting, which starts as the DBA's
        configured, = _row(conn, "SELECT current_setting('mgte.socket_path', true)")
    shown = "mgte.socket_path" if configured else "the default: mgte.socket_path is not set"
    used = configured or protocol.DEFAULT_SOCKET_PATH
    if os.path.normpath(used) != os.path.normpath(socket_path):
        return Check("socket setting", "warn",
                     f"sessions of database {conn.info.dbname} use {used} ({shown}), not --socket {socket_path}",
                     f"point the database at this server: ALTER DATABASE {conn.info.dbname} SET mgte.socket_path = "
                     f"'{socket_path}' (new sessions use it); or check that server: mgte doctor --socket {used}")
    return Check("socket setting", "ok", f"sessions of database {conn.info.dbname} use {used} ({shown})")


def _tables(conn: psycopg.Connection[Any], schema: str) -> list[Table]:
    # to_jsonb reads the columns that later releases added, so that an outdated extension
    # can be checked too.
    rows = conn.execute(sql.SQL("""
        SELECT e.tbl::text, e.failed::text, e.dim, e.sparse, e.vocab_size, to_jsonb(e) ->> 'model',
               to_jsonb(s) ->> 'reembed_model',
               s.pending + s.in_progress + coalesce((to_jsonb(s) ->> 'reembed_pending')::bigint, 0), s.failed,
               extract(epoch FROM s.oldest_pending)::float8
        FROM mgte.enabled e JOIN {}.mgte_status() s ON s.table_name = e.tbl
        ORDER BY 1""").format(sql.Identifier(schema))).fetchall()
    return [Table(*row) for row in rows]


def _models(tables: list[Table], served: dict[str, Any] | None, socket_path: str) -> list[Check]:
    """Whether the served model may store into each enabled table (what the worker checks)."""
    if served is None:
        return [Check("model", "skip", "not checked: no server answers", table=t.name) for t in tables]
    model = served["model"]
    served_id = model["id"]
    checks = []
    for t in tables:
        if t.reembed_model == served_id:
            checks.append(Check("model", "ok", f"being re-embedded with the served model {served_id}",
                                table=t.name))
        elif t.model is not None and t.model != served_id:
            checks.append(Check(
                "model", "fail", f"its embeddings were made by {t.model}, but the server serves {served_id}: "
                                 "nothing is stored for it",
                f"serve {t.model} at {socket_path} again; or move the table to the served model without a gap: "
                f"SELECT mgte_reembed('{t.name}', model => '{served_id}') and run mgte worker at its server",
                table=t.name))
        elif int(model["hidden_size"]) < t.dim:
            checks.append(Check(
                "model", "fail", f"it stores {t.dim} dimensions, the served model {served_id} has "
                                 f"{model['hidden_size']}",
                f"serve a model with at least {t.dim} dimensions{f' ({t.model})' if t.model else ''}",
                table=t.name))
        elif t.sparse and not model.get("sparse", False):
            checks.append(Check("model", "fail", f"it stores sparse weights, which {served_id} does not produce",
                                "serve a model with sparse output (the mGTE embedding model has one)",
                                table=t.name))
        elif t.sparse and int(model["vocab_size"]) != t.vocab_size:
            checks.append(Check(
                "model", "fail", f"its sparse vectors have {t.vocab_size} dimensions, the vocabulary of "
                                 f"{served_id} has {model['vocab_size']}",
                "serve a model with the table's vocabulary (every mGTE model has the same one)", table=t.name))
        else:
            model_of = f"its model {t.model} is served" if t.model else "no model recorded yet"
            checks.append(Check("model", "ok", f"{t.dim} dimensions{' and sparse weights' if t.sparse else ''}, "
                                               f"{model_of}", table=t.name))
    return checks


def _workers(conn: psycopg.Connection[Any], tables: list[Table], socket_path: str) -> Check:
    connections, = _row(conn, "SELECT count(*) FROM pg_catalog.pg_stat_activity "
                              "WHERE datname = current_database() AND application_name = %s",
                        APPLICATION_NAME)
    if not tables:
        return Check("workers", "ok", f"no table has auto-embedding, so no worker is needed "
                                      f"({connections} worker connections)")
    start = (f"start one: mgte worker --dsn 'dbname={conn.info.dbname}' --socket {socket_path}, connecting as a "
             "member of the role mgte_worker")
    queued = sum(t.pending for t in tables)
    if connections == 0 and queued:
        return Check("workers", "fail", f"no mgte worker is connected to database {conn.info.dbname}, and "
                                        f"{queued} rows wait in the queues", start)
    if connections == 0:
        return Check("workers", "warn", f"no mgte worker is connected to database {conn.info.dbname}: rows "
                                        "written from now on will wait in the queues", start)
    return Check("workers", "ok", f"{connections} connections of mgte workers (each worker keeps --connections + 2)")


def _slot(conn: psycopg.Connection[Any], socket_path: str) -> list[Check]:
    """Logical mode's slot (sql/logical.sql): there when a table is in logical mode, and the
    WAL it keeps on disk until a worker reads it. No check without either."""
    logical, name, status, retained = _row(conn, """
        SELECT EXISTS (SELECT FROM mgte.enabled WHERE mode = 'logical'), s.slot_name, s.wal_status,
               CASE WHEN NOT pg_catalog.pg_is_in_recovery()
                    THEN pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint END
        FROM (SELECT 'mgte_' || oid AS name FROM pg_catalog.pg_database WHERE datname = current_database()) d
        LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = d.name""")
    start = (f"start mgte worker --dsn 'dbname={conn.info.dbname}' --socket {socket_path}: it makes the slot and "
             "brings the tables in logical mode up to date")
    if name is None:
        return [Check("slot", "warn", "a table is in logical mode, but there is no slot yet: its writes wait "
                                      "for a worker", start)] if logical else []
    kept = f"keeps {_bytes(retained)} of WAL" if retained is not None else "is there"
    if not logical:
        return [Check("slot", "warn", f"slot {name} {kept}, and no table is in logical mode",
                      f"SELECT pg_drop_replication_slot('{name}') (a running mgte worker drops it too)")]
    if status == "lost":
        return [Check("slot", "fail", f"slot {name} is lost: PostgreSQL removed WAL it still needed "
                                      "(max_slot_wal_keep_size)", start)]
    if retained is not None and retained > SLOT_WARN_BYTES:
        return [Check("slot", "warn", f"slot {name} {kept}: no worker has read it lately",
                      f"check that a worker runs and what its log says, or {start}; "
                      "max_slot_wal_keep_size bounds what a slot may keep")]
    return [Check("slot", "ok", f"slot {name} {kept}")]


def _triggers(conn: psycopg.Connection[Any]) -> list[Check]:
    """Tables whose triggers (sql/auto_embed.sql: on the table and its partitions, as the mode
    wants them) are missing or disabled: the writes meanwhile are not embedded. No check for
    the others."""
    rows = conn.execute("""
        WITH sets AS (SELECT (s.cfg).tbl, (s.cfg).mode, s.triggers FROM mgte._sets() s),
        wanted AS (
            SELECT s.tbl, rel, s.triggers || event AS name
            FROM sets s, mgte._trigger_relations(s.tbl) AS rel, unnest(mgte._trigger_events()) AS event
            WHERE s.mode <> 'logical' OR (rel <> s.tbl AND event = 'truncate'))
        SELECT w.tbl::text, string_agg(format('%s on %s', w.name, w.rel), ', ' ORDER BY w.rel::text, w.name)
        FROM wanted w
        WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g
                          WHERE g.tgrelid = w.rel AND g.tgname = w.name AND g.tgenabled IN ('O', 'A'))
        GROUP BY 1 ORDER BY 1""").fetchall()
    return [Check("capture", "fail", f"its triggers are missing or disabled ({triggers}): writes are not embedded",
                  f"SELECT mgte_resync('{table}') as its owner: it makes them again and has the worker bring the "
                  "table up to date", table=table)
            for table, triggers in rows]


def _subscribed(conn: psycopg.Connection[Any]) -> list[Check]:
    """Tables outside logical mode that a logical replication subscription writes: its apply
    worker fires no statement-level trigger, so the rows it applies are never queued. No check
    for the others."""
    rows = conn.execute("""
        SELECT e.tbl::text, e.text_column, string_agg(DISTINCT s.subname, ', ')
        FROM mgte.enabled e
        JOIN pg_catalog.pg_subscription_rel r ON r.srrelid IN (SELECT mgte._trigger_relations(e.tbl))
        JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid
        WHERE e.mode <> 'logical'
        GROUP BY 1, 2 ORDER BY 1""").fetchall()
    return [Check("capture", "fail", f"subscription {subscriptions} writes it, and its apply worker fires no "
                                     "statement-level trigger: the rows it applies are not embedded",
                  f"SELECT mgte_enable('{table}', '{column}', mode => 'logical'), which reads them from the WAL",
                  table=table)
            for table, column, subscriptions in rows]


def _bytes(n: int) -> str:
    size, unit = float(n), "bytes"
    for bigger in ("kB", "MB", "GB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def queue_check(t: Table) -> Check:
    """Lag and dead letters of one table's queue."""
    shown = f"{t.pending} rows queued, {t.failed} failed"
    if t.oldest_pending_seconds is not None:
        shown += f", the oldest queued {_duration(t.oldest_pending_seconds)} ago"
    problems, fixes = [], []
    if t.oldest_pending_seconds is not None and t.oldest_pending_seconds > LAG_WARN_SECONDS:
        problems.append(f"rows have waited more than {_duration(LAG_WARN_SECONDS)}")
        fixes.append("check that the workers run and what their logs say; start more for a large backlog")
    if t.failed:
        problems.append("the server rejected some rows")
        fixes.append(f"read why: SELECT * FROM {t.failed_table}; once that is fixed, "
                     f"SELECT mgte_retry_failed('{t.name}')")
    if problems:
        return Check("queue", "warn", f"{shown}: {'; '.join(problems)}", "; ".join(fixes), table=t.name)
    return Check("queue", "ok", shown, table=t.name)


def _row(conn: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    row = conn.execute(query, kwargs or args or None).fetchone()
    assert row is not None
    return tuple(row)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _primary_gid(who: OsUser) -> int:
    try:
        return pwd.getpwuid(who.uid).pw_gid
    except KeyError:
        return min(who.gids)


def _owner(st: os.stat_result) -> str:
    return f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
