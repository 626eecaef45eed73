"""Chapter 5 (regularization experiments) runs in quick mode and records consistent results."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from anibook_utils.experiments import ADAM_SGD, TABLE_COLUMNS, ExperimentTable

pytestmark = [pytest.mark.notebook, pytest.mark.usefixtures("real_data")]


@pytest.fixture(scope="module")
def metrics(run_chapter):
    return run_chapter("05_regularization")


@pytest.fixture(scope="module")
def stored(metrics):
    return ExperimentTable.load(Path(metrics["results_file"]))


def test_grid_has_both_readings_and_the_stand_ins(metrics):
    assert metrics["quick"] is True
    assert metrics["grid_columns"] == list(TABLE_COLUMNS)
    # quick mode: course networks x 3 optimizers + 2 stand-ins x Adam, 2 seeds each
    assert metrics["grid_runs"] == 10 == len(metrics["grid_test_rmse"]) == len(metrics["grid_best_val_rmse"])
    assert metrics["grid_optimizers"] == sorted(["adam", ADAM_SGD, "torchani"])
    assert set(metrics["grid_setting_test"]) == {"course/adam", f"course/{ADAM_SGD}", "course/torchani",
                                                 "half/adam", "1x64/adam"}
    assert all(math.isfinite(v) and v > 0 for v in metrics["grid_test_rmse"].values())


def test_seeds_differ(metrics):
    assert metrics["grid_seeds"] == [0, 1]
    by_setting: dict[str, set] = {}
    for key, value in metrics["grid_test_rmse"].items():
        setting, seed = key.rsplit("/", 1)
        by_setting.setdefault(setting, set()).add(round(value, 9))
    assert all(len(values) == 2 for values in by_setting.values())
    assert metrics["seed_spread_max"] > 0


def test_every_stored_run_reports_a_test_rmse(stored):
    groups = {row["group"] for row in stored.rows}
    assert {"grid", "learning_curve", "remedies", "exercise"} <= groups
    test_sets = {row["test_set"] for row in stored.rows}
    assert len(test_sets) == 1 and None not in test_sets  # one test set, never missing
    for row in stored.rows:
        assert math.isfinite(row["test_rmse"]) and row["test_rmse"] > 0
        assert math.isfinite(row["final_test_rmse"]) and math.isfinite(row["train_rmse"])
        assert len(row["history"]) == row["epochs"]
        assert {"train_rmse", "val_rmse", "epoch", "lr"} <= set(row["history"][0])


def test_learning_curve_takes_equal_steps(metrics, stored):
    curve = metrics["learning_curve"]
    assert len(curve) >= 2 and metrics["learning_curve_seeds"] == [0, 1]
    assert len({point["steps"] for point in curve.values()}) == 1  # the same steps for every size
    sizes = sorted(curve, key=int)
    assert curve[sizes[0]]["epochs"] > curve[sizes[-1]]["epochs"]  # smaller sets: more epochs
    for point in curve.values():
        assert 0 < point["train"] and 0 < point["test"]
    lc_rows = stored.select(group="learning_curve").rows
    assert len({row["steps"] for row in lc_rows}) == 1 and len(lc_rows) == 2 * len(curve)


def test_remedies_ensemble_and_early_stopping_are_recorded(metrics):
    remedies = metrics["remedies"]
    assert {"recipe (decay 1e-5)", "decay 0.1", "decay 1", "one layer of 64"} <= set(remedies)
    for values in remedies.values():
        assert values["gap"] == pytest.approx(values["test RMSE"] - values["training RMSE"], abs=1e-5)
        assert values["test, lowest seed"] <= values["test RMSE"] <= values["test, highest seed"]
    # the average prediction of the seeds errs less than the seeds do on average
    assert metrics["ensemble_rmse"] <= remedies["recipe (decay 1e-5)"]["test RMSE"] + 1e-9
    assert metrics["early_stopping"]["selected epoch"] > 0 and metrics["early_stopping"]["last epoch"] > 0
    shrink = metrics["decay_shrink"]
    assert 1 >= shrink["1e-05"] > shrink["0.1"] > shrink["1"] > 0


def test_sgd_and_gap_findings_are_numbers(metrics):
    for key in ("grid_gap_max", "selection_gap_mean", "adam_jump_median", "adam_sgd_best_at_switch"):
        assert math.isfinite(metrics[key]), key
    assert metrics["adam_sgd_best_at_end"] <= metrics["adam_sgd_best_at_switch"]  # the minimum over more epochs
    assert metrics["gradient_over_l2"] > 1  # the data gradient dominates at the start
    assert metrics["cpu_s"] < 60  # quick mode stays quick (CPU seconds: steady on a loaded machine)
