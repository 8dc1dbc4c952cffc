"""Least privilege, tested as the roles a DBA would create.

alice owns and enables a table; bob may search it once alice lets him; eve may touch nothing
of alice's; the worker logs in as a member of mgte_worker; mallory owns another table whose
trigger acts for whoever writes to it. The superuser only installs and administers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.databases import Connection, Database, database, done, stop, wait_until

ROLES = ("alice", "bob", "eve", "carol", "mallory")
WORKER = "mgte_test_worker"


@pytest.fixture(scope="session")
def roles(cluster: Cluster) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
        for role in (*ROLES, WORKER):
            if admin.execute("SELECT FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT mgte_worker TO {}").format(sql.Identifier(WORKER)))


@pytest.fixture
def db(cluster: Cluster, server: ServerProcess, roles: None) -> Iterator[Database]:
    """A fresh database where alice owns schema alice and its table docs, enabled by her."""
    with database(cluster, server.socket) as fresh:
        fresh.conn.execute("CREATE SCHEMA alice AUTHORIZATION alice")
        with connect(fresh, "alice") as alice:
            # Schema privileges are PostgreSQL's business; these tests are about mgte's.
            alice.execute("GRANT USAGE ON SCHEMA alice TO PUBLIC")
            alice.execute("CREATE TABLE alice.docs (id int PRIMARY KEY, body text)")
            alice.execute("INSERT INTO alice.docs SELECT g, 'alice''s secret ' || g FROM generate_series(1, 5) g")
            alice.execute("SELECT mgte_enable('alice.docs', 'body')")
        yield fresh


def connect(db: Database, role: str) -> Connection:
    return psycopg.connect(db.conninfo, user=role, autocommit=True)


def start_worker(db: Database) -> None:
    db.start_worker("--dsn", f"{db.conninfo} user={WORKER}")


def denied(conn: Connection, statement: str) -> str:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(statement)
    assert raised.value.sqlstate == "42501", f"{statement}: {raised.value}"
    return str(raised.value)


def test_the_worker_role_drains_alice_table_and_reads_nothing_itself(db: Database) -> None:
    start_worker(db)
    wait_until(lambda: done(db, "alice.docs"), "alice's rows are embedded")
    assert db.one("SELECT count(*) FROM mgte.docs_embeddings e JOIN alice.docs d USING (id) "
                  "WHERE e.text_md5 = md5(d.body)") == 5
    assert "permission denied" not in db.worker_logs()
    with connect(db, WORKER) as worker:
        denied(worker, "SELECT * FROM alice.docs")
        denied(worker, "SELECT * FROM mgte.docs_embeddings")
        denied(worker, "SELECT mgte.docs_requeue(false)")
        # What it may do: claim, settle, count.
        assert worker.execute("SELECT table_name::text FROM mgte_status()").fetchall() == [("alice.docs",)]


def test_in_logical_mode_the_worker_role_reads_keys_only_and_eve_not_even_those(db: Database) -> None:
    with connect(db, "alice") as alice:
        alice.execute("SELECT mgte_enable('alice.docs', 'body', mode => 'logical')")  # no REPLICATION needed
    start_worker(db)
    wait_until(lambda: done(db, "alice.docs") and db.one("SELECT count(*) FROM mgte.docs_embeddings") == 5,
               "alice's rows are embedded")
    with connect(db, "alice") as alice:
        alice.execute("UPDATE alice.docs SET body = 'alice''s new secret' WHERE id = 1")
    wait_until(lambda: db.one("SELECT count(*) FROM mgte.docs_embeddings e JOIN alice.docs d USING (id) "
                              "WHERE e.text_md5 = md5(d.body)") == 5, "alice's change is embedded")
    assert "permission denied" not in db.worker_logs()
    with connect(db, WORKER) as worker:
        # The slot's changes carry the key columns only: no text, no other column.
        assert worker.execute("SELECT attnames FROM pg_publication_tables").fetchall() == [(["id"],)]
        denied(worker, "SELECT * FROM pg_logical_slot_peek_binary_changes(mgte._logical_slot(), NULL, NULL, "
                       "'proto_version', '1', 'publication_names', 'mgte_changes')")
        denied(worker, "SELECT pg_drop_replication_slot(mgte._logical_slot())")
    with connect(db, "eve") as eve:
        denied(eve, "SELECT mgte._logical_start()")
        denied(eve, "SELECT * FROM mgte._logical_peek(pg_current_wal_flush_lsn(), 10)")
        denied(eve, "SELECT mgte._logical_advance(pg_current_wal_flush_lsn())")
        denied(eve, "SELECT mgte.docs_changed(NULL)")
        denied(eve, "SELECT mgte_enable('alice.docs', 'body', mode => 'async')")
        # A DROP that names mgte takes the slot along only when its role may drop the extension.
        eve.execute("DROP SCHEMA IF EXISTS eve_scratch -- as if it were mgte")
        denied(eve, "DROP EXTENSION mgte")
    assert db.one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = mgte._logical_slot()") == 1


def test_a_worker_without_the_role_is_told_what_to_grant(db: Database) -> None:
    worker = db.start_worker("--dsn", f"{db.conninfo} user=eve")
    assert worker.wait(60) == 2
    assert "GRANT mgte_worker TO" in db.worker_logs()


def test_bob_searches_only_once_alice_lets_him(db: Database) -> None:
    start_worker(db)
    wait_until(lambda: done(db, "alice.docs"), "alice's rows are embedded")
    with connect(db, "bob") as bob, connect(db, "alice") as alice:
        denied(bob, "SELECT * FROM mgte_search('alice.docs', 'secret')")
        alice.execute("SELECT mgte_grant_search('alice.docs', 'bob')")
        found = bob.execute("SELECT key ->> 'id', body FROM mgte_search('alice.docs', 'secret 3', k => 5)").fetchall()
        assert len(found) == 5 and ("3", "alice's secret 3") in found
        bob.execute("SET mgte.query = 'secret'")
        assert len(bob.execute("SELECT * FROM alice.docs_search").fetchall()) == 5
        denied(bob, "SELECT mgte_disable('alice.docs')")
        denied(bob, "SELECT * FROM mgte.docs_queue")


def test_eve_can_read_change_disable_or_drain_nothing_of_alice(db: Database) -> None:
    with connect(db, "eve") as eve:
        for table in ("docs_queue", "docs_embeddings", "docs_failed"):
            denied(eve, f"SELECT * FROM mgte.{table}")
            denied(eve, f"DELETE FROM mgte.{table}")
        assert "must be the owner of table alice.docs" in denied(eve, "SELECT mgte_disable('alice.docs')")
        denied(eve, "SELECT mgte_retry_failed('alice.docs')")
        denied(eve, "SELECT mgte_create_indexes('alice.docs')")
        denied(eve, "SELECT mgte_grant_search('alice.docs', 'eve')")
        denied(eve, "SELECT mgte_enable('alice.docs', 'body', mode => 'sync')")
        denied(eve, "SELECT * FROM mgte.docs_claim(100, 600)")
        denied(eve, "SELECT * FROM mgte.docs_settle('[]', NULL, NULL)")
        denied(eve, "SELECT mgte.docs_requeue(false)")
        denied(eve, "SELECT * FROM mgte.docs_status()")
        denied(eve, "UPDATE mgte.enabled SET mode = 'sync'")
        denied(eve, "DELETE FROM mgte.enabled")
        # The proof of ownership that mgte's own functions consume cannot be forged...
        denied(eve, "INSERT INTO mgte.authorizations (tbl) VALUES ('alice.docs')")
        denied(eve, "INSERT INTO mgte.authorizations (tbl, backend, xact_start) "
                    "VALUES ('alice.docs', pg_backend_pid(), transaction_timestamp())")
        # ...and without one they refuse, whatever they are given.
        for call in ("SELECT mgte._provision(e) FROM mgte.enabled e",
                     "SELECT mgte._unprovision('alice.docs', false)",
                     "SELECT mgte._create_indexes('alice.docs')"):
            assert "must be the owner" in denied(eve, call)
        assert eve.execute("SELECT * FROM mgte_status()").fetchall() == []
    assert db.one("SELECT mode FROM mgte.enabled") == "async"
    assert db.status("alice.docs")["pending"] == 5


def test_a_hostile_owner_gains_nothing(db: Database) -> None:
    """Alice plants code everywhere mgte could evaluate it: a domain CHECK on the key, triggers
    and a row-level security policy on her mgte tables. It must only ever run as alice, even
    when the superuser, the worker or bob act on her table."""
    with connect(db, "alice") as alice:
        alice.execute("CREATE TABLE alice.seen (who text, what text)")
        alice.execute("GRANT INSERT ON alice.seen TO PUBLIC")
        alice.execute("""CREATE FUNCTION alice.pwn(what text) RETURNS boolean LANGUAGE plpgsql AS $$
                         BEGIN INSERT INTO alice.seen VALUES (current_user, what); RETURN true; END $$""")
        alice.execute("""CREATE FUNCTION alice.spy() RETURNS trigger LANGUAGE plpgsql AS $$
                         BEGIN PERFORM alice.pwn(TG_TABLE_NAME); RETURN NULL; END $$""")
        alice.execute("CREATE DOMAIN alice.k AS int CHECK (alice.pwn('domain check'))")
        alice.execute("ALTER TABLE alice.docs ALTER id TYPE alice.k")
        for table in ("docs_queue", "docs_embeddings", "docs_failed"):
            alice.execute(f"CREATE TRIGGER spy AFTER INSERT OR UPDATE OR DELETE ON mgte.{table} "
                          "FOR EACH ROW EXECUTE FUNCTION alice.spy()")
            alice.execute(f"ALTER TABLE mgte.{table} ENABLE ROW LEVEL SECURITY")
            alice.execute(f"CREATE POLICY spy ON mgte.{table} USING (alice.pwn('policy'))")
        alice.execute("INSERT INTO alice.docs VALUES (6, 'planted')")
        alice.execute("SELECT mgte_grant_search('alice.docs', 'bob')")
    # The superuser administers alice's table.
    db.conn.execute("SELECT mgte_enable('alice.docs', 'body', mode => 'async')")
    db.conn.execute("SELECT mgte_create_indexes('alice.docs')")
    db.conn.execute("SELECT * FROM mgte_status()")
    db.conn.execute("SELECT mgte_retry_failed('alice.docs')")
    start_worker(db)
    wait_until(lambda: done(db, "alice.docs"), "alice's rows are embedded")
    with connect(db, "bob") as bob:
        assert len(bob.execute("SELECT * FROM mgte_search('alice.docs', 'planted')").fetchall()) == 6
    db.conn.execute("UPDATE alice.docs SET body = 'changed by the superuser' WHERE id = 1")
    db.conn.execute("DELETE FROM alice.docs WHERE id = 2")
    wait_until(lambda: done(db, "alice.docs"), "the change is embedded")
    db.conn.execute("SELECT mgte_disable('alice.docs')")
    seen: dict[str, int] = dict(db.conn.execute("SELECT who, count(*) FROM alice.seen GROUP BY who").fetchall())
    # Everything mgte did ran as alice. As PostgreSQL has it, whoever reads or writes alice's
    # tables runs her code themselves: the superuser's own UPDATE ran her domain CHECK, and
    # bob's search (a read of her embeddings) her policy. The worker never ran any.
    assert set(seen) <= {"alice", "postgres", "bob"} and seen.get("alice", 0) > 0
    assert db.one("SELECT count(*) FROM alice.seen WHERE who = 'bob' AND what <> 'policy'") == 0
    assert db.one("SELECT count(*) FROM alice.seen WHERE who = 'postgres' AND what <> 'domain check'") == 0
    assert db.one("SELECT count(*) FROM alice.seen "
                  "WHERE who = 'alice' AND what IN ('docs_queue', 'docs_embeddings')") > 0


def test_checks_use_the_acting_role_not_the_session_user(db: Database) -> None:
    """mallory's SECURITY DEFINER trigger, fired by alice's insert, acts as mallory."""
    db.conn.execute("CREATE SCHEMA mallory AUTHORIZATION mallory")
    with connect(db, "mallory") as mallory:
        mallory.execute("CREATE TABLE mallory.guestbook (name text, outcome text)")
        mallory.execute("GRANT USAGE ON SCHEMA mallory TO alice")
        mallory.execute("GRANT INSERT, SELECT ON mallory.guestbook TO alice")
        mallory.execute("""CREATE FUNCTION mallory.sign() RETURNS trigger SECURITY DEFINER LANGUAGE plpgsql AS $$
            BEGIN
                BEGIN
                    PERFORM mgte_disable('alice.docs');
                    UPDATE mallory.guestbook SET outcome = 'disabled';
                EXCEPTION WHEN insufficient_privilege THEN
                    UPDATE mallory.guestbook SET outcome = SQLERRM;
                END;
                RETURN NULL;
            END $$""")
        mallory.execute("CREATE TRIGGER sign AFTER INSERT ON mallory.guestbook "
                        "FOR EACH STATEMENT EXECUTE FUNCTION mallory.sign()")
    with connect(db, "alice") as alice:
        alice.execute("INSERT INTO mallory.guestbook (name) VALUES ('alice')")
        assert alice.execute("SELECT outcome FROM mallory.guestbook").fetchone() == (
            "must be the owner of table alice.docs",)
    assert db.one("SELECT count(*) FROM mgte.enabled") == 1


def test_a_new_owner_takes_the_mgte_objects_along(db: Database) -> None:
    db.conn.execute("ALTER TABLE alice.docs OWNER TO carol")
    owners = db.conn.execute(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'mgte'::regnamespace "
        "AND relname LIKE 'docs\\_%' UNION SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc "
        "WHERE pronamespace = 'mgte'::regnamespace AND proname LIKE 'docs\\_%' "
        "UNION SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'alice.docs_search'::regclass").fetchall()
    assert owners == [("carol",)]
    with connect(db, "alice") as alice:
        denied(alice, "SELECT * FROM mgte.docs_queue")
        denied(alice, "SELECT mgte_disable('alice.docs')")
    start_worker(db)
    wait_until(lambda: done(db, "alice.docs"), "the rows are embedded, now as carol's")
    with connect(db, "carol") as carol:
        assert carol.execute("SELECT pending, failed FROM mgte_status('alice.docs')").fetchone() == (0, 0)
        carol.execute("SELECT mgte_disable('alice.docs')")
    assert db.one("SELECT count(*) FROM mgte.enabled") == 0


def test_the_socket_is_the_dbas_choice(db: Database, tmp_path: Path) -> None:
    configured = str(db.socket)
    fake = str(tmp_path / "eve.sock")
    with connect(db, "eve") as eve:
        eve.execute("SELECT set_config('mgte.socket_path', %s, false)", [fake])
        assert eve.execute("SELECT mgte_info() ->> 'socket_path'").fetchone() == (configured,)
        db.conn.execute("GRANT mgte_choose_socket TO eve")
        try:
            with pytest.raises(psycopg.Error) as raised:
                eve.execute("SELECT mgte_info()")
            assert raised.value.sqlstate == "08006" and fake in str(raised.value)
        finally:
            db.conn.execute("REVOKE mgte_choose_socket FROM eve")
    # The role's own setting is the DBA's too, and beats the database's.
    db.conn.execute(sql.SQL("ALTER ROLE eve IN DATABASE {} SET mgte.socket_path = {}").format(
        sql.Identifier(db.name), sql.Literal(fake)))
    try:
        with connect(db, "eve") as eve:
            with pytest.raises(psycopg.Error) as raised:
                eve.execute("SELECT mgte_embed('x')")
            assert raised.value.sqlstate == "08006" and fake in str(raised.value)
    finally:
        db.conn.execute(sql.SQL("ALTER ROLE eve IN DATABASE {} RESET mgte.socket_path").format(
            sql.Identifier(db.name)))


def test_long_non_ascii_names_do_not_collide(db: Database) -> None:
    cjk = "文" * 21  # 63 bytes, the longest name PostgreSQL keeps
    cyrillic_a = "д" * 30 + "\N{CYRILLIC SMALL LETTER A}"
    cyrillic_b = "д" * 30 + "\N{CYRILLIC SMALL LETTER BE}"  # differs only after the first 60 bytes
    with connect(db, "alice") as alice:
        for name in (cjk, cyrillic_a, cyrillic_b):
            alice.execute(sql.SQL("CREATE TABLE alice.{} (id int PRIMARY KEY, body text)").format(
                sql.Identifier(name)))
            alice.execute("SELECT mgte_enable(%s, 'body')", [f'alice."{name}"'])
            alice.execute(sql.SQL("INSERT INTO alice.{} VALUES (1, {})").format(
                sql.Identifier(name), sql.Literal(f"text of {name}")))
        objects = alice.execute("SELECT embeddings, queue, failed, search_view FROM mgte.enabled "
                                "WHERE tbl <> 'alice.docs'::regclass").fetchall()
    assert len(objects) == 3
    assert len({o for row in objects for o in row}) == 12
    worker = db.start_worker()
    wait_until(lambda: db.one("SELECT sum(pending + in_progress) FROM mgte_status()") == 0, "all are embedded")
    stop(worker)
    for (embeddings,) in db.conn.execute("SELECT embeddings FROM mgte.enabled "
                                         "WHERE tbl <> 'alice.docs'::regclass").fetchall():
        assert db.one(f"SELECT count(*) FROM {embeddings}") == 1
