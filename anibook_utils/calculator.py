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

Molecular dynamics calls the calculator once per step, tens of thousands of times, for a few
atoms: the cost of a call is almost all per-operation overhead, not arithmetic. The
calculator therefore lists, once, what depends only on which atoms there are (:class:`_Topology`):
every pair and every triple of atoms of each molecule, the AEV slot each one adds to, and the
atoms of each element. A call then computes the AEV terms of all pairs and triples at once with
chapter 3's functions (:func:`~anibook_utils.aev.radial_terms`,
:func:`~anibook_utils.aev.angular_terms`; pairs beyond the cutoffs add exactly zero, as in
torchani, which leaves them out), with the constants of the potential's own AEV computer, and
sends each element's rows through its network. It computes the potential's function, with a
few times fewer operations than the general batched path (``tests/test_calculator.py`` checks
both agree).

``fragments`` puts several independent molecules, possibly with different potentials, into one
``Atoms``: no pair or triple crosses a fragment, so none feels another, and one call advances
them all. :meth:`ANICalculator.fragment_energies` gives each one's energy.

:func:`torchani_calculator` gives the same potential as TorchANI 2.9's own ASE calculator
(``torchani.ase.Calculator``), assembled into a ``torchani.arch.ANI`` model.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Hartree
from torch import Tensor

from .aev import angular_terms, radial_terms, species_pair_index
from .data import ELEMENTS
from .models import UnsupportedSpeciesError, to_torchani
from .potential import ANIPotential, PotentialInputError
from .torchani_shim import SelfEnergy, torchani

__all__ = ["ANICalculator", "torchani_calculator"]


def _check_potential(potential: Any) -> ANIPotential:
    if not isinstance(potential, ANIPotential):
        raise TypeError(f"ANICalculator needs an ANIPotential (load_potential(...) or result.potential()), "
                        f"got {type(potential).__name__}.")
    computer = potential.aev_computer
    standard = (type(computer.radial).__name__, type(computer.angular).__name__,
                type(computer.radial.cutoff_fn).__name__, type(computer.angular.cutoff_fn).__name__)
    if standard != ("ANIRadial", "ANIAngular", "CutoffCosine", "CutoffCosine"):
        raise PotentialInputError(f"ANICalculator evaluates ANI's standard AEV terms with cosine cutoffs; this "
                                  f"potential's AEV computer has {standard}.")
    return potential


def _fragments(fragments: Sequence[Sequence[int]] | None, num_atoms: int) -> list[list[int]]:
    """The fragments' atom indices, checked: every atom in exactly one fragment."""
    if fragments is None:
        return [list(range(num_atoms))]
    parts = [[int(i) for i in part] for part in fragments]
    flat = sorted(i for part in parts for i in part)
    if any(not part for part in parts) or flat != list(range(num_atoms)):
        raise PotentialInputError(
            f"fragments must split the {num_atoms} atoms into non-empty groups, each atom in exactly one "
            f"(indices 0..{num_atoms - 1}); got {parts}.")
    return parts


