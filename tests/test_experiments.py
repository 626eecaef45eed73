"""Experiment grids (anibook_utils.experiments, chapter 5)."""

from __future__ import annotations

import json
import math

import pytest

from anibook_utils.data import BOOK_SPLIT, split_dataset
from anibook_utils.experiments import (ADAM_SGD, ARCHITECTURES, TABLE_COLUMNS, ExperimentTable, Run, _train,
                                       equal_step_runs, make_grid, run_grid, subsample)
from anibook_utils.feeding import evaluate
from anibook_utils.models import ArchitectureSpec
from anibook_utils.training import ConfigError, TrainConfig


def test_architectures_include_course_and_one_layer_of_64():
    assert ARCHITECTURES["course"] == ArchitectureSpec.course()
    assert all(widths == (64,) for widths in ARCHITECTURES["1x64"].hidden.values())
    sizes = [spec.num_parameters() for spec in ARCHITECTURES.values()]
    assert sizes == sorted(sizes, reverse=True)  # course > half > 1x64


def test_make_grid_is_the_full_product_in_order():
    runs = make_grid(["course", "1x64"], ["adam", "torchani", ADAM_SGD], weight_decays=[0.0, 1e-4],
                     seeds=[0, 1, 2], epochs=5)
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
    (dict(architecture="course", optimizer=ADAM_SGD, options={"standardize": True}), "neither"),
    (dict(architecture="course", optimizer="adam", train_size=0), "train_size"),
    (dict(architecture="course", optimizer="adam", train_size=2.5), "train_size"),
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
    assert run.config() == config.replace(seed=3)
    exact = Run.from_config("1x64", config.replace(exact_train_metrics=True))
    assert exact.config().exact_train_metrics and not run.config().exact_train_metrics


def test_run_key_depends_on_settings_and_all_three_sets(real_data):
    assert Run("course", "adam", seed=1).key() == Run("course", "adam", seed=1).key()
    assert Run("course", "adam", seed=1).key() != Run("course", "adam", seed=2).key()
    assert Run("course", "adam").key() != Run("course", "adam", weight_decay=1e-4).key()
    train, val, test = split_dataset(real_data, BOOK_SPLIT, seed=0)
    run = Run("1x64", "adam")
    assert run.key(train, val, test) != run.key(train, val, None) != run.key(train, val, subsample(test, 10))


def test_equal_step_runs_give_every_size_the_same_steps():
    runs = equal_step_runs([135, 540, 2160], steps=96, batch_size=45, seeds=[0, 1])
    assert [r.train_size for r in runs] == [135, 135, 540, 540, 2160, 2160]
    assert [r.epochs for r in runs[::2]] == [32, 8, 2]
    assert {r.steps(10_000) for r in runs} == {96}
    assert all(r.batch_size == 45 and r.optimizer == "adamw" and r.config().schedule == "onecycle" for r in runs)
    decayed = equal_step_runs([135], steps=96, batch_size=45, seeds=[0], weight_decay=0.1, architecture="1x64")
    assert decayed[0].weight_decay == 0.1 and decayed[0].architecture == "1x64"
    with pytest.raises(ConfigError, match="multiples of the batch size"):
        equal_step_runs([100], steps=96, batch_size=45)  # batches of 45, 45 and 10
    with pytest.raises(ConfigError, match="divide 96 steps"):
        equal_step_runs([225], steps=96, batch_size=45)  # 5 batches per epoch
    with pytest.raises(ConfigError, match="multiples of the batch size"):
        equal_step_runs([0], steps=96, batch_size=45)


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
def sets(real_data):
    train_set, val_set, test_set = split_dataset(real_data, BOOK_SPLIT, seed=0)
    return train_set, subsample(val_set, 400, seed=0), subsample(test_set, 300, seed=0)


