"""Chapter 6 (the TorchANI example side by side) runs in quick mode and records consistent results."""

from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.usefixtures("real_data")]


@pytest.fixture(scope="module")
def metrics(run_chapter):
    return run_chapter("06_torchani_example")


def test_written_out_loop_matches_the_module(metrics):
    assert metrics["quick"] is True
    assert metrics["written_out_matches_module"] is True


def test_the_example_learns(metrics):
    curve = metrics["example_val_curve"]
    assert len(curve) == metrics["example_epochs"] >= 2
    assert metrics["example_best_val_rmse"] == pytest.approx(min(curve))
    assert metrics["example_best_val_rmse"] < metrics["example_initial_val_rmse"]  # validation RMSE falls
    assert all(math.isfinite(v) for v in metrics["example_train_curve"])


def test_side_by_side_table(metrics):
    runs = {row["run"]: row for row in metrics["side_by_side"]}
    assert set(runs) == {"TorchANI example (its loop)", "engine, example's recipe", "engine, book's recipe"}
    assert runs["TorchANI example (its loop)"]["epochs"] == runs["engine, example's recipe"]["epochs"]
    for row in runs.values():
        assert row["s per epoch"] > 0 and row["conformations / s"] > 0
        assert math.isfinite(row["best validation RMSE"])
    assert metrics["engine_fast_best_val_rmse"] == pytest.approx(runs["engine, book's recipe"]["best validation RMSE"])


def test_timings_cover_the_parts_of_a_step(metrics):
    parts = metrics["timings_ms"]
    assert {"AEVs (AEVComputer, no gradient)", "ANINetworks forward + backward", "AdamW + SGD steps",
            "the example's whole step", "course's masked model forward + backward"} <= set(parts)
    assert all(v > 0 for v in parts.values())
    assert 0 < metrics["aev_share"] < 1
    assert metrics["energy_change_flush"] < 1e-6  # flushing subnormals does not change the energies
    assert metrics["course_reported"] == {"course's masked model": 6.0, "TorchANI example (course's run)": 2.0}
