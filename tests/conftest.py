"""Shared fixtures: hermetic environment, the real data file, and chapter execution."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anibook_utils.colab import REPOSITORY_URL

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


# -- the stand-in for Colab's runtime (tools/colab_env.py) ---------------------------------------


def working_tree_repository(target: Path) -> Path:
    """A git repository on branch main holding this working tree (tracked and new files, not
    ignored ones): what a reader's ``git clone`` of the pushed branch would get."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git = ["git", "-c", "user.name=anibook", "-c", "user.email=anibook@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "working tree"], cwd=target, check=True)
    return target


def run_setup_cell(python: Path, cell: str, home: Path, repository: Path) -> subprocess.CompletedProcess:
    """Run a setup cell in ``python`` as Colab's kernel would (``google.colab`` imported), with
    the local ``repository`` in place of the GitHub URL."""
    assert REPOSITORY_URL in cell
    script = ("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
              + cell.replace(REPOSITORY_URL, str(repository)))
    return subprocess.run([str(python), "-c", script], cwd=home, capture_output=True, text=True)


@pytest.fixture(scope="session")
def colab(tmp_path_factory, real_data):
    """The stand-in environment after the book's setup cells ran in it: a dict with the
    environment, the clone, the versions before and after, and what each cell printed."""
    from anibook_utils.colab import chapter_setup_cell
    from book_layout import toc_files
    from tools import colab_env

    chapters = [e for e in toc_files() if (ROOT / f"{e}.ipynb").is_file()]
    env = colab_env.env_dir()
    with colab_env.locked(env):
        try:
            colab_env.build(env)
        except (RuntimeError, subprocess.CalledProcessError) as exc:  # e.g. no package registry
            if os.environ.get("CI"):
                raise
            pytest.skip(f"the Colab stand-in environment could not be built: {exc}")
        python = colab_env.python_of(env)
        baseline = colab_env.installed(env)
        tmp = tmp_path_factory.mktemp("colab")
        repository = working_tree_repository(tmp / "repository")
        home = tmp / "content"  # Colab's working folder
        home.mkdir()
        cells = list(dict.fromkeys(chapter_setup_cell(Path(e).name) for e in chapters))
        try:
            runs = [run_setup_cell(python, cell, home, repository) for cell in cells]
            yield {"env": env, "python": python, "clone": home / "anibook", "baseline": baseline,
                   "after": colab_env.installed(env), "runs": runs, "tmp": tmp}
        finally:
            colab_env.restore(env, baseline)


# -- say plainly what did not run -----------------------------------------------------------------

ENABLERS = {
    "tests/test_browser.py": "bash tools/install_browser.sh  (Debian's chromium and npm; needs root)",
    "tests/test_frontends.py": "bash tools/install_browser.sh  (Debian's chromium and npm; needs root)",
    "tests/test_colab_parity.py": "python tools/colab_env.py build  (needs the package registry once)",
}


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """End with one plain line per group of tests that were skipped for a missing tool."""
    skipped: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        module = report.nodeid.split("::")[0]
        if module in ENABLERS:
            skipped[module] = skipped.get(module, 0) + 1
    for module, count in skipped.items():
        terminalreporter.write_line(
            f"NOT RUN: {count} test(s) in {module} were skipped (see the skip reasons above); "
            f"to run them: {ENABLERS[module]}, then make test", yellow=True, bold=True)
