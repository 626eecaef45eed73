"""Atomic environment vectors (AEVs): the course's constants and a from-scratch version (chapter 3).

An AEV describes the neighbourhood of one atom by a fixed-length vector that does not
change when the molecule is rotated, translated or its atoms renumbered: ANI's version of
the Behler-Parrinello symmetry functions. This module holds

- :data:`COURSE_AEV_CONSTANTS`, the one place every chapter takes its AEV constants from,
  and :func:`aev_computer`, torchani's ``AEVComputer`` built from them (or from other constants);
- a readable, vectorised from-scratch implementation (:func:`cosine_cutoff`,
  :func:`radial_terms`, :func:`angular_terms`, :func:`compute_aevs`) that reproduces
  torchani 2.9 to float32 precision, including its conventions (the 0.25 factor of the
  radial terms, ``2**(1 - zeta)`` and ``acos(0.95 cos θ)`` in the angular terms);
- :func:`precompute_aevs`, torchani's AEVs of a whole data set, cached on disk.

Feature layout (same as torchani): the radial part comes first, one block of
``len(ShfR)`` terms per neighbour element (H, C, N, O); then the angular part, one block of
``len(ShfA) * len(ShfZ)`` terms per unordered pair of neighbour elements (HH, HC, HN, HO,
CC, ...), shifts outer and angle sections inner.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .cache import cache_key, cached_arrays
from .data import ELEMENTS, ANIData
from .torchani_shim import AEVComputer

__all__ = [
    "AEV_LENGTH", "COURSE_AEV_CONSTANTS", "aev_computer", "aev_length", "angular_terms", "compute_aevs",
    "cosine_cutoff", "feature_blocks", "precompute_aevs",
    "radial_terms", "species_pair_index",
]

COURSE_AEV_CONSTANTS: dict = {
    # Radial (2-body) terms: 16 Gaussians 0.26875 Å apart, cut off smoothly at 5.2 Å.
    "Rcr": 5.2,
    "EtaR": 16.0,
    "ShfR": [0.9 + k * (5.2 - 0.9) / 16 for k in range(16)],  # 0.9 ... 4.93125 Å
    # Angular (3-body) terms: 4 distance shifts x 8 angle sections, cut off at 3.5 Å.
    "Rca": 3.5,
    "EtaA": 8.0,
    "Zeta": 32.0,
    "ShfA": [0.9, 1.55, 2.2, 2.85],
    "ShfZ": [math.pi / 16 + k * math.pi / 8 for k in range(8)],  # π/16 ... 15π/16
    "num_species": len(ELEMENTS),  # H, C, N, O
}
"""The AEV constants of the course (those of ANI-1x), used by every chapter."""

_REQUIRED = ("Rcr", "Rca", "EtaR", "ShfR", "EtaA", "Zeta", "ShfA", "ShfZ", "num_species")


def _check_constants(constants: Mapping) -> None:
    missing = [k for k in _REQUIRED if k not in constants]
    if missing:
        raise KeyError(
            f"AEV constants lack {missing}; start from a copy of COURSE_AEV_CONSTANTS, e.g. "
            "dict(COURSE_AEV_CONSTANTS, EtaR=20.0)."
        )
    if constants["Rca"] > constants["Rcr"]:
        raise ValueError(
            f"The angular cutoff Rca={constants['Rca']} exceeds the radial cutoff "
            f"Rcr={constants['Rcr']}; ANI requires Rca <= Rcr."
        )


def aev_length(constants: Mapping = COURSE_AEV_CONSTANTS) -> int:
    """Features per atom: ``S * len(ShfR) + S(S+1)/2 * len(ShfA) * len(ShfZ)`` for S species."""
    _check_constants(constants)
    s = int(constants["num_species"])
    radial = s * len(constants["ShfR"])
    angular = s * (s + 1) // 2 * len(constants["ShfA"]) * len(constants["ShfZ"])
    return radial + angular


AEV_LENGTH = aev_length()
"""384 for the course's constants: 4 x 16 radial + 10 x 4 x 8 angular."""


