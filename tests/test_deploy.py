"""deploy/ and docker/: what can be checked without a running systemd or a Docker engine. The
units pass systemd-analyze and run as written; the images install with scripts/setup.sh, run as
non-root users and have health checks; docker/initdb runs and gives the worker its own role."""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml  # type: ignore[import-untyped]  # a dependency of transformers; no stubs installed

from mgte.pgcluster import Cluster
from mgte.server_process import ServerProcess
from tests.conftest import REPO, shared_tempdir
from tests.databases import Database, database, done, wait_until

UNITS = REPO / "deploy" / "systemd"
DOCKER = REPO / "docker"
INSTALLED_MGTE = "/opt/mgte/.venv/bin/mgte"
WORKER_ROLE = "embedder"


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze, which checks deploy/systemd, is not installed: install Debian's systemd "
                    "package (scripts/setup.sh does)", pytrace=False)
    return tool


def settings(unit: str, key: str) -> list[str]:
    """The values of `key` in a unit file, in order (systemd allows a key more than once)."""
    return [line.split("=", 1)[1] for line in (UNITS / unit).read_text().splitlines()
            if line.startswith(f"{key}=")]


@pytest.fixture
def local_units(tmp_path: Path) -> list[Path]:
    """The units with ExecStart at this checkout's mgte (verify checks that the program exists)
    and the worker's template instantiated for a database `app`."""
    mgte = Path(sys.executable).parent / "mgte"
    copies = []
    for source, name in [("mgte.service", "mgte.service"), ("mgte-worker@.service", "mgte-worker@app.service")]:
        text = (UNITS / source).read_text()
        assert f"ExecStart={INSTALLED_MGTE} " in text
        (tmp_path / name).write_text(text.replace(INSTALLED_MGTE, str(mgte)))
        copies.append(tmp_path / name)
    return copies


def test_units_pass_systemd_analyze_verify(local_units: list[Path]) -> None:
    checked = subprocess.run([systemd_analyze(), "verify", "--man=no", "--generators=no", *map(str, local_units)],
                             capture_output=True, text=True, timeout=60)
    # verify only warns about an unknown setting or a bad value, and exits 0: any output counts.
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), \
        checked.stdout + checked.stderr


def test_units_are_sandboxed(local_units: list[Path]) -> None:
    # Exposure 1.8 (server) and 1.6 (worker) of 10 with systemd 252; a sandboxing setting
    # dropped by mistake shows here.
    for unit in local_units:
        review = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=25", "--no-pager",
                                 str(unit)], capture_output=True, text=True, timeout=60)
        assert review.returncode == 0, review.stdout + review.stderr


def test_server_unit_gives_the_socket_to_postgres_and_downloads_nothing() -> None:
    unit = "mgte.service"
    environment = dict(item.partition("=")[::2] for value in settings(unit, "Environment")
                       for item in shlex.split(value))
    assert environment["MGTE_SOCKET"] == "/run/mgte/mgte.sock" and environment["MGTE_SOCKET_GROUP"] == "postgres"
    assert environment["HF_HUB_OFFLINE"] == "1"
    # The server may give its socket only a group it belongs to.
    assert settings(unit, "SupplementaryGroups") == ["postgres"]
    assert settings(unit, "RuntimeDirectory") == ["mgte"] and settings(unit, "KillSignal") == ["SIGTERM"]
    # torch's CPU kernels are compiled at run time into writable, executable memory.
    assert settings(unit, "MemoryDenyWriteExecute") == []


def refuse_writable_executable_memory() -> None:
    """What MemoryDenyWriteExecute=yes does, for this process and what it executes
    (prctl PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN; Linux 6.3 on)."""
    if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed: this test needs Linux 6.3 or later")


@pytest.fixture
def db(cluster: Cluster, server: ServerProcess) -> Iterator[Database]:
    with database(cluster, server.socket) as fresh:
        yield fresh


