"""The benchmarks appendix executed in quick mode: every section runs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("real_data")


@pytest.mark.notebook
def test_appendix_runs_every_section(run_chapter):
    metrics = run_chapter("appendix_benchmarks")
    assert metrics["sections"] == ["throughput", "limit", "accuracy", "loading", "size"]
    assert metrics["ratio_engine_torchani_256"] > 0
    assert set(metrics["limit_fraction"]) == {"256", "2560"}
    assert metrics["flops_per_conformation"] > 1e6
