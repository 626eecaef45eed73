"""Chapter 6 (the TorchANI examples side by side) runs in quick mode and records consistent results."""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.usefixtures("real_data")]

RECIPES = ("legacy TorchANI tutorial", "TorchANI 2.9's current example", "book's engine, fast recipe")


@pytest.fixture(scope="module")
def metrics(run_chapter):
    return run_chapter("06_torchani_example")


def test_written_out_loops_match_the_modules(metrics):
    assert metrics["quick"] is True
    assert metrics["written_out_matches_module"] is True  # the legacy tutorial's loop
    assert metrics["current_step_matches"] is True  # the current example's step


def test_the_courses_run_is_reproduced_on_its_split(metrics):
    curve = metrics["course_val_curve"]
    assert len(curve) == metrics["course_epochs"] >= 2
    assert metrics["course_best_val_rmse"] == pytest.approx(min(curve))
    assert metrics["course_best_val_rmse"] < metrics["course_initial_val_rmse"]  # validation RMSE falls
    assert all(math.isfinite(v) for v in metrics["course_train_curve"])  # Figure 2 needs both curves
    assert metrics["course_reported"] == {"course's masked model": 6.0, "TorchANI example (course's run)": 2.0}


def test_three_recipes_side_by_side(metrics):
    rows = {row["recipe"]: row for row in metrics["side_by_side"]}
    assert tuple(rows) == RECIPES
    same_epochs = {row["epochs"] for row in rows.values()}
    assert len(same_epochs) == 1  # the same number of epochs for the three recipes
    for label, row in rows.items():
        assert math.isfinite(row["test RMSE (kcal/mol)"]) and row["test RMSE (kcal/mol)"] > 0, label
        assert row["s per epoch"] > 0 and row["training s"] > 0, label
        assert row["best validation RMSE (kcal/mol)"] == pytest.approx(min(metrics["val_curves"][label])), label
    assert metrics["current_best_epoch"] >= 1
    # both TorchANI examples learn: their validation RMSE falls below where it started
    assert min(metrics["val_curves"][RECIPES[0]]) < metrics["legacy_initial_val_rmse"]
    assert min(metrics["val_curves"][RECIPES[1]]) < metrics["current_initial_val_rmse"]


def test_lot_self_energies_leave_more_to_learn(metrics):
    assert metrics["rms_left"]["lot"] > metrics["rms_left"]["fitted"] > 0


def test_timings_cover_the_parts_of_a_step(metrics):
    parts = metrics["timings_ms"]
    assert {"AEVs (AEVComputer, no gradient)", "ANINetworks forward + backward", "AdamW + SGD steps",
            "legacy tutorial: whole step", "course's masked model forward + backward",
            "current example: whole step"} <= set(parts)
    assert all(v > 0 for v in parts.values())
    assert 0 < metrics["aev_share"] < 1
    assert metrics["energy_change_flush"] < 1e-6  # flushing subnormals does not change the energies
