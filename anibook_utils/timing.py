"""Timing code the way the chapters and benchmarks do: best of several runs (chapters 3, 4, 6).

On a shared or busy machine a single measurement mostly measures the neighbours; the
fastest of a few repeats, after a warm-up call (caches, lazy initialisation, allocator),
is the closest to what the code itself costs.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

__all__ = ["best_time"]


def best_time(fn: Callable[[], Any], repeats: int = 5, warm_up: bool = True) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn()`` (after one warm-up call).

    On a GPU the device is synchronised around each call, so its queued work is counted.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best
