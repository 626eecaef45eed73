"""A trained potential as an ASE calculator: optimisers, vibrations and dynamics (chapter 9).

ASE works in eV and Å. :class:`ANICalculator` wraps an
:class:`~anibook_utils.potential.ANIPotential` (energies in Hartree, forces in Hartree/Å by
autograd through the AEVs) and converts: energy × ``ase.units.Hartree`` eV, forces ×
``ase.units.Hartree`` eV/Å. It computes in float64 by default, which energy conservation in
molecular dynamics needs. Molecules only: periodic cells are refused.

>>> from ase.build import molecule
>>> atoms = molecule("CH4")
>>> atoms.calc = ANICalculator(load_potential("model.pt"))   # doctest: +SKIP
>>> atoms.get_potential_energy(), atoms.get_forces()         # doctest: +SKIP
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Hartree

from .potential import ANIPotential, PotentialInputError

__all__ = ["ANICalculator"]


class ANICalculator(Calculator):
    """ASE calculator for an :class:`ANIPotential` (energy in eV, forces in eV/Å)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, potential: ANIPotential, dtype: torch.dtype = torch.float64,
                 device: str | torch.device | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(potential, ANIPotential):
            raise TypeError(f"ANICalculator needs an ANIPotential (load_potential(...) or result.potential()), "
                            f"got {type(potential).__name__}.")
        self.potential = copy.deepcopy(potential).to(dtype=dtype)
        if device is not None:
            self.potential = self.potential.to(device)
        self.dtype = dtype

    def calculate(self, atoms=None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if np.any(self.atoms.pbc):
            raise PotentialInputError("ANICalculator evaluates molecules in vacuum; set atoms.pbc = False.")
        symbols = self.atoms.get_chemical_symbols()
        positions = torch.as_tensor(self.atoms.get_positions(), dtype=self.dtype)
        energy, forces = self.potential.energies_and_forces(symbols, positions)
        self.results["energy"] = float(energy) * Hartree
        self.results["forces"] = forces.detach().cpu().numpy().astype(np.float64) * Hartree