def test_worker_unit_drains_its_database_as_written(cluster: Cluster, db: Database, tmp_path: Path) -> None:
    unit = "mgte-worker@.service"
    assert settings(unit, "MemoryDenyWriteExecute") == ["yes"]
    assert settings(unit, "EnvironmentFile") == ["-/etc/mgte/worker-%i.env"]
    assert settings(unit, "Restart") == ["on-failure"] and settings(unit, "KillSignal") == ["SIGTERM"]
    db.conn.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text)")
    db.conn.execute("INSERT INTO docs SELECT i, 'text ' || i FROM generate_series(1, 40) i")
    db.conn.execute("SELECT mgte_enable('docs', 'body')")

    # The unit's command and environment for the instance named after the database; only where
    # PostgreSQL and the server listen differs here.
    environment = {**os.environ}
    for value in settings(unit, "Environment"):
        for item in shlex.split(value):
            name, _, setting = item.replace("%i", db.name).partition("=")
            environment[name] = setting
    environment.update(MGTE_SOCKET=str(db.socket), PGHOST=str(cluster.socket_dir), PGPORT=str(cluster.port),
                       PGUSER=cluster.user)
    [command] = settings(unit, "ExecStart")
    argv = shlex.split(command.replace(INSTALLED_MGTE, str(Path(sys.executable).parent / "mgte")))
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(argv, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                  preexec_fn=refuse_writable_executable_memory)
    try:
        wait_until(lambda: done(db) or worker.poll() is not None, "the worker has embedded the queue", timeout=60)
        assert done(db), log.read_text()
        assert db.one("SELECT count(*) FROM mgte.docs_embeddings") == 40
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize(("name", "part"), [("server.Dockerfile", "--server"), ("postgres.Dockerfile", "--postgres")])
def test_images_install_with_setup_sh_as_non_root_with_a_health_check(name: str, part: str) -> None:
    instructions = dockerfile(name)
    # The README's setup command, one part of it, and nothing that copies its steps.
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    assert any(f"scripts/setup.sh {part}" in run for run in runs), runs
    assert not any(step in run for run in runs for step in ("pip install", "make -", "make install")), runs
    usage = re.search(r"usage: scripts/setup.sh \[(.*?)\]", (REPO / "scripts" / "setup.sh").read_text())
    assert usage is not None and part in usage.group(1).split(" | ")
    for instruction, args in instructions:
        if instruction == "COPY":
            *sources, _ = args.split()
            missing = [source for source in sources if not (REPO / source).exists()]
            assert not missing, f"{name} copies what the repository lacks: {missing}"
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    health = [args for instruction, args in instructions if instruction == "HEALTHCHECK"]
    assert len(health) == 1, health
    if part == "--server":
        assert "CMD mgte info --socket /run/mgte/mgte.sock " in health[0]


def test_setup_sh_refuses_an_unknown_part() -> None:
    refused = subprocess.run([str(REPO / "scripts" / "setup.sh"), "--everything"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "usage: scripts/setup.sh [--postgres | --server]" in refused.stderr


def test_compose_worker_logs_in_as_the_worker_role() -> None:
    services: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    worker = services["worker"]
    dsn = dict(item.split("=", 1) for item in worker["environment"]["MGTE_DSN"].split())
    assert dsn["user"] == WORKER_ROLE, dsn
    assert worker["environment"]["PGPASSWORD"] == services["postgres"]["environment"]["MGTE_WORKER_PASSWORD"]
    assert worker["entrypoint"] == ["mgte", "worker"]


def test_initdb_creates_the_extension_and_the_worker_role() -> None:
    """The scripts as the postgres image's entrypoint runs them on a fresh cluster: .sql files
    through psql, executable .sh files executed, in name order."""
    root = shared_tempdir("mgte-initdb-")
    fresh = Cluster(root)
    try:
        fresh.init()
        fresh.start()
        environment = {**os.environ, "PATH": f"{fresh.bindir}:{os.environ['PATH']}", "PGHOST": str(fresh.socket_dir),
                       "PGPORT": str(fresh.port), "POSTGRES_USER": fresh.user, "POSTGRES_DB": "postgres",
                       "MGTE_WORKER_PASSWORD": "secret"}
        scripts = sorted((DOCKER / "initdb").iterdir())
        assert [script.name for script in scripts] == ["10-mgte.sql", "20-worker-role.sh"]
        for script in scripts:
            command = [str(script)] if script.suffix == ".sh" else \
                ["psql", "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--no-password", "--username", fresh.user,
                 "--dbname", "postgres", "--file", str(script)]
            assert os.access(script, os.X_OK) or script.suffix == ".sql"
            ran = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
            assert ran.returncode == 0, f"{script.name}: {ran.stdout}{ran.stderr}"
        with psycopg.connect(fresh.conninfo(), autocommit=True) as conn:
            assert conn.execute("SHOW mgte.socket_path").fetchone() == ("/run/mgte/mgte.sock",)
            role = conn.execute(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolpassword IS NOT NULL, "
                "array(SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid "
                "      WHERE m.member = a.oid) FROM pg_authid a WHERE rolname = %s", [WORKER_ROLE]).fetchone()
            assert role == (True, False, False, False, False, True, ["mgte_worker"])
        # The role the compose file's worker logs in as, with the rights of mgte_worker alone.
        with psycopg.connect(fresh.conninfo() + f" user={WORKER_ROLE}", autocommit=True) as worker:
            assert worker.execute("SELECT count(*) FROM mgte.enabled").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker.execute("CREATE TABLE public.t ()")
    finally:
        fresh.stop()
        shutil.rmtree(root, ignore_errors=True)
