"""The `mgte` command: flags, their environment variables, and errors a person can act on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Checkpoints


def mgte(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mgte", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_every_serve_flag_has_an_environment_variable() -> None:
    done = mgte("serve", "--help")
    assert done.returncode == 0
    flags = set(re.findall(r"^\s+(--[a-z-]+)", done.stdout, re.MULTILINE)) - {"--help"}
    assert {"--model", "--reranker", "--socket", "--device", "--dtype", "--max-batch-tokens",
            "--max-request-texts", "--max-request-bytes", "--max-queue-texts", "--socket-group"} <= flags
    text = " ".join(done.stdout.split())
    for flag in flags:
        env = "MGTE_" + flag.removeprefix("--").replace("-", "_").upper()
        assert f"[env {env};" in text, flag


def test_environment_variable_sets_the_default_and_the_flag_wins(tmp_path: Path, checkpoints: Checkpoints) -> None:
    bad = mgte("serve", "--model", str(checkpoints.embedding_native), env={"MGTE_MAX_REQUEST_TEXTS": "many"})
    assert bad.returncode == 2 and "--max-request-texts" in bad.stderr and "'many'" in bad.stderr
    missing = mgte("serve", env={"MGTE_MODEL": str(tmp_path / "no-such-model")})
    assert missing.returncode == 2
    assert f"no model at {tmp_path / 'no-such-model'}" in missing.stderr
    flag_wins = mgte("serve", "--model", str(tmp_path / "other"), env={"MGTE_MODEL": str(tmp_path / "no-such-model")})
    assert f"no model at {tmp_path / 'other'}" in flag_wins.stderr


def test_missing_hub_weights_offline_is_one_clear_error() -> None:
    done = mgte("serve", "--model", "Alibaba-NLP/gte-multilingual-base", "--socket", "/tmp/unused.sock",
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"})
    assert done.returncode == 2
    assert "mgte: error: model weights for Alibaba-NLP/gte-multilingual-base are not in the local cache " \
           "and HF_HUB_OFFLINE is set" in done.stderr
    assert "hint:" in done.stderr and "Traceback" not in done.stderr


def test_model_of_the_wrong_kind(checkpoints: Checkpoints) -> None:
    done = mgte("serve", "--model", str(checkpoints.reranker_original))
    assert done.returncode == 2
    assert "is a reranker (NewForSequenceClassification), not an embedding model" in done.stderr
    assert "--reranker instead of --model" in done.stderr


def test_incomplete_checkpoint_is_refused(tmp_path: Path, checkpoints: Checkpoints) -> None:
    import shutil

    from safetensors.torch import load_file, save_file
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints.embedding_original, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["new.encoder.layer.1.attention.qkv_proj.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    done = mgte("serve", "--model", str(broken), "--socket", str(tmp_path / "s.sock"))
    assert done.returncode == 2
    assert "weights missing or of the wrong shape" in done.stderr
    assert "layers.1.self_attn" in done.stderr


def test_info_when_no_server_runs(tmp_path: Path) -> None:
    done = mgte("info", "--socket", str(tmp_path / "none.sock"))
    assert done.returncode == 1
    assert "mgte server not reachable" in done.stderr and "hint: start it with" in done.stderr


def test_queue_smaller_than_a_request_is_refused(checkpoints: Checkpoints) -> None:
    done = mgte("serve", "--model", str(checkpoints.embedding_native), "--max-queue-texts", "10",
                "--max-request-texts", "20")
    assert done.returncode == 2 and "could never be queued" in done.stderr


def test_bad_log_level(checkpoints: Checkpoints) -> None:
    done = mgte("serve", "--model", str(checkpoints.embedding_native), "--log-level", "loud")
    assert done.returncode == 2 and "'loud' is not one of debug, info, warning, error" in done.stderr
