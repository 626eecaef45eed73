"""Chapter 10 executed in quick mode: the cost model, streaming, and the trainer on one and two processes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("real_data")


@pytest.mark.notebook
def test_chapter_10_streams_and_trains_on_two_processes(run_chapter):
    m = run_chapter("10_scaling_up")
    assert m["quick"] is True
    assert m["aev_bytes_per_atom"] == 384 * 4
    assert m["ani1_bound_gb"] == pytest.approx(20e6 * 26 * 1536 / 1e9)
    assert all(rate > 0 for rate in m["rates_conformations_per_s"].values())
    assert sum(m["stream_sizes"]) == 10800 and m["stream_index_bytes_per_conformation"] < 2
    assert 0 < m["stream_test_rmse"] < 50
    # streamed training's memory does not grow with the data (10^4 -> 10^5 conformations here)
    assert m["memory_conformations"] == [10800, 108000]
    assert abs(m["memory_growth_mb"]) < 30
    assert all(run["returncode"] == 0 and run["epochs"] == 2 for run in m["runs"].values())
    assert m["ddp_weight_difference"] < 1e-4  # two processes reach one process's weights
    distinct, total, size = m["exercise_covered"]
    assert distinct == total == size and sum(m["exercise_shares"]) == size
