"""Chapter 2 executed in quick mode: the numbers its prose quotes."""

import json
import math
from pathlib import Path

import pytest

from test_ch01_data import exercise_problems

SHARED = Path(__file__).resolve().parents[2] / "shared"  # beside the repository, where present


notebook = pytest.mark.notebook


@pytest.fixture(scope="module")
def metrics(run_chapter, real_data):
    return run_chapter("02_self_energies")


@notebook
def test_raw_energies_are_thousands_of_kcal_off_and_shifted_a_few(metrics):
    assert metrics["rmse_raw_trivial_kcal"] > 1000
    assert 1.0 < metrics["rmse_shifted_trivial_kcal"] < 15.0
    assert metrics["rmse_shifted_trivial_kcal"] < metrics["rmse_gsae_trivial_kcal"] < metrics["rmse_raw_trivial_kcal"]


@notebook
def test_the_quick_model_learns_shifted_energies_far_better(metrics):
    assert metrics["rmse_shifted_mlp_kcal"] < 15.0
    assert metrics["rmse_raw_mlp_kcal"] > 20 * metrics["rmse_shifted_mlp_kcal"]


@notebook
def test_rank_deficiency_is_detected_and_reported(metrics):
    assert metrics["rank"] == 3
    assert metrics["is_unique"] is False
    (direction,) = metrics["null_space"]
    expected = [1 / math.sqrt(30), -4 / math.sqrt(30), -3 / math.sqrt(30), -2 / math.sqrt(30)]
    assert direction == pytest.approx(expected, abs=1e-9)
    assert any("rank 3 for 4 elements" in w for w in metrics["rank_warning"])


@notebook
def test_self_energy_tables(metrics):
    fitted, gsae = metrics["self_energies"], metrics["gsae"]
    assert set(fitted) == set(gsae) == {"H", "C", "N", "O"}
    assert gsae["H"] == pytest.approx(-0.4993212)
    # both fits give the same sum for methane: C + 4 H
    near = metrics["self_energies_closest_to_gsae"]
    assert fitted["C"] + 4 * fitted["H"] == pytest.approx(near["C"] + 4 * near["H"], abs=1e-9)


@notebook
def test_both_shifts_leave_the_same_spread_of_a_few_kcal_per_mol(metrics):
    by_fit = metrics["residual_std_by_molecule_kcal"]["fit"]
    by_gsae = metrics["residual_std_by_molecule_kcal"]["gsae"]
    assert set(by_fit) == {"CH4", "NH3", "H2O"}
    for name, std in by_fit.items():
        assert 1.0 < std < 15.0, name
        assert by_gsae[name] == pytest.approx(std, abs=1e-6)
    means = metrics["residual_mean_by_molecule_kcal"]
    assert all(abs(m) < 1.0 for m in means["fit"].values())
    assert all(m < -100 for m in means["gsae"].values())  # the binding energy GSAEs leave behind


NOTEBOOK = Path(__file__).resolve().parents[1] / "book" / "02_self_energies.ipynb"


def test_the_chapter_quotes_the_report_on_self_interaction_and_says_what_that_is():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    quote = "This technique accounted for the self-interaction energy within the model"
    assert quote in text and "{cite:p}`perdew1981self`" in text
    report = SHARED / "course" / "course-report.md"
    if report.is_file():  # the quotation is exact
        assert quote in report.read_text()


def test_chapter_2_ends_with_graded_exercises():
    assert exercise_problems(NOTEBOOK) == []
