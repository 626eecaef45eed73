"""The benchmark suite's pieces (counts, tables, scaled data) and the appendix page in quick mode.

No test here asserts a speed: speed is what the suite prints, not something a test can pin.
"""

from __future__ import annotations

import h5py
import pytest
import torch

from anibook_utils.aev import precompute_aevs
from anibook_utils.data import read_ani_h5
from benchmarks.flops import GemmShape, batch_atoms, training_flops_per_conformation, training_gemms
from benchmarks.molecule_size import replicate
from benchmarks.scaling import write_repeated
from benchmarks.suite import table

pytestmark = pytest.mark.usefixtures("real_data")


def test_gemm_count_by_hand():
    # one element, AEV 4 -> 3 -> 1, two atoms: forward 2*(2*4*3 + 2*3*1), weight grads the same,
    # input gradient only for the second layer: 2*2*1*3
    shapes = training_gemms({"H": (3,)}, {"H": 2}, aev_dim=4)
    assert shapes == [GemmShape(2, 4, 3), GemmShape(4, 2, 3), GemmShape(2, 3, 1), GemmShape(3, 2, 1),
                      GemmShape(2, 1, 3)]
    assert sum(s.flops for s in shapes) == 2 * (24 + 6) * 2 + 12


def test_flops_per_conformation_of_the_course_model(real_data):
    from anibook_utils.models import ArchitectureSpec

    hidden = dict(ArchitectureSpec.course().hidden)
    per_atom = {e: sum(s.flops for s in training_gemms(hidden, {e: 1})) for e in "HCNO"}
    counts = real_data.element_counts()
    expected = sum(per_atom[e] * counts[e] for e in "HCNO") / len(real_data)
    assert training_flops_per_conformation(hidden, real_data) == pytest.approx(expected, rel=1e-6)
    assert batch_atoms(real_data, 2560)["H"] == round(2560 * counts["H"] / len(real_data))


def test_table_marks_unreached_thresholds():
    text = table([{"recipe": "x", "wall_s_to_1.0": None, "wall_s_to_0.3": 2.0}],
                 [("recipe", "recipe", ""), ("wall_s_to_1.0", "s to 1", ".1f"), ("wall_s_to_0.3", "s to 0.3", ".1f")])
    assert "not reached" in text and "2.0" in text


def test_repeated_file_has_repeated_conformations(real_data, tmp_path):
    total = write_repeated(real_data.source, tmp_path / "x3.h5", 3)
    assert total == 3 * len(real_data)
    big = read_ani_h5(tmp_path / "x3.h5")
    assert big.counts() == {k: 3 * v for k, v in real_data.counts().items()}
    with h5py.File(tmp_path / "x3.h5") as f:
        assert f["gdb11_s01/gdb11_s01-2/coordinates"].shape == (3 * 1800, 3, 3)


def test_replicated_molecules_keep_their_environments(real_data):
    methane = real_data.select_molecules(["CH4"]).subset(torch.arange(8))
    double = replicate(methane, 2)
    assert double.species.shape == (8, 10)
    single = precompute_aevs(methane)
    both = precompute_aevs(double)
    # each copy sees only itself: its atoms' AEVs equal the original's
    assert torch.allclose(both[:, :5], single, atol=1e-6)
    assert torch.allclose(both[:, 5:], single, atol=1e-4)  # float32 coordinates shifted by 20 Å


@pytest.mark.notebook
def test_appendix_runs_every_section(run_chapter):
    metrics = run_chapter("appendix_benchmarks")
    assert metrics["sections"] == ["throughput", "limit", "accuracy", "loading", "size"]
    assert metrics["ratio_engine_torchani_256"] > 0
    assert set(metrics["limit_fraction"]) == {"256", "2560"}
    assert metrics["flops_per_conformation"] > 1e6
