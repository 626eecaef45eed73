"""Chapter 5 (regularization experiments) runs in quick mode and records consistent results."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from anibook_utils.experiments import TABLE_COLUMNS, ExperimentTable

pytestmark = [pytest.mark.notebook, pytest.mark.usefixtures("real_data")]


@pytest.fixture(scope="module")
def metrics(run_chapter):
    return run_chapter("05_regularization")


def test_grid_table_schema_and_size(metrics):
    assert metrics["quick"] is True
    assert metrics["grid_columns"] == list(TABLE_COLUMNS)
    # quick mode: 1 architecture x 2 optimizers x 2 weight decays x 2 seeds
    assert metrics["grid_runs"] == 8 == len(metrics["grid_best_val_rmse"])
    assert all(math.isfinite(v) and v > 0 for v in metrics["grid_best_val_rmse"].values())


def test_seeds_differ(metrics):
    assert len(metrics["grid_seeds"]) >= 2
    by_setting: dict[str, set] = {}
    for key, value in metrics["grid_best_val_rmse"].items():
        setting, seed = key.rsplit("/", 1)
        by_setting.setdefault(setting, set()).add(round(value, 9))
    assert all(len(values) == len(metrics["grid_seeds"]) for values in by_setting.values())
    assert metrics["seed_std"] > 0


def test_results_are_saved_as_json_with_histories(metrics):
    table = ExperimentTable.load(Path(metrics["results_file"]))
    groups = {row["group"] for row in table.rows}
    assert {"grid", "long", "learning_curve"} <= groups
    for row in table.rows:
        assert len(row["history"]) == row["epochs"]
        assert {"train_rmse", "val_rmse", "epoch"} <= set(row["history"][0])


def test_learning_curve_and_remedies_are_recorded(metrics):
    curve = metrics["learning_curve"]
    assert len(curve) >= 2 and len(metrics["learning_curve_seeds"]) >= 2
    for point in curve.values():
        assert 0 < point["train"] and 0 < point["val"]
    remedies = metrics["remedies"]
    assert {"baseline", "early stopping (best epoch)", "weight decay 0.1", "smaller network (1x64)"} <= set(remedies)
    base = remedies["baseline"]
    assert remedies["early stopping (best epoch)"]["validation RMSE"] <= base["validation RMSE"] + 1e-9
    assert base["gap"] == pytest.approx(base["validation RMSE"] - base["train RMSE"], abs=1e-5)


def test_sgd_and_weight_decay_findings_are_numbers(metrics):
    assert metrics["sgd_lr"] > 1e-3
    for key in ("sgd_fast_rmse", "sgd_slow_rmse", "sgd_phase_change", "grid_gap_max"):
        assert math.isfinite(metrics[key]), key
    assert metrics["gradient_over_l2"]["initial"] > 1  # the data gradient dominates at the start
    assert set(metrics["long_best_val_rmse"]) == {"0", "0.0001"}
    assert metrics["elapsed_s"] < 60  # quick mode stays quick
