"""Using a trained potential: minima, vibrations and molecular dynamics with ASE (chapter 9).

Everything goes through :class:`~anibook_utils.calculator.ANICalculator`, so the potential is
used the way any ASE calculator is, in float64:

- :func:`optimize` finds a minimum with ASE's BFGS (or FIRE);
- :func:`geometry` reads its bond lengths and angles;
- :func:`harmonic_frequencies` diagonalises the mass-weighted Hessian (autograd, twice
  through the AEVs) with ``torchani.grad.vibrational_analysis``;
- :func:`run_md` integrates Newton's equations with velocity Verlet (NVE) or samples with a
  Langevin thermostat, recording the energies along the way; :func:`energy_drift` measures how
  well NVE conserves the total energy.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from ase import Atoms, units
from ase.data import atomic_masses, atomic_numbers

from .calculator import ANICalculator
from .potential import ANIPotential
from .torchani_shim import torchani

__all__ = ["Geometry", "Minimum", "Trajectory", "energy_drift", "geometry", "harmonic_frequencies", "optimize",
           "run_md"]

EV_TO_KCAL = units.mol / units.kcal
"""kcal/mol per eV."""


def _atoms(potential: ANIPotential, symbols: Sequence[str], coordinates) -> Atoms:
    atoms = Atoms(list(symbols), positions=np.asarray(coordinates, dtype=np.float64))
    atoms.calc = ANICalculator(potential)
    return atoms


@dataclass
class Minimum:
    """A local minimum found by :func:`optimize`: coordinates (Å), energy (Hartree), the largest
    remaining force component (eV/Å) and the optimiser's step count."""

    symbols: list[str]
    coordinates: np.ndarray
    energy: float
    fmax: float
    steps: int


def optimize(potential: ANIPotential, symbols: Sequence[str], coordinates, fmax: float = 1e-5,
             steps: int = 1000, optimizer: str = "BFGS") -> Minimum:
    """Relax a geometry on ``potential`` with ASE's ``BFGS`` or ``FIRE`` until every force
    component is below ``fmax`` eV/Å (raises if ``steps`` are not enough)."""
    from ase.optimize import BFGS, FIRE

    if optimizer not in ("BFGS", "FIRE"):
        raise ValueError(f"optimizer must be 'BFGS' or 'FIRE', got {optimizer!r}.")
    atoms = _atoms(potential, symbols, coordinates)
    runner = (BFGS if optimizer == "BFGS" else FIRE)(atoms, logfile=None)
    if not runner.run(fmax=fmax, steps=steps):
        raise RuntimeError(f"{optimizer} did not reach fmax={fmax} eV/Å in {steps} steps: raise steps or fmax.")
    largest = float(np.abs(atoms.get_forces()).max())
    return Minimum(list(symbols), atoms.get_positions(), atoms.get_potential_energy() / units.Hartree,
                   largest, runner.get_number_of_steps())


@dataclass
class Geometry:
    """Bond lengths (Å) and angles (degrees) of a molecule, keyed like ``"C-H1"``, ``"H1-C-H2"``."""

    bonds: dict[str, float]
    angles: dict[str, float]


def geometry(symbols: Sequence[str], coordinates, bond_cutoff: float = 1.3) -> Geometry:
    """The bonds (atom pairs closer than ``bond_cutoff`` Å) and the angles between bonds that
    share an atom, with atoms labelled by symbol and position (``H1`` is the first H)."""
    xyz = np.asarray(coordinates, dtype=np.float64)
    seen: dict[str, int] = {}
    labels = []
    for s in symbols:
        seen[s] = seen.get(s, 0) + 1
        labels.append(f"{s}{seen[s]}" if list(symbols).count(s) > 1 else s)
    bonds, neighbours = {}, {i: [] for i in range(len(xyz))}
    for i, j in itertools.combinations(range(len(xyz)), 2):
        distance = float(np.linalg.norm(xyz[i] - xyz[j]))
        if distance < bond_cutoff:
            bonds[f"{labels[i]}-{labels[j]}"] = distance
            neighbours[i].append(j)
            neighbours[j].append(i)
    angles = {}
    for centre, around in neighbours.items():
        for i, j in itertools.combinations(around, 2):
            u, v = xyz[i] - xyz[centre], xyz[j] - xyz[centre]
            cosine = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
            angles[f"{labels[i]}-{labels[centre]}-{labels[j]}"] = float(np.degrees(np.arccos(np.clip(cosine, -1, 1))))
    return Geometry(bonds, angles)


