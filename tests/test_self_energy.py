"""anibook_utils.self_energy: composition, least-squares fit, rank deficiency, shift and unshift."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from anibook_utils.data import ELEMENTS, EmptySelectionError
from anibook_utils.self_energy import (
    RankDeficientFitWarning,
    composition_matrix,
    fit_self_energies,
    self_energy_sums,
    self_energy_values,
    shift_energies,
    unshift_energies,
)
from torchani.sae import SelfEnergy
from torchani.units import hartree2kcalpermol

TRUE = np.array([-0.5, -37.8, -54.6, -75.0])  # made-up self energies, H C N O


def species_of(*formulas: list[str], width: int = 5) -> torch.Tensor:
    rows = []
    for symbols in formulas:
        row = [ELEMENTS.index(s) for s in symbols]
        rows.append(row + [-1] * (width - len(row)))
    return torch.tensor(rows)


CH4, NH3, H2O = list("CHHHH"), list("NHHH"), list("OHH")
H2, CO, NO = list("HH"), list("CO"), list("NO")


def synthetic(formulas, noise=0.0, seed=0):
    """Species and energies that are exactly TRUE self-energy sums, plus optional noise."""
    species = species_of(*formulas)
    energies = composition_matrix(species) @ TRUE
    energies = energies + np.random.default_rng(seed).normal(0, noise, len(energies))
    return species, torch.from_numpy(energies)


def test_composition_matrix_counts_atoms_and_ignores_padding():
    c = composition_matrix(species_of(CH4, NH3, H2O))
    np.testing.assert_array_equal(c, [[4, 1, 0, 0], [3, 0, 1, 0], [2, 0, 0, 1]])
    assert c.dtype == np.float64


def test_composition_matrix_rejects_atomic_numbers():
    with pytest.raises(ValueError, match="SpeciesConverter"):
        composition_matrix(torch.tensor([[6, 1, 1, 1, 1]]))


def test_composition_matrix_rejects_float_species():
    with pytest.raises(ValueError, match="integer element indices"):
        composition_matrix(np.zeros((2, 3)))


def test_full_rank_fit_recovers_the_values_without_warning():
    species, energies = synthetic([CH4, NH3, H2O, H2, CO, NO] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_self_energies(species, energies)
    assert fit.rank == 4 and fit.is_unique
    assert fit.null_space.shape == (0, 4)
    np.testing.assert_allclose(fit.values, TRUE, atol=1e-9)
    assert fit.method == "unique"


def test_one_heavy_atom_molecules_are_rank_deficient_and_say_so():
    species, energies = synthetic([CH4, NH3, H2O] * 4, noise=1e-3)
    with pytest.warns(RankDeficientFitWarning, match="rank 3 for 4 elements"):
        fit = fit_self_energies(species, energies)
    assert fit.rank == 3 and not fit.is_unique
    # the one direction the data cannot see: +d H, -4d C, -3d N, -2d O (H made positive)
    expected = np.array([1.0, -4.0, -3.0, -2.0]) / math.sqrt(30)
    np.testing.assert_allclose(fit.null_space, expected[None, :], atol=1e-12)
    # minimum norm: no component along the null space
    assert abs(fit.null_space[0] @ fit.values) < 1e-9
    # and moving along the null space changes no fitted energy
    c = composition_matrix(species)
    np.testing.assert_allclose(c @ (fit.values + 3.0 * fit.null_space[0]), c @ fit.values, atol=1e-9)


def test_rank_deficient_fit_is_deterministic():
    species, energies = synthetic([CH4, NH3, H2O] * 4, noise=1e-3)
    first = fit_self_energies(species, energies, warn=False)
    second = fit_self_energies(species, energies, warn=False)
    np.testing.assert_array_equal(first.values, second.values)


def test_reference_picks_the_solution_closest_to_it():
    species, energies = synthetic([CH4, NH3, H2O] * 4, noise=1e-3)
    plain = fit_self_energies(species, energies, warn=False)
    near = fit_self_energies(species, energies, reference=dict(zip(ELEMENTS, TRUE)), warn=False)
    c = composition_matrix(species)
    np.testing.assert_allclose(c @ near.values, c @ plain.values, atol=1e-9)  # same fitted energies
    v = near.null_space[0]
    assert near.values @ v == pytest.approx(TRUE @ v, abs=1e-9)  # the reference's null component
    # exact data + reference = the truth itself, which is the closest solution to it
    exact_species, exact = synthetic([CH4, NH3, H2O])
    recovered = fit_self_energies(exact_species, exact, reference=TRUE, warn=False)
    np.testing.assert_allclose(recovered.values, TRUE, atol=1e-9)
    assert near.method == "closest-to-reference"


def test_absent_elements_get_nan_and_a_clear_error_when_used():
    species, energies = synthetic([CH4, H2] * 3)
    fit = fit_self_energies(species, energies)
    assert fit.present.tolist() == [True, True, False, False]
    assert np.isnan(fit.values[2:]).all() and fit.rank == 2
    np.testing.assert_allclose(fit.values[:2], TRUE[:2], atol=1e-9)
    assert np.isnan(fit.as_dict()["N"])
    assert "absent" in str(fit)
    with pytest.raises(ValueError, match="No self energy for N"):
        shift_energies(species_of(NH3), [-56.0], self_energies=fit)
    module = fit.to_torchani()
    assert torch.isnan(module.self_energies[2])
    assert fit.to_torchani(missing=0.0).self_energies[2] == 0.0


def test_shift_unshift_round_trip_numpy_and_torch():
    species, energies = synthetic([CH4, NH3, H2O] * 2, noise=1e-3)
    fit = fit_self_energies(species, energies, warn=False)
    shifted = shift_energies(species, energies, self_energies=fit)
    assert isinstance(shifted, torch.Tensor) and shifted.dtype == torch.float64
    assert shifted.abs().max() < 0.01  # only the noise is left
    back = unshift_energies(species, shifted, self_energies=fit)
    torch.testing.assert_close(back, energies, rtol=0, atol=1e-12)
    as_numpy = shift_energies(species.numpy(), energies.numpy(), self_energies=fit)
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_allclose(as_numpy, shifted.numpy(), atol=1e-12)


@pytest.mark.parametrize("form", ["fit", "dict", "list", "tensor", "torchani"])
def test_every_form_of_self_energies_gives_the_same_shift(form):
    species, energies = synthetic([CH4, NH3, H2O, H2, CO])
    fit = fit_self_energies(species, energies)
    given = {
        "fit": fit, "dict": fit.as_dict(), "list": list(fit.values),
        "tensor": torch.from_numpy(fit.values), "torchani": fit.to_torchani(),
    }[form]
    np.testing.assert_allclose(self_energy_values(given), TRUE, atol=1e-9)
    np.testing.assert_allclose(shift_energies(species, energies, self_energies=given).numpy(), 0, atol=1e-9)


def test_to_torchani_is_exact_float64_and_sums_like_ours():
    species, energies = synthetic([CH4, NH3, H2O, H2, CO])
    fit = fit_self_energies(species, energies)
    module = fit.to_torchani()
    assert isinstance(module, SelfEnergy) and module.self_energies.dtype == torch.float64
    np.testing.assert_array_equal(module.self_energies.numpy(), fit.values)
    np.testing.assert_allclose(module(species).numpy(), self_energy_sums(species, fit), atol=1e-12)


def test_torchani_module_in_another_element_order_is_mapped_by_symbol():
    module = SelfEnergy(("O", "H", "C", "N"), [-75.0, -0.5, -37.8, -54.6]).double()
    np.testing.assert_allclose(self_energy_values(module), TRUE, atol=1e-6)


def test_bad_inputs_raise_helpful_errors():
    species, energies = synthetic([CH4, NH3])
    with pytest.raises(ValueError, match="one energy per conformation"):
        fit_self_energies(species, energies[:1])
    with pytest.raises(ValueError, match="NaN"):
        fit_self_energies(species, torch.tensor([math.nan, 1.0], dtype=torch.float64))
    with pytest.raises(EmptySelectionError):
        fit_self_energies(torch.zeros((0, 5), dtype=torch.long), torch.zeros(0))
    with pytest.raises(ValueError, match="4 self energies"):
        shift_energies(species, energies, self_energies=[1.0, 2.0])
    with pytest.raises(ValueError, match="Pass the energies"):
        shift_energies(species, self_energies=TRUE)


@pytest.mark.usefixtures("real_data")
class TestOnTheRealData:
    def test_rank_three_and_the_warning(self, real_data):
        with pytest.warns(RankDeficientFitWarning) as record:
            fit = fit_self_energies(real_data)
        assert fit.rank == 3 and fit.null_space.shape == (1, 4)
        assert "rank 3 for 4 elements" in str(record[0].message)

    def test_shifted_spread_is_a_few_kcal_per_mol(self, real_data):
        fit = fit_self_energies(real_data, warn=False)
        shifted = hartree2kcalpermol(shift_energies(real_data, self_energies=fit).numpy())
        raw = hartree2kcalpermol(real_data.energies.numpy())
        assert raw.std() > 1000  # thousands of kcal/mol before
        assert 1.0 < shifted.std() < 15.0  # a few after
        for i, name in enumerate(real_data.molecule_names):
            std = shifted[(real_data.molecule_ids == i).numpy()].std()
            assert 1.0 < std < 15.0, name

    def test_fit_and_gsae_leave_the_same_spread_per_molecule(self, real_data):
        from torchani.constants import GSAES

        fit = fit_self_energies(real_data, warn=False)
        by_fit = shift_energies(real_data, self_energies=fit).numpy()
        by_gsae = shift_energies(real_data, self_energies=GSAES["wb97x-631gd"]).numpy()
        for i in range(len(real_data.molecule_names)):
            rows = (real_data.molecule_ids == i).numpy()
            assert by_fit[rows].std() == pytest.approx(by_gsae[rows].std(), abs=1e-9)
            assert abs(by_fit[rows].mean()) < 1e-9  # the fit centres each molecule exactly
            assert by_gsae[rows].mean() < -0.1  # GSAE leaves the binding energy

    def test_round_trip_on_real_data(self, real_data):
        fit = fit_self_energies(real_data, warn=False)
        back = unshift_energies(real_data, shift_energies(real_data, self_energies=fit), self_energies=fit)
        torch.testing.assert_close(back, real_data.energies, rtol=0, atol=1e-10)
