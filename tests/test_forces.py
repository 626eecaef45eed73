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


# ---------------------------------------------------------------- the bundled file's DFT forces


def _bundled():
    from anibook_utils.data import load_dataset

    return load_dataset("anibook_nms_s01", download=False)  # checksum-verified against the registry


def test_the_bundled_file_has_forces_for_every_conformation():
    from anibook_utils.reference import EMBEDDED_DATASET, FORCE_DEFINITION, FORCE_UNIT

    data = _bundled()
    assert data.forces is not None and data.forces.shape == data.coordinates.shape
    real = data.species >= 0
    assert bool(torch.isfinite(data.forces).all())
    assert float(data.forces[~real].abs().max()) == 0.0  # padding atoms carry no force
    # A DFT energy does not change when the molecule moves as a whole, so exact forces sum to
    # zero. PySCF's default gradient leaves out the response of the integration grid (which
    # moves with the atoms), so these sum to zero only up to a few 1e-4 Hartree/Å: label noise
    # of about 0.1 kcal/mol/Å per component (data/README.md, chapter 9).
    net = data.forces.double().sum(dim=1)
    assert float(net.abs().max()) < 1e-3 and float(net.pow(2).mean().sqrt()) < 3e-4  # Hartree/Å
    with h5py.File(EMBEDDED_DATASET, "r") as f:
        assert f.attrs["force_unit"] == FORCE_UNIT == "Hartree/Angstrom"
        assert f.attrs["forces"] == FORCE_DEFINITION
        assert "add_forces" in f.attrs["force_generator"]
        for group in f[f.attrs["dataset"]].values():
            assert group["forces"].dtype == np.float32 and group["forces"].compression == "gzip"


@pytest.fixture(scope="module")
def one_pyscf_thread():
    pyscf = pytest.importorskip("pyscf", reason="optional extra: pip install anibook-utils[reference]")
    before = pyscf.lib.num_threads()
    pyscf.lib.num_threads(1)
    yield
    pyscf.lib.num_threads(before)


@pytest.mark.usefixtures("one_pyscf_thread")
def test_pyscf_recomputes_the_bundled_forces():
    """One conformation per molecule, recomputed at the level of theory the file records."""
    from anibook_utils import reference
    from anibook_utils.data import HARTREE_TO_KCAL

    data = _bundled()
    with h5py.File(reference.EMBEDDED_DATASET, "r") as f:
        level = reference._level_of_file(f.attrs)
    rng = np.random.default_rng(9)
    for mol in range(len(data.molecule_names)):
        i = int(rng.choice(np.flatnonzero(data.molecule_ids.numpy() == mol)))
        n = int(data.num_atoms[i])
        point = reference.single_point(data.species[i, :n], data.coordinates[i, :n].double(), level, forces=True)
        assert point.energy == pytest.approx(float(data.energies[i]), abs=1e-8)
        difference = np.abs(point.forces - data.forces[i, :n].double().numpy()).max() * HARTREE_TO_KCAL
        assert difference < 1e-3, f"{data.molecule_names[mol]} #{i}: {difference:.1e} kcal/mol/Å"


@pytest.mark.usefixtures("one_pyscf_thread")
def test_add_forces_resumes_after_an_interruption(tmp_path, monkeypatch):
    from anibook_utils import reference

    cheap = reference.LevelOfTheory(method="hf", basis="sto-3g")
    tiny = reference.generate_dataset(tmp_path / "tiny.h5", {"H2O": 5}, 1000.0, seed=3, level=cheap,
                                      progress=False).path
    whole = tmp_path / "whole.h5"
    whole.write_bytes(tiny.read_bytes())
    assert reference.add_forces(whole, progress=False).computed == 5

    real, calls = reference.single_point, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(reference, "single_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reference.add_forces(tiny, checkpoint_every=100, progress=False)
    assert reference.forces_progress_path(tiny).is_file()
    assert read_ani_h5(tiny).forces is None  # the file is replaced only when complete
    monkeypatch.setattr(reference, "single_point", real)
    report = reference.add_forces(tiny, progress=False)
    assert report.resumed and report.computed == 3 and report.max_energy_difference < 1e-6
    assert not reference.forces_progress_path(tiny).exists()
    np.testing.assert_allclose(read_ani_h5(tiny).forces.numpy(), read_ani_h5(whole).forces.numpy(), atol=1e-7)

    with h5py.File(tiny, "a") as f:  # a file whose energies are not what its attributes say
        f["anibook_nms_s01/anibook_nms_s01-0/energies"][0] += 1e-3
    with pytest.raises(reference.GenerationMismatchError, match="level of theory"):
        reference.add_forces(tiny, progress=False)
