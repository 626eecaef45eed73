"""Chapter 1 executed in quick mode, the viewer helpers it uses, and the exercise convention
every chapter follows (``exercise_problems``, shared with the other chapters' tests)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from anibook_utils.viewer import conformation, draw_molecule, find_bonds, molecule_viewer, to_xyz

chapter = pytest.mark.notebook
COUNTS = {"CH4": 5400, "NH3": 3600, "H2O": 1800}
BOOK = Path(__file__).resolve().parents[1] / "book"
LEVELS = ("Warm-up", "Practice", "Challenge")


def exercise_problems(notebook: Path) -> list[str]:
    """What breaks the exercise convention in a chapter: it must end with ``## Exercises``, 3 to 5
    exercises whose difficulty is marked (**Warm-up.**, **Practice.**, **Challenge.**), more than
    one level, each exercise followed by its worked solution in a code cell tagged ``hide-cell``."""
    cells = json.loads(notebook.read_text())["cells"]
    heads = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
             and "".join(c["source"]).lstrip().startswith("## Exercises")]
    if len(heads) != 1:
        return [f"{len(heads)} '## Exercises' sections (want one)"]
    problems, levels = [], []
    tail = cells[heads[0]:]
    for k, cell in enumerate(tail):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            if k and "\n## " in "\n" + source:
                problems.append(f"a section after the exercises: {source[:60]!r}")
            found = re.findall(r"\*\*(Warm-up|Practice|Challenge)\.\*\*", source)
            if len(found) != 1:
                problems.append(f"an exercise cell must mark one difficulty, not {found}: {source[:60]!r}")
            levels += found
            after = tail[k + 1] if k + 1 < len(tail) else None
            if after is None or after["cell_type"] != "code" or "hide-cell" not in after["metadata"].get("tags", []):
                problems.append(f"exercise without a hide-cell solution after it: {source[:60]!r}")
        elif "hide-cell" not in cell["metadata"].get("tags", []):
            problems.append(f"a code cell among the exercises is not a hidden solution: {source[:60]!r}")
    if not 3 <= len(levels) <= 5:
        problems.append(f"{len(levels)} exercises (want 3 to 5)")
    if len(set(levels)) < 2 or levels != sorted(levels, key=LEVELS.index):
        problems.append(f"difficulties not graded from warm-up up: {levels}")
    return problems


def test_chapter_1_ends_with_graded_exercises():
    assert exercise_problems(BOOK / "01_data.ipynb") == []


@pytest.fixture(scope="module")
def metrics(run_chapter):
    return run_chapter("01_data")


@chapter
def test_chapter_1_counts(metrics):
    assert metrics["counts"] == COUNTS
    assert metrics["total"] == 10_800


@chapter
def test_chapter_1_conformations_scale_with_normal_modes(metrics):
    assert metrics["conformations_per_mode"] == {"CH4": 600, "NH3": 600, "H2O": 600}
    assert metrics["element_counts"] == {"H": 36000, "C": 5400, "N": 3600, "O": 1800}


@chapter
def test_chapter_1_torchani_loaders_agree(metrics):
    assert metrics["torchani_agrees"] is True
    for key in ("torchani_counts", "batched_counts", "legacy_counts"):
        assert metrics[key] == COUNTS, key


@chapter
def test_chapter_1_split(metrics):
    assert metrics["split"] == {"train": 8640, "validation": 2160}
    for name, n in COUNTS.items():
        train = metrics["split_counts"]["train"][name]
        assert train + metrics["split_counts"]["validation"][name] == n
        assert 0.75 < train / n < 0.85, name


@chapter
def test_chapter_1_book_split_shares_the_course_training_set(metrics):
    assert metrics["book_split"] == {"train": 8640, "validation": 1080, "test": 1080}
    assert metrics["book_train_is_course_train"] is True
    parts = metrics["book_split_counts"]
    assert parts["train"] == metrics["split_counts"]["train"]
    for name, n in COUNTS.items():
        assert parts["train"][name] + parts["validation"][name] + parts["test"][name] == n, name
        # the book's validation and test sets are the two halves of the course's validation set
        assert parts["validation"][name] + parts["test"][name] == metrics["split_counts"]["validation"][name]


@chapter
def test_chapter_1_conformations_lie_far_above_room_temperature(metrics):
    """The prose: the sampling reaches far beyond thermal energies at room temperature."""
    for name in COUNTS:
        assert metrics["mean_above_lowest_room_kT"][name] > 5, name
        assert metrics["fraction_above_room_ceiling"][name] > 0.5, name


@chapter
def test_chapter_1_sampling_reaches_off_equilibrium(metrics):
    for name, (shortest, longest) in metrics["bond_length_range"].items():
        assert 0.7 < shortest < 0.95 and 1.1 < longest < 1.5, name
    for name, spread in metrics["energy_range_kcal"].items():
        assert 10 < spread < 100, name


WATER = (["O", "H", "H"], np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]))


def test_to_xyz_format():
    text = to_xyz(*WATER, comment="water")
    lines = text.splitlines()
    assert lines[0] == "3" and lines[1] == "water"
    assert lines[2].split()[0] == "O" and float(lines[3].split()[1]) == pytest.approx(0.96)


def test_to_xyz_rejects_mismatched_coordinates():
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        to_xyz(["O", "H", "H"], np.zeros((2, 3)))


def test_find_bonds_sees_two_oh_bonds_and_no_hh_bond():
    assert find_bonds(*WATER) == [(0, 1), (0, 2)]


def test_draw_molecule_draws_atoms_and_bonds():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    ax = fig.add_subplot(projection="3d")
    draw_molecule(ax, *WATER, title="H2O", reach=1.3)
    assert len(ax.lines) == 2  # two bonds
    assert len(ax.collections) == 2  # one scatter per element
    assert ax.get_xlim() == pytest.approx((-1.3, 1.3))
    plt.close(fig)


def test_molecule_viewer_builds_a_view_or_says_it_cannot():
    view = molecule_viewer([WATER, WATER])
    try:
        import py3Dmol  # noqa: F401
    except ImportError:
        assert view is None
    else:
        assert "3dmolviewer" in view._make_html()


@pytest.mark.usefixtures("real_data")
def test_conformation_strips_padding(real_data):
    water_row = int((real_data.molecule_ids == real_data.molecule_names.index("H2O")).nonzero()[0])
    symbols, xyz = conformation(real_data, water_row)
    assert symbols == ["O", "H", "H"] and xyz.shape == (3, 3)
    assert torch.equal(torch.from_numpy(xyz), real_data.coordinates[water_row, :3])


REPORT_QUOTES = (  # what the introduction and chapter 1 quote from the course's report about its data
    "we focused on a subset of the dataset involving only one heavy atom",
    "The dataset consists of molecular structures with up to 5 heavy atoms",
    "ANI-1_release/ani_gdb_s05.h5",
)


def test_intro_and_chapter_1_quote_the_report_on_which_file_it_used():
    flat = lambda text: " ".join(text.split())  # noqa: E731  (line breaks in markdown)
    cells = json.loads((BOOK / "01_data.ipynb").read_text())["cells"]
    chapter = flat("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"))
    intro = flat((BOOK / "intro.md").read_text())
    report = Path(__file__).resolve().parents[2] / "shared" / "course" / "course-report.md"
    for quote in REPORT_QUOTES:
        assert quote in chapter and quote in intro, quote
        if report.is_file():  # quoted exactly
            assert quote in flat(report.read_text()), quote
    assert "{cite:p}`gao2020torchani`" in intro and "3255-3263" in intro  # the report's wrong TorchANI reference, named