def harmonic_frequencies(potential: ANIPotential, symbols: Sequence[str], coordinates) -> np.ndarray:
    """Harmonic wavenumbers (cm⁻¹) at ``coordinates`` (a minimum), translations and rotations
    dropped: the Hessian of the energy by autograd (float64), mass-weighted and diagonalised
    with ``torchani.grad.vibrational_analysis``."""
    model = copy.deepcopy(potential).to(torch.float64)
    xyz = torch.as_tensor(np.asarray(coordinates), dtype=torch.float64).unsqueeze(0).requires_grad_(True)
    energy = model.energies(list(symbols), xyz[0])
    (gradient,) = torch.autograd.grad(energy, xyz, create_graph=True)
    hessian = torchani.grad.hessians(-gradient, xyz)  # (1, 3A, 3A) Hartree/Å²
    masses = torch.tensor([[atomic_masses[atomic_numbers[s]] for s in symbols]], dtype=torch.float64)
    analysis = torchani.grad.vibrational_analysis(masses, hessian.detach(), mode_kind="mdn", unit="cm^-1")
    wavenumbers = analysis.freqs.detach().numpy()
    linear = len(symbols) == 2
    return np.sort(wavenumbers)[5 if linear else 6:]


@dataclass
class Trajectory:
    """What :func:`run_md` recorded every ``interval`` steps: time (fs), potential, kinetic and
    total energy (kcal/mol; potential relative to the first frame), temperature (K) and positions (Å)."""

    time_fs: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    total: np.ndarray
    temperature: np.ndarray
    positions: np.ndarray


def run_md(potential: ANIPotential, symbols: Sequence[str], coordinates, temperature: float, steps: int,
           timestep_fs: float = 0.5, thermostat: str | None = None, friction_per_fs: float = 0.01,
           interval: int = 10, seed: int = 0) -> Trajectory:
    """Molecular dynamics with ASE: velocities drawn at ``temperature`` K (no net momentum or
    rotation), then velocity Verlet (``thermostat=None``, NVE) or Langevin (``"langevin"``)."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet

    atoms = _atoms(potential, symbols, coordinates)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    if thermostat is None:
        dynamics = VelocityVerlet(atoms, timestep_fs * units.fs)
    elif thermostat == "langevin":
        dynamics = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature,
                            friction=friction_per_fs / units.fs, rng=rng)
    else:
        raise ValueError(f"thermostat must be None (NVE) or 'langevin', got {thermostat!r}.")
    frames: list[tuple] = []

    def record() -> None:
        frames.append((atoms.get_potential_energy(), atoms.get_kinetic_energy(), atoms.get_temperature(),
                       atoms.get_positions().copy()))

    record()
    dynamics.attach(record, interval=interval)
    dynamics.run(steps)
    e_pot = np.array([f[0] for f in frames]) * EV_TO_KCAL
    e_kin = np.array([f[1] for f in frames]) * EV_TO_KCAL
    e_pot -= e_pot[0]
    return Trajectory(np.arange(len(frames)) * interval * timestep_fs, e_pot, e_kin, e_pot + e_kin,
                      np.array([f[2] for f in frames]), np.array([f[3] for f in frames]))


def energy_drift(trajectory: Trajectory) -> tuple[float, float]:
    """The total energy's drift (kcal/mol per ps, from a straight-line fit) and its largest
    deviation from the start (kcal/mol): how well NVE dynamics conserve energy."""
    slope = np.polyfit(trajectory.time_fs / 1000.0, trajectory.total, 1)[0]
    return float(slope), float(np.abs(trajectory.total - trajectory.total[0]).max())

