"""Which precision a model runs in and why: --dtype auto on CPU, emulated bf16, what `mgte info` reports.

The decision takes the CPU's capabilities as an argument, so every branch runs on any machine: one
with native bf16 (AMX, AVX-512 BF16) and an AVX2-only one alike. One test checks the real machine.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mgte.checkpoint import load_checkpoint
from mgte.runtime import BF16_MIN_COS, NATIVE_BF16, AutoDtype, Embedder, Reranker, native_bf16, resolve_dtype
from tests.conftest import Checkpoints, running_server

CPU = torch.device("cpu")
NATIVE = {"amx_tile": True, "amx_bf16": True, "avx512_bf16": True}
AVX2_ONLY = {"avx2": True, "avx512_bf16": False}  # no amx_bf16 key at all: missing counts as no
TEXTS = ["¿Dónde está la estación de tren?", "北京欢迎你", "مرحبا بالعالم", "",
         "A longer English passage about glaciers, climate and the sea level, " * 12]


def embedder(checkpoints: Checkpoints, dtype: torch.dtype | AutoDtype) -> Embedder:
    return Embedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"), CPU, dtype)


def parity_cos(reason: str) -> float:
    match = re.search(r"bf16 parity min cos ([0-9.]+) over \d+ tokens of 7 probe texts", reason)
    assert match is not None, reason
    return float(match.group(1))


def kernels() -> dict[str, Any]:
    # On a CPU the GTE models run unpadded with SDPA per sequence (mgte.packed), without CUDA graphs.
    return {"attention": "sdpa per sequence", "cuda_graphs": "off: CUDA graphs need a GPU, this model runs on cpu",
            "compile": "off: not asked for (mgte serve --compile on)",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


@pytest.fixture(scope="module")
def float32(checkpoints: Checkpoints) -> Embedder:
    return embedder(checkpoints, torch.float32)


def test_native_bf16_reads_the_bf16_capabilities_only() -> None:
    assert native_bf16(NATIVE) == ["amx_bf16", "avx512_bf16"]
    assert native_bf16({"avx512_bf16": True}) == ["avx512_bf16"]
    assert native_bf16(AVX2_ONLY) == []
    assert native_bf16({}) == []


def test_auto_without_native_bf16_keeps_float32(checkpoints: Checkpoints) -> None:
    model = embedder(checkpoints, AutoDtype(AVX2_ONLY))
    assert {p.dtype for p in model.module.parameters()} == {torch.float32}
    info = model.describe()
    assert info["dtype"] == "float32"
    assert info["dtype_reason"] == (f"auto: no native bf16 on this CPU (capability "
                                    f"{torch.backends.cpu.get_cpu_capability()}): float32")
    assert info["kernels"] == kernels()


def test_auto_with_native_bf16_runs_bf16_when_parity_holds(checkpoints: Checkpoints, float32: Embedder) -> None:
    model = embedder(checkpoints, AutoDtype(NATIVE, min_cos=-1.0))  # any parity passes
    assert {p.dtype for p in model.module.parameters()} == {torch.bfloat16}
    info = model.describe()
    assert info["dtype"] == "bfloat16"
    assert info["dtype_reason"].startswith("auto: this CPU has native bf16 (amx_bf16, avx512_bf16); bf16 parity")
    # The tiny model measures 0.9997 on an AMX CPU; bf16's 8-bit mantissa keeps it well above 0.99 anywhere.
    assert 0.99 <= parity_cos(info["dtype_reason"]) <= 1.0
    # What the server answers: the same texts in bf16 and float32, within the same stated tolerance.
    batch = [t.ids for t in model.tokenize(TEXTS)]
    for low, high in zip(model.forward(batch), float32.forward(batch), strict=True):
        assert float(F.cosine_similarity(low.state, high.state, dim=0)) >= 0.99


def test_auto_keeps_float32_when_bf16_parity_fails(checkpoints: Checkpoints) -> None:
    model = embedder(checkpoints, AutoDtype(NATIVE, min_cos=1.5))  # no cosine reaches it
    assert {p.dtype for p in model.module.parameters()} == {torch.float32}
    info = model.describe()
    assert info["dtype"] == "float32"
    assert re.fullmatch(r"auto: this CPU has native bf16 \(amx_bf16, avx512_bf16\) but bf16 parity min cos "
                        r"[0-9.]+ over \d+ tokens of 7 probe texts, below 1.5: float32", info["dtype_reason"])


def test_reranker_auto_with_native_bf16(checkpoints: Checkpoints) -> None:
    checkpoint = load_checkpoint(str(checkpoints.reranker_native), "reranker")
    low, high = Reranker(checkpoint, CPU, AutoDtype(NATIVE, min_cos=-1.0)), Reranker(checkpoint, CPU, torch.float32)
    assert low.describe()["dtype"] == "bfloat16" and 0.99 <= parity_cos(low.describe()["dtype_reason"]) <= 1.0
    batch = [t.ids for t in low.tokenize("where is the station", TEXTS)]
    # The logits leave the classifier in bf16 (8 significant bits): 0.03 apart at most on these logits near 1,
    # as measured; 0.1 leaves room for other CPUs' kernels.
    assert low.forward(batch) == pytest.approx(high.forward(batch), abs=0.1)


def test_explicit_bfloat16_without_native_bf16_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mgte.runtime"):
        assert resolve_dtype("bfloat16", CPU, AVX2_ONLY) == torch.bfloat16
    [record] = caplog.records
    assert "no native bf16" in record.message and "emulated" in record.message
    assert "use --dtype auto or --dtype float32" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mgte.runtime"):
        assert resolve_dtype("bfloat16", CPU, NATIVE) == torch.bfloat16
        assert resolve_dtype("float32", CPU, AVX2_ONLY) == torch.float32
        assert resolve_dtype("bfloat16", torch.device("cuda"), AVX2_ONLY) == torch.bfloat16  # a GPU runs it
    assert caplog.records == []


def test_explicit_dtype_is_reported_as_requested(float32: Embedder) -> None:
    info = float32.describe()
    assert (info["dtype"], info["dtype_reason"]) == ("float32", "requested: float32")


def test_auto_on_this_machine_follows_its_capabilities(checkpoints: Checkpoints) -> None:
    """The real hardware: what describe() says agrees with what torch reports for this CPU."""
    info = embedder(checkpoints, resolve_dtype("auto", CPU)).describe()
    native = [name for name in NATIVE_BF16 if torch.cpu.get_capabilities().get(name, False)]
    assert info["kernels"] == kernels()
    # Both branches assert: which one runs depends on the machine, not whether it is checked.
    if native:
        assert info["dtype_reason"].startswith(f"auto: this CPU has native bf16 ({', '.join(native)})")
        assert info["dtype"] == ("bfloat16" if parity_cos(info["dtype_reason"]) >= BF16_MIN_COS else "float32")
    else:
        assert info["dtype"] == "float32"
        assert info["dtype_reason"].startswith("auto: no native bf16 on this CPU")


def test_mgte_info_reports_dtype_reason_and_kernels(checkpoints: Checkpoints) -> None:
    with (running_server(checkpoints.embedding_native, "--device", "cpu", "--dtype", "auto", "--threads", "1",
                         reranker=checkpoints.reranker_native) as server, server.client() as client):
        info = client.info()
    for model in (info["model"], info["reranker"]):
        assert model["dtype_reason"].startswith("auto: ")
        assert model["dtype"] in ("float32", "bfloat16")
        assert model["kernels"] == {**kernels(), "threads": 1}
