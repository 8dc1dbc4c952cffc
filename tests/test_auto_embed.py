"""Auto-embedding with real PostgreSQL, real servers and real `mgte worker` processes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mgte.client import Client
from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import Checkpoints, running_server, shared_tempdir, small_vocab_checkpoint, start_server
from tests.databases import Database, database, done, stop, wait_until


@pytest.fixture
def db(cluster: Cluster, server: ServerProcess) -> Iterator[Database]:
    with database(cluster, server.socket) as fresh:
        yield fresh


@pytest.fixture
def own_server(checkpoints: Checkpoints) -> Iterator[ServerProcess]:
    """A server of this test's own, in a directory where it can be restarted."""
    running = start_server(checkpoints.embedding_native, socket_dir=shared_tempdir("mgte-own-"))
    yield running
    running.stop()


def restart(server: ServerProcess, checkpoints: Checkpoints, *flags: str) -> ServerProcess:
    return start_server(checkpoints.embedding_native, *flags, socket_dir=server.socket.parent)


def make_docs(db: Database, rows: int, table: str = "docs", words: int = 0, enable: bool = True) -> None:
    db.conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text, n integer DEFAULT 0)")
    if enable:
        db.conn.execute("SELECT mgte_enable(%s, 'body')", [table])
    filler = " lorem ipsum" * words
    db.conn.execute(f"INSERT INTO {table} (id, body) SELECT g, 'document ' || g || %s "
                    "FROM generate_series(1, %s) g", [filler, rows])


def assert_all_embedded(db: Database, rows: int, table: str = "docs", check_vectors: int | None = None) -> None:
    """Every row stored once, from its current text; `check_vectors` rows (all by default)
    also equal mgte_embed() of that text."""
    embeddings = db.one("SELECT embeddings::text FROM mgte.enabled WHERE tbl = %s::regclass", table)
    assert db.one(f"SELECT count(*) FROM {embeddings}") == rows
    assert db.one(f"SELECT count(*) FROM {table} d JOIN {embeddings} e USING (id) "
                  "WHERE e.text_md5 = md5(d.body)") == rows
    sample = rows if check_vectors is None else check_vectors
    far = db.one(f"SELECT count(*) FROM (SELECT * FROM {table} ORDER BY random() LIMIT %s) d "
                 f"JOIN {embeddings} e USING (id) WHERE e.embedding <-> mgte_embed(d.body) > 1e-4", sample)
    assert far == 0


# --- enabling ----------------------------------------------------------------------

