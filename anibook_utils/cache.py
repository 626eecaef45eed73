"""A small on-disk cache of named arrays, keyed by content hashes (chapter 1).

Unlike a pickle cache, entries are plain ``.npz`` arrays (loading one runs no code),
and the key includes the SHA-256 of the source file, so an edited or replaced data
file can never be served stale results. Writes are atomic: a temporary file is
renamed into place, so an interrupted write leaves no half-written entry behind.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_write

CACHE_DIR_ENV = "ANIBOOK_CACHE_DIR"
FORMAT_VERSION = 1


def cache_dir() -> Path:
    """The cache folder: ``ANIBOOK_CACHE_DIR`` or ``~/.cache/anibook``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "anibook")


def cache_key(*parts: object) -> str:
    """A short stable key from the given parts (source hashes, parameters, versions)."""
    text = "|".join(str(p) for p in (FORMAT_VERSION, *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_arrays(
    kind: str, key: str, build: Callable[[], dict[str, np.ndarray]],
    check: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Return the arrays stored under ``kind``/``key``, building and storing them if absent.

    ``check(arrays)`` (optional) raises ``ValueError``, ``KeyError`` or ``TypeError`` when stored
    arrays are missing, of the wrong kind or inconsistent; such an entry, like an unreadable one,
    is rebuilt with a warning (and replaced when the cache folder is writable; a read-only or
    shared cache is left as it is: nothing is ever deleted here).
    """
    path = cache_dir() / f"{kind}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            if check is not None:
                check(arrays)
            return arrays
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            warnings.warn(f"Cache entry {path.name} was unusable ({exc}); rebuilding it.")
    arrays = build()
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as out:
            np.savez(out, **arrays)
    except OSError as exc:  # a read-only home must not stop the book
        warnings.warn(f"Could not write cache entry {path.name} ({exc}); continuing without it.")
    return arrays
