"""Per-element self energies: fit, subtract and add back (chapter 2).

A molecule's total energy is dominated by a sum of per-atom constants, its *self energies*.
Subtracting them leaves the small, conformation-dependent part a network can learn.

>>> fit = fit_self_energies(train)                        # least squares on the composition
>>> shifted = shift_energies(train, self_energies=fit)     # E - sum of self energies (Hartree)
>>> energies = unshift_energies(train, shifted, self_energies=fit)   # and back
>>> sae = fit.to_torchani()                               # a torchani.sae.SelfEnergy module

The fit solves ``composition_matrix(species) @ values ≈ energies`` by linear least squares.
When the molecules do not tell the elements apart (on ``ani_gdb_s01`` CH4, NH3 and H2O give
rank 3 for four elements), :func:`fit_self_energies` reports the rank and the null space and
warns with :class:`RankDeficientFitWarning`; it then returns the minimum-norm solution (or,
with ``reference=``, the solution closest to given values), never an arbitrary one.

Everywhere, self energies may be given as a :class:`SelfEnergyFit`, a
``torchani.sae.SelfEnergy`` module, a mapping ``{"H": ..., "C": ...}`` or a sequence of
values in :data:`~anibook_utils.data.ELEMENTS` order (H, C, N, O), all in Hartree.
Arithmetic is float64. Note that ``torchani.sae.SelfEnergy(...)`` and ``.with_gsaes(...)``
store float32 values (off by a few micro-Hartree near -75) unless converted; pass a mapping
such as ``torchani.constants.GSAES["wb97x-631gd"]`` for the exact numbers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from .data import ELEMENTS, ANIData, EmptySelectionError
from .torchani_shim import SelfEnergy

__all__ = [
    "RankDeficientFitWarning", "SelfEnergyFit", "SelfEnergyLike", "composition_matrix",
    "fit_self_energies", "self_energy_sums", "self_energy_values", "shift_energies",
    "unshift_energies",
]

SelfEnergyLike = Union["SelfEnergyFit", SelfEnergy, Mapping[str, float], Sequence[float],
                       np.ndarray, torch.Tensor]
"""Anything the functions here accept as self energies (Hartree)."""

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


class RankDeficientFitWarning(UserWarning):
    """The data cannot separate the self energies of some elements (the fit is not unique)."""


def _species_array(data_or_species: ANIData | ArrayLike) -> np.ndarray:
    species = data_or_species.species if isinstance(data_or_species, ANIData) else data_or_species
    if isinstance(species, torch.Tensor):
        species = species.detach().cpu().numpy()
    species = np.asarray(species)
    if species.ndim == 1:
        species = species[None, :]
    if species.ndim != 2 or not np.issubdtype(species.dtype, np.integer):
        raise ValueError(
            f"species must be integer element indices of shape (conformations, atoms), got "
            f"dtype {species.dtype} and shape {species.shape}. Convert symbols with "
            f"ELEMENTS.index(symbol) ({', '.join(ELEMENTS)} = 0..{len(ELEMENTS) - 1}, -1 = padding)."
        )
    bad = (species < -1) | (species >= len(ELEMENTS))
    if bad.any():
        raise ValueError(
            f"species holds index {int(species[bad][0])}, outside -1..{len(ELEMENTS) - 1}: "
            f"indices refer to ELEMENTS = {ELEMENTS} and -1 marks padding. Atomic numbers "
            "(6 for C) must be converted first, e.g. with torchani.nn.SpeciesConverter."
        )
    return species


def composition_matrix(data_or_species: ANIData | ArrayLike) -> np.ndarray:
    """Atoms of each element per conformation: a float64 ``(conformations, len(ELEMENTS))`` array.

    ``data_or_species`` is an :class:`ANIData` or species indices (``-1`` = padding).
    """
    species = _species_array(data_or_species)
    counts = np.stack([(species == i).sum(axis=1) for i in range(len(ELEMENTS))], axis=1)
    return counts.astype(np.float64)


def self_energy_values(self_energies: SelfEnergyLike) -> np.ndarray:
    """Self energies as a float64 array in ELEMENTS order (NaN where a value is unknown)."""
    if isinstance(self_energies, SelfEnergyFit):
        return self_energies.values.copy()
    if isinstance(self_energies, SelfEnergy):
        given = dict(zip(self_energies.symbols, self_energies.self_energies.tolist()))
        return np.array([given.get(e, math.nan) for e in ELEMENTS], dtype=np.float64)
    if isinstance(self_energies, Mapping):  # other elements (e.g. GSAES's F, S, Cl) are ignored
        return np.array([float(self_energies.get(e, math.nan)) for e in ELEMENTS])
    if isinstance(self_energies, torch.Tensor):
        self_energies = self_energies.detach().cpu().numpy()
    values = np.asarray(self_energies, dtype=np.float64)
    if values.shape != (len(ELEMENTS),):
        raise ValueError(
            f"Expected {len(ELEMENTS)} self energies in the order {ELEMENTS}, got shape "
            f"{values.shape}. Pass a dict such as {{'H': -0.5, ...}} to give only some elements."
        )
    return values


def _energies_array(data_or_species: ANIData | ArrayLike, energies: ArrayLike | None, n: int):
    """The energies as float64 numpy, and whether the caller passed a torch tensor."""
    if energies is None:
        if not isinstance(data_or_species, ANIData):
            raise ValueError("Pass the energies, or an ANIData (whose energies are used).")
        energies = data_or_species.energies
    as_torch = isinstance(energies, torch.Tensor)
    values = energies.detach().cpu().numpy() if as_torch else np.asarray(energies)
    values = values.astype(np.float64)
    if values.shape != (n,):
        raise ValueError(
            f"energies has shape {values.shape}, but the species describe {n} conformations: "
            "give one energy per conformation."
        )
    return values, as_torch


def self_energy_sums(data_or_species: ANIData | ArrayLike,
                     self_energies: SelfEnergyLike) -> np.ndarray:
    """The sum of the atoms' self energies for each conformation (float64, Hartree).

    Raises ``ValueError`` if a conformation contains an element with no (NaN) self energy,
    e.g. one absent from the data a fit saw.
    """
    composition = composition_matrix(data_or_species)
    values = self_energy_values(self_energies)
    missing = [e for i, e in enumerate(ELEMENTS) if np.isnan(values[i]) and composition[:, i].any()]
    if missing:
        raise ValueError(
            f"No self energy for {', '.join(missing)}: the fit never saw that element (its value "
            "is NaN). Fit on data that contains it, or give its value, e.g. the ground-state "
            "atomic energy from torchani.constants.GSAES."
        )
    return composition @ np.nan_to_num(values)


def _like(values: np.ndarray, as_torch: bool):
    return torch.from_numpy(values) if as_torch else values


def shift_energies(data_or_species: ANIData | ArrayLike, energies: ArrayLike | None = None, *,
                   self_energies: SelfEnergyLike):
    """Energies minus the self energies of the atoms: ``E - composition @ values`` (Hartree).

    With an :class:`ANIData` and no ``energies``, its own energies are shifted. Returns
    float64, as a torch tensor when ``energies`` (or the data's energies) is one.
    """
    species = _species_array(data_or_species)
    values, as_torch = _energies_array(data_or_species, energies, species.shape[0])
    return _like(values - self_energy_sums(species, self_energies), as_torch)


def unshift_energies(data_or_species: ANIData | ArrayLike, shifted: ArrayLike, *,
                     self_energies: SelfEnergyLike):
    """Undo :func:`shift_energies`: add the atoms' self energies back (Hartree, float64)."""
    species = _species_array(data_or_species)
    values, as_torch = _energies_array(data_or_species, shifted, species.shape[0])
    return _like(values + self_energy_sums(species, self_energies), as_torch)


@dataclass(frozen=True)
class SelfEnergyFit:
    """The result of :func:`fit_self_energies`.

    ``values``: (len(ELEMENTS),) Hartree, NaN for elements absent from the data;
    ``present``: which elements the data contains; ``rank``: rank of the composition
    matrix over the present elements; ``null_space``: (k, len(ELEMENTS)) orthonormal rows
    (zero for absent elements): adding any combination of them to ``values`` changes no
    fitted energy; ``residual_rms``: RMS of energies minus fitted sums (Hartree).
    """

    values: np.ndarray
    present: np.ndarray
    rank: int
    null_space: np.ndarray
    residual_rms: float
    num_conformations: int
    method: str
    elements: tuple[str, ...] = ELEMENTS

    @property
    def is_unique(self) -> bool:
        """True when the data determines every present element's self energy."""
        return self.null_space.shape[0] == 0

    def as_tensor(self, missing: float = 0.0) -> torch.Tensor:
        """The values as a float64 tensor in ELEMENTS order, ``missing`` for absent elements
        (what the training engine and :class:`~anibook_utils.potential.ANIPotential` take)."""
        return torch.from_numpy(np.where(self.present, self.values, missing).astype(np.float64))

    def as_dict(self) -> dict[str, float]:
        """``{symbol: value}`` in Hartree (NaN for absent elements)."""
        return {e: float(v) for e, v in zip(self.elements, self.values)}

    def to_torchani(self, missing: float | None = None) -> SelfEnergy:
        """A float64 ``torchani.sae.SelfEnergy`` for the book's elements.

        Absent elements keep NaN (so a molecule containing one gets a NaN energy rather than
        a silently wrong one) unless ``missing`` gives a value to use instead.
        """
        values = self.values if missing is None else np.where(self.present, self.values, missing)
        module = SelfEnergy(self.elements, [float(v) for v in values]).double()
        # SelfEnergy stores its values in float32 first; put back the exact float64 ones
        module.self_energies.copy_(torch.from_numpy(np.asarray(values, dtype=np.float64)))
        return module

    def __str__(self) -> str:
        lines = [f"{'element':<8}{'self energy / Ha':>18}"]
        for e, v, p in zip(self.elements, self.values, self.present):
            lines.append(f"{e:<8}{v:>18.6f}" if p else f"{e:<8}{'absent':>18}")
        lines.append(f"rank {self.rank} for {int(self.present.sum())} elements ({self.method})")
        return "\n".join(lines)


def _normalise_signs(rows: np.ndarray) -> np.ndarray:
    """Make the first clearly non-zero entry of each row positive (a deterministic sign)."""
    rows = rows.copy()
    for row in rows:
        first = np.flatnonzero(np.abs(row) > 1e-12)
        if first.size and row[first[0]] < 0:
            row *= -1
    return rows


def fit_self_energies(data_or_species: ANIData | ArrayLike, energies: ArrayLike | None = None, *,
                      reference: SelfEnergyLike | None = None, warn: bool = True,
                      weights: ArrayLike | None = None) -> SelfEnergyFit:
    """Fit per-element self energies by linear least squares on the composition matrix.

    Solves ``min ||composition_matrix(species) @ values - energies||`` in float64 with
    ``numpy.linalg.lstsq`` (SVD, default cutoff). Elements absent from the data are left
    out of the fit and get NaN. If the composition matrix has lower rank than the number of
    present elements, the solution is not unique; the rank and an orthonormal basis of the
    null space are returned and a :class:`RankDeficientFitWarning` is issued (unless
    ``warn=False``). Which solution is returned then is fixed:

    - by default the **minimum-norm** least-squares solution (no null-space component);
    - with ``reference`` (e.g. ground-state atomic energies) the solution **closest to
      the reference** (Euclidean distance), i.e. the reference's null-space component kept.

    ``weights`` (one per row) make it a weighted fit: a row of weight ``n`` holding the mean
    energy of ``n`` conformations of one composition gives the same fit as those ``n`` rows
    (how data streamed from disk is fitted, chapter 10, :mod:`anibook_utils.streaming`).
    """
    species = _species_array(data_or_species)
    targets, _ = _energies_array(data_or_species, energies, species.shape[0])
    if targets.size == 0:
        raise EmptySelectionError("No conformations to fit self energies to: pass a non-empty data set.")
    if not np.isfinite(targets).all():
        raise ValueError("The energies contain NaN or infinity; remove those conformations first.")
    composition = composition_matrix(species)
    present = composition.any(axis=0)
    root = np.ones(len(targets)) if weights is None else np.sqrt(np.asarray(weights, dtype=np.float64))
    if root.shape != targets.shape or not np.isfinite(root).all():
        raise ValueError(f"weights must be {len(targets)} finite non-negative numbers, one per row.")
    a = composition[:, present] * root[:, None]
    targets = targets * root
    anchor = np.zeros(int(present.sum()))
    if reference is not None:
        ref = self_energy_values(reference)[present]
        if np.isnan(ref).any():
            raise ValueError("reference lacks a value for an element present in the data.")
        anchor = ref
    solution, _, rank, _ = np.linalg.lstsq(a, targets - a @ anchor, rcond=None)
    solution = solution + anchor
    _, _, vt = np.linalg.svd(a, full_matrices=a.shape[0] < a.shape[1])
    null = _normalise_signs(vt[int(rank):])
    values = np.full(len(ELEMENTS), np.nan)
    values[present] = solution
    null_space = np.zeros((null.shape[0], len(ELEMENTS)))
    null_space[:, present] = null
    residual = targets - a @ solution
    total = float(np.sum(root**2))
    method = "minimum-norm" if reference is None else "closest-to-reference"
    fit = SelfEnergyFit(
        values=values, present=present, rank=int(rank), null_space=null_space,
        residual_rms=float(np.sqrt(np.sum(residual**2) / total)), num_conformations=int(round(total)),
        method=method if null.shape[0] else "unique",
    )
    if warn and not fit.is_unique:
        direction = ", ".join(f"{v:+.3f} {e}" for e, v, p in zip(ELEMENTS, null_space[0], present) if p)
        warnings.warn(RankDeficientFitWarning(
            f"The composition matrix has rank {fit.rank} for {int(present.sum())} elements: "
            f"the data cannot split the energy uniquely among the elements. Adding any multiple "
            f"of ({direction}) Hartree to the self energies leaves every fitted energy unchanged. "
            f"Returning the {method} solution"
            + ("; pass reference=... (e.g. ground-state atomic energies) to choose another"
               if reference is None else "")
            + ", or fit on molecules that tell the elements apart."
        ), stacklevel=2)
    return fit