def test_enable_sets_up_and_queues_existing_rows(db: Database) -> None:
    make_docs(db, 10, enable=False)
    db.conn.execute("INSERT INTO docs (id, body) VALUES (11, NULL)")
    store = db.one("SELECT mgte_enable('docs', 'body')::text")
    assert store == "mgte.docs_embeddings"
    assert db.one("SELECT mgte_enable('docs', 'body')::text") == store  # harmless twice
    status = db.status("docs")
    assert (status["pending"], status["in_progress"], status["failed"]) == (10, 0, 0)  # the NULL text waits for none
    assert db.one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                  "WHERE attrelid = 'mgte.docs_embeddings'::regclass AND attname = 'embedding'") == "vector(32)"
    triggers = {row[0] for row in db.conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs'::regclass").fetchall()}
    assert triggers == {"mgte_insert", "mgte_update", "mgte_delete", "mgte_truncate"}
    db.one("SELECT mgte_enable('docs', 'body', mode => 'sync')")  # the mode may change
    assert db.status("docs")["mode"] == "sync"


@pytest.mark.parametrize(("setup", "call", "sqlstate", "message"), [
    ("CREATE TABLE t (a text)", "SELECT mgte_enable('t', 'a')", "42P16", "table public.t has no primary key"),
    ("CREATE TABLE t (id int PRIMARY KEY, a text)", "SELECT mgte_enable('t', 'nope')", "42703",
     'column "nope" of table public.t does not exist'),
    ("CREATE TABLE t (id int PRIMARY KEY, a int)", "SELECT mgte_enable('t', 'a')", "42804",
     'column "a" of table public.t is of type integer, not text'),
    ("CREATE TABLE t (id int PRIMARY KEY, a text)", "SELECT mgte_enable('t', 'a', mode => 'later')", "22023",
     "mode must be 'async', 'sync' or 'logical', not 'later'"),
    ("CREATE TABLE t (id int PRIMARY KEY, a text)", "SELECT mgte_enable('t', 'a', dim => 0)", "22023",
     "dim must be positive"),
    ("CREATE VIEW t AS SELECT 1 AS id, 'x'::text AS a", "SELECT mgte_enable('t', 'a')", "42809",
     "public.t is not a table"),
    ("CREATE TABLE t (id int PRIMARY KEY, a text, b text); SELECT mgte_enable('t', 'a')",
     "SELECT mgte_enable('t', 'b')", "42710", 'already has auto-embedding of column "a"'),
    ("", "SELECT mgte_retry_failed('pg_class')", "42704", "table pg_class has no auto-embedding"),
])
def test_enable_errors(db: Database, setup: str, call: str, sqlstate: str, message: str) -> None:
    if setup:
        db.conn.execute(setup)
    with pytest.raises(psycopg.Error) as raised:
        db.conn.execute(call)
    assert raised.value.sqlstate == sqlstate
    assert message in str(raised.value.diag.message_primary)


def test_enable_without_server_needs_dim(cluster: Cluster, tmp_path: Path) -> None:
    with database(cluster, tmp_path / "no-server.sock") as db:
        db.conn.execute("CREATE TABLE t (id int PRIMARY KEY, a text)")
        with pytest.raises(psycopg.Error) as raised:
            db.conn.execute("SELECT mgte_enable('t', 'a')")
        assert raised.value.sqlstate == "08006" and "dim => 768" in str(raised.value.diag.message_hint)
        assert db.one("SELECT mgte_enable('t', 'a', dim => 768)::text") == "mgte.t_embeddings"


def test_disable_and_drop(db: Database) -> None:
    make_docs(db, 3)
    db.conn.execute("SELECT mgte_disable('docs', keep_embeddings => true)")
    assert db.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass") == 0
    assert db.one("SELECT to_regclass('mgte.docs_queue')") is None
    assert db.one("SELECT to_regclass('mgte.docs_embeddings')::text") == "mgte.docs_embeddings"
    db.conn.execute("DROP TABLE mgte.docs_embeddings")
    db.conn.execute("SELECT mgte_enable('docs', 'body')")
    db.conn.execute("DROP TABLE docs")  # takes its mgte objects along
    assert db.one("SELECT count(*) FROM mgte.enabled") == 0
    assert db.one("SELECT count(*) FROM pg_class WHERE relnamespace = 'mgte'::regnamespace AND relname LIKE "
                  "'docs%'") == 0


def test_hostile_names_are_quoted(db: Database) -> None:
    db.conn.execute('CREATE TABLE "we""ird; DROP TABLE x" ("k e""y" text, "b o""dy" text, PRIMARY KEY ("k e""y"))')
    table = '"we""ird; DROP TABLE x"'
    db.conn.execute("SELECT mgte_enable(%s, %s)", [table, 'b o"dy'])
    db.conn.execute(f"INSERT INTO {table} VALUES ('a', 'first'), ('b', 'second')")
    worker = db.start_worker()
    wait_until(lambda: db.status(table)["pending"] == 0 and db.status(table)["in_progress"] == 0, "embedded")
    stop(worker)
    store = db.one("SELECT embeddings::text FROM mgte.enabled")
    assert db.one(f'SELECT count(*) FROM {store} e JOIN {table} t USING ("k e""y") '
                  f'WHERE e.text_md5 = md5(t."b o""dy")') == 2


def test_composite_key_of_several_types(db: Database) -> None:
    db.conn.execute("CREATE TABLE parts (region text, day date, n numeric, body text, PRIMARY KEY (region, day, n))")
    db.conn.execute("SELECT mgte_enable('parts', 'body', dim => 8, sparse => false)")
    db.conn.execute("INSERT INTO parts VALUES ('eu', '2026-01-02', 1.5, 'uno'), ('eu', '2026-01-02', 2, 'dos'), "
                    "('us', '2026-01-03', 1.5, 'tres')")
    worker = db.start_worker()
    wait_until(lambda: done(db, "parts"), "embedded")
    stop(worker)
    rows = db.conn.execute("SELECT region, n, vector_dims(embedding), sparse, sparsevec FROM mgte.parts_embeddings "
                           "ORDER BY region, n").fetchall()
    assert [(r[0], float(r[1]), r[2], r[3], r[4]) for r in rows] == [
        ("eu", 1.5, 8, None, None), ("eu", 2.0, 8, None, None), ("us", 1.5, 8, None, None)]


# --- the worker ---------------------------------------------------------------------

def test_worker_embeds_dense_sparse_and_sparsevec(db: Database, client: Client) -> None:
    """What the worker stores (vectors in pgvector's binary form) is what mgte_embed,
    mgte_sparse and mgte_sparsevec give, within what another batch shape changes."""
    make_docs(db, 50)
    worker = db.start_worker("--batch-size", "16")
    wait_until(lambda: done(db), "embedded")
    assert_all_embedded(db, 50)
    assert db.one("SELECT pg_get_function_identity_arguments('mgte.docs_settle'::regproc)") == \
        "results jsonb, embeddings vector[], sparsevecs sparsevec[]"
    assert db.one("SELECT max(e.sparsevec <-> mgte_sparsevec(d.body)) FROM docs d JOIN mgte.docs_embeddings e "
                  "USING (id)") < 1e-4
    text, sparse, sparsevec, model, tokens, truncated = db.conn.execute(
        "SELECT d.body, e.sparse, e.sparsevec::text, e.model, e.tokens, e.truncated "
        "FROM docs d JOIN mgte.docs_embeddings e USING (id) WHERE id = 7").fetchone() or ()
    alone = db.one("SELECT mgte_sparse(%s)", text)
    assert set(sparse) == set(alone) and max(abs(sparse[t] - alone[t]) for t in alone) < 1e-4
    assert model == db.one("SELECT mgte_info() -> 'model' ->> 'id'")
    assert tokens == client.encode([text]).tokens[0] and truncated is False
    assert sparsevec.endswith("}/250048") and len(sparse) >= sparsevec.count(":") > 0
    lines = [line for line in db.worker_logs().splitlines() if "docs: " in line and "stored" in line]
    assert lines and all("rows/s" in line for line in lines)  # one line per batch
    stop(worker)


def test_rows_inserted_while_the_server_is_down_are_embedded_when_it_is_back(
        cluster: Cluster, own_server: ServerProcess, checkpoints: Checkpoints) -> None:
    with database(cluster, own_server.socket) as db:
        db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text, n integer DEFAULT 0)")
        db.conn.execute("SELECT mgte_enable('docs', 'body')")
        own_server.stop()
        with pytest.raises(psycopg.Error) as raised:
            db.conn.execute("SELECT mgte_embed('the server is down')")
        assert raised.value.sqlstate == "08006"
        db.start_worker()
        started = time.monotonic()
        for i in range(1, 2001):
            db.conn.execute("INSERT INTO docs (id, body) VALUES (%s, %s)", [i, f"row {i} written while down"])
        assert time.monotonic() - started < 60  # nothing waited for the server
        time.sleep(1.5)  # the worker tries, fails and backs off
        assert db.status("docs")["pending"] + db.status("docs")["in_progress"] == 2000
        back = restart(own_server, checkpoints)
        try:
            wait_until(lambda: done(db), "all 2000 rows are embedded")
            assert_all_embedded(db, 2000)
            assert "retrying in" in db.worker_logs()
        finally:
            back.stop()


