"""Create a chapter notebook with the standard opening cells (title, setup, parameters).

Usage: python tools/new_chapter.py book/03_aevs.ipynb "3. Atomic environment vectors"
       python tools/new_chapter.py --sync book/*.ipynb   # rewrite every chapter's setup cell
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from anibook_utils.colab import chapter_setup_cell

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
    setup = nbformat.v4.new_code_cell(chapter_setup_cell(Path(path).stem))
    setup.metadata["tags"] = ["hide-input"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), setup, parameters]
    nbformat.write(nb, path)


def sync_setup_cell(path: str) -> None:
    """Make the first code cell of ``path`` its current setup cell (input hidden in the book)."""
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    first.source = chapter_setup_cell(Path(path).stem)
    tags = first.metadata.setdefault("tags", [])
    if "hide-input" not in tags:
        tags.append("hide-input")
    nbformat.write(nb, path)


if __name__ == "__main__":
    if sys.argv[1] == "--sync":
        for name in sys.argv[2:]:
            sync_setup_cell(name)
    else:
        new_chapter(sys.argv[1], sys.argv[2])
