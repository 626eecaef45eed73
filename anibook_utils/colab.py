"""The setup cell that opens every chapter (chapter 7 explains it).

On Google Colab it clones this repository and installs the helper package into Colab's own
environment: the package asks only for lower bounds that Colab's preinstalled versions meet
(torch, numpy, ipywidgets 7, matplotlib, ...), so pip adds what Colab lacks (torchani, py3Dmol,
and PySCF in the chapters that compute reference labels) and changes nothing Colab has. It then
fetches the data and reports the GPU, which the training engine uses (``device="auto"``);
anywhere else it does nothing. The text lives here so that tests can check every chapter carries
the right cell (tests/test_book.py), run its Colab branch with a fake Colab module
(tests/test_colab.py), and run it for real in a stand-in for Colab's runtime
(tests/test_colab_parity.py). The repository and branch must match ``repository`` in
``_config.yml``, which the Colab launch buttons use (tests/test_colab.py checks both).
"""

from __future__ import annotations

import sys
from typing import Sequence

REPOSITORY_URL = "https://github.com/anibook/anibook"
REPOSITORY_BRANCH = "main"

CHAPTER_EXTRAS: dict[str, tuple[str, ...]] = {"08_reference_labels": ("reference",),
                                               "09_using_the_potential": ("reference",),
                                               "11_active_learning": ("reference",)}
"""Optional dependencies (``pyproject.toml`` extras) a chapter's setup cell installs on Colab."""


def setup_cell(extras: Sequence[str] = ()) -> str:
    """The setup cell's text; ``extras`` are the package extras the chapter needs (e.g. ``reference``)."""
    target = "str(repo)" if not extras else f'f"{{repo}}[{",".join(extras)}]"'
    return f'''# Setup: on Google Colab, install the helpers, fetch the data and look for a GPU; elsewhere, nothing.
import subprocess, sys
from pathlib import Path

if "google.colab" in sys.modules:
    repo = Path("anibook").resolve()
    if not repo.exists():
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{REPOSITORY_BRANCH}",
                        "{REPOSITORY_URL}", str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", {target}], check=True)
    sys.path.insert(0, str(repo))
    subprocess.run([sys.executable, "-m", "anibook_utils", "fetch-data"], check=True)
    import torch
    if torch.cuda.is_available():
        print(f"Training runs on the GPU: {{torch.cuda.get_device_name(0)}}")
    else:
        print("No GPU: training runs on the CPU (Runtime > Change runtime type > GPU is faster).")'''


SETUP_CELL = setup_cell()
"""The setup cell of a chapter that needs no extras."""


def chapter_setup_cell(chapter: str) -> str:
    """The setup cell of ``chapter`` (a notebook's stem, e.g. ``"08_reference_labels"``)."""
    return setup_cell(CHAPTER_EXTRAS.get(chapter, ()))


def enable_widgets() -> None:
    """On Colab with ipywidgets 8 or later, switch on Colab's custom widget manager, which
    those versions need there; Colab's own ipywidgets 7 (and every other front end) needs nothing."""
    if "google.colab" not in sys.modules:
        return
    import ipywidgets

    if int(ipywidgets.__version__.split(".")[0]) >= 8:
        from google.colab import output

        output.enable_custom_widget_manager()
