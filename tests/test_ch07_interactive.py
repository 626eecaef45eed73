"""Chapter 7 executed in quick mode: the runs it shows and the numbers its prose quotes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anibook_utils.models import ArchitectureSpec
from anibook_utils.widgets import DEFAULT_EPOCHS, TARGET_KCAL
from test_ch01_data import exercise_problems

notebook = pytest.mark.notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "book" / "07_interactive.ipynb"


@pytest.fixture(scope="module")
def metrics(run_chapter, real_data):
    return run_chapter("07_interactive")


@notebook
def test_the_default_run_completes_and_gets_below_one_kcal_per_mol(metrics):
    assert metrics["quick"] is True and metrics["panel_default_epochs"] == DEFAULT_EPOCHS
    assert metrics["default_stop_reason"] == "completed"
    assert metrics["default_epochs_run"] == metrics["epochs"] < DEFAULT_EPOCHS
    assert metrics["default_best_val_rmse"] < TARGET_KCAL
    assert 0 < metrics["default_seconds_to_target"] < metrics["default_wall_s"]
    assert metrics["default_parameters"] == ArchitectureSpec.course().num_parameters()


@notebook
def test_stopping_the_background_thread_keeps_the_best_epoch(metrics):
    assert metrics["stopped_reason"] == "stopped"
    assert metrics["stopped_epochs"] == metrics["stop_after"] == 3
    assert metrics["stopped_best_val_rmse"] == metrics["stopped_history_best"]
    assert metrics["stopped_eval_rmse"] == pytest.approx(metrics["stopped_best_val_rmse"], rel=1e-5)


@notebook
def test_the_runs_table_holds_both_runs(metrics):
    assert metrics["table_runs"] == [1, 2]
    assert metrics["table_status"] == ["completed", "completed"]
    small = ArchitectureSpec({e: (64,) for e in ("H", "C", "N", "O")})
    assert metrics["small_parameters"] == small.num_parameters()
    assert metrics["small_best_val_rmse"] > 0


@notebook
def test_refused_settings_leave_the_runs_alone(metrics):
    refusals = metrics["refusals"]
    assert set(refusals) == {"H layers '0'", "H layers 'abc'", "H layers ''", "H layers '-64'",
                             "lr = -0.001", "epochs = 0", "batch_size = -8"}
    assert all(message.startswith("Not started: ") for message in refusals.values())
    assert "width 0 is not possible" in refusals["H layers '0'"]
    assert "not a whole number" in refusals["H layers 'abc'"]
    assert "no hidden layers" in refusals["H layers ''"]
    assert "lr must be a positive number" in refusals["lr = -0.001"]
    assert metrics["runs_kept"] is True


@notebook
def test_the_live_curve_is_a_png(metrics):
    assert metrics["png_bytes"] > 1000
    assert 0 < metrics["redraw_seconds"] < 5


def test_the_static_page_says_the_panel_needs_a_kernel_and_links_to_colab():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "needs a running Python kernel" in text
    assert "https://colab.research.google.com/github/anibook/anibook/blob/main/book/07_interactive.ipynb" in text
    figures = [c for c in cells if c["cell_type"] == "code" and "plt.show()" in "".join(c["source"])]
    assert len(figures) == 2
    assert all(c["metadata"]["mystnb"]["figure"]["caption"].strip() for c in figures)


@notebook
def test_the_panel_selects_on_validation_and_the_chosen_run_is_tested(metrics):
    assert metrics["split_sizes"] == {"train": 8640, "validation": 1080, "test": 1080}
    assert metrics["chosen_best_val_rmse"] == min(metrics["runs_best_val_rmse"])
    assert metrics["chosen_run"] == 1 + metrics["runs_best_val_rmse"].index(metrics["chosen_best_val_rmse"])
    assert 0 < metrics["chosen_test_rmse"] < 10 * metrics["chosen_best_val_rmse"]


def test_chapter_7_ends_with_graded_exercises():
    assert exercise_problems(NOTEBOOK) == []
