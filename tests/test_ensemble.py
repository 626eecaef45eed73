"""Ensembles and the committee's uncertainty (anibook_utils.ensemble, chapter 11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anibook_utils.data import HARTREE_TO_KCAL, load_dataset
from anibook_utils.ensemble import (Ensemble, EnsemblePrediction, calibration_table, caught_fraction, member_seeds,
                                    qbc_uncertainty, spearman, train_ensemble)
from anibook_utils.models import ArchitectureSpec
from anibook_utils.training import ConfigError, TrainConfig

TINY = ArchitectureSpec({e: (8,) for e in ("H", "C", "N", "O")})


@pytest.fixture(scope="module")
def small_sets():
    """A few hundred conformations of the bundled data set: training, validation, test."""
    data = load_dataset("anibook_nms_s01")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.subset(order[:240].sort().values), data.subset(order[240:300].sort().values), \
        data.subset(order[300:400].sort().values)


@pytest.fixture(scope="module")
def ensemble(small_sets):
    train_set, val_set, _ = small_sets
    return train_ensemble(TINY, train_set, val_set, TrainConfig.fast(epochs=3, batch_size=32), members=3, seed=5)


# -- the uncertainty's definition -------------------------------------------------------------


def test_rho_is_the_unbiased_std_over_members_divided_by_sqrt_atoms():
    members = torch.tensor([[0.0, 0.0, 1.0], [2.0, 4.0, 1.0]], dtype=torch.float64)
    atoms = torch.tensor([1, 4, 9])
    rho = qbc_uncertainty(members, atoms)
    assert rho.tolist() == pytest.approx([math.sqrt(2), 2 * math.sqrt(2) / 2, 0.0])
    # TorchANI's energies_qbcs: std over members (unbiased by default) / sqrt(atoms)
    assert torch.allclose(rho, members.std(0, unbiased=True) / atoms.double().sqrt())
    biased = qbc_uncertainty(members, atoms, unbiased=False)
    assert torch.allclose(biased, rho / math.sqrt(2))


def test_rho_scales_as_one_over_sqrt_atoms_and_one_member_has_none():
    members = torch.tensor([[1.0, 1.0], [3.0, 3.0], [2.0, 2.0]], dtype=torch.float64)
    rho = qbc_uncertainty(members, torch.tensor([1, 16]))
    assert float(rho[0]) == pytest.approx(4 * float(rho[1]))
    assert qbc_uncertainty(members[:1], torch.tensor([1, 16])).tolist() == [0.0, 0.0]


def test_rho_refuses_misshapen_input():
    with pytest.raises(ValueError, match="members, conformations"):
        qbc_uncertainty(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="num_atoms"):
        qbc_uncertainty(torch.zeros(2, 3), torch.ones(2))


def test_prediction_properties_in_both_units():
    members = torch.tensor([[0.0, 1.0], [0.002, 1.004]], dtype=torch.float64)
    prediction = EnsemblePrediction(members, torch.tensor([1.0, 4.0], dtype=torch.float64))
    assert prediction.mean.tolist() == pytest.approx([0.001, 1.002])
    assert prediction.std_kcal == pytest.approx(np.array([0.002, 0.004]) / math.sqrt(2) * HARTREE_TO_KCAL)
    assert prediction.rho_kcal == pytest.approx(prediction.std_kcal / np.array([1.0, 2.0]))


def test_member_seeds():
    assert member_seeds(3, 10) == [10, 11, 12]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="members"):
            member_seeds(bad)


# -- training and predicting ----------------------------------------------------------------------


def test_members_differ_share_self_energies_and_average(ensemble, small_sets):
    _, _, test_set = small_sets
    assert len(ensemble) == 3 and ensemble.seeds == [5, 6, 7]
    assert len(ensemble.histories) == 3 and all(len(h) == 3 for h in ensemble.histories)
    weights = [m.networks["H"][0].weight for m in ensemble.models]
    assert not torch.equal(weights[0], weights[1])  # another seed: other initial weights and order
    prediction = ensemble.predict(test_set)
    assert prediction.members.shape == (3, len(test_set))
    assert torch.allclose(prediction.mean, prediction.members.mean(0))
    assert (prediction.rho > 0).all()
    scores = ensemble.evaluate(test_set)
    assert len(scores["member_rmse"]) == 3
    errors = prediction.errors_kcal(test_set)
    assert scores["rmse"] == pytest.approx(float(np.sqrt(np.mean(errors**2))))
    # averaging never does worse than the average member (the RMSE is convex)
    assert scores["rmse"] <= np.mean(scores["member_rmse"]) + 1e-9


def test_torchani_ensemble_computes_the_same_energies(ensemble, small_sets):
    from anibook_utils.torchani_shim import torchani

    _, _, test_set = small_sets
    module = ensemble.to_torchani()
    assert isinstance(module, torchani.nn.Ensemble) and len(module) == 3
    ours = ensemble.member_energies(test_set)
    theirs = ensemble.torchani_energies(test_set, module)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)  # Hartree, float32 networks


def test_prediction_refuses_other_data(ensemble, small_sets):
    train_set, _, test_set = small_sets
    with pytest.raises(ValueError, match="predictions"):
        ensemble.predict(test_set).errors_kcal(train_set)


def test_members_as_potentials(ensemble, small_sets):
    _, _, test_set = small_sets
    potentials = ensemble.potentials()
    energies = potentials[0].energies(test_set.species[:2], test_set.coordinates[:2])
    assert torch.allclose(energies.double(), ensemble.member_energies(test_set)[0, :2], atol=1e-5)


# -- does the uncertainty mean anything? ----------------------------------------------------------


def test_rank_statistics():
    errors = np.array([0.1, -0.5, 2.0, -4.0, 0.3, 8.0, 0.2, -0.05, 1.0, 0.7] * 2)
    uncertainty = np.abs(errors) * 3 + 1
    assert spearman(uncertainty, errors) == pytest.approx(1.0)
    assert spearman(-uncertainty, errors) == pytest.approx(-1.0)
    assert caught_fraction(uncertainty, errors, 0.1) == 1.0
    assert caught_fraction(-uncertainty, errors, 0.1) == 0.0


def test_caught_fraction_counts_the_overlap():
    errors = np.arange(20.0)  # the worst two are 19 and 18
    uncertainty = np.zeros(20)
    uncertainty[[19, 3]] = 1.0
    assert caught_fraction(uncertainty, errors, 0.1) == 0.5
    with pytest.raises(ValueError, match="fraction"):
        caught_fraction(uncertainty, errors, 0.0)


def test_calibration_table_bins_by_uncertainty():
    rng = np.random.default_rng(0)
    sigma = np.repeat([0.5, 1.0, 2.0, 4.0], 2000)
    errors = rng.normal(0.0, sigma)  # a calibrated uncertainty: errors drawn with that sigma
    table = calibration_table(sigma, errors, bins=4)
    assert list(table["count"]) == [2000] * 4
    assert table["uncertainty"].tolist() == [0.5, 1.0, 2.0, 4.0]
    assert table["rmse"].to_numpy() == pytest.approx(table["uncertainty"].to_numpy(), rel=0.06)


def test_diagnostics_refuse_mismatched_or_non_finite_input():
    with pytest.raises(ValueError, match="one uncertainty per error"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        caught_fraction([1.0, np.nan], [1.0, 2.0])


def test_train_ensemble_is_the_loop_over_seeds(small_sets, ensemble):
    """The chapter's claim: train_ensemble trains the members of a plain loop over seeds."""
    from anibook_utils.self_energy import fit_self_energies
    from anibook_utils.training import train

    train_set, val_set, test_set = small_sets
    shared = fit_self_energies(train_set, warn=False).as_tensor()
    config = TrainConfig.fast(epochs=3, batch_size=32)
    by_hand = [train(TINY, train_set, val_set, config.replace(seed=5 + k), progress=False, self_energies=shared)
               for k in range(3)]
    assert torch.equal(torch.stack([r.predict(test_set) for r in by_hand]), ensemble.member_energies(test_set))
