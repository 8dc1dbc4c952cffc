"""Running `mgte serve` as a child process (for the demo and the tests) and waiting until it answers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from mgte.errors import UserError
from mgte.pgcluster import service_user
from mgte_udf.client import Client


class ServerProcess:
    def __init__(self, socket: Path, log: Path, process: subprocess.Popen[bytes]) -> None:
        self.socket = socket
        self.log = log
        self.process = process

    @classmethod
    def start(cls, model: str, socket: Path, log: Path, *flags: str, reranker: str | None = None,
              ready_timeout: float = 600, env: Mapping[str, str] | None = None) -> ServerProcess:
        """Starts the server and returns once it is healthy. Under root the socket's group is
        postgres, so that PostgreSQL backends (which never run as root) can connect. `env` adds to
        this process's environment."""
        command = [sys.executable, "-m", "mgte", "serve", "--model", model, "--socket", str(socket), *flags]
        if reranker:
            command += ["--reranker", reranker]
        owner = service_user()
        if owner is not None:
            command += ["--socket-group", owner.pw_name]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        server = cls(socket, log, process)
        try:
            server._wait_healthy(ready_timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def client(self, timeout: float | None = 30.0) -> Client:
        return Client(str(self.socket), timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (in-flight work finishes), then SIGKILL if it takes longer than `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"mgte serve exited with status {self.process.returncode}:\n"
                                f"{self.log_text()[-3000:]}")
            if self.socket.exists():
                with contextlib.suppress(Exception), self.client(timeout=10) as client:
                    client.health()
                    return
            time.sleep(0.1)
        raise UserError(f"mgte serve did not answer within {timeout:.0f} s; its log is {self.log}")
