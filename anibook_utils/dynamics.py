"""Using a trained potential: minima, vibrations and molecular dynamics with ASE (chapter 9).

Everything goes through :class:`~anibook_utils.calculator.ANICalculator`, so the potential is
used the way any ASE calculator is, in float64:

- :func:`optimize` finds a minimum with ASE's BFGS (or FIRE);
- :func:`geometry` reads its bond lengths and angles;
- :func:`harmonic_frequencies` diagonalises the mass-weighted Hessian (autograd, twice
  through the AEVs) with ``torchani.grad.vibrational_analysis``;
- :func:`md_system` puts several molecules, each with its own potential, into one ASE ``Atoms``
  whose calculator evaluates them together but independently (one call per step for all);
- :func:`run_md` integrates Newton's equations with velocity Verlet (NVE) or samples with a
  Langevin thermostat, recording each molecule's energies along the way; :func:`energy_drift`
  measures how well NVE conserves each one's total energy.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ase import Atoms, units
from ase.data import atomic_masses, atomic_numbers

from .calculator import ANICalculator
from .data import HARTREE_TO_KCAL
from .potential import ANIPotential
from .torchani_shim import torchani

__all__ = ["Drift", "Geometry", "MDSystem", "Minimum", "Trajectory", "energy_drift", "geometry",
           "harmonic_frequencies", "md_system", "optimize", "run_md"]


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


def _labels(symbols: Sequence[str]) -> list[str]:
    """``H1``, ``H2``, ... for repeated elements, the bare symbol for unique ones."""
    seen: dict[str, int] = {}
    labels = []
    for s in symbols:
        seen[s] = seen.get(s, 0) + 1
        labels.append(f"{s}{seen[s]}" if list(symbols).count(s) > 1 else s)
    return labels


def geometry(symbols: Sequence[str], coordinates, bond_cutoff: float = 1.3) -> Geometry:
    """The bonds (atom pairs closer than ``bond_cutoff`` Å) and the angles between bonds that
    share an atom, with atoms labelled by symbol and position (``H1`` is the first H)."""
    xyz = np.asarray(coordinates, dtype=np.float64)
    labels = _labels(symbols)
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
    """Harmonic wavenumbers (cm⁻¹, ascending; an imaginary one is negative) at ``coordinates``
    (a minimum): the Hessian of the energy by autograd (float64), mass-weighted and diagonalised
    with ``torchani.grad.vibrational_analysis``. The 6 modes closest to zero (5 for a linear
    molecule), translations and rotations, are dropped."""
    model = copy.deepcopy(potential).to(torch.float64)
    xyz = torch.as_tensor(np.asarray(coordinates), dtype=torch.float64).unsqueeze(0).requires_grad_(True)
    energy = model.energies(list(symbols), xyz[0])
    (gradient,) = torch.autograd.grad(energy, xyz, create_graph=True)
    hessian = torchani.grad.hessians(-gradient, xyz)  # (1, 3A, 3A) Hartree/Å²
    masses = torch.tensor([[atomic_masses[atomic_numbers[s]] for s in symbols]], dtype=torch.float64)
    analysis = torchani.grad.vibrational_analysis(masses, hessian.detach(), mode_kind="mdn", unit="cm^-1")
    wavenumbers = analysis.freqs.detach().numpy()
    external = 5 if _is_linear(np.asarray(coordinates, dtype=np.float64)) else 6
    keep = np.argsort(np.abs(wavenumbers))[external:]
    return np.sort(wavenumbers[keep])


def _is_linear(xyz: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether the atoms lie on one line (2 atoms always do)."""
    centred = xyz - xyz.mean(axis=0)
    return len(xyz) <= 2 or np.linalg.svd(centred, compute_uv=False)[1] < tolerance


# --------------------------------------------------------------------------------------
# Molecular dynamics


@dataclass
class MDSystem:
    """Independent molecules in one ASE ``Atoms``: fragment ``k`` (atoms ``fragments[k]``) is
    molecule ``labels[k]``, evaluated by its own potential; none feels another."""

    atoms: Atoms
    labels: list[str]
    fragments: list[list[int]]

    def symbols(self, label: str) -> list[str]:
        """The element symbols of molecule ``label``."""
        symbols = self.atoms.get_chemical_symbols()
        return [symbols[i] for i in self.fragments[self.labels.index(label)]]


def md_system(molecules: Mapping[str, tuple[ANIPotential, Sequence[str], Any]], spacing: float = 10.0) -> MDSystem:
    """Put molecules ``{label: (potential, symbols, coordinates Å)}`` into one ``Atoms`` whose
    :class:`~anibook_utils.calculator.ANICalculator` evaluates each with its potential in one call
    per step. They are placed ``spacing`` Å apart along x for viewing; they would not interact
    even if they overlapped (each is its own fragment)."""
    if not molecules:
        raise ValueError("md_system needs at least one molecule: {label: (potential, symbols, coordinates)}.")
    symbols, positions, fragments, potentials = [], [], [], []
    for k, (potential, names, xyz) in enumerate(molecules.values()):
        xyz = np.asarray(xyz, dtype=np.float64)
        if xyz.shape != (len(names), 3):
            raise ValueError(f"Molecule {list(molecules)[k]!r}: {len(names)} symbols need coordinates of shape "
                             f"({len(names)}, 3), got {xyz.shape}.")
        fragments.append(list(range(len(symbols), len(symbols) + len(names))))
        symbols += list(names)
        positions.append(xyz - xyz.mean(axis=0) + [k * spacing, 0.0, 0.0])
        potentials.append(potential)
    atoms = Atoms(symbols, positions=np.concatenate(positions))
    atoms.calc = ANICalculator(potentials, fragments=fragments)
    return MDSystem(atoms, list(molecules), fragments)