def test_server_killed_mid_backlog(cluster: Cluster, own_server: ServerProcess, checkpoints: Checkpoints) -> None:
    with database(cluster, own_server.socket) as db:
        make_docs(db, 5000)
        db.start_worker("--batch-size", "50")
        wait_until(lambda: db.one("SELECT count(*) FROM mgte.docs_embeddings") >= 500, "a tenth is embedded")
        own_server.process.kill()  # SIGKILL: the socket file stays behind
        own_server.process.wait()
        time.sleep(1)
        assert db.status("docs")["pending"] > 0
        back = restart(own_server, checkpoints)
        try:
            wait_until(lambda: done(db), "the backlog is embedded")
            assert_all_embedded(db, 5000, check_vectors=500)
        finally:
            back.stop()


def test_worker_killed_mid_batch_its_lease_expires_and_another_finishes(db: Database) -> None:
    make_docs(db, 400, words=400)  # long texts: a batch takes a while
    first = db.start_worker("--batch-size", "100", "--timeout-seconds", "5", "--lease-seconds", "6")
    wait_until(lambda: db.status("docs")["in_progress"] > 0, "the first worker holds a lease", timeout=60)
    first.kill()
    first.wait()
    leased = db.status("docs")["in_progress"]
    assert leased > 0
    second = db.start_worker("--batch-size", "100", "--timeout-seconds", "5", "--lease-seconds", "6")
    wait_until(lambda: done(db), "the second worker finishes")
    stop(second)
    assert_all_embedded(db, 400, check_vectors=50)


