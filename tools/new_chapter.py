"""Create a chapter notebook with the standard opening cells (title, setup, parameters).

Usage: python tools/new_chapter.py book/03_aevs.ipynb "3. Atomic environment vectors"
"""

from __future__ import annotations

import sys

import nbformat

from anibook_utils.colab import SETUP_CELL

PARAMETERS_CELL = '''import os

# Parameters (papermill). QUICK shrinks the chapter for tests and CI; set ANIBOOK_QUICK=1.
QUICK = os.environ.get("ANIBOOK_QUICK", "0") == "1"
SEED = 0'''


def new_chapter(path: str, title: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    parameters = nbformat.v4.new_code_cell(PARAMETERS_CELL)
    parameters.metadata["tags"] = ["parameters"]
    setup = nbformat.v4.new_code_cell(SETUP_CELL)
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), setup, parameters]
    nbformat.write(nb, path)


if __name__ == "__main__":
    new_chapter(sys.argv[1], sys.argv[2])
