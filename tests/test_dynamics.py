"""Chapter 9: minima, vibrations and molecular dynamics on a trained potential, through ASE."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from ase import units

from anibook_utils import dynamics
from anibook_utils.calculator import ANICalculator
from anibook_utils.data import load_dataset
from anibook_utils.models import ArchitectureSpec
from anibook_utils.reference import EMBEDDED_DATASET
from anibook_utils.training import TrainConfig, train

SMALL = ArchitectureSpec({e: (32, 16) for e in "HCNO"})


@pytest.fixture(scope="module")
def minima() -> dict[str, tuple[list[str], np.ndarray]]:
    """The DFT minima the bundled data set records (symbols, coordinates in Å)."""
    with h5py.File(EMBEDDED_DATASET, "r") as f:
        groups = [g for g in f[f.attrs["dataset"]].values()]
        return {g.attrs["formula"]: ([s.decode() for s in g["species"][()]], g.attrs["equilibrium_coordinates"])
                for g in groups}


@pytest.fixture(scope="module")
def potential():
    """A small model trained briefly on the bundled set: a smooth surface with minima near DFT's."""
    data = load_dataset("anibook_nms_s01")
    config = TrainConfig.fast(epochs=15, device="cpu", num_threads=1)
    return train(SMALL, data, data.subset(range(0, len(data), 10)), config, progress=False).potential()


def test_geometry_reads_bonds_and_angles():
    xyz = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [0.96 * np.cos(np.radians(104.5)),
                                                         0.96 * np.sin(np.radians(104.5)), 0.0]])
    shape = dynamics.geometry(["O", "H", "H"], xyz)
    assert shape.bonds == pytest.approx({"O-H1": 0.96, "O-H2": 0.96})
    assert shape.angles == pytest.approx({"H1-O-H2": 104.5})


def test_optimisation_from_distorted_starts_finds_one_minimum(potential, minima):
    symbols, xyz = minima["CH4"]
    rng = np.random.default_rng(0)
    found = [dynamics.optimize(potential, symbols, xyz + rng.normal(scale=0.08, size=xyz.shape), fmax=1e-4,
                               optimizer=name) for name in ("BFGS", "FIRE")]
    for minimum in found:
        assert minimum.fmax < 1e-4
        assert len(dynamics.geometry(symbols, minimum.coordinates).bonds) == 4
    bonds = [sorted(dynamics.geometry(symbols, m.coordinates).bonds.values()) for m in found]
    assert np.allclose(bonds[0], bonds[1], atol=1e-3)
    assert found[0].energy == pytest.approx(found[1].energy, abs=1e-7)
    with pytest.raises(ValueError, match="BFGS"):
        dynamics.optimize(potential, symbols, xyz, optimizer="LBFGS")


def numerical_frequencies(potential, symbols, xyz, step=1e-4) -> np.ndarray:
    """Harmonic wavenumbers from a finite-difference Hessian of the calculator's forces (ASE units)."""
    from ase import Atoms

    atoms = Atoms(symbols, positions=xyz)
    atoms.calc = ANICalculator(potential)
    hessian = np.zeros((xyz.size, xyz.size))
    for k in range(xyz.size):
        forces = []
        for sign in (1, -1):
            displaced = xyz.copy().reshape(-1)
            displaced[k] += sign * step
            atoms.positions = displaced.reshape(-1, 3)
            forces.append(atoms.get_forces().reshape(-1))
        hessian[k] = -(forces[0] - forces[1]) / (2 * step)  # eV/Å²
    masses = np.repeat(atoms.get_masses(), 3)
    weighted = (hessian + hessian.T) / 2 / np.sqrt(np.outer(masses, masses))
    eigenvalues = np.linalg.eigvalsh(weighted)
    wavenumbers = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues) * units._e / units._amu) * 1e10 / (
        2 * np.pi * units._c * 100)
    return np.sort(wavenumbers[np.argsort(np.abs(wavenumbers))[6:]])


def test_harmonic_frequencies_match_finite_differences(potential, minima):
    symbols, xyz = minima["H2O"]
    minimum = dynamics.optimize(potential, symbols, xyz, fmax=1e-6)
    analytic = dynamics.harmonic_frequencies(potential, symbols, minimum.coordinates)
    assert analytic.shape == (3,)
    assert np.all(analytic > 0)
    assert analytic == pytest.approx(numerical_frequencies(potential, symbols, minimum.coordinates), abs=2.0)


