"""The in-memory data set: padded tensors of species, coordinates and energies (chapter 1)."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .constants import ELEMENTS
from .errors import DataError, EmptySelectionError


_IUPAC_SEQUENCE = ("B", "Si", "C", "P", "N", "H", "S", "Cl", "O", "F")


def formula(symbols: Sequence[str]) -> str:
    """Chemical formula: Hill order with carbon (``CH4``), IUPAC order without (``NH3``, ``H2O``)."""
    counts = Counter(symbols)
    if "C" in counts:
        order = ["C"] + (["H"] if "H" in counts else []) + sorted(set(counts) - {"C", "H"})
    else:
        rank = {e: i for i, e in enumerate(_IUPAC_SEQUENCE)}
        order = sorted(counts, key=lambda e: (rank.get(e, len(rank)), e))
    return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in order)


@dataclass
class ANIData:
    """Conformations as padded tensors.

    ``species`` (N, A) int64 element indices in :data:`ELEMENTS` order, ``-1`` for padding;
    ``coordinates`` (N, A, 3) float32 in Å (zero at padding); ``energies`` (N,) float64 in
    Hartree; ``molecule_ids`` (N,) int64 indexing ``molecule_names``/``groups``; ``forces``
    (N, A, 3) float32 in Hartree/Å (minus the energy's gradient; zero at padding) when the file
    has them, else None.
    """

    species: torch.Tensor
    coordinates: torch.Tensor
    energies: torch.Tensor
    molecule_ids: torch.Tensor
    molecule_names: list[str]
    groups: list[str]
    source: str = ""
    source_sha256: str = ""
    name: str = ""
    forces: torch.Tensor | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)
    _hashed_versions: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_fields(self)

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    def fingerprint(self) -> str:
        """A short hash of the conformations themselves (species, coordinates, energies, forces) and
        the file they came from: equal for equal data, whatever the object. Caches, checkpoints
        and experiment tables use it to recognise a data set. Computed once per object, and again
        after a tensor was changed in place (e.g. ``data.energies *= 2``)."""
        tensors = tuple(t for t in (self.species, self.coordinates, self.energies, self.forces) if t is not None)
        versions = tuple((id(t), t._version) for t in tensors)
        if self._fingerprint is None or versions != self._hashed_versions:
            digest = hashlib.sha256(self.source_sha256.encode())
            for tensor in tensors:
                digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint, self._hashed_versions = digest.hexdigest()[:24], versions
        return self._fingerprint

    @property
    def num_atoms(self) -> torch.Tensor:
        """Real (non-padding) atoms per conformation."""
        return (self.species >= 0).sum(dim=1)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ANIData":
        """The conformations at ``indices`` (whole numbers, or a boolean mask with one entry per
        conformation), with padding columns no conformation uses trimmed."""
        index = _as_index(indices, len(self))
        if index.numel() == 0:
            raise EmptySelectionError(
                "The selection holds no conformations: pass at least one index "
                f"(the data set has {len(self)})."
            )
        species = self.species[index]
        width = int((species >= 0).sum(dim=1).max())
        return ANIData(
            species=species[:, :width].contiguous(),
            coordinates=self.coordinates[index, :width].contiguous(),
            energies=self.energies[index],
            molecule_ids=self.molecule_ids[index],
            molecule_names=self.molecule_names,
            groups=self.groups,
            source=self.source,
            source_sha256=self.source_sha256,
            name=self.name,
            forces=None if self.forces is None else self.forces[index, :width].contiguous(),
        )

    @property
    def has_forces(self) -> bool:
        return self.forces is not None

    def select_molecules(self, names: Sequence[str]) -> "ANIData":
        """Only the conformations of the named molecules (formulas such as ``'CH4'``)."""
        wanted = [i for i, n in enumerate(self.molecule_names) if n in set(names)]
        mask = torch.isin(self.molecule_ids, torch.tensor(wanted, dtype=torch.long))
        if not bool(mask.any()):
            raise EmptySelectionError(
                f"No conformations of {list(names)} in this data set. Available molecules: "
                f"{sorted(set(self.molecule_names))}."
            )
        return self.subset(mask.nonzero().view(-1))

    def counts(self) -> dict[str, int]:
        """Conformations per molecule, in data set order."""
        tally = torch.bincount(self.molecule_ids, minlength=len(self.molecule_names))
        result: dict[str, int] = {}
        for name, n in zip(self.molecule_names, tally.tolist()):
            if n:
                result[name] = result.get(name, 0) + n
        return result

    def element_counts(self) -> dict[str, int]:
        """Atoms of each element over all conformations."""
        tally = torch.bincount(self.species[self.species >= 0], minlength=len(ELEMENTS))
        return {e: int(n) for e, n in zip(ELEMENTS, tally.tolist())}

    def to(self, device: str | torch.device) -> "ANIData":
        """A copy with the tensors on ``device``."""
        return ANIData(
            self.species.to(device), self.coordinates.to(device), self.energies.to(device),
            self.molecule_ids.to(device), self.molecule_names, self.groups, self.source,
            self.source_sha256, self.name, None if self.forces is None else self.forces.to(device),
        )


def _check_fields(data: ANIData) -> None:
    """Raise :class:`DataError` unless the tensors have the shapes and kinds :class:`ANIData` documents."""
    species, coordinates, energies, ids = data.species, data.coordinates, data.energies, data.molecule_ids
    if not all(isinstance(t, torch.Tensor) for t in (species, coordinates, energies, ids)):
        raise DataError("ANIData needs torch tensors for species, coordinates, energies and molecule_ids; "
                        "read files with load_dataset or read_ani_h5.")
    n = int(species.shape[0]) if species.dim() else -1
    problems = []
    if species.dim() != 2 or species.is_floating_point() or species.dtype == torch.bool:
        problems.append(f"species must be (N, A) integer element indices, got {species.dtype} {tuple(species.shape)}")
    if coordinates.shape != (*species.shape, 3) or not coordinates.is_floating_point():
        problems.append(f"coordinates must be (N, A, 3) floats matching species, got {coordinates.dtype} "
                        f"{tuple(coordinates.shape)}")
    if energies.shape != (n,) or not energies.is_floating_point():
        problems.append(f"energies must be (N,) floats, got {energies.dtype} {tuple(energies.shape)}")
    if ids.shape != (n,) or ids.is_floating_point():
        problems.append(f"molecule_ids must be (N,) integers, got {ids.dtype} {tuple(ids.shape)}")
    forces = data.forces
    if forces is not None and (not isinstance(forces, torch.Tensor) or forces.shape != coordinates.shape
                               or not forces.is_floating_point()):
        problems.append(f"forces must be (N, A, 3) floats like the coordinates, got "
                        f"{getattr(forces, 'dtype', type(forces))} {tuple(getattr(forces, 'shape', ()))}")
    if len(data.molecule_names) != len(data.groups):
        problems.append(f"{len(data.molecule_names)} molecule_names but {len(data.groups)} groups")
    if problems:
        raise DataError("Inconsistent ANIData: " + "; ".join(problems) + ". Build data sets with load_dataset, "
                        "read_ani_h5, subset or split_dataset rather than by hand.")


def _as_index(indices: torch.Tensor | Sequence[int], n: int) -> torch.Tensor:
    """``indices`` as int64 positions in ``0..n-1`` (negative ones count from the end, as in Python);
    a boolean mask of length ``n`` selects its True entries."""
    try:
        index = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"subset needs whole-number indices or a boolean mask, got {indices!r}.") from None
    if index.numel() == 0:
        return index.long().view(-1)
    if index.dtype == torch.bool:
        if index.shape != (n,):
            raise IndexError(f"A boolean mask must have one entry per conformation ({n}), got shape "
                             f"{tuple(index.shape)}.")
        return index.nonzero().view(-1)
    if index.is_floating_point() or index.is_complex():
        raise TypeError(f"subset needs whole-number indices or a boolean mask, got {index.dtype} values; "
                        "convert them with .long() if they are positions.")
    index = index.long().view(-1)
    if index.numel() and (int(index.min()) < -n or int(index.max()) >= n):
        bad = int(index.max()) if int(index.max()) >= n else int(index.min())
        raise IndexError(f"Index {bad} is out of range for a data set of {n} conformations "
                         f"(valid: 0 to {n - 1}).")
    return index
