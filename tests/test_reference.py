"""Chapter 8: reference labels with PySCF, normal-mode sampling and the generated data set."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from anibook_utils.sampling import (
    NormalModes,
    random_coefficients,
    sample_normal_modes,
    too_close,
)

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "data" / "anibook_nms_s01.h5"

pyscf = pytest.importorskip("pyscf", reason="optional extra: pip install anibook-utils[reference]")

from anibook_utils import reference  # noqa: E402  (after the optional-dependency check)
from anibook_utils.data import HARTREE_TO_KCAL, formula, read_ani_h5  # noqa: E402

AMMONIA = formula(["N", "H", "H", "H"])  # the data layer's name for NH3

CHEAP = reference.LevelOfTheory(method="hf", basis="sto-3g")
"""A level for tests whose point is not accuracy (HF/STO-3G, milliseconds per point)."""


@pytest.fixture(autouse=True, scope="module")
def _one_pyscf_thread():
    """3-5 atoms are too small for threads to pay; on a busy machine they only wait."""
    before = pyscf.lib.num_threads()
    pyscf.lib.num_threads(1)
    yield
    pyscf.lib.num_threads(before)


@pytest.fixture(scope="module")
def water_modes() -> NormalModes:
    symbols, start = reference.STARTING_GEOMETRIES["H2O"]
    return reference.normal_modes(symbols, start, CHEAP)


# ---------------------------------------------------------------- ANI-1 level of theory


@pytest.mark.usefixtures("real_data")
def test_three_ani1_conformations_within_0_05_kcal(real_data):
    """One conformation of each molecule recomputed at ωB97X/6-31G(d), Cartesian d."""
    worst = 0.0
    for mol in range(len(real_data.molecule_names)):
        i = int(np.flatnonzero(real_data.molecule_ids.numpy() == mol)[7])
        energy = reference.single_point(real_data.species[i], real_data.coordinates[i]).energy
        diff = (energy - float(real_data.energies[i])) * HARTREE_TO_KCAL
        worst = max(worst, abs(diff))
    assert worst < 0.05, f"largest difference {worst:.4f} kcal/mol"


@pytest.mark.usefixtures("real_data")
def test_spherical_d_shells_miss_the_published_energy(real_data):
    """The pitfall the chapter shows: 5d shells are several tenths of a kcal/mol off."""
    i = int(np.flatnonzero(real_data.molecule_ids.numpy() == 2)[0])  # water: cheapest
    spherical = reference.LevelOfTheory(cart=False)
    energy = reference.single_point(real_data.species[i], real_data.coordinates[i], spherical)
    diff = (energy.energy - float(real_data.energies[i])) * HARTREE_TO_KCAL
    assert abs(diff) > 0.2


def test_forces_are_minus_the_energy_gradient():
    symbols, xyz = reference.STARTING_GEOMETRIES["H2O"]
    xyz = np.array(xyz, dtype=float)
    point = reference.single_point(symbols, xyz, CHEAP, forces=True)
    assert point.forces.shape == (3, 3)
    step = 1e-4
    shifted = xyz.copy()
    shifted[1, 1] += step
    plus = reference.single_point(symbols, shifted, CHEAP).energy
    shifted[1, 1] -= 2 * step
    minus = reference.single_point(symbols, shifted, CHEAP).energy
    assert point.forces[1, 1] == pytest.approx(-(plus - minus) / (2 * step), abs=1e-5)


def test_index_species_and_padding_are_accepted():
    symbols, xyz = reference.STARTING_GEOMETRIES["H2O"]
    padded = np.vstack([xyz, [[0.0, 0.0, 0.0]]])
    by_index = reference.single_point([3, 0, 0, -1], padded, CHEAP).energy
    by_symbol = reference.single_point(symbols, xyz, CHEAP).energy
    assert by_index == pytest.approx(by_symbol, abs=1e-9)


def test_bad_coordinates_say_what_shape_is_expected():
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        reference.single_point(["O", "H", "H"], np.zeros((2, 3)), CHEAP)


def test_missing_pyscf_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyscf(name, *args, **kwargs):
        if name == "pyscf" or name.startswith("pyscf."):
            raise ImportError("No module named 'pyscf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyscf)
    with pytest.raises(reference.PySCFMissingError,
                       match=r"pip install anibook-utils\[reference\]"):
        reference.require_pyscf()


# ---------------------------------------------------------------- normal-mode sampling


def test_normal_modes_of_water(water_modes):
    assert water_modes.num_modes == 3  # 3N - 6
    norms = np.linalg.norm(water_modes.modes.reshape(3, -1), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-12)
    assert (water_modes.force_constants > 0).all()
    assert (water_modes.frequencies > 1000).all()  # bend ~2000, stretches ~4000 cm-1 at HF/STO-3G
    # the optimised geometry is a minimum: tiny forces
    forces = reference.single_point(water_modes.species, water_modes.equilibrium, CHEAP,
                                     forces=True).forces
    assert np.abs(forces).max() < 1e-4


def test_sampling_is_deterministic_and_physical(water_modes):
    first = sample_normal_modes(water_modes, 200, 2000.0, seed=3)
    again = sample_normal_modes(water_modes, 200, 2000.0, seed=3)
    other = sample_normal_modes(water_modes, 200, 2000.0, seed=4)
    np.testing.assert_array_equal(first.coordinates, again.coordinates)
    assert not np.allclose(first.coordinates, other.coordinates)
    assert first.coordinates.shape == (200, 3, 3)
    assert not any(too_close(water_modes.species, x) for x in first.coordinates)
    # harmonic energy is uniform on [0, 1.5 N_a k_B T]
    kt = 3.166811563e-6 * 2000.0
    ceiling = 1.5 * 3 * kt
    assert first.harmonic_energies.max() <= ceiling * (1 + 1e-12)
    assert 0.35 * ceiling < first.harmonic_energies.mean() < 0.65 * ceiling
    # the molecule is displaced by the drawn R_i along the modes
    rebuilt = water_modes.equilibrium + np.einsum("nf,fad->nad", first.displacements,
                                                  water_modes.modes)
    np.testing.assert_allclose(rebuilt, first.coordinates, atol=1e-12)


def test_sampling_rejects_and_counts_too_close_atoms(water_modes):
    hot = sample_normal_modes(water_modes, 50, 60000.0, seed=0, min_distance_factor=0.9)
    assert hot.rejected > 0
    assert not any(too_close(water_modes.species, x, 0.9) for x in hot.coordinates)
    with pytest.raises(RuntimeError, match="lower the temperature"):
        sample_normal_modes(water_modes, 5, 300.0, seed=0, min_distance_factor=3.0, max_draws=20)


def test_random_coefficients_sum_to_at_most_one():
    rng = np.random.default_rng(0)
    sums = np.array([random_coefficients(rng, 9).sum() for _ in range(2000)])
    assert (sums <= 1 + 1e-12).all() and (sums >= 0).all()
    assert abs(sums.mean() - 0.5) < 0.03  # uniform on [0, 1]


def test_sampling_needs_a_minimum(water_modes):
    saddle = NormalModes(**{**water_modes.__dict__,
                            "force_constants": -water_modes.force_constants})
    with pytest.raises(ValueError, match="not a minimum"):
        sample_normal_modes(saddle, 1, 300.0)


# ---------------------------------------------------------------- generation


def _files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_generated_file_reads_back_with_provenance(tmp_path):
    out = tmp_path / "tiny.h5"
    report = reference.generate_dataset(out, {"H2O": 4, "NH3": 3}, temperature=1000.0, seed=1,
                                        level=CHEAP, name="tiny", progress=False)
    assert report.conformations == {"H2O": 4, "NH3": 3}
    assert _files(tmp_path) == ["tiny.h5"]  # no sidecar or temporary file left
    data = read_ani_h5(out)
    assert data.counts() == {"H2O": 4, AMMONIA: 3}
    assert data.groups == ["tiny/tiny-0", "tiny/tiny-1"]
    with h5py.File(out, "r") as f:
        assert f["tiny/tiny-0/species"].dtype.kind == "S"
        assert f["tiny/tiny-0/coordinates"].dtype == np.float32
        assert f["tiny/tiny-0/energies"].dtype == np.float64
        stored = f["tiny/tiny-1/energies"][()]
        coords = f["tiny/tiny-1/coordinates"][()]
        attrs = dict(f.attrs)
    assert attrs["method"] == "hf" and attrs["basis"] == "sto-3g" and bool(attrs["cart"])
    assert attrs["temperature_K"] == 1000.0 and attrs["seed"] == 1
    assert "pyscf" in json.loads(attrs["versions"])
    with h5py.File(out, "r") as f:  # the modes it sampled with, for reproducibility
        assert f["tiny/tiny-0"].attrs["normal_modes"].shape == (3, 3, 3)
        assert f["tiny/tiny-1"].attrs["force_constants"].shape == (6,)
    # energies belong to the stored (float32) coordinates
    again = reference.single_point(["N", "H", "H", "H"], coords[2], CHEAP).energy
    assert again == pytest.approx(stored[2], abs=1e-8)
    with pytest.raises(FileExistsError, match="overwrite"):
        reference.generate_dataset(out, {"H2O": 4}, level=CHEAP, progress=False)


def test_interrupted_generation_resumes(tmp_path):
    plan = {"H2O": 5, "NH3": 3}
    seen: list[tuple[str, int]] = []

    def crash_after_six(name: str, index: int, energy: float) -> None:
        seen.append((name, index))
        if len(seen) == 6:
            raise KeyboardInterrupt

    out = tmp_path / "cut.h5"
    with pytest.raises(KeyboardInterrupt):
        reference.generate_dataset(out, plan, 1500.0, seed=2, level=CHEAP, progress=False,
                                   checkpoint_every=100, callback=crash_after_six)
    assert not out.exists() and reference.progress_path(out).is_file()
    with h5py.File(reference.progress_path(out), "r") as f:  # what the interruption saved
        saved = [(f[f"mol-{k}/coordinates"][()], f[f"mol-{k}/energies"][()]) for k in range(2)]
    assert sum(np.isfinite(e).sum() for _, e in saved) == 6
    with pytest.raises(reference.GenerationMismatchError, match="temperature_K"):
        reference.generate_dataset(out, plan, 900.0, seed=2, level=CHEAP, progress=False)

    seen.clear()
    report = reference.generate_dataset(out, plan, 1500.0, seed=2, level=CHEAP, progress=False,
                                        callback=lambda n, i, e: seen.append((n, i)))
    assert report.resumed and report.computed == 2
    assert seen == [("NH3", 1), ("NH3", 2)]
    assert not reference.progress_path(out).exists()
    with h5py.File(out, "r") as f:  # same conformations; the energies done before are kept
        for k, (xyz, energies) in enumerate(saved):
            group = f[f"anibook_nms_s01/anibook_nms_s01-{k}"]
            np.testing.assert_array_equal(group["coordinates"][()], xyz)
            done = np.isfinite(energies)
            np.testing.assert_array_equal(group["energies"][()][done], energies[done])
    resumed = read_ani_h5(out)

    # an uninterrupted run draws the same water conformations (non-degenerate modes; CH4's and
    # NH3's degenerate modes may come out rotated, which is why the generator stores them)
    whole = read_ani_h5(reference.generate_dataset(
        tmp_path / "whole.h5", plan, 1500.0, seed=2, level=CHEAP, progress=False).path)
    water = slice(0, 5)
    np.testing.assert_allclose(whole.coordinates.numpy()[water],
                               resumed.coordinates.numpy()[water], atol=1e-5)
    np.testing.assert_allclose(whole.energies.numpy()[water], resumed.energies.numpy()[water],
                               atol=1e-6)


def test_cli_generate_and_bad_arguments(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    status = reference.reference_cli(["generate", "-o", str(out), "--molecules", "H2O=2",
                                      "--method", "hf", "--basis", "sto-3g", "--quiet"])
    assert status == 0 and read_ani_h5(out).counts() == {"H2O": 2}
    assert "H2O: 2 conformations" in capsys.readouterr().out
    assert reference.reference_cli(["generate", "-o", str(out), "--molecules", "C6H6=2"]) == 2
    assert "known molecules" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reference.reference_cli(["generate", "--molecules", "H2O"])


# ---------------------------------------------------------------- the embedded data set


def test_embedded_dataset_is_valid():
    data = read_ani_h5(EMBEDDED)
    counts = data.counts()
    assert sum(counts.values()) >= 2000
    assert set(counts) == {"CH4", AMMONIA, "H2O"}
    assert counts["CH4"] > counts[AMMONIA] > counts["H2O"]  # ANI-1's proportions
    with h5py.File(EMBEDDED, "r") as f:
        assert f.attrs["method"] == "wb97x" and f.attrs["basis"] == "6-31G(d)"
        assert bool(f.attrs["cart"])
        assert f.attrs["temperature_K"] == reference.DEFAULT_TEMPERATURE
        for group in data.groups:
            assert f[group]["coordinates"].dtype == np.float32
            assert f[group]["energies"].dtype == np.float64
            n_atoms = len(f[group]["species"])
            assert f[group].attrs["normal_modes"].shape == (3 * n_atoms - 6, n_atoms, 3)
