"""Data streamed from disk (chapter 10): splits, shards, self energies and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anibook_utils.data import BOOK_SPLIT
from anibook_utils.models import ArchitectureSpec
from anibook_utils.self_energy import fit_self_energies
from anibook_utils.streaming import H5Stream, stream_self_energies, stream_target_scale
from anibook_utils.training import ConfigError, TrainConfig, train

pytestmark = pytest.mark.usefixtures("real_data")


@pytest.fixture(scope="module")
def stream(real_data):
    return H5Stream(real_data.source, chunk=50)


def rows_of(view: H5Stream) -> set[tuple[int, int]]:
    """(group, row) of every conformation of a view, from the hashes."""
    found = set()
    for k, group in enumerate(view.groups):
        found |= {(k, int(i)) for i in np.flatnonzero(view._members(group, 0, group.count))}
    return found


def test_the_parts_of_a_split_cover_every_conformation_once(stream, real_data):
    parts = stream.split(BOOK_SPLIT, seed=3)
    seen = [rows_of(p) for p in parts]
    assert sum(len(s) for s in seen) == len(real_data) == len(stream)
    assert len(set().union(*seen)) == len(real_data)
    for part, fraction in zip(parts, BOOK_SPLIT):
        assert len(part) == pytest.approx(fraction * len(real_data), rel=0.1)
    assert rows_of(stream.split(BOOK_SPLIT, seed=3)[0]) == seen[0]  # stable
    assert rows_of(stream.split(BOOK_SPLIT, seed=4)[0]) != seen[0]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_shards_cover_every_chunk_once_per_epoch(stream, world):
    everything = np.concatenate([stream.chunks(epoch=2, seed=0, rank=r, world_size=world) for r in range(world)])
    assert len(everything) == len(stream.chunks(epoch=2, seed=0))
    assert len({tuple(row) for row in everything.tolist()}) == len(everything)
    total = sum(stop - start for _, start, stop in everything.tolist())
    assert total == len(stream)
    assert not np.array_equal(stream.chunks(1, 0), stream.chunks(2, 0))  # reshuffled every epoch


def test_batches_read_the_right_conformations(stream, real_data):
    batch = next(stream.batches(64, epoch=0, seed=0))
    assert len(batch) >= 64 and batch.species.shape == batch.coordinates.shape[:2]
    energies = set(np.round(real_data.energies.numpy(), 10).tolist())
    assert set(np.round(batch.energies.numpy(), 10).tolist()) <= energies
    assert stream.count_batches(64, 0, 0) == sum(1 for _ in stream.batches(64, 0, 0))


def test_streamed_self_energies_equal_the_in_memory_fit(stream, real_data):
    streamed = stream_self_energies(stream)
    in_memory = fit_self_energies(real_data, warn=False).as_tensor()
    sums_of = real_data.species.clamp(min=0)
    assert torch.allclose(streamed, in_memory, atol=1e-9)
    shifted = real_data.energies - (torch.nn.functional.one_hot(sums_of, 4) * (real_data.species >= 0).unsqueeze(-1)
                                     ).sum(1).double() @ in_memory
    assert stream_target_scale(stream, streamed) == pytest.approx(float(shifted.std()), rel=1e-4)


def test_training_on_a_stream(stream):
    train_set, val_set, _ = stream.split(BOOK_SPLIT, seed=0)
    spec = ArchitectureSpec({e: (16,) for e in "HCNO"})
    with pytest.raises(ConfigError, match="feed='in_step'"):
        train(spec, train_set, val_set, TrainConfig(epochs=1), progress=False)
    config = TrainConfig.fast(epochs=2, batch_size=256, feed="in_step", device="cpu", num_threads=1)
    result = train(spec, train_set, val_set, config, progress=False)
    first, last = result.history[0], result.history[-1]
    assert last["val_rmse"] < first["val_rmse"] and np.isfinite(last["train_rmse"])
