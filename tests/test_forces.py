"""Training on forces (chapter 9): forces in the data layer, the engine's force term, evaluation."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from anibook_utils.data import MalformedGroupError, read_ani_h5, split_dataset
from anibook_utils.models import ArchitectureSpec
from anibook_utils.training import ConfigError, TrainConfig, train

pytestmark = pytest.mark.usefixtures("real_data")

SMALL = ArchitectureSpec({e: (32, 16) for e in "HCNO"})


def quick(**changes) -> TrainConfig:
    return TrainConfig.fast(**{"epochs": 3, "device": "cpu", "num_threads": 1, "feed": "in_step", **changes})


@pytest.fixture(scope="module")
def labelled(real_data):
    """1,000 real conformations relabelled by a small trained 'teacher' potential (energies and its
    autograd forces), so that forces are consistent with energies without running DFT here."""
    data = real_data.subset(torch.randperm(len(real_data), generator=torch.Generator().manual_seed(0))[:1000])
    train_set, val_set = split_dataset(data, 0.8, seed=0)
    teacher = train(SMALL, train_set, val_set, TrainConfig.fast(epochs=4, device="cpu", num_threads=1),
                    progress=False).potential()
    energies, forces = teacher.energies_and_forces(data.species, data.coordinates)
    data.energies, data.forces, data._fingerprint = energies.detach(), forces.detach().float(), None
    return split_dataset(data, 0.8, seed=1)


def write_file(path, groups: dict) -> None:
    with h5py.File(path, "w") as f:
        for name, values in groups.items():
            g = f.create_group(f"set/{name}")
            for key, value in values.items():
                g[key] = value


def test_the_reader_reads_forces_when_every_group_has_them(tmp_path):
    xyz = np.random.default_rng(0).normal(size=(4, 3, 3)).astype(np.float32)
    water = {"species": np.array([b"O", b"H", b"H"]), "coordinates": xyz, "energies": np.zeros(4)}
    write_file(tmp_path / "with.h5", {"a": {**water, "forces": -xyz}, "b": {**water, "forces": xyz}})
    data = read_ani_h5(tmp_path / "with.h5")
    assert data.forces is not None and data.forces.shape == data.coordinates.shape
    assert torch.equal(data.forces[:4], torch.from_numpy(-xyz))
    write_file(tmp_path / "mixed.h5", {"a": {**water, "forces": xyz}, "b": water})
    assert read_ani_h5(tmp_path / "mixed.h5").forces is None
    write_file(tmp_path / "bad.h5", {"a": {**water, "forces": xyz[:, :2]}})
    with pytest.raises(MalformedGroupError, match="'forces' has shape"):
        read_ani_h5(tmp_path / "bad.h5")


def test_force_training_needs_in_step_aevs_and_forces(labelled, real_data):
    with pytest.raises(ConfigError, match="feed='in_step'"):
        TrainConfig(force_weight=1.0)
    energy_only = real_data.subset(range(200))
    with pytest.raises(ConfigError, match="needs forces"):
        train(SMALL, energy_only, energy_only, quick(force_weight=1.0), progress=False)


def test_training_on_forces_learns_the_forces(labelled):
    train_set, val_set = labelled
    energy_only = train(SMALL, train_set, val_set, quick(), progress=False)
    with_forces = train(SMALL, train_set, val_set, quick(force_weight=1.0), progress=False)
    before, after = energy_only.evaluate(val_set), with_forces.evaluate(val_set)
    assert {"rmse", "mae", "force_rmse", "force_mae"} <= set(after)
    assert after["force_rmse"] < 0.8 * before["force_rmse"]
    best = with_forces.history.best()  # the returned model is the best epoch's
    assert best["val_force_rmse"] == pytest.approx(after["force_rmse"], rel=1e-4)
    assert best["val_rmse"] == pytest.approx(after["rmse"], rel=1e-4)
    assert all(r["train_force_rmse"] > 0 for r in with_forces.history)


def test_force_training_resumes_exactly(labelled, tmp_path):
    train_set, val_set = labelled
    config = quick(force_weight=0.5)
    full = train(SMALL, train_set, val_set, config, checkpoint_dir=tmp_path / "full", progress=False)

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    train(SMALL, train_set, val_set, config, checkpoint_dir=tmp_path / "cut", callback=interrupt, progress=False)
    resumed = train(SMALL, train_set, val_set, config, checkpoint_dir=tmp_path / "cut", resume=True, progress=False)
    assert [r["val_force_rmse"] for r in resumed.history] == [r["val_force_rmse"] for r in full.history]
