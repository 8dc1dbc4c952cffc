"""The batching policy, with the real tiny model."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from mgte.batcher import MIN_FILL, Batcher, Job, _Item
from mgte.checkpoint import load_checkpoint
from mgte.runtime import Embedder, EmbeddingOutput
from mgte_udf.errors import ModelFailed, Overloaded, ShuttingDown
from tests.conftest import Checkpoints

POISON = 99999  # a token id that makes the model below fail
OUT_OF_MEMORY = 99998  # one that makes it run out of device memory


class PoisonedEmbedder(Embedder):
    """The real model, except that a batch holding POISON raises, as a device error would."""

    def forward(self, batch: Sequence[Sequence[int]]) -> list[EmbeddingOutput]:
        if any(POISON in ids for ids in batch):
            raise RuntimeError("simulated device failure")
        if any(OUT_OF_MEMORY in ids for ids in batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(batch)


class PaddedEmbedder(Embedder):
    """Batched as a model that runs padded batches (a sentence-transformers folder) is."""

    unpadded = False


@pytest.fixture(scope="module")
def embedder(checkpoints: Checkpoints) -> PoisonedEmbedder:
    return PoisonedEmbedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"),
                            torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def padded_embedder(checkpoints: Checkpoints) -> PaddedEmbedder:
    return PaddedEmbedder(load_checkpoint(str(checkpoints.embedding_native), "embedding"),
                          torch.device("cpu"), torch.float32)


def items(embedder: Embedder, lengths: list[int]) -> list[_Item]:
    job = Job(embedder, [[5] * n for n in lengths])
    return [_Item(job, i) for i in range(len(lengths))]


LENGTHS = [11, 300, 95, 290, 100, 12, 280, 11, 1500, 100, 9]


def test_padded_batches_respect_the_budget_and_group_similar_lengths(padded_embedder: Embedder) -> None:
    batcher = Batcher(max_batch_tokens=1000, max_queued=100)
    lengths = LENGTHS
    batches = batcher._cut(items(padded_embedder, lengths))
    assert sorted(item.length for batch in batches for item in batch) == sorted(lengths)
    for batch in batches:
        widest = batch[0].length
        assert all(item.length <= widest for item in batch)
        assert len(batch) == 1 or len(batch) * widest <= 1000
        assert all(item.length >= MIN_FILL * widest for item in batch)
    # 1500 alone (over budget); 300/290/280; 100/100/95; 12/11/11; 9 is under 90% of 12
    assert [len(b) for b in batches] == [1, 3, 3, 3, 1]


def test_unpadded_batches_fill_the_budget_with_real_tokens(embedder: Embedder) -> None:
    batcher = Batcher(max_batch_tokens=1000, max_queued=100)
    batches = batcher._cut(items(embedder, LENGTHS))
    assert [[item.length for item in batch] for batch in batches] == [
        [1500], [300, 290, 280, 100], [100, 95, 12, 11, 11, 9]]  # the next one in order would overflow


def test_counters_count_the_tokens_each_kind_of_model_computes(embedder: Embedder,
                                                               padded_embedder: Embedder) -> None:
    for model, computed in ((embedder, 10 + 11), (padded_embedder, 2 * 11)):
        batcher = Batcher(max_batch_tokens=1000, max_queued=100)
        future = batcher.submit(model, [[0] + [5] * 8 + [2], [0] + [5] * 9 + [2]])
        batcher.start()
        future.result(timeout=30)
        batcher.stop()
        assert (batcher.counters.batches, batcher.counters.tokens, batcher.counters.padded_tokens) == (1, 21, computed)


def test_full_queue_is_refused_at_once(embedder: Embedder) -> None:
    batcher = Batcher(max_batch_tokens=1000, max_queued=5)  # not started: nothing leaves the queue
    batcher.submit(embedder, [[0, 5, 2]] * 3)
    with pytest.raises(Overloaded, match="3 texts queued, the limit is 5"):
        batcher.submit(embedder, [[0, 5, 2]] * 3)
    assert batcher.counters.rejected_overloaded == 1
    batcher.submit(embedder, [[0, 5, 2]] * 2)
    assert batcher.queued() == 5


def test_a_failing_batch_fails_its_jobs_only_as_a_server_fault(embedder: Embedder) -> None:
    batcher = Batcher(max_batch_tokens=3, max_queued=100)  # one 3-token sequence per batch
    bad = batcher.submit(embedder, [[0, 5, 2], [0, POISON, 2]])
    good = batcher.submit(embedder, [[0, 6, 2], [0, 7, 2]])
    starved = batcher.submit(embedder, [[0, OUT_OF_MEMORY, 2]])
    batcher.start()
    with pytest.raises(ModelFailed, match="simulated device failure") as failed:
        bad.result(timeout=30)
    assert failed.value.code == "model_failed" and failed.value.input_fault is False
    with pytest.raises(ModelFailed, match="ran out of device memory") as out_of_memory:
        starved.result(timeout=30)
    assert out_of_memory.value.hint is not None and "--max-batch-tokens" in out_of_memory.value.hint
    assert len(good.result(timeout=30)) == 2
    assert batcher.counters.failed_batches == 2
    after = batcher.submit(embedder, [[0, 8, 2]])
    assert len(after.result(timeout=30)) == 1  # the model thread lives on
    batcher.stop()


def test_stop_finishes_queued_work_then_refuses_more(embedder: Embedder) -> None:
    batcher = Batcher(max_batch_tokens=1000, max_queued=100)
    pending = [batcher.submit(embedder, [[0, 5 + i, 2]]) for i in range(10)]
    batcher.start()
    batcher.stop()
    assert all(len(f.result(timeout=0)) == 1 for f in pending)
    with pytest.raises(ShuttingDown):
        batcher.submit(embedder, [[0, 5, 2]])


def test_requests_share_batches_and_counters_say_so(embedder: Embedder) -> None:
    batcher = Batcher(max_batch_tokens=1000, max_queued=100)
    futures = [batcher.submit(embedder, [[0, 5 + i, 2]]) for i in range(6)]
    batcher.start()
    for future in futures:
        future.result(timeout=30)
    batcher.stop()
    c = batcher.counters
    assert (c.jobs, c.sequences, c.batches, c.largest_batch, c.multi_request_batches) == (6, 6, 1, 6, 1)
    assert c.tokens == c.padded_tokens == 18