def test_two_workers_embed_each_row_once(cluster: Cluster, own_server: ServerProcess) -> None:
    with database(cluster, own_server.socket) as db:
        make_docs(db, 3000)
        with own_server.client() as client:
            before = client.info()["batching"]["sequences"]
            db.start_worker("--batch-size", "40")
            db.start_worker("--batch-size", "40")
            wait_until(lambda: done(db), "the backlog is embedded")
            assert client.info()["batching"]["sequences"] - before == 3000  # no row sent twice
        assert_all_embedded(db, 3000, check_vectors=300)
        # both took part
        assert all("stored" in log.read_text() for log in db.logs)


def test_poison_row_goes_to_the_dead_letters_and_the_rest_is_stored(
        cluster: Cluster, checkpoints: Checkpoints) -> None:
    strict = start_server(checkpoints.embedding_native, "--max-request-bytes", "4096",
                          socket_dir=shared_tempdir("mgte-poison-"))
    try:
        with database(cluster, strict.socket) as db:
            make_docs(db, 99)
            db.conn.execute("INSERT INTO docs (id, body) VALUES (100, repeat('x', 5000))")
            worker = db.start_worker("--batch-size", "100")
            wait_until(lambda: done(db) and db.status("docs")["failed"] == 1, "the batch is handled")
            assert db.one("SELECT count(*) FROM mgte.docs_embeddings") == 99
            failed = db.conn.execute("SELECT error, attempts FROM mgte.docs_failed WHERE id = 100").fetchone()
            assert failed is not None
            error, attempts = failed
            assert "over the limit" in error and attempts == 1
            stop(worker)
            assert db.one("SELECT mgte_retry_failed('docs')") == 1
            assert (db.status("docs")["pending"], db.status("docs")["failed"]) == (1, 0)
            db.conn.execute("UPDATE docs SET body = 'short now' WHERE id = 100")
            db.start_worker()
            wait_until(lambda: done(db), "the repaired row is embedded")
            assert_all_embedded(db, 100)
            assert db.status("docs")["failed"] == 0
    finally:
        strict.stop()


def test_a_broken_model_is_the_servers_fault_not_the_texts(
        cluster: Cluster, checkpoints: Checkpoints, tmp_path: Path) -> None:
    """The model fails on some texts (a token past its embedding table): the batch is split,
    the rest stored, and a text that fails alone goes to the dead letters only after
    --max-attempts tries, each counted; the server's fault is never taken for bad input at once."""
    broken = small_vocab_checkpoint(checkpoints.embedding_native, tmp_path / "small-vocab", vocab_size=1000)
    server = start_server(broken, "--device", "cpu", socket_dir=shared_tempdir("mgte-broken-"))
    try:
        with database(cluster, server.socket) as db:
            db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
            db.conn.execute("SELECT mgte_enable('docs', 'body')")
            # Tokens 10, 876 and 501 only ("a b c"), but for rows 7 and 13.
            db.conn.execute("INSERT INTO docs SELECT g, CASE WHEN g IN (7, 13) THEN '北京欢迎你 ' || g "
                            "ELSE 'a b c' || repeat(' a', g) END FROM generate_series(1, 20) g")
            db.start_worker("--batch-size", "10", "--max-attempts", "3")
            wait_until(lambda: done(db) and db.status("docs")["failed"] == 2, "the good rows are stored")
            assert db.one("SELECT count(*) FROM mgte.docs_embeddings") == 18
            assert db.conn.execute("SELECT id, attempts FROM mgte.docs_failed ORDER BY id").fetchall() == [
                (7, 3), (13, 3)]
            assert all("IndexError" in error for (error,) in db.conn.execute("SELECT error FROM mgte.docs_failed"))
            logs = db.worker_logs()
            assert "failed alone (attempt 1 of 3)" in logs and "failed alone (attempt 2 of 3)" in logs
            assert "failed alone 3 times" in logs
    finally:
        server.stop()


