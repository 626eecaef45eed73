"""Chapter 1 executed in quick mode."""

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.usefixtures("real_data")]


def test_chapter_1_counts(run_chapter):
    metrics = run_chapter("01_data")
    assert metrics["counts"] == {"CH4": 5400, "NH3": 3600, "H2O": 1800}
    assert metrics["total"] == 10_800