@dataclass
class Trajectory:
    """What :func:`run_md` recorded every ``interval`` steps, per molecule (last axis ``F`` follows
    ``labels``): time (fs), potential and kinetic energy (Hartree), kinetic temperature
    ``2 K / (3 N k_B)`` (K) and all positions ``(T, atoms, 3)`` (Å)."""

    labels: list[str]
    fragments: list[list[int]]
    time_fs: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    temperature: np.ndarray
    positions: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """Potential + kinetic energy (Hartree), ``(T, F)``."""
        return self.potential + self.kinetic

    def coordinates(self, label: str) -> np.ndarray:
        """The frames of molecule ``label``, ``(T, atoms, 3)`` in Å."""
        return self.positions[:, self.fragments[self.labels.index(label)]]


def _draw_velocities(system: MDSystem, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann velocities at ``temperature`` K for each molecule (each momentum
    component normal with variance ``m k_B T``), its net momentum and rotation removed (so each
    molecule vibrates in place)."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    masses = system.atoms.get_masses()
    momenta = rng.standard_normal((len(masses), 3)) * np.sqrt(masses * units.kB * temperature)[:, None]
    for part in system.fragments:
        molecule = system.atoms[part]
        molecule.set_momenta(momenta[part])
        Stationary(molecule)
        ZeroRotation(molecule)
        momenta[part] = molecule.get_momenta()
    system.atoms.set_momenta(momenta)


def _integrator(atoms: Atoms, timestep_fs: float, thermostat: str | None, temperature: float,
                friction_per_fs: float, rng: np.random.Generator):
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    if thermostat is None:
        return VelocityVerlet(atoms, timestep_fs * units.fs)
    if thermostat == "langevin":  # fixcm=False: molecules drift freely (their energies do not depend on it)
        return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature,
                        friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    raise ValueError(f"thermostat must be None (NVE, velocity Verlet) or 'langevin', got {thermostat!r}.")


def run_md(system: MDSystem, temperature: float, steps: int, timestep_fs: float = 0.5,
           thermostat: str | None = None, friction_per_fs: float = 0.01, interval: int = 10,
           seed: int = 0, velocities: str = "draw") -> Trajectory:
    """Molecular dynamics of every molecule of ``system`` with ASE, in float64.

    ``velocities="draw"`` starts from Maxwell-Boltzmann velocities at ``temperature`` K (each
    molecule's net momentum and rotation removed); ``"keep"`` continues from the velocities the
    atoms have (e.g. after an equilibration run). ``thermostat=None`` integrates with velocity
    Verlet (NVE: the total energy should stay constant); ``"langevin"`` samples at
    ``temperature`` with friction ``friction_per_fs`` (1/fs). Energies and positions are
    recorded every ``interval`` steps, and at the start.
    """
    if velocities not in ("draw", "keep"):
        raise ValueError(f"velocities must be 'draw' or 'keep', got {velocities!r}.")
    if steps < 1 or interval < 1:
        raise ValueError(f"steps and interval must be positive integers, got {steps} and {interval}.")
    atoms, rng = system.atoms, np.random.default_rng(seed)
    if velocities == "draw":
        _draw_velocities(system, temperature, rng)
    dynamics = _integrator(atoms, timestep_fs, thermostat, temperature, friction_per_fs, rng)
    masses = atoms.get_masses()
    frames: list[tuple] = []

    def record() -> None:
        energies = atoms.calc.fragment_energies(atoms) / units.Hartree
        kinetic = 0.5 * np.sum(atoms.get_momenta() ** 2 / masses[:, None], axis=1)  # eV per atom
        per_molecule = np.array([kinetic[part].sum() for part in system.fragments]) / units.Hartree
        frames.append((energies, per_molecule, atoms.get_positions().copy()))

    dynamics.attach(record, interval=interval)
    dynamics.run(steps)
    potential, kinetic = (np.array([f[k] for f in frames]) for k in (0, 1))
    atoms_per_molecule = np.array([len(part) for part in system.fragments])
    temperature_k = 2 * kinetic * units.Hartree / (3 * atoms_per_molecule * units.kB)
    return Trajectory(list(system.labels), [list(p) for p in system.fragments],
                      np.arange(len(frames)) * interval * timestep_fs, potential, kinetic, temperature_k,
                      np.array([f[2] for f in frames]))


@dataclass
class Drift:
    """How well one molecule's total energy was conserved (kcal/mol): the slope of a straight
    line fitted to it (per ps), that slope over the whole run, and its largest deviation from
    the start."""

    per_ps: float
    over_run: float
    max_deviation: float


def energy_drift(trajectory: Trajectory) -> dict[str, Drift]:
    """Per molecule, the drift and largest deviation of the total energy (kcal/mol)."""
    time_ps = trajectory.time_fs / 1000.0
    result = {}
    for k, label in enumerate(trajectory.labels):
        total = trajectory.total[:, k] * HARTREE_TO_KCAL
        slope = float(np.polyfit(time_ps, total, 1)[0])
        result[label] = Drift(slope, slope * float(time_ps[-1] - time_ps[0]), float(np.abs(total - total[0]).max()))
    return result
