"""Chapter 4 executed in quick mode: the padding leak, the engine, resuming and forces, in numbers."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("real_data")


@pytest.mark.notebook
def test_chapter_04_trains_and_records_its_results(run_chapter):
    m = run_chapter("04_model_training")
    assert m["quick"] is True
    assert m["padding_leak_hartree"] == {"CH4": 0.0, "NH3": pytest.approx(-1.0), "H2O": pytest.approx(-2.0)}
    assert m["torchani_max_abs_diff"] < 1e-6
    assert m["speedup_buckets"] > 0 and m["speedup_precompute"] > 0  # timings: recorded, not tested
    assert 0 < m["course_val_rmse"] < 20  # the course reported about 6 kcal/mol
    assert m["fast_val_rmse"] < 1.0 < m["course_val_rmse"]
    assert m["resume_matches"] is True
    assert m["force_max_error"] < 1e-5
