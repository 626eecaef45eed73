"""Chapter 9: the ASE calculator gives the potential's own energies and forces, in eV and eV/Å."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.units import Hartree

from anibook_utils.calculator import ANICalculator, torchani_calculator
from anibook_utils.models import ArchitectureSpec, UnsupportedSpeciesError, build_model
from anibook_utils.potential import ANIPotential, PotentialInputError

SELF_ENERGIES = [-0.6, -38.1, -54.7, -75.2]


def random_potential(seed: int, elements: str = "HCNO") -> ANIPotential:
    """An untrained potential: random weights, a realistic output scale; any smooth function will do."""
    model = build_model(ArchitectureSpec({e: (32, 16) for e in elements}), seed=seed)
    model.output_scale.fill_(0.05)
    return ANIPotential(model, SELF_ENERGIES)


def distorted(name: str, seed: int = 0, scale: float = 0.08) -> Atoms:
    atoms = molecule(name)
    atoms.positions += np.random.default_rng(seed).normal(scale=scale, size=atoms.positions.shape)
    return atoms


def reference(potential: ANIPotential, atoms: Atoms) -> tuple[float, np.ndarray]:
    """The potential's own energy (eV) and forces (eV/Å), float64, through ANIPotential."""
    energy, forces = potential.double().energies_and_forces(atoms.get_chemical_symbols(),
                                                           torch.tensor(atoms.positions))
    return float(energy) * Hartree, forces.numpy() * Hartree


@pytest.mark.parametrize("name", ["CH4", "NH3", "H2O"])
def test_the_calculator_gives_the_potentials_energy_and_forces_in_ev(name):
    potential = random_potential(0)
    atoms = distorted(name)
    atoms.calc = ANICalculator(potential)
    energy, forces = reference(potential, atoms)
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-9)
    assert np.abs(atoms.get_forces() - forces).max() < 1e-9
    assert atoms.get_forces().dtype == np.float64


def test_atoms_beyond_the_cutoffs_are_treated_as_torchani_does():
    """A hydrogen 4 Å away (inside the radial cutoff, outside the angular one), then 6 Å (outside both)."""
    potential = random_potential(1)
    for distance in (4.0, 6.0):
        atoms = molecule("H2O")
        atoms.positions[2] = atoms.positions[0] + [0.0, distance, 0.0]
        atoms.calc = ANICalculator(potential)
        energy, forces = reference(potential, atoms)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-9)
        assert np.abs(atoms.get_forces() - forces).max() < 1e-9


def test_forces_are_minus_the_gradient_of_the_energy():
    from ase.calculators.fd import calculate_numerical_forces

    atoms = distorted("CH4", seed=2)
    atoms.calc = ANICalculator(random_potential(2))
    numeric = calculate_numerical_forces(atoms, eps=1e-5)
    assert np.abs(atoms.get_forces() - numeric).max() < 1e-6


def test_torchanis_own_ase_calculator_agrees():
    potential = random_potential(3)
    ours, theirs = distorted("NH3", seed=3), distorted("NH3", seed=3)
    ours.calc, theirs.calc = ANICalculator(potential), torchani_calculator(potential)
    assert ours.get_potential_energy() == pytest.approx(theirs.get_potential_energy(), abs=1e-8)
    assert np.abs(ours.get_forces() - theirs.get_forces()).max() < 1e-8


def test_fragments_are_independent_molecules_each_with_its_potential():
    a, b = random_potential(4), random_potential(5)
    methane, water = distorted("CH4", seed=4), distorted("H2O", seed=5)
    both = methane + water  # overlapping on purpose: fragments never interact
    both.calc = ANICalculator([a, b], fragments=[range(5), range(5, 8)])
    (e_methane, f_methane), (e_water, f_water) = reference(a, methane), reference(b, water)
    assert both.calc.fragment_energies(both) == pytest.approx([e_methane, e_water], abs=1e-9)
    assert both.get_potential_energy() == pytest.approx(e_methane + e_water, abs=1e-9)
    assert np.abs(both.get_forces() - np.vstack([f_methane, f_water])).max() < 1e-9


def test_the_calculator_follows_new_positions_and_new_elements():
    potential = random_potential(6)
    atoms = distorted("H2O", seed=6)
    atoms.calc = ANICalculator(potential)
    first = atoms.get_potential_energy()
    atoms.positions[1] += [0.05, 0.0, 0.0]
    assert atoms.get_potential_energy() != first
    assert atoms.get_potential_energy() == pytest.approx(reference(potential, atoms)[0], abs=1e-9)
    other = distorted("NH3", seed=7)
    other.calc = atoms.calc  # same calculator, other elements and atom count
    assert other.get_potential_energy() == pytest.approx(reference(potential, other)[0], abs=1e-9)


def test_bad_inputs_say_what_to_do():
    potential = random_potential(8)
    with pytest.raises(TypeError, match="needs an ANIPotential"):
        ANICalculator(potential.model)
    with pytest.raises(PotentialInputError, match="as many fragments"):
        ANICalculator([potential, potential])
    atoms = molecule("H2O")
    atoms.calc = ANICalculator(potential, fragments=[[0, 1]])
    with pytest.raises(PotentialInputError, match="each atom in exactly one"):
        atoms.get_potential_energy()
    atoms = molecule("H2O")
    atoms.pbc = True
    atoms.cell = [10, 10, 10]
    atoms.calc = ANICalculator(potential)
    with pytest.raises(PotentialInputError, match="pbc = False"):
        atoms.get_potential_energy()
    atoms = molecule("H2O")
    atoms.positions[0, 0] = np.nan
    atoms.calc = ANICalculator(potential)
    with pytest.raises(PotentialInputError, match="NaN"):
        atoms.get_forces()
    atoms = molecule("SH2")
    atoms.calc = ANICalculator(potential)
    with pytest.raises(UnsupportedSpeciesError, match="'S'"):
        atoms.get_potential_energy()
    atoms = molecule("CH4")
    atoms.calc = ANICalculator(random_potential(9, elements="HO"))
    with pytest.raises(UnsupportedSpeciesError, match="networks for"):
        atoms.get_potential_energy()
