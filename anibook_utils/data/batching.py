"""Mini-batches with padding trimmed per batch (chapter 1)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterator

import torch

from .dataset import ANIData


@dataclass
class Batch:
    """One mini-batch: the same fields as :class:`ANIData`, padded only to its widest molecule."""

    species: torch.Tensor
    coordinates: torch.Tensor
    energies: torch.Tensor
    molecule_ids: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.energies.shape[0])


def iterate_batches(
    data: ANIData,
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield :class:`Batch` objects covering ``data`` once.

    With ``shuffle=True`` the order comes from ``generator`` (or a new one seeded with
    ``seed``), so the same seed gives the same batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number (e.g. 256), got {batch_size!r}.")
    n = len(data)
    if shuffle:
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(0 if seed is None else seed)
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    atoms = data.num_atoms  # real atoms per conformation, computed once
    batch_size = int(batch_size)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        if drop_last and len(index) < batch_size:
            break
        width = int(atoms[index].max())
        yield Batch(
            species=data.species[index, :width],
            coordinates=data.coordinates[index, :width],
            energies=data.energies[index],
            molecule_ids=data.molecule_ids[index],
            indices=index,
        )
