"""Chapter 1 executed in quick mode, and the viewer helpers it uses."""

import numpy as np
import pytest
import torch

from anibook_utils.viewer import conformation, draw_molecule, find_bonds, molecule_viewer, to_xyz

chapter = pytest.mark.notebook
COUNTS = {"CH4": 5400, "NH3": 3600, "H2O": 1800}


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
