"""The book in a stand-in for Google Colab's runtime (tools/colab_env.py).

A cached virtual environment holds Colab's published version of every package the book touches
(torch: the 2.13.0 CPU build on this disk; Python 3.11 for Colab's 3.13). In it, as a reader's
Colab session would:

1. each distinct setup cell of the book runs with a fake ``google.colab`` module, cloning a local
   copy of this working tree in place of GitHub and installing it exactly as the cell does;
2. nothing Colab had changes version, and only packages Colab lacks are added;
3. every chapter runs in quick mode on a kernel of that environment, and the panel's tests pass
   with Colab's ipywidgets 7.

The ``colab`` fixture (tests/conftest.py) builds the environment and runs the setup cells once per
session; afterwards the environment is put back as it was (what the cells added is uninstalled).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from anibook_utils.colab import CHAPTER_EXTRAS
from book_layout import toc_files
from tools import colab_env

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [e for e in toc_files() if (ROOT / f"{e}.ipynb").is_file()]
KERNEL = "colab-standin"

pytestmark = [pytest.mark.notebook, pytest.mark.colab, pytest.mark.usefixtures("real_data")]


def test_the_setup_cells_install_the_book(colab):
    for run in colab["runs"]:
        assert run.returncode == 0, f"the setup cell failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        assert "GPU" in run.stdout
    assert (colab["clone"] / "anibook_utils").is_dir()
    assert "anibook-utils" in colab["after"]
    assert {"torchani", "py3dmol", "pyscf"} <= set(colab["after"]) - set(colab["baseline"])
    chapter_extras = {extra for extras in CHAPTER_EXTRAS.values() for extra in extras}
    assert chapter_extras and chapter_extras <= set(colab_env.BOOK_EXTRAS), "tools/colab_env.py BOOK_EXTRAS"


def test_nothing_colab_had_changes_version(colab):
    baseline, after = colab["baseline"], colab["after"]
    changed = {name: f"{version} -> {after.get(name, 'removed')}"
               for name, version in baseline.items() if after.get(name) != version}
    assert not changed, f"the setup cells changed Colab's packages: {changed}"
    colab_has = colab_env.colab_versions()
    added = {name: version for name, version in after.items() if name not in baseline}
    replaced = {n: f"Colab {colab_has[n]}, installed {v}" for n, v in added.items()
                if n in colab_has and v != colab_has[n]}
    assert not replaced, f"the setup cells installed other versions of packages Colab has: {replaced}"
    assert after["ipywidgets"].startswith("7.7"), after["ipywidgets"]


@pytest.fixture(scope="module")
def colab_kernel(colab):
    """A Jupyter kernel spec that starts the stand-in environment's Python."""
    folder = colab["tmp"] / "jupyter"
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(colab["python"]), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab stand-in", "language": "python",
        "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}}))  # ipykernel 6.17's debugger warns on Python 3.11
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(folder), previous]))
    yield KERNEL
    if previous is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = previous


def test_the_kernel_is_the_colab_stand_in(colab, colab_kernel):
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(colab_kernel).argv[0] == str(colab["python"])


@pytest.mark.parametrize("entry", CHAPTERS)
def test_chapter_runs_in_quick_mode(colab, colab_kernel, entry):
    import papermill

    notebook = colab["clone"] / f"{entry}.ipynb"
    out = colab["tmp"] / "executed" / notebook.name
    out.parent.mkdir(exist_ok=True)
    os.environ["ANIBOOK_METRICS_DIR"] = str(out.parent / "metrics")
    papermill.execute_notebook(str(notebook), str(out), parameters={"QUICK": True}, cwd=str(notebook.parent),
                               kernel_name=colab_kernel, progress_bar=False)
    assert out.is_file()


def test_widget_tests_pass_with_colabs_ipywidgets(colab):
    result = subprocess.run(
        [str(colab["python"]), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_widgets.py"],
        cwd=colab["clone"], capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"),
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-500:]
