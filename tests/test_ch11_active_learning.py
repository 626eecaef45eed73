"""Chapter 11 executed in quick mode: the ensemble, its uncertainty and the active-learning loop."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("pyscf")  # the chapter labels a few geometries live


@pytest.fixture(scope="module")
def metrics(run_chapter, real_data):
    return run_chapter("11_active_learning")


@pytest.mark.notebook
def test_ensemble_mean_and_torchani_ensemble(metrics):
    members = metrics["member_test_rmse"]
    assert len(members) == metrics["members"] >= 2
    # averaging predictions never does worse than the average member (the squared error is convex)
    assert metrics["ensemble_test_rmse"] <= sum(members) / len(members) + 1e-9
    assert metrics["torchani_max_difference_kcal"] < 1e-3


@pytest.mark.notebook
def test_uncertainty_ranks_errors_beyond_the_training_data(metrics):
    table = metrics["uncertainty"]
    assert set(table) == {"ANI-1 test split", "hot MD", "bond scans", "hot MD + bond scans"}
    for row in table.values():
        assert -1 <= row["Spearman(ρ, |error|)"] <= 1 and 0 <= row["worst 5 % caught"] <= 1
    beyond = table["hot MD + bond scans"]
    assert beyond["conformations"] == metrics["pool_counts"]["md"] + metrics["pool_counts"]["stretch"]
    # the bond scans leave the training range far behind: the committee must notice
    assert table["bond scans"]["mean ρ (kcal/mol)"] > table["ANI-1 test split"]["mean ρ (kcal/mol)"]
    assert beyond["Spearman(ρ, |error|)"] > 0.3
    assert metrics["training_xh_range"][1] < 1.7
    if not metrics["quick"]:
        assert beyond["Spearman(ρ, |error|)"] >= 0.5  # the chapter's target


@pytest.mark.notebook
def test_pool_split_and_live_oracle(metrics):
    counts = metrics["pool_counts"]
    assert sum(counts.values()) == metrics["pool_size"]
    assert metrics["candidates"] + metrics["test_size"] == counts["nms"] + counts["md"]
    assert metrics["oracle_max_difference_kcal"] < 0.01  # the stored labels are the oracle's answers
    assert sum(metrics["hand_round_queried"].values()) == 24


@pytest.mark.notebook
def test_learning_curves_and_the_half_label_comparison(metrics):
    labels = metrics["settings"]["labels"]
    curves = metrics["curves"]
    assert set(curves) == {"qbc", "random"}
    for curve in curves.values():
        assert [int(n) for n in curve] == labels
        assert all(math.isfinite(v) and v > 0 for v in curve.values())
    first = str(labels[0])
    assert curves["qbc"][first] == pytest.approx(curves["random"][first])  # same seed set, same members
    comparison = metrics["comparison"]
    assert comparison["baseline_labels"] == labels[-1]
    assert comparison["baseline_final_rmse"] == pytest.approx(curves["random"][str(labels[-1])])
    queries = (labels[-1] - labels[0]) * len(metrics["seeds"])
    for strategy in ("qbc", "random"):
        assert sum(metrics["queried_origins"][strategy].values()) == queries
    # the label count the chapter quotes is the first at which the committee's mean curve reaches random's final RMSE
    reached = [n for n in labels if curves["qbc"][str(n)] <= comparison["baseline_final_rmse"]]
    assert comparison["labels_needed"] == (reached[0] if reached else None)
    if reached:
        assert comparison["label_fraction"] == pytest.approx(reached[0] / labels[-1])
    if not metrics["quick"]:
        assert comparison["label_fraction"] is not None and comparison["label_fraction"] <= 0.5  # the target


@pytest.mark.notebook
def test_panel_ran_one_more_round(metrics):
    labels = metrics["settings"]["labels"]
    for row in metrics["panel_rows"].values():
        assert row["labels"] == labels[-1] + labels[-1] // 4
        assert math.isfinite(row["test_rmse"])
