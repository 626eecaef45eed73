"""Throughput as molecules grow: methane conformations replicated 1, 2 and 4 times (5, 10, 20 atoms).

Copies sit 20 Å apart, beyond every cutoff, so each copy keeps its own environment and the
per-atom work is the same; what changes is how the cost of a conformation grows with its atoms.
"""

from __future__ import annotations

import torch

from anibook_utils.data import ANIData
from anibook_utils.models import ArchitectureSpec

from .throughput import LOOPS, conformations_per_second

SPACING = 20.0  # Å between copies: far beyond both cutoffs (5.2 and 3.5 Å)


def replicate(data: ANIData, copies: int) -> ANIData:
    """Each conformation as ``copies`` far-apart copies of itself (energies scaled to match)."""
    width = data.species.shape[1]
    shifts = torch.arange(copies, dtype=torch.float32).repeat_interleave(width) * SPACING
    coordinates = data.coordinates.repeat(1, copies, 1).clone()
    coordinates[..., 0] += shifts
    return ANIData(
        species=data.species.repeat(1, copies), coordinates=coordinates,
        energies=data.energies * copies, molecule_ids=data.molecule_ids,
        molecule_names=[f"{copies}x{name}" for name in data.molecule_names], groups=data.groups,
        source=f"{data.source} (x{copies} copies)", source_sha256=f"{data.source_sha256}-x{copies}",
    )


def size_scaling(data: ANIData, copies: tuple[int, ...] = (1, 2, 4), batch_size: int = 256,
                 loops: tuple[str, ...] = ("engine", "torchani"), min_seconds: float = 2.0,
                 limit: int = 2048) -> list[dict]:
    """Conformations and atoms per second for methane replicated ``copies`` times."""
    methane = data.select_molecules(["CH4"])
    methane = methane.subset(torch.arange(min(limit, len(methane))))
    spec = ArchitectureSpec.course()
    rows = []
    for k in copies:
        big = replicate(methane, k)
        atoms = int(big.num_atoms[0])
        for name in loops:
            epoch, _ = LOOPS[name](big, spec)
            rate = conformations_per_second(epoch, len(big), batch_size, min_seconds)
            rows.append({"atoms": atoms, "loop": name, **rate,
                         "atoms_per_s": rate["conformations_per_s"] * atoms})
    return rows
