"""Support for executable chapters: quick mode and metric records (every chapter).

Each chapter's ``parameters`` cell sets ``QUICK`` from ``ANIBOOK_QUICK`` so one switch
shrinks every chapter for tests and CI. Chapters call :func:`record_metrics` with the
figures their prose quotes; the test harness reads them back from the JSON file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)
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