def aev_computer(constants: Mapping = COURSE_AEV_CONSTANTS, device: str | torch.device | None = None) -> AEVComputer:
    """torchani's ``AEVComputer.from_constants`` for constants in the form of
    :data:`COURSE_AEV_CONSTANTS` (the course's by default), optionally moved to ``device``."""
    _check_constants(constants)
    computer = AEVComputer.from_constants(
        radial_cutoff=float(constants["Rcr"]),
        angular_cutoff=float(constants["Rca"]),
        radial_eta=float(constants["EtaR"]),
        radial_shifts=list(constants["ShfR"]),
        angular_eta=float(constants["EtaA"]),
        angular_zeta=float(constants["Zeta"]),
        angular_shifts=list(constants["ShfA"]),
        sections=list(constants["ShfZ"]),
        num_species=int(constants["num_species"]),
    )
    return computer.to(device) if device is not None else computer


# --- The pieces of an AEV, readable and broadcastable ---------------------------------


def cosine_cutoff(distances: Tensor, cutoff: float) -> Tensor:
    r"""ANI's cutoff :math:`f_C(R) = \tfrac12 \cos(\pi R / R_C) + \tfrac12` for :math:`R \le R_C`.

    It falls smoothly from 1 at R = 0 to 0 (with zero slope) at the cutoff radius, and
    stays 0 beyond it.
    """
    inside = 0.5 * torch.cos(distances * (math.pi / cutoff)) + 0.5
    return torch.where(distances <= cutoff, inside, torch.zeros_like(inside))


def radial_terms(
    distances: Tensor, eta: float, shifts: Tensor | Sequence[float], cutoff: float
) -> Tensor:
    r"""Radial terms :math:`\tfrac14 e^{-\eta (R - R_s)^2} f_C(R)`, one per shift (last axis).

    ``distances`` of any shape ``(...)`` give ``(..., len(shifts))``. The 1/4 is
    torchani's (and NeuroChem's) convention; the ANI paper omits it.
    """
    shifts = torch.as_tensor(shifts, dtype=distances.dtype, device=distances.device)
    d = distances.unsqueeze(-1)
    return 0.25 * torch.exp(-eta * (d - shifts) ** 2) * cosine_cutoff(d, cutoff)


def angular_terms(
    distances_ij: Tensor,
    distances_ik: Tensor,
    cos_angles: Tensor,
    eta: float,
    zeta: float,
    shifts: Tensor | Sequence[float],
    sections: Tensor | Sequence[float],
    cutoff: float,
) -> Tensor:
    r"""Angular terms of a triple (centre i, neighbours j and k), one per (shift, section).

    .. math::
        2^{1-\zeta} (1 + \cos(\theta_{ijk} - \theta_s))^\zeta
        \exp\left[-\eta \left(\tfrac{R_{ij} + R_{ik}}{2} - R_s\right)^2\right]
        f_C(R_{ij}) f_C(R_{ik})

    Inputs broadcast to a common shape ``(...)``; the output is ``(..., len(shifts) *
    len(sections))`` with shifts outer and sections inner, as in torchani. As in torchani,
    the angle is ``acos(0.95 * cos_angles)``: the 0.95 keeps the argument inside (-1, 1)
    despite rounding, so ``acos`` and its gradient stay finite, even for collinear atoms.
    """
    dtype, device = distances_ij.dtype, distances_ij.device
    shifts = torch.as_tensor(shifts, dtype=dtype, device=device)
    sections = torch.as_tensor(sections, dtype=dtype, device=device)
    mean_distance = ((distances_ij + distances_ik) / 2).unsqueeze(-1)
    radial = torch.exp(-eta * (mean_distance - shifts) ** 2)  # (..., shifts)
    theta = torch.acos(0.95 * cos_angles).unsqueeze(-1)
    angular = 2 * ((1 + torch.cos(theta - sections)) / 2) ** zeta  # (..., sections)
    terms = radial.unsqueeze(-1) * angular.unsqueeze(-2)  # (..., shifts, sections)
    cutoffs = cosine_cutoff(distances_ij, cutoff) * cosine_cutoff(distances_ik, cutoff)
    return terms.flatten(-2) * cutoffs.unsqueeze(-1)


def species_pair_index(num_species: int) -> Tensor:
    """``(S, S)`` symmetric table: index of the unordered element pair (HH=0, HC=1, ... OO=9)."""
    first, second = torch.triu_indices(num_species, num_species)
    table = torch.zeros(num_species, num_species, dtype=torch.long)
    table[first, second] = torch.arange(first.numel())
    table[second, first] = torch.arange(first.numel())
    return table


