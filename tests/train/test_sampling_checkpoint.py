"""Weighted epochs are exact and reproducible; checkpoints are atomic, pruned and ranked."""

import pytest
import torch

from distill.train.checkpoint import CheckpointManager
from distill.train.sampling import WeightedEpochSampler


def test_weights_set_how_often_each_source_is_seen():
    sampler = WeightedEpochSampler(sizes=[10, 20], weights=[2.0, 0.5], seed=0)
    order = sampler.epoch_order(0).tolist()
    assert len(order) == len(sampler) == 20 + 10
    first = [i for i in order if i < 10]
    second = [i for i in order if i >= 10]
    assert sorted(first) == sorted(list(range(10)) * 2)  # every sample exactly twice
    assert len(second) == 10 and len(set(second)) == 10  # a random half, no repeats
    assert all(10 <= i < 30 for i in second)


def test_order_is_a_function_of_seed_and_epoch():
    a = WeightedEpochSampler([50, 7], [1.0, 3.0], seed=1)
    b = WeightedEpochSampler([50, 7], [1.0, 3.0], seed=1)
    assert torch.equal(a.epoch_order(3), b.epoch_order(3))
    assert not torch.equal(a.epoch_order(3), a.epoch_order(4))
    assert not torch.equal(a.epoch_order(3), WeightedEpochSampler([50, 7], [1.0, 3.0], 2).epoch_order(3))


def test_resuming_mid_epoch_replays_the_rest():
    sampler = WeightedEpochSampler([30], [1.0], seed=5)
    full = list(sampler.iterate(2))
    assert list(sampler.iterate(2, start=12)) == full[12:]


def test_bad_sampler_inputs():
    with pytest.raises(ValueError, match="weights must be > 0"):
        WeightedEpochSampler([3], [0.0], 0)
    with pytest.raises(ValueError, match="2 sources but 1 weights"):
        WeightedEpochSampler([3, 4], [1.0], 0)


def write_marker(value):
    def write(folder):
        (folder / "weights.txt").write_text(str(value))
    return write


def test_keep_last_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    metrics = {100: 0.5, 200: 0.9, 300: 0.7, 400: 0.6}
    for step, metric in metrics.items():
        manager.save(step, write_marker(step), metric=metric)
    names = [p.name for p in manager.finished()]
    assert names == ["step-00000200", "step-00000300", "step-00000400"]  # last 2 + the best
    assert manager.best().name == "step-00000200"
    assert manager.latest().name == "step-00000400"
    assert (tmp_path / "checkpoints" / "latest" / "weights.txt").read_text() == "400"
    assert (tmp_path / "best" / "weights.txt").read_text() == "200"


def test_lower_is_better_metric(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step, loss in [(1, 2.0), (2, 1.0), (3, 1.5)]:
        manager.save(step, write_marker(step), metric=loss, higher_is_better=False)
    assert manager.best().name == "step-00000002"


def test_a_failed_save_leaves_the_previous_checkpoint_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(1, write_marker(1))

    def crash(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        manager.save(2, crash)
    assert [p.name for p in manager.finished()] == ["step-00000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_ranks_share_no_sample_and_together_read_the_single_process_stream():
    from itertools import islice

    from distill.train.data import EpochSampler

    order = WeightedEpochSampler([7, 5], [1.0, 2.0], seed=3)  # 17 keys an epoch: not / 2
    single = list(islice(iter(EpochSampler(order, epoch=1, start=4)), 40))
    ranks = [list(islice(iter(EpochSampler(order, 1, 4, rank, 2)), 20)) for rank in (0, 1)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    assert {e for e, _ in single} == {1, 2, 3}  # the stream runs on across epochs