def test_updates_re_embed_only_a_changed_text(db: Database) -> None:
    make_docs(db, 20)
    worker = db.start_worker()
    wait_until(lambda: done(db), "embedded")
    first: dict[int, Any] = dict(db.conn.execute("SELECT id, embedded_at FROM mgte.docs_embeddings").fetchall())
    db.conn.execute("UPDATE docs SET n = n + 1")  # another column
    db.conn.execute("UPDATE docs SET body = body WHERE id <= 10")  # the same text
    assert db.status("docs")["pending"] == 0
    db.conn.execute("UPDATE docs SET body = 'changed ' || id WHERE id = 3")
    wait_until(lambda: done(db), "re-embedded")
    after: dict[int, Any] = dict(db.conn.execute("SELECT id, embedded_at FROM mgte.docs_embeddings").fetchall())
    assert [i for i in first if after[i] != first[i]] == [3]
    assert_all_embedded(db, 20)
    db.conn.execute("UPDATE docs SET body = NULL WHERE id = 4")
    db.conn.execute("DELETE FROM docs WHERE id = 5")
    assert db.one("SELECT count(*) FROM mgte.docs_embeddings WHERE id IN (4, 5)") == 0
    stop(worker)


def test_writes_racing_two_workers_and_a_killed_server_end_with_the_final_texts(
        cluster: Cluster, own_server: ServerProcess, checkpoints: Checkpoints) -> None:
    """Randomized: whatever the interleaving, every row ends with the embedding of its final
    text, the queue empties, and it does so soon after the last write (not a lease later)."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with database(cluster, own_server.socket) as db:
        make_docs(db, 200)
        db.start_worker("--batch-size", "20")
        db.start_worker("--batch-size", "20")
        server = own_server
        for round_ in range(15):
            if round_ == 5:
                server.process.kill()  # SIGKILL: batches in flight fail, the socket file stays
                server.process.wait()
            if round_ == 9:
                server = restart(own_server, checkpoints)
            ids = rng.sample(range(1, 201), 30)
            kind = rng.choice(["update", "reinsert", "null"])
            if kind == "update":
                db.conn.execute("UPDATE docs SET body = 'round ' || %s || ' of ' || id WHERE id = ANY(%s)",
                                [round_, ids])
            elif kind == "reinsert":
                with db.conn.transaction():
                    db.conn.execute("DELETE FROM docs WHERE id = ANY(%s)", [ids])
                    db.conn.execute("INSERT INTO docs (id, body) SELECT id, CASE WHEN id %% 2 = 0 "
                                    "THEN 'document ' || id ELSE 'reborn in round ' || %s END "
                                    "FROM unnest(%s::int[]) id", [round_, ids])
            else:
                db.conn.execute("UPDATE docs SET body = NULL WHERE id = ANY(%s)", [ids])
                db.conn.execute("UPDATE docs SET body = 'back in round ' || %s WHERE id = ANY(%s)", [round_, ids])
            time.sleep(rng.uniform(0, 0.2))  # lets the workers run in between; no order is assumed
        last_write = time.monotonic()
        try:
            wait_until(lambda: done(db), f"the last texts are embedded (seed {seed})", timeout=120)
            settled_after = time.monotonic() - last_write
            assert_all_embedded(db, 200)
            # Far less than the lease (660 s): a changed text is not left behind a lease.
            assert settled_after < 60, f"took {settled_after:.0f} s (seed {seed})"
            assert db.status("docs")["failed"] == 0, db.worker_logs()
        finally:
            server.stop()


def test_deleted_rows_leave_the_queue_and_truncate_empties_it(db: Database) -> None:
    make_docs(db, 30)
    db.conn.execute("DELETE FROM docs WHERE id > 10")
    assert db.status("docs")["pending"] == 10
    db.conn.execute("TRUNCATE docs")
    assert db.status("docs")["pending"] == 0


def test_copy_is_queued_by_one_trigger_call(db: Database) -> None:
    db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    db.conn.execute("SELECT mgte_enable('docs', 'body')")
    db.conn.execute("SET track_functions = 'pl'")
    with db.conn.transaction():
        with db.conn.cursor().copy("COPY docs (id, body) FROM STDIN") as copy:
            for i in range(20000):
                copy.write_row((i, f"copied row {i}"))
        calls = db.one("SELECT calls FROM pg_stat_xact_user_functions WHERE schemaname = 'mgte' "
                       "AND funcname = 'docs_on_change'")
    assert calls == 1
    assert db.status("docs")["pending"] == 20000


def test_status_reports_progress(db: Database) -> None:
    make_docs(db, 30)
    status = db.status("docs")
    assert status["pending"] == 30 and status["last_embedded"] is None and status["embedded_last_minute"] == 0
    assert status["oldest_pending"].total_seconds() >= 0
    worker = db.start_worker()
    wait_until(lambda: done(db), "embedded")
    stop(worker)
    status = db.status("docs")
    assert (status["pending"], status["in_progress"], status["failed"]) == (0, 0, 0)
    assert status["embedded_last_minute"] == 30 and status["last_embedded"] is not None
    assert status["oldest_pending"] is None


def test_backfill_shows_progress(db: Database) -> None:
    make_docs(db, 300)
    out = subprocess.run([sys.executable, "-m", "mgte", "backfill", "docs", "--dsn", db.conninfo,
                          "--socket", str(db.socket), "--batch-size", "50"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "docs: 300 rows to embed" in out.stderr
    assert "300/300 rows" in out.stderr and "rows/s" in out.stderr and "ETA" in out.stderr
    assert "docs: done, 300 rows" in out.stderr
    assert_all_embedded(db, 300)


def test_worker_stops_on_sigterm_and_gives_back_its_rows(db: Database) -> None:
    make_docs(db, 2000, words=50)
    worker = db.start_worker("--batch-size", "100")
    wait_until(lambda: db.one("SELECT count(*) FROM mgte.docs_embeddings") > 0, "the worker is busy")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    status = db.status("docs")
    assert status["in_progress"] == 0 and status["pending"] > 0  # nothing stays leased


@pytest.mark.parametrize(("args", "message"), [
    (["backfill", "docs"], "table docs has no auto-embedding"),
    (["backfill", "nope"], 'relation "nope" does not exist'),
])
def test_backfill_errors(db: Database, args: list[str], message: str) -> None:
    db.conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    out = subprocess.run([sys.executable, "-m", "mgte", *args, "--dsn", db.conninfo, "--socket", str(db.socket)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (1, 2) and message in out.stderr and "Traceback" not in out.stderr


def test_worker_on_a_database_without_the_extension(cluster: Cluster, server: ServerProcess) -> None:
    out = subprocess.run([sys.executable, "-m", "mgte", "worker", "--dsn", cluster.conninfo("template1"),
                          "--socket", str(server.socket)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "database 'template1' has no mgte extension" in out.stderr and "CREATE EXTENSION mgte" in out.stderr


def test_dump_and_restore_keep_auto_embedding_working(cluster: Cluster, db: Database) -> None:
    make_docs(db, 20)
    worker = db.start_worker()
    wait_until(lambda: done(db), "embedded")
    stop(worker)
    db.conn.execute("INSERT INTO docs (id, body) VALUES (21, 'queued before the dump')")
    dump = db.socket.parent / f"{db.name}.dump"
    subprocess.run([str(cluster.bindir / "pg_dump"), "--format", "custom", "--file", str(dump),
                    "--dbname", db.conninfo], check=True)
    with database(cluster, db.socket) as restored:
        restored.conn.execute("DROP EXTENSION mgte CASCADE")  # pg_restore recreates it
        subprocess.run([str(cluster.bindir / "pg_restore"), "--dbname", restored.conninfo, str(dump)], check=True)
        status = restored.status("docs")
        assert (status["pending"], status["failed"]) == (1, 0)
        assert restored.one("SELECT count(*) FROM mgte.docs_embeddings") == 20
        restored.conn.execute("UPDATE docs SET body = 'changed after the restore' WHERE id = 1")
        assert restored.status("docs")["pending"] == 2  # the restored triggers queue changes
        restored.start_worker()
        wait_until(lambda: done(restored), "the restored queue is embedded")
        assert_all_embedded(restored, 21)


def test_a_model_change_stops_storing_with_one_clear_error(
        cluster: Cluster, own_server: ServerProcess, checkpoints: Checkpoints) -> None:
    with database(cluster, own_server.socket) as db:
        make_docs(db, 10)
        db.start_worker()
        wait_until(lambda: done(db), "embedded")
        table_model = db.one("SELECT model FROM mgte.enabled")
        assert table_model == str(checkpoints.embedding_native) and db.status("docs")["model"] == table_model
        own_server.stop()
        other = start_server(checkpoints.embedding_original, socket_dir=own_server.socket.parent)
        try:
            served = str(checkpoints.embedding_original)
            db.conn.execute("UPDATE docs SET body = 'changed under another model' WHERE id = 1")
            wait_until(lambda: "nothing is stored for this table" in db.worker_logs(), "the worker says why")
            line = next(x for x in db.worker_logs().splitlines() if "nothing is stored for this table" in x)
            assert served in line and table_model in line and "mgte_reembed" in line
            status = db.status("docs")
            assert (status["pending"], status["in_progress"], status["failed"]) == (1, 0, 0)
            assert db.one("SELECT text_md5 = md5('document 1') FROM mgte.docs_embeddings WHERE id = 1")

            db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync', on_failure => 'error')")
            with pytest.raises(psycopg.Error) as raised:
                db.conn.execute("INSERT INTO docs (id, body) VALUES (11, 'sync under another model')")
            assert raised.value.sqlstate == "55000"
            assert served in str(raised.value) and table_model in str(raised.value)
            db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync', on_failure => 'queue')")
            warnings: list[str] = []
            db.conn.add_notice_handler(lambda diag: warnings.append(str(diag.message_primary)))
            db.conn.execute("INSERT INTO docs (id, body) VALUES (11, 'sync under another model')")
            assert any("queued for `mgte worker`" in w and served in w for w in warnings)
            with pytest.raises(psycopg.Error) as raised:
                db.conn.execute("SELECT * FROM mgte_search('docs', 'document')")
            assert raised.value.sqlstate == "55000"
            assert db.one("SELECT count(*) FROM mgte.docs_embeddings WHERE model <> %s", table_model) == 0
        finally:
            other.stop()
        back = restart(own_server, checkpoints)
        try:
            wait_until(lambda: done(db), "the table's own model is back and the queue drains")
            assert_all_embedded(db, 11)
        finally:
            back.stop()


def test_reembed_fills_a_second_set_and_swaps_when_complete(
        cluster: Cluster, own_server: ServerProcess, checkpoints: Checkpoints) -> None:
    with database(cluster, own_server.socket) as db:
        make_docs(db, 30)
        db.start_worker()
        wait_until(lambda: done(db), "embedded with the first model")
        old_model, new_model = str(checkpoints.embedding_native), str(checkpoints.embedding_original)
        assert db.status("docs")["model"] == old_model
        with running_server(checkpoints.embedding_original) as new_server:
            db.conn.execute("SELECT mgte_reembed('docs', model => %s)", [new_model])
            status = db.status("docs")
            assert (status["model"], status["reembed_model"], status["reembed_pending"], status["reembed_stored"]) \
                == (old_model, new_model, 30, 0)
            with pytest.raises(psycopg.Error) as raised:
                db.conn.execute("SELECT mgte_reembed('docs', model => %s)", [new_model])
            assert raised.value.sqlstate == "55006"
            # Searches keep using the first set, and writes reach both.
            assert len(db.conn.execute("SELECT * FROM mgte_search('docs', 'document', k => 5)").fetchall()) == 5
            db.conn.execute("UPDATE docs SET body = 'changed during the re-embedding' WHERE id = 1")
            db.conn.execute("INSERT INTO docs (id, body) VALUES (31, 'inserted during the re-embedding')")
            db.conn.execute("DELETE FROM docs WHERE id = 2")
            assert db.status("docs")["reembed_pending"] == 30
            db.start_worker("--socket", str(new_server.socket))
            wait_until(lambda: db.one("SELECT model FROM mgte.enabled") == new_model, "the second set takes over")
            status = db.status("docs")
            assert (status["reembed_model"], status["failed"]) == (None, 0)
            assert db.one("SELECT count(*) FROM mgte.reembeddings") == 0
            assert db.one("SELECT count(*) FROM pg_class WHERE relnamespace = 'mgte'::regnamespace "
                          "AND relname LIKE 'docs%%' AND relkind = 'r'") == 3  # the first set is gone
            assert {row[0] for row in db.conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs'::regclass").fetchall()} == {
                "mgte_insert", "mgte_update", "mgte_delete", "mgte_truncate"}
            # The first model's server may no longer store or search here...
            with pytest.raises(psycopg.Error) as raised:
                db.conn.execute("SELECT * FROM mgte_search('docs', 'document')")
            assert raised.value.sqlstate == "55000"
            # ...the new one does.
            db.conn.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(new_server.socket)])
            wait_until(lambda: done(db), "the queue is empty")
            assert_all_embedded(db, 30)
            embeddings = db.one("SELECT embeddings::text FROM mgte.enabled")
            assert db.one(f"SELECT count(*) FROM {embeddings} WHERE model = %s", new_model) == 30
            assert len(db.conn.execute("SELECT * FROM mgte_search('docs', 'document', k => 5)").fetchall()) == 5


def test_reembed_of_an_empty_table_takes_over_at_once(db: Database) -> None:
    make_docs(db, 0)
    new_model = "a-model-served-elsewhere"
    db.one("SELECT mgte_reembed('docs', model => %s)", new_model)
    assert (db.status("docs")["model"], db.status("docs")["reembed_model"]) == (new_model, None)
    assert db.one("SELECT count(*) FROM mgte.reembeddings") == 0


# --- sync mode ------------------------------------------------------------------------

def test_sync_mode_embeds_inside_the_statement(db: Database) -> None:
    db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text, n integer DEFAULT 0)")
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync')")
    db.conn.execute("INSERT INTO docs (id, body) SELECT g, 'sync row ' || g FROM generate_series(1, 25) g")
    assert db.status("docs")["pending"] == 0
    assert_all_embedded(db, 25)
    db.conn.execute("UPDATE docs SET body = 'new text' WHERE id = 1")
    assert_all_embedded(db, 25)


def test_sync_mode_without_server_falls_back_to_the_queue_or_fails(db: Database, tmp_path: Path) -> None:
    db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text, n integer DEFAULT 0)")
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync')")
    db.conn.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(tmp_path / "down.sock")])
    warnings: list[str] = []
    db.conn.add_notice_handler(lambda diag: warnings.append(f"{diag.severity} {diag.message_primary}"))
    db.conn.execute("INSERT INTO docs (id, body) VALUES (1, 'one'), (2, 'two')")
    assert any("WARNING" in w and "2 row(s) queued for `mgte worker`" in w for w in warnings)
    assert db.status("docs")["pending"] == 2
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync', on_failure => 'error')")
    with pytest.raises(psycopg.Error) as raised:
        db.conn.execute("INSERT INTO docs (id, body) VALUES (3, 'three')")
    assert raised.value.sqlstate == "08006"
    assert db.one("SELECT count(*) FROM docs") == 2  # the statement failed as a whole
    db.conn.execute("RESET mgte.socket_path")
    db.start_worker()
    wait_until(lambda: done(db), "the queued rows are embedded")
    assert_all_embedded(db, 2)


def test_sync_mode_timeout_hands_the_rows_to_the_worker(db: Database) -> None:
    db.conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text, n integer DEFAULT 0)")
    db.conn.execute("SELECT mgte_enable('docs', 'body', mode => 'sync', sync_timeout_ms => 1)")
    warnings: list[str] = []
    db.conn.add_notice_handler(lambda diag: warnings.append(str(diag.message_primary)))
    db.conn.execute("INSERT INTO docs (id, body) SELECT g, repeat('slow ', 8000) FROM generate_series(1, 8) g")
    assert any("8 row(s) queued" in w and "did not answer within 0.001 s" in w for w in warnings)
    assert db.status("docs")["pending"] == 8