@pytest.mark.parametrize("optimizer", ["adam", ADAM_SGD])
def test_the_selected_model_is_the_best_validation_epoch(sets, optimizer):
    """The row's selected model really is the epoch with the lowest validation RMSE (for adam+sgd,
    over both phases), and the last model the last epoch."""
    train_set, val_set, _ = sets
    run = Run("1x64", optimizer, epochs=4, train_size=300, lr=3e-3)
    trained = _train(run, subsample(train_set, 300, seed=0), val_set, progress=False)
    best, last = trained.history.best("val_rmse"), trained.history[-1]
    assert evaluate(trained.model, val_set, trained.self_energies)["rmse"] == pytest.approx(best["val_rmse"], rel=1e-4)
    assert evaluate(trained.last_model, val_set, trained.self_energies)["rmse"] == pytest.approx(last["val_rmse"],
                                                                                                 rel=1e-4)


@pytest.fixture(scope="module")
def tiny_grid(sets, tmp_path_factory):
    train_set, val_set, test_set = sets
    path = tmp_path_factory.mktemp("grid") / "grid.json"
    runs = make_grid(["1x64"], ["adam", ADAM_SGD, "torchani"], weight_decays=[1e-4], seeds=[0, 1], epochs=4,
                     train_size=600)
    table = run_grid(runs, train_set, val_set, test_set, path=path, progress=False)
    return runs, table, path


def test_grid_table_has_the_documented_schema(tiny_grid, sets):
    runs, table, path = tiny_grid
    frame = table.frame()
    assert list(frame.columns) == list(TABLE_COLUMNS)
    assert len(frame) == len(runs)
    assert (frame.train_size == 600).all() and (frame.parameters == ARCHITECTURES["1x64"].num_parameters()).all()
    assert (frame.epochs == 4).all() and (frame.steps == 4).all()  # 600 conformations: one batch of 2560
    for column in ("train_rmse", "best_val_rmse", "test_rmse", "test_mae", "final_test_rmse", "final_val_rmse",
                   "final_train_rmse", "train_time"):
        assert frame[column].map(math.isfinite).all() and (frame[column] > 0).all(), column
    assert (frame.best_val_rmse <= frame.final_val_rmse + 1e-12).all()
    assert (frame.test_mae <= frame.test_rmse + 1e-12).all()
    assert frame.run_id.is_unique
    assert all(len(row["test_errors"]) == len(sets[2]) for row in table.rows)
    assert list(table.frame(["optimizer", "test_rmse"]).columns) == ["optimizer", "test_rmse"]
    with pytest.raises(KeyError, match="Unknown column"):
        table.frame(["colour"])


def test_the_torchani_reading_is_in_the_grid(tiny_grid):
    _, table, _ = tiny_grid
    rows = table.select(optimizer="torchani").rows
    assert len(rows) == 2 and all(r["run"]["optimizer"] == "torchani" for r in rows)
    adam = {r["seed"]: r["test_rmse"] for r in table.select(optimizer="adam").rows}
    assert all(r["test_rmse"] != adam[r["seed"]] for r in rows)  # a different optimizer, a different model


def test_seeds_give_different_runs(tiny_grid):
    _, table, _ = tiny_grid
    frame = table.frame()
    for optimizer, group in frame.groupby("optimizer"):
        assert sorted(group.seed) == [0, 1]
        assert group.test_rmse.nunique() == 2, optimizer
        curves = [tuple(r["val_rmse"] for r in table.history(run_id)) for run_id in group.run_id]
        assert curves[0] != curves[1]


def test_adam_then_sgd_history_has_both_phases(tiny_grid):
    _, table, _ = tiny_grid
    for row in table.select(optimizer=ADAM_SGD).rows:
        history = table.history(row["run_id"])
        assert [r["epoch"] for r in history] == [1, 2, 3, 4]
        assert [r["phase"] for r in history] == ["adam", "adam", "sgd", "sgd"]
        times = history.column("time")
        assert times == sorted(times)
        assert row["best_val_rmse"] == min(history.column("val_rmse"))


