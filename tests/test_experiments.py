"""Experiment grids (anibook_utils.experiments, chapter 5)."""

from __future__ import annotations

import json
import math

import pytest

from anibook_utils.data import split_dataset
from anibook_utils.experiments import (ADAM_SGD, ARCHITECTURES, TABLE_COLUMNS, ExperimentTable, Run,
                                       make_grid, run_grid, subsample)
from anibook_utils.models import ArchitectureSpec
from anibook_utils.training import ConfigError, TrainConfig


def test_architectures_include_course_and_one_layer_of_64():
    assert ARCHITECTURES["course"] == ArchitectureSpec.course()
    assert all(widths == (64,) for widths in ARCHITECTURES["1x64"].hidden.values())
    sizes = [spec.num_parameters() for spec in ARCHITECTURES.values()]
    assert sizes == sorted(sizes, reverse=True)  # course > half > 1x64


def test_make_grid_is_the_full_product_in_order():
    runs = make_grid(["course", "1x64"], ["adam", "sgd", ADAM_SGD], weight_decays=[0.0, 1e-4], seeds=[0, 1, 2],
                     epochs=5)
    assert len(runs) == 2 * 3 * 2 * 3
    assert [r.seed for r in runs[:3]] == [0, 1, 2]
    assert runs[0].architecture == "course" and runs[-1].architecture == "1x64"
    assert all(r.epochs == 5 and r.batch_size == 2560 and r.lr == 1e-3 for r in runs)
    assert len({r.key() for r in runs}) == len(runs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(architecture="huge", optimizer="adam"), "Unknown architecture"),
    (dict(architecture="course", optimizer="lbfgs"), "Unknown optimizer"),
    (dict(architecture="course", optimizer=ADAM_SGD, epochs=1), "at least 2 epochs"),
    (dict(architecture="course", optimizer=ADAM_SGD, switch_fraction=1.0), "switch_fraction"),
    (dict(architecture="course", optimizer="adam", train_size=0), "train_size"),
    (dict(architecture="course", optimizer="adam", lr=-1.0), "lr must be"),
    (dict(architecture="course", optimizer="adam", options={"colour": "red"}), "Unknown TrainConfig field"),
])
def test_bad_runs_are_refused_with_a_helpful_message(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Run(**kwargs)


def test_adam_sgd_phases_split_the_epochs():
    assert Run("course", ADAM_SGD, epochs=20).phase_epochs == (10, 10)
    assert Run("course", ADAM_SGD, epochs=3, switch_fraction=0.9).phase_epochs == (2, 1)
    assert Run("course", ADAM_SGD, epochs=2, switch_fraction=0.1).phase_epochs == (1, 1)
    assert Run("course", ADAM_SGD).config().optimizer == "adam"
    assert Run("course", ADAM_SGD).config("sgd", 7).optimizer == "sgd"


def test_run_from_config_keeps_every_setting():
    config = TrainConfig.fast(batch_size=64, epochs=7)
    run = Run.from_config("1x64", config, seed=3, train_size=100)
    assert run.seed == 3 and run.train_size == 100 and run.batch_size == 64 and run.epochs == 7
    assert run.config() == config.replace(seed=3, exact_train_metrics=True)


def test_run_key_depends_on_settings_not_on_object_identity():
    assert Run("course", "adam", seed=1).key() == Run("course", "adam", seed=1).key()
    assert Run("course", "adam", seed=1).key() != Run("course", "adam", seed=2).key()
    assert Run("course", "adam").key() != Run("course", "adam", weight_decay=1e-4).key()


def test_subsample_is_nested_and_checked(real_data):
    small, large = subsample(real_data, 50, seed=4), subsample(real_data, 200, seed=4)
    assert len(small) == 50 and len(large) == 200
    small_set = {tuple(x) for x in small.coordinates.reshape(50, -1).tolist()}
    large_set = {tuple(x) for x in large.coordinates.reshape(200, -1).tolist()}
    assert small_set <= large_set
    assert subsample(real_data, len(real_data)) is real_data
    with pytest.raises(ValueError, match="between 1 and"):
        subsample(real_data, len(real_data) + 1)
    with pytest.raises(ValueError, match="between 1 and"):
        subsample(real_data, 0)


def test_table_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the grid first"):
        ExperimentTable.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ExperimentTable.load(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not an anibook experiment table"):
        ExperimentTable.load(other)


@pytest.fixture(scope="module")
def tiny_grid(real_data, tmp_path_factory):
    train_set, val_set = split_dataset(real_data, 0.8, seed=0)
    val_small = subsample(val_set, 400, seed=0)
    path = tmp_path_factory.mktemp("grid") / "grid.json"
    runs = make_grid(["1x64"], ["adam", ADAM_SGD], weight_decays=[0.0], seeds=[0, 1], epochs=4, train_size=600)
    table = run_grid(runs, train_set, val_small, path=path, progress=False)
    return runs, table, path, train_set, val_small


def test_grid_table_has_the_documented_schema(tiny_grid):
    runs, table, path, *_ = tiny_grid
    frame = table.frame()
    assert list(frame.columns) == list(TABLE_COLUMNS)
    assert len(frame) == len(runs)
    assert (frame.train_size == 600).all() and (frame.parameters == ARCHITECTURES["1x64"].num_parameters()).all()
    assert (frame.epochs == 4).all()
    for column in ("best_val_rmse", "final_val_rmse", "final_train_rmse", "train_rmse_at_best", "train_time"):
        assert frame[column].map(math.isfinite).all() and (frame[column] > 0).all(), column
    assert (frame.best_val_rmse <= frame.final_val_rmse + 1e-12).all()
    assert frame.run_id.is_unique


def test_seeds_give_different_runs(tiny_grid):
    _, table, *_ = tiny_grid
    frame = table.frame()
    for optimizer, group in frame.groupby("optimizer"):
        assert sorted(group.seed) == [0, 1]
        assert group.best_val_rmse.nunique() == 2, optimizer
        curves = [tuple(r["val_rmse"] for r in table.history(run_id)) for run_id in group.run_id]
        assert curves[0] != curves[1]


def test_adam_then_sgd_history_has_both_phases(tiny_grid):
    _, table, *_ = tiny_grid
    for row in table.select(optimizer=ADAM_SGD).rows:
        history = table.history(row["run_id"])
        assert [r["epoch"] for r in history] == [1, 2, 3, 4]
        assert [r["phase"] for r in history] == ["adam", "adam", "sgd", "sgd"]
        times = history.column("time")
        assert times == sorted(times)


def test_grid_is_saved_and_reused_without_training(tiny_grid):
    runs, table, path, train_set, val_small = tiny_grid
    stored = ExperimentTable.load(path)
    assert {r["run_id"] for r in stored.rows} == {r["run_id"] for r in table.rows}
    trained = []
    again = run_grid(runs, train_set, val_small, path=path, progress=False, callback=trained.append)
    assert trained == []
    assert again.frame().equals(table.frame())
    one_more = runs + [Run("1x64", "adam", seed=2, epochs=2, train_size=300)]
    extended = run_grid(one_more, train_set, val_small, path=path, progress=False, callback=trained.append)
    assert len(trained) == 1 and len(extended) == len(runs) + 1
    assert len(ExperimentTable.load(path)) == len(runs) + 1


def test_duplicate_runs_are_refused(tiny_grid):
    runs, _, _, train_set, val_small = tiny_grid
    with pytest.raises(ConfigError, match="same run twice"):
        run_grid([runs[0], runs[0]], train_set, val_small, progress=False)


def test_summary_counts_seeds(tiny_grid):
    _, table, *_ = tiny_grid
    summary = table.summary(by=("optimizer",))
    assert set(summary.index) == {"adam", ADAM_SGD}
    assert (summary["count"] == 2).all()
    assert (summary["min"] <= summary["mean"]).all() and (summary["mean"] <= summary["max"]).all()
