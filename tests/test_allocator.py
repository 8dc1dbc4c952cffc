"""mgte.allocator: the server keeps freed memory for reuse, unless the environment tunes malloc."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mgte.server_process import ServerProcess
from tests.conftest import Checkpoints, running_server

# Allocates, fills and frees a 48 MiB tensor (the full-size MLP's activations of a 4,096-token
# batch) 23 times; prints the page faults of the last three. Kept blocks serve the request only
# after some rounds: torch asks for 64-byte aligned memory, a little more than a freed block of
# the same size holds, until freed neighbours merge.
FAULTS = """
import resource, sys, torch
from mgte.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    print(keep_freed_memory(), file=sys.stderr)
def fill():
    torch.empty(4096, 3072).fill_(1.0)
for _ in range(20):
    fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill(); fill(); fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(how: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS, how], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_freed_activation_is_reused_without_page_faults() -> None:
    # glibc maps such a block afresh each time: a fault per page (per 2 MiB where transparent
    # huge pages are always on), which keeping freed blocks saves.
    default, kept = faults("default"), faults("keep")
    assert default >= 3 * 24 and kept * 10 < default, (default, kept)


def test_the_server_says_how_it_allocates(server: ServerProcess, checkpoints: Checkpoints,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with server.client() as client:
        assert "freed blocks kept for reuse" in client.info()["host_allocator"]
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7")
    with running_server(checkpoints.embedding_native) as tuned, tuned.client() as client:
        assert client.info()["host_allocator"] == "as the environment tunes it (GLIBC_TUNABLES)"
