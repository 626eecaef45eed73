"""The benchmarks appendix executed in quick mode: every section runs, and the numbers its prose
quotes are recorded."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.usefixtures("real_data")


@pytest.mark.notebook
def test_appendix_runs_every_section(run_chapter):
    metrics = run_chapter("appendix_benchmarks")
    assert metrics["sections"] == ["throughput", "limit", "accuracy", "loading", "size"]
    assert metrics["ratio_engine_torchani_256"] > 0
    assert set(metrics["limit_fraction"]) == {"256", "2560"}
    assert metrics["flops_per_conformation"] > 1e6


@pytest.mark.notebook
def test_appendix_separates_the_course_loops_and_records_what_its_prose_quotes(run_chapter):
    metrics = run_chapter("appendix_benchmarks")
    loops = {key.split("@")[0] for key in metrics["throughput"]}
    assert loops == {"engine", "torchani", "course", "course_precomputed", "course_flushed"}
    assert all(v > 0 for v in metrics["throughput"].values())
    assert "engine/course_flushed@256" in metrics["ratios"]
    assert set(metrics["size_growth"]) == {"engine", "torchani"}
    assert all(math.isfinite(v) and v > 0 for v in metrics["size_growth"].values())
    assert metrics["caps"] == {"engine": 5.0, "torchani": 5.0}  # quick mode's caps
    assert [row["repeat"] for row in metrics["loading"]] == [1, 10]
    assert all(row["data_mb"] is not None for row in metrics["loading"])
