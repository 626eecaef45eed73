"""Chapter 3 executed in quick mode: the numbers its prose quotes."""

from __future__ import annotations

import pytest

from test_aev import TOLERANCE

pytestmark = pytest.mark.usefixtures("real_data")


@pytest.mark.notebook
def test_chapter_runs_and_records_its_numbers(run_chapter):
    metrics = run_chapter("03_aevs")
    assert metrics["aev_length"] == 384
    assert metrics["radial_length"] == 64 and metrics["angular_length"] == 320
    assert metrics["conformations_compared"] >= 600
    assert metrics["max_abs_diff_vs_torchani"] < TOLERANCE
    for key in ("rotation_error", "translation_error", "permutation_error"):
        assert metrics[key] < 1e-4, key
    assert metrics["stretch_max_change"] > 1e-3
    for key in ("time_precompute_s", "time_in_model_epoch_s", "time_in_model_with_forces_epoch_s",
                "time_cached_epoch_s"):
        assert metrics[key] > 0, key