def test_a_saddle_point_shows_an_imaginary_frequency_as_negative(potential, minima):
    symbols, xyz = minima["NH3"]
    minimum = dynamics.optimize(potential, symbols, xyz, fmax=1e-6)
    planar = minimum.coordinates.copy()
    planar[:, 2] = planar[0, 2]  # flatten the umbrella: not a minimum any more
    assert dynamics.harmonic_frequencies(potential, symbols, planar)[0] < 0


@pytest.fixture()
def system(potential, minima):
    return dynamics.md_system({name: (potential, *minima[name]) for name in ("CH4", "H2O")})


def test_nve_conserves_each_molecules_energy(system):
    """Velocity Verlet's energy error is of order dt²: halving the step quarters it."""
    state = system.atoms.copy()
    coarse = dynamics.run_md(system, temperature=300, steps=400, timestep_fs=0.5, interval=20, seed=1)
    assert coarse.time_fs[-1] == pytest.approx(200.0)
    assert coarse.potential.shape == (21, 2)
    assert coarse.coordinates("H2O").shape == (21, 3, 3)
    system.atoms.set_positions(state.positions)
    fine = dynamics.run_md(system, temperature=300, steps=800, timestep_fs=0.25, interval=40, seed=1)
    drift = {"0.5 fs": dynamics.energy_drift(coarse), "0.25 fs": dynamics.energy_drift(fine)}
    assert set(drift["0.5 fs"]) == {"CH4", "H2O"}
    for name in ("CH4", "H2O"):
        assert drift["0.5 fs"][name].max_deviation < 0.05  # kcal/mol
        assert drift["0.25 fs"][name].max_deviation < 0.4 * drift["0.5 fs"][name].max_deviation
    kinetic = coarse.kinetic * 627.509
    assert kinetic.std(axis=0).min() > 0.05  # the molecules vibrate: energy flows between K and V


def test_molecules_in_one_system_do_not_feel_each_other(potential, minima):
    both = dynamics.md_system({name: (potential, *minima[name]) for name in ("CH4", "H2O")}, spacing=0.0)
    alone = dynamics.md_system({"CH4": (potential, *minima["CH4"])}, spacing=0.0)
    momenta = np.random.default_rng(2).normal(scale=0.3, size=(8, 3))
    both.atoms.set_momenta(momenta)
    alone.atoms.set_momenta(momenta[:5])
    a = dynamics.run_md(both, 300, 50, velocities="keep", interval=50)
    b = dynamics.run_md(alone, 300, 50, velocities="keep", interval=50)
    assert np.abs(a.coordinates("CH4") - b.coordinates("CH4")).max() < 1e-12


def test_langevin_holds_the_temperature(system):
    trajectory = dynamics.run_md(system, temperature=500, steps=1500, thermostat="langevin", friction_per_fs=0.1,
                                 interval=10, seed=3)
    mean = trajectory.temperature[len(trajectory.time_fs) // 3:].mean()
    assert 300 < mean < 750  # two small molecules fluctuate a lot; the thermostat holds the mean


def test_energy_drift_fits_a_line():
    time_fs = np.arange(0, 2001, 100.0)
    zeros = np.zeros((len(time_fs), 1))
    total = (0.01 * time_fs / 1000.0)[:, None] / 627.5094740631  # 0.01 kcal/mol per ps, in Hartree
    trajectory = dynamics.Trajectory(["X"], [[0]], time_fs, total, zeros, zeros, np.zeros((len(time_fs), 1, 3)))
    drift = dynamics.energy_drift(trajectory)["X"]
    assert drift.per_ps == pytest.approx(0.01, rel=1e-3)
    assert drift.over_run == pytest.approx(0.02, rel=1e-3)
    assert drift.max_deviation == pytest.approx(0.02, rel=1e-3)


def test_bad_md_settings_say_what_to_pass(system, potential):
    with pytest.raises(ValueError, match="thermostat"):
        dynamics.run_md(system, 300, 10, thermostat="nose-hoover")
    with pytest.raises(ValueError, match="velocities"):
        dynamics.run_md(system, 300, 10, velocities="random")
    with pytest.raises(ValueError, match="coordinates of shape"):
        dynamics.md_system({"H2O": (potential, ["O", "H", "H"], np.zeros((2, 3)))})
    with pytest.raises(ValueError, match="at least one"):
        dynamics.md_system({})
    torch.manual_seed(0)
