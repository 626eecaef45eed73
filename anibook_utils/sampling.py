"""Normal-mode sampling, the way the ANI-1 data set was made (chapter 8).

Smith, Isayev & Roitberg (Sci. Data 4, 170193, 2017) displace an optimised molecule along
its normal modes: for each of the ``F`` modes draw a random ``c_i >= 0`` with
``sum(c_i) <= 1`` and a random sign, and move the atoms by

    R_i = ±sqrt(3 c_i N_a k_B T / K_i)

along the (unit, Cartesian) mode ``q_i`` whose force constant is ``K_i``. In the harmonic
approximation the displaced molecule then holds ``sum(K_i R_i^2 / 2) = 1.5 N_a k_B T sum(c_i)``
of potential energy, uniformly spread between zero and ``1.5 N_a k_B T``.

This module is plain NumPy: the modes themselves come from a quantum-chemistry Hessian
(:func:`anibook_utils.reference.normal_modes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import COVALENT_RADII

BOLTZMANN_HARTREE = 3.166811563e-6
"""Boltzmann's constant in Hartree per kelvin (CODATA 2018)."""


MIN_DISTANCE_FACTOR = 0.6
"""A conformation is rejected when two atoms are closer than this fraction of their radii sum."""


@dataclass
class NormalModes:
    """The harmonic description of a molecule at a minimum.

    ``equilibrium`` (A, 3) Å; ``energy`` Hartree at the minimum; ``modes`` (F, A, 3) unit
    Cartesian displacement vectors; ``force_constants`` (F,) Hartree/Å² along them;
    ``frequencies`` (F,) cm⁻¹.
    """

    species: list[str]
    equilibrium: np.ndarray
    energy: float
    modes: np.ndarray
    force_constants: np.ndarray
    frequencies: np.ndarray

    @property
    def num_modes(self) -> int:
        return int(self.modes.shape[0])


@dataclass
class NormalModeSample:
    """Conformations drawn by :func:`sample_normal_modes`.

    ``coordinates`` (n, A, 3) Å; ``harmonic_energies`` (n,) Hartree above the minimum as the
    harmonic model predicts them; ``displacements`` (n, F) the ``R_i`` in Å; ``rejected`` how
    many draws were thrown away because two atoms came too close.
    """

    coordinates: np.ndarray
    harmonic_energies: np.ndarray
    displacements: np.ndarray
    rejected: int


def too_close(
    species: list[str], coordinates: np.ndarray, factor: float = MIN_DISTANCE_FACTOR
) -> bool:
    """True when any two atoms are closer than ``factor`` times the sum of their covalent radii."""
    unknown = sorted(set(species) - set(COVALENT_RADII))
    if unknown:
        raise ValueError(
            f"No covalent radius for {unknown}; add it to anibook_utils.data.COVALENT_RADII."
        )
    xyz = np.asarray(coordinates, dtype=np.float64)
    radii = np.array([COVALENT_RADII[s] for s in species])
    distances = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    limits = factor * (radii[:, None] + radii[None])
    upper = np.triu_indices(len(species), k=1)
    return bool((distances[upper] < limits[upper]).any())


def random_coefficients(rng: np.random.Generator, num_modes: int) -> np.ndarray:
    """``num_modes`` non-negative coefficients whose sum is itself uniform on [0, 1].

    The gaps between sorted uniform numbers give a uniform point on the simplex; a second
    uniform number scales it, so the total energy is uniform between zero and its maximum.
    """
    cuts = np.sort(rng.random(num_modes - 1))
    shares = np.diff(np.concatenate(([0.0], cuts, [1.0])))
    return shares * rng.random()


def sample_normal_modes(
    modes: NormalModes,
    count: int,
    temperature: float,
    seed: int | np.random.Generator = 0,
    min_distance_factor: float = MIN_DISTANCE_FACTOR,
    max_draws: int | None = None,
) -> NormalModeSample:
    """Draw ``count`` physical conformations by ANI-1 normal-mode sampling at ``temperature`` K.

    Deterministic for a given integer ``seed``. Draws with two atoms closer than
    ``min_distance_factor`` × (sum of covalent radii) are rejected and counted.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (kelvin), got {temperature}.")
    constants = np.asarray(modes.force_constants, dtype=np.float64)
    if (constants <= 0).any():
        raise ValueError(
            f"Force constants must be positive, got {constants.min():.3g} Hartree/Å²: the "
            "geometry is not a minimum. Optimise it first (normal_modes(..., optimize=True))."
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n_atoms = len(modes.species)
    kt = BOLTZMANN_HARTREE * temperature
    max_draws = max_draws if max_draws is not None else 100 * max(count, 1)
    coordinates, energies, displacements = [], [], []
    rejected = 0
    while len(coordinates) < count:
        if len(coordinates) + rejected >= max_draws:
            raise RuntimeError(
                f"Only {len(coordinates)} of {count} conformations after {max_draws} draws "
                f"({rejected} rejected as too close): lower the temperature ({temperature} K)."
            )
        c = random_coefficients(rng, modes.num_modes)
        signs = np.where(rng.random(modes.num_modes) < 0.5, -1.0, 1.0)
        r = signs * np.sqrt(3.0 * c * n_atoms * kt / constants)
        xyz = modes.equilibrium + np.einsum("f,fad->ad", r, modes.modes)
        if too_close(modes.species, xyz, min_distance_factor):
            rejected += 1
            continue
        coordinates.append(xyz)
        energies.append(0.5 * float(np.sum(constants * r**2)))
        displacements.append(r)
    shape = (count, n_atoms, 3)
    return NormalModeSample(
        coordinates=np.array(coordinates).reshape(shape),
        harmonic_energies=np.array(energies, dtype=np.float64),
        displacements=np.array(displacements).reshape(count, modes.num_modes),
        rejected=rejected,
    )