class _Topology:
    """What a call needs that depends only on the atoms and their fragments, listed once.

    Ordered pairs ``(i, j)`` of atoms of the same fragment (the radial terms of ``j`` add to row
    ``i``, in the block of ``j``'s element) and triples ``(centre, j, k)`` with ``j < k`` (added
    to the centre's block of the element pair ``{j, k}``), each triple given by its two pairs.
    """

    def __init__(self, fragments: list[list[int]], species: list[int], num_species: int) -> None:
        slot = species_pair_index(num_species).tolist()
        self.num_atoms, self.num_species = len(species), num_species
        self.num_pair_slots = num_species * (num_species + 1) // 2
        pairs: dict[tuple[int, int], int] = {}
        for part in fragments:
            for i, j in itertools.permutations(part, 2):
                pairs[i, j] = len(pairs)
        triples = [(c, j, k) for part in fragments for c in part
                   for j, k in itertools.combinations([a for a in part if a != c], 2)]
        ordered = list(pairs)
        self.first = torch.tensor([i for i, _ in ordered], dtype=torch.long)
        self.second = torch.tensor([j for _, j in ordered], dtype=torch.long)
        self.radial_index = torch.tensor([i * num_species + species[j] for i, j in ordered], dtype=torch.long)
        self.pair_cj = torch.tensor([pairs[c, j] for c, j, _ in triples], dtype=torch.long)
        self.pair_ck = torch.tensor([pairs[c, k] for c, _, k in triples], dtype=torch.long)
        self.angular_index = torch.tensor(
            [c * self.num_pair_slots + slot[species[j]][species[k]] for c, j, k in triples], dtype=torch.long)

    def to(self, device: torch.device) -> "_Topology":
        for name in ("first", "second", "radial_index", "pair_cj", "pair_ck", "angular_index"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def aevs(self, positions: Tensor, computer: torch.nn.Module) -> Tensor:
        """The AEV of every atom ``(N, features)`` with the constants of ``computer`` (torchani's)."""
        radial, angular = computer.radial, computer.angular
        vectors = positions.index_select(0, self.second) - positions.index_select(0, self.first)
        distances = vectors.norm(dim=-1)
        terms = radial_terms(distances, radial.eta, radial.shifts, radial.cutoff)
        radial_aev = positions.new_zeros(self.num_atoms * self.num_species, terms.shape[-1])
        radial_aev = radial_aev.index_add(0, self.radial_index, terms).view(self.num_atoms, -1)
        d_cj, d_ck = distances.index_select(0, self.pair_cj), distances.index_select(0, self.pair_ck)
        cosines = (vectors.index_select(0, self.pair_cj) * vectors.index_select(0, self.pair_ck)).sum(-1) / (d_cj * d_ck)
        terms = angular_terms(d_cj, d_ck, cosines, angular.eta, angular.zeta, angular.shifts, angular.sections,
                              angular.cutoff)
        angular_aev = positions.new_zeros(self.num_atoms * self.num_pair_slots, terms.shape[-1])
        angular_aev = angular_aev.index_add(0, self.angular_index, terms).view(self.num_atoms, -1)
        return torch.cat([radial_aev, angular_aev], dim=-1)


class _Routes:
    """Which rows go to which network: per element of one potential, the atoms (rows) and the
    fragment (0..F-1) each belongs to, and the fragments' self energies."""

    def __init__(self, potential: ANIPotential, fragment_ids: list[int], fragments: list[list[int]],
                 species: list[int], num_fragments: int, device: torch.device) -> None:
        model = potential.model
        present = {ELEMENTS[species[a]] for k in fragment_ids for a in fragments[k]}
        missing = sorted(present - set(model.networks))
        if missing:
            raise UnsupportedSpeciesError(f"The atoms contain {missing} but the potential only has networks for "
                                          f"{tuple(model.networks)}.")
        self.potential = potential
        self.routes = []
        for element, network in model.networks.items():
            e = ELEMENTS.index(element)
            pairs = [(a, k) for k in fragment_ids for a in fragments[k] if species[a] == e]
            if pairs:
                rows = torch.tensor([a for a, _ in pairs], dtype=torch.long, device=device)
                owners = torch.tensor([k for _, k in pairs], dtype=torch.long, device=device)
                self.routes.append((network, rows, owners))
        shifts = [0.0] * num_fragments
        for k in fragment_ids:
            shifts[k] = sum(potential.self_energies[species[a]] for a in fragments[k])
        self.shifts = torch.tensor(shifts, dtype=torch.float64, device=device)

    def energies(self, aevs: Tensor, num_fragments: int) -> Tensor:
        """Energies (Hartree) of this potential's fragments (zero for the others), float64."""
        learned = aevs.new_zeros(num_fragments)
        for network, rows, owners in self.routes:
            learned = learned.index_add(0, owners, network(aevs.index_select(0, rows)).view(-1))
        return (learned * self.potential.model.output_scale).to(torch.float64) + self.shifts


def _aev_key(potential: ANIPotential) -> tuple:
    """Equal for potentials whose AEV computers compute the same AEVs (they can share them)."""
    computer = potential.aev_computer
    values = tuple(tuple(t.flatten().tolist()) for t in computer.buffers())
    return computer.radial.cutoff, computer.angular.cutoff, values


class ANICalculator(Calculator):
    """ASE calculator for an :class:`ANIPotential` (energy in eV, forces in eV/Å).

    ``fragments`` (lists of atom indices covering every atom once) makes the ``Atoms`` a set of
    independent molecules: none feels another, and ``potential`` may then be a list with one
    potential per fragment. :meth:`fragment_energies` gives each fragment's energy (eV).
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, potential: ANIPotential | Sequence[ANIPotential], dtype: torch.dtype = torch.float64,
                 device: str | torch.device | None = None, fragments: Sequence[Sequence[int]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        potentials = list(potential) if isinstance(potential, (list, tuple)) else [potential]
        for p in potentials:
            _check_potential(p)
        if len(potentials) > 1 and (fragments is None or len(potentials) != len(fragments)):
            raise PotentialInputError(
                f"{len(potentials)} potentials need as many fragments (one potential per fragment); got "
                f"{'no fragments' if fragments is None else len(fragments)}.")
        copies: dict[int, ANIPotential] = {}  # one copy per distinct potential, in dtype (float64)
        for p in potentials:
            if id(p) not in copies:  # a private copy: its weights need no gradients
                copies[id(p)] = copy.deepcopy(p).to(dtype=dtype, device=device).requires_grad_(False)
        self._assignment = [copies[id(p)] for p in potentials]
        self._requested_fragments = fragments
        self.dtype = dtype
        self.device = next(self._assignment[0].parameters()).device
        self._plan_for: np.ndarray | None = None

    @property
    def potential(self) -> ANIPotential:
        """The (float64 copy of the) potential; the first one when there are several."""
        return self._assignment[0]

    def _plan(self, atoms) -> None:
        """Topology and routes for these atoms (worked out again only when the elements change)."""
        numbers = atoms.get_atomic_numbers()
        if self._plan_for is not None and np.array_equal(numbers, self._plan_for):
            return
        fragments = _fragments(self._requested_fragments, len(atoms))
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(ELEMENTS))
        if unknown:
            raise UnsupportedSpeciesError(f"The atoms contain {unknown}; ANI potentials here know {ELEMENTS}.")
        species = [ELEMENTS.index(s) for s in atoms.get_chemical_symbols()]
        potentials = self._assignment * len(fragments) if len(self._assignment) == 1 else self._assignment
        owned: dict[int, list[int]] = {}
        for k, p in enumerate(potentials):
            owned.setdefault(id(p), []).append(k)
        self._routes = [_Routes(potentials[ks[0]], ks, fragments, species, len(fragments), self.device)
                        for ks in owned.values()]
        self._topology = _Topology(fragments, species, len(ELEMENTS)).to(self.device)
        self._aev_keys = [_aev_key(route.potential) for route in self._routes]
        self._num_fragments = len(fragments)
        self._plan_for = numbers.copy()

    def _energies(self, positions: Tensor) -> Tensor:
        """Every fragment's energy (Hartree, float64); AEVs shared by potentials that can."""
        energies, aevs = None, {}
        for route, key in zip(self._routes, self._aev_keys):
            if key not in aevs:
                aevs[key] = self._topology.aevs(positions, route.potential.aev_computer)
            part = route.energies(aevs[key], self._num_fragments)
            energies = part if energies is None else energies + part
        return energies

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation; in dynamics only the positions do, which
        this checks without ASE's general (and, per step, comparatively slow) comparison."""
        old = self.atoms
        if (old is None or len(old) != len(atoms) or not np.array_equal(old.numbers, atoms.numbers)
                or not np.array_equal(old.pbc, atoms.pbc) or not np.array_equal(old.cell.array, atoms.cell.array)):
            return super().check_state(atoms, tol)
        return [] if np.array_equal(old.positions, atoms.positions) else ["positions"]

    def calculate(self, atoms=None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        if atoms is not None:
            self.atoms = atoms.copy()
        if np.any(self.atoms.pbc):
            raise PotentialInputError("ANICalculator evaluates molecules in vacuum; set atoms.pbc = False.")
        positions = self.atoms.positions
        if not np.isfinite(positions).all():
            raise PotentialInputError("The positions hold NaN or infinity: the potential can only evaluate finite "
                                      "positions (Å).")
        self._plan(self.atoms)
        xyz = torch.tensor(positions, dtype=self.dtype, device=self.device, requires_grad=True)
        with torch.enable_grad():
            energies = self._energies(xyz)
            (gradient,) = torch.autograd.grad(energies.sum(), xyz)
        self.results["fragment_energies"] = energies.detach().cpu().numpy() * Hartree
        self.results["energy"] = float(self.results["fragment_energies"].sum())
        self.results["forces"] = -gradient.cpu().numpy().astype(np.float64) * Hartree

    def fragment_energies(self, atoms=None) -> np.ndarray:
        """The energy of each fragment (eV), in the order the fragments were given."""
        self.get_property("energy", atoms)
        return self.results["fragment_energies"].copy()


def torchani_calculator(potential: ANIPotential, dtype: torch.dtype = torch.float64) -> Calculator:
    """The same potential as TorchANI 2.9's ASE calculator (``torchani.ase.Calculator``).

    TorchANI's calculator takes a ``torchani.arch.ANI`` model (atomic numbers in, its own AEV
    computer, ``ANINetworks`` and ``SelfEnergy`` inside), so the potential's parts are put into
    one: its AEV computer, its networks as ``ANINetworks``
    (:func:`~anibook_utils.models.to_torchani`) and its self energies. With ``dtype=torch.float32``
    the self energies are float32 too, which rounds a carbon's (about -38 Hartree) by up to 2e-6
    Hartree.
    """
    potential = copy.deepcopy(_check_potential(potential)).to(dtype=dtype)
    shifter = SelfEnergy(list(ELEMENTS), list(potential.self_energies)).to(torch.float64)
    # SelfEnergy stores its values in float32 (-38.1 becomes -38.0999985): put the exact ones back
    shifter.self_energies.copy_(torch.tensor(potential.self_energies, dtype=torch.float64))
    model = torchani.arch.ANI(list(ELEMENTS), potential.aev_computer, to_torchani(potential.model), shifter)
    return model.to(dtype=dtype).ase()