def test_grid_is_saved_and_reused_without_training(tiny_grid, sets):
    runs, table, path = tiny_grid
    train_set, val_set, test_set = sets
    stored = ExperimentTable.load(path)
    assert {r["run_id"] for r in stored.rows} == {r["run_id"] for r in table.rows}
    trained = []
    again = run_grid(runs, train_set, val_set, test_set, path=path, progress=False, callback=trained.append)
    assert trained == []
    assert again.frame().equals(table.frame())
    one_more = runs + [Run("1x64", "adam", seed=2, epochs=2, train_size=300)]
    extended = run_grid(one_more, train_set, val_set, test_set, path=path, progress=False, callback=trained.append)
    assert len(trained) == 1 and len(extended) == len(runs) + 1
    assert len(ExperimentTable.load(path)) == len(runs) + 1


def test_another_test_set_or_older_code_is_not_reused(tiny_grid, sets, tmp_path):
    runs, table, _ = tiny_grid
    train_set, val_set, test_set = sets
    path = ExperimentTable(table.rows).save(tmp_path / "grid.json")
    trained = []
    other = run_grid(runs[:1], train_set, val_set, subsample(test_set, 100, seed=1), path=path, progress=False,
                     callback=trained.append)
    assert len(trained) == 1 and len(other.rows[0]["test_errors"]) == 100
    old = tmp_path / "old.json"
    ExperimentTable([{**table.rows[0], "code": "from-older-code"}]).save(old)
    trained.clear()
    run_grid(runs[:1], train_set, val_set, test_set, path=old, progress=False, callback=trained.append)
    assert len(trained) == 1
    assert [r["code"] for r in ExperimentTable.load(old).rows] == [trained[0]["code"]]  # the stale row is gone


def test_reuse_false_trains_again_and_keeps_the_other_rows(tiny_grid, sets, tmp_path):
    runs, table, _ = tiny_grid
    train_set, val_set, test_set = sets
    path = tmp_path / "grid.json"
    ExperimentTable(table.rows).save(path)
    trained = []
    run_grid(runs[:1], train_set, val_set, test_set, path=path, reuse=False, progress=False, callback=trained.append)
    assert len(trained) == 1 and len(ExperimentTable.load(path)) == len(runs)


def test_duplicate_runs_are_refused(tiny_grid, sets):
    runs, *_ = tiny_grid
    with pytest.raises(ConfigError, match="same run twice"):
        run_grid([runs[0], runs[0]], *sets, progress=False)


def test_summary_reports_the_test_rmse_per_group(tiny_grid):
    _, table, _ = tiny_grid
    summary = table.summary(by=("optimizer",))
    assert set(summary.index) == {"adam", ADAM_SGD, "torchani"}
    assert (summary["count"] == 2).all()
    assert (summary["min"] <= summary["mean"]).all() and (summary["mean"] <= summary["max"]).all()
    assert summary.loc["adam", "mean"] == pytest.approx(
        sum(r["test_rmse"] for r in table.select(optimizer="adam").rows) / 2)


def test_ensemble_averages_the_predictions(tiny_grid, sets):
    _, table, _ = tiny_grid
    rows = table.select(optimizer="adam").rows
    ids = [r["run_id"] for r in rows]
    assert table.ensemble_rmse(ids[:1]) == pytest.approx(rows[0]["test_rmse"], abs=1e-4)
    # the error of the average is at most the average error (and here below it: the seeds disagree)
    assert table.ensemble_rmse(ids) < sum(r["test_rmse"] for r in rows) / len(rows)
    with pytest.raises(ValueError, match="same test set"):
        ExperimentTable([rows[0], {**rows[1], "test_set": "another"}]).ensemble_rmse()
    with pytest.raises(ValueError, match="at least one run"):
        table.ensemble_rmse([])


def test_runs_without_a_test_set_have_no_test_numbers(sets):
    train_set, val_set, _ = sets
    table = run_grid([Run("1x64", "adam", epochs=2, train_size=300)], train_set, val_set, progress=False)
    row = table.rows[0]
    assert row["test_rmse"] is None and row["test_errors"] is None and math.isfinite(row["train_rmse"])
    with pytest.raises(ValueError, match="pass test_data"):
        table.summary()
