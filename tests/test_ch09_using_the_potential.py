"""Chapter 9 executed in quick mode: force labels, force training, the ASE calculator, minima,
frequencies and molecular dynamics (the numbers it records)."""

from __future__ import annotations

import pytest

pytest.importorskip("pyscf")

CHAPTER = "09_using_the_potential"


@pytest.fixture(scope="module")
def metrics(run_chapter):
    return run_chapter(CHAPTER)


@pytest.mark.notebook
@pytest.mark.usefixtures("real_data")
def test_the_force_labels_are_pyscfs_and_minus_the_gradient(metrics):
    assert metrics["quick"] is True
    assert metrics["label_max_difference_kcal_per_a"] < 1e-3  # recomputed with PySCF
    stored, numeric = metrics["label_stored_component_kcal_per_a"], metrics["label_finite_difference_kcal_per_a"]
    assert abs(stored) > 5 and numeric == pytest.approx(stored, abs=0.3)  # sign and size; the grid's floor
    assert 0 < metrics["net_force_rms_kcal_per_a"] < 0.2


@pytest.mark.notebook
@pytest.mark.usefixtures("real_data")
def test_training_on_forces_pays_off_even_in_a_few_epochs(metrics):
    steps = metrics["step_ms"]
    assert steps["energies + forces (double backward)"] > steps["energies, AEVs precomputed"]
    assert len(metrics["grid"]) == 6 and metrics["chosen_force_weight"] in (1.0, 10.0, 100.0)
    scores = metrics["test_scores"]
    assert scores["energies + forces"]["force_rmse"] < 0.5 * scores["energies only"]["force_rmse"]
    assert set(metrics["test_scores_per_molecule"]["energies + forces"]) == {"CH4", "NH3", "H2O"}


@pytest.mark.notebook
@pytest.mark.usefixtures("real_data")
def test_the_calculators_give_the_potentials_numbers(metrics):
    assert metrics["calculator_energy_diff_ev"] < 1e-9
    assert metrics["calculator_force_diff_ev_per_a"] < 1e-9
    assert metrics["torchani_energy_diff_ev"] < 1e-6
    assert metrics["torchani_force_diff_ev_per_a"] < 1e-6


@pytest.mark.notebook
@pytest.mark.usefixtures("real_data")
def test_minima_frequencies_and_dynamics_are_measured(metrics):
    assert len(metrics["geometries"]) == 6  # 3 molecules x 2 models, each BFGS converged
    assert len(metrics["frequencies"]) == 18  # 9 + 6 + 3 modes
    assert all(row["DFT (cm⁻¹)"] > 1000 for row in metrics["frequencies"])
    assert set(metrics["frequency_mae_cm"]) == {"energies only", "energies + forces"}
    drift = metrics["nve_drift"]
    assert len(drift) == 6
    for row in drift.values():  # 0.1 ps of NVE in quick mode: conserved to a few hundredths
        assert abs(row["drift over the run (kcal/mol)"]) < 0.05 and row["largest deviation (kcal/mol)"] < 0.1
    assert len(metrics["sampled_coverage"]) == 6 and len(metrics["hot"]) == 6
    assert len(metrics["hot_dft"]) >= 1


@pytest.mark.notebook
@pytest.mark.usefixtures("real_data")
def test_the_issues_targets_are_tabulated_from_the_run(metrics):
    targets = metrics["targets"]
    assert len(targets) == 7
    scores = metrics["test_scores"]["energies + forces"]
    force_row = targets["test force RMSE, model trained on forces (kcal/mol/Å)"]
    assert force_row == {"target (at most)": 0.5, "this run": pytest.approx(scores["force_rmse"])}
    frequency_row = targets["harmonic frequencies, mean absolute error (cm⁻¹)"]
    assert frequency_row["this run"] == pytest.approx(metrics["frequency_mae_cm"]["energies + forces"])
    assert 0 < targets["this chapter so far, on the machine that built this page (min)"]["this run"] \
        < metrics["elapsed_seconds"] / 60
