"""A trained model as a potential: energies and forces for new coordinates (chapter 4).

:class:`ANIPotential` chains the AEV computer, a :class:`~anibook_utils.models.MaskedANIModel`
and the per-element self energies, so it maps species and coordinates (Å) to total
energies in Hartree and, by automatic differentiation through the AEV computer, forces in
Hartree/Å. :func:`save_potential` writes it (architecture, weights, self energies, AEV
constants) to one file; :func:`load_potential` rebuilds it, also from a training
checkpoint (``best.pt`` / ``latest.pt``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .aev import COURSE_AEV_CONSTANTS, aev_computer, aev_length
from .checkpoints import CHECKPOINT_FORMAT, CheckpointError, atomic_save, check_keys, load_file
from .data import ATOMIC_NUMBERS, ELEMENTS, PADDING
from .models import ArchitectureSpec, MaskedANIModel, build_model

__all__ = ["POTENTIAL_FORMAT", "ANIPotential", "PotentialInputError", "load_potential", "save_potential",
           "species_tensor"]

POTENTIAL_FORMAT = "anibook-potential"


class PotentialInputError(ValueError):
    """Species or coordinates a potential cannot evaluate (the message says what to pass)."""


_WANTED = "element symbols such as ['O', 'H', 'H'] or integer indices (H=0, C=1, N=2, O=3, -1 padding)"


def species_tensor(species: Tensor | Sequence[str] | Sequence[int]) -> Tensor:
    """Element indices as an int64 tensor; symbols such as ``["O", "H", "H"]`` are converted.

    Indices must lie in -1..3 (H=0, C=1, N=2, O=3, -1 padding); atomic numbers, floats, a mix
    of symbols and numbers and unknown symbols raise :class:`PotentialInputError` saying what to
    pass instead.
    """
    if isinstance(species, Tensor):
        return _checked_indices(species)
    try:
        items = list(species)
    except TypeError:
        raise PotentialInputError(f"species must be {_WANTED}, got {species!r}.") from None
    if items and isinstance(items[0], (list, tuple, Tensor, np.ndarray)):
        rows = [species_tensor(row) for row in items]
        if len({row.shape for row in rows}) > 1:
            raise PotentialInputError("The molecules' species rows have different lengths: pad the shorter "
                                      "ones with -1 (and their coordinates with zeros) to one length.")
        return torch.stack(rows)
    if items and all(isinstance(s, str) for s in items):
        unknown = [s for s in items if s not in ELEMENTS]
        if unknown:
            raise PotentialInputError(f"Unknown element symbol(s) {unknown}: the potential knows {ELEMENTS}.")
        return torch.tensor([ELEMENTS.index(s) for s in items], dtype=torch.long)
    if not items:
        return torch.zeros(0, dtype=torch.long)
    if any(isinstance(s, (str, bytes)) for s in items):
        raise PotentialInputError(f"species mixes symbols and numbers ({items!r}): pass all symbols or all indices.")
    try:
        indices = torch.as_tensor(np.asarray(items))
    except (TypeError, ValueError, RuntimeError):
        raise PotentialInputError(f"species must be {_WANTED}, got {items!r}.") from None
    return _checked_indices(indices)


def _checked_indices(species: Tensor) -> Tensor:
    if species.is_floating_point() or species.is_complex() or species.dtype == torch.bool:
        raise PotentialInputError(f"species must hold integer element indices (H=0, C=1, N=2, O=3, -1 padding), "
                                  f"got dtype {species.dtype}.")
    indices = species.long()
    bad = (indices < PADDING) | (indices >= len(ELEMENTS))
    if bool(bad.any()):
        found = sorted(set(indices[bad].tolist()))
        numbers = {z: e for e, z in ATOMIC_NUMBERS.items()}
        hint = (f" They look like atomic numbers ({', '.join(f'{z} = {numbers[z]}' for z in found if z in numbers)}):"
                " convert them, or pass symbols." if set(found) <= set(numbers) else "")
        raise PotentialInputError(
            f"species indices must lie in -1..{len(ELEMENTS) - 1} (H=0, C=1, N=2, O=3, -1 padding); found "
            f"{found}.{hint}")
    return indices


class ANIPotential(torch.nn.Module):
    """Species + coordinates (Å) → total energy (Hartree) and forces (Hartree/Å).

    ``energies`` = model(AEVs) + the sum of the atoms' self energies, returned in float64
    (the self energies are kept in float64 because they are large: about -38 Hartree per
    carbon). ``species`` are element indices (``-1`` padding) or symbols; a single molecule
    may be given without the batch axis.
    """

    def __init__(self, model: MaskedANIModel, self_energies: Sequence[float] | Tensor,
                 aev_constants: Mapping[str, Any] = COURSE_AEV_CONSTANTS) -> None:
        super().__init__()
        values = [float(v) for v in torch.as_tensor(self_energies, dtype=torch.float64).view(-1).tolist()]
        if len(values) != len(ELEMENTS):
            raise ValueError(f"Need one self energy per element {ELEMENTS}, got {len(values)}.")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"The self energies must be finite numbers (Hartree), got {values}: refit them "
                             "with fit_self_energies(train_set).")
        if aev_length(aev_constants) != model.aev_dim:
            raise ValueError(
                f"The AEV constants give {aev_length(aev_constants)} features but the model expects "
                f"{model.aev_dim}: pass the constants the model was trained with."
            )
        self.aev_constants = dict(aev_constants)
        self.self_energies = tuple(values)
        self.aev_computer = aev_computer(aev_constants, device=next(model.parameters()).device)
        self.model = model
        self.eval()

    def _inputs(self, species, coordinates) -> tuple[Tensor, Tensor, bool]:
        param = next(self.model.parameters())
        species = species_tensor(species).to(param.device)
        try:
            coordinates = torch.as_tensor(np.asarray(coordinates) if not isinstance(coordinates, Tensor) else coordinates)
        except (TypeError, ValueError, RuntimeError):
            raise PotentialInputError(f"coordinates must be numbers in Å, shape (N, A, 3) or (A, 3); got "
                                      f"{type(coordinates).__name__}.") from None
        if not (coordinates.is_floating_point() or coordinates.dtype in (torch.int32, torch.int64)):
            raise PotentialInputError(f"coordinates must be numbers in Å, got dtype {coordinates.dtype}.")
        coordinates = coordinates.to(param.device, param.dtype)
        single = species.dim() == 1
        if single:
            species, coordinates = species.unsqueeze(0), coordinates.unsqueeze(0)
        if species.dim() != 2 or coordinates.shape != (*species.shape, 3):
            raise PotentialInputError(
                f"Expected species (N, A) and coordinates (N, A, 3) (or (A,) and (A, 3) for one "
                f"molecule); got {tuple(species.shape)} and {tuple(coordinates.shape)}."
            )
        if species.shape[0] == 0:
            raise PotentialInputError("No conformations were given (species has shape (0, A)): pass at least one.")
        finite = torch.isfinite(coordinates).reshape(coordinates.shape[0], -1).all(dim=1)
        if not bool(finite.all()):
            raise PotentialInputError(
                f"The coordinates of conformation {int((~finite).nonzero()[0])} hold NaN or infinity: "
                "the potential can only evaluate finite positions (Å).")
        if bool(((species >= 0).sum(dim=1) == 0).any()):
            raise PotentialInputError("A conformation has no atoms (all species are -1 padding).")
        return species, coordinates, single

    def _energies(self, species: Tensor, coordinates: Tensor) -> Tensor:
        aevs = self.aev_computer(species, coordinates)
        learned = self.model(species, aevs).to(torch.float64)
        table = torch.tensor((*self.self_energies, 0.0), dtype=torch.float64, device=species.device)
        shifts = table[species].sum(dim=1)  # index -1 reads the trailing 0.0 (padding)
        return learned + shifts

    def energies(self, species, coordinates) -> Tensor:
        """Total energies in Hartree, float64, shape ``(N,)`` (a 0-d tensor for one molecule)."""
        species, coordinates, single = self._inputs(species, coordinates)
        energies = self._energies(species, coordinates)
        return energies[0] if single else energies

    forward = energies

    def energies_and_forces(self, species, coordinates) -> tuple[Tensor, Tensor]:
        """Energies (Hartree) and forces ``-dE/dx`` (Hartree/Å, the coordinates' shape)."""
        species, coordinates, single = self._inputs(species, coordinates)
        coordinates = coordinates.detach().requires_grad_(True)
        with torch.enable_grad():
            energies = self._energies(species, coordinates)
            (gradient,) = torch.autograd.grad(energies.sum(), coordinates)
        forces = -gradient
        if single:
            return energies[0].detach(), forces[0]
        return energies.detach(), forces

    def forces(self, species, coordinates) -> Tensor:
        """Forces ``-dE/dx`` in Hartree/Å by autograd through the AEV computer."""
        return self.energies_and_forces(species, coordinates)[1]


def save_potential(path: str | os.PathLike, source: Any, self_energies: Sequence[float] | Tensor | None = None,
                   aev_constants: Mapping[str, Any] | None = None,
                   metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a potential to ``path`` (atomically).

    ``source`` is an :class:`ANIPotential`, a training result (anything with ``.potential()``,
    e.g. :class:`~anibook_utils.training.TrainResult`) or a :class:`MaskedANIModel` together
    with ``self_energies`` (and ``aev_constants`` if not the course's).
    """
    if isinstance(source, ANIPotential):
        potential = source
    elif hasattr(source, "potential"):
        potential = source.potential()
    elif isinstance(source, MaskedANIModel):
        if self_energies is None:
            raise ValueError("Saving a bare model needs its self_energies (Hartree, one per element).")
        potential = ANIPotential(source, self_energies, aev_constants or COURSE_AEV_CONSTANTS)
    else:
        raise TypeError(f"Cannot save a potential from {type(source).__name__}.")
    payload = {
        "format": POTENTIAL_FORMAT,
        "version": 1,
        "spec": potential.model.spec.to_dict(),
        "aev_dim": potential.model.aev_dim,
        "model": {k: v.detach().to("cpu") for k, v in potential.model.state_dict().items()},
        "self_energies": list(potential.self_energies),
        "aev_constants": potential.aev_constants,
        "metadata": dict(metadata or {}),
    }
    return atomic_save(payload, path)


def load_potential(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ANIPotential:
    """The :class:`ANIPotential` saved by :func:`save_potential`, or the best model of a checkpoint."""
    payload = load_file(path, kind=(POTENTIAL_FORMAT, CHECKPOINT_FORMAT), map_location=map_location)
    check_keys(payload, ("spec", "aev_dim", "model", "self_energies", "aev_constants"), path)
    if payload["spec"] is None:
        raise CheckpointError(f"{Path(path).name} holds a model without an ArchitectureSpec (a custom module): "
                              "only MaskedANIModel checkpoints become potentials.")
    state = payload["model"] if payload["format"] == POTENTIAL_FORMAT else (
        payload["best"]["model"] if payload.get("best") else payload["model"])
    try:
        model = build_model(ArchitectureSpec.from_dict(payload["spec"]), aev_dim=int(payload["aev_dim"]))
        model.load_state_dict(state)
        potential = ANIPotential(model, payload["self_energies"], payload["aev_constants"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # weights, spec or constants that disagree
        raise CheckpointError(
            f"{Path(path).name} does not describe a usable potential ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200]}); it was edited or damaged. Load another file, or train "
            "again.") from None
    return potential.to(map_location)
