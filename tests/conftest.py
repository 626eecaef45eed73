"""Shared fixtures: hermetic environment, the real data file, and chapter execution."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

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


@dataclass
class ExecutedChapter:
    """A chapter executed once in quick mode: the executed notebook and the metrics it recorded."""

    notebook: Path
    metrics: dict


@pytest.fixture(scope="session")
def executed(tmp_path_factory: pytest.TempPathFactory, real_data):
    """``executed(name)``: run a chapter once per session in quick mode with papermill.

    Every check of a chapter reads this one execution: its metrics (test_chNN_*), its checked
    outputs (test_book) and its rendered page (the ``quick_book`` fixture builds from it).
    """
    import papermill

    done: dict[str, ExecutedChapter] = {}
    root = tmp_path_factory.mktemp("chapters")

    def run(name: str) -> ExecutedChapter:
        if name not in done:
            out = root / name
            out.mkdir()
            # quick mode comes from ANIBOOK_QUICK; the kernel keeps its inline backend, so the
            # executed notebook holds the figures the book shows
            env = {"ANIBOOK_METRICS_DIR": str(out), "ANIBOOK_QUICK": "1", "MPLBACKEND": None}
            with _environment(env):
                papermill.execute_notebook(str(BOOK / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
                                           cwd=str(BOOK), kernel_name="python3", progress_bar=False)
            metrics_file = out / f"{name}.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
            done[name] = ExecutedChapter(out / f"{name}.ipynb", metrics)
        return done[name]

    return run


@pytest.fixture(scope="session")
def run_chapter(executed):
    """``run_chapter(name)``: the metrics a chapter recorded in its one quick execution."""
    return lambda name: executed(name).metrics


@contextlib.contextmanager
def _environment(changes: dict[str, str | None]):
    """Set (or, for None, remove) environment variables for the duration of a block."""
    saved = {k: os.environ.get(k) for k in changes}
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def copy_working_tree(target: Path) -> Path:
    """Copy this working tree's tracked and new (not ignored) files to ``target``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="session")
def quick_book(tmp_path_factory: pytest.TempPathFactory, executed) -> Path:
    """The whole book built from the chapters' one quick execution (no second run), warnings as
    errors; return the HTML folder."""
    from book_layout import toc_files

    source = copy_working_tree(tmp_path_factory.mktemp("book-source"))
    for entry in toc_files():
        if (ROOT / f"{entry}.ipynb").is_file():
            shutil.copy(executed(Path(entry).name).notebook, source / f"{entry}.ipynb")
    config = yaml.safe_load((source / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"  # the notebooks carry their outputs
    (source / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(source), "--path-output", str(out), "-W", "--keep-going"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.fail("jupyter-book build failed:\n" + result.stdout[-6000:] + result.stderr[-3000:])
    return out / "_build" / "html"


# -- the stand-in for Colab's runtime (tools/colab_env.py) ---------------------------------------


def working_tree_repository(target: Path) -> Path:
    """A git repository on branch main holding this working tree (tracked and new files, not
    ignored ones): what a reader's ``git clone`` of the pushed branch would get."""
    copy_working_tree(target)
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


@pytest.fixture(scope="session")
def playwright_session():
    """One Playwright for the whole test session: the browser tests and the front-end tests each
    launch their Chromium under it (a second ``sync_playwright()`` while one is running fails with
    "using Playwright Sync API inside the asyncio loop")."""
    from browser_support import require_browser

    sync_playwright = require_browser()
    with sync_playwright() as playwright:
        yield playwright
