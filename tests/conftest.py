"""Fixtures: tiny checkpoints in both formats, real `mgte serve` processes, a real PostgreSQL cluster."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from safetensors.torch import load_file, save_file

from mgte import tiny
from mgte.client import Client
from mgte.pgcluster import Cluster, find_pg_config
from mgte.server_process import ServerProcess

REPO = Path(__file__).resolve().parent.parent
TEST_DB = "mgte_test"


@dataclass(frozen=True)
class Checkpoints:
    embedding_native: Path
    embedding_original: Path
    reranker_native: Path
    reranker_original: Path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    """Tiny random checkpoints; each kind written in both formats from the same weights."""
    root = tmp_path_factory.mktemp("checkpoints")
    return Checkpoints(
        embedding_native=tiny.build(root / "embedding-native", "embedding", "native", seed=11),
        embedding_original=tiny.build(root / "embedding-original", "embedding", "original", seed=11),
        reranker_native=tiny.build(root / "reranker-native", "reranker", "native", seed=12),
        reranker_original=tiny.build(root / "reranker-original", "reranker", "original", seed=12),
    )


def shared_tempdir(prefix: str) -> Path:
    """A temp directory that PostgreSQL (the postgres user, when we are root) can traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def start_server(model: Path | str, *flags: str, reranker: Path | str | None = None,
                 socket_dir: Path | None = None) -> ServerProcess:
    socket_dir = socket_dir or shared_tempdir("mgte-sock-")
    # float32 unless a test asks otherwise (a later --dtype wins): the tests compare answers with float32
    # references within 1e-5, and --dtype auto runs bfloat16 on CPUs with native bf16.
    return ServerProcess.start(str(model), socket_dir / "mgte.sock", socket_dir / "server.log",
                               "--dtype", "float32", *flags,
                               reranker=None if reranker is None else str(reranker), ready_timeout=120)


@contextlib.contextmanager
def running_server(model: Path | str, *flags: str, reranker: Path | str | None = None) -> Iterator[ServerProcess]:
    server = start_server(model, *flags, reranker=reranker)
    try:
        yield server
    finally:
        server.stop(timeout=30)


@pytest.fixture(scope="session")
def server(checkpoints: Checkpoints) -> Iterator[ServerProcess]:
    """The shared server: native tiny embedding model and reranker."""
    with running_server(checkpoints.embedding_native, reranker=checkpoints.reranker_native) as running:
        yield running


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with server.client() as c:
        yield c


def _check_installed_extension() -> None:
    """The tests exercise the installed copy of the extension: it must match this checkout."""
    pg_config = str(find_pg_config())
    subprocess.run(["make", "-s", "-C", str(REPO / "extension"), f"PG_CONFIG={pg_config}"], check=True)
    sharedir = Path(subprocess.run([pg_config, "--sharedir"], check=True, capture_output=True,
                                   text=True).stdout.strip())
    version = _extension_version()
    pairs = [(REPO / "extension" / f"mgte--{version}.sql", sharedir / "extension" / f"mgte--{version}.sql"),
             (REPO / "extension" / "mgte.control", sharedir / "extension" / "mgte.control")]
    pairs += [(source, sharedir / "mgte" / version / "mgte_udf" / source.name)
              for source in sorted((REPO / "python_udf" / "mgte_udf").glob("*.py"))]
    # Earlier releases: their install scripts, the updates from them, their clients.
    for release in sorted({p.name for p in (REPO / "extension" / "releases").iterdir()} - {version}):
        pairs += [(REPO / "extension" / name, sharedir / "extension" / name)
                  for name in (f"mgte--{release}.sql", f"mgte--{release}--{version}.sql")]
        pairs += [(source, sharedir / "mgte" / release / "mgte_udf" / source.name)
                  for source in sorted((REPO / "extension" / "releases" / release / "mgte_udf").glob("*.py"))]
    stale = [str(installed) for source, installed in pairs
             if not installed.is_file() or installed.read_bytes() != source.read_bytes()]
    if stale:
        pytest.fail("the installed mgte extension differs from this checkout (" + ", ".join(stale) +
                    "); run scripts/setup.sh (or make -C extension install) first", pytrace=False)


def _extension_version() -> str:
    from mgte import __version__
    return __version__


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    _check_installed_extension()
    root = shared_tempdir("mgte-pg-")
    pg = Cluster(root)
    pg.init()
    pg.start()
    try:
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEST_DB}")
        with psycopg.connect(pg.conninfo(TEST_DB), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION mgte CASCADE")
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db(cluster: Cluster, server: ServerProcess) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A session of the test database, pointed at the shared server."""
    with psycopg.connect(cluster.conninfo(TEST_DB), autocommit=True) as conn:
        conn.execute("SELECT set_config('mgte.socket_path', %s, false)", [str(server.socket)])
        yield conn


def small_vocab_checkpoint(source: Path, target: Path, vocab_size: int) -> Path:
    """`source` with its embedding table cut to `vocab_size` rows, its tokenizer left whole: the
    model fails on every text holding a token beyond the table, as a broken checkpoint or
    device would, and works on the others."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["vocab_size"] = vocab_size
    (target / "config.json").write_text(json.dumps(config))
    weights = load_file(str(target / "model.safetensors"))
    table = "gte.embeddings.word_embeddings.weight"
    weights[table] = weights[table][:vocab_size].clone()
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target
