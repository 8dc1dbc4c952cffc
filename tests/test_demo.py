"""`mgte demo`, the main job, as a newcomer runs it (here without hub access)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mgte.demo_corpus import DOCUMENTS, QUERIES
from tests.conftest import shared_tempdir


def test_demo_falls_back_to_tiny_and_answers_every_language(tmp_path: Path) -> None:
    datadir = shared_tempdir("mgte-demo-test-")
    done = subprocess.run(
        [sys.executable, "-m", "mgte", "demo", "--datadir", str(datadir)], capture_output=True, text=True,
        timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hub")})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    fallback = [line for line in out.splitlines() if "running with --model tiny" in line]
    assert len(fallback) == 1 and "HF_HUB_OFFLINE is set" in fallback[0]
    assert f"stored {len(DOCUMENTS)} documents in 10 languages" in out
    for query in QUERIES:
        header = f"[{query.lang}] {query.text}"
        assert header in out
        table = out.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()
        assert table[0].split() == ["lang", "title", "dense", "sparse", "fused", "rerank"]
        rows = table[2:]
        assert len(rows) == 3
        for row in rows:
            assert row.split()[0] in {d.lang for d in DOCUMENTS}
            assert len(re.findall(r"-?\d+\.\d{3}", row)) >= 4
    assert "mean nothing" in out.splitlines()[-1]
    # Nothing left running.
    assert not (datadir / "mgte.sock").exists()
    assert not (datadir / "data" / "postmaster.pid").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to the postgres user")
def test_demo_explains_a_datadir_postgres_cannot_reach() -> None:
    private = Path(tempfile.mkdtemp())  # mode 0700, owned by root
    done = subprocess.run([sys.executable, "-m", "mgte", "demo", "--model", "tiny", "--datadir", str(private / "d")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "the postgres user, which runs PostgreSQL here, cannot write" in done.stderr
    assert "hint: choose a directory outside private home directories" in done.stderr
