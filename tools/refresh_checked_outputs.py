"""Copy the outputs of the checked cells (``# NBVAL_CHECK_OUTPUT``) from an executed notebook.

Usage: python tools/refresh_checked_outputs.py book/05_regularization.ipynb EXECUTED.ipynb

Run the chapter in quick mode first (``ANIBOOK_QUICK=1 papermill book/X.ipynb EXECUTED.ipynb --cwd
book``), check the new outputs are right, then commit: the tests compare the checked cells of
every quick run with what the notebook commits.
"""

from __future__ import annotations

import sys

import nbformat

from strip_outputs import MARKER, strip


def refresh(committed_path: str, executed_path: str) -> int:
    """Copy the marked cells' outputs (matched by cell id); return how many were copied."""
    executed = {c.id: c for c in nbformat.read(executed_path, as_version=4).cells}
    committed = nbformat.read(committed_path, as_version=4)
    copied = 0
    for cell in committed.cells:
        if cell.cell_type == "code" and MARKER in cell.source:
            source = executed[cell.id]
            cell.outputs = [o for o in source.outputs if o.output_type != "error"]
            cell.execution_count = None
            for output in cell.outputs:
                if "execution_count" in output:
                    output.execution_count = None
            copied += 1
    nbformat.write(committed, committed_path)
    strip(committed_path)
    return copied


if __name__ == "__main__":
    print(f"{refresh(sys.argv[1], sys.argv[2])} checked cell(s) refreshed in {sys.argv[1]}")
