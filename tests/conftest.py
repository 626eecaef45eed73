"""Shared fixtures: hermetic environment, the real data file, and chapter execution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # Never download during tests; point at the shared copy of ANI-1 when nothing else is set.
    os.environ["ANIBOOK_OFFLINE"] = "1"
    if not os.environ.get("ANIBOOK_DATA_DIR") and (SHARED_DATA / "ani_gdb_s01.h5").is_file():
        os.environ["ANIBOOK_DATA_DIR"] = str(SHARED_DATA)
    os.environ.setdefault("ANIBOOK_QUICK", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test session gets its own cache folder (never the user's)."""
    os.environ["ANIBOOK_CACHE_DIR"] = str(tmp_path_factory.mktemp("anibook-cache"))


@pytest.fixture(scope="session")
def real_data():
    """The ani_gdb_s01 data set; skipped locally without it, an error on CI."""
    from anibook_utils.data import DataFileNotFoundError, load_dataset

    try:
        return load_dataset(download=False, fallback=False)
    except DataFileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"ANI-1 data not available: {exc}")


@pytest.fixture(scope="session")
def run_chapter(tmp_path_factory: pytest.TempPathFactory, real_data):
    """Execute a chapter in quick mode with papermill (once per session) and return its metrics."""
    import papermill

    done: dict[tuple, dict] = {}
    root = tmp_path_factory.mktemp("chapters")

    def run(name: str, **parameters: object) -> dict:
        key = (name, tuple(sorted(parameters.items())))
        if key not in done:
            out = root / f"{name}-{len(done)}"
            out.mkdir()
            os.environ["ANIBOOK_METRICS_DIR"] = str(out)
            papermill.execute_notebook(
                str(BOOK / f"{name}.ipynb"),
                str(out / f"{name}.ipynb"),
                parameters={"QUICK": True, **parameters},
                cwd=str(BOOK),
                kernel_name="python3",
                progress_bar=False,
            )
            metrics_file = out / f"{name}.json"
            done[key] = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        return done[key]

    return run


@pytest.fixture(scope="session")
def quick_book(tmp_path_factory: pytest.TempPathFactory, real_data) -> Path:
    """Build the whole book once in quick mode, warnings as errors; return the HTML folder."""
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, ANIBOOK_QUICK="1", ANIBOOK_METRICS_DIR=str(out / "metrics"))
    env.pop("MPLBACKEND", None)  # the kernels keep their inline backend: with Agg the pages have no figures
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(out), "-W", "--keep-going"],
        env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.fail("jupyter-book build failed:\n" + result.stdout[-6000:] + result.stderr[-3000:])
    return out / "_build" / "html"
