"""Elements, units and atomic data shared by the whole package (chapter 1).

Species are element indices in :data:`ELEMENTS` order (``-1`` = :data:`PADDING`); energies
are in Hartree inside the package and in kcal/mol in reports (:data:`HARTREE_TO_KCAL`).
"""

from __future__ import annotations

ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O")
"""Element order of the species indices: H=0, C=1, N=2, O=3 (padding is -1)."""

PADDING = -1
"""Species index of a padding atom."""

ATOMIC_NUMBERS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8}
"""Atomic numbers of :data:`ELEMENTS` (files that store species as numbers use these)."""

COVALENT_RADII: dict[str, float] = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66}
"""Single-bond covalent radii in Å (Cordero et al., Dalton Trans. 2008): bonds in drawings,
and the too-close check of normal-mode sampling."""

HARTREE_TO_KCAL = 627.5094738898777
"""kcal/mol per Hartree: the value ``torchani.units.hartree2kcalpermol(1.0)`` uses."""

__all__ = ["ATOMIC_NUMBERS", "COVALENT_RADII", "ELEMENTS", "HARTREE_TO_KCAL", "PADDING"]
