"""The in-memory data set: padded tensors of species, coordinates and energies (chapter 1)."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .constants import ELEMENTS
from .errors import EmptySelectionError


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

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    def fingerprint(self) -> str:
        """A short hash of the conformations themselves (species, coordinates, energies, forces) and
        the file they came from: equal for equal data, whatever the object. Caches, checkpoints
        and experiment tables use it to recognise a data set. Computed once per object; the
        tensors are not meant to be changed in place."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.source_sha256.encode())
            for tensor in (self.species, self.coordinates, self.energies, self.forces):
                if tensor is None:
                    continue
                digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:24]
        return self._fingerprint

    @property
    def num_atoms(self) -> torch.Tensor:
        """Real (non-padding) atoms per conformation."""
        return (self.species >= 0).sum(dim=1)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ANIData":
        """The conformations at ``indices``, with padding columns no conformation uses trimmed."""
        index = torch.as_tensor(indices, dtype=torch.long)
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
