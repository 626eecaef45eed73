"""What the chapters share with the book's build and tests: metric records and glue (every chapter).

Chapters call :func:`record_metrics` (in cells hidden from the pages) with the figures the
tests check; the test harness reads them back from the JSON file. :func:`glue` puts a
computed number into the prose. (Quick mode is each chapter's ``QUICK`` parameter, set from
``ANIBOOK_QUICK`` in its ``parameters`` cell.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write

METRICS_DIR_ENV = "ANIBOOK_METRICS_DIR"


def metrics_path(chapter: str) -> Path:
    """The JSON file holding ``chapter``'s metrics (``ANIBOOK_METRICS_DIR``, default ``_build/metrics``)."""
    folder = Path(os.environ.get(METRICS_DIR_ENV) or Path("_build") / "metrics")
    return folder / f"{chapter}.json"


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def record_metrics(chapter: str, **metrics: Any) -> Path:
    """Merge ``metrics`` into the chapter's JSON record and return its path."""
    path = metrics_path(chapter)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    return path


def glue(name: str, value: Any, display: bool = False) -> None:
    """Put a number computed in a cell into the chapter's prose (``{glue:text}`name```).

    Wraps myst-nb's ``glue`` (the book build), converting NumPy and torch scalars to plain
    Python numbers, which glue renders without warnings. Where myst-nb is not installed
    (Colab), it does nothing: the cells print the numbers anyway.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    myst_glue(name, value, display=display)
