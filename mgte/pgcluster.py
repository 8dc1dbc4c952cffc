"""Private, disposable PostgreSQL clusters (for the demo and the tests).

A cluster lives in one directory: its data, its Unix socket (no TCP at all) and its log.
PostgreSQL refuses to run as root, so under root the cluster belongs to the `postgres`
system user that Debian's packages create.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from mgte.errors import UserError

# Crash safety is not worth its cost in a throwaway cluster.
_SETTINGS = """
listen_addresses = ''
unix_socket_directories = '{socket_dir}'
port = {port}
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = 128MB
wal_level = logical  # so that mgte_enable(..., mode => 'logical') works here too
"""


def find_pg_config() -> Path:
    """$PG_CONFIG, else the one scripts/setup.sh linked into the virtualenv, else pg_config on PATH."""
    candidates = [os.environ.get("PG_CONFIG"), str(Path(sys.executable).parent / "pg_config"),
                  shutil.which("pg_config")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise UserError("pg_config not found, so the PostgreSQL installation is unknown",
                    hint="run scripts/setup.sh, or set PG_CONFIG to the pg_config of your PostgreSQL")


def service_user() -> pwd.struct_passwd | None:
    """The user that runs PostgreSQL when we are root; None when we can run it ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise UserError("running as root, and there is no 'postgres' user to run PostgreSQL as",
                        hint="install PostgreSQL from Debian's packages (scripts/setup.sh), or run as "
                             "an ordinary user") from None


class Cluster:
    """initdb, start and stop a cluster under `root`; connect with `conninfo()` (trust auth)."""

    port = 5432  # safe to share: the socket lives in this cluster's own directory
    user = "postgres"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "run"
        self.log = root / "postgres.log"
        self.bindir = Path(_pg_config_value("--bindir"))
        self.owner = service_user()

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={dbname}"

    def init(self) -> None:
        """Creates the cluster unless it already exists."""
        if (self.data / "PG_VERSION").is_file():
            return
        self._make_directories()
        self._run("initdb", "--pgdata", str(self.data), "--username", self.user, "--auth", "trust",
                  "--encoding", "UTF8", "--locale", "C.UTF-8", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(_SETTINGS.format(socket_dir=self.socket_dir, port=self.port))

    def init_standby(self, primary: Cluster) -> None:
        """Creates the cluster as a streaming hot standby of the running `primary`: a base backup
        that follows the primary's WAL (pg_basebackup --write-recovery-conf)."""
        self._make_directories()
        self._run("pg_basebackup", "--pgdata", str(self.data), "--dbname", primary.conninfo(),
                  "--write-recovery-conf", "--checkpoint", "fast", "--wal-method", "stream", "--no-sync")
        # The copied configuration names the primary's socket directory; the last setting wins.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")

    def promote(self) -> None:
        """Ends a standby's recovery: it becomes a primary that accepts writes."""
        self._run("pg_ctl", "--pgdata", str(self.data), "--wait", "promote")

    def _make_directories(self) -> None:
        for path in (self.root, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)  # the mgte server's socket may live here too
            if self.owner is not None:
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        if self.owner is not None and self._run("test", "-w", str(self.root), check=False, bindir=False) != 0:
            raise UserError(f"the {self.owner.pw_name} user, which runs PostgreSQL here, cannot write {self.root}",
                            hint="choose a directory outside private home directories, e.g. under /tmp or /var/tmp")

    def start(self) -> None:
        """Starts the cluster unless it is already running (e.g. left by `mgte demo --keep`)."""
        if not self.running():
            self._run("pg_ctl", "--pgdata", str(self.data), "--log", str(self.log), "--wait", "start")

    def running(self) -> bool:
        return self._run("pg_ctl", "--pgdata", str(self.data), "status", check=False) == 0

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "--pgdata", str(self.data), "--mode", "fast", "--wait", "stop")

    def _run(self, program: str, *args: str, check: bool = True, bindir: bool = True) -> int:
        command = [str(self.bindir / program) if bindir else program, *args]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner.pw_name, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if check and done.returncode != 0:
            log_tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise UserError(f"{program} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
                            + (f"\n{log_tail}" if log_tail else ""))
        return done.returncode


def _pg_config_value(flag: str) -> str:
    pg_config = find_pg_config()
    return subprocess.run([str(pg_config), flag], check=True, capture_output=True, text=True).stdout.strip()
