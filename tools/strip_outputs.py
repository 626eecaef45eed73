"""Strip notebook outputs, keeping only the cells that nbval checks (``# NBVAL_CHECK_OUTPUT``).

Usage: python tools/strip_outputs.py book/*.ipynb
"""

from __future__ import annotations

import sys

import nbformat

MARKER = "NBVAL_CHECK_OUTPUT"


def strip(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type != "code":
            continue
        if MARKER in cell.source:
            continue
        cell.outputs = []
        cell.execution_count = None
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)  # saved widget state: hundreds of KB, meaningless without a kernel
    nbformat.write(nb, path)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        strip(name)