def feature_blocks(constants: Mapping = COURSE_AEV_CONSTANTS) -> list[tuple[str, int, int]]:
    """``(label, start, stop)`` of each block of the AEV: ``'R:H'`` ... then ``'A:HH'`` ..."""
    _check_constants(constants)
    s = int(constants["num_species"])
    names = list(ELEMENTS) if s == len(ELEMENTS) else [str(i) for i in range(s)]
    n_rad = len(constants["ShfR"])
    n_ang = len(constants["ShfA"]) * len(constants["ShfZ"])
    blocks, start = [], 0
    for name in names:
        blocks.append((f"R:{name}", start, start + n_rad))
        start += n_rad
    first, second = torch.triu_indices(s, s).tolist()
    for a, b in zip(first, second):
        blocks.append((f"A:{names[a]}{names[b]}", start, start + n_ang))
        start += n_ang
    return blocks


def compute_aevs(
    species: Tensor, coordinates: Tensor, constants: Mapping = COURSE_AEV_CONSTANTS
) -> Tensor:
    """From-scratch AEVs of a padded batch: ``(N, A)`` species, ``(N, A, 3)`` Å -> ``(N, A, L)``.

    Every pair and triple of atoms in a conformation is evaluated at once by broadcasting
    (cheap for the small molecules of this book; memory grows as A³). Padding atoms
    (species -1) neither contribute nor receive features: their rows are zero. The
    result is differentiable with respect to ``coordinates`` (no NaN gradients at padding).
    """
    _check_inputs(species, coordinates, constants)
    c = constants
    num_species = int(c["num_species"])
    species = species.long()
    n_mol, n_atoms = species.shape
    device, dtype = coordinates.device, coordinates.dtype
    real = species >= 0  # (N, A)

    # Vectors r_j - r_i and distances for every ordered pair (i, j), i != j, both real.
    vectors = coordinates.unsqueeze(1) - coordinates.unsqueeze(2)  # (N, i, j, 3)
    not_self = ~torch.eye(n_atoms, dtype=torch.bool, device=device)
    pairs = real.unsqueeze(2) & real.unsqueeze(1) & not_self  # (N, i, j)
    squared = (vectors**2).sum(-1)
    # sqrt(0) has an infinite gradient: give masked pairs a harmless distance instead.
    distances = torch.sqrt(torch.where(pairs, squared, torch.ones_like(squared)))

    # Radial AEV: sum the terms of the neighbours j of each element separately.
    radial_pairs = pairs & (distances <= c["Rcr"])
    terms = radial_terms(distances, c["EtaR"], c["ShfR"], c["Rcr"])  # (N, i, j, R)
    terms = terms * radial_pairs.unsqueeze(-1)
    one_hot = torch.nn.functional.one_hot(species.clamp(min=0), num_species)
    one_hot = (one_hot * real.unsqueeze(-1)).to(dtype)  # (N, j, S), zero for padding
    radial_aev = torch.einsum("nijr,njs->nisr", terms, one_hot)
    radial_aev = radial_aev.reshape(n_mol, n_atoms, num_species * len(c["ShfR"]))

    # Angular AEV: every unordered pair of neighbours {j, k} (j < k) of centre i.
    angular_pairs = pairs & (distances <= c["Rca"])  # (N, i, j)
    upper = torch.ones(n_atoms, n_atoms, dtype=torch.bool, device=device).triu(1)  # j < k
    triples = angular_pairs.unsqueeze(3) & angular_pairs.unsqueeze(2) & upper  # (N, i, j, k)
    d_ij, d_ik = distances.unsqueeze(3), distances.unsqueeze(2)
    cos_angles = torch.einsum("nijx,nikx->nijk", vectors, vectors) / (d_ij * d_ik)
    cos_angles = torch.where(triples, cos_angles, torch.zeros_like(cos_angles))
    terms = angular_terms(
        d_ij, d_ik, cos_angles, c["EtaA"], c["Zeta"], c["ShfA"], c["ShfZ"], c["Rca"]
    )  # (N, i, j, k, F)
    terms = terms * triples.unsqueeze(-1)
    pair_table = species_pair_index(num_species).to(device)
    elements = species.clamp(min=0)
    element_pair = pair_table[elements.unsqueeze(2), elements.unsqueeze(1)]  # (N, j, k)
    pair_one_hot = torch.nn.functional.one_hot(element_pair, num_species * (num_species + 1) // 2)
    pair_one_hot = pair_one_hot.to(dtype)  # (N, j, k, P); padded j/k never reach a triple
    angular_aev = torch.einsum("nijkf,njkp->nipf", terms, pair_one_hot)
    angular_aev = angular_aev.reshape(n_mol, n_atoms, pair_one_hot.shape[-1] * terms.shape[-1])

    return torch.cat([radial_aev, angular_aev], dim=-1)


# --- torchani's AEVs of a whole data set, cached ----------------------------------------


def precompute_aevs(
    data: ANIData,
    batch_size: int = 2048,
    computer: AEVComputer | None = None,
    progress: bool = False,
) -> Tensor:
    """torchani AEVs of every conformation of ``data``, ``(N, A, L)`` float32 on the CPU.

    Computed in batches without gradients and cached on disk, keyed by the data's
    :meth:`~anibook_utils.data.ANIData.fingerprint` and the computer's constants: reusable only
    while the coordinates stay fixed (energy-only training, evaluation), never for forces.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    computer = computer if computer is not None else aev_computer()
    species = data.species.cpu().contiguous()
    coordinates = data.coordinates.cpu().to(torch.float32).contiguous()
    key = cache_key(data.fingerprint(), _computer_fingerprint(computer))

    def build() -> dict[str, np.ndarray]:
        device = next(computer.buffers()).device
        starts = range(0, len(species), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="AEVs", unit="batch")
        chunks = []
        with torch.no_grad():
            for start in starts:
                stop = start + batch_size
                aevs = computer(species[start:stop].to(device), coordinates[start:stop].to(device))
                chunks.append(aevs.to("cpu", torch.float32).numpy())
        return {"aevs": np.concatenate(chunks)}

    def check(arrays: dict[str, np.ndarray]) -> None:
        if arrays["aevs"].shape != (*species.shape, computer.out_dim):
            raise ValueError(f"cached AEVs have shape {arrays['aevs'].shape}, expected "
                             f"{(*species.shape, computer.out_dim)}")

    return torch.from_numpy(cached_arrays("aev", key, build, check)["aevs"])


# --- checks --------------------------------------------------------------------------


def _computer_fingerprint(computer: torch.nn.Module) -> str:
    """Hash of what determines a computer's output: its class, cutoffs and constants."""
    digest = hashlib.sha256(type(computer).__name__.encode())
    for part in ("radial", "angular"):
        term = getattr(computer, part, None)
        if term is not None:
            digest.update(f"{part}:{type(term).__name__}:{getattr(term, 'cutoff', None)}".encode())
            digest.update(type(getattr(term, "cutoff_fn", None)).__name__.encode())
    for name, tensor in sorted(computer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_inputs(species: Tensor, coordinates: Tensor, constants: Mapping) -> None:
    _check_constants(constants)
    if species.dim() != 2 or coordinates.dim() != 3 or coordinates.shape[-1] != 3:
        raise ValueError(
            "Expected species of shape (conformations, atoms) and coordinates of shape "
            f"(conformations, atoms, 3); got {tuple(species.shape)} and "
            f"{tuple(coordinates.shape)}. For one molecule add a batch axis: x.unsqueeze(0)."
        )
    if species.shape != coordinates.shape[:2]:
        raise ValueError(
            f"species {tuple(species.shape)} and coordinates {tuple(coordinates.shape)} "
            "disagree on the number of conformations or atoms."
        )
    if species.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(
            f"species must hold integer element indices (H=0, C=1, N=2, O=3, -1 padding), "
            f"got dtype {species.dtype}."
        )
    if not coordinates.is_floating_point():
        raise TypeError(f"coordinates must be floating point (Å), got dtype {coordinates.dtype}.")
    if species.numel():
        low, high = int(species.min()), int(species.max())
        if low < -1 or high >= int(constants["num_species"]):
            raise ValueError(
                f"species indices must lie in -1..{int(constants['num_species']) - 1} "
                f"(-1 = padding), found {low}..{high}. Map elements with "
                "anibook_utils.data.ELEMENTS."
            )
